//! Grandfather-father-son retention of snapshots: the rules are [`cairn_retention`]'s, applied
//! per series: one host's snapshots of one source (tree path or stream name) for one workload,
//! so artifacts, hosts and workloads are retained independently.

use crate::format::SnapshotInfo;
pub use cairn_retention::Retention;
use std::collections::BTreeMap;

/// Ids of the snapshots `policy` keeps, with the rules that keep each; its hours, days, weeks,
/// months and years are those of time zone `zone` (UTC's with [`jiff::tz::TimeZone::UTC`]).
pub fn retained(
    policy: &Retention,
    snapshots: &[SnapshotInfo],
    zone: &jiff::tz::TimeZone,
) -> BTreeMap<String, Vec<&'static str>> {
    let mut groups: BTreeMap<Series<'_>, Vec<&SnapshotInfo>> = BTreeMap::new();
    for s in snapshots {
        groups.entry(series(s)).or_default().push(s);
    }
    let mut keep = BTreeMap::new();
    for group in groups.into_values() {
        let times: Vec<i64> = group.iter().map(|s| s.time.as_second()).collect();
        for (s, rules) in group
            .iter()
            .zip(keep_in_zone(policy, &times, zone, i64::MAX))
        {
            if !rules.is_empty() {
                keep.insert(s.id.clone(), rules);
            }
        }
    }
    keep
}

/// [`Retention::keep`] with the hours, days, weeks, months and years of time zone `zone`, and
/// `within` counted back from `now` (unix seconds) when the newest time is after it, as
/// [`Retention::keep_in_until`]; `i64::MAX` counts it back from the newest time.
pub fn keep_in_zone(
    policy: &Retention,
    times: &[i64],
    zone: &jiff::tz::TimeZone,
    now: i64,
) -> Vec<Vec<&'static str>> {
    policy.keep_in_until(
        times,
        |t| jiff::Timestamp::from_second(t).map_or(0, |t| i64::from(zone.to_offset(t).seconds())),
        now,
    )
}

/// A series: host, source, and the workload an export was made for (its `namespace=` and
/// `workload=` tags). Every workload's export of one blueprint has the same name (`dump`):
/// grouped by name alone, the newest of any workload would decide for all of them. An export's
/// host is left out: it is where Cairn ran (a pod, renamed at every restart), not what was
/// backed up.
type Series<'a> = (&'a str, &'a str, Vec<&'a str>);

fn series(s: &SnapshotInfo) -> Series<'_> {
    let scope: Vec<&str> = s
        .tags
        .iter()
        .filter(|t| t.starts_with("namespace=") || t.starts_with("workload="))
        .map(String::as_str)
        .collect();
    let host = if s.tags.iter().any(|t| t == "export") {
        ""
    } else {
        &s.hostname
    };
    (host, s.source(), scope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{BackupSummary, SnapshotKind};

    /// Daily backups at 00:30 in UTC+1 (23:30 UTC the day before) and one at 23:00 there the
    /// same day: in UTC+1 the last two share a day, in UTC they do not.
    #[test]
    fn periods_are_the_zone_s() {
        let at = |s: &str| s.parse::<jiff::Timestamp>().expect("time");
        let snaps: Vec<SnapshotInfo> = [
            "2026-12-01T23:30:00Z",
            "2026-12-02T23:30:00Z",
            "2026-12-03T22:00:00Z",
        ]
        .iter()
        .map(|t| {
            let kind = SnapshotKind::Stream {
                name: "db.sql".into(),
            };
            SnapshotInfo::made(kind, at(t), None, Vec::new(), BackupSummary::default())
        })
        .collect();
        let daily = Retention::new().daily(2);
        let kept = |zone: &jiff::tz::TimeZone| -> Vec<usize> {
            let keep = retained(&daily, &snaps, zone);
            (0..snaps.len())
                .filter(|&i| keep.contains_key(&snaps[i].id))
                .collect()
        };
        assert_eq!(kept(&jiff::tz::TimeZone::UTC), [1, 2]);
        let paris_in_winter = jiff::tz::TimeZone::fixed(jiff::tz::offset(1));
        assert_eq!(kept(&paris_in_winter), [0, 2]);
    }
}
