//! Events: logs and progress from a running blueprint, delivered to the caller as they happen.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A log line's severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LogLevel {
    /// Very detailed.
    Trace,
    /// For the blueprint's author.
    Debug,
    /// For the operator.
    Info,
    /// Something to look at.
    Warn,
    /// Something failed.
    Error,
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        })
    }
}

/// Progress of a running phase; every field is optional.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct Progress {
    /// Percent done, 0 to 100.
    pub percent: Option<f32>,
    /// Bytes done.
    pub bytes_done: Option<u64>,
    /// Bytes in total.
    pub bytes_total: Option<u64>,
    /// What is happening.
    pub message: Option<String>,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A phase started.
    PhaseStarted,
    /// A phase ended.
    PhaseFinished {
        /// Whether it succeeded.
        ok: bool,
        /// How long it ran.
        #[serde(with = "duration_ms")]
        duration: Duration,
        /// Why it failed.
        error: Option<String>,
    },
    /// A log line (from `log`, or a line of the guest's stdout/stderr).
    Log {
        /// Its severity.
        level: LogLevel,
        /// The line.
        message: String,
    },
    /// A progress report.
    Progress(Progress),
}

/// One event of a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct Event {
    /// The run's action id.
    pub action_id: String,
    /// The phase's action name (`backupPrehook`, `backup`, …).
    pub phase: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Where events go: a callback the caller provides (the CLI renders them on stderr). It is
/// called on the engine's tasks and must not block.
#[derive(Clone)]
pub struct EventSink(Arc<dyn Fn(&Event) + Send + Sync>);

impl EventSink {
    /// A sink that calls `f` for every event.
    pub fn new(f: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        EventSink(Arc::new(f))
    }

    /// A sink that drops every event (tracing still sees them).
    pub fn discard() -> Self {
        EventSink::new(|_| {})
    }

    pub(crate) fn emit(&self, event: Event) {
        (self.0)(&event);
    }
}

impl Default for EventSink {
    fn default() -> Self {
        EventSink::discard()
    }
}

impl fmt::Debug for EventSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EventSink")
    }
}

mod duration_ms {
    pub(super) fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}
