//! Limits: every bound the engine puts on a blueprint, each a named default.

use std::time::Duration;

use crate::error::Error;

/// How often the epoch advances. A running guest yields to tokio at every tick (so one
/// spinning guest cannot starve other actions on the same thread) and is stopped within one
/// tick of its deadline. 10 ms keeps the ticker's cost negligible and the overshoot small.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The deadline of a phase (prehook, main phase). Long enough for a real dump driven by
/// host-side pipes (the guest only orchestrates), short enough that a stuck blueprint does not
/// hold an application quiesced for hours.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// The longest deadline a phase may be given: a week, past any backup's window.
pub const MAX_DEADLINE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The deadline of a posthook. Posthooks undo what a prehook did (unquiesce, scale back up);
/// they must finish quickly even after the main phase timed out.
pub const DEFAULT_POSTHOOK_DEADLINE: Duration = Duration::from_secs(5 * 60);

/// The timeout of one host call that is not a command (scale, snapshot, get, wait-ready's
/// own bound aside). Epochs cannot interrupt a guest blocked in a host call, so every call has
/// its own bound; it is also never longer than what is left of the phase's deadline.
pub const DEFAULT_HOST_CALL_TIMEOUT: Duration = cairn_cluster::HOST_CALL_BUDGET;

/// The timeout of a command run by exec (or a session) when the guest names none. A command
/// piped to or from an export without a timeout of its own runs as long as its phase: a dump
/// takes as long as its data, and the phase's deadline (`--timeout`) is the user's bound.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The memory cap of one guest. Blueprints orchestrate and never hold bulk data, so a few
/// megabytes are typical; 64 MiB leaves room for JSON parsing of large object lists.
pub const DEFAULT_MEMORY: usize = 64 << 20;

/// The largest memory cap a run may ask for: the size of each slot in the engine's pooling
/// allocator.
pub const MAX_MEMORY: usize = 4 << 30;

/// The cap on captured stdout and on captured stderr of one command (each). Bulk output goes
/// through export streams, never back to the guest.
pub const DEFAULT_EXEC_OUTPUT: usize = 1 << 20;

/// The cap on log volume of one phase (log calls plus guest stdout/stderr). Beyond it lines
/// are dropped and the log says so once.
pub const DEFAULT_LOG_BYTES: usize = 1 << 20;

/// The cap on the outputs a phase returns (names and values of values and artifacts).
/// Outputs are small records (an artifact id, an LSN); anything bigger belongs in an export.
pub const DEFAULT_OUTPUT_BYTES: usize = 1 << 20;

/// The cap on a command's in-memory stdin: it moves small inputs through guest memory; bulk
/// input is piped from an import stream.
pub const MAX_STDIN: usize = 1 << 20;

/// The most of an audit record's target or outcome kept (they may carry what a guest passed).
pub(crate) const MAX_AUDIT_FIELD: usize = 1024;

/// Refused or failed side-effecting calls of one phase recorded in the audit log.
pub(crate) const MAX_AUDITED_REFUSALS: usize = 1000;

/// Side-effecting calls of one phase recorded in the audit log, whatever their outcome. Far
/// more than a backup makes (an exec, a scale, a few exports), few enough that a blueprint
/// repeating a call that succeeds (scaling to the count a workload has) cannot fill the disk
/// through a log that is never rotated.
pub(crate) const MAX_AUDITED_CALLS: usize = 10_000;

/// Export and import streams a phase may hold open at once.
pub const MAX_OPEN_STREAMS: usize = 8;

/// Exports one run may open, finished or not. Each is a repository snapshot with its objects,
/// and the run holds its reference until it ends; a backup has a few (a dump, a WAL segment,
/// the catalog), a per-table or per-database dump some hundreds. Like the cap on a run's
/// volume snapshots, it stops a blueprint opening exports in a loop from filling the
/// repository and the host's memory until its deadline.
pub const MAX_EXPORTS_PER_RUN: usize = 1024;

/// The cap on one `export-stream.write` or `import-stream.read` call: these move small
/// records through guest memory; bulk data is piped on the host side.
pub const MAX_DATA_IO: usize = 1 << 20;

/// The longest log line kept; longer lines are cut (and marked) so one line cannot use the
/// whole log budget.
pub(crate) const MAX_LOG_LINE: usize = 16 << 10;

/// The bounds of one run. Every field defaults to its `DEFAULT_…` constant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    /// The deadline of each phase except posthooks ([`DEFAULT_DEADLINE`]).
    pub deadline: Duration,
    /// The deadline of a posthook ([`DEFAULT_POSTHOOK_DEADLINE`]).
    pub posthook_deadline: Duration,
    /// The timeout of one host call ([`DEFAULT_HOST_CALL_TIMEOUT`]).
    pub host_call_timeout: Duration,
    /// The default timeout of a command ([`DEFAULT_EXEC_TIMEOUT`]).
    pub exec_timeout: Duration,
    /// The guest's memory cap in bytes ([`DEFAULT_MEMORY`], at most [`MAX_MEMORY`]).
    pub memory: usize,
    /// The cap on a command's captured stdout and stderr, each ([`DEFAULT_EXEC_OUTPUT`]).
    pub exec_output: usize,
    /// The cap on log volume per phase ([`DEFAULT_LOG_BYTES`]).
    pub log_bytes: usize,
    /// The cap on a phase's returned outputs ([`DEFAULT_OUTPUT_BYTES`]).
    pub output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: DEFAULT_DEADLINE,
            posthook_deadline: DEFAULT_POSTHOOK_DEADLINE,
            host_call_timeout: DEFAULT_HOST_CALL_TIMEOUT,
            exec_timeout: DEFAULT_EXEC_TIMEOUT,
            memory: DEFAULT_MEMORY,
            exec_output: DEFAULT_EXEC_OUTPUT,
            log_bytes: DEFAULT_LOG_BYTES,
            output_bytes: DEFAULT_OUTPUT_BYTES,
        }
    }
}

impl Limits {
    /// The longest a whole run can take: prehook, main phase and posthook at their deadlines.
    /// Bounds what lives for the run rather than a phase (exec sessions).
    pub(crate) fn run_budget(&self) -> Duration {
        self.deadline
            .saturating_mul(2)
            .saturating_add(self.posthook_deadline)
    }

    /// Checks that the engine can honour these limits.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.memory > MAX_MEMORY {
            return Err(Error::InvalidLimit(format!(
                "memory {} is above the engine's maximum of {}",
                human_bytes(self.memory as u64),
                human_bytes(MAX_MEMORY as u64)
            )));
        }
        if self.memory < (1 << 20) {
            return Err(Error::InvalidLimit(format!(
                "memory {} is below 1 MiB, too small for any component",
                human_bytes(self.memory as u64)
            )));
        }
        if self.deadline.is_zero() || self.posthook_deadline.is_zero() {
            return Err(Error::InvalidLimit(
                "a deadline must be longer than zero".into(),
            ));
        }
        if self.deadline.max(self.posthook_deadline) > MAX_DEADLINE {
            return Err(Error::InvalidLimit(format!(
                "a deadline of {} is longer than the longest a phase may have, {}",
                human_duration(self.deadline.max(self.posthook_deadline)),
                human_duration(MAX_DEADLINE)
            )));
        }
        Ok(())
    }
}

// Shared with the SDK's fake host, whose messages quote them in the same words.
pub(crate) use cairn_contract::{human_bytes, human_duration};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(human_bytes(12), "12 bytes");
        assert_eq!(human_bytes((16 << 20) + 5), "16 MiB");
        assert_eq!(human_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(human_duration(Duration::from_secs(5)), "5s");
        assert_eq!(human_duration(Duration::from_secs(1800)), "30m");
        assert_eq!(human_duration(Duration::from_secs(6 * 3600)), "6h");
        assert_eq!(human_duration(Duration::from_secs(7 * 86_400)), "7d");
    }

    #[test]
    fn deadlines_are_bounded_so_a_deadline_instant_cannot_overflow() {
        assert!(Limits::default().validate().is_ok());
        for (deadline, posthook) in [
            (Duration::MAX, DEFAULT_POSTHOOK_DEADLINE),
            (DEFAULT_DEADLINE, MAX_DEADLINE + Duration::from_secs(1)),
        ] {
            let limits = Limits {
                deadline,
                posthook_deadline: posthook,
                ..Limits::default()
            };
            let err = limits.validate().expect_err("refused").to_string();
            assert!(
                err.contains("longer than the longest a phase may have"),
                "{err}"
            );
        }
        let week = Limits {
            deadline: MAX_DEADLINE,
            ..Limits::default()
        };
        assert!(week.validate().is_ok());
    }
}
