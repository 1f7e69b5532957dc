//! Reading and scaling workloads (capabilities [`Workloads`](crate::Capability::Workloads)
//! and [`Scale`](crate::Capability::Scale)).
//!
//! Functions that take a `workload: Option<&WorkloadRef>` act on the action's target when it
//! is `None`. Every reference is checked against the action's scope: the target workload
//! alone when the action names one (as a policy always does), any workload of the namespace
//! when it names none; one outside it is [`Error::Denied`](crate::Error::Denied).
//!
//! ```no_run
//! use std::time::Duration;
//! use cairn_sdk::workloads;
//!
//! # fn main() -> cairn_sdk::Result<()> {
//! let before = workloads::scale(None, 0)?;
//! // … restore the volumes …
//! workloads::scale(None, before)?;
//! workloads::wait_ready(None, Duration::from_secs(300))?;
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use crate::Result;
use crate::wit::bindings::cairn::blueprint::workloads as wit;
use crate::wit::{faked, types};

/// A workload (deployment- or statefulset-like) in a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkloadRef {
    /// The namespace.
    pub namespace: String,
    /// The workload's name.
    pub name: String,
}

impl WorkloadRef {
    /// Workload `name` in `namespace`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl From<types::WorkloadRef> for WorkloadRef {
    fn from(w: types::WorkloadRef) -> Self {
        Self {
            namespace: w.namespace,
            name: w.name,
        }
    }
}

impl From<&WorkloadRef> for types::WorkloadRef {
    fn from(w: &WorkloadRef) -> Self {
        Self {
            namespace: w.namespace.clone(),
            name: w.name.clone(),
        }
    }
}

/// How a workload keeps its pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WorkloadKind {
    /// Interchangeable replicas.
    Deployment,
    /// Replicas with stable identities and their own volumes.
    StatefulSet,
    /// A single process or anything else the backend models.
    Other,
}

/// A pod of a workload: one running replica.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PodInfo {
    /// The pod's name, for [`Command::pod`](crate::exec::Command::pod).
    pub name: String,
    /// Whether the pod is ready to serve.
    pub ready: bool,
    /// Its containers. Exec's default is the one the `kubectl.kubernetes.io/default-container`
    /// annotation names on Kubernetes, else the first.
    pub containers: Vec<String>,
}

/// A volume mounted by a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VolumeInfo {
    /// The volume's name, for [`volumes::snapshot`](crate::volumes::snapshot).
    pub name: String,
    /// Bytes in use, when the backend knows it.
    pub bytes: Option<u64>,
}

/// What the host knows of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkloadInfo {
    /// Which workload.
    pub reference: WorkloadRef,
    /// How it keeps its pods.
    pub kind: WorkloadKind,
    /// Desired replicas.
    pub replicas: u32,
    /// Replicas that are ready.
    pub ready_replicas: u32,
    /// Its pods.
    pub pods: Vec<PodInfo>,
    /// Its volumes.
    pub volumes: Vec<VolumeInfo>,
}

impl From<types::WorkloadInfo> for WorkloadInfo {
    fn from(w: types::WorkloadInfo) -> Self {
        Self {
            reference: w.reference.into(),
            kind: match w.kind {
                types::WorkloadKind::Deployment => WorkloadKind::Deployment,
                types::WorkloadKind::StatefulSet => WorkloadKind::StatefulSet,
                types::WorkloadKind::Other => WorkloadKind::Other,
            },
            replicas: w.replicas,
            ready_replicas: w.ready_replicas,
            pods: w
                .pods
                .into_iter()
                .map(|p| PodInfo {
                    name: p.name,
                    ready: p.ready,
                    containers: p.containers,
                })
                .collect(),
            volumes: w
                .volumes
                .into_iter()
                .map(|v| VolumeInfo {
                    name: v.name,
                    bytes: v.bytes,
                })
                .collect(),
        }
    }
}

/// Milliseconds for a WIT deadline: rounded up (so a short timeout is never zero) and
/// saturating.
pub(crate) fn millis(timeout: Duration) -> u64 {
    let ms = timeout.as_millis() + u128::from(!timeout.subsec_nanos().is_multiple_of(1_000_000));
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// `workload` (the target when `None`) and `rest`, for the fake host's record of calls.
pub(crate) fn shown(workload: Option<&WorkloadRef>, rest: &str) -> String {
    let w = workload.map_or_else(|| "(target)".to_owned(), |w| w.name.clone());
    if rest.is_empty() {
        w
    } else {
        format!("{w} {rest}")
    }
}

/// Describes a workload. Needs [`Workloads`](crate::Capability::Workloads).
pub fn get(workload: Option<&WorkloadRef>) -> Result<WorkloadInfo> {
    let w = workload.map(types::WorkloadRef::from);
    faked(
        "workloads.get",
        || shown(workload, ""),
        || wit::get(w.as_ref()),
        |f| f.get(w.as_ref()),
    )
    .map(Into::into)
}

/// Sets a workload's desired replicas and returns the count it had before, so a posthook can
/// put it back. Needs [`Scale`](crate::Capability::Scale).
pub fn scale(workload: Option<&WorkloadRef>, replicas: u32) -> Result<u32> {
    let w = workload.map(types::WorkloadRef::from);
    faked(
        "workloads.scale",
        || shown(workload, &replicas.to_string()),
        || wit::scale(w.as_ref(), replicas),
        |f| f.scale(w.as_ref(), replicas),
    )
}

/// Checks, changing nothing, that this action may restart `workload` (the target when
/// `None`): that it is granted [`Workloads`](crate::Capability::Workloads) and
/// [`Scale`](crate::Capability::Scale), by describing the workload and setting its replicas to
/// what they are. A restore that swaps data under a running server calls it before it changes
/// anything, so a missing grant fails while there is nothing to undo. Returns the desired
/// replicas.
pub fn check_restartable(workload: Option<&WorkloadRef>) -> Result<u32> {
    let replicas = get(workload)?.replicas;
    scale(workload, replicas)?;
    Ok(replicas)
}

/// Waits until every desired replica is ready, or fails with
/// [`Error::TimedOut`](crate::Error::TimedOut). Needs [`Workloads`](crate::Capability::Workloads).
pub fn wait_ready(workload: Option<&WorkloadRef>, timeout: Duration) -> Result<WorkloadInfo> {
    let w = workload.map(types::WorkloadRef::from);
    faked(
        "workloads.wait-ready",
        || shown(workload, ""),
        || wit::wait_ready(w.as_ref(), millis(timeout)),
        |f| f.get(w.as_ref()),
    )
    .map(Into::into)
}

/// One object of `kind` (for example `configmap`; never a Secret: credentials come through
/// [`secrets`](crate::secrets)) in the action's namespace, as JSON. Needs
/// [`Workloads`](crate::Capability::Workloads).
pub fn get_object(kind: &str, name: &str) -> Result<String> {
    faked(
        "workloads.get-object",
        || format!("{kind} {name}"),
        || wit::get_object(kind, name),
        |f| f.get_object(kind, name),
    )
}

/// Every object of `kind` in the action's namespace, as a JSON array. Needs
/// [`Workloads`](crate::Capability::Workloads).
pub fn list_objects(kind: &str) -> Result<String> {
    faked(
        "workloads.list-objects",
        || kind.to_owned(),
        || wit::list_objects(kind),
        |f| f.list_objects(kind),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_up_and_saturate() {
        assert_eq!(millis(Duration::ZERO), 0);
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::from_micros(1500)), 2);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }

    #[test]
    #[cfg(not(target_arch = "wasm32"))]
    fn host_calls_fail_cleanly_off_wasm() {
        assert!(
            matches!(scale(None, 0), Err(crate::Error::Failed(m)) if m.contains("workloads.scale"))
        );
    }

    #[test]
    fn converts_workload_info() {
        let info: WorkloadInfo = types::WorkloadInfo {
            reference: types::WorkloadRef {
                namespace: "shop".into(),
                name: "db".into(),
            },
            kind: types::WorkloadKind::StatefulSet,
            replicas: 2,
            ready_replicas: 1,
            pods: vec![types::PodInfo {
                name: "db-0".into(),
                ready: true,
                containers: vec!["postgres".into()],
            }],
            volumes: vec![types::VolumeInfo {
                name: "data".into(),
                bytes: Some(10),
            }],
        }
        .into();
        assert_eq!(info.reference.to_string(), "shop/db");
        assert_eq!(info.kind, WorkloadKind::StatefulSet);
        assert_eq!(info.pods[0].containers, ["postgres"]);
        assert_eq!(info.volumes[0].bytes, Some(10));
    }
}
