//! `cairn:blueprint/workloads`: reading (capability `workloads`) and scaling (capability
//! `scale`) workloads in the action's namespace.

use std::time::Duration;

use cairn_cluster::{Workload, WorkloadKind};

use super::{bounded, from_cluster};
use crate::bindings::{HostResult, WitError, types, workloads};
use crate::capability::Capability;
use crate::state::HostState;

/// The most objects' JSON a `get-object`/`list-objects` call returns to the guest, so a large
/// namespace cannot blow through the guest's memory cap in one call.
const MAX_OBJECT_JSON: usize = 4 << 20;

pub(crate) fn workload_info(w: Workload) -> types::WorkloadInfo {
    types::WorkloadInfo {
        reference: types::WorkloadRef {
            namespace: w.reference.namespace,
            name: w.reference.name,
        },
        kind: match w.kind {
            WorkloadKind::Deployment => types::WorkloadKind::Deployment,
            WorkloadKind::StatefulSet => types::WorkloadKind::StatefulSet,
            WorkloadKind::Other => types::WorkloadKind::Other,
        },
        replicas: w.replicas,
        ready_replicas: w.ready_replicas,
        pods: w
            .pods
            .into_iter()
            .map(|p| types::PodInfo {
                name: p.name,
                ready: p.ready,
                containers: p.containers,
            })
            .collect(),
        volumes: w
            .volumes
            .into_iter()
            .map(|v| types::VolumeInfo {
                name: v.name,
                bytes: v.bytes,
            })
            .collect(),
    }
}

fn json_capped(value: &impl serde::Serialize, what: &str) -> Result<String, WitError> {
    let text = serde_json::to_string(value)
        .map_err(|e| WitError::Failed(format!("encoding {what}: {e}")))?;
    if text.len() > MAX_OBJECT_JSON {
        return Err(WitError::Invalid(format!(
            "{what} is {} bytes of JSON, over the limit of {MAX_OBJECT_JSON}; ask for fewer objects",
            text.len()
        )));
    }
    Ok(text)
}

impl workloads::Host for HostState {
    async fn get(
        &mut self,
        workload: Option<types::WorkloadRef>,
    ) -> HostResult<types::WorkloadInfo> {
        let timeout = self.call_timeout(self.action.limits.host_call_timeout);
        let checked = self
            .require(Capability::Workloads)
            .and_then(|h| Ok((h, self.resolve(workload)?)));
        Ok(match checked {
            Err(e) => Err(e),
            Ok((host, w)) => {
                bounded("workloads.get", timeout, async {
                    host.cluster
                        .workload(&w)
                        .await
                        .map(workload_info)
                        .map_err(from_cluster)
                })
                .await
            }
        })
    }

    async fn scale(
        &mut self,
        workload: Option<types::WorkloadRef>,
        replicas: u32,
    ) -> HostResult<u32> {
        let timeout = self.call_timeout(self.action.limits.host_call_timeout);
        let mut target = self.scope();
        let checked = self
            .require(Capability::Scale)
            .and_then(|h| Ok((h, self.resolve(workload)?)));
        let result = match checked {
            Err(e) => Err(e),
            Ok((host, w)) => {
                target = w.to_string();
                bounded("workloads.scale", timeout, async {
                    host.cluster.scale(&w, replicas).await.map_err(from_cluster)
                })
                .await
            }
        };
        self.audit(
            Capability::Scale,
            &format!("workloads.scale to {replicas}"),
            &target,
            &result,
        );
        Ok(result)
    }

    async fn wait_ready(
        &mut self,
        workload: Option<types::WorkloadRef>,
        timeout_ms: u64,
    ) -> HostResult<types::WorkloadInfo> {
        let wait = self.call_timeout(Duration::from_millis(timeout_ms));
        let checked = self
            .require(Capability::Workloads)
            .and_then(|h| Ok((h, self.resolve(workload)?)));
        Ok(match checked {
            Err(e) => Err(e),
            Ok((host, w)) => {
                bounded(
                    "workloads.wait-ready",
                    wait + Duration::from_secs(1),
                    async {
                        host.cluster
                            .wait_ready(&w, wait)
                            .await
                            .map(workload_info)
                            .map_err(from_cluster)
                    },
                )
                .await
            }
        })
    }

    async fn get_object(&mut self, kind: String, name: String) -> HostResult<String> {
        let timeout = self.call_timeout(self.action.limits.host_call_timeout);
        let namespace = self.action.namespace.clone();
        Ok(
            match readable(&kind).and_then(|()| self.require(Capability::Workloads)) {
                Err(e) => Err(e),
                Ok(host) => {
                    bounded("workloads.get-object", timeout, async {
                        let value = host
                            .cluster
                            .get_object(&namespace, &kind, &name)
                            .await
                            .map_err(from_cluster)?;
                        json_capped(&value, &format!("{kind} {name:?}"))
                    })
                    .await
                }
            },
        )
    }

    async fn list_objects(&mut self, kind: String) -> HostResult<String> {
        let timeout = self.call_timeout(self.action.limits.host_call_timeout);
        let namespace = self.action.namespace.clone();
        Ok(
            match readable(&kind).and_then(|()| self.require(Capability::Workloads)) {
                Err(e) => Err(e),
                Ok(host) => {
                    bounded("workloads.list-objects", timeout, async {
                        let values = host
                            .cluster
                            .list_objects(&namespace, &kind)
                            .await
                            .map_err(from_cluster)?;
                        json_capped(&values, &format!("the list of {kind}"))
                    })
                    .await
                }
            },
        )
    }
}

/// Refuses Secrets as objects: every credential of the namespace would reach the blueprint
/// outside the `secrets` capability, unredacted in its logs and outputs.
fn readable(kind: &str) -> Result<(), WitError> {
    let kind = kind.to_ascii_lowercase();
    if kind.strip_suffix('s').unwrap_or(&kind) == "secret" {
        return Err(WitError::Denied(
            "Secrets are not read as objects: a blueprint is given the credentials it needs \
             through the `secrets` capability (`--secret NAME=SOURCE`, a policy's `secrets:`), \
             which keeps them out of its logs and outputs"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_are_not_objects_a_blueprint_reads() {
        for kind in ["secret", "Secrets", "SECRET"] {
            assert!(super::readable(kind).is_err(), "{kind}");
        }
        assert!(super::readable("configmap").is_ok());
    }
}
