//! The per-phase store data: what one guest instance can reach, and what it has used.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::capability::Capability;
use crate::events::{Event, EventKind, EventSink, LogLevel, Progress};
use crate::exports::References;
use crate::host::session::Sessions;
use crate::limits::{Limits, MAX_LOG_LINE, human_bytes};
use crate::run::HostContext;

/// The largest table a guest may grow (function references); far above what a blueprint
/// needs, far below what would strain the host.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// What a phase runs as: its identity, scope, grants and limits. Shared, immutable.
#[derive(Debug)]
pub(crate) struct ActionCtx {
    pub action_id: String,
    pub phase: String,
    /// The blueprint's digest (`sha256:…`).
    pub blueprint: String,
    /// The name the blueprint gives itself in `describe()`; empty while `describe()` runs.
    pub blueprint_name: String,
    pub namespace: String,
    pub workload: Option<String>,
    /// What the phase may use: the capabilities granted that the blueprint declares.
    pub grants: BTreeSet<Capability>,
    /// The capabilities the blueprint declares, for the message of a call to another.
    pub declared: BTreeSet<Capability>,
    pub secrets: BTreeMap<String, String>,
    /// Those of `secrets` to keep out of logs, errors and outputs, made once per run.
    pub hidden: Arc<Secrets>,
    pub limits: Limits,
    /// How long this phase may run.
    pub deadline: std::time::Duration,
    /// `None` while `describe()` runs at load time: it may only log.
    pub host: Option<HostContext>,
    /// The run's exec sessions, shared by its phases.
    pub sessions: Arc<Sessions>,
    /// The export references the run was given or wrote, shared by its phases.
    pub references: Arc<References>,
    /// The volume snapshots the run has taken and not deleted, by id: waited on until ready
    /// to restore from once the run's phases are done (the workload released by then).
    pub taken: Arc<Mutex<Vec<String>>>,
    /// Volume snapshots the run has taken, deleted ones included (bounded per run).
    pub snapshots_taken: Arc<std::sync::atomic::AtomicUsize>,
    /// The volume snapshots the run took and then deleted, by id (at most as many as it may
    /// take): an artifact naming one is refused, as a restore point recording it would name
    /// data that is gone.
    pub deleted_snapshots: Arc<Mutex<Vec<String>>>,
    /// Exports the run has opened, finished or not (bounded per run).
    pub exports_opened: Arc<std::sync::atomic::AtomicUsize>,
}

/// The store's data.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: MemoryLimiter,
    pub action: Arc<ActionCtx>,
    pub log: LogCapture,
    pub deadline: Instant,
    /// Set by the epoch callback when it stopped the guest at its deadline.
    pub deadline_hit: bool,
    /// Export names opened so far in this phase (they must be unique).
    pub export_names: HashSet<String>,
    /// Export and import streams open now (at most [`crate::limits::MAX_OPEN_STREAMS`]).
    pub open_streams: usize,
    /// Refused or failed calls recorded in the audit log so far in this phase.
    pub audited_refusals: usize,
    /// Calls recorded in the audit log so far in this phase, whatever their outcome.
    pub audited_calls: usize,
    /// Values recorded with `log.checkpoint`, in order: the phase's outputs even if it stops.
    pub checkpoints: Vec<(String, String)>,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("action", &self.action.action_id)
            .finish_non_exhaustive()
    }
}

impl HostState {
    pub(crate) fn new(action: Arc<ActionCtx>, sink: EventSink, deadline: Instant) -> HostState {
        let log = LogCapture::new(&action, sink);
        let mut wasi = WasiCtx::builder();
        // Nothing is granted: no preopens, environment, arguments or network. Only stdout and
        // stderr exist, and they go to the action's log.
        wasi.stdout(log.stream(LogLevel::Info))
            .stderr(log.stream(LogLevel::Warn))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(
                |_, _| -> Pin<Box<dyn Future<Output = bool> + Send + Sync>> {
                    Box::pin(async { false })
                },
            );
        HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                cap: action.limits.memory,
                rejected: None,
            },
            log,
            action,
            deadline,
            deadline_hit: false,
            export_names: HashSet::new(),
            open_streams: 0,
            audited_refusals: 0,
            audited_calls: 0,
            checkpoints: Vec::new(),
        }
    }

    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps each linear memory and remembers a refusal, so the run can say why the guest died.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    cap: usize,
    /// The size the guest asked for when it was refused.
    pub rejected: Option<usize>,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.rejected = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// The action's log: `log` calls and guest stdout/stderr lines, bounded by
/// [`Limits::log_bytes`]. Shared with the WASI output streams.
#[derive(Clone)]
pub(crate) struct LogCapture {
    inner: Arc<Mutex<LogInner>>,
    sink: EventSink,
    action_id: Arc<str>,
    phase: Arc<str>,
    /// The run's secrets, blanked out of every line.
    secrets: Arc<Secrets>,
}

struct LogInner {
    used: usize,
    /// What progress reports have used of their budget (as large as the log's).
    progress_used: usize,
    /// Whether the notice that progress reports are dropped went out.
    progress_spent: bool,
    /// Whether a report of 100 % went out past the budget.
    progress_done: bool,
    cap: usize,
    truncated: bool,
    dropped: u64,
    partial: [Vec<u8>; 2],
    /// The first line that looks like a Rust panic message, for the trap report.
    panic: Option<String>,
}

impl LogCapture {
    fn new(action: &ActionCtx, sink: EventSink) -> LogCapture {
        LogCapture {
            inner: Arc::new(Mutex::new(LogInner {
                used: 0,
                progress_used: 0,
                progress_spent: false,
                progress_done: false,
                cap: action.limits.log_bytes,
                truncated: false,
                dropped: 0,
                partial: [Vec::new(), Vec::new()],
                panic: None,
            })),
            sink,
            action_id: action.action_id.as_str().into(),
            phase: action.phase.as_str().into(),
            secrets: action.hidden.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Logs one line, unless the budget is spent (then says so, once).
    pub(crate) fn line(&self, level: LogLevel, message: &str) {
        let message = self.secrets.shown_line(message, MAX_LOG_LINE, "line");
        let notice = {
            let mut inner = self.lock();
            if inner.truncated {
                inner.dropped += 1;
                return;
            }
            if inner.used + message.len() > inner.cap {
                inner.truncated = true;
                inner.dropped += 1;
                Some(format!(
                    "log truncated: this phase reached its log limit of {}; further lines are dropped",
                    human_bytes(inner.cap as u64)
                ))
            } else {
                inner.used += message.len();
                None
            }
        };
        match notice {
            Some(notice) => self.emit(LogLevel::Warn, notice),
            None => self.emit(level, message),
        }
    }

    /// Reports progress, within a budget of its own as large as the log's: a loop of reports
    /// is bounded as a loop of log lines is (once it is spent, reports are dropped, said once,
    /// except one that says the phase is done, so a progress bar does not stop short), and a
    /// phase that logged its fill still reports its progress.
    pub(crate) fn progress(&self, mut progress: Progress) {
        let notice = {
            let mut inner = self.lock();
            let cost = 32
                + progress
                    .message
                    .as_ref()
                    .map_or(0, |m| m.len().min(MAX_PROGRESS));
            if inner.progress_used + cost <= inner.cap {
                inner.progress_used += cost;
                None
            } else if progress.percent.is_some_and(|p| p >= 100.0) && !inner.progress_done {
                // One: a loop of them would be the flood the budget stops.
                inner.progress_done = true;
                progress.message = None;
                None
            } else if inner.progress_spent {
                return;
            } else {
                inner.progress_spent = true;
                Some(format!(
                    "progress reports dropped: this phase reached their limit of {}; the last \
                     (100 %) is still shown",
                    human_bytes(inner.cap as u64)
                ))
            }
        };
        if let Some(notice) = notice {
            self.emit(LogLevel::Warn, notice);
            return;
        }
        progress.message = progress
            .message
            .map(|m| self.secrets.shown_line(&m, MAX_PROGRESS, "message"));
        tracing::info!(
            target: "cairn::guest",
            action_id = %self.action_id, phase = %self.phase,
            percent = ?progress.percent, bytes_done = ?progress.bytes_done, bytes_total = ?progress.bytes_total,
            message = progress.message.as_deref().unwrap_or(""),
            "progress"
        );
        self.sink.emit(Event {
            action_id: self.action_id.to_string(),
            phase: self.phase.to_string(),
            kind: EventKind::Progress(progress),
        });
    }

    fn emit(&self, level: LogLevel, message: String) {
        let (a, p) = (&*self.action_id, &*self.phase);
        match level {
            LogLevel::Trace => {
                tracing::trace!(target: "cairn::guest", action_id = %a, phase = %p, "{message}")
            }
            LogLevel::Debug => {
                tracing::debug!(target: "cairn::guest", action_id = %a, phase = %p, "{message}")
            }
            LogLevel::Info => {
                tracing::info!(target: "cairn::guest", action_id = %a, phase = %p, "{message}")
            }
            LogLevel::Warn => {
                tracing::warn!(target: "cairn::guest", action_id = %a, phase = %p, "{message}")
            }
            LogLevel::Error => {
                tracing::error!(target: "cairn::guest", action_id = %a, phase = %p, "{message}")
            }
        }
        self.sink.emit(Event {
            action_id: self.action_id.to_string(),
            phase: self.phase.to_string(),
            kind: EventKind::Log { level, message },
        });
    }

    /// The run's secrets, for what else must not carry them.
    pub(crate) fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// Whether the log was truncated, and how many lines were dropped.
    pub(crate) fn truncated(&self) -> Option<u64> {
        let inner = self.lock();
        inner.truncated.then_some(inner.dropped)
    }

    /// The panic message the guest printed, if any.
    pub(crate) fn panic_message(&self) -> Option<String> {
        self.lock().panic.clone()
    }

    /// Logs what the guest wrote to stdout or stderr after its last newline, once the phase
    /// has ended: a last `print!` is not lost.
    pub(crate) fn flush_partial(&self) {
        let rest: Vec<(LogLevel, String)> = {
            let mut inner = self.lock();
            [LogLevel::Info, LogLevel::Warn]
                .into_iter()
                .zip(inner.partial.iter_mut())
                .filter(|(_, p)| !p.is_empty())
                .map(|(level, p)| {
                    (
                        level,
                        String::from_utf8_lossy(&std::mem::take(p)).into_owned(),
                    )
                })
                .collect()
        };
        for (level, line) in rest {
            self.line(level, &line);
        }
    }

    /// Bytes written by the guest to stdout (`Info`) or stderr (`Warn`), split into lines.
    fn write_stdio(&self, level: LogLevel, bytes: &[u8]) {
        let idx = usize::from(level != LogLevel::Info);
        let mut lines = Vec::new();
        // What a line keeps before it is cut: a secret running past the cut is kept whole, so
        // that it is blanked before the line is cut (not shown in part).
        let keep = MAX_LOG_LINE + 1 + self.secrets.longest();
        {
            let mut inner = self.lock();
            if inner.truncated {
                inner.dropped += bytes.iter().filter(|b| **b == b'\n').count() as u64;
                return;
            }
            let partial = &mut inner.partial[idx];
            for &b in bytes {
                if b == b'\n' {
                    // A CRLF line ends without its CR.
                    if partial.last() == Some(&b'\r') {
                        partial.pop();
                    }
                    lines.push(String::from_utf8_lossy(partial).into_owned());
                    partial.clear();
                } else if partial.len() < keep {
                    partial.push(b);
                }
            }
            if idx == 1 && inner.panic.is_none() {
                inner.panic = lines.iter().find(|l| l.contains("panicked at")).cloned();
                if inner.panic.is_some()
                    && let Some(next) = lines
                        .iter()
                        .skip_while(|l| !l.contains("panicked at"))
                        .nth(1)
                {
                    // Rust prints the location, then the message on the next line.
                    inner.panic = Some(next.clone());
                }
            }
        }
        for line in lines {
            // std's advice after a panic or an allocation failure: a guest has no environment
            // to set it in.
            if idx == 1 && line.starts_with("note: run with `RUST_BACKTRACE=1`") {
                continue;
            }
            self.line(level, &line);
        }
    }

    /// A WASI output stream that writes into this log at `level`.
    fn stream(&self, level: LogLevel) -> StdioLog {
        StdioLog {
            log: self.clone(),
            level,
        }
    }
}

pub(crate) use cairn_contract::Secrets;

/// How the host shows a blueprint's text with a run's [`Secrets`] kept out of it.
pub(crate) trait Blanked {
    /// `text` cut to at most about `max` bytes, then its secrets blanked: the cut is moved back
    /// to the start of a secret it would split, so no part of one shows; `what` names what
    /// was cut in the note that says so.
    fn cut_clear(&self, text: &str, max: usize, what: &str) -> String;

    /// `text` as one line of the operator's output: cut and its secrets blanked
    /// ([`Blanked::cut_clear`]) while it is as the blueprint wrote it, so a secret holding a
    /// newline is still found, then its control characters escaped.
    fn shown_line(&self, text: &str, max: usize, what: &str) -> String {
        controls_escaped(self.cut_clear(text, max, what))
    }
}

impl Blanked for Secrets {
    fn cut_clear(&self, text: &str, max: usize, what: &str) -> String {
        if text.len() <= max {
            return self.redact(text).into_owned();
        }
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        for (_, value) in self.values() {
            for (at, _) in text.match_indices(value) {
                if at < end && at + value.len() > end {
                    end = at;
                }
            }
        }
        format!(
            "{}… [{what} cut at {}]",
            self.redact(&text[..end]),
            human_bytes(max as u64)
        )
    }
}

/// The longest progress message kept (bytes).
const MAX_PROGRESS: usize = 1024;

/// `text` as one line of the operator's output ([`cairn_contract::controls_escaped`]).
pub(crate) fn controls_escaped(text: String) -> String {
    match cairn_contract::controls_escaped(&text) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(escaped) => escaped,
    }
}

/// `text` whole when it is at most `max` bytes, else its first `max` (at a character's
/// boundary) and a note that says the `what` was cut.
pub(crate) fn cut(text: &str, max: usize, what: &str) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… [{what} cut at {}]",
        &text[..end],
        human_bytes(max as u64)
    )
}

/// How many bytes a guest may hand over in one stdout or stderr write.
const STDIO_WRITE_PERMIT: usize = 64 << 10;

/// Guest stdout or stderr, forwarded line by line to the log.
#[derive(Clone)]
struct StdioLog {
    log: LogCapture,
    level: LogLevel,
}

impl IsTerminal for StdioLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StdioLog {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    /// Writes straight into the log on the guest's own thread. The default adapter hands
    /// every write to a background task and waits for it, two thread hand-offs per line: a
    /// guest printing 100 MB spent 16 s of a 20 s deadline in them.
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for StdioLog {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.log.write_stdio(self.level, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(STDIO_WRITE_PERMIT)
    }
}

#[async_trait::async_trait]
impl Pollable for StdioLog {
    /// Always ready: a write never waits.
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for StdioLog {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.log.write_stdio(self.level, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cut_never_shows_part_of_a_secret() {
        let secrets = secrets(&[("token", "abcdefgh")], &[]);
        let text = format!("{}abcdefgh and more", "x".repeat(10));
        let cut = secrets.cut_clear(&text, 14, "line");
        assert!(cut.starts_with("xxxxxxxxxx…"), "{cut}");
        assert!(!cut.contains("abcd"), "{cut}");
        // A secret before the cut is blanked whole, one across it left out.
        let text = format!("abcdefgh{}abcdefgh", "y".repeat(20));
        let cut = secrets.cut_clear(&text, 32, "line");
        assert!(cut.starts_with("[secret token]yyyy"), "{cut}");
        assert!(!cut.contains("abcd"), "{cut}");
    }

    /// A secret that holds a newline (a key file) is blanked before the line's control
    /// characters are escaped, which would otherwise hide it from the search.
    #[test]
    fn a_secret_with_a_newline_is_blanked_in_a_line() {
        let secrets = secrets(&[("key", "-----BEGIN\nsecret body\n-----END")], &[]);
        let shown = secrets.shown_line("key: -----BEGIN\nsecret body\n-----END\n", 1024, "line");
        assert_eq!(shown, "key: [secret key]\\n");
    }

    #[test]
    fn a_blueprints_line_stays_one_line_of_plain_text() {
        assert_eq!(super::controls_escaped("plain\ttab".into()), "plain\ttab");
        assert_eq!(
            super::controls_escaped("two\nlines\r\u{1b}[2J".into()),
            "two\\nlines\\r\\u{1b}[2J"
        );
        assert_eq!(
            super::controls_escaped("safe\u{202e}txt.exe".into()),
            "safe\\u{202e}txt.exe",
            "a right-to-left override"
        );
    }

    use super::*;

    fn secrets(pairs: &[(&str, &str)], public: &[&str]) -> Secrets {
        let map = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let public: Vec<String> = public.iter().map(|p| (*p).to_owned()).collect();
        Secrets::of(&map, &public)
    }

    #[test]
    fn secrets_are_hidden_unless_too_short_or_public_already() {
        let s = secrets(
            &[
                ("pw", "hunter22"),
                ("pin", "42"),
                ("user-pw", "postgres"),
                ("k", "hunter2"),
            ],
            &["postgres"],
        );
        // The longer of two overlapping secrets is blanked whole.
        assert_eq!(s.redact("login hunter22 ok"), "login [secret pw] ok");
        assert_eq!(s.redact("hunter2!"), "[secret k]!");
        // Too short to find, or a parameter's value already: left alone.
        assert_eq!(
            s.redact("answer 42, user postgres"),
            "answer 42, user postgres"
        );
        assert_eq!(s.held_by("db://app:hunter22@host"), Some("pw"));
        assert_eq!(s.held_by("user=postgres"), None);
        assert_eq!(s.held_by("42"), None);
    }
}
