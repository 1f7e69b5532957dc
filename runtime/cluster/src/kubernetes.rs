//! The Kubernetes backend, through `kube`.
//!
//! - **Workloads** are the Deployments and StatefulSets of a namespace. Their pods are the pods
//!   their selector matches; their volumes are the PersistentVolumeClaims their pods mount
//!   (named in the pod template, or made from a StatefulSet's claim templates).
//! - **Exec** uses the pods' `exec` subresource over WebSocket. A pipeline runs one exec per
//!   program in the same container, its pipes joined through Cairn, so no shell is needed in
//!   the image. Extra environment variables are passed through `env(1)`, which must be in the
//!   image. Closing a command's stdin takes the `v5.channel.k8s.io` protocol, on by default
//!   since Kubernetes 1.30; with older API servers a command that reads stdin, and a pipeline,
//!   are refused before anything starts (the command would see its input end at once, and its
//!   exit status would be lost with the connection): whether the server can is learned once,
//!   from an exec of a program that does not exist (until it can). At the deadline Cairn closes the exec;
//!   Kubernetes gives no way to kill what it started, so a command that ignores the end of its
//!   input runs on in the container.
//! - **A broken stdin source** (an object store error, a damaged pack part-way through a
//!   restore stream) cannot be kept from a command in an application's pod: closing or
//!   dropping the exec ends its stdin, and it sees a clean end of input. A command that commits
//!   at the end of its input (`psql --single-transaction`, `redis-cli --pipe`) then commits
//!   the part it read, though Cairn reports the exec failed. Run such restores as commands for
//!   a stopped workload (`stopped`), whose pod is Cairn's own: there Cairn deletes the pod and
//!   waits for the command to die before its stdin ends. Otherwise make the input say where it
//!   ends (a trailer the command checks before committing).
//! - **Scale** sets a workload's replicas. A scale-down returns once the pods it removes are
//!   gone; one to zero leaves the count the workload had in an annotation
//!   (`cairn.dev/scaled-from`), which the next scale to zero answers should Cairn have stopped
//!   before scaling it back. A scale that writes or clears that mark is one merge patch of the
//!   Deployment or StatefulSet; the others, and a role that may not patch the workload, go
//!   through the `scale` subresource. A StatefulSet that deletes its claims on scale-down is not scaled
//!   down.
//! - **Snapshots** are CSI VolumeSnapshots (`snapshot.storage.k8s.io/v1`) of a claim, in the
//!   claim's namespace, with the cluster's default snapshot class unless one is named. Their
//!   id is `NAMESPACE/NAME`. Taking one returns once it is cut (`creationTime` set), and
//!   [`Cluster::snapshot_ready`] waits until it is ready to use. Restoring one replaces the
//!   claim with one provisioned from the snapshot, which needs the workload scaled to zero, and
//!   waits until the new claim is bound when its storage class binds at once.
//! - A command for a stopped workload (`stopped`) runs in a pod of Cairn's own,
//!   `WORKLOAD-stopped`, made from the workload's pod template while it is at zero replicas
//!   and no other pod mounts its claims: the container asked for, with its image and volumes,
//!   kept alive by `sleep`. The call returns once that pod is gone, within the command's
//!   timeout, so a restore of the claims can follow at once.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    Namespace, PersistentVolume, PersistentVolumeClaim, Pod as KubePod, PodTemplateSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Status};
use kube::api::{
    Api, ApiResource, AttachParams, DeleteParams, DynamicObject, ListParams, Patch, PatchParams,
    PostParams,
};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::pipes::{self, Pipes, Reader, StreamFailure, Writer, pipefail};
use crate::ws_exec::Exec;
use crate::{
    Cluster, Error, ExecOutput, ExecRequest, HOST_CALL_BUDGET, Pod, Result, Volume, VolumeSnapshot,
    Workload, WorkloadKind, WorkloadRef, failed, is_dns_label, is_dns_subdomain, list_hint,
    workload_json,
};

/// Pause between two looks at a workload becoming ready, a snapshot becoming ready to use or a
/// claim going away.
const POLL: Duration = Duration::from_millis(500);

/// How long a new snapshot may take to be cut (its point in time taken: `creationTime` set),
/// while the workload may be quiesced: below [`HOST_CALL_BUDGET`], with room for the API calls
/// around the wait, so a slow cut ends with this timeout (the snapshot deleted) rather than the
/// call dropped.
const SNAPSHOT_CUT_TIMEOUT: Duration = Duration::from_secs(540);
const _: () = assert!(SNAPSHOT_CUT_TIMEOUT.as_secs() < HOST_CALL_BUDGET.as_secs());

/// How long a claim made from a snapshot may take to be bound, when its class binds at once.
const CLAIM_BIND_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a restore waits for its snapshot to be ready to use (a cloud still copying one
/// taken moments ago). With [`CLAIM_GONE_TIMEOUT`] and [`CLAIM_BIND_TIMEOUT`] it keeps a
/// restore within the engine's 600 s for a host call, so the call is not dropped between the
/// old claim's deletion and the new one's creation. A longer copy ends the restore before
/// anything is changed, and the error tells the user to run it again once `kubectl get
/// volumesnapshot` shows the snapshot ready to use.
const RESTORE_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a claim a restore deletes may take to go away: no pod mounts it (checked first), so
/// only its finalizers are left.
const CLAIM_GONE_TIMEOUT: Duration = Duration::from_secs(120);

// A restore's waits stay below the engine's timeout of a host call, with room for its API
// calls.
const _: () = assert!(
    RESTORE_READY_TIMEOUT.as_secs() + CLAIM_GONE_TIMEOUT.as_secs() + CLAIM_BIND_TIMEOUT.as_secs()
        < HOST_CALL_BUDGET.as_secs()
);

/// The longest a stopped workload's pod, deleted, is waited for to go away (its containers
/// stopped, its volumes unmounted), within the command's timeout. A restore's claims have
/// [`CLAIM_GONE_TIMEOUT`].
const GONE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a stopped workload's pod outlives its command's deadline, should Cairn not delete it.
const STOPPED_POD_GRACE: Duration = Duration::from_secs(120);

/// How long a stopped workload's pod may take to start (pulling its image included).
const STOPPED_POD_START_TIMEOUT: Duration = Duration::from_secs(300);
/// How long an error on a VolumeSnapshot may stand before it counts: the snapshot controller
/// clears the ones it retries.
const SNAPSHOT_ERROR_GRACE: Duration = Duration::from_secs(60);
/// The least a scale-down waits for the pods it removes to stop (a pod on a lost node, a slow
/// unmount); longer grace periods wait longer, up to [`SCALE_DOWN_MAX`].
const SCALE_DOWN_TIMEOUT: Duration = Duration::from_secs(300);

/// The longest a scale-down waits, however long its pods' grace periods: below the engine's
/// timeout of a host call ([`HOST_CALL_BUDGET`]), with room for the scale's API calls.
const SCALE_DOWN_MAX: Duration = Duration::from_secs(540);

/// What a scale-down waits beyond its pods' grace periods: the controller noticing, the
/// kubelet stopping each pod, its volumes unmounted.
const SCALE_DOWN_MARGIN: Duration = Duration::from_secs(30);

/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// The annotation naming the workload whose volume a snapshot copies.
const WORKLOAD_ANNOTATION: &str = "cairn.dev/workload";

/// The annotation recording, as JSON, what of its claim a snapshot needs to make the claim
/// again once it is gone (a claim deleted, a StatefulSet's claims removed with it): its storage
/// class, access modes, volume mode and requested size. A claim made with the cluster's default
/// class, `ReadWriteOnce` and `Filesystem` would not provision from a snapshot of a block volume
/// or of another driver's class, and `status.restoreSize` is optional.
const CLAIM_ANNOTATION: &str = "cairn.dev/claim";

/// On a volume whose claim a restore replaced: `NAMESPACE/CLAIM`. Cairn set its reclaim policy
/// to Retain first, so the old data outlives the claim until the new one is bound.
const REPLACED_ANNOTATION: &str = "cairn.dev/replaced-claim";

/// The fields of a claim's spec [`CLAIM_ANNOTATION`] keeps.
const CLAIM_FIELDS: [&str; 4] = ["accessModes", "storageClassName", "volumeMode", "resources"];

/// The annotation Cairn leaves on a workload it scaled to zero: `N@G`, its replicas before and
/// its generation after. Should Cairn stop before scaling it back (killed, its node lost), the
/// next scale reads the count from it, so the workload does not stay down for good; a
/// generation changed since means someone else changed the workload, and it is ignored.
const SCALED_FROM_ANNOTATION: &str = "cairn.dev/scaled-from";

/// How many times a scale reads its workload again when someone else changed it between the
/// read and the write (the mark's generation is only right on the version read).
const SCALE_CONFLICT_TRIES: u32 = 3;

/// The group of CSI volume snapshots.
const SNAPSHOT_GROUP: &str = "snapshot.storage.k8s.io";

/// A Kubernetes cluster, reached through the API server.
#[derive(Clone)]
pub struct KubeCluster {
    client: kube::Client,
    snapshot_class: Option<String>,
    /// Set once the API server's exec was seen to close a command's stdin.
    closes_stdin: std::sync::Arc<std::sync::OnceLock<()>>,
}

impl std::fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCluster")
            .field("snapshot_class", &self.snapshot_class)
            .finish_non_exhaustive()
    }
}

impl KubeCluster {
    /// Waits until VolumeSnapshot `namespace/name` is cut (its `creationTime` set: the point in
    /// time is taken, though a cloud may still be copying it) or, with `ready`, ready to use.
    /// An error the snapshot controller reports is final once it has stood for a while: it sets
    /// errors it then retries and clears itself (a conflict updating the object).
    async fn await_snapshot(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
        ready: bool,
    ) -> Result<VolumeSnapshot> {
        let api = self.snapshots(namespace);
        let what = format!(
            "VolumeSnapshot {namespace}/{name} to be {}",
            if ready { "ready to use" } else { "taken" }
        );
        let erring_since = std::sync::Mutex::new(None::<std::time::Instant>);
        let (api, erring_since) = (&api, &erring_since);
        poll(&what, timeout, || async move {
            let current = match api.get(name).await {
                Ok(current) => current,
                // A long wait for readiness outlives a passing API error; a snapshot that is
                // gone ends it.
                Err(e) if ready && !matches!(&e, kube::Error::Api(s) if s.code == 404) => {
                    tracing::debug!(error = %e, "reading VolumeSnapshot {namespace}/{name}; trying again");
                    return Ok(None);
                }
                Err(e) => {
                    return Err(api_error(format!("reading VolumeSnapshot {namespace}/{name}"), e));
                }
            };
            let status = &current.data["status"];
            match status["error"]["message"].as_str() {
                Some(message) => {
                    let since = *erring_since
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= SNAPSHOT_ERROR_GRACE {
                        return Err(Error::Failed {
                            what: format!("VolumeSnapshot {namespace}/{name}"),
                            source: message.into(),
                        });
                    }
                }
                None => {
                    *erring_since
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                }
            }
            let usable = status["readyToUse"].as_bool() == Some(true);
            let done = usable || (!ready && !status["creationTime"].is_null());
            Ok(done.then(|| snapshot_of(&current)))
        })
        .await
    }
    /// Keeps the volume bound to `claim`, about to be deleted and made again from a snapshot:
    /// its reclaim policy set to Retain, so the data it holds outlives the claim until the new
    /// one is bound (a failed provisioning would otherwise leave neither). The volume's name
    /// and the policy to put back; `None` when there is nothing to keep (no bound volume, one
    /// retained already, one whose `claimRef` is not this claim) or Cairn may not read or change
    /// volumes (warned: the claim is then replaced as it was before, the old data going with
    /// it).
    async fn keep_volume(&self, claim: &PersistentVolumeClaim) -> Result<Option<(String, String)>> {
        let Some(name) = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|n| !n.is_empty())
        else {
            return Ok(None);
        };
        let of = format!(
            "{}/{}",
            claim.metadata.namespace.as_deref().unwrap_or_default(),
            claim.metadata.name.as_deref().unwrap_or_default()
        );
        let unprotected = |e: &dyn std::fmt::Display| {
            tracing::warn!(claim = %of, volume = %name, error = %e,
                "cannot keep the claim's volume while it is replaced (grant Cairn get and patch \
                 on persistentvolumes): its data goes with the old claim");
        };
        let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
        let volume = match volumes.get_opt(&name).await {
            Ok(Some(v)) => v,
            Ok(None) => return Ok(None),
            Err(kube::Error::Api(s)) if s.code == 403 => {
                unprotected(&s.message);
                return Ok(None);
            }
            Err(e) => return Err(api_error(format!("reading volume {name}"), e)),
        };
        // Only the claim's own volume: a claim names any volume it likes in `volumeName`
        // (whoever may create claims in a protected namespace), and Cairn's cluster-wide patch
        // on volumes must not change another namespace's on its word.
        let bound_back = volume
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .is_some_and(|r| {
                r.namespace.as_deref() == claim.metadata.namespace.as_deref()
                    && r.name.as_deref() == claim.metadata.name.as_deref()
                    && (r.uid.is_none()
                        || claim.metadata.uid.is_none()
                        || r.uid == claim.metadata.uid)
            });
        if !bound_back {
            tracing::warn!(claim = %of, volume = %name,
                "the volume the claim names is not bound to it (its claimRef names another \
                 claim, or none): left as it is, and not kept while the claim is replaced");
            return Ok(None);
        }
        let policy = volume
            .spec
            .and_then(|s| s.persistent_volume_reclaim_policy)
            .unwrap_or_else(|| "Delete".into());
        if policy == "Retain" {
            return Ok(None);
        }
        let patch = Patch::Merge(json!({
            "metadata": { "annotations": { REPLACED_ANNOTATION: of } },
            "spec": { "persistentVolumeReclaimPolicy": "Retain" },
        }));
        match volumes.patch(&name, &PatchParams::default(), &patch).await {
            Ok(_) => Ok(Some((name, policy))),
            Err(kube::Error::Api(s)) if s.code == 403 => {
                unprotected(&s.message);
                Ok(None)
            }
            Err(e) => Err(api_error(format!("keeping volume {name}"), e)),
        }
    }

    /// Gives a volume [`KubeCluster::keep_volume`] kept back its reclaim policy, once its
    /// claim's replacement is bound: the cluster then reclaims it as it would have.
    async fn release_volume(&self, name: &str, policy: &str) {
        let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
        let patch = Patch::Merge(json!({
            "metadata": { "annotations": { REPLACED_ANNOTATION: null } },
            "spec": { "persistentVolumeReclaimPolicy": policy },
        }));
        if let Err(e) = volumes.patch(name, &PatchParams::default(), &patch).await {
            tracing::warn!(volume = %name, error = %e,
                "the old volume keeps reclaim policy Retain: set its persistentVolumeReclaimPolicy \
                 back to {policy} when it is no longer needed, so the cluster reclaims it (deleting \
                 the PersistentVolume alone leaves the storage behind)");
        }
    }

    /// Waits until claim `namespace/claim`, just made from VolumeSnapshot `id`, is bound, when
    /// its storage class provisions at once (`volumeBindingMode: Immediate`, the default): a
    /// failure to provision (a snapshot of another driver, a quota, a zone) then fails the
    /// restore rather than showing only as the workload's pods staying Pending. A class that
    /// binds on its first consumer is not waited for (the workload is at zero replicas), nor is
    /// a class Cairn cannot read or a claim of no class (it is warned about). Whether it saw
    /// the claim bound.
    async fn await_bound(
        &self,
        namespace: &str,
        claim: &str,
        class: Option<&str>,
        id: &str,
    ) -> Result<bool> {
        // `""` asks for no class: a volume made for the claim by hand, bound when it is.
        if class == Some("") {
            return Ok(false);
        }
        let class = match self.binding_class(class).await {
            Ok(Some(class)) => class,
            Ok(None) => {
                tracing::warn!(claim = %format!("{namespace}/{claim}"),
                    "the claim has no storage class and the cluster no default one: not waiting \
                     for it to be bound");
                return Ok(false);
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                tracing::warn!(claim = %format!("{namespace}/{claim}"), class = class.unwrap_or_default(),
                    "the claim's storage class does not exist: it is bound only to a volume made \
                     for it by hand");
                return Ok(false);
            }
            Err(e) => {
                tracing::warn!(claim = %format!("{namespace}/{claim}"), error = %e,
                    "cannot read the claim's storage class (grant Cairn get and list on \
                     storageclasses): not waiting for the claim to be bound");
                return Ok(false);
            }
        };
        let mode = class
            .volume_binding_mode
            .clone()
            .unwrap_or_else(|| "Immediate".into());
        if mode != "Immediate" {
            return Ok(false);
        }
        let class_name = class.metadata.name.unwrap_or_default();
        let claims: Api<PersistentVolumeClaim> = self.api(namespace);
        let what = format!("claim {namespace}/{claim} to be bound");
        let claims = &claims;
        poll(&what, CLAIM_BIND_TIMEOUT, || async move {
            let current = claims
                .get_opt(claim)
                .await
                .map_err(|e| api_error(format!("reading claim {namespace}/{claim}"), e))?;
            let phase = current
                .as_ref()
                .and_then(|c| c.status.as_ref())
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            match (current, phase.as_str()) {
                (Some(_), "Bound") => Ok(Some(())),
                (Some(_), "Lost") | (None, _) => Err(Error::Invalid(format!(
                    "claim {namespace}/{claim}, made from VolumeSnapshot {id}, is {}: restore \
                     the snapshot again",
                    if phase == "Lost" {
                        "lost its volume"
                    } else {
                        "gone"
                    }
                ))),
                _ => Ok(None),
            }
        })
        .await
        .map_err(|e| match e {
            Error::TimedOut { after, .. } => failed(
                format!("provisioning claim {namespace}/{claim} from VolumeSnapshot {id}"),
                format!(
                    "still Pending after {} s although class {class_name} binds at once: see \
                     `kubectl describe pvc -n {namespace} {claim}` (the snapshot still holds the \
                     data; restore it again once the cause is fixed)",
                    after.as_secs()
                ),
            ),
            e => e,
        })
        .map(|()| true)
    }

    /// The storage class a claim of class `name` gets: that one, or with no name the cluster's
    /// default (`None` when it has none).
    async fn binding_class(
        &self,
        name: Option<&str>,
    ) -> std::result::Result<Option<StorageClass>, kube::Error> {
        let classes: Api<StorageClass> = Api::all(self.client.clone());
        if let Some(name) = name {
            return classes.get(name).await.map(Some);
        }
        let is_default = |c: &StorageClass| {
            c.metadata.annotations.as_ref().is_some_and(|a| {
                [
                    "storageclass.kubernetes.io/is-default-class",
                    "storageclass.beta.kubernetes.io/is-default-class",
                ]
                .iter()
                .any(|k| a.get(*k).is_some_and(|v| v == "true"))
            })
        };
        // With several defaults, Kubernetes gives a new claim the newest.
        Ok(classes
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(is_default)
            .max_by_key(|c| c.metadata.creation_timestamp.clone()))
    }

    /// A backend talking through `client`.
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            snapshot_class: None,
            closes_stdin: Default::default(),
        }
    }

    /// A backend for the cluster of a kubeconfig context, or with `None` the one `kubectl`
    /// would use (`KUBECONFIG`, `~/.kube/config`, else the pod's service account).
    pub async fn connect(context: Option<&str>) -> Result<Self> {
        Ok(Self::new(client(context).await?))
    }

    /// Takes snapshots with this VolumeSnapshotClass instead of the cluster's default one.
    #[must_use]
    pub fn with_snapshot_class(mut self, class: impl Into<String>) -> Self {
        self.snapshot_class = Some(class.into());
        self
    }

    fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn snapshots(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &snapshot_resource())
    }

    /// The VolumeSnapshot of a snapshot id (`NAMESPACE/NAME`).
    async fn snapshot_object(&self, id: &str) -> Result<DynamicObject> {
        let (namespace, name) = parse_snapshot_id(id)?;
        self.snapshots(namespace)
            .get_opt(name)
            .await
            .map_err(|e| api_error(format!("reading VolumeSnapshot {id}"), e))?
            .ok_or_else(|| Error::NotFound {
                kind: "snapshot",
                name: id.to_owned(),
                hint: String::new(),
            })
    }

    /// Fails with a not-found error naming the namespaces when `namespace` does not exist.
    async fn check_namespace(&self, namespace: &str) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let found = match api.get_opt(namespace).await {
            Ok(found) => found,
            // Reading namespaces takes a cluster-wide grant that a namespaced Role lacks: the
            // calls that follow then tell for themselves.
            Err(kube::Error::Api(status)) if status.code == 403 => return Ok(()),
            Err(e) => return Err(api_error(format!("reading namespace {namespace}"), e)),
        };
        if found.is_some() {
            return Ok(());
        }
        Err(Error::NotFound {
            kind: "namespace",
            name: namespace.to_owned(),
            hint: list_hint("the namespaces are", self.namespaces().await?.iter()),
        })
    }

    /// The Deployment or StatefulSet `workload`.
    async fn find(&self, workload: &WorkloadRef) -> Result<Found> {
        checked_ref(workload)?;
        let ns = &workload.namespace;
        let reading = |e| api_error(format!("reading workload {workload}"), e);
        if let Some(d) = self
            .api::<Deployment>(ns)
            .get_opt(&workload.name)
            .await
            .map_err(reading)?
        {
            return Ok(Found::deployment(d));
        }
        if let Some(s) = self
            .api::<StatefulSet>(ns)
            .get_opt(&workload.name)
            .await
            .map_err(reading)?
        {
            return Ok(Found::stateful_set(s));
        }
        self.check_namespace(ns).await?;
        let mut names: Vec<String> = self.all(ns).await?.into_iter().map(|f| f.name).collect();
        names.sort();
        Err(Error::NotFound {
            kind: "workload",
            name: workload.to_string(),
            hint: list_hint(
                &format!("namespace {ns} has the Deployments and StatefulSets"),
                names.iter(),
            ),
        })
    }

    /// Every Deployment and StatefulSet of `namespace`.
    async fn all(&self, namespace: &str) -> Result<Vec<Found>> {
        let listing = |e| api_error(format!("listing the workloads of namespace {namespace}"), e);
        let params = ListParams::default();
        let mut found: Vec<Found> = self
            .api::<Deployment>(namespace)
            .list(&params)
            .await
            .map_err(listing)?
            .items
            .into_iter()
            .map(Found::deployment)
            .collect();
        found.extend(
            self.api::<StatefulSet>(namespace)
                .list(&params)
                .await
                .map_err(listing)?
                .items
                .into_iter()
                .map(Found::stateful_set),
        );
        Ok(found)
    }

    /// What the seam knows of a found workload: its pods and its claims.
    async fn describe(&self, namespace: &str, found: &Found) -> Result<Workload> {
        Ok(self.inspect(namespace, found).await?.0)
    }

    /// [`KubeCluster::describe`], and the running pods its selector matches that no controller
    /// owns (made by hand, a debug copy): not its replicas, as neither a ReplicaSet (which
    /// selects on `pod-template-hash` too) nor a StatefulSet (which takes only pods named by
    /// its ordinals) adopts them, but named where they may explain a refusal.
    async fn inspect(&self, namespace: &str, found: &Found) -> Result<(Workload, Vec<String>)> {
        let reference = WorkloadRef::new(namespace, &found.name);
        let matched = match found.selector.as_ref().map(selector_query).transpose()? {
            // An empty selector would match every pod of the namespace: it has none of its own.
            None => Vec::new(),
            Some(query) if query.is_empty() => Vec::new(),
            Some(query) => self
                .api::<KubePod>(namespace)
                .list(&ListParams::default().labels(&query))
                .await
                .map_err(|e| api_error(format!("listing the pods of {reference}"), e))?
                .items
                .into_iter()
                .filter(|p| !ended(p))
                .collect(),
        };
        let mut pods = Vec::new();
        let mut orphans = Vec::new();
        for pod in matched {
            match owned_by(&pod, found) {
                Some(true) => pods.push(pod_of(pod)),
                Some(false) => {}
                None => orphans.extend(pod.metadata.name),
            }
        }
        let mut claims = found.claims.clone();
        if !found.claim_templates.is_empty() {
            let existing = self
                .api::<PersistentVolumeClaim>(namespace)
                .list(&ListParams::default())
                .await
                .map_err(|e| api_error(format!("listing the claims of {reference}"), e))?;
            for claim in existing.items {
                let Some(name) = claim.metadata.name else {
                    continue;
                };
                if found
                    .claim_templates
                    .iter()
                    .any(|t| is_ordinal_claim(&name, t, &found.name))
                {
                    claims.push(name);
                }
            }
        }
        claims.sort();
        claims.dedup();
        let workload = Workload {
            reference,
            kind: found.kind,
            replicas: found.replicas,
            ready_replicas: found.ready_replicas,
            pods,
            volumes: claims
                .into_iter()
                .map(|name| Volume { name, bytes: None })
                .collect(),
            labels: found.labels.clone(),
            left_stopped: None,
        };
        Ok((workload, orphans))
    }

    /// Starts one exec per program of the pipeline and joins their pipes.
    async fn start(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        argvs: Vec<Vec<String>>,
        has_stdin: bool,
    ) -> std::result::Result<Started, kube::Error> {
        // The first program first: should a later start fail (the pod dying, the API server
        // overloaded), what runs and is then cut off is a producer, not a consumer (often the
        // destructive half of a restore) left to read an empty input. Without `v5` a pipeline
        // is refused before this, as its programs' stdin could not be closed.
        let mut procs = Vec::with_capacity(argvs.len());
        for (i, argv) in argvs.into_iter().enumerate() {
            let params = AttachParams::default()
                .container(container)
                .stdin(i > 0 || has_stdin)
                .stdout(true)
                .stderr(true);
            procs.push(Exec::start(&self.client, namespace, pod, argv, &params).await?);
        }
        let statuses: Vec<Shared<BoxFuture<'static, Option<Status>>>> = procs
            .iter_mut()
            .map(|p| match p.take_status() {
                Some(status) => status.boxed().shared(),
                None => futures::future::ready(None).boxed().shared(),
            })
            .collect();
        let mut stdouts: Vec<Option<Reader>> = procs
            .iter_mut()
            .map(|p| p.stdout().map(|r| Box::new(r) as Reader))
            .collect();
        let mut stdins: Vec<Option<Writer>> = procs
            .iter_mut()
            .map(|p| p.stdin().map(|w| Box::new(w) as Writer))
            .collect();
        let stderrs = procs
            .iter_mut()
            .map(|p| p.stderr().map(|r| Box::new(r) as Reader))
            .collect();
        let mut relays = Vec::with_capacity(procs.len().saturating_sub(1));
        for i in 1..procs.len() {
            if let (Some(from), Some(to)) = (stdouts[i - 1].take(), stdins[i].take()) {
                relays.push(relay(from, to, statuses[i].clone()));
            }
        }
        Ok(Started {
            pipes: Pipes {
                stdin: stdins.first_mut().and_then(Option::take),
                stdout: stdouts.last_mut().and_then(Option::take),
                stderrs,
            },
            relays,
            statuses,
            procs,
        })
    }

    /// Whether the API server's exec can close a command's stdin: asked until it can (a
    /// cluster upgraded while Cairn runs is then seen), then known.
    async fn exec_closes_stdin(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> std::result::Result<bool, kube::Error> {
        if self.closes_stdin.get().is_some() {
            return Ok(true);
        }
        let closes = crate::ws_exec::closes_stdin(&self.client, namespace, pod, container).await?;
        if closes {
            let _ = self.closes_stdin.set(());
        }
        Ok(closes)
    }

    /// The error of an exec of `what` in `container` of `pod` that could not start. An API
    /// server that refuses the upgrade (a completed pod, a container not running, as a pod
    /// dying between Cairn's look and the exec) says little ("container not found"), or
    /// nothing but a status code: the container's state, read from the pod, says why.
    async fn exec_refused(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        what: &str,
        e: kube::Error,
    ) -> Error {
        let refused = match &e {
            // The server answered, but not with the upgrade; the other upgrade errors are
            // transport faults (kube 5 gives 4xx and 5xx answers as `Error::Api`).
            kube::Error::UpgradeConnection(
                kube::client::UpgradeConnectionError::ProtocolSwitch(_),
            ) => true,
            kube::Error::Api(s) => s.code == 400 || s.code >= 500,
            _ => false,
        };
        if !refused {
            return api_error(format!("starting {what}"), e);
        }
        let state = match self.api::<KubePod>(namespace).get_opt(pod).await {
            Ok(Some(found)) => {
                let status = found.status.unwrap_or_default();
                let phase = status.phase.unwrap_or_default();
                let state = status
                    .container_statuses
                    .iter()
                    .flatten()
                    .find(|c| c.name == container)
                    .and_then(|c| c.state.clone());
                match state {
                    _ if phase == "Succeeded" || phase == "Failed" => {
                        format!("pod {pod} has ended ({phase})")
                    }
                    Some(s) if s.running.is_none() => match (s.waiting, s.terminated) {
                        (Some(w), _) => format!(
                            "container {container} of pod {pod} is not running: waiting ({}); \
                             try again once it runs",
                            w.reason.unwrap_or_default()
                        ),
                        (_, Some(t)) => format!(
                            "container {container} of pod {pod} is not running: terminated \
                             ({}); try again once it runs",
                            t.reason.unwrap_or_default()
                        ),
                        _ => format!("container {container} of pod {pod} is not running"),
                    },
                    _ => format!(
                        "pod {pod} is {phase}; see `kubectl describe pod -n {namespace} {pod}`"
                    ),
                }
            }
            Ok(None) => format!("pod {pod} is gone"),
            Err(read) => format!("reading pod {pod} to tell why: {read}"),
        };
        failed(
            format!("starting {what}"),
            format!(
                "the API server refused the exec ({}): {state}",
                match &e {
                    kube::Error::Api(s) => s.message.clone(),
                    e => e.to_string(),
                }
            ),
        )
    }

    /// Runs the request's pipeline in `container` of `pod`; `own` when the pod is Cairn's own
    /// (a stopped workload's), which may then be deleted to kill the command.
    async fn run_in(
        &self,
        workload: &WorkloadRef,
        pod: &str,
        container: &str,
        request: ExecRequest,
        own: Option<&Api<KubePod>>,
    ) -> Result<ExecOutput> {
        let stages = request.stages()?;
        let env = request.checked_env()?;
        let argvs: Vec<Vec<String>> = stages
            .iter()
            .map(|argv| {
                if env.is_empty() {
                    return argv.to_vec();
                }
                let mut with_env = vec!["env".to_owned()];
                with_env.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
                with_env.extend(argv.iter().cloned());
                with_env
            })
            .collect();
        let programs: Vec<&str> = stages.iter().map(|a| a[0].as_str()).collect();
        let what = format!(
            "{} in pod {} of workload {workload}",
            programs.join(" | "),
            pod
        );
        let has_stdin = !matches!(request.stdin, crate::Stdin::Empty);
        let run = async {
            // Refused before anything starts: a command started with stdin on an API server
            // that cannot close it would see its stdin end at once and run on (`rm -rf DIR/*
            // && cat > DIR/dump` would run its first half).
            let starting = |e| self.exec_refused(&workload.namespace, pod, container, &what, e);
            if (has_stdin || argvs.len() > 1)
                && !match self
                    .exec_closes_stdin(&workload.namespace, pod, container)
                    .await
                {
                    Ok(closes) => closes,
                    Err(e) => return Err(starting(e).await),
                }
            {
                return Err(failed(
                    format!("starting {what}"),
                    no_stream_close(has_stdin, argvs.len()),
                ));
            }
            let started = match self
                .start(&workload.namespace, pod, container, argvs, has_stdin)
                .await
            {
                Ok(started) => started,
                Err(e) => return Err(starting(e).await),
            };
            let Started {
                pipes,
                relays,
                statuses,
                procs,
            } = started;
            let statuses_watched = statuses.clone();
            let exit = async {
                let (relayed, statuses) = tokio::join!(
                    futures::future::join_all(relays),
                    futures::future::join_all(statuses)
                );
                for r in relayed {
                    r?;
                }
                let codes = statuses
                    .into_iter()
                    .map(exit_code)
                    .collect::<std::result::Result<Vec<i32>, String>>()
                    .map_err(|message| StreamFailure {
                        stage: "running it",
                        error: std::io::Error::other(message),
                    })?;
                pipefail(codes).ok_or(StreamFailure {
                    stage: "starting it",
                    error: std::io::Error::other("no program to run"),
                })
            };
            let stdin_bytes = AtomicU64::new(0);
            // No exec can be killed, and an exec closed ends its stdin all the same; a pod of
            // Cairn's own can be deleted, which kills the command before its stdin ends.
            let cut = KillPod {
                pods: own.cloned(),
                name: pod.to_owned(),
                ended: statuses_watched,
            };
            let finished = pipes::drive(
                pipes,
                request.stdin,
                request.stdout,
                request.output_limit,
                &stdin_bytes,
                &cut,
                exit,
            )
            .await
            .map_err(|failure| failure.into_error(&what))?;
            // The execs have ended; closing them is all that is left.
            drop(procs);
            Ok(finished)
        };
        let finished = tokio::time::timeout(request.timeout, run)
            .await
            .map_err(|_| Error::TimedOut {
                what: what.clone(),
                after: request.timeout,
            })??;
        Ok(finished.into_output(pod.to_owned()))
    }

    /// Runs the request in a pod of Cairn's own, `WORKLOAD-stopped`, made from the workload's
    /// pod template while it is scaled to zero: the one container asked for, with the
    /// workload's image and volumes, kept alive by `sleep` instead of its own command, without
    /// probes, init containers or other containers. The pod is deleted afterwards; should
    /// Cairn die first, its deadline ends it.
    async fn exec_stopped(
        &self,
        workload: &WorkloadRef,
        request: ExecRequest,
    ) -> Result<ExecOutput> {
        // The whole call shares the command's timeout, as the engine bounds the call by it:
        // the API calls, an earlier pod's removal and the pod's start leave the command less,
        // not the call more.
        let started = std::time::Instant::now();
        let timeout = request.timeout;
        let left = || timeout.saturating_sub(started.elapsed());
        request.stages()?;
        request.checked_env()?;
        let found = self.find(workload).await?;
        let described = self.describe(&workload.namespace, &found).await?;
        if described.replicas > 0 || !described.pods.is_empty() {
            return Err(Error::Invalid(format!(
                "workload {workload} has {} replicas and {} pods: a command for a stopped \
                 workload runs only while it is scaled to zero (scale it down first, or run the \
                 command in a pod)",
                described.replicas,
                described.pods.len()
            )));
        }
        if let Some(pod) = &request.pod {
            return Err(Error::Invalid(format!(
                "a command for a stopped workload runs in no pod of its own; drop the pod {pod:?}"
            )));
        }
        let name = format!("{}-stopped", workload.name);
        // Cairn's own pod of that name is handled below.
        let users = self.other_claim_users(workload, &described).await?;
        if !users.is_empty() {
            return Err(Error::Invalid(format!(
                "workload {workload} is scaled to zero but pod(s) {} mount its claims: a \
                 command for a stopped workload runs only while no other pod uses its volumes \
                 (delete those pods first)",
                users.join(", ")
            )));
        }
        let container = request.container_in(&name, &found.containers)?;
        let keep_alive = request
            .timeout
            .as_secs()
            .saturating_add(STOPPED_POD_GRACE.as_secs());
        // The template as the API server gave it, not through k8s-openapi's types, which drop
        // the fields of Kubernetes versions newer than theirs.
        let resource = match found.kind {
            WorkloadKind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
            _ => ApiResource::erase::<Deployment>(&()),
        };
        let mut raw = Api::<DynamicObject>::namespaced_with(
            self.client.clone(),
            &workload.namespace,
            &resource,
        )
        .get(&workload.name)
        .await
        .map_err(|e| api_error(format!("reading workload {workload}"), e))?;
        let spec = stopped_pod_spec(
            raw.data["spec"]["template"]["spec"].take(),
            &container,
            keep_alive,
            // The deadline runs from the pod's start time, before its image is pulled; `sleep`
            // from its container's start, after.
            keep_alive.saturating_add(request.timeout.min(STOPPED_POD_START_TIMEOUT).as_secs()),
            // A StatefulSet's claims are not in its template: its first replica's are mounted.
            found
                .claim_templates
                .iter()
                .map(|t| (t.as_str(), format!("{t}-{}-0", workload.name))),
        );
        let pod = DynamicObject {
            types: Some(kube::core::TypeMeta {
                api_version: "v1".into(),
                kind: "Pod".into(),
            }),
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(workload.namespace.clone()),
                // Not the workload's labels: its selector must not count this pod.
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "cairn".to_owned(),
                )])),
                annotations: Some(BTreeMap::from([(
                    WORKLOAD_ANNOTATION.to_owned(),
                    workload.name.clone(),
                )])),
                ..Default::default()
            },
            data: json!({ "spec": spec }),
        };
        let pods: Api<KubePod> = self.api(&workload.namespace);
        // One left by a run that died is replaced; a pod of that name that is not Cairn's is
        // someone else's, and left alone.
        if let Some(there) = pods
            .get_opt(&name)
            .await
            .map_err(|e| api_error(format!("reading pod {}/{name}", workload.namespace), e))?
        {
            let ours = there
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/managed-by"))
                .is_some_and(|m| m == "cairn")
                && there
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(WORKLOAD_ANNOTATION))
                    .is_some_and(|w| *w == workload.name);
            if !ours {
                return Err(Error::Invalid(format!(
                    "pod {}/{name} exists and is not one Cairn made for a stopped {workload}; \
                     Cairn runs the command in a pod of that name, so rename or delete that pod",
                    workload.namespace
                )));
            }
            self.start_deleting_pod(&pods, &name).await?;
            gone(
                &pods,
                &format!("pod {name}, left by an earlier command"),
                &name,
                left().min(GONE_TIMEOUT),
            )
            .await?;
        }
        Api::<DynamicObject>::namespaced_with(
            self.client.clone(),
            &workload.namespace,
            &ApiResource::erase::<KubePod>(&()),
        )
        .create(&PostParams::default(), &pod)
        .await
        .map_err(|e| api_error(format!("creating pod {name} for stopped {workload}"), e))?;
        let guard = Guard::new(&pods, &name, DeleteParams::default().grace_period(1));
        let result = match self.pod_started(&pods, &name, left()).await {
            Ok(()) => {
                let left = left();
                let request = ExecRequest {
                    timeout: left,
                    ..request
                };
                self.run_in(workload, &name, &container, request, Some(&pods))
                    .await
                    .map_err(|e| match e {
                        Error::TimedOut { what, .. } => Error::TimedOut {
                            what: format!(
                                "{what} (its pod took {} s of the timeout to start)",
                                (timeout - left).as_secs()
                            ),
                            after: timeout,
                        },
                        e => e,
                    })
            }
            Err(e) => Err(e),
        };
        let deleted = self.start_deleting_pod(&pods, &name).await;
        guard.disarm();
        // Waited for with what is left of the timeout, as while it stops it still mounts the
        // claims, and a restore that follows would be refused; not past it, which would turn
        // a success into a timeout. The pod's deadline ends it should the deletion not.
        if deleted.is_ok()
            && let Err(e) = gone(
                &pods,
                &format!("pod {name}"),
                &name,
                left().min(GONE_TIMEOUT),
            )
            .await
        {
            tracing::warn!(%workload, pod = %name, error = %e,
                "the pod of a command for the stopped workload is still stopping: until it is \
                 gone, a restore of the workload's claims is refused");
        }
        let output = result?;
        deleted?;
        Ok(output)
    }

    /// Deletes pod `name`, without waiting for it to be gone (a second's grace, not a forced
    /// delete, which removes the object while a command may still write to the volumes).
    async fn start_deleting_pod(&self, pods: &Api<KubePod>, name: &str) -> Result<()> {
        match pods
            .delete(name, &DeleteParams::default().grace_period(1))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(e) => Err(api_error(format!("deleting pod {name}"), e)),
        }
    }

    /// The running pods of `namespace` that mount one of `claims`: whatever owns them, they
    /// keep a claim in use.
    async fn claim_users(&self, namespace: &str, claims: &[&str]) -> Result<Vec<String>> {
        Ok(self
            .api::<KubePod>(namespace)
            .list(&ListParams::default())
            .await
            .map_err(|e| api_error(format!("listing the pods of namespace {namespace}"), e))?
            .items
            .into_iter()
            .filter(|p| !ended(p))
            .filter(|p| {
                p.spec
                    .iter()
                    .flat_map(|s| s.volumes.iter().flatten())
                    .any(|v| {
                        v.persistent_volume_claim
                            .as_ref()
                            .is_some_and(|c| claims.contains(&c.claim_name.as_str()))
                    })
            })
            .filter_map(|p| p.metadata.name)
            .collect())
    }

    /// The pods that mount one of `described`'s claims, but Cairn's own stopped-workload pod
    /// (`<workload>-stopped`, which runs nothing of the application's once its command has
    /// returned): a pod no controller owns (made by hand, a debug copy) is no replica, but
    /// while one mounts the volumes the application is not stopped.
    async fn other_claim_users(
        &self,
        workload: &WorkloadRef,
        described: &Workload,
    ) -> Result<Vec<String>> {
        let claims: Vec<&str> = described.volumes.iter().map(|v| v.name.as_str()).collect();
        let own = format!("{}-stopped", workload.name);
        let mut users = self.claim_users(&workload.namespace, &claims).await?;
        users.retain(|p| *p != own);
        Ok(users)
    }

    /// Sets `workload`'s replicas to `target` (`replicas`), and [`SCALED_FROM_ANNOTATION`] with
    /// them in one merge patch of the workload, made on the version `found` read: a scale to
    /// zero from a count marks that count, a scale up clears a mark. One patch changes the
    /// generation once whatever the kind (a Deployment's changes with its annotations too, a
    /// StatefulSet's with its spec alone), so the generation the mark names is the one the
    /// workload ends at. A role that may not patch the workload itself (the `scale`
    /// subresource alone) only loses that recovery: the scale goes through the subresource.
    async fn set_replicas(
        &self,
        workload: &WorkloadRef,
        found: &Found,
        replicas: u32,
        target: i32,
    ) -> std::result::Result<(), kube::Error> {
        let next = found.generation.unwrap_or(0) + 1;
        let mark = if replicas == 0 && found.replicas > 0 {
            Some(Some(format!("{}@{next}", found.replicas)))
        } else if replicas > 0 && found.scaled_from.is_some() {
            Some(None)
        } else {
            None
        };
        let params = PatchParams::default();
        let ns = &workload.namespace;
        if let Some(mark) = mark {
            let patch = Patch::Merge(json!({
                "metadata": {
                    "resourceVersion": found.resource_version,
                    "annotations": { SCALED_FROM_ANNOTATION: mark },
                },
                "spec": { "replicas": target },
            }));
            let patched = match found.kind {
                WorkloadKind::StatefulSet => self
                    .api::<StatefulSet>(ns)
                    .patch(&workload.name, &params, &patch)
                    .await
                    .map(|s| s.metadata.generation),
                _ => self
                    .api::<Deployment>(ns)
                    .patch(&workload.name, &params, &patch)
                    .await
                    .map(|d| d.metadata.generation),
            };
            match patched {
                Ok(generation) => {
                    if mark.is_some() && generation.is_some_and(|g| g != next) {
                        tracing::warn!(%workload, ?generation, expected = next,
                            "the workload's generation is not the one its scaled-from mark \
                             names: should Cairn stop before scaling it back, scale it up by hand");
                    }
                    return Ok(());
                }
                Err(kube::Error::Api(s)) if s.code == 403 && mark.is_some() => {
                    tracing::warn!(%workload, error = %s.message,
                        "cannot mark the count the workload had (grant Cairn patch on \
                         deployments and statefulsets): should Cairn stop before scaling it \
                         back, it stays down");
                }
                // A scale-up through the subresource bumps the generation, which leaves the
                // mark naming an older one: inert.
                Err(kube::Error::Api(s)) if s.code == 403 => {
                    tracing::debug!(%workload, error = %s.message,
                        "cannot clear the scaled-from mark (no patch on the workload); it is \
                         ignored from now on");
                }
                Err(e) => return Err(e),
            }
        }
        let patch = Patch::Merge(json!({ "spec": { "replicas": target } }));
        match found.kind {
            WorkloadKind::StatefulSet => self
                .api::<StatefulSet>(ns)
                .patch_scale(&workload.name, &params, &patch)
                .await
                .map(drop),
            _ => self
                .api::<Deployment>(ns)
                .patch_scale(&workload.name, &params, &patch)
                .await
                .map(drop),
        }
    }

    /// Waits until `workload` runs at most `replicas` pods: a scale-down returns once the pods
    /// it removes have stopped (their grace period, a database's shutdown), not when the count
    /// changed, so what follows (a snapshot, a stopped exec, a claim's replacement) sees the
    /// data at rest. The local backend's scale waits for its stop hook likewise.
    async fn pods_gone(&self, workload: &WorkloadRef, found: &Found, replicas: u32) -> Result<()> {
        let what = format!("the pods of {workload} to stop after scaling to {replicas}");
        let wait = scale_down_wait(
            found.grace,
            found.one_at_a_time,
            found.replicas.saturating_sub(replicas),
        );
        poll(&what, wait, || async {
            let w = self.describe(&workload.namespace, found).await?;
            Ok((w.pods.len() <= replicas as usize).then_some(()))
        })
        .await
    }

    /// Waits until pod `name` runs its container, or says why it will not.
    async fn pod_started(&self, pods: &Api<KubePod>, name: &str, timeout: Duration) -> Result<()> {
        let what = format!("pod {name} to start");
        poll(
            &what,
            timeout.min(STOPPED_POD_START_TIMEOUT),
            || async move {
                let pod = pods
                    .get(name)
                    .await
                    .map_err(|e| api_error(format!("reading pod {name}"), e))?;
                let status = pod.status.unwrap_or_default();
                let phase = status.phase.unwrap_or_default();
                let containers = status.container_statuses.unwrap_or_default();
                if phase == "Running" && containers.iter().all(|c| c.started == Some(true)) {
                    return Ok(Some(()));
                }
                let waiting = containers
                    .iter()
                    .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
                    .find(|w| {
                        matches!(
                            w.reason.as_deref(),
                            Some(
                                "ErrImagePull"
                                    | "ImagePullBackOff"
                                    | "InvalidImageName"
                                    | "CreateContainerConfigError"
                                    | "CreateContainerError"
                                    | "RunContainerError"
                                    | "CrashLoopBackOff"
                            )
                        )
                    });
                if phase != "Failed" && phase != "Succeeded" && waiting.is_none() {
                    return Ok(None);
                }
                let why = waiting
                    .map(|w| {
                        format!(
                            "{}: {}",
                            w.reason.clone().unwrap_or_default(),
                            w.message.clone().unwrap_or_default()
                        )
                    })
                    .or(status.message)
                    .unwrap_or_else(|| format!("it is {phase}"));
                Err(Error::Failed {
                    what: format!(
                        "starting pod {name} with the stopped workload's volumes (its image must \
                     have `sleep`)"
                    ),
                    source: why.into(),
                })
            },
        )
        .await
    }
}

/// A client of the cluster of a kubeconfig context, or with `None` the one `kubectl` would use
/// (`KUBECONFIG`, `~/.kube/config`, else the pod's service account).
pub async fn client(context: Option<&str>) -> Result<kube::Client> {
    let config = match context {
        Some(context) => kube::Config::from_kubeconfig(&kube::config::KubeConfigOptions {
            context: Some(context.to_owned()),
            ..Default::default()
        })
        .await
        .map_err(|e| {
            Error::Invalid(format!(
                "kubeconfig context {context:?}: {e} (list the contexts with `kubectl config \
                     get-contexts`)"
            ))
        })?,
        None => kube::Config::infer().await.map_err(|e| {
            Error::Invalid(format!(
                "no Kubernetes cluster is configured: {e} (set KUBECONFIG, or run Cairn in a \
                     pod with a service account)"
            ))
        })?,
    };
    kube::Client::try_from(config).map_err(|e| failed("creating the Kubernetes client", e))
}

/// Waits at most `timeout` until object `name` has gone from `api`; `what` names it in the
/// error.
async fn gone<K>(api: &Api<K>, what: &str, name: &str, timeout: Duration) -> Result<()>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    poll(&format!("{what} to be deleted"), timeout, || async move {
        let found = api
            .get_opt(name)
            .await
            .map_err(|e| api_error(format!("reading {what}"), e))?;
        Ok(found.is_none().then_some(()))
    })
    .await
}

/// Asks `look` every [`POLL`] until it has an answer, for at most `timeout`; on timeout the
/// error says it was waiting for `what`.
async fn poll<T, Look>(what: &str, timeout: Duration, mut look: impl FnMut() -> Look) -> Result<T>
where
    Look: std::future::Future<Output = Result<Option<T>>>,
{
    let wait = async {
        loop {
            if let Some(answer) = look().await? {
                return Ok(answer);
            }
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| Error::TimedOut {
            what: format!("waiting for {what}"),
            after: timeout,
        })?
}

/// The spec of the pod that runs a command for a stopped workload, from its pod template's
/// `spec`: only `container`, kept alive `keep_alive` seconds by `sleep` instead of its own
/// command, without probes or lifecycle hooks; no init containers (sidecars among them); never
/// restarted, and ended after `deadline` seconds should Cairn not delete it. `claims` (a volume
/// name, a claim) mount claims in place of the template's volumes of those names. Fields Cairn
/// does not know are kept as they are.
fn stopped_pod_spec<'a>(
    spec: Value,
    container: &str,
    keep_alive: u64,
    deadline: u64,
    claims: impl Iterator<Item = (&'a str, String)>,
) -> Value {
    let mut spec = match spec {
        Value::Object(spec) => spec,
        _ => serde_json::Map::new(),
    };
    let containers: Vec<Value> = spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c["name"] == container)
        .cloned()
        .map(|mut c| {
            if let Some(c) = c.as_object_mut() {
                for field in [
                    "args",
                    "livenessProbe",
                    "readinessProbe",
                    "startupProbe",
                    "lifecycle",
                ] {
                    c.remove(field);
                }
                c.insert("command".into(), json!(["sleep", keep_alive.to_string()]));
            }
            c
        })
        .collect();
    let mut volumes: Vec<Value> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (volume, claim) in claims {
        // The claim takes the place of a template volume of its name, as in the set's pods.
        volumes.retain(|v| v["name"] != volume);
        volumes.push(json!({ "name": volume, "persistentVolumeClaim": { "claimName": claim } }));
    }
    spec.remove("initContainers");
    spec.insert("containers".into(), Value::Array(containers));
    spec.insert("volumes".into(), Value::Array(volumes));
    spec.insert("restartPolicy".into(), json!("Never"));
    spec.insert("activeDeadlineSeconds".into(), json!(deadline));
    Value::Object(spec)
}

/// An object Cairn made for one call, deleted should the call's future be dropped before it
/// is done with it (the engine's deadline for the call): a pod of a stopped workload would
/// hold its volumes until its own deadline; a VolumeSnapshot no restore point names would cost
/// storage unseen. [`Guard::disarm`] once the call has dealt with it.
struct Guard<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    api: Api<K>,
    name: String,
    params: DeleteParams,
}

impl<K> Guard<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    fn new(api: &Api<K>, name: &str, params: DeleteParams) -> Self {
        Self {
            api: api.clone(),
            name: name.to_owned(),
            params,
        }
    }

    fn disarm(mut self) {
        self.name.clear();
    }
}

impl<K> Drop for Guard<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (api, name, params) = (
                self.api.clone(),
                std::mem::take(&mut self.name),
                self.params.clone(),
            );
            runtime.spawn(async move {
                if let Err(e) = api.delete(&name, &params).await {
                    tracing::warn!(object = %name, error = %e, "cannot delete what a dropped call made");
                }
            });
        }
    }
}

/// A warning logged should a call be dropped (the engine's deadline) in the middle of a change
/// that leaves something to say (a restore between deleting a claim and binding its
/// replacement); [`Unfinished::disarm`] once the call has reported for itself.
struct Unfinished(String);

impl Unfinished {
    fn disarm(&mut self) {
        self.0.clear();
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            tracing::warn!("{}", self.0);
        }
    }
}

/// A Deployment or StatefulSet, reduced to what the seam needs.
struct Found {
    name: String,
    /// The workload's own labels.
    labels: BTreeMap<String, String>,
    kind: WorkloadKind,
    replicas: u32,
    ready_replicas: u32,
    selector: Option<LabelSelector>,
    containers: Vec<String>,
    /// Claims named in the pod template.
    claims: Vec<String>,
    /// A StatefulSet's claim templates.
    claim_templates: Vec<String>,
    /// A StatefulSet whose claims the controller deletes with the pods a scale-down removes
    /// (`persistentVolumeClaimRetentionPolicy.whenScaled: Delete`).
    deletes_claims_when_scaled: bool,
    /// Whether the controller has seen the latest spec (`status.observedGeneration`): until it
    /// has, its status describes the spec before.
    observed: bool,
    /// The spec's generation.
    generation: Option<i64>,
    /// The version of the object read, for writes that must apply to it alone.
    resource_version: Option<String>,
    /// Its pods' `terminationGracePeriodSeconds`.
    grace: Duration,
    /// Whether its controller stops its pods one at a time (a StatefulSet's `OrderedReady`).
    one_at_a_time: bool,
    /// What [`SCALED_FROM_ANNOTATION`] says: replicas, generation.
    scaled_from: Option<(u32, i64)>,
}

impl Found {
    fn deployment(d: Deployment) -> Self {
        let spec = d.spec.unwrap_or_default();
        let status = d.status.unwrap_or_default();
        let observed = observed(d.metadata.generation, status.observed_generation);
        Self {
            observed,
            ..Self::new(
                d.metadata,
                WorkloadKind::Deployment,
                (spec.replicas, status.ready_replicas),
                Some(spec.selector),
                &spec.template,
                Vec::new(),
            )
        }
    }

    fn stateful_set(s: StatefulSet) -> Self {
        let spec = s.spec.unwrap_or_default();
        let status = s.status.unwrap_or_default();
        let templates = spec
            .volume_claim_templates
            .unwrap_or_default()
            .into_iter()
            .filter_map(|t| t.metadata.name)
            .collect();
        let deletes_claims_when_scaled = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .and_then(|p| p.when_scaled.as_deref())
            == Some("Delete");
        let observed = observed(s.metadata.generation, status.observed_generation);
        let one_at_a_time = spec.pod_management_policy.as_deref() != Some("Parallel");
        Self {
            deletes_claims_when_scaled,
            observed,
            one_at_a_time,
            ..Self::new(
                s.metadata,
                WorkloadKind::StatefulSet,
                (spec.replicas, status.ready_replicas),
                Some(spec.selector),
                &spec.template,
                templates,
            )
        }
    }

    fn new(
        meta: ObjectMeta,
        kind: WorkloadKind,
        (replicas, ready): (Option<i32>, Option<i32>),
        selector: Option<LabelSelector>,
        template: &PodTemplateSpec,
        claim_templates: Vec<String>,
    ) -> Self {
        let pod = template.spec.as_ref();
        let scaled_from = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(SCALED_FROM_ANNOTATION))
            .and_then(|v| v.split_once('@'))
            .and_then(|(n, g)| Some((n.parse().ok()?, g.parse().ok()?)));
        Self {
            generation: meta.generation,
            resource_version: meta.resource_version.clone(),
            grace: pod
                .and_then(|p| p.termination_grace_period_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .map_or(DEFAULT_GRACE, Duration::from_secs),
            one_at_a_time: false,
            scaled_from,
            name: meta.name.unwrap_or_default(),
            labels: meta.labels.unwrap_or_default(),
            kind,
            // Kubernetes defaults a missing count to one.
            replicas: count(replicas.unwrap_or(1)),
            ready_replicas: count(ready.unwrap_or(0)),
            selector,
            containers: default_first(
                template.metadata.as_ref(),
                pod.map(|p| p.containers.iter().map(|c| c.name.clone()).collect())
                    .unwrap_or_default(),
            ),
            claims: pod
                .and_then(|p| p.volumes.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|v| v.persistent_volume_claim.as_ref())
                .map(|c| c.claim_name.clone())
                .collect(),
            claim_templates,
            deletes_claims_when_scaled: false,
            observed: true,
        }
    }
}

/// How long a scale-down removing `removed` pods waits for them to stop: each pod's `grace`
/// period, one after the other when the controller removes them `one_at_a_time` (a
/// StatefulSet's `OrderedReady`, its default), with a margin; at least [`SCALE_DOWN_TIMEOUT`]
/// and at most [`SCALE_DOWN_MAX`].
fn scale_down_wait(grace: Duration, one_at_a_time: bool, removed: u32) -> Duration {
    let rounds = if one_at_a_time { removed.max(1) } else { 1 };
    grace
        .saturating_mul(rounds)
        .saturating_add(SCALE_DOWN_MARGIN)
        .clamp(SCALE_DOWN_TIMEOUT, SCALE_DOWN_MAX)
}

/// Whether a workload's controller has acted on its latest spec, as `kubectl rollout status`
/// judges it; a workload without a generation (never on a real server) counts as observed.
fn observed(generation: Option<i64>, observed: Option<i64>) -> bool {
    generation.is_none_or(|g| observed.is_some_and(|o| o >= g))
}

fn count(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

/// The execs of a started pipeline: its outer pipes, the relays between its programs, and each
/// program's exit status.
struct Started {
    pipes: Pipes,
    relays: Vec<BoxFuture<'static, std::result::Result<(), StreamFailure>>>,
    statuses: Vec<Shared<BoxFuture<'static, Option<Status>>>>,
    /// Dropping a process closes its exec.
    procs: Vec<Exec>,
}

/// Cuts a command off whose stdin source broke, before its stdin closes (a `psql
/// --single-transaction` would commit the part it read): in a pod of Cairn's own, by deleting
/// the pod, then waiting for the execs to end as its container is stopped. In an application's
/// pod nothing can: the command sees the end of its input.
struct KillPod {
    pods: Option<Api<KubePod>>,
    name: String,
    ended: Vec<Shared<BoxFuture<'static, Option<Status>>>>,
}

impl pipes::Cut for KillPod {
    fn cut(&self) -> BoxFuture<'_, ()> {
        async move {
            let Some(pods) = &self.pods else {
                return;
            };
            let params = DeleteParams::default().grace_period(1);
            if let Err(e) = pods.delete(&self.name, &params).await {
                tracing::warn!(pod = %self.name, error = %e,
                    "cannot delete the pod to kill a command whose input broke: it sees the end \
                     of its input");
                return;
            }
            futures::future::join_all(self.ended.iter().cloned()).await;
        }
        .boxed()
    }
}

/// Copies one program's stdout into the next one's stdin. When the next one ends first, the
/// rest is read and dropped, so the program writing it can finish (as it would on SIGPIPE).
fn relay(
    mut from: Reader,
    mut to: Writer,
    next_ended: Shared<BoxFuture<'static, Option<Status>>>,
) -> BoxFuture<'static, std::result::Result<(), StreamFailure>> {
    async move {
        const JOINING: &str = "joining the pipeline";
        let counted = AtomicU64::new(0);
        let ended = tokio::select! {
            copied = pipes::copy(&mut from, &mut to, (JOINING, JOINING), &counted) => {
                copied?;
                false
            }
            _ = next_ended => true,
        };
        if !ended {
            to.shutdown().await.map_err(|error| StreamFailure {
                stage: JOINING,
                error,
            })?;
        }
        if ended {
            tokio::io::copy(&mut from, &mut tokio::io::sink())
                .await
                .map_err(|error| StreamFailure {
                    stage: JOINING,
                    error,
                })?;
        }
        Ok(())
    }
    .boxed()
}

/// Why a command that needs its stdin closed cannot run on an API server without `v5`: one
/// that reads stdin (`has_stdin`), or a pipeline of `programs`, whose programs after the first
/// read the one before's output through Cairn.
fn no_stream_close(has_stdin: bool, programs: usize) -> String {
    let needs = if has_stdin {
        "the command reads stdin".to_owned()
    } else {
        format!(
            "the pipeline's {programs} programs are joined through Cairn, each after the first \
             reading the output of the one before as its stdin (or run the pipeline in a shell \
             of the image, `sh -c 'a | b'`, as one program)"
        )
    };
    format!(
        "nothing was started: this API server's exec cannot close a command's stdin (it does \
         not speak v5.channel.k8s.io: Kubernetes before 1.30, or 1.29 without the \
         TranslateStreamCloseWebsocketRequests feature gate), so a command could not tell the \
         end of its input nor report how it ended, and {needs}; upgrade the cluster to 1.30 or \
         later"
    )
}

/// A program's exit code from the status its exec ended with.
fn exit_code(status: Option<Status>) -> std::result::Result<i32, String> {
    let Some(status) = status else {
        return Err(
            "the exec closed without the command's exit status (the connection to the API \
             server was lost)"
                .to_owned(),
        );
    };
    if status.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    let reason = status.reason.unwrap_or_default();
    if reason == "NonZeroExitCode" {
        let code = status
            .details
            .iter()
            .flat_map(|d| d.causes.iter().flatten())
            .find(|c| c.reason.as_deref() == Some("ExitCode"))
            .and_then(|c| c.message.as_deref()?.parse().ok());
        if let Some(code) = code {
            return Ok(code);
        }
    }
    Err(match status.message {
        Some(message) if !message.is_empty() => message,
        _ => format!("the exec failed ({reason})"),
    })
}

/// A label selector as the API's query string (`a=b,c in (d,e),!f`).
fn selector_query(selector: &LabelSelector) -> Result<String> {
    let mut terms: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        terms.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => {
                return Err(Error::Invalid(format!(
                    "selector operator {other:?} of key {:?} is not one of In, NotIn, Exists, \
                     DoesNotExist",
                    e.key
                )));
            }
        });
    }
    Ok(terms.join(","))
}

/// The names of `pods`, comma-separated, for messages.
fn pod_names(pods: &[Pod]) -> String {
    pods.iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A note naming the pods a workload's selector matches that no controller owns, for
/// messages about its pods: empty when there are none.
fn orphans_note(orphans: &[String]) -> String {
    if orphans.is_empty() {
        return String::new();
    }
    format!(
        "; pod(s) {} match its selector but no controller owns them (made by hand, or a debug \
         copy): they are not its replicas and Cairn runs nothing in them",
        orphans.join(", ")
    )
}

/// Whether `pod`, which the workload's selector matches, is the workload's: `Some(false)` for
/// another controller's (another workload whose selector overlaps, a `db` and a `db-canary`
/// both selecting `app: db`, or a Job's), `None` for a pod no controller owns (made by hand),
/// which Kubernetes' controllers do not adopt either.
fn owned_by(pod: &KubePod, found: &Found) -> Option<bool> {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    let ours = match found.kind {
        WorkloadKind::StatefulSet => owner.kind == "StatefulSet" && owner.name == found.name,
        // A Deployment's pods belong to its ReplicaSets, `NAME-HASH`, the pods labelled with
        // the hash.
        WorkloadKind::Deployment => {
            let hash = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"));
            owner.kind == "ReplicaSet"
                && match hash {
                    Some(hash) => owner.name == format!("{}-{hash}", found.name),
                    None => owner
                        .name
                        .strip_prefix(&found.name)
                        .is_some_and(|rest| rest.starts_with('-')),
                }
        }
        WorkloadKind::Other => owner.name == found.name,
    };
    Some(ours)
}

/// Whether `pod` has ended (Succeeded or Failed): an evicted pod, or one whose node shut down,
/// stays listed as Failed until it is collected, but runs nothing and mounts nothing.
fn ended(pod: &KubePod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

fn pod_of(pod: KubePod) -> Pod {
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let ready = !terminating
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
    let containers = pod
        .spec
        .map(|s| s.containers.into_iter().map(|c| c.name).collect())
        .unwrap_or_default();
    Pod {
        containers: default_first(Some(&pod.metadata), containers),
        name: pod.metadata.name.unwrap_or_default(),
        ready,
    }
}

/// The annotation that names a pod's default container, as `kubectl exec` honours it: a
/// service mesh's proxy injected first in the list is not where commands belong.
const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// `containers` with the one `meta`'s annotation names as the default first (the container
/// a command runs in when it names none).
fn default_first(meta: Option<&ObjectMeta>, mut containers: Vec<String>) -> Vec<String> {
    let named = meta
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(DEFAULT_CONTAINER_ANNOTATION));
    if let Some(i) = named.and_then(|n| containers.iter().position(|c| c == n)) {
        let default = containers.remove(i);
        containers.insert(0, default);
    }
    containers
}

/// Whether `claim` is a StatefulSet's claim from `template` (`TEMPLATE-SET-ORDINAL`).
fn is_ordinal_claim(claim: &str, template: &str, set: &str) -> bool {
    claim
        .strip_prefix(template)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.strip_prefix(set))
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|ordinal| !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit()))
}

/// What the API said, as the seam's error: a missing object, a refusal (RBAC), or a failure.
fn api_error(what: String, e: kube::Error) -> Error {
    match &e {
        kube::Error::Api(status) if status.code == 403 => Error::Denied(format!(
            "{what}: {} (grant Cairn's service account this in that namespace: \
             examples/kubernetes/install/namespace-access.yaml, or its Role)",
            status.message
        )),
        kube::Error::Api(status) if status.code == 404 => Error::NotFound {
            kind: "object",
            name: status
                .details
                .as_ref()
                .map(|d| d.name.clone())
                .unwrap_or_default(),
            hint: format!("; {what}: {}", status.message),
        },
        _ => failed(what, e),
    }
}

fn snapshot_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(SNAPSHOT_GROUP, "v1", "VolumeSnapshot"),
        "volumesnapshots",
    )
}

/// The resource a kind names (singular or plural, any case, or a short name).
fn resource_of(kind: &str) -> Option<ApiResource> {
    use k8s_openapi::api::{apps, batch, core};
    let kind = kind.to_ascii_lowercase();
    let kind = kind.strip_suffix('s').unwrap_or(&kind);
    Some(match kind {
        "configmap" | "cm" => ApiResource::erase::<core::v1::ConfigMap>(&()),
        "service" | "svc" => ApiResource::erase::<core::v1::Service>(&()),
        "serviceaccount" | "sa" => ApiResource::erase::<core::v1::ServiceAccount>(&()),
        "persistentvolumeclaim" | "pvc" => ApiResource::erase::<PersistentVolumeClaim>(&()),
        "pod" => ApiResource::erase::<KubePod>(&()),
        "deployment" | "deploy" => ApiResource::erase::<apps::v1::Deployment>(&()),
        "statefulset" | "st" => ApiResource::erase::<apps::v1::StatefulSet>(&()),
        "daemonset" | "d" => ApiResource::erase::<apps::v1::DaemonSet>(&()),
        "job" => ApiResource::erase::<batch::v1::Job>(&()),
        "cronjob" | "cj" => ApiResource::erase::<batch::v1::CronJob>(&()),
        "volumesnapshot" => snapshot_resource(),
        _ => return None,
    })
}

/// The kinds [`resource_of`] knows, for hints.
const KINDS: &str = "workload, configmap, service, serviceaccount, \
                     persistentvolumeclaim, pod, deployment, statefulset, daemonset, job, \
                     cronjob, volumesnapshot";

fn unknown_kind(kind: &str) -> Error {
    Error::Invalid(format!(
        "the Kubernetes backend does not read objects of kind {kind:?}; it reads {KINDS}"
    ))
}

/// `NAMESPACE/NAME` of a snapshot id.
fn parse_snapshot_id(id: &str) -> Result<(&str, &str)> {
    id.split_once('/')
        .filter(|(ns, name)| is_dns_label(ns) && is_dns_subdomain(name))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "snapshot id {id:?} is not NAMESPACE/NAME, the form the Kubernetes backend gives"
            ))
        })
}

/// Refuses a namespace that is not a DNS label, as Kubernetes names every namespace, before
/// it goes into an API path: `..` or a `/` there would reach another resource through a proxy
/// that normalizes paths, outside the scope the engine checked by name.
fn checked_namespace(namespace: &str) -> Result<()> {
    if is_dns_label(namespace) {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "namespace {namespace:?} is not a Kubernetes namespace name (1 to 63 lowercase letters, \
         digits and `-`, starting and ending with a letter or digit)"
    )))
}

/// Refuses an object name that is not a DNS subdomain (the names of every kind this backend
/// reads), as [`checked_namespace`] does namespaces.
fn checked_name(kind: &str, name: &str) -> Result<()> {
    if is_dns_subdomain(name) {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "{kind} name {name:?} is not a Kubernetes object name (lowercase letters, digits, `-` \
         and `.`, starting and ending with a letter or digit, at most 253 characters)"
    )))
}

fn checked_ref(workload: &WorkloadRef) -> Result<()> {
    checked_namespace(&workload.namespace)?;
    checked_name("workload", &workload.name)
}

/// The seam's view of a VolumeSnapshot object.
fn snapshot_of(object: &DynamicObject) -> VolumeSnapshot {
    let namespace = object.metadata.namespace.clone().unwrap_or_default();
    let name = object.metadata.name.clone().unwrap_or_default();
    let workload = object
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(WORKLOAD_ANNOTATION))
        .cloned()
        .unwrap_or_default();
    let volume = object.data["spec"]["source"]["persistentVolumeClaimName"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    VolumeSnapshot {
        id: format!("{namespace}/{name}"),
        workload: WorkloadRef::new(namespace, workload),
        volume,
        created_ms: object
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| u64::try_from(t.0.as_millisecond()).ok())
            .unwrap_or(0),
        bytes: object.data["status"]["restoreSize"]
            .as_str()
            .and_then(quantity_bytes)
            .unwrap_or(0),
    }
}

/// Bytes of a quantity such as `10Gi`, `500M` or `1073741824`.
fn quantity_bytes(quantity: &str) -> Option<u64> {
    let split = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let scale: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => return None,
    };
    match number.split_once('.') {
        None => number.parse::<u64>().ok()?.checked_mul(scale),
        Some((whole, fraction)) => {
            let whole: u64 = if whole.is_empty() {
                0
            } else {
                whole.parse().ok()?
            };
            let digits = u32::try_from(fraction.len()).ok()?;
            let fraction: u64 = if fraction.is_empty() {
                0
            } else {
                fraction.parse().ok()?
            };
            let denominator = 10u64.checked_pow(digits)?;
            let part = u128::from(fraction) * u128::from(scale) / u128::from(denominator);
            whole
                .checked_mul(scale)?
                .checked_add(u64::try_from(part).ok()?)
        }
    }
}

#[async_trait]
impl Cluster for KubeCluster {
    fn backend(&self) -> &'static str {
        "kubernetes"
    }

    async fn namespaces(&self) -> Result<Vec<String>> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| api_error("listing namespaces".to_owned(), e))?;
        let mut names: Vec<String> = list
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        names.sort();
        Ok(names)
    }

    async fn workloads(&self, namespace: &str) -> Result<Vec<Workload>> {
        checked_namespace(namespace)?;
        self.check_namespace(namespace).await?;
        let mut out = Vec::new();
        for found in self.all(namespace).await? {
            out.push(self.describe(namespace, &found).await?);
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    async fn workload(&self, workload: &WorkloadRef) -> Result<Workload> {
        let found = self.find(workload).await?;
        self.describe(&workload.namespace, &found).await
    }

    async fn exec(&self, workload: &WorkloadRef, request: ExecRequest) -> Result<ExecOutput> {
        if request.stopped {
            return self.exec_stopped(workload, request).await;
        }
        request.stages()?;
        request.checked_env()?;
        let found = self.find(workload).await?;
        let (described, orphans) = self.inspect(&workload.namespace, &found).await?;
        let pod = match &request.pod {
            Some(name) => match described.pods.iter().find(|p| &p.name == name) {
                Some(pod) if pod.ready => pod,
                Some(_) => {
                    return Err(Error::Invalid(format!(
                        "pod {name} of workload {workload} is not ready; wait for it or leave \
                         the pod unnamed to use a ready one"
                    )));
                }
                None if orphans.contains(name) => {
                    return Err(Error::Invalid(format!(
                        "pod {name} matches the selector of workload {workload} but no \
                         controller owns it (made by hand, or a debug copy), so it is not one \
                         of the workload's replicas; name one of its pods ({}) or leave the \
                         pod unnamed",
                        pod_names(&described.pods)
                    )));
                }
                None => {
                    return Err(Error::NotFound {
                        kind: "pod",
                        name: name.clone(),
                        hint: list_hint(
                            &format!("workload {workload} has the pods"),
                            described.pods.iter().map(|p| &p.name),
                        ),
                    });
                }
            },
            None => described
                .pods
                .iter()
                .find(|p| p.ready)
                .ok_or_else(|| Error::NotFound {
                    kind: "pod",
                    name: format!("a ready pod of {workload}"),
                    hint: format!(
                        "; workload {workload} has {} of {} replicas ready: scale it up or wait \
                         for it{}",
                        described.ready_replicas,
                        described.replicas,
                        orphans_note(&orphans)
                    ),
                })?,
        };
        let container = request.container_in(&pod.name, &pod.containers)?;
        let pod = pod.name.clone();
        self.run_in(workload, &pod, &container, request, None).await
    }

    async fn scale(&self, workload: &WorkloadRef, replicas: u32) -> Result<u32> {
        let target = i32::try_from(replicas).map_err(|_| {
            Error::Invalid(format!("cannot scale {workload} to {replicas} replicas"))
        })?;
        let mut tries = 0;
        let found = loop {
            let found = self.find(workload).await?;
            if found.deletes_claims_when_scaled && replicas < found.replicas {
                return Err(Error::Denied(format!(
                    "scaling {workload} down from {} to {replicas} would delete the claims of the \
                     pods it removes (its persistentVolumeClaimRetentionPolicy says whenScaled: \
                     Delete); set whenScaled: Retain to let Cairn stop it, or use a blueprint that \
                     does not",
                    found.replicas
                )));
            }
            match self.set_replicas(workload, &found, replicas, target).await {
                Ok(()) => break found,
                // Changed by someone else between the read and the write: read it again.
                Err(kube::Error::Api(s)) if s.code == 409 && tries < SCALE_CONFLICT_TRIES => {
                    tries += 1;
                }
                Err(e) => return Err(api_error(format!("scaling {workload} to {replicas}"), e)),
            }
        };
        // The pods it removes stop within their grace period; one that does not (its node
        // lost) is reported, not an error: the workload is scaled, and what needs it stopped
        // (a snapshot of it scaled to zero, a claim's replacement, a stopped exec) checks
        // again.
        if replicas < found.replicas
            && let Err(e) = self.pods_gone(workload, &found, replicas).await
        {
            tracing::warn!(%workload, error = %e,
                "scaled down, but pods are still stopping: a snapshot of it scaled to zero, a \
                 claim's replacement or a stopped exec refuses until they are gone (wait with \
                 wait-ready; a pod on a lost node must be deleted by hand)");
        }
        // Stopped by Cairn, then Cairn stopped before scaling it back: the count it had.
        let left = found
            .scaled_from
            .filter(|(_, g)| replicas == 0 && found.replicas == 0 && Some(*g) == found.generation)
            .map(|(n, _)| n);
        Ok(left.unwrap_or(found.replicas))
    }

    async fn wait_ready(&self, workload: &WorkloadRef, timeout: Duration) -> Result<Workload> {
        let mut last = None;
        let wait = async {
            loop {
                let found = self.find(workload).await?;
                let observed = found.observed;
                let (w, orphans) = self.inspect(&workload.namespace, &found).await?;
                let settled = observed
                    && w.ready_replicas == w.replicas
                    && w.pods.len() == w.replicas as usize
                    && w.pods.iter().all(|p| p.ready);
                if settled {
                    return Ok(w);
                }
                last = Some((w, orphans));
                tokio::time::sleep(POLL).await;
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(result) => result,
            Err(_) => Err(Error::TimedOut {
                what: match last {
                    Some((w, orphans)) => format!(
                        "waiting for {workload} to be ready ({} of {} replicas ready, {} pods{})",
                        w.ready_replicas,
                        w.replicas,
                        w.pods.len(),
                        orphans_note(&orphans)
                    ),
                    None => format!("waiting for {workload} to be ready"),
                },
                after: timeout,
            }),
        }
    }

    async fn get_object(&self, namespace: &str, kind: &str, name: &str) -> Result<Value> {
        checked_namespace(namespace)?;
        checked_name(kind, name)?;
        let lower = kind.to_ascii_lowercase();
        if lower == "workload" || lower == "workloads" {
            let found = self.find(&WorkloadRef::new(namespace, name)).await?;
            let described = self.describe(namespace, &found).await?;
            return Ok(workload_json(&described, &found.containers));
        }
        let resource = resource_of(kind).ok_or_else(|| unknown_kind(kind))?;
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &resource);
        let object = api
            .get_opt(name)
            .await
            .map_err(|e| api_error(format!("reading {kind} {namespace}/{name}"), e))?
            .ok_or_else(|| Error::NotFound {
                kind: "object",
                name: format!("{kind}/{name}"),
                hint: format!(
                    "; namespace {namespace} has no {} named {name}",
                    resource.kind
                ),
            })?;
        serde_json::to_value(object).map_err(|e| failed(format!("encoding {kind} {name}"), e))
    }

    async fn list_objects(&self, namespace: &str, kind: &str) -> Result<Vec<Value>> {
        checked_namespace(namespace)?;
        let lower = kind.to_ascii_lowercase();
        if lower == "workload" || lower == "workloads" {
            self.check_namespace(namespace).await?;
            let mut out = Vec::new();
            for found in self.all(namespace).await? {
                let described = self.describe(namespace, &found).await?;
                out.push(workload_json(&described, &found.containers));
            }
            return Ok(out);
        }
        let resource = resource_of(kind).ok_or_else(|| unknown_kind(kind))?;
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &resource);
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| api_error(format!("listing {kind} in {namespace}"), e))?;
        list.items
            .into_iter()
            .map(|o| serde_json::to_value(o).map_err(|e| failed(format!("encoding {kind}"), e)))
            .collect()
    }

    async fn snapshot(&self, workload: &WorkloadRef, volume: &str) -> Result<VolumeSnapshot> {
        let described = self.workload(workload).await?;
        // Scaled to zero is a request for a snapshot of a stopped application: not while a
        // pod the scale-down removed still runs (its node lost, a long grace period), which
        // the scale only warned of.
        if described.replicas == 0 && !described.pods.is_empty() {
            return Err(Error::Invalid(format!(
                "workload {workload} is scaled to zero but its pod(s) {} still run, so a \
                 snapshot now would not be of a stopped application; wait until they are gone \
                 (a pod on a lost node must be deleted by hand)",
                pod_names(&described.pods)
            )));
        }
        if !described.volumes.iter().any(|v| v.name == volume) {
            return Err(Error::NotFound {
                kind: "volume",
                name: volume.to_owned(),
                hint: list_hint(
                    &format!("workload {workload} mounts the claims"),
                    described.volumes.iter().map(|v| &v.name),
                ),
            });
        }
        // Nor while another pod (made by hand, a debug copy) mounts one of its claims.
        if described.replicas == 0 {
            let users = self.other_claim_users(workload, &described).await?;
            if !users.is_empty() {
                return Err(Error::Invalid(format!(
                    "workload {workload} is scaled to zero but pod(s) {} mount its claims, so a \
                     snapshot now would not be of a stopped application; wait until they are \
                     gone, or delete them",
                    users.join(", ")
                )));
            }
        }
        // A generated name: the claim's name, cut so the suffix fits in 63 characters.
        let prefix: String = volume.chars().take(50).collect();
        let mut spec = json!({ "source": { "persistentVolumeClaimName": volume } });
        if let Some(class) = &self.snapshot_class {
            spec["volumeSnapshotClassName"] = json!(class);
        }
        let mut annotations = json!({ WORKLOAD_ANNOTATION: workload.name });
        let claim = self
            .api::<PersistentVolumeClaim>(&workload.namespace)
            .get_opt(volume)
            .await
            .map_err(|e| api_error(format!("reading claim {}/{volume}", workload.namespace), e))?;
        if let Some(claim) = claim {
            let claim = serde_json::to_value(claim).map_err(|e| failed("encoding the claim", e))?;
            let kept: serde_json::Map<String, Value> = CLAIM_FIELDS
                .iter()
                .filter(|f| !claim["spec"][**f].is_null())
                .map(|f| ((*f).to_owned(), claim["spec"][*f].clone()))
                .collect();
            annotations[CLAIM_ANNOTATION] = json!(Value::Object(kept).to_string());
        }
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": format!("{SNAPSHOT_GROUP}/v1"),
            "kind": "VolumeSnapshot",
            "metadata": {
                "generateName": format!("{}-", prefix.trim_end_matches(['-', '.'])),
                "namespace": workload.namespace,
                "labels": { "app.kubernetes.io/managed-by": "cairn" },
                "annotations": annotations,
            },
            "spec": spec,
        }))
        .map_err(|e| failed("building the VolumeSnapshot", e))?;
        let api = self.snapshots(&workload.namespace);
        let created = api
            .create(&PostParams::default(), &object)
            .await
            .map_err(|e| {
                api_error(
                    format!(
                        "creating a VolumeSnapshot of claim {volume} (is the CSI snapshot \
                         controller installed, with a VolumeSnapshotClass?)"
                    ),
                    e,
                )
            })?;
        let name = created.metadata.name.clone().unwrap_or_default();
        // Deleted unless it is cut: on an error, a timeout, or the call dropped.
        let guard = Guard::new(&api, &name, DeleteParams::default());
        let cut = self
            .await_snapshot(&workload.namespace, &name, SNAPSHOT_CUT_TIMEOUT, false)
            .await
            .map_err(|e| match e {
                Error::Failed { source, .. } => Error::Failed {
                    what: format!("snapshotting claim {volume} of {workload}"),
                    source,
                },
                e => e,
            });
        if cut.is_ok() {
            guard.disarm();
        }
        cut
    }

    async fn snapshot_ready(&self, id: &str, timeout: Duration) -> Result<VolumeSnapshot> {
        let (namespace, name) = parse_snapshot_id(id)?;
        self.await_snapshot(namespace, name, timeout, true).await
    }

    async fn snapshot_info(&self, id: &str) -> Result<VolumeSnapshot> {
        Ok(snapshot_of(&self.snapshot_object(id).await?))
    }

    async fn restore_snapshot(&self, id: &str) -> Result<VolumeSnapshot> {
        let object = self.snapshot_object(id).await?;
        let (namespace, name) = parse_snapshot_id(id)?;
        // One taken moments ago (in the same run) may still be copied: waited for (its size
        // known by then).
        let snapshot = if object.data["status"]["readyToUse"].as_bool() == Some(true) {
            snapshot_of(&object)
        } else {
            self.await_snapshot(namespace, name, RESTORE_READY_TIMEOUT, true)
                .await
                .map_err(|e| match e {
                    Error::TimedOut { after, .. } => Error::TimedOut {
                        what: format!(
                            "waiting for VolumeSnapshot {id} to be ready to use before restoring \
                             it (the storage is still copying it; nothing was changed; run the \
                             restore again once `kubectl get volumesnapshot -n {namespace} \
                             {name}` shows READYTOUSE true)"
                        ),
                        after,
                    },
                    e => e,
                })?
        };
        if snapshot.volume.is_empty() {
            return Err(Error::Invalid(format!(
                "VolumeSnapshot {id} was not taken from a claim; Cairn restores only snapshots \
                 of claims"
            )));
        }
        if !snapshot.workload.name.is_empty() {
            let w = self.workload(&snapshot.workload).await?;
            if w.replicas > 0 || !w.pods.is_empty() {
                return Err(Error::Invalid(format!(
                    "workload {} still has {} replicas and {} pods: scale it to zero before its \
                     claim {} is replaced",
                    snapshot.workload,
                    w.replicas,
                    w.pods.len(),
                    snapshot.volume
                )));
            }
        }
        let claim = &snapshot.volume;
        // Any other pod mounting the claim (a debug pod, a Job, a pod a crashed run left)
        // would keep it Terminating, and the restore would end with no claim at all.
        let users = self.claim_users(namespace, &[claim.as_str()]).await?;
        if !users.is_empty() {
            return Err(Error::Invalid(format!(
                "claim {namespace}/{claim} is mounted by pod(s) {}: stop them before it is replaced",
                users.join(", ")
            )));
        }
        let claims: Api<PersistentVolumeClaim> = self.api(namespace);
        let old = claims
            .get_opt(claim)
            .await
            .map_err(|e| api_error(format!("reading claim {namespace}/{claim}"), e))?;
        let mut new = json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": { "name": claim, "namespace": namespace },
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": { "requests": { "storage": snapshot.bytes.to_string() } },
            },
        });
        // The claim's spec: the present claim's, else what the snapshot recorded of it.
        let recorded: Option<Value> = object
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CLAIM_ANNOTATION))
            .and_then(|s| serde_json::from_str(s).ok());
        let source = match &old {
            Some(old) => {
                let old = serde_json::to_value(old).map_err(|e| failed("encoding the claim", e))?;
                for field in ["labels", "annotations"] {
                    let kept: serde_json::Map<String, Value> = old["metadata"][field]
                        .as_object()
                        .into_iter()
                        .flatten()
                        // The binding annotations name the old volume.
                        .filter(|(k, _)| !k.starts_with("pv.kubernetes.io/"))
                        .filter(|(k, _)| !k.starts_with("volume.kubernetes.io/"))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    if !kept.is_empty() {
                        new["metadata"][field] = Value::Object(kept);
                    }
                }
                Some(old["spec"].clone())
            }
            None => recorded,
        };
        if let Some(source) = &source {
            for field in CLAIM_FIELDS {
                if !source[field].is_null() {
                    new["spec"][field] = source[field].clone();
                }
            }
        }
        let requested = source
            .as_ref()
            .and_then(|s| s["resources"]["requests"]["storage"].as_str())
            .and_then(quantity_bytes)
            .unwrap_or(0);
        if requested == 0 && snapshot.bytes == 0 {
            return Err(Error::Invalid(format!(
                "VolumeSnapshot {id} reports no restoreSize and claim {namespace}/{claim} is \
                 gone, so the size of the claim to make is unknown: create claim {claim} from \
                 the snapshot yourself (spec.dataSource naming VolumeSnapshot {name}), as \
                 large as the volume was"
            )));
        }
        if requested < snapshot.bytes {
            new["spec"]["resources"]["requests"]["storage"] = json!(snapshot.bytes.to_string());
        }
        new["spec"]["dataSource"] = json!({
            "apiGroup": SNAPSHOT_GROUP,
            "kind": "VolumeSnapshot",
            "name": name,
        });
        let new: PersistentVolumeClaim =
            serde_json::from_value(new).map_err(|e| failed("building the claim", e))?;
        let kept = match &old {
            Some(old) => self.keep_volume(old).await?,
            None => None,
        };
        let kept_note = kept.as_ref().map_or_else(String::new, |(volume, policy)| {
            format!(
                "; the old data is kept in volume {volume} (reclaim policy Retain, annotated \
                 {REPLACED_ANNOTATION}): to take it back, delete claim {claim} if it exists, \
                 clear the volume's spec.claimRef and make claim {claim} with spec.volumeName \
                 {volume}; once it is not needed, set its persistentVolumeReclaimPolicy back to \
                 {policy} so the cluster reclaims it"
            )
        });
        // Should the call be dropped from here on (the engine's deadline), the log says where
        // the claim and its old data are: no error would.
        let mut unfinished = Unfinished(format!(
            "the restore of claim {namespace}/{claim} from VolumeSnapshot {id} was cut short \
             while it deleted the old claim: if claim {claim} is gone, restore the snapshot \
             again{kept_note}"
        ));
        if old.is_some() {
            // Not deleted: the old claim keeps its volume, which gets its policy back.
            if let Err(e) = claims.delete(claim, &DeleteParams::default()).await {
                unfinished.disarm();
                if let Some((volume, policy)) = &kept {
                    self.release_volume(volume, policy).await;
                }
                return Err(api_error(format!("deleting claim {namespace}/{claim}"), e));
            }
            gone(
                &claims,
                &format!("claim {namespace}/{claim} (does a pod still mount it?)"),
                claim,
                CLAIM_GONE_TIMEOUT,
            )
            .await
            .inspect_err(|_| {
                if !kept_note.is_empty() {
                    tracing::warn!("claim {namespace}/{claim} is still being deleted{kept_note}");
                }
            })
            .inspect_err(|_| unfinished.disarm())?;
        }
        unfinished.0 = format!(
            "the restore of claim {namespace}/{claim} from VolumeSnapshot {id} was cut short \
             after the old claim was deleted: if claim {claim} does not exist, restore the \
             snapshot again{kept_note}"
        );
        let class = new.spec.as_ref().and_then(|s| s.storage_class_name.clone());
        claims
            .create(&PostParams::default(), &new)
            .await
            .inspect_err(|_| unfinished.disarm())
            .map_err(|e| {
                api_error(
                    format!(
                        "creating claim {namespace}/{claim} from VolumeSnapshot {id} (the old \
                         claim is deleted; the snapshot still holds the data: restore it \
                         again{kept_note})"
                    ),
                    e,
                )
            })?;
        unfinished.0 = format!(
            "the restore of claim {namespace}/{claim} from VolumeSnapshot {id} was cut short \
             while the new claim was being bound: see `kubectl describe pvc -n {namespace} \
             {claim}`{kept_note}"
        );
        let bound = self
            .await_bound(namespace, claim, class.as_deref(), id)
            .await
            .inspect_err(|_| {
                if !kept_note.is_empty() {
                    tracing::warn!("claim {namespace}/{claim} was not restored{kept_note}");
                }
            })
            .inspect_err(|_| unfinished.disarm())?;
        unfinished.disarm();
        if let Some((volume, policy)) = &kept {
            if bound {
                self.release_volume(volume, policy).await;
            } else {
                tracing::warn!(
                    "claim {namespace}/{claim} is made from VolumeSnapshot {id} but not yet \
                     bound (its class binds on first use){kept_note}, once the workload runs on \
                     the restored claim (kubectl patch pv {volume} -p \
                     '{{\"spec\":{{\"persistentVolumeReclaimPolicy\":\"{policy}\"}}}}')"
                );
            }
        }
        Ok(snapshot)
    }

    async fn delete_snapshot(&self, id: &str) -> Result<()> {
        let (namespace, name) = parse_snapshot_id(id)?;
        self.snapshots(namespace)
            .delete(name, &DeleteParams::default())
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) if s.code == 404 => Error::NotFound {
                    kind: "snapshot",
                    name: id.to_owned(),
                    hint: String::new(),
                },
                e => api_error(format!("deleting VolumeSnapshot {id}"), e),
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind the backend reads for blueprints is readable under both roles Cairn ships.
    #[test]
    fn the_shipped_roles_grant_reading_every_kind_served() {
        let root =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/kubernetes");
        for file in ["rbac.yaml", "install/cairn.yaml"] {
            let text = std::fs::read_to_string(root.join(file)).expect("the role file");
            let docs: Vec<serde_norway::Value> = serde_norway::Deserializer::from_str(&text)
                .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
                .collect();
            let rules: Vec<&serde_norway::Value> = docs
                .iter()
                .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
                .flat_map(|d| d["rules"].as_sequence().into_iter().flatten())
                .collect();
            let has = |list: &serde_norway::Value, item: &str| {
                list.as_sequence()
                    .is_some_and(|l| l.iter().any(|v| v.as_str() == Some(item)))
            };
            for kind in KINDS.split(", ").filter(|k| *k != "workload") {
                let r = resource_of(kind).expect("a known kind");
                let granted = rules.iter().any(|rule| {
                    has(&rule["apiGroups"], &r.group)
                        && has(&rule["resources"], &r.plural)
                        && has(&rule["verbs"], "get")
                        && has(&rule["verbs"], "list")
                });
                assert!(
                    granted,
                    "{file} grants no get and list on {}/{}",
                    r.group, r.plural
                );
            }
        }
    }

    #[test]
    fn a_workload_is_settled_only_once_its_controller_saw_the_latest_spec() {
        assert!(
            !observed(Some(3), Some(2)),
            "the scale just made is not seen yet"
        );
        assert!(!observed(Some(1), None));
        assert!(observed(Some(3), Some(3)) && observed(Some(3), Some(4)));
        assert!(
            observed(None, None),
            "no generation (a fake) counts as seen"
        );
    }

    #[test]
    fn the_annotated_default_container_comes_first() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let meta: ObjectMeta = serde_json::from_value(json!({
            "annotations": { DEFAULT_CONTAINER_ANNOTATION: "db" }
        }))
        .expect("meta");
        assert_eq!(
            default_first(Some(&meta), names(&["linkerd-proxy", "db"])),
            names(&["db", "linkerd-proxy"])
        );
        assert_eq!(
            default_first(None, names(&["proxy", "db"])),
            names(&["proxy", "db"])
        );
        let other: ObjectMeta = serde_json::from_value(json!({
            "annotations": { DEFAULT_CONTAINER_ANNOTATION: "gone" }
        }))
        .expect("meta");
        assert_eq!(
            default_first(Some(&other), names(&["a", "b"])),
            names(&["a", "b"])
        );
    }

    #[test]
    fn a_scale_down_waits_for_its_pods_grace_periods_within_a_host_call() {
        let secs = Duration::from_secs;
        assert_eq!(scale_down_wait(secs(30), false, 3), SCALE_DOWN_TIMEOUT);
        // Three pods of an OrderedReady set with 120 s each: one after the other.
        assert_eq!(scale_down_wait(secs(120), true, 3), secs(390));
        assert_eq!(scale_down_wait(secs(120), false, 3), SCALE_DOWN_TIMEOUT);
        assert_eq!(scale_down_wait(secs(3600), true, 5), SCALE_DOWN_MAX);
        assert!(SCALE_DOWN_MAX < HOST_CALL_BUDGET);
    }

    #[test]
    fn quantities_read_as_bytes() {
        assert_eq!(quantity_bytes("1073741824"), Some(1 << 30));
        assert_eq!(quantity_bytes("10Gi"), Some(10 << 30));
        assert_eq!(quantity_bytes("500M"), Some(500_000_000));
        assert_eq!(quantity_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(quantity_bytes("100k"), Some(100_000));
        assert_eq!(quantity_bytes("3x"), None);
        assert_eq!(quantity_bytes("Gi"), None);
    }

    #[test]
    fn claims_of_a_stateful_set_are_told_by_their_ordinal() {
        assert!(is_ordinal_claim("data-db-0", "data", "db"));
        assert!(is_ordinal_claim("data-db-12", "data", "db"));
        assert!(!is_ordinal_claim("data-db-", "data", "db"));
        assert!(!is_ordinal_claim("data-dbx-0", "data", "db"));
        assert!(!is_ordinal_claim("data-db-0a", "data", "db"));
    }

    #[test]
    fn selectors_become_queries() {
        let selector: LabelSelector = serde_json::from_value(json!({
            "matchLabels": { "app": "db" },
            "matchExpressions": [
                { "key": "tier", "operator": "In", "values": ["a", "b"] },
                { "key": "canary", "operator": "DoesNotExist" },
            ],
        }))
        .expect("selector");
        assert_eq!(
            selector_query(&selector).expect("query"),
            "app=db,tier in (a,b),!canary"
        );
        let bad: LabelSelector = serde_json::from_value(json!({
            "matchExpressions": [{ "key": "x", "operator": "Near" }],
        }))
        .expect("selector");
        assert!(matches!(selector_query(&bad), Err(Error::Invalid(_))));
    }

    #[test]
    fn exit_codes_come_from_the_status() {
        let success: Status =
            serde_json::from_value(json!({ "status": "Success" })).expect("status");
        assert_eq!(exit_code(Some(success)), Ok(0));
        let failed: Status = serde_json::from_value(json!({
            "status": "Failure",
            "reason": "NonZeroExitCode",
            "message": "command terminated with non-zero exit code: 3",
            "details": { "causes": [{ "reason": "ExitCode", "message": "3" }] },
        }))
        .expect("status");
        assert_eq!(exit_code(Some(failed)), Ok(3));
        let internal: Status = serde_json::from_value(json!({
            "status": "Failure",
            "reason": "InternalError",
            "message": "executable file not found in $PATH",
        }))
        .expect("status");
        assert_eq!(
            exit_code(Some(internal)),
            Err("executable file not found in $PATH".to_owned())
        );
        assert!(exit_code(None).is_err());
    }
}
