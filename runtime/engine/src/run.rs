//! Running an action: parameters, the lifecycle of phases, and the report.
//!
//! `backup` on a blueprint that describes `backupPrehook` and `backupPosthook` runs
//! prehook → backup → posthook (the same for `restore`); any other action runs alone. Each
//! phase is a fresh store and sees the outputs of the phases before it. If the prehook fails,
//! the main phase is skipped; the posthook runs whenever it exists — after a failed, trapped
//! or timed-out prehook or main phase too — with its own, shorter deadline, and sees the
//! failure in `inputs.failure`, so an application is never left quiesced. A phase that
//! stopped is still among the posthook's earlier phases, with the values it checkpointed
//! (`log.checkpoint`) before it stopped.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_cluster::Cluster;
use tracing::Instrument;

use crate::audit::AuditLog;
use crate::bindings::{WitError, guest};
use crate::blueprint::Blueprint;
use crate::capability::Capability;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::events::{Event, EventKind, EventSink, LogLevel};
use crate::exports::{Artifact, Exports, ReferenceKeys, References};
use crate::host::describe_error;
use crate::host::session::Sessions;
use crate::limits::{Limits, MAX_LOG_LINE, human_bytes, human_duration};
use crate::params;
use crate::state::{ActionCtx, Blanked as _, HostState};

/// How long past a phase's deadline the engine waits for a guest stuck in a host call before
/// abandoning the phase (host calls are bounded by the deadline themselves; this is the
/// backstop).
const ABANDON_GRACE: Duration = Duration::from_secs(10);

/// What the host offers a run: the cluster, where exports go, the audit log, and where events
/// go. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HostContext {
    /// The cluster the action targets.
    pub cluster: Arc<dyn Cluster>,
    /// Where export streams go.
    pub exports: Arc<dyn Exports>,
    /// The audit log.
    pub audit: Arc<AuditLog>,
    /// Where logs and progress go.
    pub events: EventSink,
    /// The runtime's catalog, for its DR blueprint (capability `catalog`); `None` elsewhere.
    pub catalog: Option<Arc<dyn crate::catalog::CatalogAccess>>,
}

/// What to run, where, and with what.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// The action (`backup`, `restore`, a custom name).
    pub action: String,
    /// The target namespace.
    pub namespace: String,
    /// The target workload, if any.
    pub workload: Option<String>,
    /// `--param k=v` pairs, checked against the blueprint's declared parameters.
    pub params: Vec<(String, String)>,
    /// The capabilities the operator grants.
    pub grants: BTreeSet<Capability>,
    /// Secret values the blueprint may read (capability `secrets`).
    pub secrets: BTreeMap<String, String>,
    /// For `restore` and `delete`: the restore point's artifacts.
    pub artifacts: Vec<Artifact>,
    /// For `restore` and `delete`: the restore point's own values (its backup's outputs).
    pub point_values: Vec<(String, String)>,
    /// The run's limits.
    pub limits: Limits,
    /// Stops the run early when triggered (Ctrl-C, SIGTERM); the posthook still runs.
    pub interrupt: Interrupt,
}

/// Stops a run early, as Ctrl-C does: the prehook or main phase then running is stopped (its
/// host calls dropped: a local command killed, a Kubernetes exec closed), a main phase not yet
/// started is skipped, and the posthook still runs, with its own deadline, so an application
/// is never left quiesced. Cheap to clone; every clone triggers the same run.
#[derive(Debug, Clone, Default)]
pub struct Interrupt(Arc<InterruptState>);

#[derive(Debug, Default)]
struct InterruptState {
    set: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Interrupt {
    /// Stops the run (or the next one given this interrupt) at once.
    pub fn trigger(&self) {
        self.0.set.store(true, std::sync::atomic::Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    /// Whether it was triggered.
    pub fn is_triggered(&self) -> bool {
        self.0.set.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Returns once it is triggered.
    async fn triggered(&self) {
        let notified = self.0.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_triggered() {
            return;
        }
        notified.await;
    }
}

/// What a phase produced.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct Outputs {
    /// Artifacts (where exports went, snapshot ids).
    pub artifacts: Vec<Artifact>,
    /// Small key/values.
    pub values: Vec<(String, String)>,
}

impl Outputs {
    /// The value of `key`, if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// How a phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PhaseStatus {
    /// It returned outputs.
    Ok,
    /// It returned an error, or outputs the host refused.
    Failed,
    /// It trapped (panic, stack overflow, memory cap).
    Trapped,
    /// It ran past its deadline and was stopped.
    TimedOut,
    /// It did not run because an earlier phase failed.
    Skipped,
    /// The run was interrupted ([`Interrupt`]) while it ran, and it was stopped.
    Interrupted,
}

/// One phase of a run.
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct PhaseReport {
    /// The phase's action name.
    pub action: String,
    /// How it ended.
    pub status: PhaseStatus,
    /// How long it ran, in milliseconds.
    pub duration_ms: u64,
    /// What it produced.
    pub outputs: Outputs,
    /// Why it failed, in one line.
    pub error: Option<String>,
    /// Whether its log hit the cap.
    pub log_truncated: bool,
}

/// The result of a run.
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct RunReport {
    /// The run's id.
    pub action_id: String,
    /// Whether every phase succeeded.
    pub ok: bool,
    /// Every phase, in order.
    pub phases: Vec<PhaseReport>,
    /// The main phase's outputs, and the posthook's under their own names (the restore
    /// point's outputs).
    pub outputs: Outputs,
    /// Why the run failed, in one line.
    pub error: Option<String>,
    /// An [`Interrupt`] stopped the wait for its volume snapshots, after its phases.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stopped_waiting: bool,
}

impl RunReport {
    /// Whether an [`Interrupt`] stopped a phase of it, or the wait after them.
    pub fn interrupted(&self) -> bool {
        self.stopped_waiting
            || self
                .phases
                .iter()
                .any(|p| p.status == PhaseStatus::Interrupted)
    }
}

/// What a phase returned, flat, over the values it checkpointed (a returned value replaces
/// the checkpoint of the same name). Refused, in one line, when an artifact has a value named
/// like a key of its export reference.
fn to_outputs(o: guest::Outputs, checkpoints: &[(String, String)]) -> Result<Outputs, String> {
    // Names are shown and looked up by (a restore's `--from` names an artifact): never empty,
    // never holding what a terminal obeys (the SDK's fake host refuses them too).
    let named = |what: &str, name: &str| match cairn_contract::output_name_problem(what, name) {
        Some(problem) => Err(problem),
        None => Ok(()),
    };
    // Once each: a restore looks an artifact and a value up by name, and would find either.
    let once = |what: &str, names: Vec<&String>| {
        let mut seen = HashSet::new();
        match names.into_iter().find(|n| !seen.insert(*n)) {
            Some(n) => Err(format!(
                "the blueprint returned {what} `{n}` twice: give each its own name"
            )),
            None => Ok(()),
        }
    };
    for a in &o.artifacts {
        named("artifact", &a.name)?;
        for (k, _) in &a.values {
            named("artifact value", k)?;
        }
        once(
            &format!("artifact `{}`'s value", a.name),
            a.values.iter().map(|(k, _)| k).collect(),
        )?;
    }
    once("artifact", o.artifacts.iter().map(|a| &a.name).collect())?;
    for (k, _) in &o.values {
        named("output value", k)?;
    }
    once("output value", o.values.iter().map(|(k, _)| k).collect())?;
    let artifacts = o
        .artifacts
        .into_iter()
        .map(Artifact::checked_from_wit)
        .collect::<Result<Vec<_>, _>>()?;
    let mut values = checkpoints.to_vec();
    // Where each key is, so that many values cost linear time, not quadratic.
    let mut at: HashMap<String, usize> = HashMap::new();
    for (i, (k, _)) in values.iter().enumerate() {
        at.entry(k.clone()).or_insert(i);
    }
    for (key, value) in o.values {
        match at.get(&key) {
            Some(&i) => values[i].1 = value,
            None => {
                at.insert(key.clone(), values.len());
                values.push((key, value));
            }
        }
    }
    Ok(Outputs { artifacts, values })
}

/// `outputs` when every export reference among their artifacts is one this run was given or
/// finished: a reference is what a restore point records, and what later runs may read and
/// delete whatever its tags say, so a blueprint never names another export (another
/// namespace's, a `cairn repo backup` snapshot) as its own. Nor may an artifact name an
/// export or a volume snapshot (by a value that is its id) the run deleted: the restore
/// point would look complete and restore nothing.
fn vouched_only(
    outputs: Outputs,
    references: &References,
    deleted_snapshots: &[String],
    keys: ReferenceKeys,
) -> Result<Outputs, String> {
    for a in &outputs.artifacts {
        let reference = a.to_wit(keys).reference;
        if !reference.is_empty() && references.deleted(&reference) {
            return Err(format!(
                "artifact `{}` names an export this run deleted (data.delete), so a restore point \
                 recording it would name data that is gone: return only the exports the run keeps",
                a.name
            ));
        }
        if !reference.is_empty() && !references.vouched(&reference) {
            return Err(format!(
                "artifact `{}` names an export this run neither was given nor finished: return \
                 the reference finish() gave, unchanged",
                a.name
            ));
        }
        // A Kubernetes snapshot's id is `namespace/name`; a blueprint may keep either.
        let deleted = |v: &str| {
            deleted_snapshots
                .iter()
                .find(|id| *id == v || id.rsplit('/').next() == Some(v))
        };
        if let Some((key, id)) = a
            .values
            .iter()
            .find_map(|(k, v)| deleted(v).map(|id| (k, id)))
        {
            return Err(format!(
                "artifact `{}` names in `{key}` volume snapshot {id}, which this run deleted \
                 (volumes.delete), so a restore point recording it would name data that is gone: \
                 return only the snapshots the run keeps",
                a.name
            ));
        }
    }
    Ok(outputs)
}

fn to_guest(o: &Outputs, keys: ReferenceKeys) -> guest::Outputs {
    guest::Outputs {
        artifacts: o.artifacts.iter().map(|a| a.to_wit(keys)).collect(),
        values: o.values.clone(),
    }
}

/// What outputs cost against their limit: their text, and [`ENTRY_COST`] bytes an entry, so
/// that millions of empty ones (a host allocation each, and a catalog record) are over it too.
fn outputs_size(o: &Outputs) -> usize {
    let pairs = |v: &[(String, String)]| {
        v.iter()
            .map(|(k, v)| ENTRY_COST + k.len() + v.len())
            .sum::<usize>()
    };
    pairs(&o.values)
        + o.artifacts
            .iter()
            .map(|a| ENTRY_COST + a.name.len() + pairs(&a.values))
            .sum::<usize>()
}

/// What an output entry (an artifact, a value) costs against the outputs' limit besides its
/// text: about what the host holds for it.
pub(crate) const ENTRY_COST: usize = 48;

/// `outputs` when none of their names and values holds a secret of the run: outputs are kept
/// in the catalog, which travels in DR exports, where a policy keeps only where a secret comes
/// from. An export's reference, which the host wrote (and [`vouched_only`] checked), is not
/// looked at.
fn secret_free(
    outputs: Outputs,
    secrets: &crate::state::Secrets,
    keys: ReferenceKeys,
) -> Result<Outputs, String> {
    let values = outputs
        .artifacts
        .iter()
        .flat_map(|a| {
            let reference = a.to_wit(keys).reference;
            a.values
                .iter()
                .filter(move |(k, v)| !reference.iter().any(|(rk, rv)| rk == k && rv == v))
                .map(move |(k, v)| (format!("artifact `{}` value `{k}`", a.name), k, v))
                .chain(std::iter::once((
                    format!("artifact `{}`", a.name),
                    &a.name,
                    &a.name,
                )))
        })
        .chain(
            outputs
                .values
                .iter()
                .map(|(k, v)| (format!("value `{k}`"), k, v)),
        );
    for (what, key, value) in values {
        if let Some(name) = secrets.held_by(value).or_else(|| secrets.held_by(key)) {
            return Err(format!(
                "the blueprint's {what} holds secret `{name}`: outputs are kept in the catalog, \
                 which travels in DR exports, so a secret never goes into them; the restore \
                 reads the secret again"
            ));
        }
    }
    Ok(outputs)
}

/// A posthook artifact named like one of the main phase's, or a value the main phase set to
/// something else, is refused in one line: the restore point could not say which one holds.
/// The run's outputs: the main phase's, and the posthook's added under their own names (the
/// posthook ends a backup mode and reports where it ended: that belongs to the restore point).
fn merge(main: &PhaseReport, post: &PhaseReport) -> Result<Outputs, String> {
    let mut merged = main.outputs.clone();
    let names: HashSet<String> = merged.artifacts.iter().map(|a| a.name.clone()).collect();
    for artifact in &post.outputs.artifacts {
        if names.contains(&artifact.name) {
            return Err(format!(
                "it returned the artifact `{}`, which {} already returned; the restore point keeps both \
                 phases' outputs, so give the posthook's another name",
                artifact.name, main.action
            ));
        }
        merged.artifacts.push(artifact.clone());
    }
    let main_values: HashMap<&str, &str> = main
        .outputs
        .values
        .iter()
        .rev()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for (key, value) in &post.outputs.values {
        match main_values.get(key.as_str()) {
            None => merged.values.push((key.clone(), value.clone())),
            Some(same) if *same == value => {}
            Some(other) => {
                return Err(format!(
                    "it set the value `{key}` to {value:?}, which {} set to {other:?}; the restore point keeps \
                     both phases' values, so give the posthook's another name",
                    main.action
                ));
            }
        }
    }
    Ok(merged)
}

/// The lifecycle phases around `action`, when the blueprint describes them.
fn hooks(action: &str) -> Option<(&'static str, &'static str)> {
    match action {
        "backup" => Some(("backupPrehook", "backupPosthook")),
        "restore" => Some(("restorePrehook", "restorePosthook")),
        _ => None,
    }
}

/// One line saying why a guest stopped, naming the cause.
pub(crate) fn trap_reason(err: &wasmtime::Error, state: &HostState) -> String {
    if state.deadline_hit {
        return format!(
            "the blueprint ran past its deadline of {} and was stopped (`cairn run --timeout`, a \
             policy's `timeout:`, sets it)",
            human_duration(state.action.deadline)
        );
    }
    if let Some(asked) = state.limiter.rejected {
        return format!(
            "the blueprint exceeded the memory limit of {} (it tried to grow its memory to {}); \
             `cairn run --memory` raises it",
            human_bytes(state.action.limits.memory as u64),
            human_bytes(asked as u64)
        );
    }
    match err.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::StackOverflow) => {
            "the blueprint overflowed its stack (unbounded recursion?) and was stopped".to_string()
        }
        Some(wasmtime::Trap::MemoryOutOfBounds) => {
            // A Rust or C guest keeps its stack in linear memory: running off its bottom is an
            // out-of-bounds access, the usual face of unbounded recursion.
            "the blueprint accessed memory out of bounds, most likely because it overflowed its stack \
             (unbounded recursion?), and was stopped"
                .to_string()
        }
        Some(wasmtime::Trap::UnreachableCodeReached) => match state.log.panic_message() {
            Some(message) => format!("the blueprint panicked: {message}"),
            None => "the blueprint trapped: it reached an `unreachable` instruction (an abort or a panic)".to_string(),
        },
        Some(trap) => format!("the blueprint trapped: {trap}"),
        None => {
            let text = format!("{err}");
            format!("the blueprint trapped: {}", text.lines().next().unwrap_or("unknown error"))
        }
    }
}

/// A blueprint's own error that comes from reaching for what the sandbox does not give (a
/// file, a socket), with what to do instead: WASI answers with errno values its author may not
/// recognise (`No such file or directory (os error 44)`).
fn with_sandbox_hint(message: String) -> String {
    const SANDBOX: [&str; 4] = [
        "(os error 44)",
        "(os error 76)",
        "pre-opened file descriptor",
        "operation not supported on this platform",
    ];
    if SANDBOX.iter().any(|s| message.contains(s)) {
        format!(
            "{message} (a blueprint has no filesystem and no network: it reaches its workload \
             through exec and moves data through exports)"
        )
    } else {
        message
    }
}

/// How a phase ended, with what the next phases need.
struct Ran {
    report: PhaseReport,
    failure: Option<WitError>,
}

/// Refuses a restore whose point names an export the store cannot give (a point deleted, an
/// export forgotten by hand, another repository's) before its prehook quiesces anything.
async fn exports_present(host: &HostContext, artifacts: &[Artifact]) -> Result<()> {
    let kind = host.exports.reference_keys().kind;
    for artifact in artifacts.iter().filter(|a| a.get("kind") == Some(kind)) {
        if let Err(e) = host.exports.tags(artifact).await {
            return Err(Error::BadArtifact {
                name: artifact.name.clone(),
                reason: format!(
                    "the restore point's export cannot be read, so nothing ran: {e} (a point \
                     whose exports were deleted cannot be restored: pick another)"
                ),
            });
        }
    }
    Ok(())
}

pub(crate) async fn run(
    engine: &Engine,
    blueprint: &Blueprint,
    host: &HostContext,
    request: RunRequest,
) -> Result<RunReport> {
    request.limits.validate()?;
    let description = blueprint.description();
    if !description.has_action(&request.action) {
        return Err(Error::UnknownAction {
            action: request.action.clone(),
            available: description.actions.iter().map(|a| a.name.clone()).collect(),
        });
    }
    let params = params::validate(&description.parameters, &request.params)?;
    if matches!(request.action.as_str(), "restore" | "restorePrehook") {
        exports_present(host, &request.artifacts).await?;
    }
    let action_id = uuid::Uuid::new_v4().simple().to_string();
    let span = tracing::info_span!(
        "action",
        action_id = %action_id,
        blueprint = %blueprint.digest(),
        action = %request.action,
        namespace = %request.namespace,
        workload = request.workload.as_deref().unwrap_or(""),
    );
    async move {
        let main = request.action.clone();
        let (pre, post) = match hooks(&main) {
            Some((pre, post)) => (
                description.has_action(pre).then_some(pre),
                description.has_action(post).then_some(post),
            ),
            None => (None, None),
        };
        let declared: BTreeSet<Capability> = description.capabilities.iter().copied().collect();
        // A secret a text parameter holds (a password that is also the user's name) is kept
        // in the catalog with the parameter anyway: not hidden. Nor is one the blueprint's
        // name, the namespace or the workload hold (a password `redis`), which the host
        // writes into every export's tags.
        let public: Vec<String> = params
            .iter()
            .filter_map(|(_, v)| match v {
                crate::bindings::types::ParamValue::Text(t) => Some(t.clone()),
                _ => None,
            })
            .chain([description.name.clone(), request.namespace.clone()])
            .chain(request.workload.clone())
            .collect();
        let hidden = Arc::new(crate::state::Secrets::of(&request.secrets, &public));
        let sessions = Arc::new(Sessions::default());
        let taken: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let snapshots_taken: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let deleted_snapshots: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let exports_opened: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let references = Arc::new(References::of(
            &request.artifacts,
            host.exports.reference_keys(),
        ));
        let phase = |name: &str, deadline: Duration| {
            Arc::new(ActionCtx {
                action_id: action_id.clone(),
                phase: name.to_string(),
                blueprint: blueprint.digest().to_string(),
                blueprint_name: description.name.clone(),
                namespace: request.namespace.clone(),
                workload: request.workload.clone(),
                // A capability granted but not declared stays unusable: what a blueprint can
                // do is what `describe()` says, whatever a run grants.
                grants: request.grants.intersection(&declared).copied().collect(),
                declared: declared.clone(),
                secrets: request.secrets.clone(),
                hidden: hidden.clone(),
                limits: request.limits.clone(),
                deadline,
                host: Some(host.clone()),
                sessions: sessions.clone(),
                references: references.clone(),
                taken: taken.clone(),
                snapshots_taken: snapshots_taken.clone(),
                deleted_snapshots: deleted_snapshots.clone(),
                exports_opened: exports_opened.clone(),
            })
        };
        let keys = host.exports.reference_keys();
        let inputs = |failure: Option<WitError>, phases: &[PhaseReport]| guest::Inputs {
            action_id: action_id.clone(),
            namespace: request.namespace.clone(),
            workload: request.workload.clone(),
            params: params.clone(),
            // A phase that stopped is there too, with what it checkpointed.
            phases: phases
                .iter()
                .filter(|p| p.status != PhaseStatus::Skipped)
                .map(|p| guest::Phase {
                    action: p.action.clone(),
                    completed: p.status == PhaseStatus::Ok,
                    outputs: to_guest(&p.outputs, keys),
                })
                .collect(),
            failure,
            artifacts: request.artifacts.iter().map(|a| a.to_wit(keys)).collect(),
            point_values: request.point_values.clone(),
        };

        let mut reports: Vec<PhaseReport> = Vec::new();
        let mut failure: Option<WitError> = None;
        if let Some(pre) = pre {
            let ran = run_phase(
                engine,
                blueprint,
                host,
                phase(pre, request.limits.deadline),
                inputs(None, &reports),
                Some(&request.interrupt),
            )
            .await;
            failure = ran.failure;
            reports.push(ran.report);
        }
        if failure.is_none() {
            let ran = run_phase(
                engine,
                blueprint,
                host,
                phase(&main, request.limits.deadline),
                inputs(None, &reports),
                Some(&request.interrupt),
            )
            .await;
            failure = ran.failure;
            reports.push(ran.report);
        } else {
            reports.push(PhaseReport {
                action: main.clone(),
                status: PhaseStatus::Skipped,
                duration_ms: 0,
                outputs: Outputs::default(),
                error: Some(match pre {
                    Some(pre) if request.interrupt.is_triggered() => {
                        format!("skipped because the run was interrupted during {pre}")
                    }
                    pre => format!(
                        "skipped because {} failed",
                        pre.unwrap_or("an earlier phase")
                    ),
                }),
                log_truncated: false,
            });
        }
        if let Some(post) = post {
            let ran = run_phase(
                engine,
                blueprint,
                host,
                phase(post, request.limits.posthook_deadline),
                inputs(failure.clone(), &reports),
                None,
            )
            .await;
            reports.push(ran.report);
        }

        let mut outputs = reports
            .iter()
            .find(|p| p.action == main)
            .map(|p| p.outputs.clone())
            .unwrap_or_default();
        if let [.., main_report, post_report] = reports.as_mut_slice()
            && post.is_some()
            && main_report.status == PhaseStatus::Ok
            && post_report.status == PhaseStatus::Ok
        {
            // Checked again once the posthook ran: it may have deleted what the main phase
            // returned, which that phase's own check could not know.
            let deleted = deleted_snapshots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            match merge(main_report, post_report)
                .and_then(|merged| vouched_only(merged, &references, &deleted, keys))
            {
                Ok(merged) => outputs = merged,
                Err(why) => {
                    tracing::warn!(error = %why, "posthook outputs refused");
                    post_report.status = PhaseStatus::Failed;
                    post_report.error = Some(why);
                }
            }
        }

        for name in sessions.end().await {
            let message = format!(
                "session `{name}` was still open when the run ended; its process was killed"
            );
            tracing::warn!("{message}");
            warn(host, &action_id, post.unwrap_or(&main), message);
        }

        let taken = std::mem::take(
            &mut *taken
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let phases_ok = reports.iter().all(|p| p.status == PhaseStatus::Ok);
        // A backup's snapshots its outputs do not name: no restore point records them, so no
        // retention will delete them. Said, not deleted: a blueprint may name one otherwise
        // than by its id.
        if phases_ok && main == "backup" {
            let named = |id: &str| {
                let name = id.rsplit('/').next().unwrap_or(id);
                outputs.values.iter().any(|(_, v)| v.contains(name))
                    || outputs
                        .artifacts
                        .iter()
                        .any(|a| a.values.iter().any(|(_, v)| v.contains(name)))
            };
            for id in taken.iter().filter(|id| !named(id)) {
                warn(
                    host,
                    &action_id,
                    post.unwrap_or(&main),
                    format!(
                        "volume snapshot {id} is named by none of the backup's outputs: no \
                         restore point records it, so retention will not delete it; return it \
                         (or delete it) in the blueprint"
                    ),
                );
            }
        }
        let (unsettled, stopped_waiting) = settle_snapshots(
            host,
            &action_id,
            post.unwrap_or(&main),
            &main,
            &taken,
            phases_ok,
            &request.interrupt,
        )
        .await;
        let ok = phases_ok && unsettled.is_none();
        let main_report = reports.iter().find(|p| p.action == main);
        let main_ok = main_report.is_some_and(|p| p.status == PhaseStatus::Ok);
        let error = reports
            .iter()
            .find(|p| {
                matches!(
                    p.status,
                    PhaseStatus::Failed
                        | PhaseStatus::Trapped
                        | PhaseStatus::TimedOut
                        | PhaseStatus::Interrupted
                )
            })
            .map(|p| {
                let why = p.error.clone().unwrap_or_default();
                if main_ok && Some(p.action.as_str()) == post {
                    format!("{} failed after {main} succeeded: {why}", p.action)
                } else {
                    format!("{}: {why}", p.action)
                }
            });
        let error = error.or(unsettled);
        match &error {
            None => tracing::info!("action succeeded"),
            Some(e) => tracing::warn!(error = %e, "action failed"),
        }
        Ok(RunReport {
            action_id: action_id.clone(),
            ok,
            phases: reports,
            outputs,
            error,
            stopped_waiting,
        })
    }
    .instrument(span)
    .await
}

/// How long the snapshots a run took may take to become ready to restore from, once its phases
/// are done: the workload is released by then, so this is only the copy's time.
const SNAPSHOT_READY: Duration = Duration::from_secs(3600);

/// Once a run's phases are done: waits until every volume snapshot it took is ready to restore
/// from (a cloud copies a snapshot's data after its point in time is taken, which is when the
/// volumes host call returned and the posthook could release the workload), all within
/// [`SNAPSHOT_READY`]. A backup that failed, or whose snapshots did not become ready, has its
/// snapshots deleted: no restore point references them; another action is only warned about
/// one that is not ready (its work is done). Returns why the run fails, if it does here, and
/// whether an interrupt stopped the wait (one that came during the posthook does not: the
/// backup is whole by then).
async fn settle_snapshots(
    host: &HostContext,
    action_id: &str,
    phase: &str,
    main: &str,
    taken: &[String],
    phases_ok: bool,
    interrupt: &Interrupt,
) -> (Option<String>, bool) {
    if taken.is_empty() {
        return (None, false);
    }
    let log = |level, message: String| log_line(host, action_id, phase, level, message);
    let backup = main == "backup";
    let mut unsettled = None;
    let mut stopped = false;
    if phases_ok {
        log(
            LogLevel::Info,
            format!(
                "waiting for {} volume snapshot(s) to be ready to restore from (the workload is not held meanwhile)",
                taken.len()
            ),
        );
        let until = Instant::now() + SNAPSHOT_READY;
        let interruptible = !interrupt.is_triggered();
        for id in taken {
            let left = until.saturating_duration_since(Instant::now());
            let wait = host.cluster.snapshot_ready(id, left);
            let ready = if interruptible {
                tokio::select! {
                    biased;
                    () = interrupt.triggered() => {
                        stopped = true;
                        Err("the run was interrupted while it waited".to_owned())
                    }
                    r = wait => r.map_err(|e| e.to_string()),
                }
            } else {
                wait.await.map_err(|e| e.to_string())
            };
            if let Err(why) = ready {
                let why =
                    format!("volume snapshot {id} did not become ready to restore from: {why}");
                if backup {
                    unsettled = Some(why);
                    break;
                }
                log(LogLevel::Warn, why);
                stopped = false;
            }
        }
    }
    if backup && (!phases_ok || unsettled.is_some()) {
        for id in taken {
            let message = match host.cluster.delete_snapshot(id).await {
                Ok(()) => format!("deleted volume snapshot {id}: the backup made no restore point"),
                Err(e) => format!(
                    "volume snapshot {id} is left: the backup made no restore point, and deleting it failed: {e}"
                ),
            };
            log(LogLevel::Warn, message);
        }
    }
    (unsettled, stopped)
}

/// A line of the run's own, in its log as the blueprint's lines are.
fn log_line(host: &HostContext, action_id: &str, phase: &str, level: LogLevel, message: String) {
    host.events.emit(Event {
        action_id: action_id.to_owned(),
        phase: phase.to_owned(),
        kind: EventKind::Log { level, message },
    });
}

fn warn(host: &HostContext, action_id: &str, phase: &str, message: String) {
    log_line(host, action_id, phase, LogLevel::Warn, message);
}

async fn run_phase(
    engine: &Engine,
    blueprint: &Blueprint,
    host: &HostContext,
    ctx: Arc<ActionCtx>,
    inputs: guest::Inputs,
    interrupt: Option<&Interrupt>,
) -> Ran {
    let name = ctx.phase.clone();
    let budget = ctx.deadline;
    let output_cap = ctx.limits.output_bytes;
    let span = tracing::info_span!("phase", phase = %name);
    async move {
        let event = |kind| Event { action_id: ctx.action_id.clone(), phase: name.clone(), kind };
        host.events.emit(event(EventKind::PhaseStarted));
        let started = Instant::now();
        let mut store = engine.store(ctx.clone(), host.events.clone(), started + budget);
        let call = async {
            let instance = blueprint.inner.pre.instantiate_async(&mut store).await?;
            instance.cairn_blueprint_guest().call_run(&mut store, &name, &inputs).await
        };
        let interrupted = async {
            match interrupt {
                Some(i) => i.triggered().await,
                None => std::future::pending().await,
            }
        };
        // `None` when interrupted: the phase's call, and the host calls it is in, are dropped.
        let result = tokio::select! {
            biased;
            () = interrupted => None,
            r = tokio::time::timeout(budget + ABANDON_GRACE, call) => Some(r),
        };
        let duration = started.elapsed();
        let state = store.data();
        // A phase that stops keeps what it checkpointed, for the posthook.
        let stopped = || Outputs { artifacts: Vec::new(), values: state.checkpoints.clone() };
        let (status, outputs, error, failure) = match result {
            None => {
                let why = "the run was interrupted (Ctrl-C, SIGTERM or a hangup), which stopped this phase".to_owned();
                (PhaseStatus::Interrupted, stopped(), Some(why.clone()), Some(WitError::Failed(why)))
            }
            Some(Ok(Ok(Ok(returned)))) => match to_outputs(returned, &state.checkpoints)
                .and_then(|o| {
                    let deleted = state.action.deleted_snapshots.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                    vouched_only(o, &state.action.references, &deleted, host.exports.reference_keys())
                })
                .and_then(|o| secret_free(o, state.log.secrets(), host.exports.reference_keys()))
            {
                Err(why) => (PhaseStatus::Failed, stopped(), Some(why.clone()), Some(WitError::Invalid(why))),
                Ok(outputs) if outputs_size(&outputs) > output_cap => {
                    let why = format!(
                        "the blueprint returned {} of outputs, over the limit of {}; return small records and \
                         put bulk data in an export",
                        human_bytes(outputs_size(&outputs) as u64),
                        human_bytes(output_cap as u64)
                    );
                    (PhaseStatus::Failed, stopped(), Some(why.clone()), Some(WitError::Invalid(why)))
                }
                Ok(outputs) => (PhaseStatus::Ok, outputs, None, None),
            },
            Some(Ok(Ok(Err(e)))) => (PhaseStatus::Failed, stopped(), Some(with_sandbox_hint(describe_error(&e))), Some(e)),
            Some(Ok(Err(trap))) => {
                let why = trap_reason(&trap, state);
                let status = if state.deadline_hit { PhaseStatus::TimedOut } else { PhaseStatus::Trapped };
                let failure = if state.deadline_hit { WitError::TimedOut(why.clone()) } else { WitError::Failed(why.clone()) };
                (status, stopped(), Some(why), Some(failure))
            }
            Some(Err(_)) => {
                let why = format!(
                    "the blueprint ran past its deadline of {} inside a host call that did not return, and was \
                     abandoned (Cairn's own calls end by their deadlines: most likely a WASI wait such as \
                     std::thread::sleep; a blueprint waits with cairn_sdk::sleep)",
                    human_duration(budget)
                );
                (PhaseStatus::TimedOut, stopped(), Some(why.clone()), Some(WitError::TimedOut(why)))
            }
        };
        state.log.flush_partial();
        // A guest's error message may quote a secret it was given (a failed login's); the
        // error goes to the report, the posthook and the catalog.
        let secrets = state.log.secrets();
        // And it is shown on the operator's terminal: one line, nothing a terminal obeys, cut as
        // a log line is (a blueprint's message of megabytes would not fit the catalog's record).
        let error = error.map(|e| secrets.shown_line(&e, MAX_LOG_LINE, "message"));
        let failure = failure.map(|f| {
            let blank = |m: String| secrets.cut_clear(&m, MAX_LOG_LINE, "message");
            match f {
                WitError::Denied(m) => WitError::Denied(blank(m)),
                WitError::NotFound(m) => WitError::NotFound(blank(m)),
                WitError::Invalid(m) => WitError::Invalid(blank(m)),
                WitError::TimedOut(m) => WitError::TimedOut(blank(m)),
                WitError::Failed(m) => WitError::Failed(blank(m)),
            }
        });
        let log_truncated = state.log.truncated().is_some();
        match &error {
            None => tracing::info!(elapsed = ?duration, "phase succeeded"),
            Some(e) => tracing::warn!(elapsed = ?duration, error = %e, "phase failed"),
        }
        host.events.emit(event(EventKind::PhaseFinished { ok: error.is_none(), duration, error: error.clone() }));
        Ran {
            report: PhaseReport {
                action: name.clone(),
                status,
                duration_ms: duration.as_millis() as u64,
                outputs,
                error,
                log_truncated,
            },
            failure,
        }
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An artifact's or a value's name is shown and looked up by: never empty, never holding
    /// what a terminal obeys. Values are the blueprint's own and kept as they are.
    #[test]
    fn output_names_are_plain_text() {
        let artifact = |name: &str, key: &str| crate::bindings::types::Artifact {
            name: name.to_owned(),
            reference: Vec::new(),
            values: vec![(key.to_owned(), "v\u{1b}[0m".to_owned())],
        };
        let outputs = |artifacts, values| guest::Outputs { artifacts, values };
        let kept = to_outputs(
            outputs(
                vec![artifact("dump", "lsn")],
                vec![("k".into(), "x\ny".into())],
            ),
            &[],
        )
        .expect("plain names");
        assert_eq!(kept.values, [("k".to_owned(), "x\ny".to_owned())]);
        for (o, says) in [
            (
                outputs(vec![artifact("", "k")], Vec::new()),
                "an empty name",
            ),
            (
                outputs(vec![artifact("a\nb", "k")], Vec::new()),
                "artifact named `a\\nb`",
            ),
            (
                outputs(vec![artifact("a", "\u{1b}[2J")], Vec::new()),
                "control characters",
            ),
            (
                outputs(Vec::new(), vec![(String::new(), "v".into())]),
                "output value with an empty name",
            ),
        ] {
            let e = to_outputs(o, &[]).expect_err(says);
            assert!(e.contains(says), "{e}");
        }
    }
}
