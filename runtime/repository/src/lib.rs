//! Cairn's export repository: where backups live when the cluster is gone.
//!
//! A repository is a set of objects in any `object_store` backend (local directory, memory,
//! S3, Azure, GCS). Data is cut into chunks (page-aligned for files databases rewrite in place,
//! content-defined for streams), named by a keyed BLAKE3 hash, deduplicated, compressed with
//! zstd in frames of consecutive new chunks, sealed with AES-256-GCM and packed into pack
//! files with an index. Snapshots are manifests of a tree or a stream. The data key is wrapped
//! in key slots (envelope encryption), so passphrases and key providers rotate without
//! rewriting data. `FORMAT.md` documents the format.
//!
//! Start with [`Repository::open`] (or [`Repository::init`], or
//! [`Repository::open_or_init_local`] for a zero-setup local repository), then
//! [`Repository::stream_writer`] / [`Repository::backup_tree`] to back up and
//! [`Repository::stream_reader`] / [`Repository::restore_tree`] to restore.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cairn_repository::Error> {
//! use cairn_repository::{BackupOptions, Passphrase, Repository};
//! use tokio::io::AsyncWriteExt;
//! let repo = Repository::open("/backups/repo", &Passphrase::new("correct horse")).await?;
//! let mut w = repo.stream_writer("db.sql", BackupOptions::new().tag("nightly")).await?;
//! w.write_all(b"COPY ...").await.map_err(|e| cairn_repository::Error::Invalid(e.to_string()))?;
//! let snapshot = w.finish().await?;
//! println!("{}", snapshot.id);
//! # Ok(()) }
//! ```

mod backend;
mod chunker;
mod copy;
mod crypto;
mod error;
mod format;
mod index;
mod keys;
mod lock;
mod mark;
mod pipeline;
mod repair;
mod repo;
mod restore;
mod retain;
mod retention;
mod stream;
mod tree;
mod xattrs;

pub use backend::{Location, is_url};
pub use chunker::Chunking;
pub use crypto::ChunkId;
pub use error::{Error, Result};
pub use format::{BackupSummary, FORMAT_VERSION, SnapshotInfo, SnapshotKind};
pub use keys::{
    KdfParams, KeyFile, KeyProvider, KeySlotInfo, Passphrase, WrappedKey, write_private,
};
pub use lock::{LOCK_REFRESH, LOCK_STALE_AFTER, LockInfo};
pub use pipeline::{
    DEFAULT_FRAME_BYTES, DEFAULT_PACK_BYTES, DEFAULT_ZSTD_LEVEL, MAX_UPLOADS_IN_FLIGHT,
    TEXT_FRAME_FACTOR,
};
pub use repair::{REPAIRED_TAG, SnapshotRepair};
pub use repo::{
    BackupOptions, CheckReport, DEFAULT_REPACK_UNUSED, DamagedSnapshot, ForgetReport, IndexRepair,
    InitOptions, MAX_PROTECTION, PackRepair, Parent, Problem, PruneOptions, PruneReport, ReadData,
    RepairedPack, RepoStats, Repository, RestoreOptions, RestoreSummary, SnapshotFilter,
    parse_time,
};
pub use retention::{Retention, keep_in_zone, retained};

/// Whether `s` is a whole snapshot id (32 lowercase hex digits), not a prefix or `latest`.
pub fn is_snapshot_id(s: &str) -> bool {
    format::is_id(s)
}
pub use stream::{SnapshotReader, SnapshotWriter};
pub use tree::{
    LEFT_OUT_NAMED, LeftOut, TreeChange, TreeEntry, Unreadable, create_or_beside, star_match,
};

/// Building blocks exposed for the benchmarks only; not a stable API.
#[doc(hidden)]
pub mod bench_internals {
    pub use crate::bench::*;
}
mod bench;

/// A way for the integration tests to write forged or damaged tree snapshots; not a stable
/// API.
#[doc(hidden)]
pub mod test_internals {
    pub use crate::testing::*;
}
mod testing;
