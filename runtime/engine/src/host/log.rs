//! `cairn:blueprint/log`: always granted. Logging is bounded by the phase's log budget,
//! checkpoints by its output limit, sleeping by its deadline.

use std::time::{Duration, Instant};

use crate::bindings::log::{self, Level};
use crate::bindings::{HostResult, WitError};
use crate::events::{LogLevel, Progress};
use crate::limits::human_bytes;
use crate::state::HostState;

/// The longest checkpoint name.
const MAX_CHECKPOINT_NAME: usize = 256;

impl log::Host for HostState {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        self.log.line(level, &message);
        Ok(())
    }

    async fn report(&mut self, progress: log::Progress) -> wasmtime::Result<()> {
        let percent = progress
            .percent
            .filter(|p| p.is_finite())
            .map(|p| p.clamp(0.0, 100.0));
        // Cut after its secrets are blanked, so none is cut in half and shown in part.
        let message = progress.message;
        self.log.progress(Progress {
            percent,
            bytes_done: progress.bytes_done,
            bytes_total: progress.bytes_total,
            message,
        });
        Ok(())
    }

    async fn checkpoint(&mut self, name: String, value: String) -> HostResult<()> {
        Ok(self.record_checkpoint(name, value))
    }

    async fn sleep(&mut self, ms: u64) -> wasmtime::Result<()> {
        // An epoch does not interrupt a guest blocked here: cut the pause at the deadline
        // ourselves, and the guest stops at its next instruction.
        let left = self.deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(Duration::from_millis(ms).min(left)).await;
        Ok(())
    }
}

impl HostState {
    fn record_checkpoint(&mut self, name: String, value: String) -> Result<(), WitError> {
        if self.action.host.is_none() {
            return Err(WitError::Denied(
                "describe() may only log; a checkpoint there is refused".into(),
            ));
        }
        if name.is_empty() || name.len() > MAX_CHECKPOINT_NAME {
            return Err(WitError::Invalid(format!(
                "a checkpoint name must be 1 to {MAX_CHECKPOINT_NAME} bytes long"
            )));
        }
        // A checkpoint is an output value, even of a phase that stops (whose outputs are not
        // checked when it ends): its name passes the checks a returned value's name does, here.
        let shown = cairn_contract::controls_escaped(&name);
        if shown.len() != name.len() {
            return Err(WitError::Invalid(format!(
                "checkpoint `{shown}` has a name holding control characters, which a report \
                 would show to a terminal: name it in plain text"
            )));
        }
        if let Some(secret) = self.log.secrets().held_by(&name) {
            return Err(WitError::Invalid(format!(
                "a checkpoint's name holds secret `{secret}`: checkpoints are kept in the \
                 catalog, so a secret never goes into one"
            )));
        }
        if let Some(secret) = self.log.secrets().held_by(&value) {
            return Err(WitError::Invalid(format!(
                "checkpoint `{name}` holds secret `{secret}`: checkpoints are kept in the \
                 catalog, so a secret never goes into one"
            )));
        }
        let cap = self.action.limits.output_bytes;
        let others: usize = self
            .checkpoints
            .iter()
            .filter(|(k, _)| *k != name)
            .map(|(k, v)| crate::run::ENTRY_COST + k.len() + v.len())
            .sum();
        let total = others + crate::run::ENTRY_COST + name.len() + value.len();
        if total > cap {
            return Err(WitError::Invalid(format!(
                "checkpoint `{name}` would bring this phase's checkpoints to {}, over the output limit of {}; \
                 checkpoint small values and put bulk data in an export",
                human_bytes(total as u64),
                human_bytes(cap as u64)
            )));
        }
        match self.checkpoints.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.checkpoints.push((name, value)),
        }
        Ok(())
    }
}
