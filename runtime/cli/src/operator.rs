//! `cairn serve --operator`: policies and blueprint bindings as Kubernetes resources
//! (`policies.cairn.dev` and `blueprintbindings.cairn.dev`, defined by
//! `examples/kubernetes/install/crds.yaml`) in one namespace.
//!
//! Each pass of `serve` lists them, stores in the catalog each one that changed, with the same
//! checks as `cairn policy apply` and `cairn binding apply`, and deletes the records of
//! resources that are gone (their restore points stay). After the pass's runs it writes each
//! resource's status: `Ready`, `Paused` or `Invalid` with the reason, and for a policy its last
//! run and next run. A resource's spec is the file form without `name` (the resource's name)
//! and, for a policy, with `target` defaulting to `kube`. A record applied from the command
//! line is never replaced by a resource of the same name: the resource reports the clash. The
//! command line in turn refuses to change or delete a record a resource keeps.
//!
//! `Backup` (run a policy now) and `Restore` (restore one of its points) resources are run
//! once each, in the pass that finds them, their outcome written to their status. Runs,
//! one-shots' outcomes and new refusals are also recorded as Kubernetes Events.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cairn_catalog::{Kind as RecordKind, Policy};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};

use crate::UsageError;
use crate::home::Home;

/// The longest one of the operator's own API calls may take: a connection the API server
/// stopped answering on (a control-plane upgrade behind a load balancer) must not stall every
/// later pass.
const API_CALL: std::time::Duration = std::time::Duration::from_secs(60);

/// `call`, failing once it has taken [`API_CALL`].
async fn bounded<T>(call: impl std::future::Future<Output = kube::Result<T>>) -> kube::Result<T> {
    tokio::time::timeout(API_CALL, call)
        .await
        .unwrap_or_else(|_| {
            Err(kube::Error::Service(Box::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the API server did not answer within {} s",
                    API_CALL.as_secs()
                ),
            ))))
        })
}

/// The API group of Cairn's resources.
const GROUP: &str = "cairn.dev";
/// Their version.
const VERSION: &str = "v1alpha1";

/// A kind of Cairn resource: its kind and its plural.
#[derive(Debug, Clone, Copy)]
struct Resource(&'static str, &'static str);

/// A restore of a policy's restore point, run once (`policy restore`'s flags in its spec).
const RESTORE: Resource = Resource("Restore", "restores");
/// A run of a policy now, run once (`policy run`).
const BACKUP: Resource = Resource("Backup", "backups");

/// How a one-shot resource's run went.
enum Ran {
    /// It ran: whether it succeeded, and what its status says of it.
    Done { ok: bool, status: Value },
    /// It must wait for the next pass, for this reason.
    Later(String),
}

/// A `Backup` resource's spec: the policy to run now.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupSpec {
    policy: String,
}

/// A kind of resource that Cairn keeps as a catalog record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Binding,
    Policy,
}

impl Kind {
    fn resource(self) -> Resource {
        match self {
            Kind::Binding => Resource("BlueprintBinding", "blueprintbindings"),
            Kind::Policy => Resource("Policy", "policies"),
        }
    }

    fn kind(self) -> &'static str {
        self.resource().0
    }

    /// The word for it in messages, as the command line names it.
    fn what(self) -> &'static str {
        match self {
            Kind::Binding => "binding",
            Kind::Policy => "policy",
        }
    }

    fn record(self) -> RecordKind {
        match self {
            Kind::Binding => RecordKind::BlueprintBinding,
            Kind::Policy => RecordKind::Policy,
        }
    }
}

/// The resource an event is about.
struct Involved<'a> {
    resource: Resource,
    name: &'a str,
    uid: Option<&'a str>,
}

/// What the catalog held at the start of a pass: the policies and bindings (as JSON, by kind
/// and name) and the presets.
struct Stored {
    records: BTreeMap<(Kind, String), Value>,
    presets: BTreeMap<String, cairn_catalog::PolicyPreset>,
}

/// What the last pass found of one resource.
#[derive(Debug, Clone)]
struct Found {
    uid: Option<String>,
    generation: Option<i64>,
    /// Its status as the pass read it.
    status: Value,
    /// Why it is not applied as it is now.
    error: Option<String>,
}

/// Where an unwritten final status of `object` is kept: by uid, since a resource deleted and
/// made again under its name is another one.
fn unwritten_key(resource: Resource, object: &DynamicObject) -> String {
    match &object.metadata.uid {
        Some(uid) => uid.clone(),
        None => format!(
            "{}/{}",
            resource.0,
            object.metadata.name.as_deref().unwrap_or("")
        ),
    }
}

/// Keeps the catalog's policies and bindings in step with the resources of one namespace.
pub(crate) struct Operator {
    client: kube::Client,
    namespace: String,
    /// The `origin` of the records it keeps: `kube:NAMESPACE`.
    origin: String,
    /// The only place a resource's secrets may come from.
    secrets: PathBuf,
    /// The namespaces its resources may act on; empty: any.
    allowed: Vec<String>,
    /// Whether a resource's policy may name a `local:` target (`--operator-local-targets`).
    local_targets: bool,
    /// Final statuses of one-shots that could not be written yet (by uid): written
    /// before such a resource is looked at again, which would otherwise take its `Running`
    /// for an interrupted run.
    unwritten: std::sync::Mutex<BTreeMap<String, Value>>,
    found: BTreeMap<(Kind, String), Found>,
}

impl Operator {
    /// An operator of the resources in `namespace` (default: the pod's own, or the kubeconfig
    /// context's) of the cluster of `context` (default: the one `kubectl` would use).
    pub(crate) async fn connect(
        context: Option<&str>,
        namespace: Option<String>,
        secrets: PathBuf,
        allowed: Vec<String>,
        local_targets: bool,
    ) -> anyhow::Result<Self> {
        let client = cairn_cluster::kube_client(context)
            .await
            .map_err(|e| UsageError(e.to_string()))?;
        let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
        Ok(Self {
            origin: origin_of(&namespace),
            client,
            namespace,
            secrets,
            allowed,
            local_targets,
            unwritten: Default::default(),
            found: BTreeMap::new(),
        })
    }

    /// Refuses a resource that `check` refuses; a record stored before for such a resource
    /// (a version stored before the check existed, or before the operator was narrowed) is
    /// removed, not kept running.
    fn refuse(
        &self,
        kind: Kind,
        name: &str,
        check: anyhow::Result<()>,
        stored: bool,
        home: &Home,
    ) -> anyhow::Result<()> {
        let Err(e) = check else {
            return Ok(());
        };
        let what = format!("{} {}/{name}", kind.kind(), self.namespace);
        if !stored {
            return Err(e.context(format!("{what} is not applied")));
        }
        crate::catalog::open(home)?.delete(kind.record(), name)?;
        Err(e.context(format!(
            "{what} is not applied, and the version stored before is removed"
        )))
    }

    /// Refuses a resource's secret that is not a file under the secrets directory: its author
    /// must not read Cairn's environment (its passphrase) or files (the home's keys).
    fn check_secrets(&self, secrets: &BTreeMap<String, String>) -> anyhow::Result<()> {
        for (name, source) in secrets {
            let inside = source
                .strip_prefix("file:")
                .is_some_and(|p| self.under_secrets(Path::new(p)));
            if !inside {
                let dir = self.secrets.display();
                return Err(UsageError(format!(
                    "secret {name}: {} is not a file under {dir}: a resource's secrets are \
                     keys of the Secret mounted there (file:{dir}/KEY); env: and other paths would read \
                     Cairn's own environment and files",
                    crate::shown_source(source)
                ))
                .into());
            }
        }
        Ok(())
    }

    /// Whether `path` is under the secrets directory (and climbs out of it nowhere).
    fn under_secrets(&self, path: &Path) -> bool {
        path.starts_with(&self.secrets)
            && !path
                .components()
                .any(|c| c == std::path::Component::ParentDir)
    }

    /// Refuses what a resource's policy would reach through Cairn beyond its namespaces: a
    /// `local:` target (an inventory runs the programs it allows on Cairn's own machine, as
    /// Cairn) unless `--operator-local-targets`, and an export's files outside the secrets
    /// directory (Cairn's own key or passphrase files, say).
    fn check_reach(&self, policy: &Policy) -> anyhow::Result<()> {
        if policy.target.starts_with("local:") && !self.local_targets {
            return Err(UsageError(format!(
                "target {}: a resource's policy acts on the cluster (target kube); a local \
                 inventory would run its programs on Cairn's own machine, as Cairn (serve \
                 --operator-local-targets allows it, for a cluster of trusted authors)",
                policy.target
            ))
            .into());
        }
        let files = policy.export.iter().flat_map(|e| {
            [
                ("profile_file", &e.profile_file),
                ("passphrase_file", &e.passphrase_file),
                ("key_file", &e.key_file),
            ]
        });
        for (field, file) in files {
            if let Some(file) = file
                && !self.under_secrets(Path::new(file))
            {
                let dir = self.secrets.display();
                return Err(UsageError(format!(
                    "export.{field} {file} is not a file under {dir}: a resource's files are \
                     keys of the Secret mounted there; other paths would read Cairn's own files"
                ))
                .into());
            }
        }
        Ok(())
    }

    fn api(&self, Resource(kind, plural): Resource) -> Api<DynamicObject> {
        let resource =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, kind), plural);
        Api::namespaced_with(self.client.clone(), &self.namespace, &resource)
    }

    async fn list(&self, resource: Resource) -> anyhow::Result<Vec<DynamicObject>> {
        let resources = format!("{}.{GROUP}", resource.1);
        match bounded(self.api(resource).list(&ListParams::default())).await {
            Ok(list) => Ok(list.items),
            Err(kube::Error::Api(s)) if s.code == 404 => Err(UsageError(format!(
                "the cluster has no {resources} resources: install Cairn's resource definitions \
                 (kubectl apply -f examples/kubernetes/install/crds.yaml)"
            ))
            .into()),
            Err(kube::Error::Api(s)) if s.code == 403 => Err(UsageError(format!(
                "listing {resources} in namespace {} is forbidden ({}): grant Cairn's service \
                 account the role of examples/kubernetes/install/cairn.yaml",
                self.namespace, s.message
            ))
            .into()),
            Err(e) => Err(anyhow::Error::new(e).context(format!(
                "listing {resources} in namespace {}",
                self.namespace
            ))),
        }
    }

    /// Reads the resources and brings the catalog in step with them. Bindings come first: a
    /// policy's run picks them up in the same pass.
    pub(crate) async fn sync(
        &mut self,
        engine: &cairn_engine::Engine,
        home: &Home,
    ) -> anyhow::Result<()> {
        let bindings = self.list(Kind::Binding.resource()).await?;
        let policies = self.list(Kind::Policy.resource()).await?;
        let restores = self.list(RESTORE).await?;
        let backups = self.list(BACKUP).await?;
        self.found.clear();
        // One read of what is stored, per pass (its pages verified daily, as a frequent reader
        // should): a resource opens the catalog again only when it changed.
        let stored = {
            let catalog = crate::catalog::open_verified_daily(home)?;
            let mut records = BTreeMap::new();
            for kind in [Kind::Binding, Kind::Policy] {
                for entry in catalog.list(kind.record())? {
                    if let Ok(record) = serde_json::from_str::<Value>(entry.value.get()) {
                        records.insert((kind, entry.key), record);
                    }
                }
            }
            Stored {
                records,
                presets: crate::preset::presets_in(&catalog)?,
            }
        };
        for (kind, objects) in [(Kind::Binding, bindings), (Kind::Policy, policies)] {
            for object in objects {
                let name = object.metadata.name.clone().unwrap_or_default();
                let spec = object.data.get("spec").cloned().unwrap_or(Value::Null);
                let error = self
                    .keep(kind, &name, spec, &stored, engine, home)
                    .await
                    .err()
                    .map(|e| crate::one_line(&e));
                // Said once, not every pass (nor at every start): the status keeps saying it.
                let status = object.data.get("status").cloned().unwrap_or(Value::Null);
                if let Some(error) = &error
                    && status["message"].as_str() != Some(error)
                {
                    errln!("cairn: {error}");
                    let on = Involved {
                        resource: kind.resource(),
                        name: &name,
                        uid: object.metadata.uid.as_deref(),
                    };
                    self.event(&on, true, "Invalid", error).await;
                }
                self.found.insert(
                    (kind, name),
                    Found {
                        uid: object.metadata.uid.clone(),
                        generation: object.metadata.generation,
                        status,
                        error,
                    },
                );
            }
        }
        self.forget(&stored.records, home)?;
        // Unwritten statuses of one-shots deleted since are dropped.
        let present: std::collections::BTreeSet<String> =
            [(RESTORE, &restores), (BACKUP, &backups)]
                .into_iter()
                .flat_map(|(resource, objects)| {
                    objects.iter().map(move |o| unwritten_key(resource, o))
                })
                .collect();
        self.lock_unwritten().retain(|key, _| present.contains(key));
        for object in restores {
            self.once(RESTORE, object, |spec| {
                restore_of(spec, &self.allowed, engine, home)
            })
            .await;
        }
        for object in backups {
            self.once(BACKUP, object, |spec| {
                backup_of(spec, &self.allowed, engine, home)
            })
            .await;
        }
        Ok(())
    }

    /// Runs a one-shot resource (a Restore or a Backup) that has not run, and writes how it
    /// went to its status: `Running`, then `Succeeded` or `Failed` (or `Pending` again when it
    /// must wait). One found running was interrupted (it runs within a pass): it is marked
    /// failed, not run again, since a restore replaces data.
    async fn once<Fut>(
        &self,
        resource: Resource,
        object: DynamicObject,
        run: impl FnOnce(Value) -> Fut,
    ) where
        Fut: std::future::Future<Output = anyhow::Result<Ran>>,
    {
        let name = object.metadata.name.clone().unwrap_or_default();
        let what = format!("{} {}/{name}", resource.0, self.namespace);
        let now = jiff::Timestamp::now;
        let key = unwritten_key(resource, &object);
        let unwritten = self.lock_unwritten().remove(&key);
        if let Some(status) = unwritten {
            if !self.write_status(resource, &name, status.clone()).await {
                self.lock_unwritten().insert(key, status);
            }
            return;
        }
        match object.data["status"]["state"].as_str() {
            Some("Succeeded" | "Failed") => return,
            Some("Running") => {
                let message = format!(
                    "interrupted: Cairn stopped while it ran; create another {} to run it again",
                    resource.0
                );
                errln!("cairn: {what}: {message}");
                let status = json!({ "state": "Failed", "message": message, "finished": now() });
                self.write_status(resource, &name, status).await;
                return;
            }
            _ => {}
        }
        let started = json!({
            "state": "Running",
            "message": null,
            "started": now(),
            "observedGeneration": object.metadata.generation,
        });
        // Never run what could not be marked running: the next pass would run it again. The
        // mark is conditional on the version seen: of two operators watching one namespace
        // (one in the cluster, one run with --operator-context), the second gets a conflict
        // and leaves the run to the first.
        let seen = object.metadata.resource_version.clone();
        if !self
            .claim_status(resource, &name, started, seen.as_deref())
            .await
        {
            return;
        }
        errln!("cairn: {what} started");
        let spec = object.data.get("spec").cloned().unwrap_or(Value::Null);
        let status = match run(spec).await {
            Ok(Ran::Done { ok, mut status }) => {
                status["state"] = if ok { "Succeeded" } else { "Failed" }.into();
                status["finished"] = json!(now());
                status
            }
            Ok(Ran::Later(message)) => json!({ "state": "Pending", "message": message }),
            Err(e) => {
                json!({ "state": "Failed", "message": crate::one_line(&e), "finished": now() })
            }
        };
        let state = status["state"].as_str().unwrap_or_default().to_owned();
        let message = status["message"].as_str().unwrap_or(&state).to_owned();
        errln!("cairn: {what}: {state}: {message}");
        let on = Involved {
            resource,
            name: &name,
            uid: object.metadata.uid.as_deref(),
        };
        self.event(&on, state == "Failed", &state, &message).await;
        // Retried, then kept for the next pass: unwritten, the `Running` mark would be taken
        // for an interrupted run.
        for wait in [0, 1, 3] {
            tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
            if self.write_status(resource, &name, status.clone()).await {
                return;
            }
        }
        self.lock_unwritten().insert(key, status);
    }

    fn lock_unwritten(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Value>> {
        self.unwritten
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a Kubernetes Event on resource `name` (what `kubectl describe` and `kubectl
    /// get events` show): `Warning` when `warning`, else `Normal`. A failure is reported, not
    /// fatal: the status says the same.
    async fn event(&self, on: &Involved<'_>, warning: bool, reason: &str, message: &str) {
        let resource =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Event"), "events");
        let now = jiff::Timestamp::now();
        let mut event = DynamicObject::new("", &resource).within(&self.namespace);
        event.metadata.name = None;
        event.metadata.generate_name = Some(format!("{}.", on.name));
        event.data = json!({
            "involvedObject": {
                "apiVersion": format!("{GROUP}/{VERSION}"),
                "kind": on.resource.0,
                "name": on.name,
                "namespace": self.namespace,
                "uid": on.uid,
            },
            "reason": reason,
            // An event is a line; the status has the whole message.
            "message": message.chars().take(1000).collect::<String>(),
            "type": if warning { "Warning" } else { "Normal" },
            "source": { "component": "cairn" },
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.namespace, &resource);
        if let Err(e) = bounded(api.create(&PostParams::default(), &event)).await {
            errln!(
                "cairn: cannot record an event on {} {}/{}: {e}",
                on.resource.0,
                self.namespace,
                on.name
            );
        }
    }

    /// Merges `status` into the status of resource `name`, and says whether it could; a
    /// failure is reported, not fatal.
    async fn write_status(&self, resource: Resource, name: &str, status: Value) -> bool {
        self.claim_status(resource, name, status, None).await
    }

    /// [`Operator::write_status`], only while the resource is at `version` when one is given
    /// (a conflict says another writer changed it first).
    async fn claim_status(
        &self,
        resource: Resource,
        name: &str,
        status: Value,
        version: Option<&str>,
    ) -> bool {
        let mut patch = json!({ "status": status });
        if let Some(version) = version {
            patch["metadata"] = json!({ "resourceVersion": version });
        }
        let patch = Patch::Merge(patch);
        match bounded(
            self.api(resource)
                .patch_status(name, &PatchParams::default(), &patch),
        )
        .await
        {
            Ok(_) => true,
            Err(kube::Error::Api(s)) if s.code == 409 => {
                errln!(
                    "cairn: {} {}/{name} changed as it was taken up (another operator runs it?): \
                     left to whoever changed it",
                    resource.0,
                    self.namespace
                );
                false
            }
            Err(e) => {
                errln!(
                    "cairn: cannot write the status of {} {}/{name}: {e}",
                    resource.0,
                    self.namespace
                );
                false
            }
        }
    }

    /// Stores the record resource `name` describes, when it differs from the stored one.
    async fn keep(
        &self,
        kind: Kind,
        name: &str,
        spec: Value,
        all: &Stored,
        engine: &cairn_engine::Engine,
        home: &Home,
    ) -> anyhow::Result<()> {
        let what = format!("{}/{name}", self.namespace);
        let stored = all.records.get(&(kind, name.to_owned()));
        if let Some(stored) = stored {
            let origin = stored.get("origin").and_then(Value::as_str);
            // One restored from this namespace's resources elsewhere is taken over.
            let restored = format!("{}{RESTORED}", self.origin);
            if origin != Some(&self.origin) && origin != Some(&restored) {
                let (resource, record) = (kind.kind(), kind.what());
                let clash = origin.map_or_else(
                    || {
                        format!(
                            "was applied with `cairn {record} apply`; delete it (`cairn {record} \
                             delete {name}`) or"
                        )
                    },
                    |o| format!("is kept from the resources of {o};"),
                );
                return Err(UsageError(format!(
                    "{resource} {what} is not applied: a {record} named {name} {clash} give \
                     this resource another name"
                ))
                .into());
            }
        }
        let still_runs = |e: anyhow::Error| {
            let kind = kind.kind();
            if stored.is_some() {
                e.context(format!(
                    "{kind} {what} is not applied (the version before still runs)"
                ))
            } else {
                e.context(format!("{kind} {what} is not applied"))
            }
        };
        let base = home.root();
        match kind {
            Kind::Policy => {
                let mut policy =
                    crate::policy::policy_of_spec(name, spec, &what, base, &all.presets)
                        .map_err(still_runs)?;
                let check = self
                    .check_secrets(&policy.secrets)
                    .and_then(|()| self.check_reach(&policy))
                    .and_then(|()| allow_namespace(&self.allowed, &policy.namespace));
                self.refuse(kind, name, check, stored.is_some(), home)?;
                policy.origin = Some(self.origin.clone());
                if let Some(stored) = stored
                    && unchanged(stored, &serde_json::to_value(&policy)?)
                {
                    return Ok(());
                }
                crate::policy::check(&policy, engine, home)
                    .await
                    .map_err(still_runs)?;
                crate::catalog::open(home)?.apply_policy(&mut policy)?;
            }
            Kind::Binding => {
                let mut binding =
                    crate::binding::binding_of_spec(name, spec, &what, base).map_err(still_runs)?;
                let check = self.check_secrets(&binding.secrets);
                self.refuse(kind, name, check, stored.is_some(), home)?;
                binding.origin = Some(self.origin.clone());
                if let Some(stored) = stored
                    && unchanged(stored, &serde_json::to_value(&binding)?)
                {
                    return Ok(());
                }
                crate::binding::check(&binding, engine, home)
                    .await
                    .map_err(still_runs)?;
                crate::catalog::open(home)?.save(&binding)?;
            }
        }
        errln!(
            "cairn: {} {name} applied from its resource in namespace {}",
            kind.what(),
            self.namespace
        );
        Ok(())
    }

    /// Deletes the records this operator keeps (as `stored` at the start of the pass) whose
    /// resources are gone; the catalog is opened only when there is one.
    fn forget(&self, stored: &BTreeMap<(Kind, String), Value>, home: &Home) -> anyhow::Result<()> {
        let gone: Vec<&(Kind, String)> = stored
            .iter()
            .filter(|(key, record)| {
                record.get("origin").and_then(Value::as_str) == Some(&self.origin)
                    && !self.found.contains_key(key)
            })
            .map(|(key, _)| key)
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        let catalog = crate::catalog::open(home)?;
        for (kind, name) in gone {
            catalog.delete(kind.record(), name)?;
            errln!(
                "cairn: {} {name} deleted: its resource is gone{}",
                kind.what(),
                if *kind == Kind::Policy {
                    " (its restore points stay)"
                } else {
                    ""
                }
            );
        }
        Ok(())
    }

    /// Writes the status of every resource the last [`Operator::sync`] found, where it changed.
    /// A status that cannot be written is reported and the others are still written.
    pub(crate) async fn report(&self, home: &Home) -> anyhow::Result<()> {
        let catalog = crate::catalog::open_verified_daily(home)?;
        let mut statuses = Vec::new();
        for ((kind, name), found) in &self.found {
            let policy = match kind {
                Kind::Policy => catalog
                    .policy(name)
                    .ok()
                    .flatten()
                    .filter(|p| p.origin.as_deref() == Some(&self.origin)),
                Kind::Binding => None,
            };
            if let Some(status) = status_to_write(found, policy.as_ref()) {
                statuses.push((*kind, name, found, status));
            }
        }
        drop(catalog);
        for (kind, name, found, status) in statuses {
            // A run the status does not show yet: an event says how it went.
            let run = &status["lastRun"];
            if !run.is_null() && run["finished"] != found.status["lastRun"]["finished"] {
                let points = run["restorePoints"].as_array().map_or(0, Vec::len);
                let errors: Vec<&str> = run["errors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let on = Involved {
                    resource: kind.resource(),
                    name,
                    uid: found.uid.as_deref(),
                };
                if run["succeeded"] == true {
                    let message = format!("backed up: {points} restore point(s) made");
                    self.event(&on, false, "BackedUp", &message).await;
                } else {
                    let message = format!("{points} restore point(s) made; {}", errors.join("; "));
                    self.event(&on, true, "BackupFailed", &message).await;
                }
            }
            self.write_status(kind.resource(), name, status).await;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("namespace", &self.namespace)
            .field("found", &self.found)
            .finish_non_exhaustive()
    }
}

/// Restores what a `Restore` resource's spec says.
async fn restore_of(
    spec: Value,
    allowed: &[String],
    engine: &cairn_engine::Engine,
    home: &Home,
) -> anyhow::Result<Ran> {
    let spec: crate::policy::RestoreSpec =
        serde_json::from_value(spec).map_err(|e| UsageError(e.to_string()))?;
    let policy = crate::policy::load(&crate::catalog::open(home)?, &spec.policy)?;
    allow_namespace(allowed, &policy.namespace)?;
    if let Some(into) = spec.target_namespace() {
        allow_namespace(allowed, into)?;
    }
    let restored = crate::policy::RestoreArgs::from(spec)
        .restore(
            &policy,
            engine,
            home,
            crate::Output::Text,
            &cairn_engine::Interrupt::default(),
        )
        .await?;
    Ok(Ran::Done {
        ok: restored.error.is_none(),
        status: json!({
            "message": restored.error,
            "point": restored.point,
            "workload": restored.workload,
        }),
    })
}

/// Runs the policy a `Backup` resource names, now; one that is running already waits.
async fn backup_of(
    spec: Value,
    allowed: &[String],
    engine: &cairn_engine::Engine,
    home: &Home,
) -> anyhow::Result<Ran> {
    let spec: BackupSpec = serde_json::from_value(spec).map_err(|e| UsageError(e.to_string()))?;
    let policy = crate::policy::load(&crate::catalog::open(home)?, &spec.policy)?;
    // A policy applied from the command line may protect any namespace.
    allow_namespace(allowed, &policy.namespace)?;
    let outcome = match crate::policy::run_policy(
        &policy,
        crate::policy::Start::Now,
        engine,
        home,
        &cairn_engine::Interrupt::default(),
    )
    .await
    {
        Err(e) if e.is::<crate::policy::Busy>() => return Ok(Ran::Later(e.to_string())),
        outcome => outcome?,
    };
    outcome.print();
    let run = outcome.run;
    Ok(Ran::Done {
        ok: run.succeeded,
        status: json!({
            "message": (!run.errors.is_empty()).then(|| run.errors.join("; ")),
            "restorePoints": run.points,
        }),
    })
}

/// Refuses `namespace` unless `allowed` is empty (any) or names it: whoever may create a
/// resource in Cairn's namespace must not reach the others through Cairn's ClusterRole.
fn allow_namespace(allowed: &[String], namespace: &str) -> anyhow::Result<()> {
    if allowed.is_empty() || allowed.iter().any(|a| a == namespace) {
        return Ok(());
    }
    Err(UsageError(format!(
        "namespace {namespace} is not one this operator acts on (--operator-allow-namespaces {}); \
         add it there, or act on it from the command line",
        allowed.join(",")
    ))
    .into())
}

/// The `origin` of the records kept from the resources of `namespace`.
fn origin_of(namespace: &str) -> String {
    format!("kube:{namespace}")
}

/// What `origin` becomes when a DR restore brings a record back: the resources it came from
/// are in the lost cluster, so no operator deletes it for their absence; the command line may
/// change it, and the operator of the same namespace takes it over when its resource appears.
const RESTORED: &str = "#restored";

/// Marks every policy and binding that resources kept as restored ([`RESTORED`]), in one
/// transaction, after a DR restore; says how many.
pub(crate) fn detach_restored(catalog: &cairn_catalog::Catalog) -> anyhow::Result<usize> {
    let mut changed = Vec::new();
    for kind in [RecordKind::Policy, RecordKind::BlueprintBinding] {
        for entry in catalog.list(kind)? {
            let Ok(mut record) = serde_json::from_str::<Value>(entry.value.get()) else {
                continue;
            };
            let Some(origin) = record.get("origin").and_then(Value::as_str) else {
                continue;
            };
            if origin.ends_with(RESTORED) {
                continue;
            }
            record["origin"] = format!("{origin}{RESTORED}").into();
            changed.push((kind, entry.key, record));
        }
    }
    catalog.write(|tx| {
        for (kind, key, record) in &changed {
            tx.put(*kind, key, record)?;
        }
        Ok(())
    })?;
    Ok(changed.len())
}

/// A resource's status: `state` (`Ready`, `Paused` or `Invalid`), `message` (why it is
/// invalid), `observedGeneration`, and for a policy `lastRun` and `nextRun`. Fields that do not
/// apply are null, which a merge patch removes.
fn status_of(found: &Found, policy: Option<&Policy>) -> Value {
    let state = match (&found.error, policy) {
        (Some(_), _) => "Invalid",
        (None, Some(p)) if p.paused => "Paused",
        (None, _) => "Ready",
    };
    let last_run = policy.and_then(|p| p.last_run.as_ref()).map(|run| {
        json!({
            "started": run.started,
            "finished": run.finished,
            "succeeded": run.succeeded,
            "restorePoints": run.points,
            "errors": run.errors,
        })
    });
    json!({
        "state": state,
        "message": found.error,
        "observedGeneration": found.generation,
        "lastRun": last_run,
        "nextRun": policy.and_then(crate::policy::next_run),
    })
}

/// The status to write on a resource, `None` when it shows that already: a pass that changed
/// nothing writes nothing (no load on the API server, no watch events every 15 seconds).
fn status_to_write(found: &Found, policy: Option<&Policy>) -> Option<Value> {
    let status = status_of(found, policy);
    // The API server keeps no nulls (a merge patch removes those keys): compared without.
    (without_nulls(&status) != found.status).then_some(status)
}

/// `value` without its null fields, at every depth: what a merge patch of it leaves.
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Whether a stored record and a new one differ only in when they were applied and what they
/// ran.
fn unchanged(stored: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(map) = v.as_object_mut() {
            map.remove("applied");
            map.remove("last_run");
        }
        v
    };
    strip(stored) == strip(new)
}

/// The document a resource's `spec` gives, with `name` and the `defaults` of fields it lacks
/// added: what `read_documents` gives of a file. Relative paths are relative to `base`; `what`
/// (`NAMESPACE/NAME`) stands for the file in messages. Its own errors do not name the
/// resource: the caller's context does.
pub(crate) fn document<T: serde::de::DeserializeOwned>(
    name: &str,
    spec: Value,
    defaults: &[(&str, &str)],
    what: &str,
    base: &Path,
) -> anyhow::Result<crate::policy::Document<T>> {
    let Value::Object(mut spec) = spec else {
        return Err(UsageError("its spec is not a mapping".to_owned()).into());
    };
    if spec.contains_key("name") {
        return Err(UsageError(
            "the spec has no `name` field: the resource's name is the name".to_owned(),
        )
        .into());
    }
    spec.insert("name".to_owned(), name.into());
    for (field, value) in defaults {
        spec.entry(*field).or_insert_with(|| (*value).into());
    }
    let value =
        serde_json::from_value(Value::Object(spec)).map_err(|e| UsageError(e.to_string()))?;
    Ok(crate::policy::Document {
        value,
        file: what.into(),
        base: base.to_owned(),
    })
}

/// Refuses to change record `name` of `kind` from the command line when a resource keeps it
/// (`origin`).
pub(crate) fn refuse_kept(kind: Kind, name: &str, origin: Option<&str>) -> Result<(), UsageError> {
    let Some(namespace) = origin
        .filter(|o| !o.ends_with(RESTORED))
        .and_then(|o| o.strip_prefix("kube:"))
    else {
        return Ok(());
    };
    let Resource(resource, plural) = kind.resource();
    Err(UsageError(format!(
        "{} {name} is kept by `cairn serve --operator` from the Kubernetes resource \
         {plural}.{GROUP}/{name} in namespace {namespace}: change or delete that resource \
         (kubectl edit {} {name} -n {namespace})",
        kind.what(),
        resource.to_lowercase()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field names a deserializer of `T` accepts, from its refusal of an unknown one.
    fn fields<T: serde::de::DeserializeOwned + std::fmt::Debug>() -> Vec<String> {
        let error = serde_json::from_value::<T>(json!({ "no such field": 1 }))
            .expect_err("an unknown field is refused")
            .to_string();
        let expected = error
            .split_once("expected ")
            .expect("the error lists the fields")
            .1;
        let expected = expected.strip_prefix("one of ").unwrap_or(expected);
        expected
            .split(", ")
            .map(|f| {
                f.trim_matches(|c: char| c == '`' || c.is_whitespace())
                    .to_owned()
            })
            .filter(|f| f != "name")
            .collect()
    }

    /// The properties of the spec of each resource definition in the install manifest.
    fn crd_properties() -> BTreeMap<String, Vec<String>> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/kubernetes/install/crds.yaml"
        );
        let text = std::fs::read_to_string(path).expect("the CRDs");
        serde_norway::Deserializer::from_str(&text)
            .map(|doc| {
                let crd: Value = serde::Deserialize::deserialize(doc).expect("a CRD");
                let kind = crd["spec"]["names"]["kind"]
                    .as_str()
                    .expect("a kind")
                    .to_owned();
                let version = &crd["spec"]["versions"][0];
                assert_eq!(version["name"], VERSION, "{kind}");
                assert_eq!(crd["spec"]["group"], GROUP, "{kind}");
                assert!(version["subresources"]["status"].is_object(), "{kind}");
                let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
                let properties = spec["properties"]
                    .as_object()
                    .expect("spec properties")
                    .keys()
                    .cloned()
                    .collect();
                (kind, properties)
            })
            .collect()
    }

    #[test]
    fn the_resource_definitions_have_the_fields_of_the_files() {
        let crds = crd_properties();
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        assert_eq!(
            sorted(crds["Policy"].clone()),
            sorted(fields::<crate::policy::PolicyFile>())
        );
        assert_eq!(
            sorted(crds["BlueprintBinding"].clone()),
            sorted(fields::<crate::binding::BindingFile>())
        );
        assert_eq!(
            sorted(crds["Restore"].clone()),
            sorted(fields::<crate::policy::RestoreSpec>())
        );
        assert_eq!(
            sorted(crds["Backup"].clone()),
            sorted(fields::<BackupSpec>())
        );
        assert_eq!(crds.len(), 4);
    }

    #[test]
    fn a_spec_is_a_document_with_the_resource_name() {
        let base = Path::new("/var/lib/cairn");
        let doc: crate::policy::Document<Value> = document(
            "nightly",
            json!({ "frequency": "@daily" }),
            &[("target", "kube")],
            "cairn/nightly",
            base,
        )
        .expect("a document");
        assert_eq!(
            doc.value,
            json!({ "name": "nightly", "frequency": "@daily", "target": "kube" })
        );
        for (spec, needle) in [
            (json!(["a"]), "not a mapping"),
            (
                json!({ "name": "other" }),
                "the resource's name is the name",
            ),
        ] {
            let error = document::<Value>("nightly", spec, &[], "cairn/nightly", base)
                .err()
                .expect("refused")
                .to_string();
            assert!(error.contains(needle), "{error}");
        }
    }

    #[test]
    fn the_status_is_written_only_when_it_changed() {
        let found = Found {
            uid: None,
            generation: Some(2),
            status: Value::Null,
            error: None,
        };
        let status = status_of(&found, None);
        assert_eq!(
            without_nulls(&status),
            json!({ "state": "Ready", "observedGeneration": 2 })
        );
        // The status as the resource shows it once written: nothing to write again.
        let written = Found {
            status: without_nulls(&status),
            ..found.clone()
        };
        assert_eq!(status_to_write(&written, None), None);
        assert!(status_to_write(&found, None).is_some());
        // A new generation of the resource, or it turned invalid: written again.
        let applied = Found {
            generation: Some(3),
            ..written.clone()
        };
        assert!(status_to_write(&applied, None).is_some_and(|s| s["observedGeneration"] == 3));
        let invalid = Found {
            error: Some("bad".to_owned()),
            ..written
        };
        assert_eq!(status_of(&invalid, None)["state"], "Invalid");
        assert!(status_to_write(&invalid, None).is_some());
    }
}
