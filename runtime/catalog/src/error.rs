//! The catalog's errors.

use std::fmt;
use std::path::PathBuf;

use uuid::Uuid;

use crate::Kind;

/// What went wrong in the catalog. Each message names the object and says what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file exists but is not a Cairn catalog (another program's file, or another redb
    /// database).
    #[error(
        "{} is not a Cairn catalog ({reason}); check the path (--home), or move the file away to start a new catalog",
        path.display()
    )]
    NotACatalog {
        /// The file.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },

    /// The catalog or DR delta was written with a newer schema than this build understands.
    #[error(
        "{what} has catalog schema version {found}, but this Cairn understands up to {supported}; upgrade Cairn to read it"
    )]
    NewerSchema {
        /// The file or delta.
        what: String,
        /// The version it declares.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },

    /// Another process (or another handle in this one) has the catalog open.
    #[error(
        "the catalog {} is in use by another Cairn process; stop it or use another --home",
        path.display()
    )]
    Locked {
        /// The file.
        path: PathBuf,
    },

    /// The catalog file is damaged: its pages fail their checksums or its structure is invalid.
    #[error(
        "the catalog {} is damaged ({reason}); move it aside (`mv {} {}.damaged`), then restore \
         it from a DR point (`cairn dr restore`)",
        path.display(),
        path.display(),
        path.display()
    )]
    CorruptFile {
        /// The file.
        path: PathBuf,
        /// What the store reported.
        reason: String,
    },

    /// A stored record cannot be read back as what it should be.
    #[error("the {kind} record `{key}` is corrupt: {reason}")]
    Corrupt {
        /// The record's kind.
        kind: Kind,
        /// The record's key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A change-log or meta entry cannot be read back.
    #[error("the catalog's {what} is corrupt: {reason}")]
    CorruptInternal {
        /// Which entry (e.g. `change log entry 42`, `meta key schema-version`).
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A record cannot be encoded as JSON (e.g. a map with non-string keys).
    #[error("cannot encode the {kind} record `{key}`")]
    Encode {
        /// The record's kind.
        kind: Kind,
        /// The record's key.
        key: String,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },

    /// A record key is empty or too long.
    #[error("invalid {kind} key `{key}`: {reason}")]
    InvalidKey {
        /// The kind the key was for.
        kind: Kind,
        /// The key (cut to a readable length).
        key: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A record is larger than [`MAX_RECORD_BYTES`](crate::MAX_RECORD_BYTES).
    #[error(
        "the {kind} record `{key}` is {size} bytes, over the {limit}-byte limit; keep bulk data in the repository"
    )]
    TooLarge {
        /// The record's kind.
        kind: Kind,
        /// The record's key.
        key: String,
        /// Its encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },

    /// A DR delta cannot be decoded or is inconsistent.
    #[error("invalid catalog delta: {reason}")]
    BadDelta {
        /// What is wrong with it.
        reason: String,
    },

    /// A DR delta starts after what this catalog has applied: a delta in between is missing.
    #[error(
        "the catalog delta for {kind} starts at change {from}, but this catalog has applied up to {applied}; apply the missing deltas first, oldest first"
    )]
    DeltaGap {
        /// The first kind found with a gap.
        kind: Kind,
        /// The change sequence this catalog has applied for that kind.
        applied: u64,
        /// Where the delta starts.
        from: u64,
    },

    /// A DR delta comes from another instance than the deltas already applied.
    #[error(
        "the catalog delta comes from cluster {found}, but this catalog is being restored from cluster {expected}; use a fresh --home per source cluster"
    )]
    WrongSource {
        /// The cluster id of the deltas applied so far.
        expected: Uuid,
        /// The cluster id of this delta.
        found: Uuid,
    },

    /// A restore or import targets a catalog that already has records of its own.
    #[error(
        "the catalog {} is not empty (change {seq} recorded); restore into a fresh instance (an empty --home)",
        path.display()
    )]
    NotEmpty {
        /// The file.
        path: PathBuf,
        /// Its current change sequence.
        seq: u64,
    },

    /// `changes_since` was asked for changes older than the tombstones still kept.
    #[error(
        "changes since {since} are no longer complete: deletions up to {horizon} were pruned; export from 0 (a full minimal export) instead"
    )]
    CursorTooOld {
        /// The requested cursor.
        since: u64,
        /// Deletions at or below this sequence were pruned.
        horizon: u64,
    },

    /// A cursor beyond the catalog's current change sequence.
    #[error("cursor {cursor} is beyond the catalog's current change {current}")]
    InvalidCursor {
        /// The cursor given.
        cursor: u64,
        /// The current change sequence.
        current: u64,
    },

    /// The snapshot target already exists; snapshots never overwrite.
    #[error("{} already exists; a catalog snapshot never overwrites a file", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },

    /// A snapshot to refresh belongs to another catalog.
    #[error(
        "{} is a snapshot of cluster {found}, not of this catalog (cluster {expected}); take a new snapshot instead",
        path.display()
    )]
    ForeignSnapshot {
        /// The snapshot file.
        path: PathBuf,
        /// This catalog's cluster id.
        expected: Uuid,
        /// The snapshot's cluster id.
        found: Uuid,
    },

    /// A filesystem operation failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The embedded store failed.
    #[error("catalog store failure while {op}")]
    Store {
        /// What was being done.
        op: &'static str,
        /// The store's error.
        #[source]
        source: StoreError,
    },
}

/// A catalog result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error of the embedded store (redb), kept opaque so the store is not part of the API.
pub struct StoreError(Box<redb::Error>);

impl StoreError {
    pub(crate) fn new(e: impl Into<redb::Error>) -> Self {
        Self(Box::new(e.into()))
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Attaches what was being done to a redb error.
pub(crate) trait StoreContext<T> {
    fn store(self, op: &'static str) -> Result<T>;
}

impl<T, E: Into<redb::Error>> StoreContext<T> for std::result::Result<T, E> {
    fn store(self, op: &'static str) -> Result<T> {
        self.map_err(|e| Error::Store {
            op,
            source: StoreError::new(e),
        })
    }
}
