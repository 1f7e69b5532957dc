//! `cairn:blueprint/log`: always granted, bounded by the phase's log budget.

use crate::bindings::log::{self, Level};
use crate::events::{LogLevel, Progress};
use crate::state::HostState;

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
        let message = progress.message.map(|m| m.chars().take(1024).collect());
        self.log.progress(Progress {
            percent,
            bytes_done: progress.bytes_done,
            bytes_total: progress.bytes_total,
            message,
        });
        Ok(())
    }
}
