//! Volume snapshots of the target workload (capability [`Volumes`](crate::Capability::Volumes)).
//!
//! ```no_run
//! use cairn_sdk::{Artifact, Outputs, volumes};
//!
//! # fn main() -> cairn_sdk::Result<()> {
//! let mut out = Outputs::new();
//! for snap in volumes::snapshot(None, &[])? {
//!     out = out.artifact(Artifact::new(format!("volume-{}", snap.volume)).value("snapshot", &snap.id));
//! }
//! # Ok(())
//! # }
//! ```

use crate::wit::bindings::cairn::blueprint::volumes as wit;
use crate::wit::{faked, types};
use crate::workloads::shown;
use crate::{Result, WorkloadRef};

/// A point-in-time copy of one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VolumeSnapshot {
    /// The id to [`restore`] or [`delete`] it by.
    pub id: String,
    /// The workload whose volume it copies.
    pub workload: WorkloadRef,
    /// The volume's name.
    pub volume: String,
    /// When it was taken, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Its size.
    pub bytes: u64,
}

impl From<wit::VolumeSnapshot> for VolumeSnapshot {
    fn from(s: wit::VolumeSnapshot) -> Self {
        Self {
            id: s.id,
            workload: s.workload.into(),
            volume: s.volume,
            created_ms: s.created_ms,
            bytes: s.bytes,
        }
    }
}

/// Snapshots the named volumes of a workload (`None`: the action's target; no names: all of
/// its volumes). Returns once each snapshot's point in time is taken, so the posthook may
/// release a quiesced workload; the host waits until they are ready to restore from after the
/// run's phases, and a backup that fails has the snapshots it took deleted.
pub fn snapshot(workload: Option<&WorkloadRef>, volumes: &[&str]) -> Result<Vec<VolumeSnapshot>> {
    let w = workload.map(types::WorkloadRef::from);
    let names: Vec<String> = volumes.iter().map(|&v| v.to_owned()).collect();
    faked(
        "volumes.snapshot",
        || shown(workload, &names.join(" ")),
        || wit::snapshot(w.as_ref(), &names),
        |f| f.snapshot(w.as_ref(), &names),
    )
    .map(|snaps| snaps.into_iter().map(Into::into).collect())
}

/// Replaces a volume's contents with snapshot `id`'s. Scale the workload down first.
pub fn restore(id: &str) -> Result<VolumeSnapshot> {
    faked(
        "volumes.restore",
        || id.to_owned(),
        || wit::restore(id),
        |f| f.restore(id),
    )
    .map(Into::into)
}

/// Deletes snapshot `id`.
pub fn delete(id: &str) -> Result<()> {
    faked(
        "volumes.delete",
        || id.to_owned(),
        || wit::delete(id),
        |f| f.delete_snapshot(id),
    )
}
