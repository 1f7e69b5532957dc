//! Cairn's catalog: what the runtime knows (restore points, actions, policies, profiles,
//! blueprints and the rest), in one embedded, transactional file, with a change log that makes
//! "what changed since N" cheap for Cairn's own disaster recovery.
//!
//! Start with [`Catalog::open`]. The typed helpers ([`Catalog::record_restore_point`],
//! [`Catalog::restore_points`], [`Catalog::record_action`], ...) cover the kinds the runtime
//! writes today; [`Catalog::put`], [`Catalog::get`], [`Catalog::list`] and [`Catalog::delete`]
//! store any [`Kind`] as JSON. [`Catalog::write`] groups changes into one atomic transaction.
//! [`Entry`], [`KindCount`] and every record type are `Serialize`, which is what
//! `cairn catalog ls [KIND] --output json` prints.
//!
//! ```
//! use cairn_catalog::{Catalog, DrMode, Kind, Profile};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let catalog = Catalog::open(dir.path().join("catalog.redb"))?;
//! catalog.record_profile(&Profile {
//!     name: "default".into(),
//!     repository: "file:///var/lib/cairn/repository".into(),
//!     options: Default::default(),
//!     passphrase: Some("env:CAIRN_PASSPHRASE".into()),
//!     key_file: None,
//!     limit_upload: 0,
//!     limit_download: 0,
//! })?;
//! let shown = serde_json::to_string(&catalog.list("profile".parse::<Kind>()?)?)?;
//! assert!(shown.contains(r#""kind":"profile","key":"default""#));
//!
//! // A DR run: what changed since the last cursor, as a compact delta.
//! let delta = catalog.export_minimal(catalog.dr_cursor()?.unwrap_or(0), DrMode::NoSnapshot)?;
//! catalog.set_dr_cursor(delta.to_seq())?;
//! # Ok(())
//! # }
//! ```
//!
//! # The store: redb, not SQLite
//!
//! The catalog is a [redb](https://www.redb.org) database. It is pure
//! Rust, so the one `cairn` binary builds statically and cross-compiles without a C toolchain;
//! ACID, with copy-on-write B-trees, checksummed pages and crash recovery; and MVCC: a read
//! transaction is a consistent view that never blocks the single writer, which is what a
//! catalog snapshot taken while actions keep recording needs ([`Catalog::snapshot_to`] is one
//! read transaction copied out). Typed tables with tuple keys and values fit a store whose
//! every access is by kind and key, or a range scan of the change log by sequence.
//!
//! SQLite (through `rusqlite`) was the alternative. Its online backup API also gives a
//! consistent copy, and `sqlite3` on the file is handy tooling; but it brings a C library into
//! the build, a query planner our access pattern never uses, and WAL side files that a copy or
//! a DR snapshot must keep in step with the main file. Nothing here needs SQL, so it does not
//! pay for itself; `cairn catalog ls --output json` covers inspection.
//!
//! # Kinds and disaster recovery
//!
//! Every kind knows its row of the DR protection matrix ([`Kind::dr_class`]):
//!
//! | kind | name | [`DrClass`] | quick modes | legacy |
//! | --- | --- | --- | --- | --- |
//! | actions | `action` | `with-catalog-snapshot` | only where a catalog snapshot (local or exported) is restored | yes |
//! | local restore points | `local-restore-point` | `with-catalog-snapshot` | likewise | yes |
//! | exported restore points | `exported-restore-point` | `always` | yes | yes |
//! | policies | `policy` | `always` | yes | yes |
//! | profiles | `profile` | `always` | yes | yes |
//! | blueprints | `blueprint` | `always` | yes | yes |
//! | basic user policies | `basic-user-policy` | `quick-modes-only` | yes | no |
//! | blueprint bindings | `blueprint-binding` | `quick-modes-only` | yes | no |
//! | policy presets | `policy-preset` | `quick-modes-only` | yes | no |
//! | transform sets | `transform-set` | `quick-modes-only` | yes | no |
//! | multi-cluster primary | `multi-cluster-primary` | `quick-modes-only` | yes | no |
//! | multi-cluster secondary | `multi-cluster-secondary` | `quick-modes-only` | yes | no |
//! | storage security contexts | `storage-security-context` | `quick-modes-only` | yes | no |
//! | storage security context bindings | `storage-security-context-binding` | `quick-modes-only` | yes | no |
//! | reports | `report` | `never` | no | no |
//! | action pod specs | `action-pod-spec` | `never` | no | no |
//! | audit config | `audit-config` | `never` | no | no |
//!
//! # The change log
//!
//! Every committed put or delete gets the next sequence number in the same transaction
//! ([`Catalog::current_seq`]). The log is keyed by sequence and compacted per key (a key's
//! older entry goes when it changes again), so [`Catalog::changes_since`] is a range scan that
//! returns each changed key once, as its current value or a tombstone, in sequence order. A put
//! that does not change the stored value records nothing. Tombstones stay until
//! [`Catalog::prune_tombstones`] drops the ones every consumer has passed.
//!
//! # DR building blocks
//!
//! The DR modes (run by the DR blueprint) compose these:
//!
//! - [`Catalog::snapshot_to`]: a consistent copy of the whole catalog, taken while writers
//!   write, written atomically to a new file (the local catalog snapshot);
//!   [`Catalog::refresh_snapshot`] brings such a copy forward by the changes since its cut,
//!   atomically, at a cost that follows the changes rather than the catalog's size.
//! - [`Catalog::export_minimal`]: the records a mode exports that changed since a cursor, as a
//!   compact [`Delta`] that says which sequence it reaches; [`Catalog::dr_cursor`] keeps the
//!   cursor.
//! - [`Catalog::export_full`] and [`Catalog::import_full`]: the legacy mode's full copy.
//! - [`Catalog::apply_delta`]: rebuilds a fresh catalog from deltas, oldest first (idempotent,
//!   deletes applied, gaps refused); [`Catalog::export_changes`] on an opened snapshot yields
//!   its actions and local restore points for the same path.
//! - [`Catalog::cluster_id`] and [`Catalog::maintenance_owner`]: the instance's id, created once,
//!   and whether it may run exclusive maintenance; a restored catalog starts without it.
//!
//! # Bad data
//!
//! A file that is not a catalog, a catalog with a newer schema ([`SCHEMA_VERSION`]), a damaged
//! file and a record that does not decode are errors that name what failed ([`Error`]); none is
//! a panic. [`Catalog::open`] verifies every page's checksum; [`OpenOptions::verify`] trades
//! that for a constant-time open.
//!
//! # Concurrency
//!
//! One process opens a catalog at a time (a second gets [`Error::Locked`]); within it, share
//! the [`Catalog`] (it is `Sync`). Reads never block the writer; writes are serialized and
//! each commit is durable when it returns.

mod dr;
mod error;
mod kind;
mod records;
mod store;

pub use dr::{ApplyOutcome, DELTA_FORMAT, Delta, RestoreState, SnapshotInfo};
pub use error::{Error, Result, StoreError};
pub use kind::{DrClass, DrMode, Kind, KindSet, ParseNameError};
pub use records::{
    Action, ActionStatus, Artifact, Blueprint, BlueprintBinding, Location, Phase, Policy,
    PolicyExport, PolicyPreset, PolicyRun, Profile, Record, RestorePoint, Retention, Target,
};
pub use store::{
    Catalog, Change, Entry, KindCount, MAX_KEY_BYTES, MAX_RECORD_BYTES, Op, OpenOptions,
    SCHEMA_VERSION, Transaction,
};
