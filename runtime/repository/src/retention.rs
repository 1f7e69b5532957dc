//! Grandfather-father-son retention.

use crate::format::SnapshotInfo;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// Maps a snapshot time to its retention bucket (hour, day, week...).
type Bucket = fn(&jiff::Zoned) -> String;

/// Which snapshots `forget` keeps; a snapshot kept by any rule is kept. Rules apply per source
/// (tree path or stream name), so artifacts are retained independently.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Retention {
    /// Keep the newest N.
    pub last: u32,
    /// Keep the newest of each of the last N hours that have snapshots.
    pub hourly: u32,
    /// ... days.
    pub daily: u32,
    /// ... ISO weeks.
    pub weekly: u32,
    /// ... months.
    pub monthly: u32,
    /// ... years.
    pub yearly: u32,
}

impl Retention {
    /// Keeps nothing until rules are set.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets keep-last.
    pub fn last(mut self, n: u32) -> Self {
        self.last = n;
        self
    }
    /// Sets keep-hourly.
    pub fn hourly(mut self, n: u32) -> Self {
        self.hourly = n;
        self
    }
    /// Sets keep-daily.
    pub fn daily(mut self, n: u32) -> Self {
        self.daily = n;
        self
    }
    /// Sets keep-weekly.
    pub fn weekly(mut self, n: u32) -> Self {
        self.weekly = n;
        self
    }
    /// Sets keep-monthly.
    pub fn monthly(mut self, n: u32) -> Self {
        self.monthly = n;
        self
    }
    /// Sets keep-yearly.
    pub fn yearly(mut self, n: u32) -> Self {
        self.yearly = n;
        self
    }
    /// Whether no rule is set (forget would remove everything: refused by callers).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Ids of the snapshots to keep, with the rules that keep each.
    pub fn apply(&self, snapshots: &[SnapshotInfo]) -> BTreeMap<String, Vec<&'static str>> {
        let mut groups: BTreeMap<&str, Vec<&SnapshotInfo>> = BTreeMap::new();
        for s in snapshots {
            groups.entry(s.source()).or_default().push(s);
        }
        let mut keep: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
        for (_, mut group) in groups {
            group.sort_by_key(|s| std::cmp::Reverse(s.time));
            let rules: [(&'static str, u32, Bucket); 6] = [
                ("last", self.last, |_| String::new()),
                ("hourly", self.hourly, |z| {
                    z.strftime("%Y-%m-%d %H").to_string()
                }),
                ("daily", self.daily, |z| z.strftime("%Y-%m-%d").to_string()),
                ("weekly", self.weekly, |z| {
                    let w = z.date().iso_week_date();
                    format!("{}-W{}", w.year(), w.week())
                }),
                ("monthly", self.monthly, |z| z.strftime("%Y-%m").to_string()),
                ("yearly", self.yearly, |z| z.strftime("%Y").to_string()),
            ];
            for (name, n, bucket) in rules {
                if n == 0 {
                    continue;
                }
                let mut seen = HashSet::new();
                for s in &group {
                    let z = s.time.to_zoned(TimeZone::UTC);
                    let b = if name == "last" {
                        s.id.clone()
                    } else {
                        bucket(&z)
                    };
                    if seen.len() as u32 >= n {
                        break;
                    }
                    if seen.insert(b) {
                        keep.entry(s.id.clone()).or_default().push(name);
                    }
                }
            }
        }
        keep
    }
}
