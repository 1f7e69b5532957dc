//! Typed records for the kinds the runtime writes now. The other kinds are stored as JSON
//! through [`Catalog::put`] until their controllers bring their own types.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::{Catalog, Kind, Transaction};

/// `impl Record` for a type stored as one kind, keyed by one of its fields.
macro_rules! record {
    ($type:ty, $kind:ident, $key:ident) => {
        impl Record for $type {
            const KINDS: &'static [Kind] = &[Kind::$kind];

            fn kind(&self) -> Kind {
                Kind::$kind
            }

            fn key(&self) -> &str {
                &self.$key
            }
        }
    };
}

/// A record type with its kind and key.
pub trait Record: Serialize + DeserializeOwned {
    /// The kinds values of this type are stored as (restore points: local or exported).
    const KINDS: &'static [Kind];

    /// The kind this value is stored as.
    fn kind(&self) -> Kind;

    /// Its key: a name or an id, unique across [`KINDS`](Self::KINDS).
    fn key(&self) -> &str;
}

/// Where an action ran: a namespace and, when the run names one, a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The namespace.
    pub namespace: String,
    /// The workload (`kind/name`, e.g. `statefulset/db`), when the run names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
}

/// A named record of small key/values an action produced (the WIT `artifact`): where an export
/// went, a snapshot id, an LSN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Its name.
    pub name: String,
    /// Its key/values.
    #[serde(default)]
    pub values: BTreeMap<String, String>,
}

/// Where a restore point's data is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Location {
    /// In the cluster (volume snapshots): stored as [`Kind::LocalRestorePoint`].
    Local,
    /// In an export repository: stored as [`Kind::ExportedRestorePoint`].
    Exported {
        /// The repository URL.
        repository: String,
        /// The location profile it was exported through, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        profile: Option<String>,
    },
}

/// A restore point: what a `backup` action produced and a `restore` consumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePoint {
    /// Its id (unique across local and exported restore points).
    pub id: String,
    /// Where its data is; decides its kind.
    pub location: Location,
    /// The blueprint's name.
    pub blueprint: String,
    /// The blueprint component's digest, so a restore runs the same code or knowingly not.
    pub blueprint_digest: String,
    /// The action that produced it (usually `backup`).
    pub action: String,
    /// The id of the run that produced it.
    pub action_id: String,
    /// What was backed up.
    pub target: Target,
    /// When its workload's backup started (what the application held then; retention counts it
    /// in that day), not when its policy's run did: a run backs up its workloads a few at a
    /// time. Points recorded before 2026-12-07 hold when they were recorded, their run's end.
    pub created: Timestamp,
    /// The artifacts the run produced.
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
    /// The repository snapshot ids it references (retention must keep them).
    #[serde(default)]
    pub snapshots: Vec<String>,
    /// The run's own values (the main phase's and the posthook's: a stop LSN, a backup
    /// label), in the order the run returned them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<(String, String)>,
    /// The parameters the run was given (its policy's or binding's, then the caller's), so a
    /// restore through its policy can tell which of them changed since. `None` in restore
    /// points recorded before they were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Vec<(String, String)>>,
    /// The policy that produced it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Why its removal stopped part-way (a delete action that failed after some of its
    /// exports were gone): it is no longer restored, only removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partly_deleted: Option<String>,
}

impl Record for RestorePoint {
    const KINDS: &'static [Kind] = &[Kind::LocalRestorePoint, Kind::ExportedRestorePoint];

    fn kind(&self) -> Kind {
        match self.location {
            Location::Local => Kind::LocalRestorePoint,
            Location::Exported { .. } => Kind::ExportedRestorePoint,
        }
    }

    fn key(&self) -> &str {
        &self.id
    }
}

/// The state of an action or one of its phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionStatus {
    /// Accepted, not started.
    Pending,
    /// Running.
    Running,
    /// Finished without error.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Stopped before it finished.
    Cancelled,
}

/// One phase of an action (prehook, main, posthook) and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phase {
    /// The lifecycle action it ran (`backupPrehook`, `backup`, ...).
    pub name: String,
    /// How it went.
    pub status: ActionStatus,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Timestamp>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Timestamp>,
    /// Its error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A run of a blueprint action: the action history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// The run's id.
    pub id: String,
    /// The blueprint's name.
    pub blueprint: String,
    /// The action (`backup`, `restore`, a custom name).
    pub action: String,
    /// Where it ran.
    pub target: Target,
    /// How it is going or went.
    pub status: ActionStatus,
    /// Its phases, in the order they ran.
    #[serde(default)]
    pub phases: Vec<Phase>,
    /// When it started.
    pub started: Timestamp,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Timestamp>,
    /// Its error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The restore point it produced or used, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_point: Option<String>,
}

record!(Action, Action, id);

/// A location profile: a repository and how to reach it (`cairn profile add`), named by
/// `--profile` and by a policy's `export: {profile: NAME}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Its name.
    pub name: String,
    /// The repository URL (`file:///...`, `s3://...`, ...).
    pub repository: String,
    /// Backend options (region, endpoint, ...). Keep secrets out: name their source
    /// (`env:VAR`, `file:PATH`) instead, read when the profile is used.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Where the repository's passphrase comes from: `env:VAR` or `file:PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<String>,
    /// A key file of the repository, instead of a passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// The average rate, bytes a second, at which it is written; 0 for no limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub limit_upload: u64,
    /// The average rate, bytes a second, at which it is read; 0 for no limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub limit_download: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

record!(Profile, Profile, name);

/// A registered blueprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blueprint {
    /// Its name (the key: one registered version per name).
    pub name: String,
    /// Its version (semver, from `describe`).
    pub version: String,
    /// The component's digest.
    pub digest: String,
    /// Where the `.wasm` component is (a path or URL).
    pub wasm: String,
    /// The capabilities the operator lets policies grant it; `None` for all it declares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    /// Whether an operator registered this build by hand (`cairn blueprint add` without
    /// `--keep-newer`, such as a hotfix): another build of the same version added with
    /// `--keep-newer` (the bundled blueprints, added at every start) leaves it in place, and
    /// replaces one that is not (the previous image's bundled build). Records written before
    /// the field read as not by hand, as `--keep-newer` treated every build before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_hand: bool,
}

record!(Blueprint, Blueprint, name);

/// How many restore points a policy keeps per period (GFS), as everywhere in Cairn.
pub use cairn_retention::Retention;

/// A backup policy: which workloads a blueprint backs up, how often, where the exports go and
/// what is kept. `cairn policy apply` writes it from YAML; `cairn policy run` and `cairn serve`
/// run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Its name.
    pub name: String,
    /// The registered blueprint it runs (`cairn blueprint add`), by name; when absent, each
    /// workload's blueprint, parameters, grants and secrets come from the first blueprint
    /// binding (by name) that selects it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blueprint: Option<String>,
    /// Where the workloads run: `local:INVENTORY.yaml`, `kube` or `kube:CONTEXT`.
    pub target: String,
    /// The namespace of the workloads.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The workloads it protects: names, or patterns with `*` (every workload when empty, if a
    /// selector is given). Each matching workload is backed up by its own run and keeps its own
    /// restore points.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<String>,
    /// Labels a workload must all have to be protected (as a Kubernetes `matchLabels`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// How often it runs: `@hourly`, `@daily`, `@weekly`, an interval like `6h`, or a cron
    /// expression like `0 2 * * *` (in the machine's time zone, or `CRON_TZ=ZONE 0 2 * * *`).
    pub frequency: String,
    /// What it keeps of its restore points, per workload.
    pub retention: Retention,
    /// The blueprint's parameters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// The capabilities granted to the blueprint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<String>,
    /// Secrets the blueprint may read: name to source (`env:VAR` or `file:PATH`; never the
    /// value, since the catalog travels in DR exports).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// The deadline of each run's main phase, e.g. `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// On a Kubernetes target, the VolumeSnapshotClass of its volume snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_class: Option<String>,
    /// Where its exports go; the instance's default repository when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<PolicyExport>,
    /// How often its repository is pruned once retention has removed restore points, freeing
    /// the data only they held: `@hourly`, `@daily`, `@weekly`, an interval, or `never` (then
    /// `cairn repo prune` does it); `@daily` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<String>,
    /// The preset its frequency, retention, export and prune come from, by name; they are
    /// rewritten when the preset is applied again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// How many of its workloads a run backs up at once (1 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Whether it is paused (`cairn serve` skips it; `cairn policy run` still runs it).
    #[serde(default)]
    pub paused: bool,
    /// The Kubernetes resource namespace it is kept from (`kube:NAMESPACE`) by `cairn serve
    /// --operator`, which replaces and deletes it as the resource changes; absent when it was
    /// applied with the command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// When it was applied (scheduling starts from here).
    pub applied: Timestamp,
    /// How its last run went; kept when the policy is applied again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<PolicyRun>,
}

fn default_namespace() -> String {
    "default".to_owned()
}

/// Where a policy's exports go: the fields of `cairn run`'s repository flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyExport {
    /// The repository URL (or a path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// A repository profile file (`repo:`, `options:`), which keeps credentials out of the
    /// catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_file: Option<String>,
    /// A file holding the repository's passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase_file: Option<String>,
    /// A key file of the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// A location profile (`cairn profile add`), by name: where the repository is and its key,
    /// kept once for every policy that exports there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// A policy preset: a backup service level (frequency, retention, where exports go, how often
/// the repository is pruned) that policies name with `preset:` instead of each saying it
/// (`cairn preset apply`). Applying a preset again updates every policy that names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPreset {
    /// Its name.
    pub name: String,
    /// How often its policies run (as [`Policy::frequency`]).
    pub frequency: String,
    /// What its policies keep of each workload's restore points.
    pub retention: Retention,
    /// Where its policies' exports go; the instance's default repository when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<PolicyExport>,
    /// How often their repository is pruned (as [`Policy::prune`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<String>,
    /// When it was applied.
    pub applied: Timestamp,
}

record!(PolicyPreset, PolicyPreset, name);

/// The outcome of a policy's last run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRun {
    /// When it started.
    pub started: Timestamp,
    /// When it finished.
    pub finished: Timestamp,
    /// Whether every workload's backup succeeded.
    pub succeeded: bool,
    /// The restore points it made.
    #[serde(default)]
    pub points: Vec<String>,
    /// What went wrong, one line per failed workload or step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

record!(Policy, Policy, name);

/// How to protect a kind of workload: the blueprint, with its parameters, grants and secrets,
/// for the workloads it selects. A policy that names no blueprint takes each workload's from
/// the first binding (by name) that selects it, so one policy can protect a namespace of
/// different applications. `cairn binding apply` writes it from YAML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlueprintBinding {
    /// Its name (bindings are tried in name order).
    pub name: String,
    /// The registered blueprint, by name.
    pub blueprint: String,
    /// The namespaces it applies in; every namespace when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Workload names or patterns with `*`; any name when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<String>,
    /// Labels a workload must all have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// The blueprint's parameters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// The capabilities granted to the blueprint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<String>,
    /// Secrets the blueprint may read: name to source (`env:VAR` or `file:PATH`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// The Kubernetes resource namespace it is kept from (`kube:NAMESPACE`) by `cairn serve
    /// --operator`, which replaces and deletes it as the resource changes; absent when it was
    /// applied with the command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// When it was applied.
    pub applied: Timestamp,
}

record!(BlueprintBinding, BlueprintBinding, name);

impl Transaction<'_> {
    /// Writes a typed record under its kind and key, and removes a record of the same key from
    /// the type's other kinds (a restore point that moves from local to exported), atomically.
    pub fn save<R: Record>(&mut self, record: &R) -> Result<u64> {
        let kind = record.kind();
        let key = record.key();
        for other in R::KINDS.iter().filter(|k| **k != kind) {
            self.delete(*other, key)?;
        }
        self.put(kind, key, record)
    }
}

impl Catalog {
    /// Writes a typed record; see [`Transaction::save`].
    pub fn save<R: Record>(&self, record: &R) -> Result<u64> {
        self.write(|tx| tx.save(record))
    }

    /// Reads a typed record by key, whichever of its kinds it is stored as.
    pub fn load<R: Record>(&self, key: &str) -> Result<Option<R>> {
        for kind in R::KINDS {
            if let Some(record) = self.get(*kind, key)? {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    /// Every record of a type, kind by kind, each in key order.
    pub fn load_all<R: Record>(&self) -> Result<Vec<R>> {
        let mut all = Vec::new();
        for kind in R::KINDS {
            all.extend(self.list_as::<R>(*kind)?);
        }
        Ok(all)
    }

    /// Records a restore point (local or exported, by its [`Location`]).
    pub fn record_restore_point(&self, point: &RestorePoint) -> Result<u64> {
        self.save(point)
    }

    /// A restore point by id.
    pub fn restore_point(&self, id: &str) -> Result<Option<RestorePoint>> {
        self.load(id)
    }

    /// Every restore point, local and exported, oldest first (ties by id).
    pub fn restore_points(&self) -> Result<Vec<RestorePoint>> {
        let mut all = self.load_all::<RestorePoint>()?;
        all.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        Ok(all)
    }

    /// Records an action (a new run, or an update of its status and phases).
    pub fn record_action(&self, action: &Action) -> Result<u64> {
        self.save(action)
    }

    /// An action by id.
    pub fn action(&self, id: &str) -> Result<Option<Action>> {
        self.load(id)
    }

    /// Every action, oldest first (ties by id).
    pub fn actions(&self) -> Result<Vec<Action>> {
        let mut all = self.load_all::<Action>()?;
        all.sort_by(|a, b| a.started.cmp(&b.started).then_with(|| a.id.cmp(&b.id)));
        Ok(all)
    }

    /// Records a location profile.
    pub fn record_profile(&self, profile: &Profile) -> Result<u64> {
        self.save(profile)
    }

    /// A location profile by name.
    pub fn profile(&self, name: &str) -> Result<Option<Profile>> {
        self.load(name)
    }

    /// Every location profile, by name.
    pub fn profiles(&self) -> Result<Vec<Profile>> {
        self.load_all()
    }

    /// Records a blueprint.
    pub fn record_blueprint(&self, blueprint: &Blueprint) -> Result<u64> {
        self.save(blueprint)
    }

    /// A blueprint by name.
    pub fn blueprint(&self, name: &str) -> Result<Option<Blueprint>> {
        self.load(name)
    }

    /// Every blueprint, by name.
    pub fn blueprints(&self) -> Result<Vec<Blueprint>> {
        self.load_all()
    }

    /// Records a policy.
    pub fn record_policy(&self, policy: &Policy) -> Result<u64> {
        self.save(policy)
    }

    /// Records a policy applied anew, keeping the last run of the one it replaces; the two are
    /// read and written in one transaction, so a run recorded meanwhile is not lost.
    pub fn apply_policy(&self, policy: &mut Policy) -> Result<u64> {
        self.write(|tx| {
            // A stored record that no longer decodes is replaced: applying the file again is
            // how it is mended.
            policy.last_run = tx
                .get::<Policy>(Kind::Policy, &policy.name)
                .ok()
                .flatten()
                .and_then(|old| old.last_run);
            tx.save(policy)
        })
    }

    /// Changes the policy `name` as it is now with `f`, read and written in one transaction
    /// (a run recorded or an apply made meanwhile is kept); `None` when there is no such
    /// policy.
    pub fn update_policy(&self, name: &str, f: impl FnOnce(&mut Policy)) -> Result<Option<Policy>> {
        self.write(|tx| {
            let Some(mut policy) = tx.get::<Policy>(Kind::Policy, name)? else {
                return Ok(None);
            };
            f(&mut policy);
            tx.save(&policy)?;
            Ok(Some(policy))
        })
    }

    /// A policy by name.
    pub fn policy(&self, name: &str) -> Result<Option<Policy>> {
        self.load(name)
    }

    /// Every policy, by name.
    pub fn policies(&self) -> Result<Vec<Policy>> {
        self.load_all()
    }
}
