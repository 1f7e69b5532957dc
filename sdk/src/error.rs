use std::fmt;

use crate::wit::types;

/// A `Result` whose error is the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error a host call returned or an action reports, mirroring the WIT `error` variant.
///
/// Every variant carries a message for people. An action that returns an error fails; the
/// runtime shows the variant and the message, and a posthook sees it in
/// [`Context::failure`](crate::Context::failure).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The capability or scope check refused the call; the message names what is missing.
    #[error("denied: {0}")]
    Denied(String),
    /// The object (workload, pod, container, snapshot, artifact, secret, parameter) does not
    /// exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// An argument was malformed or out of range.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The call ran past its deadline.
    #[error("timed out: {0}")]
    TimedOut(String),
    /// Anything else went wrong; the message says what.
    #[error("failed: {0}")]
    Failed(String),
}

impl Error {
    /// An [`Error::Denied`].
    pub fn denied(message: impl Into<String>) -> Self {
        Self::Denied(message.into())
    }

    /// An [`Error::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    /// An [`Error::Invalid`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    /// An [`Error::TimedOut`].
    pub fn timed_out(message: impl Into<String>) -> Self {
        Self::TimedOut(message.into())
    }

    /// An [`Error::Failed`].
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }

    /// The answer of `run()` to an action it does not handle: an [`Error::Invalid`] naming
    /// it. The runtime (and `FakeHost`) run only actions `describe()` declares, so this says
    /// that one is declared but not handled.
    pub fn unknown_action(action: &str) -> Self {
        Self::invalid(format!(
            "this blueprint's run() does not handle the action `{action}`, which its describe() \
             declares: add a match arm for it in run(), or drop it from describe()"
        ))
    }

    /// The message, without the variant.
    pub fn message(&self) -> &str {
        match self {
            Self::Denied(m)
            | Self::NotFound(m)
            | Self::Invalid(m)
            | Self::TimedOut(m)
            | Self::Failed(m) => m,
        }
    }

    /// The same kind of error, its message prefixed with what was being done:
    /// `failed: dumping orders: …`.
    #[must_use]
    pub fn context(self, doing: impl fmt::Display) -> Self {
        self.map_message(|m| format!("{doing}: {m}"))
    }

    /// The same kind of error, with `note` after its message: `failed: …; the database is
    /// dropped again`.
    #[must_use]
    pub fn note(self, note: impl fmt::Display) -> Self {
        self.map_message(|m| format!("{m}; {note}"))
    }

    /// The same kind of error with its message passed through `f`.
    pub(crate) fn map_message(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            Self::Denied(m) => Self::Denied(f(m)),
            Self::NotFound(m) => Self::NotFound(f(m)),
            Self::Invalid(m) => Self::Invalid(f(m)),
            Self::TimedOut(m) => Self::TimedOut(f(m)),
            Self::Failed(m) => Self::Failed(f(m)),
        }
    }
}

impl From<types::Error> for Error {
    fn from(e: types::Error) -> Self {
        match e {
            types::Error::Denied(m) => Self::Denied(m),
            types::Error::NotFound(m) => Self::NotFound(m),
            types::Error::Invalid(m) => Self::Invalid(m),
            types::Error::TimedOut(m) => Self::TimedOut(m),
            types::Error::Failed(m) => Self::Failed(m),
        }
    }
}

impl From<Error> for types::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Denied(m) => Self::Denied(m),
            Error::NotFound(m) => Self::NotFound(m),
            Error::Invalid(m) => Self::Invalid(m),
            Error::TimedOut(m) => Self::TimedOut(m),
            Error::Failed(m) => Self::Failed(m),
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        let kind = match e {
            Error::Denied(_) => std::io::ErrorKind::PermissionDenied,
            Error::NotFound(_) => std::io::ErrorKind::NotFound,
            Error::Invalid(_) => std::io::ErrorKind::InvalidInput,
            Error::TimedOut(_) => std::io::ErrorKind::TimedOut,
            Error::Failed(_) => std::io::ErrorKind::Other,
        };
        Self::new(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_kind_and_the_message() {
        assert_eq!(
            Error::denied("exec not granted").to_string(),
            "denied: exec not granted"
        );
        assert_eq!(
            Error::not_found("pod db-0").to_string(),
            "not found: pod db-0"
        );
        assert_eq!(Error::timed_out("pg_dump").message(), "pg_dump");
    }

    #[test]
    fn context_keeps_the_kind() {
        let e = Error::timed_out("after 30s").context("dumping orders");
        assert_eq!(e, Error::TimedOut("dumping orders: after 30s".into()));
    }

    #[test]
    fn converts_both_ways_with_the_wit_variant() {
        for e in [
            Error::denied("a"),
            Error::not_found("b"),
            Error::invalid("c"),
            Error::timed_out("d"),
            Error::failed("e"),
        ] {
            let wit: types::Error = e.clone().into();
            assert_eq!(Error::from(wit), e);
        }
    }

    #[test]
    fn io_errors_keep_a_matching_kind() {
        let io: std::io::Error = Error::not_found("artifact").into();
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(io.to_string(), "not found: artifact");
    }

    #[test]
    fn unknown_action_is_invalid() {
        assert!(
            matches!(Error::unknown_action("frobnicate"), Error::Invalid(m) if m.contains("`frobnicate`"))
        );
    }
}
