use crate::wit::bindings::cairn::blueprint::log as wit;

/// How much a log line matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// Step-by-step detail.
    Trace,
    /// Detail for whoever debugs the blueprint.
    Debug,
    /// What the action is doing.
    Info,
    /// Something unexpected that the action works around.
    Warn,
    /// Something failed.
    Error,
}

impl From<Level> for wit::Level {
    fn from(l: Level) -> Self {
        match l {
            Level::Trace => Self::Trace,
            Level::Debug => Self::Debug,
            Level::Info => Self::Info,
            Level::Warn => Self::Warn,
            Level::Error => Self::Error,
        }
    }
}

/// Writes one log line. The macros [`info!`](crate::info) and friends format and call this.
///
/// Always allowed; the host caps the volume (a flood is truncated, and the host says so once).
/// Off `wasm32`, the line goes to stderr.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    wit::log(level.into(), message);
    #[cfg(not(target_arch = "wasm32"))]
    if !crate::testing::log(level, message) {
        eprintln!("[{level:?}] {message}");
    }
}

/// Progress of the running action; the host renders whatever fields are set.
///
/// ```
/// use cairn_sdk::Progress;
///
/// let halfway = Progress::percent(50.0).message("dumping orders");
/// let copied = Progress::bytes(4 << 20, Some(16 << 20));
/// let note = Progress::new().message("waiting for replicas");
/// # let _ = (halfway, copied, note);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    percent: Option<f32>,
    bytes_done: Option<u64>,
    bytes_total: Option<u64>,
    message: Option<String>,
}

impl Progress {
    /// Nothing set yet; add a [`message`](Self::message).
    pub fn new() -> Self {
        Self::default()
    }

    /// `percent` done, clamped to 0–100.
    pub fn percent(percent: f32) -> Self {
        Self {
            percent: Some(if percent.is_nan() {
                0.0
            } else {
                percent.clamp(0.0, 100.0)
            }),
            ..Self::default()
        }
    }

    /// `done` bytes out of `total`, when known.
    pub fn bytes(done: u64, total: Option<u64>) -> Self {
        Self {
            bytes_done: Some(done),
            bytes_total: total,
            ..Self::default()
        }
    }

    /// Adds a message.
    #[must_use]
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
}

/// `50% dumping orders`, `4194304 of 16777216 bytes`: the fields that are set.
impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(p) = self.percent {
            parts.push(format!("{p}%"));
        }
        match (self.bytes_done, self.bytes_total) {
            (Some(done), Some(total)) => parts.push(format!("{done} of {total} bytes")),
            (Some(done), None) => parts.push(format!("{done} bytes")),
            _ => {}
        }
        parts.extend(self.message.clone());
        f.write_str(&parts.join(" "))
    }
}

impl From<Progress> for wit::Progress {
    fn from(p: Progress) -> Self {
        Self {
            percent: p.percent,
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
            message: p.message,
        }
    }
}

/// Reports progress of the running action. Always allowed; off `wasm32`, it goes to stderr.
pub fn progress(progress: Progress) {
    #[cfg(target_arch = "wasm32")]
    wit::report(&progress.into());
    #[cfg(not(target_arch = "wasm32"))]
    if !crate::testing::log(Level::Info, &format!("progress: {progress}")) {
        eprintln!("[progress] {progress}");
    }
}

/// Pauses the action for `duration` without spinning: the way to wait between polls.
///
/// The host cuts the pause at the phase's deadline, and a phase that reaches its deadline
/// asleep is stopped as timed out, so a poll loop needs no deadline check of its own to stay
/// bounded. Always allowed; off `wasm32`, it sleeps the thread.
pub fn sleep(duration: std::time::Duration) {
    #[cfg(target_arch = "wasm32")]
    wit::sleep(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
    // Under a fake host the pause is recorded, not waited.
    #[cfg(not(target_arch = "wasm32"))]
    if !crate::testing::log(Level::Trace, &format!("sleep {duration:?}")) {
        std::thread::sleep(duration);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_clamped() {
        assert_eq!(Progress::percent(150.0).percent, Some(100.0));
        assert_eq!(Progress::percent(-1.0).percent, Some(0.0));
        assert_eq!(Progress::percent(f32::NAN).percent, Some(0.0));
    }

    #[test]
    fn converts_to_wit() {
        let p: wit::Progress = Progress::bytes(1, Some(2)).message("copying").into();
        assert_eq!(p.bytes_done, Some(1));
        assert_eq!(p.bytes_total, Some(2));
        assert_eq!(p.percent, None);
        assert_eq!(p.message.as_deref(), Some("copying"));
    }

    #[test]
    fn log_and_progress_work_off_wasm() {
        crate::info!("{} + {} = {}", 1, 1, 2);
        crate::error!("no host here");
        progress(Progress::percent(10.0));
        sleep(std::time::Duration::from_millis(1));
    }
}
