//! Cairn's own catalog (capability [`Catalog`](crate::Capability::Catalog)), for the DR
//! blueprint: the runtime grants this capability to its DR runs only.
//!
//! The host offers consistent reads and writes of the catalog store; what to export in each
//! [`DrMode`], the cursor and the order of a recovery are the blueprint's. Exports are written
//! by the host into an [`Export`] and DR artifacts are applied from an [`Import`]: the catalog's
//! bytes never enter the blueprint.
//!
//! ```no_run
//! use cairn_sdk::catalog;
//! use cairn_sdk::data::Export;
//!
//! fn run() -> cairn_sdk::Result<()> {
//!     let state = catalog::state()?;
//!     let since = state.cursor.unwrap_or(0);
//!     let export = Export::open("minimal")?;
//!     let info = catalog::export_changes(since, state.mode, None, &export)?;
//!     export.finish()?;
//!     catalog::advance_cursor(info.to_seq)
//! }
//! ```

use crate::data::{Export, Import};
use crate::wit::bindings::cairn::blueprint::catalog as wit;
use crate::wit::host;
use crate::{Error, Result};

/// A mode of Cairn's disaster recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DrMode {
    /// Take a local catalog snapshot; export the minimal catalog data incrementally.
    LocalSnapshot,
    /// As [`LocalSnapshot`](Self::LocalSnapshot), and export the snapshot's data too.
    ExportedSnapshot,
    /// Export the minimal catalog data incrementally, and nothing else.
    NoSnapshot,
    /// Deprecated: export a full copy of the catalog each run.
    Legacy,
}

impl DrMode {
    /// Every mode.
    pub const ALL: [DrMode; 4] = [
        Self::LocalSnapshot,
        Self::ExportedSnapshot,
        Self::NoSnapshot,
        Self::Legacy,
    ];

    /// The kebab-case name (`local-snapshot`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LocalSnapshot => "local-snapshot",
            Self::ExportedSnapshot => "exported-snapshot",
            Self::NoSnapshot => "no-snapshot",
            Self::Legacy => "legacy",
        }
    }

    /// The mode named `name`.
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == name)
            .ok_or_else(|| Error::invalid(format!("unknown DR mode `{name}`")))
    }

    /// Whether a run of this mode takes a local catalog snapshot.
    pub fn takes_snapshot(self) -> bool {
        matches!(self, Self::LocalSnapshot | Self::ExportedSnapshot)
    }
}

impl std::fmt::Display for DrMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<wit::DrMode> for DrMode {
    fn from(m: wit::DrMode) -> Self {
        match m {
            wit::DrMode::LocalSnapshot => Self::LocalSnapshot,
            wit::DrMode::ExportedSnapshot => Self::ExportedSnapshot,
            wit::DrMode::NoSnapshot => Self::NoSnapshot,
            wit::DrMode::Legacy => Self::Legacy,
        }
    }
}

impl From<DrMode> for wit::DrMode {
    fn from(m: DrMode) -> Self {
        match m {
            DrMode::LocalSnapshot => Self::LocalSnapshot,
            DrMode::ExportedSnapshot => Self::ExportedSnapshot,
            DrMode::NoSnapshot => Self::NoSnapshot,
            DrMode::Legacy => Self::Legacy,
        }
    }
}

/// The instance's DR state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrState {
    /// The instance's cluster id.
    pub cluster_id: String,
    /// The mode the DR policy set.
    pub mode: DrMode,
    /// How far DR has exported (`None`: never, or the mode changed since).
    pub cursor: Option<u64>,
    /// The catalog's current change sequence.
    pub current_seq: u64,
}

/// A local catalog snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// Its id.
    pub id: String,
    /// The change sequence it was cut at.
    pub seq: u64,
    /// How many records it holds.
    pub records: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

/// What an export wrote into a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportInfo {
    /// The cursor it starts after.
    pub from_seq: u64,
    /// The sequence it reaches: the next cursor.
    pub to_seq: u64,
    /// How many changes (or records) it holds.
    pub changes: u64,
    /// Encoded bytes written.
    pub bytes: u64,
    /// Whether it is a full copy.
    pub full: bool,
}

impl From<wit::ExportInfo> for ExportInfo {
    fn from(e: wit::ExportInfo) -> Self {
        Self {
            from_seq: e.from_seq,
            to_seq: e.to_seq,
            changes: e.changes,
            bytes: e.bytes,
            full: e.full,
        }
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Applied {
    /// Changes written.
    pub applied: u64,
    /// Changes skipped (already applied, or unchanged).
    pub skipped: u64,
    /// The source sequence the applied data reaches.
    pub to_seq: u64,
}

impl From<wit::ApplyInfo> for Applied {
    fn from(a: wit::ApplyInfo) -> Self {
        Self {
            applied: a.applied,
            skipped: a.skipped,
            to_seq: a.to_seq,
        }
    }
}

/// The DR state: cluster id, mode, cursor and current sequence.
pub fn state() -> Result<DrState> {
    host("catalog.state", wit::state).map(|s| DrState {
        cluster_id: s.cluster_id,
        mode: s.mode.into(),
        cursor: s.cursor,
        current_seq: s.current_seq,
    })
}

/// Takes a local, consistent snapshot of the catalog store.
pub fn take_snapshot() -> Result<Snapshot> {
    host("catalog.take-snapshot", wit::take_snapshot).map(|s| Snapshot {
        id: s.id,
        seq: s.seq,
        records: s.records,
        bytes: s.bytes,
    })
}

/// Writes into `into` the minimal catalog data `mode` exports that changed after `since`,
/// from the local snapshot `snapshot` when given, else from the live catalog.
pub fn export_changes(
    since: u64,
    mode: DrMode,
    snapshot: Option<&str>,
    into: &Export,
) -> Result<ExportInfo> {
    host("catalog.export-changes", || {
        wit::export_changes(
            since,
            mode.into(),
            snapshot,
            crate::wit::live(into.stream.as_ref())?,
        )
    })
    .map(Into::into)
}

/// Writes into `into` the data only a catalog snapshot carries (actions, local restore
/// points) that changed in the local snapshot `snapshot` after `since`.
pub fn export_snapshot(snapshot: &str, since: u64, into: &Export) -> Result<ExportInfo> {
    host("catalog.export-snapshot", || {
        wit::export_snapshot(snapshot, since, crate::wit::live(into.stream.as_ref())?)
    })
    .map(Into::into)
}

/// Writes into `into` a full copy of what the legacy mode protects.
pub fn export_full(into: &Export) -> Result<ExportInfo> {
    host("catalog.export-full", || {
        wit::export_full(crate::wit::live(into.stream.as_ref())?)
    })
    .map(Into::into)
}

/// Stores the DR cursor; call it after the run's exports are sealed.
pub fn advance_cursor(to: u64) -> Result<()> {
    host("catalog.advance-cursor", || wit::advance_cursor(to))
}

/// Applies the DR artifact `source` (read on the host side) to the catalog being restored.
pub fn apply(source: &Import) -> Result<Applied> {
    host("catalog.apply", || {
        wit::apply(crate::wit::live(source.stream.as_ref())?)
    })
    .map(Into::into)
}

/// Recovery in place: applies the actions and local restore points of the local catalog
/// snapshot `snapshot` to the catalog being restored. [`Error::NotFound`] when this instance
/// does not hold that snapshot (recovery on another instance, or a later run superseded it).
pub fn apply_local_snapshot(snapshot: &str) -> Result<Applied> {
    host("catalog.apply-local-snapshot", || {
        wit::apply_local_snapshot(snapshot)
    })
    .map(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_by_name() {
        for mode in DrMode::ALL {
            assert_eq!(DrMode::parse(mode.as_str()), Ok(mode));
        }
        assert!(DrMode::parse("hourly").is_err());
    }

    #[test]
    #[cfg(not(target_arch = "wasm32"))]
    fn host_calls_fail_cleanly_off_wasm() {
        assert!(matches!(state(), Err(Error::Failed(_))));
        assert!(matches!(advance_cursor(3), Err(Error::Failed(_))));
    }
}
