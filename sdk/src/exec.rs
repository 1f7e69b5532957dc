//! Running commands inside a workload's containers (capability
//! [`Exec`](crate::Capability::Exec)).
//!
//! A command that exits non-zero is a result, not an error: [`Command::run`] returns its
//! [`Output`], and [`Output::ok`] turns a failure into an [`Error`] that quotes the end of
//! stderr. Errors are for what stopped the command from running or finishing (denied, no such
//! container, timed out).
//!
//! ```no_run
//! use std::time::Duration;
//! use cairn_sdk::exec::Command;
//!
//! # fn main() -> cairn_sdk::Result<()> {
//! let out = Command::new(["psql", "-Atc", "select pg_current_wal_lsn()"])
//!     .container("postgres")
//!     .env("PGUSER", "postgres")
//!     .timeout(Duration::from_secs(30))
//!     .run()?
//!     .ok()?;
//! let lsn = out.stdout_str().trim().to_owned();
//! # let _ = lsn;
//! # Ok(())
//! # }
//! ```

use std::borrow::Cow;
use std::time::Duration;

use crate::wit::bindings::cairn::blueprint::exec as wit;
use crate::wit::{faked, types};
use crate::workloads::millis;
use crate::{Error, Result, WorkloadRef};

/// How much of stderr [`Output::ok`] quotes in its error: enough for the last few lines of a
/// tool's complaint, small enough for a one-line failure reason.
pub const STDERR_TAIL_BYTES: usize = 512;

/// A command to run in a workload's container. Nothing runs until [`run`](Self::run) or
/// [`run_all`](Self::run_all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    workload: Option<WorkloadRef>,
    pod: Option<String>,
    container: Option<String>,
    argv: Vec<String>,
    then: Vec<Vec<String>>,
    env: Vec<(String, String)>,
    stdin: Option<Vec<u8>>,
    timeout: Option<Duration>,
    stopped: bool,
}

impl Command {
    /// A command running `argv` (program and arguments; no shell is involved unless the
    /// program is one) in a ready pod of the action's target workload, in its default container
    /// (on Kubernetes the one the `kubectl.kubernetes.io/default-container` annotation names,
    /// else the first), with the host's default deadline.
    pub fn new<I>(argv: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Self {
            workload: None,
            pod: None,
            container: None,
            argv: argv.into_iter().map(Into::into).collect(),
            then: Vec::new(),
            env: Vec::new(),
            stdin: None,
            timeout: None,
            stopped: false,
        }
    }

    /// `sh -c script`: for redirections and variables in the container (for a pipe of
    /// programs, [`pipe`](Self::pipe) needs no shell).
    pub fn shell(script: impl Into<String>) -> Self {
        Self::new(["sh".to_owned(), "-c".to_owned(), script.into()])
    }

    /// Appends an argument.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.argv.push(arg.into());
        self
    }

    /// Appends arguments.
    #[must_use]
    pub fn args<I>(mut self, args: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.argv.extend(args.into_iter().map(Into::into));
        self
    }

    /// Pipes the output of what came before into `argv`: `Command::new(a).pipe(b).pipe(c)`
    /// runs `a | b | c` in the same container and environment, without a shell. Stdin goes to
    /// `a`, stdout comes from `c`, stderr is all three's, and the exit code is the last
    /// non-zero one (as `set -o pipefail`). Every program must be on the workload's allow
    /// list; at most eight in all.
    #[must_use]
    pub fn pipe<I>(mut self, argv: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.then.push(argv.into_iter().map(Into::into).collect());
        self
    }

    /// Runs in `workload` instead of the action's target. The host allows only a workload in
    /// the action's scope: when the action names a target workload (`--workload`, and always
    /// under a policy or binding), that workload alone, so naming another (a sidecar
    /// `-proxy` workload) is [`Error::Denied`]; when it names none, any workload of its
    /// namespace.
    #[must_use]
    pub fn workload(mut self, workload: WorkloadRef) -> Self {
        self.workload = Some(workload);
        self
    }

    /// Runs in this pod instead of any ready one. Ignored by [`run_all`](Self::run_all).
    #[must_use]
    pub fn pod(mut self, pod: impl Into<String>) -> Self {
        self.pod = Some(pod.into());
        self
    }

    /// Runs in this container instead of the pod's default one.
    #[must_use]
    pub fn container(mut self, container: impl Into<String>) -> Self {
        self.container = Some(container.into());
        self
    }

    /// Sets an environment variable. `PATH`, `LD_*`, `DYLD_*` and `CAIRN_*` are refused
    /// everywhere; on the local target, only the database clients' variables (`PG*`,
    /// `MYSQL_*`, `MARIADB_*`, `REDISCLI_*`, `ETCDCTL_*`, `TZ`, `LANG`, `LC_*`) pass, and
    /// others only when the workload's `pass_env` in the inventory names them.
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Feeds these bytes to stdin (bounded by the host). Stream bulk input with
    /// [`data::Import::pipe_into`](crate::data::Import::pipe_into) instead.
    #[must_use]
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    /// Sets a deadline for the command; past it, the call fails with
    /// [`Error::TimedOut`].
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Runs against the workload while it is scaled to zero, with its volumes where its pods
    /// have them (for data no running process may change, after a quiesce). The host refuses
    /// it while the workload has replicas, with a [`pod`](Self::pod), and in
    /// [`run_all`](Self::run_all).
    #[must_use]
    pub fn stopped(mut self) -> Self {
        self.stopped = true;
        self
    }

    /// The program and its arguments.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// The programs [`pipe`](Self::pipe) added, with their arguments.
    pub fn pipeline(&self) -> &[Vec<String>] {
        &self.then
    }

    /// The program: the first word of [`argv`](Self::argv).
    pub fn program(&self) -> &str {
        self.argv.first().map_or("", String::as_str)
    }

    /// The command as one line, for the fake host's record of calls: the pipeline's programs
    /// and arguments joined by spaces and ` | `.
    pub(crate) fn shown(&self) -> String {
        std::iter::once(&self.argv)
            .chain(&self.then)
            .map(|argv| argv.join(" "))
            .collect::<Vec<_>>()
            .join(" | ")
    }

    pub(crate) fn to_wit(&self) -> Result<wit::Command> {
        if self.program().is_empty() {
            return Err(Error::invalid("a command needs a program to run"));
        }
        Ok(wit::Command {
            workload: self.workload.as_ref().map(types::WorkloadRef::from),
            pod: self.pod.clone(),
            container: self.container.clone(),
            argv: self.argv.clone(),
            then: self.then.clone(),
            env: self.env.clone(),
            stdin: self.stdin.clone(),
            timeout_ms: self.timeout.map(millis),
            stopped: self.stopped,
        })
    }

    /// Runs the command in one pod and waits for it.
    pub fn run(&self) -> Result<Output> {
        let command = self.to_wit()?;
        let stdin = command.stdin.clone().unwrap_or_default();
        faked(
            "exec.run",
            || self.shown(),
            || wit::run(&command),
            |f| f.run(self, &command, &stdin),
        )
        .map(|o| Output::new(self.program(), o))
        .map_err(|e| e.context(format_args!("running `{}`", self.program())))
    }

    /// Runs the command in every pod of the workload, at most 8 pods at a time; one output
    /// per pod, in the order of the workload's pods. The pods share one cap of 16 MiB of
    /// captured output: each pod's stdout and stderr are each cut (and flagged) at 16 MiB
    /// divided by twice the pod count, never below 4 KiB nor above the cap of
    /// [`run`](Self::run) (1 MiB each by default). Each pod's command has the command's
    /// timeout; the call as a whole, the phase's time.
    pub fn run_all(&self) -> Result<Vec<Output>> {
        let command = self.to_wit()?;
        faked(
            "exec.run-all",
            || self.shown(),
            || wit::run_all(&command),
            |f| f.run_all(self, &command),
        )
        .map(|outs| {
            outs.into_iter()
                .map(|o| Output::new(self.program(), o))
                .collect()
        })
        .map_err(|e| e.context(format_args!("running `{}` in every pod", self.program())))
    }
}

/// A command held open across the phases of one run, its stdin and stdout piped to the host:
/// the way a prehook holds a database lock or backup mode that the posthook ends.
///
/// [`Session::open`] starts it; a later phase of the same run finds it again with
/// [`Session::attach`]. [`send`](Session::send) writes to its stdin and reads its stdout up to a
/// marker line that the input makes it print; [`close`](Session::close) ends its input and
/// waits for it, [`kill`](Session::kill) ends it at once. The host kills every session still open when the run ends, which releases
/// whatever it held, so a lock is never left behind by a failed posthook.
///
/// ```no_run
/// use cairn_sdk::exec::{Command, Session};
///
/// # fn main() -> cairn_sdk::Result<()> {
/// // backupPrehook
/// let lock = Session::open("lock", &Command::new(["mariadb", "--batch", "--skip-column-names"]))?;
/// lock.send("FLUSH TABLES WITH READ LOCK; SELECT 'locked';\n", "locked")?;
/// // backupPosthook
/// let lock = Session::attach("lock");
/// lock.send("UNLOCK TABLES; SELECT 'unlocked';\n", "unlocked")?;
/// lock.close()?.ok()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    name: String,
}

impl Session {
    /// Starts `command` as the session `name` (unique within the run). The command's
    /// [`timeout`](Command::timeout) bounds the session's whole life; without one it lives
    /// until it is closed or the run ends. Its [`stdin`](Command::stdin), if any, is written
    /// first.
    pub fn open(name: &str, command: &Command) -> Result<Self> {
        let c = command.to_wit()?;
        faked(
            "exec.session-open",
            || format!("{name} {}", command.shown()),
            || wit::session_open(name, &c),
            |f| f.session_open(name, command),
        )
        .map(|()| Self::attach(name))
        .map_err(|e| {
            e.context(format_args!(
                "opening session `{name}` (`{}`)",
                command.program()
            ))
        })
    }

    /// The session `name` that this or an earlier phase of the run opened. No host call is
    /// made: a session that is not open shows up as [`Error::NotFound`] at the first use.
    pub fn attach(name: &str) -> Self {
        Self {
            name: name.to_owned(),
        }
    }

    /// The session's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes `input` to the session's stdin, then reads its stdout up to the first line equal
    /// to `until` and returns what came before it, waiting at most the host's exec timeout.
    pub fn send(&self, input: &str, until: &str) -> Result<String> {
        self.exchange(input, until, None)
    }

    /// [`send`](Self::send), waiting at most `timeout` for the `until` line.
    pub fn send_timeout(&self, input: &str, until: &str, timeout: Duration) -> Result<String> {
        self.exchange(input, until, Some(timeout))
    }

    fn exchange(&self, input: &str, until: &str, timeout: Option<Duration>) -> Result<String> {
        faked(
            "exec.session-send",
            || self.name.clone(),
            || wit::session_send(&self.name, input.as_bytes(), until, timeout.map(millis)),
            |f| f.session_send(&self.name, input, until, timeout),
        )
        .map(|out| String::from_utf8_lossy(&out).into_owned())
        .map_err(|e| e.context(format_args!("session `{}`", self.name)))
    }

    /// Closes the session's stdin and waits for it to exit: its output is what it printed after
    /// the last [`send`](Self::send), and its stderr.
    pub fn close(self) -> Result<Output> {
        faked(
            "exec.session-close",
            || self.name.clone(),
            || wit::session_close(&self.name),
            |f| f.session_end(&self.name),
        )
        .map(|o| Output::new(&format!("session {}", self.name), o))
        .map_err(|e| e.context(format_args!("closing session `{}`", self.name)))
    }

    /// Kills the session without waiting for it, discarding its unread output: for a session
    /// that hangs or whose work must be abandoned.
    pub fn kill(self) -> Result<()> {
        faked(
            "exec.session-kill",
            || self.name.clone(),
            || wit::session_kill(&self.name),
            |f| f.session_end(&self.name).map(drop),
        )
        .map_err(|e| e.context(format_args!("killing session `{}`", self.name)))
    }
}

/// What a finished command produced. Output beyond the host's cap is cut and flagged.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Output {
    /// The pod it ran in.
    pub pod: String,
    /// Its exit status.
    pub exit_code: i32,
    /// Its stdout, up to the host's cap.
    pub stdout: Vec<u8>,
    /// Its stderr, up to the host's cap.
    pub stderr: Vec<u8>,
    /// Whether stdout was cut at the cap.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at the cap.
    pub stderr_truncated: bool,
    program: String,
}

impl Output {
    fn new(program: &str, o: wit::Output) -> Self {
        Self {
            pod: o.pod,
            exit_code: o.exit_code,
            stdout: o.stdout,
            stderr: o.stderr,
            stdout_truncated: o.stdout_truncated,
            stderr_truncated: o.stderr_truncated,
            program: program.to_owned(),
        }
    }

    /// Whether it exited with 0.
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }

    /// Itself when it exited with 0; otherwise [`Error::Failed`] naming the program, the pod,
    /// the exit status and the end of stderr.
    pub fn ok(self) -> Result<Self> {
        if self.success() {
            return Ok(self);
        }
        Err(exit_error(
            &format!("`{}` in pod {}", self.program, self.pod),
            self.exit_code,
            &self.stderr,
        ))
    }

    /// Stdout as text (invalid UTF-8 replaced).
    pub fn stdout_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.stdout)
    }

    /// Stderr as text (invalid UTF-8 replaced).
    pub fn stderr_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.stderr)
    }
}

/// `{what} exited with {code}: {tail of stderr}`.
pub(crate) fn exit_error(what: &str, exit_code: i32, stderr: &[u8]) -> Error {
    let tail = tail(stderr, STDERR_TAIL_BYTES);
    if tail.is_empty() {
        Error::failed(format!("{what} exited with {exit_code}"))
    } else {
        Error::failed(format!("{what} exited with {exit_code}: {tail}"))
    }
}

/// The last `max` bytes of `bytes` as trimmed text, starting on a character boundary, with a
/// leading `…` when cut.
fn tail(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(exit_code: i32, stderr: &str) -> Output {
        Output::new(
            "pg_dump",
            wit::Output {
                pod: "db-0".into(),
                exit_code,
                stdout: b"out\xff\n".to_vec(),
                stderr: stderr.as_bytes().to_vec(),
                stdout_truncated: false,
                stderr_truncated: false,
            },
        )
    }

    #[test]
    fn builds_the_wit_command() {
        let cmd = Command::new(["pg_dump", "-Fc"])
            .arg("shop")
            .args(["--no-owner"])
            .workload(WorkloadRef::new("shop", "db"))
            .pod("db-0")
            .container("postgres")
            .env("PGUSER", "postgres")
            .stdin("input")
            .timeout(Duration::from_secs(2));
        let wit = cmd.to_wit().ok();
        let wit = wit.as_ref();
        assert_eq!(
            wit.map(|c| c.argv.clone()),
            Some(vec![
                "pg_dump".into(),
                "-Fc".into(),
                "shop".into(),
                "--no-owner".into()
            ])
        );
        assert_eq!(wit.and_then(|c| c.timeout_ms), Some(2000));
        assert_eq!(wit.and_then(|c| c.stdin.clone()), Some(b"input".to_vec()));
        assert_eq!(
            wit.and_then(|c| c.workload.as_ref())
                .map(|w| w.name.as_str()),
            Some("db")
        );
        assert_eq!(wit.and_then(|c| c.container.as_deref()), Some("postgres"));
        assert_eq!(wit.and_then(|c| c.pod.as_deref()), Some("db-0"));
        assert_eq!(wit.map(|c| c.env.len()), Some(1));
    }

    #[test]
    fn shell_wraps_in_sh() {
        assert_eq!(
            Command::shell("echo $HOME").argv(),
            ["sh", "-c", "echo $HOME"]
        );
    }

    #[test]
    fn an_empty_command_is_invalid() {
        let none: [&str; 0] = [];
        assert!(matches!(Command::new(none).run(), Err(Error::Invalid(_))));
        assert!(matches!(
            Command::new([""]).run_all(),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    #[cfg(not(target_arch = "wasm32"))]
    fn host_calls_fail_cleanly_off_wasm() {
        assert!(
            matches!(Command::new(["true"]).run(), Err(Error::Failed(m)) if m.contains("`true`"))
        );
    }

    #[test]
    fn ok_passes_success_through() {
        let out = output(0, "");
        assert!(out.success());
        assert_eq!(out.clone().ok(), Ok(out));
    }

    #[test]
    fn ok_quotes_the_end_of_stderr() {
        let err = output(1, "\nconnection refused\n").ok();
        assert_eq!(
            err,
            Err(Error::failed(
                "`pg_dump` in pod db-0 exited with 1: connection refused"
            ))
        );
        let long = format!("{}END", "é".repeat(STDERR_TAIL_BYTES));
        let Err(Error::Failed(message)) = output(2, &long).ok() else {
            panic!("expected a failure");
        };
        assert!(message.ends_with("END"));
        assert!(message.contains('…'));
        assert!(message.len() < STDERR_TAIL_BYTES + 64);
        assert_eq!(
            output(3, "").ok(),
            Err(Error::failed("`pg_dump` in pod db-0 exited with 3"))
        );
    }

    #[test]
    fn lossy_text() {
        let out = output(0, "warn");
        assert_eq!(out.stdout_str(), "out\u{fffd}\n");
        assert_eq!(out.stderr_str(), "warn");
    }
}
