//! Grandfather-father-son retention of snapshots: the rules are [`cairn_retention`]'s, applied
//! per source (tree path or stream name), so artifacts are retained independently.

use crate::format::SnapshotInfo;
pub use cairn_retention::Retention;
use std::collections::BTreeMap;

/// Ids of the snapshots `policy` keeps, with the rules that keep each.
pub fn retained(
    policy: &Retention,
    snapshots: &[SnapshotInfo],
) -> BTreeMap<String, Vec<&'static str>> {
    let mut groups: BTreeMap<&str, Vec<&SnapshotInfo>> = BTreeMap::new();
    for s in snapshots {
        groups.entry(s.source()).or_default().push(s);
    }
    let mut keep = BTreeMap::new();
    for group in groups.into_values() {
        let times: Vec<i64> = group.iter().map(|s| s.time.as_second()).collect();
        for (s, rules) in group.iter().zip(policy.keep(&times)) {
            if !rules.is_empty() {
                keep.insert(s.id.clone(), rules);
            }
        }
    }
    keep
}
