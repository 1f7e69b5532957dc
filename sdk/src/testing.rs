//! A fake host, for unit tests of a blueprint's actions natively (`cargo test`, not `wasm32`).
//!
//! [`FakeHost::run`] runs one action of a [`Blueprint`] the way the runtime would call it, with
//! every host call answered in memory: commands by a closure the test gives
//! ([`FakeHost::on_exec`]), exports kept as bytes ([`FakeHost::export_bytes`]), secrets,
//! workloads, volume snapshots, checkpoints, logs and progress recorded.
//!
//! It checks what the runtime checks, with the runtime's messages, so a test fails where a run
//! would: the blueprint's `describe()` (a failed check panics, as the runtime refuses to load
//! it), the action and parameters, a call to a capability the blueprint does not declare
//! ([`Error::Denied`]), a workload outside the action's scope (any but the target when the
//! context names one, one of another namespace otherwise), export names and tags, an artifact
//! value named like a key of its export reference (`kind`, `repository`, `snapshot`, `bytes`),
//! an output name that is empty or holds control characters, a description over 1 MiB (as the
//! JSON the runtime keeps), more data for an export after a command piped into it exited
//! non-zero having written some, and a secret in outputs, checkpoints, export names or tags.
//! Sessions read up to their marker line and see the process exit ([`FakeHost::on_exec`]).
//! Secrets are blanked out of logs and errors as `[secret NAME]`. [`FakeHost::run_lifecycle`] runs a prehook, main phase and
//! posthook in the runtime's order. Every declared capability is granted unless
//! [`FakeHost::grant`] names the ones the operator grants; a call to a declared but ungranted
//! one is [`Error::Denied`] with the runtime's message. What it does not model: the host's
//! other limits (output sizes, deadlines, the log's cap, open streams) and the DR catalog interface
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
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use crate::exec::Command;
use crate::lifecycle::{BACKUP, BACKUP_POSTHOOK, BACKUP_PREHOOK};
use crate::lifecycle::{RESTORE, RESTORE_POSTHOOK, RESTORE_PREHOOK};
use crate::wit::bindings::cairn::blueprint::{data, exec, volumes};
use crate::wit::types;
use crate::{
    Artifact, Blueprint, Capability, Context, Description, Error, Level, Outputs, ParamKind,
    ParamValue, Result,
};

/// What a faked command returns: its exit status, stdout and stderr.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    exit_code: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// How much of an import piped into it the command took; `None` for all of it.
    took: Option<usize>,
    /// Whether the process ends with this reply ([`Reply::exit`]): what a session sees.
    ends: bool,
}

impl Reply {
    /// Exit status 0 with `stdout`.
    pub fn ok(stdout: impl Into<Vec<u8>>) -> Self {
        Self {
            stdout: stdout.into(),
            ..Self::default()
        }
    }

    /// Exit status `code` with `stderr`. To a [session](crate::exec::Session)'s input, the
    /// process exits after this reply (whatever `code`), where a [`Reply::ok`] leaves it
    /// running: the next `send` fails, and `close` reports `code`.
    pub fn exit(code: i32, stderr: impl Into<Vec<u8>>) -> Self {
        Self {
            exit_code: code,
            stderr: stderr.into(),
            ends: true,
            ..Self::default()
        }
    }

    /// The same reply with `stderr` too.
    #[must_use]
    pub fn stderr(mut self, stderr: impl Into<Vec<u8>>) -> Self {
        self.stderr = stderr.into();
        self
    }

    /// The same reply from a command that took only the first `bytes` of an import piped
    /// into it, and left the rest unread, as a program that exits early does.
    #[must_use]
    pub fn took(mut self, bytes: usize) -> Self {
        self.took = Some(bytes);
        self
    }
}

/// The handler of faked commands: the command, and what its stdin receives (its own
/// [`stdin`](Command::stdin), an import piped into it, or a session's input).
type ExecHandler = Box<dyn FnMut(&Command, &[u8]) -> Reply>;

/// The process of a fake session.
struct FakeSession {
    command: Command,
    pod: String,
    /// What it printed that no `send` read yet.
    unread: Vec<u8>,
    stderr: Vec<u8>,
    /// Its exit status once a reply ended it ([`Reply::exit`]).
    exited: Option<i32>,
}

impl FakeSession {
    /// Takes in a reply of its process.
    fn took(&mut self, reply: Reply) {
        self.unread.extend_from_slice(&reply.stdout);
        self.stderr.extend_from_slice(&reply.stderr);
        if reply.ends {
            self.exited = Some(reply.exit_code);
        }
    }

    /// What it printed before the first line `until`, now read with that line; `None` when
    /// that line has not come (yet). A last line without its line end counts once the process
    /// ended, as the runtime reads it at the end of the output.
    fn read_until(&mut self, until: &str) -> Option<Vec<u8>> {
        let mut at = 0;
        while at < self.unread.len() {
            let (end, next) = match self.unread[at..].iter().position(|&b| b == b'\n') {
                Some(i) => (at + i, at + i + 1),
                None if self.exited.is_some() => (self.unread.len(), self.unread.len()),
                None => return None,
            };
            let line = &self.unread[at..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line == until.as_bytes() {
                let got = self.unread[..at].to_vec();
                self.unread.drain(..next);
                return Some(got);
            }
            at = next;
        }
        None
    }
}

use cairn_contract::MAX_SESSIONS;

/// The runtime's refusal of a session that is not open (`host/session.rs`).
fn no_session(name: &str) -> Error {
    Error::not_found(cairn_contract::no_session(name))
}

/// The runtime's default timeout of a command, and of a session's `send` (its
/// `DEFAULT_EXEC_TIMEOUT`).
const DEFAULT_EXEC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// A fake workload.
#[derive(Debug, Clone)]
struct Workload {
    replicas: u32,
    volumes: Vec<String>,
}

/// A fake export: its bytes and the tags the blueprint gave it.
#[derive(Debug, Clone, Default)]
struct Stored {
    bytes: Vec<u8>,
    tags: Vec<(String, String)>,
}

/// A fake export being written.
#[derive(Debug)]
struct Writing {
    name: String,
    stored: Stored,
    /// Why it takes no more data, as the runtime says it: a command piped into it exited
    /// non-zero after writing.
    ended_by: Option<String>,
}

/// The fake host's state, shared by a [`FakeHost`] and the run it installs.
#[derive(Default)]
pub(crate) struct Fake {
    exec: Option<ExecHandler>,
    /// Whether a command with no handler to answer it fails the test.
    strict: bool,
    declared: Vec<Capability>,
    /// The operator's grants, [`FakeHost::grant`]; `None` grants every declared capability.
    grants: Option<BTreeSet<Capability>>,
    namespace: String,
    target: Option<String>,
    secrets: BTreeMap<String, String>,
    /// The run's secrets that are looked for and blanked, by name, longest first.
    hidden: cairn_contract::Secrets,
    workloads: BTreeMap<String, Workload>,
    objects: BTreeMap<(String, String), String>,
    /// Open export streams by handle.
    writing: BTreeMap<u32, Writing>,
    /// Names of the exports the run opened: each once, as on the runtime.
    export_names: BTreeSet<String>,
    /// How much of its stdin the last command took ([`Reply::took`]).
    took: Option<usize>,
    /// Open import streams by handle: bytes and how far they were read.
    reading: BTreeMap<u32, (Vec<u8>, usize)>,
    next_handle: u32,
    /// Finished exports by id.
    exports: BTreeMap<String, Stored>,
    sessions: BTreeMap<String, FakeSession>,
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
        // The runtime's `HostState::require` (runtime/engine/src/host/mod.rs), in its words:
        // not declared, then declared but not granted to this run.
        if !state.declared.contains(&needed) {
            return Some(Err(Error::denied(cairn_contract::not_declared(needed))));
        }
        if state.grants.as_ref().is_some_and(|g| !g.contains(&needed)) {
            return Some(Err(Error::denied(cairn_contract::not_granted(needed))));
        }
    }
    Some(fake(&mut state))
}

#[cfg(not(target_arch = "wasm32"))]
/// Records a log line or progress, its secrets blanked, when a [`FakeHost`] runs an action on
/// this thread; whether one does.
pub(crate) fn log(level: Level, message: &str) -> bool {
    INSTALLED.with(|i| match &*i.borrow() {
        // From inside an exec handler the host is busy: the line goes to stderr.
        Some(state) => match state.try_borrow_mut() {
            Ok(mut state) => {
                let message = state.redact(message);
                state.logs.push((level, message));
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
    /// output until [`on_exec`](Self::on_exec) says otherwise (or [`strict`](Self::strict)).
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes a command that no [`on_exec`](Self::on_exec) handler answers panic, failing the
    /// test with the command, instead of exiting 0 with no output: for a test that must know
    /// every command the action runs.
    #[must_use]
    pub fn strict(self) -> Self {
        self.state.borrow_mut().strict = true;
        self
    }

    /// Answers every command (`run`, `run_all` once per pod, pipes from and into streams, each
    /// input sent to a session, and a session's opening [`stdin`](Command::stdin) when it has
    /// one) with `handler`, given the command and what its stdin receives. The handler runs
    /// while the host is busy with the call: it must not call this host's methods (what it
    /// logs goes to stderr).
    ///
    /// A session's replies are its process's output, as on the runtime: `send(input, until)`
    /// returns what the process printed before the line `until` (the marker line itself is
    /// not returned, and what follows it is kept for the next `send`). A reply made with
    /// [`Reply::exit`] ends the process: a `send` whose marker it did not print fails with the
    /// runtime's "session … exited with code … before printing …", and `close` reports its
    /// status. A [`Reply::ok`] without the marker leaves the process running and the `send`
    /// waiting: it fails with the runtime's timeout. With no handler (and not
    /// [`strict`](Self::strict)), a session prints just the marker.
    #[must_use]
    pub fn on_exec(self, handler: impl FnMut(&Command, &[u8]) -> Reply + 'static) -> Self {
        self.state.borrow_mut().exec = Some(Box::new(handler));
        self
    }

    /// Grants the runs only `capabilities` (added to those of an earlier `grant`), as an
    /// operator does with `cairn run --grant exec,export` or a policy's `grants:`; without it,
    /// every capability the blueprint declares is granted. A call that needs a declared but
    /// ungranted capability is [`Error::Denied`] with the runtime's message. A granted
    /// capability the blueprint does not declare is harmless, as on the runtime, and grants
    /// nothing: an undeclared capability is refused whatever is granted.
    #[must_use]
    pub fn grant(self, capabilities: impl IntoIterator<Item = Capability>) -> Self {
        self.state
            .borrow_mut()
            .grants
            .get_or_insert_with(BTreeSet::new)
            .extend(capabilities);
        self
    }

    /// A secret the run may read. As on the runtime, a value of 4 bytes or more is blanked as
    /// `[secret NAME]` in logs and errors and refused in outputs, checkpoints and export names
    /// and tags, unless a text parameter, the blueprint's name, the namespace or the workload
    /// holds it.
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
    /// [`defaults`](crate::ContextBuilder::defaults) for the declared defaults). As the runtime
    /// refuses to load it, it panics, failing the test, when `B::describe()` is invalid (a
    /// parameter or action declared twice, a default its parameter refuses, a bad name or
    /// version). After the action, it refuses its outputs as the runtime does, and blanks the
    /// run's secrets out of its error.
    pub fn run<B: Blueprint>(&self, action: &str, ctx: &Context) -> Result<Outputs> {
        let description = B::describe();
        loadable(&description);
        check_run(&description, action, ctx)?;
        self.exports_present(action, ctx)?;
        {
            let mut state = self.state.borrow_mut();
            state.declared = description.capabilities().to_vec();
            state.namespace = ctx.namespace().to_owned();
            state.target = ctx.workload().map(str::to_owned);
            // As on the runtime: a secret a text parameter holds is in the catalog with the
            // parameter anyway, and one the blueprint's name, the namespace or the workload
            // holds is in every export's tags: not hidden.
            let public: Vec<String> = ctx
                .params()
                .filter_map(|(_, v)| match v {
                    ParamValue::Text(t) => Some(t.clone()),
                    _ => None,
                })
                .chain([description.name().to_owned(), ctx.namespace().to_owned()])
                .chain(ctx.workload().map(str::to_owned))
                .collect();
            state.hidden = cairn_contract::Secrets::of(&state.secrets, &public);
            state.export_names.clear();
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
        let result = B::run(action, &ctx.clone().declaring(&description));
        let state = self.state.borrow();
        // A blueprint's error may quote a secret (a failed login's): the runtime blanks it in
        // the report and in the posthook's failure.
        let outputs = result.map_err(|e| e.map_message(|m| state.redact(&m)))?;
        state.check_outputs(&outputs).map_err(Error::invalid)?;
        Ok(outputs)
    }

    /// Refuses a restore (or its prehook alone) whose restore point names an export this host
    /// does not hold, before anything runs: the runtime's `exports_present`
    /// (`runtime/engine/src/run.rs`), in its words.
    fn exports_present(&self, action: &str, ctx: &Context) -> Result<()> {
        if !matches!(action, "restore" | "restorePrehook") {
            return Ok(());
        }
        let state = self.state.borrow();
        for artifact in ctx.restore_point() {
            let reference = types::Artifact::from(artifact);
            let is_export = reference
                .reference
                .iter()
                .any(|(k, v)| k == "kind" && v == FAKE_KIND);
            if !is_export {
                continue;
            }
            let held = Fake::export_id(&reference).is_ok_and(|id| state.exports.contains_key(&id));
            if !held {
                return Err(Error::invalid(format!(
                    "artifact {:?} cannot be used: the restore point's export cannot be read, so \
                     nothing ran: export `{}` not found (a point whose exports were deleted \
                     cannot be restored: pick another)",
                    artifact.name(),
                    artifact.name()
                )));
            }
        }
        Ok(())
    }

    /// Runs `action` as the runtime runs it, with its lifecycle: for `backup` (`restore`),
    /// `backupPrehook` (`restorePrehook`) first when `B` describes it, then the action unless
    /// the prehook failed, then `backupPosthook` (`restorePosthook`) when described, even after
    /// a failure, which it sees in [`Context::failure`]. Each phase is a [`run`](Self::run)
    /// whose context is `ctx` with the earlier phases' outputs over what they checkpointed (a
    /// phase that failed: only what it checkpointed); any other action runs alone.
    ///
    /// Refuses the run before any phase as [`run`](Self::run) does (an action `B` does not
    /// describe, bad parameters); a phase's failure is in the [`Lifecycle`].
    ///
    /// ```
    /// use cairn_sdk::testing::FakeHost;
    /// use cairn_sdk::{Blueprint, Context, Description, Error, Outputs, Result, checkpoint};
    ///
    /// struct Quiesced;
    ///
    /// impl Blueprint for Quiesced {
    ///     fn describe() -> Description {
    ///         Description::new("quiesced", "0.1.0")
    ///             .action("backupPrehook", "Pauses writes")
    ///             .action("backup", "Dumps")
    ///             .action("backupPosthook", "Resumes writes")
    ///     }
    ///     fn run(action: &str, ctx: &Context) -> Result<Outputs> {
    ///         match action {
    ///             "backupPrehook" => checkpoint("paused", true).map(|()| Outputs::new()),
    ///             "backup" => Err(Error::failed("disk full")),
    ///             _ => Ok(Outputs::new()
    ///                 .value("resumed", ctx.value("paused")?)
    ///                 .value("after", ctx.failure().map(Error::message).unwrap_or("ok"))),
    ///         }
    ///     }
    /// }
    ///
    /// let ctx = Context::builder("backup", "shop").build();
    /// let run = FakeHost::new().run_lifecycle::<Quiesced>("backup", &ctx)?;
    /// assert_eq!(run.outputs(), Err(Error::failed("backup: disk full")));
    /// let post = run.phase("backupPosthook").expect("the posthook ran").as_ref();
    /// assert_eq!(post.ok().and_then(|o| o.get("after")), Some("disk full"));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn run_lifecycle<B: Blueprint>(&self, action: &str, ctx: &Context) -> Result<Lifecycle> {
        let description = B::describe();
        loadable(&description);
        check_run(&description, action, ctx)?;
        self.exports_present(action, ctx)?;
        let (pre, post) = match hooks(action) {
            Some((pre, post)) => (
                description.has_action(pre).then_some(pre),
                description.has_action(post).then_some(post),
            ),
            None => (None, None),
        };
        let mut ran = Vec::new();
        let mut failure = None;
        if let Some(pre) = pre {
            failure = self.phase::<B>(pre, ctx, &mut ran, None);
        }
        if failure.is_none() {
            failure = self.phase::<B>(action, ctx, &mut ran, None);
        }
        if let Some(post) = post {
            self.phase::<B>(post, ctx, &mut ran, failure);
        }
        // The posthook's outputs join the main phase's when both returned, as the restore
        // point keeps them.
        let main = ran
            .iter()
            .position(|p| p.action == action && p.result.is_ok());
        let mut outputs = main
            .and_then(|i| ran[i].result.clone().ok())
            .unwrap_or_default();
        if main.is_some()
            && let Some(p) = ran.iter_mut().find(|p| Some(p.action.as_str()) == post)
            && let Ok(theirs) = &p.result
        {
            match merge(action, &outputs, theirs) {
                Ok(merged) => outputs = merged,
                Err(why) => p.result = Err(Error::invalid(why)),
            }
        }
        let outcome = match ran
            .iter()
            .find_map(|p| Some((&p.action, p.result.as_ref().err()?)))
        {
            Some((phase, e)) if main.is_some() && Some(phase.as_str()) == post => Err(e
                .clone()
                .context(format!("{phase} failed after {action} succeeded"))),
            Some((phase, e)) => Err(e.clone().context(phase)),
            None => Ok(outputs),
        };
        Ok(Lifecycle {
            phases: ran.into_iter().map(|p| (p.action, p.result)).collect(),
            outcome,
        })
    }

    /// Runs phase `action` after the phases in `ran`, with the `failure` a posthook sees, and
    /// adds it there; its failure, if it failed.
    fn phase<B: Blueprint>(
        &self,
        action: &str,
        ctx: &Context,
        ran: &mut Vec<PhaseRan>,
        failure: Option<Error>,
    ) -> Option<Error> {
        let earlier = ran
            .iter()
            .map(|p| (p.action.clone(), p.result.is_ok(), p.seen.clone()));
        let before = self.state.borrow().checkpoints.len();
        let result = self.run::<B>(action, &ctx.for_phase(action, earlier, failure));
        let checkpoints = self.state.borrow().checkpoints[before..].to_vec();
        let result = result.map(|o| over_checkpoints(o, &checkpoints));
        let seen = match &result {
            Ok(outputs) => outputs.clone(),
            Err(_) => over_checkpoints(Outputs::new(), &checkpoints),
        };
        let failed = result.as_ref().err().cloned();
        ran.push(PhaseRan {
            action: action.to_owned(),
            result,
            seen,
        });
        failed
    }

    /// The bytes of the export `artifact` names ([`Export::finish`](crate::data::Export::finish)'s
    /// artifact), if it was written and not deleted.
    pub fn export_bytes(&self, artifact: &Artifact) -> Option<Vec<u8>> {
        self.export(artifact).map(|e| e.bytes)
    }

    /// The tags the blueprint gave the export `artifact` names
    /// ([`Export::open_tagged`](crate::data::Export::open_tagged)'s), if it was written and
    /// not deleted; the host's own (`action`, `namespace`, …) are not among them.
    pub fn export_tags(&self, artifact: &Artifact) -> Option<Vec<(String, String)>> {
        self.export(artifact).map(|e| e.tags)
    }

    fn export(&self, artifact: &Artifact) -> Option<Stored> {
        let id = Fake::export_id(&artifact.into()).ok()?;
        self.state.borrow().exports.get(&id).cloned()
    }

    /// An export holding `bytes`, as a backup would have left it: its artifact, named `name`,
    /// for a restore's context ([`ContextBuilder::restore_artifact`](crate::ContextBuilder::restore_artifact)).
    pub fn add_export(&self, name: &str, bytes: impl Into<Vec<u8>>) -> Artifact {
        let mut state = self.state.borrow_mut();
        let id = format!("{name}-{}", state.handle());
        let bytes = bytes.into();
        let artifact = reference(name, &id, bytes.len()).into();
        state.exports.insert(
            id,
            Stored {
                bytes,
                tags: Vec::new(),
            },
        );
        artifact
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

/// What [`FakeHost::run_lifecycle`] ran: each phase in order, and the run's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Lifecycle {
    phases: Vec<(String, Result<Outputs>)>,
    outcome: Result<Outputs>,
}

impl Lifecycle {
    /// The phases that ran, in order, each with its outputs (over what it checkpointed, as the
    /// runtime records them) or its error. A main phase skipped after its prehook failed is
    /// not among them.
    pub fn phases(&self) -> impl ExactSizeIterator<Item = (&str, &Result<Outputs>)> {
        self.phases.iter().map(|(a, r)| (a.as_str(), r))
    }

    /// What phase `action` returned, if it ran.
    pub fn phase(&self, action: &str) -> Option<&Result<Outputs>> {
        self.phases
            .iter()
            .find(|(a, _)| a == action)
            .map(|(_, r)| r)
    }

    /// The run's outputs, as its restore point keeps them: the main phase's, and the
    /// posthook's under their own names. Or the first phase's failure, its message prefixed
    /// with the phase as the runtime's report says it (`backup: …`, `backupPosthook failed
    /// after backup succeeded: …`).
    pub fn outputs(&self) -> Result<&Outputs> {
        self.outcome.as_ref().map_err(Clone::clone)
    }
}

/// A phase [`FakeHost::run_lifecycle`] ran: what it returned, and what later phases see of it.
struct PhaseRan {
    action: String,
    result: Result<Outputs>,
    seen: Outputs,
}

/// The prehook and posthook the runtime runs around `action` when the blueprint describes
/// them (the runtime's `hooks`, `runtime/engine/src/run.rs`).
fn hooks(action: &str) -> Option<(&'static str, &'static str)> {
    match action {
        BACKUP => Some((BACKUP_PREHOOK, BACKUP_POSTHOOK)),
        RESTORE => Some((RESTORE_PREHOOK, RESTORE_POSTHOOK)),
        _ => None,
    }
}

/// A phase's outputs as the runtime records them: the values it checkpointed, each replaced by
/// a value it returned of the same name, then its other values (`to_outputs`,
/// `runtime/engine/src/run.rs`).
fn over_checkpoints(returned: Outputs, checkpoints: &[(String, String)]) -> Outputs {
    let mut outputs = checkpoints
        .iter()
        .fold(Outputs::new(), |o, (k, v)| o.value(k, v));
    for artifact in returned.artifacts() {
        outputs = outputs.artifact(artifact.clone());
    }
    for (key, value) in returned.values() {
        outputs = outputs.value(key, value);
    }
    outputs
}

/// The main phase's outputs with the posthook's added under their own names, or one line why
/// not: the posthook returned an artifact named like one of the main phase's, or set a value
/// the main phase set otherwise (the runtime's `merge`, `runtime/engine/src/run.rs`).
fn merge(
    main_action: &str,
    main: &Outputs,
    post: &Outputs,
) -> std::result::Result<Outputs, String> {
    let mut merged = main.clone();
    for artifact in post.artifacts() {
        if main.get_artifact(artifact.name()).is_some() {
            return Err(format!(
                "it returned the artifact `{}`, which {main_action} already returned; the \
                 restore point keeps both phases' outputs, so give the posthook's another name",
                artifact.name()
            ));
        }
        merged = merged.artifact(artifact.clone());
    }
    for (key, value) in post.values() {
        match main.get(key) {
            None => merged = merged.value(key, value),
            Some(same) if same == value => {}
            Some(other) => {
                return Err(format!(
                    "it set the value `{key}` to {value:?}, which {main_action} set to {other:?}; \
                     the restore point keeps both phases' values, so give the posthook's another \
                     name"
                ));
            }
        }
    }
    Ok(merged)
}

/// Panics, failing the test, when the runtime would refuse to load a blueprint that describes
/// itself as `description`: its run would never start.
fn loadable(description: &Description) {
    if let Some(error) = description.load_error() {
        panic!("{error}");
    }
}

/// What the runtime checks of a run before it starts: the action, and the parameters against
/// their declarations, in the runtime's words (`Engine::run` and `params::validate`,
/// `runtime/engine/src/params.rs`).
fn check_run(description: &Description, action: &str, ctx: &Context) -> Result<()> {
    if !description.has_action(action) {
        let names: Vec<&str> = description.actions().map(|(n, _)| n).collect();
        return Err(Error::invalid(format!(
            "the blueprint has no action {action:?}; it has: {}",
            names.join(", ")
        )));
    }
    for (name, value) in ctx.params() {
        let Some(p) = description.params().iter().find(|p| p.name() == name) else {
            let names: Vec<&str> = description.params().iter().map(|p| p.name()).collect();
            let accepts = if names.is_empty() {
                "it accepts no parameters".to_owned()
            } else {
                format!("it accepts {}", names.join(", "))
            };
            return Err(Error::invalid(format!(
                "parameter {name}={value}: the blueprint has no parameter {name:?}; {accepts}"
            )));
        };
        // The host parses a user's text into the declared type; a test gives the value typed,
        // and one of another type would reach the action as no run's does.
        let given = match value {
            ParamValue::Text(t) => (ParamKind::Text, format!("text {t:?}")),
            ParamValue::Integer(i) => (ParamKind::Integer, format!("the integer {i}")),
            ParamValue::Boolean(b) => (ParamKind::Boolean, format!("the boolean {b}")),
            ParamValue::Float(f) => (ParamKind::Float, format!("the float {f}")),
        };
        if given.0 != p.kind() {
            return Err(Error::invalid(format!(
                "parameter {name}: {}, got {}",
                p.kind().expected(),
                given.1
            )));
        }
        if let Some(why) = p.rule().refusal(&value.to_string()) {
            return Err(Error::invalid(format!("parameter {name}={value}: {why}")));
        }
    }
    if let Some(p) = description
        .params()
        .iter()
        .find(|p| p.is_required() && ctx.param_value(p.name()).is_none())
    {
        let hint = if p.default_value().is_some() {
            " (its default applies with Context::builder(..).defaults(&describe()))"
        } else {
            ""
        };
        return Err(Error::invalid(format!(
            "missing parameter {}: the parameter is required ({}; {}){hint}",
            p.name(),
            p.kind(),
            p.description()
        )));
    }
    Ok(())
}

/// The `kind` of the fake export store's references.
const FAKE_KIND: &str = "fake";

/// The keys of a fake export's reference: those of the runtime's repository export store
/// (`reference_keys` in `runtime/cli/src/exports.rs`), which a value of the artifact may not
/// be named like.
const REFERENCE_KEYS: [&str; 4] = ["kind", "repository", "snapshot", "bytes"];

/// The reference of fake export `id`, named `name`, of `bytes` bytes.
fn reference(name: &str, id: &str, bytes: usize) -> types::Artifact {
    let [kind, repository, snapshot, size] = REFERENCE_KEYS.map(str::to_owned);
    types::Artifact {
        name: name.to_owned(),
        values: Vec::new(),
        reference: vec![
            (kind, FAKE_KIND.to_owned()),
            (repository, FAKE_KIND.to_owned()),
            (snapshot, id.to_owned()),
            (size, bytes.to_string()),
        ],
    }
}

impl Fake {
    /// The workload `w` names (the target when `None`), in the run's namespace.
    fn workload(&mut self, w: Option<&types::WorkloadRef>) -> Result<(String, &mut Workload)> {
        // The runtime's `resolve` (runtime/engine/src/host/mod.rs), in its words: with a
        // target workload, the action may act on that workload only; without one, on any
        // workload of its namespace.
        let name = match w {
            Some(r) => {
                let inside = r.namespace == self.namespace
                    && self.target.as_ref().is_none_or(|t| *t == r.name);
                if !inside {
                    let scope = match &self.target {
                        Some(t) => format!("{}/{t}", self.namespace),
                        None => self.namespace.clone(),
                    };
                    return Err(Error::denied(format!(
                        "workload `{}/{}` is outside this action's scope `{scope}`",
                        r.namespace, r.name
                    )));
                }
                r.name.clone()
            }
            None => self.target.clone().ok_or_else(|| {
                Error::invalid(
                    "this action has no target workload (it was run without --workload), so a \
                     call without a workload has none to act on: run it with --workload, or name \
                     the workload in the call",
                )
            })?,
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
        let mut outputs = Vec::new();
        for pod in self.pods(wit, all)? {
            let reply = self.reply(command, stdin, &pod);
            self.took = reply.took;
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

    /// What `command` answers in `pod` when its stdin receives `stdin`; `None` when nothing
    /// answers it and the host is not strict.
    fn answered(&mut self, command: &Command, stdin: &[u8], pod: &str) -> Option<Reply> {
        match &mut self.exec {
            Some(handler) => Some(handler(command, stdin)),
            None if self.strict => panic!(
                "FakeHost::strict: nothing answers the command `{}` (in {pod}); answer it \
                 with FakeHost::on_exec",
                command.shown()
            ),
            None => None,
        }
    }

    /// [`answered`](Self::answered), exit 0 with no output when nothing answers.
    fn reply(&mut self, command: &Command, stdin: &[u8], pod: &str) -> Reply {
        self.answered(command, stdin, pod).unwrap_or_default()
    }

    /// The pods a command runs in: every ready pod for `all`.
    fn pods(&mut self, wit: &exec::Command, all: bool) -> Result<Vec<String>> {
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
        Ok(pods)
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

    /// Starts a session's process after the runtime's checks (`open_session`,
    /// `runtime/engine/src/host/session.rs`), in its words, and feeds it the command's stdin.
    pub(crate) fn session_open(&mut self, name: &str, command: &Command) -> Result<()> {
        if let Some(problem) = cairn_contract::session_name_problem(name) {
            return Err(Error::invalid(problem));
        }
        let wit = command.to_wit()?;
        let pod = self
            .pods(&wit, false)?
            .pop()
            .ok_or_else(|| Error::failed("the command ran in no pod"))?;
        if self.sessions.contains_key(name) {
            return Err(Error::invalid(format!(
                "a session named `{name}` is already open in this run; close it first or pick \
                 another name"
            )));
        }
        if self.sessions.len() >= MAX_SESSIONS {
            return Err(Error::invalid(format!(
                "this run already holds {MAX_SESSIONS} sessions, the most it may; close one first"
            )));
        }
        let mut session = FakeSession {
            command: command.clone(),
            pod,
            unread: Vec::new(),
            stderr: Vec::new(),
            exited: None,
        };
        if let Some(stdin) = wit.stdin.filter(|s| !s.is_empty())
            && let Some(reply) = self.answered(command, &stdin, &session.pod)
        {
            session.took(reply);
        }
        self.sessions.insert(name.to_owned(), session);
        Ok(())
    }

    /// Feeds `input` to session `name`'s process and reads its output up to the line `until`,
    /// as the runtime's `send_session` does.
    pub(crate) fn session_send(
        &mut self,
        name: &str,
        input: &str,
        until: &str,
        timeout: Option<std::time::Duration>,
    ) -> Result<Vec<u8>> {
        let mut session = self.sessions.remove(name).ok_or_else(|| no_session(name))?;
        if session.exited.is_none() {
            let reply = self
                .answered(&session.command, input.as_bytes(), &session.pod)
                .unwrap_or_else(|| Reply::ok(format!("{until}\n")));
            session.took(reply);
        }
        if let Some(got) = session.read_until(until) {
            self.sessions.insert(name.to_owned(), session);
            return Ok(got);
        }
        let Some(code) = session.exited else {
            self.sessions.insert(name.to_owned(), session);
            return Err(Error::timed_out(format!(
                "exec.session-send ran past its timeout of {}",
                cairn_contract::human_duration(timeout.unwrap_or(DEFAULT_EXEC_TIMEOUT))
            )));
        };
        // The process is gone, and so is the session, as on the runtime.
        let stderr = String::from_utf8_lossy(&session.stderr);
        let tail = stderr.trim();
        let tail = &tail[tail.floor_char_boundary(tail.len().saturating_sub(512))..];
        Err(Error::failed(format!(
            "session `{name}` exited with code {code}: {tail} before printing `{until}`"
        )))
    }

    /// Ends session `name`: what its process printed after the last `send`, its stderr, and
    /// its exit status (that of the [`Reply::exit`] that ended it; 0 for one that ends when
    /// its input does).
    pub(crate) fn session_end(&mut self, name: &str) -> Result<exec::Output> {
        let session = self.sessions.remove(name).ok_or_else(|| no_session(name))?;
        Ok(exec::Output {
            pod: session.pod,
            exit_code: session.exited.unwrap_or(0),
            stdout: session.unread,
            stderr: session.stderr,
            stdout_truncated: false,
            stderr_truncated: false,
        })
    }

    fn handle(&mut self) -> u32 {
        self.next_handle += 1;
        self.next_handle
    }

    /// Opens an export after the runtime's checks (`open_export` in
    /// `runtime/engine/src/host/data.rs`): its name, its tags, no secret in either, and a name
    /// not opened before in the run.
    pub(crate) fn open_export(&mut self, name: &str, tags: &[(String, String)]) -> Result<u32> {
        if let Some(reason) = crate::data::name_problem(name) {
            return Err(Error::invalid(format!(
                "invalid export name {name:?}: {reason}"
            )));
        }
        crate::data::check_tags(tags)
            .map_err(|e| Error::invalid(format!("export {name:?}: {e}")))?;
        if let Some(secret) = std::iter::once(name)
            .chain(tags.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]))
            .find_map(|text| self.secret_in(text))
        {
            return Err(Error::invalid(format!(
                "an export's name or tags hold secret `{secret}`: they are kept in the \
                 catalog and the repository's listing, where a secret never goes"
            )));
        }
        if !self.export_names.insert(name.to_owned()) {
            return Err(Error::invalid(format!(
                "an export named {name:?} was already opened by this action"
            )));
        }
        let handle = self.handle();
        let stored = Stored {
            bytes: Vec::new(),
            tags: tags.to_vec(),
        };
        let writing = Writing {
            name: name.to_owned(),
            stored,
            ended_by: None,
        };
        self.writing.insert(handle, writing);
        Ok(handle)
    }

    /// The open export stream `handle`, if it takes more data (the runtime's `appendable` in
    /// `runtime/engine/src/host/data.rs`, in its words).
    fn appendable(&mut self, handle: u32) -> Result<&mut Writing> {
        let writing = self
            .writing
            .get_mut(&handle)
            .ok_or_else(|| Error::invalid("the export stream is closed"))?;
        match &writing.ended_by {
            None => Ok(writing),
            Some(why) => Err(Error::invalid(cairn_contract::export_ended(
                &writing.name,
                why,
            ))),
        }
    }

    pub(crate) fn pipe_from(&mut self, handle: u32, command: &Command) -> Result<data::Transfer> {
        let wit = command.to_wit()?;
        self.appendable(handle)?;
        let stdin = wit.stdin.clone().unwrap_or_default();
        let out = self.run(command, &wit, &stdin)?;
        let bytes = u64::try_from(out.stdout.len()).unwrap_or(u64::MAX);
        let writing = self.appendable(handle)?;
        writing.stored.bytes.extend_from_slice(&out.stdout);
        if out.exit_code != 0 && bytes > 0 {
            writing.ended_by = Some(cairn_contract::export_ended_by(out.exit_code, bytes));
        }
        Ok(transfer(bytes, out))
    }

    pub(crate) fn write(&mut self, handle: u32, bytes: &[u8]) -> Result<()> {
        self.appendable(handle)?
            .stored
            .bytes
            .extend_from_slice(bytes);
        Ok(())
    }

    pub(crate) fn finish(&mut self, handle: u32) -> Result<types::Artifact> {
        let Writing { name, stored, .. } = self
            .writing
            .remove(&handle)
            .ok_or_else(|| Error::invalid("the export stream is closed"))?;
        let id = format!("{name}-{}", self.handle());
        let reference = reference(&name, &id, stored.bytes.len());
        self.exports.insert(id, stored);
        Ok(reference)
    }

    /// The id of the fake export `artifact`'s reference names.
    fn export_id(artifact: &types::Artifact) -> Result<String> {
        let get = |key: &str| {
            artifact
                .reference
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
        };
        match (get("kind"), get("snapshot")) {
            (Some(kind), Some(id)) if kind == FAKE_KIND => Ok(id.clone()),
            _ => Err(Error::invalid(format!(
                "artifact `{}` names no export (FakeHost::add_export makes one)",
                artifact.name
            ))),
        }
    }

    pub(crate) fn open_import(&mut self, artifact: &types::Artifact) -> Result<u32> {
        let id = Self::export_id(artifact)?;
        let bytes = self
            .exports
            .get(&id)
            .map(|e| e.bytes.clone())
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
        let rest = stdin.len();
        stdin.extend_from_slice(trailer);
        let wit = command.to_wit()?;
        let out = self.run(command, &wit, &stdin)?;
        let took = self.took.map_or(rest, |took| took.min(rest));
        Ok(transfer(u64::try_from(took).unwrap_or(u64::MAX), out))
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

    /// The name of a secret of the run `text` holds (the runtime's `Secrets::held_by`).
    fn secret_in(&self, text: &str) -> Option<&str> {
        self.hidden.held_by(text)
    }

    /// `text` with every secret of the run in it replaced by `[secret NAME]` (the runtime's
    /// `Secrets::redact`).
    fn redact(&self, text: &str) -> String {
        self.hidden.redact(text).into_owned()
    }

    /// What the runtime refuses of a phase's outputs, in its words: an empty name or one with
    /// control characters (`to_outputs`, `runtime/engine/src/run.rs`), an artifact value named
    /// like a key of the artifact's export reference (`Artifact::checked_from_wit`,
    /// `runtime/engine/src/exports.rs`), then a secret in a name or value (`secret_free`,
    /// `runtime/engine/src/run.rs`), where the reference, which the host wrote, is not looked.
    fn check_outputs(&self, outputs: &Outputs) -> std::result::Result<(), String> {
        // First the names, as the runtime's `to_outputs` checks them, with its code.
        for a in outputs.artifacts() {
            let names = std::iter::once(("artifact", a.name()))
                .chain(a.own_values().map(|(k, _)| ("artifact value", k)));
            for (what, name) in names {
                if let Some(problem) = cairn_contract::output_name_problem(what, name) {
                    return Err(problem);
                }
            }
        }
        for (name, _) in outputs.values() {
            if let Some(problem) = cairn_contract::output_name_problem("output value", name) {
                return Err(problem);
            }
        }
        for a in outputs.artifacts() {
            if let Some((key, _)) = a
                .own_values()
                .find(|(k, _)| a.reference().any(|(r, _)| r == *k))
            {
                return Err(format!(
                    "artifact `{}` has a value `{key}`, but `{key}` is a key of its export \
                     reference (written by finish()); a value never shadows the reference: give \
                     the value another name",
                    a.name()
                ));
            }
        }
        let mut named: Vec<(String, &str, &str)> = Vec::new();
        for a in outputs.artifacts() {
            for (k, v) in a.own_values() {
                named.push((format!("artifact `{}` value `{k}`", a.name()), k, v));
            }
            named.push((format!("artifact `{}`", a.name()), a.name(), a.name()));
        }
        for (k, v) in outputs.values() {
            named.push((format!("value `{k}`"), k, v));
        }
        for (what, key, value) in named {
            if let Some(name) = self.secret_in(value).or_else(|| self.secret_in(key)) {
                return Err(format!(
                    "the blueprint's {what} holds secret `{name}`: outputs are kept in the \
                     catalog, which travels in DR exports, so a secret never goes into them; the \
                     restore reads the secret again"
                ));
            }
        }
        Ok(())
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
        if let Some(secret) = self.secret_in(value) {
            return Err(Error::invalid(format!(
                "checkpoint `{name}` holds secret `{secret}`: checkpoints are kept in the \
                 catalog, so a secret never goes into one"
            )));
        }
        if name.is_empty() || name.len() > MAX_CHECKPOINT_NAME {
            return Err(Error::invalid(format!(
                "a checkpoint name must be 1 to {MAX_CHECKPOINT_NAME} bytes long"
            )));
        }
        self.checkpoints.push((name.to_owned(), value.to_owned()));
        Ok(())
    }
}

/// The longest checkpoint name (the runtime's limit).
const MAX_CHECKPOINT_NAME: usize = 256;

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
                    "psql" => Reply::ok(format!("{} rows\ndone\n", stdin.len())),
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
        assert_eq!(out.get("said"), Some("10 rows\n"));
    }

    /// Pipes its `dump` into `load`: all of it, after peeking at its first bytes, or accepting
    /// what `load` leaves unread.
    struct Loader;

    impl Blueprint for Loader {
        fn describe() -> Description {
            Description::new("loader", "0.1.0")
                .action("restore", "Loads")
                .action("peeked", "Peeks, then loads")
                .action("lenient", "Loads what load takes")
                .capability(Capability::Exec)
                .capability(Capability::Import)
        }

        fn run(action: &str, ctx: &Context) -> Result<Outputs> {
            let import = Import::open(ctx.artifact("dump")?)?;
            if action == "peeked" {
                import.read(4)?;
            }
            let transfer = import.pipe_into(&Command::new(["load"]))?;
            let transfer = match action {
                "lenient" => transfer.allow_unread(),
                _ => transfer,
            };
            let unread = transfer.unread();
            transfer.ok()?;
            Ok(Outputs::new().value("unread", unread))
        }
    }

    #[test]
    fn a_command_that_stops_reading_an_import_early_fails_ok() {
        let host = FakeHost::new()
            .workload("pg", 1, &[])
            .on_exec(|_, stdin| Reply::ok("").took(stdin.len().min(10)));
        let dump = host.add_export("dump", "0123456789abcdefghij");
        let ctx = |action: &str| {
            Context::builder(action, "shop")
                .workload("pg")
                .restore_artifact(dump.clone())
                .build()
        };
        let e = host
            .run::<Loader>("restore", &ctx("restore"))
            .expect_err("load took half");
        assert!(
            e.to_string()
                .contains("`load` exited with 0 but left 10 of the import's last 20 bytes unread"),
            "{e}"
        );
        let e = host
            .run::<Loader>("peeked", &ctx("peeked"))
            .expect_err("load took 10 of 16");
        assert!(
            e.to_string().contains("left 6 of the import's last 16"),
            "{e}"
        );
        let out = host
            .run::<Loader>("lenient", &ctx("lenient"))
            .expect("allowed");
        assert_eq!(out.get("unread"), Some("10"));

        // A command that takes all of it passes, and so does one that reads past a peek.
        let host = FakeHost::new()
            .workload("pg", 1, &[])
            .on_exec(|_, _| Reply::ok(""));
        let dump = host.add_export("dump", "0123456789abcdefghij");
        for action in ["restore", "peeked"] {
            let ctx = Context::builder(action, "shop")
                .workload("pg")
                .restore_artifact(dump.clone())
                .build();
            let out = host.run::<Loader>(action, &ctx).expect("all of it");
            assert_eq!(out.get("unread"), Some("0"));
        }
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
        // An export this host does not hold (a deleted point's): refused before anything runs,
        // as the runtime refuses it before the prehook.
        let other = FakeHost::new();
        for name in ["a", "b"] {
            other.add_export(name, "x");
        }
        // The other host's third export: an id this host never gave.
        let foreign = other.add_export("dump", "x");
        let ctx = Context::builder("restore", "shop")
            .workload("pg")
            .restore_artifact(foreign)
            .build();
        let before = host.calls().len();
        let e = host.run::<Db>("restore", &ctx).expect_err("not held");
        assert!(
            matches!(&e, Error::Invalid(m) if m.contains("so nothing ran")),
            "{e}"
        );
        assert_eq!(host.calls().len(), before, "{:?}", host.calls());
    }

    #[test]
    fn an_ungranted_capability_is_denied_in_the_runtimes_words() {
        let backup = Context::builder("backup", "shop").workload("pg").build();
        // By default every declared capability is granted.
        let host = FakeHost::new();
        let dump = host.run::<Db>("backup", &backup).expect("all granted");
        let dump = dump.get_artifact("dump").expect("the dump").clone();
        let restore = Context::builder("restore", "shop")
            .workload("pg")
            .restore_artifact(dump)
            .build();
        host.run::<Db>("restore", &restore).expect("all granted");

        // Only the granted ones; `catalog`, granted but not declared, is harmless.
        let host = host.grant([Capability::Exec, Capability::Export]).grant([
            Capability::Scale,
            Capability::Volumes,
            Capability::Secrets,
            Capability::Catalog,
        ]);
        host.run::<Db>("backup", &backup)
            .expect("what a backup needs");
        assert_eq!(
            host.run::<Db>("restore", &restore),
            Err(Error::denied(
                "capability `import` not granted; grant it (`--grant import` on `cairn run` and \
                 `policy restore`, a policy's or binding's `grants:`)"
            ))
        );
        // A grant does not stand in for a declaration.
        let host = host.secret("password", "pw");
        let peek = Context::builder("peek", "shop").build();
        // In the runtime's words (the fake had its own, naming `Secrets`).
        assert_eq!(
            host.run::<Db>("peek", &peek),
            Err(Error::denied(
                "capability `secrets` is not declared by the blueprint's describe(), so it may \
                 not use it whatever is granted; declare it (Description::capability) and rebuild"
            ))
        );

        // An empty grant grants nothing.
        let e = FakeHost::new()
            .grant([])
            .run::<Db>("backup", &backup)
            .expect_err("nothing granted");
        assert!(
            matches!(&e, Error::Denied(m) if m.starts_with("capability `scale` not granted")),
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
        assert!(
            matches!(&e, Error::Denied(m) if m.contains("capability `exec` is not declared")),
            "{e}"
        );
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
        // The runtime's words (`params::parse`, `params::validate`).
        for (action, ctx, says) in [
            (
                "restore",
                base(),
                "the blueprint has no action \"restore\"; it has: backup",
            ),
            (
                "backup",
                base().param("level", 50),
                "parameter level=50: expected an integer from 1 to 19",
            ),
            (
                "backup",
                base().param("level", "3"),
                "parameter level: expected an integer, got text \"3\"",
            ),
            (
                "backup",
                base().param("database", 3),
                "parameter database: expected text, got the integer 3",
            ),
            (
                "backup",
                base().param("format", "xml"),
                "parameter format=xml: expected one of plain, custom",
            ),
            (
                "backup",
                base().param("levle", 2),
                "parameter levle=2: the blueprint has no parameter \"levle\"; it accepts level, \
                 format, database",
            ),
            (
                "backup",
                Context::builder("backup", "shop").defaults(&Typed::describe()),
                "missing parameter database: the parameter is required (text; )",
            ),
        ] {
            assert_eq!(run(action, ctx), Err(Error::invalid(says)));
        }
        let bounded =
            |n: crate::Param| Description::new("b", "1.0.0").action("backup", "").param(n);
        for (d, n, says) in [
            (
                bounded(crate::Param::integer("n").range(1..)),
                0,
                "expected an integer of at least 1",
            ),
            (
                bounded(crate::Param::integer("n").range(..=9)),
                10,
                "expected an integer of at most 9",
            ),
        ] {
            let ctx = Context::builder("backup", "shop").param("n", n).build();
            let e = check_run(&d, "backup", &ctx).expect_err(says);
            assert_eq!(e, Error::invalid(format!("parameter n={n}: {says}")));
        }
    }

    /// A blueprint whose `describe()` the runtime refuses to load: a parameter's default is not
    /// among its choices.
    struct BadDefault;

    impl Blueprint for BadDefault {
        fn describe() -> Description {
            Description::new("bad", "0.1.0")
                .action("backup", "Dumps")
                .param(
                    crate::Param::text("compression")
                        .default("zip")
                        .choices(["gzip", "none"]),
                )
        }
        fn run(_: &str, _: &Context) -> Result<Outputs> {
            Ok(Outputs::new())
        }
    }

    #[test]
    #[should_panic(
        expected = "the blueprint's describe() is invalid: parameter \"compression\" has the \
                    default \"zip\", which it refuses: expected one of gzip, none; fix it in the \
                    blueprint"
    )]
    fn a_describe_the_runtime_refuses_fails_the_test_as_a_describe_problem() {
        // With its defaults, as a test builds the context: the default is the blueprint's
        // fault, not the test's parameter.
        let ctx = Context::builder("backup", "shop")
            .defaults(&BadDefault::describe())
            .build();
        let _ = FakeHost::new().run::<BadDefault>("backup", &ctx);
    }

    #[test]
    fn export_references_have_the_runtimes_keys_and_no_value_shadows_one() {
        struct Shadow;
        impl Blueprint for Shadow {
            fn describe() -> Description {
                Description::new("shadow", "0.1.0")
                    .action("backup", "Records the size as a value")
                    .param(crate::Param::text("key").default("bytes"))
                    .capability(Capability::Export)
            }
            fn run(_: &str, ctx: &Context) -> Result<Outputs> {
                let export = Export::open("data")?;
                export.write(b"12345")?;
                let key = ctx.text("key")?;
                let own = Artifact::new("own").value(key, 1);
                Ok(Outputs::new()
                    .artifact(export.finish()?.value(key, 5))
                    .artifact(own))
            }
        }
        let host = FakeHost::new();
        let added = host.add_export("dump", "x");
        let keys: Vec<&str> = added.reference().map(|(k, _)| k).collect();
        assert_eq!(keys, REFERENCE_KEYS);
        for key in ["bytes", "snapshot", "repository", "kind"] {
            let ctx = Context::builder("backup", "shop").param("key", key).build();
            assert_eq!(
                host.run::<Shadow>("backup", &ctx),
                Err(Error::invalid(format!(
                    "artifact `data` has a value `{key}`, but `{key}` is a key of its export \
                     reference (written by finish()); a value never shadows the reference: give \
                     the value another name"
                )))
            );
        }
        // Another name is kept; an artifact without a reference may use any.
        let ctx = Context::builder("backup", "shop")
            .param("key", "size")
            .build();
        let out = host.run::<Shadow>("backup", &ctx).expect("no shadow");
        let data = out.get_artifact("data").expect("the export");
        assert_eq!(data.get("bytes"), Some("5"));
        assert_eq!(data.get("size"), Some("5"));
        assert_eq!(host.export_bytes(data).as_deref(), Some(&b"12345"[..]));
    }

    /// A dump cut short by a failing command cannot be followed by a retry in the same export:
    /// the runtime refuses more data, and so does the fake, in its words.
    #[test]
    fn an_export_takes_no_more_data_after_a_command_failed_into_it() {
        struct Retrying;
        impl Blueprint for Retrying {
            fn describe() -> Description {
                Description::new("retrying", "0.1.0")
                    .action("backup", "Dumps, and tries again in the same export")
                    .capability(Capability::Exec)
                    .capability(Capability::Export)
            }
            fn run(_: &str, _: &Context) -> Result<Outputs> {
                let export = Export::open("dump")?;
                // Failing before writing anything leaves the stream open to a retry.
                assert_eq!(
                    export
                        .pipe_from(&Command::new(["dump", "refused"]))?
                        .exit_code,
                    1
                );
                let cut = export.pipe_from(&Command::new(["dump", "cut"]))?;
                assert_eq!((cut.exit_code, cut.bytes), (2, 7));
                let retried = export.pipe_from(&Command::new(["dump", "whole"]));
                let trailer = export.write(b"-- end\n");
                let artifact = export.finish()?;
                Ok(Outputs::new()
                    .value("retried", format!("{:?}", retried.err()))
                    .value("trailer", format!("{:?}", trailer.err()))
                    .artifact(artifact))
            }
        }
        let host =
            FakeHost::new().on_exec(
                |command, _| match command.argv().get(1).map(String::as_str) {
                    Some("refused") => Reply::exit(1, "connection refused"),
                    Some("cut") => Reply {
                        stdout: b"partial".to_vec(),
                        ..Reply::exit(2, "out of disk")
                    },
                    _ => Reply::ok("whole dump\n"),
                },
            );
        let ctx = Context::builder("backup", "shop").workload("db").build();
        let out = host
            .run::<Retrying>("backup", &ctx)
            .expect("finished as it is");
        let refused = "Invalid(\"export `dump`: export \\\"dump\\\" takes no more data: the \
                       command piped into it exited with status 2 after writing 7 bytes, so its \
                       output may be cut short; finish the export as it is, or drop it and write \
                       a new one (under another name) from the start\")";
        assert_eq!(out.get("retried"), Some(&*format!("Some({refused})")));
        assert_eq!(out.get("trailer"), Some(&*format!("Some({refused})")));
        let dump = out.get_artifact("dump").expect("the export");
        assert_eq!(host.export_bytes(dump).as_deref(), Some(&b"partial"[..]));
    }

    #[test]
    fn export_names_and_tags_are_checked_as_the_runtime_checks_them() {
        struct Tagged;
        impl Blueprint for Tagged {
            fn describe() -> Description {
                Description::new("tagged", "0.1.0")
                    .action("backup", "Exports under the name and tag it is given")
                    .param(crate::Param::text("name").default("dump"))
                    .param(crate::Param::text("tag").default("app"))
                    .param(crate::Param::flag("twice").default(false))
                    .capability(Capability::Export)
                    .capability(Capability::Secrets)
            }
            fn run(_: &str, ctx: &Context) -> Result<Outputs> {
                let mut value = "postgres".to_owned();
                if ctx.text("tag")? == "owner" {
                    value = crate::secrets::get("password")?;
                }
                let export = Export::open_tagged(ctx.text("name")?, [(ctx.text("tag")?, value)])?;
                if ctx.flag("twice")? {
                    Export::open(ctx.text("name")?)?;
                }
                Ok(Outputs::new().artifact(export.finish()?))
            }
        }
        let host = FakeHost::new().secret("password", "hunter22");
        let run = |name: &str, tag: &str| {
            let ctx = Context::builder("backup", "shop")
                .defaults(&Tagged::describe())
                .param("name", name)
                .param("tag", tag)
                .build();
            host.run::<Tagged>("backup", &ctx)
        };
        let out = run("dump", "app").expect("a good tag");
        let dump = out.get_artifact("dump").expect("the export");
        assert_eq!(
            host.export_tags(dump),
            Some(vec![("app".to_owned(), "postgres".to_owned())])
        );
        for (name, tag, says) in [
            (
                "dump",
                "action",
                "export \"dump\": export tag key \"action\" is set by the host on every export; \
                 name the blueprint's tag otherwise",
            ),
            (
                "dump",
                "Bad Key",
                "export \"dump\": export tag key \"Bad Key\" is invalid: use 1 to 63 of a-z, 0-9, \
                 '.', '_', '-', starting with a letter or digit",
            ),
            (
                "dump",
                "owner",
                "an export's name or tags hold secret `password`: they are kept in the catalog \
                 and the repository's listing, where a secret never goes",
            ),
            (
                "db/dump",
                "app",
                "invalid export name \"db/dump\": use only letters, digits, '.', '_' and '-'",
            ),
        ] {
            assert_eq!(run(name, tag), Err(Error::invalid(says)), "{name} {tag}");
        }
        let ctx = Context::builder("backup", "shop")
            .defaults(&Tagged::describe())
            .param("twice", true)
            .build();
        assert_eq!(
            host.run::<Tagged>("backup", &ctx),
            Err(Error::invalid(
                "an export named \"dump\" was already opened by this action"
            ))
        );
    }

    #[test]
    fn secrets_are_blanked_in_logs_and_errors_as_on_the_runtime() {
        struct Chatty;
        impl Blueprint for Chatty {
            fn describe() -> Description {
                Description::new("chatty", "0.1.0")
                    .action("backup", "Logs its secrets, then fails quoting one")
                    .param(crate::Param::text("user").default("app"))
                    .capability(Capability::Secrets)
            }
            fn run(_: &str, _: &Context) -> Result<Outputs> {
                for name in ["password", "pin", "user"] {
                    let value = crate::secrets::get(name)?;
                    info!("{name} is {value}");
                }
                progress(crate::Progress::new().message(format!(
                    "logged in with {}",
                    crate::secrets::get("password")?
                )));
                Err(Error::failed(format!(
                    "login refused for {}",
                    crate::secrets::get("password")?
                )))
            }
        }
        let host = FakeHost::new()
            .secret("password", "hunter22")
            .secret("pin", "123")
            .secret("user", "admin");
        let ctx = Context::builder("backup", "shop")
            .param("user", "admin")
            .build();
        assert_eq!(
            host.run::<Chatty>("backup", &ctx),
            Err(Error::failed("login refused for [secret password]"))
        );
        let lines: Vec<String> = host.logs().into_iter().map(|(_, l)| l).collect();
        // A value under 4 bytes, or one a text parameter holds, is not hidden.
        assert_eq!(
            lines,
            [
                "password is [secret password]",
                "pin is 123",
                "user is admin",
                "progress: logged in with [secret password]"
            ]
        );
    }

    #[test]
    #[should_panic(
        expected = "FakeHost::strict: nothing answers the command `dump` (in pg-stopped)"
    )]
    fn a_strict_host_fails_on_a_command_nothing_answers() {
        let ctx = Context::builder("backup", "shop").workload("pg").build();
        // Not strict: exit 0, no output.
        let host = FakeHost::new();
        host.run::<Db>("backup", &ctx)
            .expect("answered with nothing");
        let _ = FakeHost::new().strict().run::<Db>("backup", &ctx);
    }

    #[test]
    fn a_lifecycle_runs_its_phases_in_the_runtimes_order() {
        struct Hooked;
        impl Blueprint for Hooked {
            fn describe() -> Description {
                Description::new("hooked", "0.1.0")
                    .action("backupPrehook", "Pauses")
                    .action("backup", "Dumps")
                    .action("backupPosthook", "Resumes")
                    .param(crate::Param::text("fail").default(""))
            }
            fn run(action: &str, ctx: &Context) -> Result<Outputs> {
                let failing = ctx.text("fail")? == action;
                match action {
                    "backupPrehook" => {
                        checkpoint("paused", "yes")?;
                        if failing {
                            return Err(Error::failed("cannot pause"));
                        }
                        Ok(Outputs::new().value("lock", "l1"))
                    }
                    "backup" => {
                        if failing {
                            return Err(Error::timed_out("the dump"));
                        }
                        Ok(Outputs::new()
                            .artifact(Artifact::new("dump").value("lock", ctx.value("lock")?))
                            .value("rows", 3))
                    }
                    _ => {
                        let failure = ctx.failure().map(Error::to_string).unwrap_or_default();
                        let rows = if failing { "4" } else { "3" };
                        Ok(Outputs::new()
                            .value("paused", ctx.value("paused")?)
                            .value("failure", failure)
                            .value("rows", rows))
                    }
                }
            }
        }
        let host = FakeHost::new();
        let run = |fail: &str| {
            let ctx = Context::builder("backup", "shop")
                .param("fail", fail)
                .build();
            host.run_lifecycle::<Hooked>("backup", &ctx).expect("a run")
        };
        let actions = |r: &Lifecycle| r.phases().map(|(a, _)| a.to_owned()).collect::<Vec<_>>();

        // Outputs reach later phases; the posthook's join the main phase's.
        let ok = run("");
        assert_eq!(actions(&ok), ["backupPrehook", "backup", "backupPosthook"]);
        let out = ok.outputs().expect("ok");
        assert_eq!(
            out.get_artifact("dump").and_then(|a| a.get("lock")),
            Some("l1")
        );
        assert_eq!(
            out.values().collect::<Vec<_>>(),
            [("rows", "3"), ("paused", "yes"), ("failure", "")]
        );
        assert_eq!(
            ok.phase("backupPrehook")
                .and_then(|r| r.as_ref().ok())
                .and_then(|o| o.get("paused")),
            Some("yes")
        );

        // A failed main phase: the posthook runs, sees the failure and what was checkpointed.
        let failed = run("backup");
        assert_eq!(failed.outputs(), Err(Error::timed_out("backup: the dump")));
        let post = failed.phase("backupPosthook").expect("ran");
        assert_eq!(
            post.as_ref().ok().and_then(|o| o.get("failure")),
            Some("timed out: the dump")
        );

        // A failed prehook: the main phase is skipped, the posthook still runs.
        let failed = run("backupPrehook");
        assert_eq!(actions(&failed), ["backupPrehook", "backupPosthook"]);
        assert_eq!(
            failed.outputs(),
            Err(Error::failed("backupPrehook: cannot pause"))
        );
        let post = failed.phase("backupPosthook").and_then(|r| r.as_ref().ok());
        assert_eq!(post.and_then(|o| o.get("paused")), Some("yes"));

        // A posthook value the main phase set otherwise fails the posthook.
        let clash = run("backupPosthook");
        assert_eq!(
            clash.outputs(),
            Err(Error::invalid(
                "backupPosthook failed after backup succeeded: it set the value `rows` to \"4\", \
                 which backup set to \"3\"; the restore point keeps both phases' values, so give \
                 the posthook's another name"
            ))
        );

        // Any other action runs alone; a bad parameter is refused before any phase.
        let ctx = Context::builder("backup", "shop").param("nope", 1).build();
        assert!(matches!(
            host.run_lifecycle::<Hooked>("backup", &ctx),
            Err(Error::Invalid(_))
        ));
        let before = host.checkpoints().len();
        let ctx = Context::builder("backupPrehook", "shop")
            .param("fail", "")
            .build();
        let alone = host
            .run_lifecycle::<Hooked>("backupPrehook", &ctx)
            .expect("a run");
        assert_eq!(actions(&alone), ["backupPrehook"]);
        assert_eq!(host.checkpoints().len(), before + 1);
    }

    #[test]
    fn checkpoints_are_checked_as_the_runtime_checks_them() {
        let host = FakeHost::new().secret("password", "hunter22");
        INSTALLED.with(|i| *i.borrow_mut() = Some(host.state.clone()));
        let _installed = Installed;
        let secrets = host.state.borrow().secrets.clone();
        host.state.borrow_mut().hidden = cairn_contract::Secrets::of(&secrets, &[]);
        assert_eq!(
            checkpoint("dsn", "app:hunter22@db"),
            Err(Error::invalid(
                "checkpoint `dsn` holds secret `password`: checkpoints are kept in the catalog, \
                 so a secret never goes into one"
            ))
        );
        for name in [String::new(), "n".repeat(257)] {
            assert_eq!(
                checkpoint(&name, 1),
                Err(Error::invalid(
                    "a checkpoint name must be 1 to 256 bytes long"
                ))
            );
        }
        checkpoint(&"n".repeat(256), 1).expect("a long name");
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

    /// A session's `send` returns what came before its marker line, fails as
    /// the runtime's when the process exits first, and `close` reports how it exited.
    #[test]
    fn sessions_read_up_to_their_marker_and_see_the_process_exit() {
        struct Locker;
        impl Blueprint for Locker {
            fn describe() -> Description {
                Description::new("locker", "0.1.0")
                    .action("backupPrehook", "Takes the lock")
                    .action("backupPosthook", "Releases it")
                    .capability(Capability::Exec)
            }
            fn run(action: &str, _: &Context) -> Result<Outputs> {
                if action == "backupPrehook" {
                    let client = Command::new(["mariadb"]).stdin("SET SESSION x=1;\n");
                    let lock = Session::open("lock", &client)?;
                    let said =
                        lock.send("FLUSH TABLES WITH READ LOCK; SELECT 'locked';\n", "locked")?;
                    return Ok(Outputs::new().value("said", said));
                }
                let lock = Session::attach("lock");
                lock.send("UNLOCK TABLES; SELECT 'unlocked';\n", "unlocked")?;
                let closed = lock.close()?;
                Ok(Outputs::new()
                    .value("exit", closed.exit_code)
                    .value("rest", closed.stdout_str())
                    .value("pod", closed.pod))
            }
        }
        let ctx = |action: &str| Context::builder(action, "shop").workload("db").build();
        let inputs = Rc::new(RefCell::new(Vec::new()));
        let seen = inputs.clone();
        let host = FakeHost::new().on_exec(move |_, stdin| {
            let stdin = String::from_utf8_lossy(stdin).into_owned();
            seen.borrow_mut().push(stdin.clone());
            if stdin.starts_with("FLUSH") {
                Reply::ok("1\r\nlocked\r\nafter\n")
            } else if stdin.starts_with("UNLOCK") {
                Reply::ok("unlocked\nbye\n").stderr("closing").took(0)
            } else {
                Reply::ok("")
            }
        });
        let out = host
            .run::<Locker>("backupPrehook", &ctx("backupPrehook"))
            .expect("locked");
        assert_eq!(
            out.get("said"),
            Some("1\r\n"),
            "the marker line is not returned"
        );
        assert_eq!(
            inputs.borrow()[0],
            "SET SESSION x=1;\n",
            "the open's stdin is fed"
        );
        assert_eq!(host.calls()[0], "exec.session-open lock mariadb");
        let out = host
            .run::<Locker>("backupPosthook", &ctx("backupPosthook"))
            .expect("released");
        // What followed the first marker was read by the second send, before its marker.
        assert_eq!(out.get("rest"), Some("bye\n"));
        assert_eq!(out.get("exit"), Some("0"));
        assert_eq!(out.get("pod"), Some("db-0"));

        // The client exits before printing the marker: the prehook fails, the session is gone.
        let host = FakeHost::new().on_exec(|_, stdin| {
            if stdin.starts_with(b"FLUSH") {
                Reply::exit(1, "ERROR 1045: Access denied\n")
            } else {
                Reply::ok("")
            }
        });
        assert_eq!(
            host.run::<Locker>("backupPrehook", &ctx("backupPrehook")),
            Err(Error::failed(
                "session `lock`: session `lock` exited with code 1: ERROR 1045: Access denied \
                 before printing `locked`"
            ))
        );
        assert_eq!(
            host.run::<Locker>("backupPosthook", &ctx("backupPosthook")),
            Err(Error::not_found(
                "session `lock`: no session `lock` is open in this run; open it with \
                 session-open in this or an earlier phase"
            ))
        );

        // A reply without the marker from a process still running: the send waits, and
        // times out.
        let host = FakeHost::new().on_exec(|_, _| Reply::ok("nothing yet\n"));
        assert_eq!(
            host.run::<Locker>("backupPrehook", &ctx("backupPrehook")),
            Err(Error::timed_out(
                "session `lock`: exec.session-send ran past its timeout of 30m"
            ))
        );

        // An exit after the marker: the send succeeds, the close reports the status.
        let host = FakeHost::new().on_exec(|_, stdin| {
            if stdin.starts_with(b"UNLOCK") {
                Reply::exit(3, "gone").stderr("lost connection")
            } else {
                Reply::ok("locked\n")
            }
        });
        host.run::<Locker>("backupPrehook", &ctx("backupPrehook"))
            .expect("locked");
        let e = host.run::<Locker>("backupPosthook", &ctx("backupPosthook"));
        assert_eq!(
            e,
            Err(Error::failed(
                "session `lock`: session `lock` exited with code 3: lost connection before \
                 printing `unlocked`"
            ))
        );

        // With no handler, a session prints its marker.
        let host = FakeHost::new();
        let out = host
            .run::<Locker>("backupPrehook", &ctx("backupPrehook"))
            .expect("locked");
        assert_eq!(out.get("said"), Some(""));
    }

    /// Output names the runtime refuses (`to_outputs`, through the shared
    /// `cairn_contract::output_name_problem`), in its words.
    #[test]
    fn empty_output_names_and_control_characters_are_refused() {
        struct Named;
        impl Blueprint for Named {
            fn describe() -> Description {
                Description::new("named", "0.1.0")
                    .action("backup", "Returns what it is told")
                    .param(crate::Param::text("artifact").default("dump"))
                    .param(crate::Param::text("value").default("rows"))
            }
            fn run(_: &str, ctx: &Context) -> Result<Outputs> {
                Ok(Outputs::new()
                    .artifact(Artifact::new(ctx.text("artifact")?).value("k\tv", 1))
                    .value(ctx.text("value")?, 3))
            }
        }
        let host = FakeHost::new();
        let run = |artifact: &str, value: &str| {
            let ctx = Context::builder("backup", "shop")
                .param("artifact", artifact)
                .param("value", value)
                .build();
            host.run::<Named>("backup", &ctx)
        };
        // A tab is plain text, as on the runtime.
        run("dump", "rows").expect("plain names");
        assert_eq!(
            run("", "rows"),
            Err(Error::invalid(
                "the blueprint returned an artifact with an empty name: name it"
            ))
        );
        assert_eq!(
            run("dump", "k\n"),
            Err(Error::invalid(
                "the blueprint returned an output value named `k\\n`, which holds control \
                 characters: name it in plain text"
            ))
        );
        assert_eq!(
            run("dump", ""),
            Err(Error::invalid(
                "the blueprint returned an output value with an empty name: name it"
            ))
        );
    }

    /// A run with a target workload may not act on a sibling workload of its
    /// namespace, as the runtime's `resolve` refuses it; without a target it may.
    #[test]
    fn a_sibling_workload_is_denied_when_the_action_names_a_target() {
        struct Sibling;
        impl Blueprint for Sibling {
            fn describe() -> Description {
                Description::new("sibling", "0.1.0")
                    .action("backup", "Runs in the proxy workload")
                    .capability(Capability::Exec)
                    .capability(Capability::Workloads)
            }
            fn run(_: &str, _: &Context) -> Result<Outputs> {
                let proxy = WorkloadRef::new("shop", "db-proxy");
                Command::new(["true"]).workload(proxy.clone()).run()?;
                workloads::get(Some(&proxy))?;
                Ok(Outputs::new())
            }
        }
        let host = FakeHost::new()
            .workload("db", 1, &[])
            .workload("db-proxy", 1, &[]);
        let ctx = Context::builder("backup", "shop").workload("db").build();
        assert_eq!(
            host.run::<Sibling>("backup", &ctx),
            Err(Error::denied(
                "running `true`: workload `shop/db-proxy` is outside this action's scope `shop/db`"
            ))
        );
        let ctx = Context::builder("backup", "shop").build();
        host.run::<Sibling>("backup", &ctx)
            .expect("any workload of the namespace without a target");
        let ctx = Context::builder("backup", "prod").build();
        assert_eq!(
            host.run::<Sibling>("backup", &ctx),
            Err(Error::denied(
                "running `true`: workload `shop/db-proxy` is outside this action's scope `prod`"
            ))
        );
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
