//! How often scheduled work runs (DR runs, backup policies), and when it is next due.

use jiff::{SignedDuration, Timestamp};

/// The seconds between runs that `frequency` asks for: `@hourly`, `@daily`, `@weekly`, or an
/// interval like `30m` or `6h`, of at least a minute.
pub(crate) fn frequency_secs(frequency: &str) -> Result<u64, String> {
    let secs = match frequency {
        "@hourly" => 3_600,
        "@daily" => 86_400,
        "@weekly" => 7 * 86_400,
        other => humantime::parse_duration(other)
            .map_err(|_| {
                format!(
                    "`{other}`: expected @hourly, @daily, @weekly or an interval like 30m or 6h"
                )
            })?
            .as_secs(),
    };
    if secs < 60 {
        return Err(format!(
            "`{frequency}`: scheduled work runs at most once a minute"
        ));
    }
    Ok(secs)
}

/// A clap value parser that checks a frequency.
pub(crate) fn parse_frequency(s: &str) -> Result<String, String> {
    frequency_secs(s).map(|_| s.to_owned())
}

/// When the next run is due, after a run that started at `last`.
///
/// A timer firing at the frequency itself must not skip every other slot because the last run
/// started a little after its own slot: the period allows a grace of a tenth of itself, at most
/// five minutes.
pub(crate) fn next_due(frequency: &str, last: Timestamp) -> Timestamp {
    let secs = frequency_secs(frequency).unwrap_or(3_600);
    let grace = (secs / 10).min(300);
    let due = i64::try_from(secs - grace).unwrap_or(i64::MAX);
    last.checked_add(SignedDuration::from_secs(due))
        .unwrap_or(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequencies() {
        assert_eq!(frequency_secs("@daily"), Ok(86_400));
        assert_eq!(frequency_secs("6h"), Ok(6 * 3_600));
        assert!(frequency_secs("10s").is_err());
        assert!(frequency_secs("sometimes").is_err());
    }

    #[test]
    fn the_next_run_allows_a_grace() {
        let last: Timestamp = "2026-12-05T00:00:00Z".parse().expect("a timestamp");
        let hourly = next_due("@hourly", last);
        assert_eq!(hourly.to_string(), "2026-12-05T00:55:00Z");
        let daily = next_due("@daily", last);
        assert_eq!(daily.to_string(), "2026-12-05T23:55:00Z");
    }
}
