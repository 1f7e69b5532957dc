//! `cairn:blueprint/volumes`: snapshots of the target workload's volumes (capability
//! `volumes`).

use std::sync::Arc;

use cairn_cluster::{Cluster, VolumeSnapshot};

use super::{bounded, from_cluster, in_scope};
use crate::bindings::{HostResult, WitError, types, volumes};
use crate::capability::Capability;
use crate::state::HostState;

fn to_wit(s: VolumeSnapshot) -> volumes::VolumeSnapshot {
    volumes::VolumeSnapshot {
        id: s.id,
        workload: types::WorkloadRef {
            namespace: s.workload.namespace,
            name: s.workload.name,
        },
        volume: s.volume,
        created_ms: s.created_ms,
        bytes: s.bytes,
    }
}

/// Volume snapshots one run may take: far more than a workload has volumes, few enough that a
/// blueprint taking them in a loop cannot fill a disk or a cloud quota.
const MAX_SNAPSHOTS_PER_RUN: usize = 64;

impl volumes::Host for HostState {
    async fn snapshot(
        &mut self,
        workload: Option<types::WorkloadRef>,
        names: Vec<String>,
    ) -> HostResult<Vec<volumes::VolumeSnapshot>> {
        let timeout = self.call_timeout(self.action.limits.host_call_timeout);
        let mut target = self.scope();
        let checked = self
            .require(Capability::Volumes)
            .and_then(|h| Ok((h, self.resolve(workload)?)));
        let result = match checked {
            Err(e) => Err(e),
            Ok((host, w)) => {
                target = w.to_string();
                let taken = self.action.taken.clone();
                let counted = self.action.snapshots_taken.clone();
                bounded("volumes.snapshot", timeout, async {
                    let names = if names.is_empty() {
                        let info = host.cluster.workload(&w).await.map_err(from_cluster)?;
                        info.volumes.into_iter().map(|v| v.name).collect()
                    } else {
                        names
                    };
                    // Counted whether deleted since or not: a loop of snapshot and delete
                    // fills a cloud's quota too (it deletes in the background).
                    let already = counted.load(std::sync::atomic::Ordering::Relaxed);
                    if already + names.len() > MAX_SNAPSHOTS_PER_RUN {
                        return Err(WitError::Invalid(format!(
                            "a run takes at most {MAX_SNAPSHOTS_PER_RUN} volume snapshots (each a \
                             copy of a volume, or a cloud snapshot billed as one); this one has \
                             {already} and asked for {} more",
                            names.len()
                        )));
                    }
                    let mut snapshots = Vec::with_capacity(names.len());
                    for name in &names {
                        let snapshot = host
                            .cluster
                            .snapshot(&w, name)
                            .await
                            .map_err(from_cluster)?;
                        // Recorded at once: should a later volume fail, or the call's time run
                        // out, the run still knows of it (to wait on it, or delete it).
                        taken
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(snapshot.id.clone());
                        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        snapshots.push(to_wit(snapshot));
                    }
                    Ok(snapshots)
                })
                .await
            }
        };
        self.audit(Capability::Volumes, "volumes.snapshot", &target, &result);
        Ok(result)
    }

    async fn restore(&mut self, snapshot_id: String) -> HostResult<volumes::VolumeSnapshot> {
        let result = self
            .on_snapshot("volumes.restore", &snapshot_id, |cluster, id| async move {
                cluster.restore_snapshot(&id).await.map(to_wit)
            })
            .await;
        Ok(result)
    }

    async fn delete(&mut self, snapshot_id: String) -> HostResult<()> {
        let result = self
            .on_snapshot("volumes.delete", &snapshot_id, |cluster, id| async move {
                cluster.delete_snapshot(&id).await
            })
            .await;
        // Deleted, or gone already: not waited on, and not to be named by the run's outputs.
        if matches!(result, Ok(()) | Err(WitError::NotFound(_))) {
            let mut taken = self
                .action
                .taken
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let before = taken.len();
            taken.retain(|id| *id != snapshot_id);
            if taken.len() < before {
                self.action
                    .deleted_snapshots
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(snapshot_id);
            }
        }
        Ok(result)
    }
}

impl HostState {
    /// Runs `op` on the snapshot `snapshot_id` once the snapshot is known to belong to the
    /// action's scope: bounded by the host-call timeout, and audited as `call`.
    async fn on_snapshot<T, Op, Done>(
        &mut self,
        call: &'static str,
        snapshot_id: &str,
        op: Op,
    ) -> Result<T, WitError>
    where
        Op: FnOnce(Arc<dyn Cluster>, String) -> Done,
        Done: Future<Output = cairn_cluster::Result<T>>,
    {
        let timeout = self.call_timeout(self.action.limits.host_call_timeout);
        let result = match self.require(Capability::Volumes) {
            Err(e) => Err(e),
            Ok(host) => {
                let action = self.action.clone();
                bounded(call, timeout, async {
                    let info = host
                        .cluster
                        .snapshot_info(snapshot_id)
                        .await
                        .map_err(from_cluster)?;
                    in_scope(
                        &action,
                        &info.workload,
                        &format!("snapshot {snapshot_id:?}"),
                    )?;
                    op(host.cluster.clone(), snapshot_id.to_owned())
                        .await
                        .map_err(from_cluster)
                })
                .await
            }
        };
        self.audit(
            Capability::Volumes,
            call,
            &format!("snapshot {snapshot_id}"),
            &result,
        );
        result
    }
}
