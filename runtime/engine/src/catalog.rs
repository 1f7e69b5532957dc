//! What the host offers the DR blueprint through `cairn:blueprint/catalog` (capability
//! [`Capability::Catalog`](crate::Capability::Catalog)): consistent reads and writes of the
//! runtime's catalog store. The runtime implements [`CatalogAccess`] over its catalog; the
//! engine checks the grant, moves the bytes between the store and the export and import
//! streams, and audits every call. The DR logic itself lives in the blueprint.

use std::fmt;

/// A mode of Cairn's disaster recovery (the WIT `dr-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DrMode {
    /// Local catalog snapshot, minimal data exported incrementally.
    LocalSnapshot,
    /// As `LocalSnapshot`, plus the snapshot's data.
    ExportedSnapshot,
    /// Minimal data only.
    NoSnapshot,
    /// A full copy each run.
    Legacy,
}

/// The instance's DR state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrState {
    /// The cluster id.
    pub cluster_id: String,
    /// The mode the DR policy set.
    pub mode: DrMode,
    /// How far DR has exported.
    pub cursor: Option<u64>,
    /// The catalog's current change sequence.
    pub current_seq: u64,
}

/// A local catalog snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogSnapshot {
    /// Its id.
    pub id: String,
    /// The change sequence it was cut at.
    pub seq: u64,
    /// Records in it.
    pub records: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

/// An encoded export of catalog data, and what it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogExport {
    /// The encoded bytes the host writes into the export stream.
    pub bytes: Vec<u8>,
    /// The cursor it starts after.
    pub from_seq: u64,
    /// The sequence it reaches.
    pub to_seq: u64,
    /// Changes (or records) in it.
    pub changes: u64,
    /// Whether it is a full copy.
    pub full: bool,
}

/// What applying a DR artifact did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogApplied {
    /// Changes written.
    pub applied: u64,
    /// Changes skipped.
    pub skipped: u64,
    /// The source sequence the applied data reaches.
    pub to_seq: u64,
}

/// Why a catalog call failed, as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CatalogError {
    /// A malformed argument or artifact (a bad delta, a gap, a non-empty catalog).
    Invalid(String),
    /// No such snapshot.
    NotFound(String),
    /// Anything else.
    Failed(String),
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(m) | Self::NotFound(m) | Self::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CatalogError {}

/// The runtime's catalog, as the `catalog` interface reaches it. Calls may block (they read
/// and write the store); the engine runs them off the async workers.
pub trait CatalogAccess: Send + Sync + fmt::Debug {
    /// The DR state.
    fn state(&self) -> Result<DrState, CatalogError>;
    /// Takes a local, consistent snapshot of the whole store.
    fn take_snapshot(&self) -> Result<CatalogSnapshot, CatalogError>;
    /// The minimal data `mode` exports that changed after `since`, from the snapshot `snapshot`
    /// when given, else from the live catalog.
    fn export_changes(
        &self,
        since: u64,
        mode: DrMode,
        snapshot: Option<&str>,
    ) -> Result<CatalogExport, CatalogError>;
    /// The data only a catalog snapshot carries (actions, local restore points) that changed
    /// in the snapshot `snapshot` after `since`.
    fn export_snapshot(&self, snapshot: &str, since: u64) -> Result<CatalogExport, CatalogError>;
    /// A full copy of what the legacy mode protects.
    fn export_full(&self) -> Result<CatalogExport, CatalogError>;
    /// Stores the DR cursor.
    fn advance_cursor(&self, to: u64) -> Result<(), CatalogError>;
    /// Applies one encoded DR artifact.
    fn apply(&self, bytes: &[u8]) -> Result<CatalogApplied, CatalogError>;
    /// Applies the snapshot-only data (actions, local restore points) of the local snapshot
    /// `snapshot` to the catalog being restored; [`CatalogError::NotFound`] when this instance
    /// does not hold it.
    fn apply_local_snapshot(&self, snapshot: &str) -> Result<CatalogApplied, CatalogError>;
}
