//! A fake host, for unit tests of a blueprint's actions natively (`cargo test`, not `wasm32`).
//!
//! [`FakeHost::run`] runs one action of a [`Blueprint`] the way the runtime would call it, with
//! every host call answered in memory: commands by a closure the test gives
//! ([`FakeHost::on_exec`]), exports kept as bytes ([`FakeHost::export_bytes`]), secrets,
//! workloads, volume snapshots, checkpoints, logs and progress recorded. As on the runtime, a
//! call to a capability the blueprint does not declare is [`Error::Denied`], a workload of
//! another namespace too, and outputs or checkpoints holding a secret are refused. What it does
//! not model: the host's limits (sizes, deadlines, the log's cap) and the DR catalog interface
//! (`failed`).
//!
//! ```
//! use cairn_sdk::exec::Command;
//! use cairn_sdk::testing::{FakeHost, Reply};
//! use cairn_sdk::{Blueprint, Capability, Context, Description, Error, Outputs, Result};
//!
//! struct Dumper;
//!
//! impl Blueprint for Dumper {
//!     fn describe() -> Description {
//!         Description::new("dumper", "0.1.0")
//!             .action("backup", "Dumps the database")
//!             .capability(Capability::Exec)
//!             .capability(Capability::Export)
//!     }
//!     fn run(action: &str, _ctx: &Context) -> Result<Outputs> {
//!         let export = cairn_sdk::data::Export::open("dump")?;
//!         export.pipe_from(&Command::new(["pg_dump", "shop"]))?.ok()?;
//!         Ok(Outputs::new().artifact(export.finish()?))
//!     }
//! }
//!
//! let host = FakeHost::new().on_exec(|command, _stdin| match command.program() {
//!     "pg_dump" => Reply::ok("CREATE TABLE t ();\n"),
//!     _ => Reply::exit(127, "not found"),
//! });
//! let ctx = Context::builder("backup", "shop").workload("db").build();
//! let outputs = host.run::<Dumper>("backup", &ctx)?;
//! let dump = outputs.get_artifact("dump").expect("an artifact");
//! assert_eq!(host.export_bytes(dump).as_deref(), Some(&b"CREATE TABLE t ();\n"[..]));
//! assert_eq!(host.calls()[0], "data.open-export dump");
//! # Ok::<(), Error>(())
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::exec::Command;
use crate::wit::bindings::cairn::blueprint::{data, exec, volumes};
use crate::wit::types;
use crate::{
    Artifact, Blueprint, Capability, Context, Error, Level, Outputs, ParamKind, ParamValue, Result,
};

/// What a faked command returns: its exit status, stdout and stderr.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    exit_code: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Reply {
    /// Exit status 0 with `stdout`.
    pub fn ok(stdout: impl Into<Vec<u8>>) -> Self {
        Self {
            stdout: stdout.into(),
            ..Self::default()
        }
    }

    /// Exit status `code` with `stderr`.
    pub fn exit(code: i32, stderr: impl Into<Vec<u8>>) -> Self {
        Self {
            exit_code: code,
            stderr: stderr.into(),
            ..Self::default()
        }
    }

    /// The same reply with `stderr` too.
    #[must_use]
    pub fn stderr(mut self, stderr: impl Into<Vec<u8>>) -> Self {
        self.stderr = stderr.into();
        self
    }
}

/// The handler of faked commands: the command, and what its stdin receives (its own
/// [`stdin`](Command::stdin), an import piped into it, or a session's input).
type ExecHandler = Box<dyn FnMut(&Command, &[u8]) -> Reply>;

/// A fake workload.
#[derive(Debug, Clone)]
struct Workload {
    replicas: u32,
    volumes: Vec<String>,
}

/// The fake host's state, shared by a [`FakeHost`] and the run it installs.
#[derive(Default)]
pub(crate) struct Fake {
    exec: Option<ExecHandler>,
    declared: Vec<Capability>,
    namespace: String,
    target: Option<String>,
    secrets: BTreeMap<String, String>,
    /// The run's text parameters (a secret one of them holds is not looked for).
    public: Vec<String>,
    workloads: BTreeMap<String, Workload>,
    objects: BTreeMap<(String, String), String>,
    /// Open export streams by handle: name and bytes so far.
    writing: BTreeMap<u32, (String, Vec<u8>)>,
    /// Open import streams by handle: bytes and how far they were read.
    reading: BTreeMap<u32, (Vec<u8>, usize)>,
    next_handle: u32,
    /// Finished exports by id.
    exports: BTreeMap<String, Vec<u8>>,
    sessions: BTreeMap<String, Command>,
    snapshots: BTreeMap<String, volumes::VolumeSnapshot>,
    calls: Vec<String>,
    logs: Vec<(Level, String)>,
    checkpoints: Vec<(String, String)>,
}

impl std::fmt::Debug for Fake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fake")
            .field("calls", &self.calls)
            .field("exports", &self.exports.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

thread_local! {
    static INSTALLED: RefCell<Option<Rc<RefCell<Fake>>>> = const { RefCell::new(None) };
}

#[cfg(not(target_arch = "wasm32"))]
/// Answers host call `what` with `fake` when a [`FakeHost`] runs an action on this thread;
/// `None` otherwise.
pub(crate) fn answer<T>(
    what: &str,
    detail: impl FnOnce() -> String,
    fake: impl FnOnce(&mut Fake) -> Result<T>,
) -> Option<Result<T>> {
    let state = INSTALLED.with(|i| i.borrow().clone())?;
    let mut state = state.borrow_mut();
    let detail = detail();
    state.calls.push(if detail.is_empty() {
        what.to_owned()
    } else {
        format!("{what} {detail}")
    });
    // A pipe runs a command too: it needs `exec` as well, as on the runtime.
    let pipe = matches!(
        what,
        "data.pipe-from" | "data.pipe-into" | "data.pipe-into-with-trailer"
    );
    let needs = capability_of(what)
        .into_iter()
        .chain(pipe.then_some(Capability::Exec));
    for needed in needs {
        if !state.declared.contains(&needed) {
            return Some(Err(Error::denied(format!(
                "{what} needs the `{needed:?}` capability, which the blueprint does not declare"
            ))));
        }
    }
    Some(fake(&mut state))
}

#[cfg(not(target_arch = "wasm32"))]
/// Records a log line or progress when a [`FakeHost`] runs an action on this thread; whether
/// one does.
pub(crate) fn log(level: Level, message: &str) -> bool {
    INSTALLED.with(|i| match &*i.borrow() {
        // From inside an exec handler the host is busy: the line goes to stderr.
        Some(state) => match state.try_borrow_mut() {
            Ok(mut state) => {
                state.logs.push((level, message.to_owned()));
                true
            }
            Err(_) => false,
        },
        None => false,
    })
}

#[cfg(not(target_arch = "wasm32"))]
/// The capability a host call needs; `None` for the ones always allowed.
fn capability_of(what: &str) -> Option<Capability> {
    let (interface, call) = what.split_once('.').unwrap_or((what, ""));
    Some(match (interface, call) {
        ("exec", _) => Capability::Exec,
        ("workloads", "scale") => Capability::Scale,
        ("workloads", _) => Capability::Workloads,
        ("volumes", _) => Capability::Volumes,
        ("secrets", _) => Capability::Secrets,
        ("catalog", _) => Capability::Catalog,
        ("data", "open-import" | "pipe-into" | "pipe-into-with-trailer" | "read") => {
            Capability::Import
        }
        ("data", _) => Capability::Export,
        _ => return None,
    })
}

/// Removes the installed fake when the run ends, also by a panic.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        INSTALLED.with(|i| i.borrow_mut().take());
    }
}

/// A fake host for one blueprint's unit tests; see the [module](self).
///
/// Configure it, [`run`](Self::run) actions, then look at what they did. State carries over
/// from one run to the next (exports, scaled replicas, snapshots), as on a real target, so a
/// backup's artifact can be restored by the next run.
#[derive(Debug, Clone, Default)]
pub struct FakeHost {
    state: Rc<RefCell<Fake>>,
}

impl FakeHost {
    /// A host with no workloads, secrets or exports, whose commands all exit 0 with no
    /// output until [`on_exec`](Self::on_exec) says otherwise.
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers every command (`run`, `run_all` once per pod, pipes from and into streams, each
    /// input sent to a session) with `handler`, given the command and what its stdin receives;
    /// a session's `send` returns the reply's stdout. The handler runs while the host is busy
    /// with the call: it must not call this host's methods (what it logs goes to stderr).
    #[must_use]
    pub fn on_exec(self, handler: impl FnMut(&Command, &[u8]) -> Reply + 'static) -> Self {
        self.state.borrow_mut().exec = Some(Box::new(handler));
        self
    }

    /// A secret the run may read.
    #[must_use]
    pub fn secret(self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.state
            .borrow_mut()
            .secrets
            .insert(name.into(), value.into());
        self
    }

    /// A workload of the run's namespace, with `replicas` ready pods (`NAME-0` …, container
    /// `main`) and `volumes`. The action's target workload, when not declared, has one replica
    /// and no volumes.
    #[must_use]
    pub fn workload(self, name: impl Into<String>, replicas: u32, volumes: &[&str]) -> Self {
        let volumes = volumes.iter().map(|&v| v.to_owned()).collect();
        self.state
            .borrow_mut()
            .workloads
            .insert(name.into(), Workload { replicas, volumes });
        self
    }

    /// An object of `kind` named `name`, as JSON, for `workloads::get_object` and
    /// `list_objects`.
    #[must_use]
    pub fn object(
        self,
        kind: impl Into<String>,
        name: impl Into<String>,
        json: impl Into<String>,
    ) -> Self {
        self.state
            .borrow_mut()
            .objects
            .insert((kind.into(), name.into()), json.into());
        self
    }

    /// Runs `action` of blueprint `B` with `ctx`, every host call answered by this host.
    ///
    /// As the runtime does before a run, it refuses ([`Error::Invalid`]) an action `B` does
    /// not describe, and parameters it does not declare, of another type, outside their choices
    /// or range, or required and missing (build the context with
    /// [`defaults`](crate::ContextBuilder::defaults) for the declared defaults).
    pub fn run<B: Blueprint>(&self, action: &str, ctx: &Context) -> Result<Outputs> {
        let description = B::describe();
        check_run(&description, action, ctx)?;
        {
            let mut state = self.state.borrow_mut();
            state.declared = B::describe().capabilities().to_vec();
            state.namespace = ctx.namespace().to_owned();
            state.target = ctx.workload().map(str::to_owned);
            state.public = ctx
                .params()
                .filter_map(|(_, v)| match v {
                    ParamValue::Text(t) => Some(t.clone()),
                    _ => None,
                })
                .collect();
            if let Some(target) = ctx.workload() {
                state
                    .workloads
                    .entry(target.to_owned())
                    .or_insert_with(|| Workload {
                        replicas: 1,
                        volumes: Vec::new(),
                    });
            }
            // Streams and sessions live for one phase on the runtime (sessions, for the run:
            // a test keeps them by running the phases on one host).
            state.writing.clear();
            state.reading.clear();
        }
        INSTALLED.with(|i| *i.borrow_mut() = Some(self.state.clone()));
        let _installed = Installed;
        let outputs = B::run(action, ctx)?;
        // As the runtime refuses them: outputs are kept in the catalog.
        let state = self.state.borrow();
        let values = outputs
            .artifacts()
            .iter()
            .flat_map(|a| {
                a.values()
                    .filter(|(k, _)| !a.reference().any(|(r, _)| r == *k))
            })
            .chain(outputs.values());
        for (key, value) in values {
            if let Some(secret) = state.secret_in(value).or_else(|| state.secret_in(key)) {
                return Err(Error::invalid(format!(
                    "the blueprint's output `{key}` holds secret `{secret}`: outputs are kept in \
                     the catalog, which travels in DR exports, so a secret never goes into them"
                )));
            }
        }
        drop(state);
        Ok(outputs)
    }

    /// The bytes of the export `artifact` names ([`Export::finish`](crate::data::Export::finish)'s
    /// artifact), if it was written and not deleted.
    pub fn export_bytes(&self, artifact: &Artifact) -> Option<Vec<u8>> {
        let id = artifact.get(EXPORT_KEY)?;
        self.state.borrow().exports.get(id).cloned()
    }

    /// An export holding `bytes`, as a backup would have left it: its artifact, named `name`,
    /// for a restore's context ([`ContextBuilder::restore_artifact`](crate::ContextBuilder::restore_artifact)).
    pub fn add_export(&self, name: &str, bytes: impl Into<Vec<u8>>) -> Artifact {
        let mut state = self.state.borrow_mut();
        let id = format!("{name}-{}", state.handle());
        state.exports.insert(id.clone(), bytes.into());
        reference(name, &id).into()
    }

    /// The host calls made so far, in order, each as `interface.call` and what it was called
    /// with (`exec.run pg_dump -Fc shop`, `workloads.scale db 0`).
    pub fn calls(&self) -> Vec<String> {
        self.state.borrow().calls.clone()
    }

    /// Log lines and progress (`progress: …`) so far.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.state.borrow().logs.clone()
    }

    /// Values recorded with [`checkpoint`](crate::checkpoint) so far.
    pub fn checkpoints(&self) -> Vec<(String, String)> {
        self.state.borrow().checkpoints.clone()
    }

    /// The replicas of workload `name` now, if there is one.
    pub fn replicas(&self, name: &str) -> Option<u32> {
        self.state.borrow().workloads.get(name).map(|w| w.replicas)
    }

    /// The ids of the volume snapshots that exist now.
    pub fn volume_snapshots(&self) -> Vec<String> {
        self.state.borrow().snapshots.keys().cloned().collect()
    }
}

/// What the runtime checks of a run before it starts: the action, and the parameters against
/// their declarations.
fn check_run(description: &crate::Description, action: &str, ctx: &Context) -> Result<()> {
    if !description.has_action(action) {
        let names: Vec<&str> = description.actions().map(|(n, _)| n).collect();
        return Err(Error::invalid(format!(
            "blueprint {} has no action {action:?}; it has: {}",
            description.name(),
            names.join(", ")
        )));
    }
    for (name, value) in ctx.params() {
        let Some(p) = description.params().iter().find(|p| p.name() == name) else {
            let names: Vec<&str> = description.params().iter().map(|p| p.name()).collect();
            return Err(Error::invalid(format!(
                "the blueprint has no parameter {name:?}; it accepts: {}",
                names.join(", ")
            )));
        };
        let (kind, text) = match value {
            ParamValue::Text(t) => (ParamKind::Text, t.clone()),
            ParamValue::Integer(i) => (ParamKind::Integer, i.to_string()),
            ParamValue::Boolean(b) => (ParamKind::Boolean, b.to_string()),
            ParamValue::Float(f) => (ParamKind::Float, f.to_string()),
        };
        if kind != p.kind() {
            return Err(Error::invalid(format!(
                "parameter {name}: expected {:?}, got {kind:?} {text}",
                p.kind()
            )));
        }
        if !p.allowed_values().is_empty() && !p.allowed_values().contains(&text) {
            return Err(Error::invalid(format!(
                "parameter {name}: expected one of {}, got {text}",
                p.allowed_values().join(", ")
            )));
        }
        if let (ParamValue::Integer(i), (low, high)) = (value, p.bounds())
            && (low.is_some_and(|l| *i < l) || high.is_some_and(|h| *i > h))
        {
            let shown = |b: Option<i64>| b.map_or_else(|| "…".to_owned(), |b| b.to_string());
            return Err(Error::invalid(format!(
                "parameter {name}: expected an integer from {} to {}, got {i}",
                shown(low),
                shown(high)
            )));
        }
    }
    if let Some(p) = description
        .params()
        .iter()
        .find(|p| p.is_required() && ctx.param_value(p.name()).is_none())
    {
        return Err(Error::invalid(format!(
            "missing parameter {}: it is required",
            p.name()
        )));
    }
    Ok(())
}

/// The reference key of a faked export's id.
const EXPORT_KEY: &str = "fake-export";

fn reference(name: &str, id: &str) -> types::Artifact {
    types::Artifact {
        name: name.to_owned(),
        values: Vec::new(),
        reference: vec![
            ("kind".to_owned(), "fake".to_owned()),
            (EXPORT_KEY.to_owned(), id.to_owned()),
        ],
    }
}

impl Fake {
    /// The workload `w` names (the target when `None`), in the run's namespace.
    fn workload(&mut self, w: Option<&types::WorkloadRef>) -> Result<(String, &mut Workload)> {
        let name = match w {
            Some(r) if r.namespace != self.namespace => {
                return Err(Error::denied(format!(
                    "workload {}/{} is outside the action's namespace {}",
                    r.namespace, r.name, self.namespace
                )));
            }
            Some(r) => r.name.clone(),
            None => self
                .target
                .clone()
                .ok_or_else(|| Error::invalid("the action has no target workload"))?,
        };
        match self.workloads.get_mut(&name) {
            Some(w) => Ok((name, w)),
            None => Err(Error::not_found(format!(
                "workload {}/{name} (FakeHost::workload declares it)",
                self.namespace
            ))),
        }
    }

    fn info(&mut self, w: Option<&types::WorkloadRef>) -> Result<types::WorkloadInfo> {
        let namespace = self.namespace.clone();
        let (name, w) = self.workload(w)?;
        Ok(types::WorkloadInfo {
            reference: types::WorkloadRef {
                namespace,
                name: name.clone(),
            },
            kind: types::WorkloadKind::StatefulSet,
            replicas: w.replicas,
            ready_replicas: w.replicas,
            pods: (0..w.replicas)
                .map(|i| types::PodInfo {
                    name: format!("{name}-{i}"),
                    ready: true,
                    containers: vec!["main".to_owned()],
                })
                .collect(),
            volumes: w
                .volumes
                .iter()
                .map(|v| types::VolumeInfo {
                    name: v.clone(),
                    bytes: None,
                })
                .collect(),
        })
    }

    /// Runs `command` through the handler in the pods it would run in (every ready pod for
    /// `all`), feeding it `stdin`.
    fn exec(
        &mut self,
        command: &Command,
        wit: &exec::Command,
        stdin: &[u8],
        all: bool,
    ) -> Result<Vec<exec::Output>> {
        let (name, w) = self.workload(wit.workload.as_ref())?;
        let replicas = w.replicas;
        let pods: Vec<String> = match (&wit.pod, wit.stopped) {
            (_, true) if replicas > 0 => {
                return Err(Error::invalid(format!(
                    "a stopped command needs workload {name} scaled to zero (it has {replicas})"
                )));
            }
            (_, true) => vec![format!("{name}-stopped")],
            (Some(pod), false) => vec![pod.clone()],
            (None, false) if replicas == 0 => {
                return Err(Error::not_found(format!(
                    "workload {name} has no ready pod"
                )));
            }
            (None, false) if all => (0..replicas).map(|i| format!("{name}-{i}")).collect(),
            (None, false) => vec![format!("{name}-0")],
        };
        let mut outputs = Vec::new();
        for pod in pods {
            let reply = match &mut self.exec {
                Some(handler) => handler(command, stdin),
                None => Reply::default(),
            };
            outputs.push(exec::Output {
                pod,
                exit_code: reply.exit_code,
                stdout: reply.stdout,
                stderr: reply.stderr,
                stdout_truncated: false,
                stderr_truncated: false,
            });
        }
        Ok(outputs)
    }

    /// [`exec`](Self::exec) in one pod.
    pub(crate) fn run(
        &mut self,
        command: &Command,
        wit: &exec::Command,
        stdin: &[u8],
    ) -> Result<exec::Output> {
        let mut outputs = self.exec(command, wit, stdin, false)?;
        outputs
            .pop()
            .ok_or_else(|| Error::failed("the command ran in no pod"))
    }

    pub(crate) fn run_all(
        &mut self,
        command: &Command,
        wit: &exec::Command,
    ) -> Result<Vec<exec::Output>> {
        let stdin = wit.stdin.clone().unwrap_or_default();
        self.exec(command, wit, &stdin, true)
    }

    pub(crate) fn session_open(&mut self, name: &str, command: &Command) -> Result<()> {
        if self.sessions.contains_key(name) {
            return Err(Error::invalid(format!("session `{name}` is already open")));
        }
        self.workload(command.to_wit()?.workload.as_ref())?;
        self.sessions.insert(name.to_owned(), command.clone());
        Ok(())
    }

    pub(crate) fn session_send(&mut self, name: &str, input: &str) -> Result<Vec<u8>> {
        let command = self
            .sessions
            .get(name)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("session `{name}` is not open")))?;
        let wit = command.to_wit()?;
        Ok(self.run(&command, &wit, input.as_bytes())?.stdout)
    }

    pub(crate) fn session_end(&mut self, name: &str) -> Result<exec::Output> {
        let command = self
            .sessions
            .remove(name)
            .ok_or_else(|| Error::not_found(format!("session `{name}` is not open")))?;
        Ok(exec::Output {
            pod: command.program().to_owned(),
            exit_code: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
            stdout_truncated: false,
            stderr_truncated: false,
        })
    }

    fn handle(&mut self) -> u32 {
        self.next_handle += 1;
        self.next_handle
    }

    pub(crate) fn open_export(&mut self, name: &str) -> Result<u32> {
        if self.writing.values().any(|(n, _)| n == name) {
            return Err(Error::invalid(format!("export `{name}` is already open")));
        }
        let handle = self.handle();
        self.writing.insert(handle, (name.to_owned(), Vec::new()));
        Ok(handle)
    }

    fn writing(&mut self, handle: u32) -> Result<&mut Vec<u8>> {
        self.writing
            .get_mut(&handle)
            .map(|(_, bytes)| bytes)
            .ok_or_else(|| Error::invalid("the export stream is closed"))
    }

    pub(crate) fn pipe_from(&mut self, handle: u32, command: &Command) -> Result<data::Transfer> {
        let wit = command.to_wit()?;
        let stdin = wit.stdin.clone().unwrap_or_default();
        let out = self.run(command, &wit, &stdin)?;
        let bytes = u64::try_from(out.stdout.len()).unwrap_or(u64::MAX);
        self.writing(handle)?.extend_from_slice(&out.stdout);
        Ok(transfer(bytes, out))
    }

    pub(crate) fn write(&mut self, handle: u32, bytes: &[u8]) -> Result<()> {
        self.writing(handle)?.extend_from_slice(bytes);
        Ok(())
    }

    pub(crate) fn finish(&mut self, handle: u32) -> Result<types::Artifact> {
        let (name, bytes) = self
            .writing
            .remove(&handle)
            .ok_or_else(|| Error::invalid("the export stream is closed"))?;
        let id = format!("{name}-{}", self.handle());
        self.exports.insert(id.clone(), bytes);
        Ok(reference(&name, &id))
    }

    fn export_id(artifact: &types::Artifact) -> Result<String> {
        artifact
            .reference
            .iter()
            .find(|(k, _)| k == EXPORT_KEY)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "artifact `{}` names no export (FakeHost::add_export makes one)",
                    artifact.name
                ))
            })
    }

    pub(crate) fn open_import(&mut self, artifact: &types::Artifact) -> Result<u32> {
        let id = Self::export_id(artifact)?;
        let bytes = self
            .exports
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("export `{}` not found", artifact.name)))?;
        let handle = self.handle();
        self.reading.insert(handle, (bytes, 0));
        Ok(handle)
    }

    /// The unread rest of an import stream, now read.
    fn rest(&mut self, handle: u32) -> Result<Vec<u8>> {
        let (bytes, at) = self
            .reading
            .get_mut(&handle)
            .ok_or_else(|| Error::invalid("the import stream is closed"))?;
        let rest = bytes.get(*at..).unwrap_or_default().to_vec();
        *at = bytes.len();
        Ok(rest)
    }

    pub(crate) fn pipe_into(
        &mut self,
        handle: u32,
        command: &Command,
        trailer: &[u8],
    ) -> Result<data::Transfer> {
        let mut stdin = self.rest(handle)?;
        let bytes = u64::try_from(stdin.len()).unwrap_or(u64::MAX);
        stdin.extend_from_slice(trailer);
        let wit = command.to_wit()?;
        let out = self.run(command, &wit, &stdin)?;
        Ok(transfer(bytes, out))
    }

    pub(crate) fn read(&mut self, handle: u32, max: u32) -> Result<Vec<u8>> {
        let (bytes, at) = self
            .reading
            .get_mut(&handle)
            .ok_or_else(|| Error::invalid("the import stream is closed"))?;
        let end = bytes
            .len()
            .min(at.saturating_add(usize::try_from(max).unwrap_or(usize::MAX)));
        let chunk = bytes.get(*at..end).unwrap_or_default().to_vec();
        *at = end;
        Ok(chunk)
    }

    pub(crate) fn delete(&mut self, artifact: &types::Artifact) -> Result<()> {
        // One already gone counts as removed, as on the runtime.
        self.exports.remove(&Self::export_id(artifact)?);
        Ok(())
    }

    /// The name of a secret `text` holds, as the runtime looks for them: values of 4 bytes or
    /// more that no text parameter of the run holds.
    fn secret_in(&self, text: &str) -> Option<&str> {
        self.secrets
            .iter()
            .filter(|(_, v)| v.len() >= 4)
            .filter(|(_, v)| !self.public.iter().any(|p| p.contains(v.as_str())))
            .find(|(_, v)| text.contains(v.as_str()))
            .map(|(k, _)| k.as_str())
    }

    pub(crate) fn secret(&self, name: &str) -> Result<String> {
        self.secrets.get(name).cloned().ok_or_else(|| {
            Error::not_found(format!(
                "secret `{name}` was not given (FakeHost::secret gives it)"
            ))
        })
    }

    pub(crate) fn get(&mut self, w: Option<&types::WorkloadRef>) -> Result<types::WorkloadInfo> {
        self.info(w)
    }

    pub(crate) fn scale(&mut self, w: Option<&types::WorkloadRef>, replicas: u32) -> Result<u32> {
        let (_, w) = self.workload(w)?;
        Ok(std::mem::replace(&mut w.replicas, replicas))
    }

    pub(crate) fn get_object(&self, kind: &str, name: &str) -> Result<String> {
        readable(kind)?;
        self.objects
            .get(&(kind.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| Error::not_found(format!("{kind} {name}")))
    }

    pub(crate) fn list_objects(&self, kind: &str) -> Result<String> {
        readable(kind)?;
        let items: Vec<&str> = self
            .objects
            .iter()
            .filter(|((k, _), _)| k == kind)
            .map(|(_, json)| json.as_str())
            .collect();
        Ok(format!("[{}]", items.join(",")))
    }

    pub(crate) fn snapshot(
        &mut self,
        w: Option<&types::WorkloadRef>,
        names: &[String],
    ) -> Result<Vec<volumes::VolumeSnapshot>> {
        let info = self.info(w)?;
        let chosen: Vec<String> = if names.is_empty() {
            info.volumes.iter().map(|v| v.name.clone()).collect()
        } else {
            for n in names {
                if !info.volumes.iter().any(|v| v.name == *n) {
                    return Err(Error::not_found(format!(
                        "workload {} has no volume {n}",
                        info.reference.name
                    )));
                }
            }
            names.to_vec()
        };
        let mut taken = Vec::new();
        for volume in chosen {
            let snapshot = volumes::VolumeSnapshot {
                id: format!("snapshot-{}-{}", volume, self.handle()),
                workload: info.reference.clone(),
                volume,
                created_ms: 0,
                bytes: 0,
            };
            self.snapshots.insert(snapshot.id.clone(), snapshot.clone());
            taken.push(snapshot);
        }
        Ok(taken)
    }

    pub(crate) fn restore(&mut self, id: &str) -> Result<volumes::VolumeSnapshot> {
        let snapshot = self
            .snapshots
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("volume snapshot {id}")))?;
        let (name, w) = self.workload(Some(&snapshot.workload))?;
        if w.replicas > 0 {
            return Err(Error::invalid(format!(
                "workload {name} has {} replicas: a volume is restored while its workload is \
                 scaled to zero",
                w.replicas
            )));
        }
        Ok(snapshot)
    }

    pub(crate) fn delete_snapshot(&mut self, id: &str) -> Result<()> {
        self.snapshots
            .remove(id)
            .map(drop)
            .ok_or_else(|| Error::not_found(format!("volume snapshot {id}")))
    }

    pub(crate) fn checkpoint(&mut self, name: &str, value: &str) -> Result<()> {
        if name.is_empty() {
            return Err(Error::invalid("a checkpoint needs a name"));
        }
        if let Some(secret) = self.secret_in(value) {
            return Err(Error::invalid(format!(
                "checkpoint `{name}` holds secret `{secret}`: checkpoints are kept in the \
                 catalog, so a secret never goes into one"
            )));
        }
        self.checkpoints.push((name.to_owned(), value.to_owned()));
        Ok(())
    }
}

fn transfer(bytes: u64, out: exec::Output) -> data::Transfer {
    data::Transfer {
        bytes,
        exit_code: out.exit_code,
        stderr: out.stderr,
        stderr_truncated: false,
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::data::{Export, Import};
    use crate::exec::Session;
    use crate::{ContextBuilder, Description, WorkloadRef, checkpoint, info, progress, workloads};

    /// A blueprint whose `backup` quiesces, dumps and snapshots, and whose `restore` pipes the
    /// dump back: every capability the fake host models.
    struct Db;

    impl Blueprint for Db {
        fn describe() -> Description {
            Description::new("db", "0.1.0")
                .action("backup", "Dumps")
                .action("restore", "Restores")
                .action("peek", "Reads a secret it may not")
                .capability(Capability::Exec)
                .capability(Capability::Export)
                .capability(Capability::Import)
                .capability(Capability::Scale)
                .capability(Capability::Workloads)
                .capability(Capability::Volumes)
        }

        fn run(action: &str, ctx: &Context) -> Result<Outputs> {
            match action {
                "backup" => {
                    let before = workloads::scale(None, 0)?;
                    checkpoint("replicas", before)?;
                    let export = Export::open("dump")?;
                    export.pipe_from(&Command::new(["dump"]).stopped())?.ok()?;
                    export.write(b"-- end\n")?;
                    let dump = export.finish()?;
                    let snaps = crate::volumes::snapshot(None, &[])?;
                    workloads::scale(None, before)?;
                    info!("dumped");
                    progress(crate::Progress::percent(100.0));
                    Ok(Outputs::new()
                        .artifact(dump)
                        .value("snapshots", snaps.len()))
                }
                "restore" => {
                    let import = Import::open(ctx.artifact("dump")?)?;
                    import
                        .pipe_into_with_trailer(&Command::new(["load"]), b"COMMIT\n")?
                        .ok()?;
                    let lock = Session::open("lock", &Command::new(["psql"]))?;
                    let said = lock.send("SELECT 1;\n", "done")?;
                    lock.close()?;
                    Ok(Outputs::new().value("said", said))
                }
                "peek" => crate::secrets::get("password").map(|p| Outputs::new().value("p", p)),
                other => Err(Error::unknown_action(other)),
            }
        }
    }

    #[test]
    fn a_backup_is_answered_in_memory_and_restored_from_it() {
        let loaded = Rc::new(RefCell::new(Vec::new()));
        let seen = loaded.clone();
        let host =
            FakeHost::new()
                .workload("pg", 2, &["data", "wal"])
                .on_exec(move |command, stdin| match command.program() {
                    "dump" => Reply::ok("CREATE TABLE t ();\n"),
                    "load" => {
                        seen.borrow_mut().extend_from_slice(stdin);
                        Reply::ok("")
                    }
                    "psql" => Reply::ok(format!("{} rows", stdin.len())),
                    other => Reply::exit(127, format!("{other}: not found")),
                });
        let ctx = Context::builder("backup", "shop").workload("pg").build();
        let out = host.run::<Db>("backup", &ctx).expect("the backup");
        let dump = out.get_artifact("dump").expect("the dump");
        assert_eq!(
            host.export_bytes(dump).as_deref(),
            Some(&b"CREATE TABLE t ();\n-- end\n"[..])
        );
        assert_eq!(out.get("snapshots"), Some("2"));
        assert_eq!(host.volume_snapshots().len(), 2);
        assert_eq!(host.replicas("pg"), Some(2));
        assert_eq!(
            host.checkpoints(),
            [("replicas".to_owned(), "2".to_owned())]
        );
        assert_eq!(
            host.calls()[..3],
            [
                "workloads.scale (target) 0",
                "log.checkpoint replicas=2",
                "data.open-export dump"
            ]
        );
        assert!(host.logs().contains(&(Level::Info, "dumped".to_owned())));

        let ctx = Context::builder("restore", "shop")
            .workload("pg")
            .restore_artifact(dump.clone())
            .build();
        let out = host.run::<Db>("restore", &ctx).expect("the restore");
        assert_eq!(
            &loaded.borrow()[..],
            b"CREATE TABLE t ();\n-- end\nCOMMIT\n"
        );
        assert_eq!(out.get("said"), Some("10 rows"));
    }

    #[test]
    fn the_fake_host_refuses_what_the_runtime_refuses() {
        // A capability the blueprint does not declare.
        let host = FakeHost::new().secret("password", "pw");
        let ctx = Context::builder("peek", "shop").build();
        assert!(matches!(
            host.run::<Db>("peek", &ctx),
            Err(Error::Denied(_))
        ));
        // A command that fails: its stderr is in the error.
        let host = FakeHost::new().on_exec(|_, _| Reply::exit(1, "disk full"));
        let ctx = Context::builder("backup", "shop").workload("pg").build();
        let e = host.run::<Db>("backup", &ctx).expect_err("not scaled down");
        assert!(
            matches!(&e, Error::Failed(m) if m.contains("disk full")),
            "{e}"
        );
        // An export that is gone.
        let host = FakeHost::new();
        let gone = host.add_export("dump", "x");
        crate::data::delete(&gone).expect_err("no fake installed outside a run");
        let ctx = Context::builder("restore", "shop")
            .workload("pg")
            .restore_artifact(Artifact::new("dump"))
            .build();
        let e = host.run::<Db>("restore", &ctx).expect_err("no reference");
        assert!(
            matches!(&e, Error::Invalid(m) if m.contains("names no export")),
            "{e}"
        );
    }

    #[test]
    fn pipes_need_exec_and_outputs_may_not_hold_a_secret() {
        struct Leaky;
        impl Blueprint for Leaky {
            fn describe() -> Description {
                Description::new("leaky", "0.1.0")
                    .action("backup", "Pipes without exec, or records the password")
                    .action("leak", "Records the password")
                    .capability(Capability::Export)
                    .capability(Capability::Secrets)
            }
            fn run(action: &str, _: &Context) -> Result<Outputs> {
                if action == "leak" {
                    let pw = crate::secrets::get("password")?;
                    return Ok(Outputs::new().value("dsn", format!("db://app:{pw}@db")));
                }
                let export = Export::open("dump")?;
                export.pipe_from(&Command::new(["pg_dump"]))?;
                Ok(Outputs::new().artifact(export.finish()?))
            }
        }
        let host = FakeHost::new().secret("password", "s3cret-pw");
        let ctx = Context::builder("backup", "shop").build();
        let e = host.run::<Leaky>("backup", &ctx).expect_err("no exec");
        assert!(matches!(&e, Error::Denied(m) if m.contains("Exec")), "{e}");
        let ctx = Context::builder("leak", "shop").build();
        let e = host
            .run::<Leaky>("leak", &ctx)
            .expect_err("a secret in outputs");
        assert!(
            matches!(&e, Error::Invalid(m) if m.contains("`dsn` holds secret `password`")),
            "{e}"
        );
    }

    #[test]
    fn actions_and_parameters_are_checked_as_the_runtime_checks_them() {
        struct Typed;
        impl Blueprint for Typed {
            fn describe() -> Description {
                Description::new("typed", "0.1.0")
                    .action("backup", "Dumps")
                    .param(crate::Param::integer("level").range(1..=19).default(3))
                    .param(crate::Param::text("format").choices(["plain", "custom"]))
                    .param(crate::Param::text("database").required())
            }
            fn run(_: &str, _: &Context) -> Result<Outputs> {
                Ok(Outputs::new())
            }
        }
        let host = FakeHost::new();
        let run = |action: &str, ctx: ContextBuilder| host.run::<Typed>(action, &ctx.build());
        let base = || {
            Context::builder("backup", "shop")
                .defaults(&Typed::describe())
                .param("database", "shop")
        };
        assert_eq!(run("backup", base()), Ok(Outputs::new()));
        for (action, ctx, says) in [
            ("restore", base(), "has no action \"restore\""),
            ("backup", base().param("level", 50), "from 1 to 19, got 50"),
            (
                "backup",
                base().param("level", "high"),
                "expected Integer, got Text",
            ),
            (
                "backup",
                base().param("format", "xml"),
                "one of plain, custom",
            ),
            ("backup", base().param("levle", 2), "no parameter \"levle\""),
            (
                "backup",
                Context::builder("backup", "shop").defaults(&Typed::describe()),
                "missing parameter database",
            ),
        ] {
            let e = run(action, ctx).expect_err(says);
            assert!(matches!(&e, Error::Invalid(m) if m.contains(says)), "{e}");
        }
    }

    #[test]
    fn workloads_outside_the_namespace_are_denied_and_every_pod_runs() {
        let host = FakeHost::new()
            .workload("web", 3, &[])
            .on_exec(|_, _| Reply::ok("up"));
        let ctx = Context::builder("backup", "shop").build();
        let other = WorkloadRef::new("prod", "web");
        INSTALLED.with(|i| *i.borrow_mut() = Some(host.state.clone()));
        let _installed = Installed;
        host.state.borrow_mut().declared = Db::describe().capabilities().to_vec();
        host.state.borrow_mut().namespace = ctx.namespace().to_owned();
        assert!(matches!(
            workloads::get(Some(&other)),
            Err(Error::Denied(_))
        ));
        let outs = Command::new(["uptime"])
            .workload(WorkloadRef::new("shop", "web"))
            .run_all()
            .expect("three pods");
        let pods: Vec<&str> = outs.iter().map(|o| o.pod.as_str()).collect();
        assert_eq!(pods, ["web-0", "web-1", "web-2"]);
    }
}

/// Refuses Secrets as objects, as the runtime does: credentials come through `secrets`.
fn readable(kind: &str) -> Result<()> {
    let kind = kind.to_ascii_lowercase();
    if kind.strip_suffix('s').unwrap_or(&kind) == "secret" {
        return Err(Error::denied(
            "Secrets are not read as objects: a blueprint is given the credentials it needs \
             through the `secrets` capability",
        ));
    }
    Ok(())
}
