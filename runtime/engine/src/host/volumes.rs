//! `cairn:blueprint/volumes`: snapshots of the target workload's volumes (capability
//! `volumes`).

use cairn_cluster::VolumeSnapshot;

use super::{bounded, from_cluster, in_scope};
use crate::bindings::{HostResult, types, volumes};
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
                bounded("volumes.snapshot", timeout, async {
                    let names = if names.is_empty() {
                        let info = host.cluster.workload(&w).await.map_err(from_cluster)?;
                        info.volumes.into_iter().map(|v| v.name).collect()
                    } else {
                        names
                    };
                    let mut snapshots = Vec::with_capacity(names.len());
                    for name in &names {
                        snapshots.push(to_wit(
                            host.cluster
                                .snapshot(&w, name)
                                .await
                                .map_err(from_cluster)?,
                        ));
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
        let timeout = self.call_timeout(self.action.limits.host_call_timeout);
        let result = match self.require(Capability::Volumes) {
            Err(e) => Err(e),
            Ok(host) => {
                let action = self.action.clone();
                bounded("volumes.restore", timeout, async {
                    let info = host
                        .cluster
                        .snapshot_info(&snapshot_id)
                        .await
                        .map_err(from_cluster)?;
                    in_scope(
                        &action,
                        &info.workload,
                        &format!("snapshot {snapshot_id:?}"),
                    )?;
                    host.cluster
                        .restore_snapshot(&snapshot_id)
                        .await
                        .map(to_wit)
                        .map_err(from_cluster)
                })
                .await
            }
        };
        self.audit(
            Capability::Volumes,
            "volumes.restore",
            &format!("snapshot {snapshot_id}"),
            &result,
        );
        Ok(result)
    }

    async fn delete(&mut self, snapshot_id: String) -> HostResult<()> {
        let timeout = self.call_timeout(self.action.limits.host_call_timeout);
        let result = match self.require(Capability::Volumes) {
            Err(e) => Err(e),
            Ok(host) => {
                let action = self.action.clone();
                bounded("volumes.delete", timeout, async {
                    let info = host
                        .cluster
                        .snapshot_info(&snapshot_id)
                        .await
                        .map_err(from_cluster)?;
                    in_scope(
                        &action,
                        &info.workload,
                        &format!("snapshot {snapshot_id:?}"),
                    )?;
                    host.cluster
                        .delete_snapshot(&snapshot_id)
                        .await
                        .map_err(from_cluster)
                })
                .await
            }
        };
        self.audit(
            Capability::Volumes,
            "volumes.delete",
            &format!("snapshot {snapshot_id}"),
            &result,
        );
        Ok(result)
    }
}
