//! The crate's error type.

use std::fmt;

/// What went wrong in a repository operation.
///
/// Every variant says what failed and on which object; the `Display` text is meant to be shown
/// to a user as it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The repository URL or an option is malformed or names an unsupported scheme.
    #[error("invalid repository location {url:?}: {reason}")]
    InvalidLocation {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// No repository exists at the location (no `config` object).
    #[error("no repository at {url}: run `cairn repo init` first")]
    NotARepository {
        /// The repository URL.
        url: String,
    },
    /// `init` found an existing repository.
    #[error("a repository already exists at {url}")]
    AlreadyInitialised {
        /// The repository URL.
        url: String,
    },
    /// The repository was written by a newer (or unknown) format version.
    #[error(
        "repository format version {found} is not supported (this build reads versions up to {supported}); upgrade cairn"
    )]
    UnsupportedVersion {
        /// The version found in `config`.
        found: u32,
        /// The newest version this build understands.
        supported: u32,
    },
    /// No key slot opens with the passphrase given.
    #[error("wrong passphrase: no key slot of this repository opens with it")]
    WrongPassphrase,
    /// No key slot opens with the key provider given (key file, environment, KMS...).
    #[error("wrong key: no key slot of this repository opens with the {provider} key")]
    WrongKey {
        /// The provider kind, e.g. `key-file`.
        provider: String,
    },
    /// Removing this key slot would leave the repository without any working key.
    #[error("refusing to remove key slot {slot}: it is the last key of the repository")]
    LastKey {
        /// The slot id.
        slot: String,
    },
    /// A named object (snapshot, key slot) does not exist.
    #[error("{kind} {id} not found")]
    NotFound {
        /// What was looked for (`snapshot`, `key slot`...).
        kind: &'static str,
        /// The id or prefix given.
        id: String,
    },
    /// A snapshot id prefix matches more than one snapshot.
    #[error("snapshot id prefix {prefix} is ambiguous; give more characters")]
    Ambiguous {
        /// The prefix given.
        prefix: String,
    },
    /// An object failed authentication, decoding or hash verification.
    #[error("object {object} is damaged: {reason}{}", affected_text(.snapshots))]
    Corrupt {
        /// The object path in the repository, e.g. `data/3f/3f2a…`.
        object: String,
        /// What check failed.
        reason: String,
        /// Snapshots that reference the damaged data, when known.
        snapshots: Vec<String>,
    },
    /// An object the repository needs is missing.
    #[error("object {object} is missing{}", affected_text(.snapshots))]
    Missing {
        /// The object path (or the chunk id when no pack is known for it).
        object: String,
        /// Snapshots that reference the missing data, when known.
        snapshots: Vec<String>,
    },
    /// The object is inside the repository's protection period and may not be deleted or
    /// overwritten.
    #[error("object {object} is protected until {until} and cannot be deleted or overwritten")]
    Protected {
        /// The object path.
        object: String,
        /// The end of its protection (RFC 3339).
        until: String,
    },
    /// Another process holds a conflicting lock.
    #[error("repository is locked by {holder}: {reason}")]
    Locked {
        /// Who holds the lock (host, pid, operation).
        holder: String,
        /// Why the operation cannot proceed.
        reason: String,
    },
    /// The backup was dropped or cancelled before it was finished.
    #[error("the backup was aborted before it was finished; no snapshot was written")]
    Aborted,
    /// Reading or writing local files failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The local path.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The object store failed.
    #[error("object store {op} {object}: {source}")]
    Store {
        /// What was being done.
        op: &'static str,
        /// The object path.
        object: String,
        /// The underlying error.
        #[source]
        source: object_store::Error,
    },
    /// A key provider failed for a reason other than a wrong key.
    #[error("key provider {provider}: {reason}")]
    KeyProvider {
        /// The provider kind.
        provider: String,
        /// What failed.
        reason: String,
    },
    /// Invalid arguments to an operation.
    #[error("{0}")]
    Invalid(String),
}

fn affected_text(snapshots: &[String]) -> String {
    if snapshots.is_empty() {
        String::new()
    } else {
        format!("; affected snapshots: {}", snapshots.join(", "))
    }
}

impl Error {
    pub(crate) fn store(
        op: &'static str,
        object: impl fmt::Display,
        source: object_store::Error,
    ) -> Self {
        Error::Store {
            op,
            object: object.to_string(),
            source,
        }
    }
    pub(crate) fn io(
        op: &'static str,
        path: impl AsRef<std::path::Path>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            op,
            path: path.as_ref().display().to_string(),
            source,
        }
    }
    pub(crate) fn corrupt(object: impl fmt::Display, reason: impl fmt::Display) -> Self {
        Error::Corrupt {
            object: object.to_string(),
            reason: reason.to_string(),
            snapshots: Vec::new(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
