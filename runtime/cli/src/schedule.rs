//! How often scheduled work runs (DR runs, backup policies, prunes), and when it is next due.
//!
//! A schedule is an interval (`@hourly`, `@daily`, `@weekly`, `30m`, `6h`), counted from the
//! last run's start, or a cron expression (`0 2 * * *`: minute, hour, day of month, month, day
//! of week), which puts runs at wall-clock times: a backup window. Cron times are in the
//! machine's time zone (`TZ`, else `/etc/localtime`), or in the zone of a `CRON_TZ=ZONE` prefix
//! (`CRON_TZ=Europe/Paris 30 1 * * 1-5`).

use jiff::civil::{DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Span, Timestamp};

/// How far a last run may be dated ahead of the clock (clocks of machines that take turns
/// running the same home differ a little) before [`Schedule::next_due`] stops trusting it.
const CLOCK_SLACK: SignedDuration = SignedDuration::from_mins(10);

/// Whether `t` is dated ahead of the clock by more than [`CLOCK_SLACK`]: a run recorded while
/// the clock was set forward.
pub(crate) fn ahead_of_clock(t: Timestamp) -> bool {
    t.duration_since(Timestamp::now()) > CLOCK_SLACK
}

/// How far ahead a cron expression must match at least once (so `0 0 30 2 *` is refused).
const CRON_HORIZON_YEARS: i16 = 5;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub(crate) enum Schedule {
    /// Every so many seconds, from the last run's start.
    Every(u64),
    /// At the wall-clock times a cron expression matches.
    Cron(Box<Cron>),
}

impl Schedule {
    /// Parses `@hourly`, `@daily`, `@weekly`, an interval of at least a minute, or a cron
    /// expression of five fields that matches at least once in the coming years.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        /// The longest interval: past it a run's next time can leave the calendar.
        const MAX_INTERVAL_SECS: u64 = 100 * 365 * 86_400;
        // cron's names for fixed times (`@daily` and `@hourly` are intervals here, from the last
        // run's start: a run that slips does not crowd the next).
        let trimmed = s.trim();
        // After a `CRON_TZ=` prefix too.
        let (zone, rest) = match trimmed.split_once(char::is_whitespace) {
            Some((first, rest)) if first.starts_with("CRON_TZ=") => (Some(first), rest.trim()),
            _ => (None, trimmed),
        };
        let named = match rest {
            "@midnight" => Some("0 0 * * *"),
            "@monthly" => Some("0 0 1 * *"),
            "@yearly" | "@annually" => Some("0 0 1 1 *"),
            _ => None,
        };
        let expanded = match (zone, named) {
            (Some(zone), Some(cron)) => format!("{zone} {cron}"),
            (None, Some(cron)) => cron.to_owned(),
            (_, None) => trimmed.to_owned(),
        };
        let text = expanded.as_str();
        if text.split_whitespace().count() > 1 {
            let cron = Cron::parse(text).map_err(|e| format!("`{s}`: {e}"))?;
            if cron.next_after(Timestamp::now()).is_none() {
                return Err(format!(
                    "`{s}`: the cron expression matches no time in the next {CRON_HORIZON_YEARS} years"
                ));
            }
            return Ok(Self::Cron(Box::new(cron)));
        }
        // `30M` is thirty months to the parser; nobody asking for a schedule means that.
        if let Some(at) = text.find('M')
            && !text[at + 1..].starts_with(|c: char| c.is_ascii_lowercase())
        {
            return Err(format!(
                "`{s}`: M means months in an interval: write m for minutes (30m), or spell out \
                 months (3months)"
            ));
        }
        let secs = match text {
            "@hourly" => 3_600,
            "@daily" => 86_400,
            "@weekly" => 7 * 86_400,
            other => humantime::parse_duration(other)
                .map_err(|_| {
                    format!(
                        "`{other}`: expected @hourly, @daily, @weekly (intervals), @midnight, \
                         @monthly, @yearly (cron's), an interval like 30m or 6h, or a cron \
                         expression like \"0 2 * * *\""
                    )
                })?
                .as_secs(),
        };
        if secs < 60 {
            return Err(format!("`{s}`: scheduled work runs at most once a minute"));
        }
        if secs > MAX_INTERVAL_SECS {
            return Err(format!(
                "`{s}`: an interval is at most {} years; pause the policy instead",
                MAX_INTERVAL_SECS / (365 * 86_400)
            ));
        }
        Ok(Self::Every(secs))
    }

    /// When work on this schedule that never ran is first due, given when it was set up: at
    /// once for an interval, at the next matching time for a cron expression.
    ///
    /// A set-up time dated ahead of the clock by more than [`CLOCK_SLACK`] (set up while the
    /// clock was set forward) counts as now, as [`Schedule::next_due`] treats a last run: it
    /// must not hold off the first run until that date.
    pub(crate) fn first(&self, set_up: Timestamp) -> Timestamp {
        let set_up = if ahead_of_clock(set_up) {
            let now = Timestamp::now();
            tracing::warn!(
                "set up at {set_up}, ahead of this machine's clock ({now}): was the clock set \
                 back? Counting from now rather than waiting for that date"
            );
            // As `next_due`: overdue by the slack, so a caller's earlier look finds it due.
            now.checked_sub(CLOCK_SLACK).unwrap_or(now)
        } else {
            set_up
        };
        match self {
            Self::Every(_) => set_up,
            Self::Cron(cron) => cron.next_after(set_up).unwrap_or(Timestamp::MAX),
        }
    }

    /// When the next run is due after a run that started at `last`.
    ///
    /// An interval allows a grace of a tenth of itself, at most five minutes: a timer firing at
    /// the frequency itself must not skip every other slot because the last run started a
    /// little after its own slot. A cron expression is due at its next matching time.
    ///
    /// A last run dated ahead of the clock by more than [`CLOCK_SLACK`] (the clock was set
    /// forward for a while, then back) would hold off every run until that date: work is due
    /// at once instead (overdue by the slack, so that a caller's earlier look at the clock
    /// finds it due), with a warning.
    pub(crate) fn next_due(&self, last: Timestamp) -> Timestamp {
        let now = Timestamp::now();
        if ahead_of_clock(last) {
            tracing::warn!(
                "the last run is dated {last}, ahead of this machine's clock ({now}): was the \
                 clock set back? Running now rather than waiting for that date"
            );
            return now.checked_sub(CLOCK_SLACK).unwrap_or(now);
        }
        match self {
            Self::Every(secs) => {
                let grace = (secs / 10).min(300);
                let due = i64::try_from(secs - grace).unwrap_or(i64::MAX);
                last.checked_add(SignedDuration::from_secs(due))
                    .unwrap_or(Timestamp::MAX)
            }
            Self::Cron(cron) => cron.next_after(last).unwrap_or(Timestamp::MAX),
        }
    }

    /// The time zone of its calendar: a cron expression's (`CRON_TZ`, else the machine's), the
    /// machine's for an interval. Retention counts a policy's days and weeks in it, so a
    /// backup window at 00:30 in Paris keeps one point per Paris day.
    pub(crate) fn zone(&self) -> TimeZone {
        match self {
            Self::Every(_) => TimeZone::system(),
            Self::Cron(cron) => cron.zone.clone(),
        }
    }

    /// The period around `at`: the interval, or the time between a cron expression's next two
    /// matching times.
    pub(crate) fn period_secs(&self, at: Timestamp) -> u64 {
        match self {
            Self::Every(secs) => *secs,
            Self::Cron(cron) => cron
                .next_after(at)
                .and_then(|a| Some((a, cron.next_after(a)?)))
                .map_or(86_400, |(a, b)| {
                    u64::try_from(b.duration_since(a).as_secs()).unwrap_or(86_400)
                }),
        }
    }
}

/// A clap value parser that checks a schedule.
pub(crate) fn parse_frequency(s: &str) -> Result<String, String> {
    Schedule::parse(s).map(|_| s.to_owned())
}

/// When the next run is due after a run that started at `last`; see [`Schedule::next_due`].
/// A schedule stored before that no longer parses counts as hourly.
pub(crate) fn next_due(frequency: &str, last: Timestamp) -> Timestamp {
    Schedule::parse(frequency)
        .unwrap_or(Schedule::Every(3_600))
        .next_due(last)
}

/// A cron expression: the sets of minutes, hours, days of the month, months and days of the
/// week it matches, and the zone its times are in.
#[derive(Debug, Clone)]
pub(crate) struct Cron {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Whether the day of the month or of the week starts with `*` (`*`, `*/2`): as in cron,
    /// when both are restricted a day matches either, and a field starting with `*` is not
    /// restricted (Vixie cron's rule: `0 0 */2 * 1` is odd days that are Mondays).
    any_day: bool,
    any_weekday: bool,
    zone: TimeZone,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Cron {
    fn parse(text: &str) -> Result<Self, String> {
        let mut words: Vec<&str> = text.split_whitespace().collect();
        let mut zone = None;
        if let Some(name) = words.first().and_then(|w| w.strip_prefix("CRON_TZ=")) {
            zone = Some(if name == "UTC" {
                TimeZone::UTC
            } else {
                TimeZone::get(name).map_err(|e| format!("time zone {name:?}: {e}"))?
            });
            words.remove(0);
        }
        let [minute, hour, day, month, weekday] = words[..] else {
            return Err(format!(
                "a cron expression has five fields (minute hour day-of-month month day-of-week), \
                 this one has {}",
                words.len()
            ));
        };
        // Sunday is 0 or 7.
        let mut weekdays = field(weekday, "day of week", 0, 7, &WEEKDAYS)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & !(1 << 7);
        }
        Ok(Self {
            minutes: field(minute, "minute", 0, 59, &[])?,
            hours: field(hour, "hour", 0, 23, &[])?,
            days: field(day, "day of month", 1, 31, &[])?,
            months: field(month, "month", 1, 12, &MONTHS)?,
            weekdays,
            any_day: day.starts_with('*'),
            any_weekday: weekday.starts_with('*'),
            zone: zone.unwrap_or_else(TimeZone::system),
        })
    }

    fn day_matches(&self, dt: DateTime) -> bool {
        let day = self.days & (1 << dt.day()) != 0;
        let weekday = self.weekdays & (1 << dt.weekday().to_sunday_zero_offset()) != 0;
        match (self.any_day, self.any_weekday) {
            (false, false) => day || weekday,
            _ => day && weekday,
        }
    }

    /// The first matching time strictly after `t`, within the horizon.
    pub(crate) fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let start = t.to_zoned(self.zone.clone()).datetime();
        let horizon = start.year().saturating_add(CRON_HORIZON_YEARS);
        let minute = Span::new().minutes(1);
        let mut dt = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(minute)
            .ok()?;
        while dt.year() <= horizon {
            dt = if self.months & (1 << dt.month()) == 0 {
                dt.first_of_month()
                    .date()
                    .checked_add(Span::new().months(1))
                    .ok()?
                    .to_datetime(Time::midnight())
            } else if !self.day_matches(dt) {
                dt.date().tomorrow().ok()?.to_datetime(Time::midnight())
            } else if self.hours & (1 << dt.hour()) == 0 {
                dt.with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(Span::new().hours(1))
                    .ok()?
            } else if self.minutes & (1 << dt.minute()) == 0 {
                dt.checked_add(minute).ok()?
            } else {
                // A time a daylight-saving change skips runs when the clocks resume; one it
                // repeats runs once.
                match self.zone.to_zoned(dt) {
                    Ok(z) if z.timestamp() > t => return Some(z.timestamp()),
                    _ => dt.checked_add(minute).ok()?,
                }
            };
        }
        None
    }
}

/// The set of values a cron field matches, as bits: `*`, `N`, `A-B`, each optionally `/STEP`,
/// separated by commas; `names` (lowercase) stand for `min`, `min + 1`, ….
fn field(text: &str, what: &str, min: u8, max: u8, names: &[&str]) -> Result<u64, String> {
    let bad = |why: String| format!("{what} {text:?}: {why}");
    let value = |s: &str| -> Result<u8, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            return Ok(min + u8::try_from(i).unwrap_or(0));
        }
        match s.parse::<u8>() {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(bad(format!("{s:?} is not a value from {min} to {max}"))),
        }
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => match step.parse::<u8>() {
                Ok(s) if s > 0 => (range, s),
                _ => return Err(bad(format!("step {step:?} is not a positive number"))),
            },
            None => (part, 1),
        };
        let (low, high) = match range {
            "*" => (min, max),
            _ => match range.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                // `N/STEP` runs from N to the end, as in cron.
                None if step > 1 => (value(range)?, max),
                None => {
                    let v = value(range)?;
                    (v, v)
                }
            },
        };
        if low > high {
            return Err(bad(format!("the range {range} runs backwards")));
        }
        for v in (low..=high).step_by(usize::from(step)) {
            bits |= 1 << v;
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("a timestamp")
    }

    fn next(expr: &str, after: &str) -> String {
        match Schedule::parse(expr).expect("a schedule") {
            Schedule::Cron(c) => c
                .next_after(at(after))
                .map_or_else(|| "none".to_owned(), |t| t.to_string()),
            Schedule::Every(_) => panic!("{expr} is not cron"),
        }
    }

    #[test]
    fn intervals() {
        let every = |s| match Schedule::parse(s) {
            Ok(Schedule::Every(secs)) => Ok(secs),
            Ok(Schedule::Cron(_)) => Err("cron".to_owned()),
            Err(e) => Err(e),
        };
        assert_eq!(every("@daily"), Ok(86_400));
        assert_eq!(every("6h"), Ok(6 * 3_600));
        assert!(every("10s").is_err());
        assert!(every("sometimes").is_err());
        assert!(every("99y").is_ok());
        assert!(every("30M").is_err_and(|e| e.contains("write m for minutes")));
        assert_eq!(every("2months"), Ok(5_260_032));
        assert_eq!(
            every("9999y"),
            Err("`9999y`: an interval is at most 100 years; pause the policy instead".to_owned())
        );
        // A last run dated far ahead (a clock set forward, then back) does not hold off runs
        // until that date.
        let before = Timestamp::now();
        let ahead = before + SignedDuration::from_hours(400 * 24);
        for s in ["30m", "0 2 * * *"] {
            let schedule = Schedule::parse(s).expect("a schedule");
            // Due for a caller that looked at the clock before asking.
            assert!(schedule.next_due(ahead) < before, "{s}");
        }
        // cron's names for fixed times are those cron expressions.
        let after: Timestamp = "2026-03-15T12:00:00Z".parse().expect("a time");
        for (name, cron) in [
            ("@midnight", "0 0 * * *"),
            ("@monthly", "0 0 1 * *"),
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
        ] {
            let first = |s: &str| Schedule::parse(s).expect(s).first(after);
            assert_eq!(first(name), first(cron), "{name}");
            let paris = |s: &str| format!("CRON_TZ=Europe/Paris {s}");
            assert_eq!(first(&paris(name)), first(&paris(cron)), "{name} in Paris");
        }
        // Past the calendar, never due again rather than due at once.
        let far = Schedule::Every(u64::MAX).next_due(Timestamp::now());
        assert_eq!(far, Timestamp::MAX);
    }

    #[test]
    fn the_next_run_allows_a_grace() {
        let last = at("2026-12-05T00:00:00Z");
        assert_eq!(
            next_due("@hourly", last).to_string(),
            "2026-12-05T00:55:00Z"
        );
        assert_eq!(next_due("@daily", last).to_string(), "2026-12-05T23:55:00Z");
    }

    #[test]
    fn cron_times() {
        // (expression in UTC, after, next); 2026-12-05 is a Saturday.
        let cases = [
            ("0 2 * * *", "2026-12-05T01:00:00Z", "2026-12-05T02:00:00Z"),
            // Strictly after: a run that started on its slot is due the next day.
            ("0 2 * * *", "2026-12-05T02:00:00Z", "2026-12-06T02:00:00Z"),
            (
                "*/15 * * * *",
                "2026-12-05T10:07:30Z",
                "2026-12-05T10:15:00Z",
            ),
            // Weekdays by name and range: Saturday evening gives Monday.
            (
                "30 1 * * mon-fri",
                "2026-12-05T20:00:00Z",
                "2026-12-07T01:30:00Z",
            ),
            // Sunday is 0 or 7.
            ("0 0 * * 7", "2026-12-05T20:00:00Z", "2026-12-06T00:00:00Z"),
            // Day of month and day of week both given: either matches.
            (
                "0 0 1 * sun",
                "2026-12-05T20:00:00Z",
                "2026-12-06T00:00:00Z",
            ),
            // A field starting with `*` is not a restriction, as in Vixie cron: odd days that
            // are Mondays (after Monday 2026-12-07: not Wednesday the 9th, nor Monday the
            // 14th), and the firsts of the month that fall on a weekend (`*/6`: Sunday and
            // Saturday).
            (
                "0 0 */2 * 1",
                "2026-12-07T12:00:00Z",
                "2026-12-21T00:00:00Z",
            ),
            (
                "0 0 1 * */6",
                "2026-12-05T20:00:00Z",
                "2027-05-01T00:00:00Z",
            ),
            // Across months and years, with month names.
            (
                "0 0 29 feb *",
                "2026-12-05T20:00:00Z",
                "2028-02-29T00:00:00Z",
            ),
            (
                "5 4 1 1,jul *",
                "2026-12-05T20:00:00Z",
                "2027-01-01T04:05:00Z",
            ),
        ];
        for (expr, after, expected) in cases {
            assert_eq!(
                next(&format!("CRON_TZ=UTC {expr}"), after),
                expected,
                "{expr}"
            );
        }
    }

    #[test]
    fn cron_in_a_zone_with_daylight_saving() {
        // Paris is UTC+1 in winter, UTC+2 in summer (from 2027-03-28 02:00, which is skipped).
        let paris = "CRON_TZ=Europe/Paris 0 2 * * *";
        assert_eq!(next(paris, "2026-12-05T12:00:00Z"), "2026-12-06T01:00:00Z");
        assert_eq!(
            next(paris, "2027-03-27T12:00:00Z"),
            "2027-03-28T01:00:00Z",
            "02:00 does not exist that night: the run is when the clocks resume"
        );
        assert_eq!(next(paris, "2027-03-28T12:00:00Z"), "2027-03-29T00:00:00Z");
        // 2026-10-25 03:00 CEST is 02:00 CET: 02:30 happens twice that night, and runs once,
        // at the first.
        let fold = "CRON_TZ=Europe/Paris 30 2 * * *";
        assert_eq!(next(fold, "2026-10-24T12:00:00Z"), "2026-10-25T00:30:00Z");
        assert_eq!(
            next(fold, "2026-10-25T00:30:00Z"),
            "2026-10-26T01:30:00Z",
            "the repeated 02:30 (01:30 UTC) does not run again"
        );
    }

    #[test]
    fn cron_periods_and_first_runs() {
        let s = Schedule::parse("CRON_TZ=UTC 0 */6 * * *").expect("a schedule");
        assert_eq!(s.period_secs(at("2026-12-05T01:00:00Z")), 6 * 3_600);
        // A cron schedule's first run waits for its first matching time; an interval's is now.
        assert_eq!(
            s.first(at("2026-12-05T01:00:00Z")).to_string(),
            "2026-12-05T06:00:00Z"
        );
        let every = Schedule::parse("6h").expect("a schedule");
        assert_eq!(
            every.first(at("2026-12-05T01:00:00Z")).to_string(),
            "2026-12-05T01:00:00Z"
        );
        // Set up while the clock was far ahead: the first run does not wait for that date.
        let before = Timestamp::now();
        let ahead = before + SignedDuration::from_hours(400 * 24);
        assert!(every.first(ahead) < before);
        assert!(s.first(ahead) < before + SignedDuration::from_hours(7));
    }

    #[test]
    fn bad_cron_expressions_say_what_is_wrong() {
        let refused = |e: &str, needle: &str| {
            let err = Schedule::parse(e).expect_err(e);
            assert!(err.contains(needle), "{e}: {err}");
        };
        refused("0 2 * *", "five fields");
        refused("60 2 * * *", "minute \"60\"");
        refused("0 24 * * *", "hour");
        refused("0 2 * * fun", "day of week");
        refused("0 2 * * */0", "step");
        refused("0 5-2 * * *", "runs backwards");
        refused("0 0 30 2 *", "matches no time");
        refused("CRON_TZ=Mars/Olympus 0 2 * * *", "time zone");
    }
}
