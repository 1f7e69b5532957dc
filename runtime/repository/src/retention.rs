//! Grandfather-father-son retention of snapshots: the rules are [`cairn_retention`]'s, applied
//! per series: one host's snapshots of one source (tree path or stream name) for one workload,
//! so artifacts, hosts and workloads are retained independently.

use crate::format::SnapshotInfo;
pub use cairn_retention::Retention;
use std::collections::BTreeMap;

/// Ids of the snapshots `policy` keeps, with the rules that keep each.
pub fn retained(
    policy: &Retention,
    snapshots: &[SnapshotInfo],
) -> BTreeMap<String, Vec<&'static str>> {
    let mut groups: BTreeMap<Series<'_>, Vec<&SnapshotInfo>> = BTreeMap::new();
    for s in snapshots {
        groups.entry(series(s)).or_default().push(s);
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
