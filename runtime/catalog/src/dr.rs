//! The catalog's side of disaster recovery: consistent snapshots, deltas of the minimal catalog
//! data, full (legacy) exports, and applying them to a fresh catalog.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{
    Database, Key, ReadTransaction, ReadableTable as _, ReadableTableMetadata as _,
    TableDefinition, Value, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result, StoreContext as _};
use crate::store::{
    CACHE_BYTES, Change, Changes, LOG, META, Op, SCHEMA_VERSION, TOMBSTONES, changes_in,
    check_meta, list_in, meta, open_db, precheck, prune_tombstones_in, read_u64, records_table,
};
use crate::{Catalog, DrMode, Kind, KindSet};

/// The version of the [`Delta`] encoding this build writes and reads.
pub const DELTA_FORMAT: u32 = 1;

/// The changes of some kinds between two points of a catalog's change log, or (when
/// [`is_full`](Self::is_full)) a full copy of those kinds. Serializable;
/// [`to_bytes`](Self::to_bytes) and [`from_slice`](Self::from_slice) are its canonical
/// encoding (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delta {
    format: u32,
    schema_version: u32,
    cluster_id: Uuid,
    kinds: KindSet,
    from_seq: u64,
    to_seq: u64,
    full: bool,
    changes: Vec<Change>,
}

impl Delta {
    /// The cluster id of the catalog it was taken from.
    pub fn cluster_id(&self) -> Uuid {
        self.cluster_id
    }

    /// The kinds it covers: for them, it holds every change in `(from_seq, to_seq]`.
    pub fn kinds(&self) -> KindSet {
        self.kinds
    }

    /// The cursor it starts after.
    pub fn from_seq(&self) -> u64 {
        self.from_seq
    }

    /// The sequence it reaches: the next cursor.
    pub fn to_seq(&self) -> u64 {
        self.to_seq
    }

    /// Whether it is a full copy ([`Catalog::export_full`]) rather than an increment.
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// The changes, in sequence order (a full copy: kind by kind, in key order).
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// Encodes it (JSON; compression and encryption are the repository's job).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::BadDelta {
            reason: format!("cannot encode: {e}"),
        })
    }

    /// Decodes and checks one encoded by [`to_bytes`](Self::to_bytes).
    pub fn from_slice(bytes: &[u8]) -> Result<Delta> {
        let delta: Delta = serde_json::from_slice(bytes).map_err(|e| Error::BadDelta {
            reason: format!("cannot decode: {e}"),
        })?;
        delta.check()?;
        Ok(delta)
    }

    fn check(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::BadDelta { reason });
        if self.format != DELTA_FORMAT {
            return bad(format!(
                "encoding format {}, this Cairn reads {DELTA_FORMAT}",
                self.format
            ));
        }
        if self.schema_version > SCHEMA_VERSION {
            return Err(Error::NewerSchema {
                what: format!("the catalog delta from cluster {}", self.cluster_id),
                found: self.schema_version,
                supported: SCHEMA_VERSION,
            });
        }
        if self.from_seq > self.to_seq {
            return bad(format!(
                "it starts after {} but ends at {}",
                self.from_seq, self.to_seq
            ));
        }
        if self.full && self.from_seq != 0 {
            return bad("a full copy must start at 0".to_owned());
        }
        for change in &self.changes {
            if !self.kinds.contains(change.kind) {
                return bad(format!(
                    "change {} is a {} record, a kind it does not cover",
                    change.seq, change.kind
                ));
            }
            if change.seq <= self.from_seq || change.seq > self.to_seq {
                return bad(format!(
                    "change {} is outside ({}, {}]",
                    change.seq, self.from_seq, self.to_seq
                ));
            }
            if self.full && matches!(change.op, Op::Delete) {
                return bad("a full copy holds no deletes".to_owned());
            }
        }
        Ok(())
    }
}

/// What [`Catalog::snapshot_to`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SnapshotInfo {
    /// The snapshot file.
    pub path: PathBuf,
    /// The change sequence it was cut at: it holds every change up to this one, and none after.
    pub seq: u64,
    /// How many records it holds.
    pub records: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

/// What [`Catalog::apply_delta`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ApplyOutcome {
    /// Changes written (puts and deletes that changed something).
    pub applied: u64,
    /// Changes skipped: already applied, or unchanged.
    pub skipped: u64,
}

/// Where a DR-restored catalog came from and how far each kind has been applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RestoreState {
    /// The cluster id of the source instance.
    pub source: Uuid,
    /// Per kind, the source's change sequence applied so far.
    pub applied: BTreeMap<Kind, u64>,
}

impl Catalog {
    /// Writes a consistent copy of the whole catalog to a new file at `path`, while writers
    /// keep writing: the copy is one read transaction's view (a cut between two commits), built
    /// in a temporary file beside `path`, synced, and renamed into place, so `path` is either
    /// absent or complete. Never overwrites ([`Error::Exists`]). The copy is itself a catalog
    /// (same cluster id) that [`Catalog::open`] reads.
    pub fn snapshot_to(&self, path: impl AsRef<Path>) -> Result<SnapshotInfo> {
        let path = path.as_ref();
        if path.exists() {
            return Err(Error::Exists {
                path: path.to_path_buf(),
            });
        }
        let io = |op: &'static str| {
            move |source| Error::Io {
                op,
                path: path.to_path_buf(),
                source,
            }
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".catalog-snapshot-")
            .tempfile_in(dir)
            .map_err(io("cannot create a temporary file for the snapshot"))?;
        let rtx = self.read()?;
        let (seq, records) = {
            let snapshot = Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create(tmp.path())
                .store("creating the snapshot")?;
            let wtx = snapshot
                .begin_write()
                .store("starting the snapshot transaction")?;
            copy_table(&rtx, &wtx, META)?;
            copy_table(&rtx, &wtx, LOG)?;
            copy_table(&rtx, &wtx, TOMBSTONES)?;
            let mut records = 0;
            for kind in Kind::ALL {
                records += copy_table(&rtx, &wtx, records_table(kind))?;
            }
            wtx.commit().store("committing the snapshot")?;
            snapshot.close().store("closing the snapshot")?;
            let meta = rtx.open_table(META).store("opening meta")?;
            (read_u64(&meta, meta::SEQ)?.unwrap_or(0), records)
        };
        drop(rtx);
        tmp.as_file()
            .sync_all()
            .map_err(io("cannot sync the snapshot"))?;
        let bytes = tmp
            .as_file()
            .metadata()
            .map_err(io("cannot inspect the snapshot"))?
            .len();
        tmp.persist_noclobber(path).map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                io("cannot move the snapshot into place")(e.error)
            }
        })?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("cannot sync the snapshot's directory"))?;
        tracing::info!(path = %path.display(), seq, records, bytes, "catalog snapshot written");
        Ok(SnapshotInfo {
            path: path.to_path_buf(),
            seq,
            records,
            bytes,
        })
    }

    /// Brings the snapshot at `path` (from [`snapshot_to`](Self::snapshot_to) or an earlier
    /// refresh of this catalog) up to this catalog's current cut, copying only what changed
    /// since the snapshot's cut, in one transaction of the snapshot file: the file is at its old
    /// cut or at the new one, never in between, and ends up as
    /// [`snapshot_to`](Self::snapshot_to) would have written it. Its cost follows the number of changes, not
    /// the catalog's size, so a DR run that keeps a rolling local snapshot stays cheap. Writers
    /// keep writing meanwhile. When `path` does not exist, takes a new snapshot there.
    ///
    /// Refuses a snapshot of another catalog ([`Error::ForeignSnapshot`]), one cut before
    /// pruned tombstones ([`Error::CursorTooOld`]: take a new one) and one ahead of this catalog
    /// ([`Error::InvalidCursor`]).
    pub fn refresh_snapshot(&self, path: impl AsRef<Path>) -> Result<SnapshotInfo> {
        let path = path.as_ref();
        if !path.exists() {
            return self.snapshot_to(path);
        }
        precheck(path)?;
        // Not verified on open: that reads the whole file, which is what a refresh avoids. The
        // file is one this catalog wrote, and `snapshot_to` verifies nothing less.
        let snapshot = open_db(path, false)?;
        let rtx = self.read()?;
        let wtx = snapshot
            .begin_write()
            .store("starting the snapshot transaction")?;
        let (seq, records) = refresh(&rtx, &wtx, path, self.cluster_id())?;
        wtx.commit().store("committing the snapshot")?;
        snapshot.close().store("closing the snapshot")?;
        let bytes = std::fs::metadata(path)
            .map_err(|source| Error::Io {
                op: "cannot inspect the snapshot",
                path: path.to_path_buf(),
                source,
            })?
            .len();
        tracing::info!(path = %path.display(), seq, records, bytes, "catalog snapshot refreshed");
        Ok(SnapshotInfo {
            path: path.to_path_buf(),
            seq,
            records,
            bytes,
        })
    }

    /// The changes of `kinds` after `since`, from one consistent read. The building block of
    /// the exports below; also what a recovery reads out of a restored catalog snapshot.
    pub fn export_changes(&self, since: u64, kinds: KindSet) -> Result<Delta> {
        let rtx = self.read()?;
        let Changes { to_seq, changes } = changes_in(&rtx, since, kinds)?;
        Ok(self.delta(kinds, since, to_seq, false, changes))
    }

    /// The records `mode` exports incrementally ([`DrMode::exported_kinds`]) that changed after
    /// `since`, with deletes: the minimal catalog data of a DR run. Pass the stored
    /// [`dr_cursor`](Catalog::dr_cursor) (0 on the first run) and store
    /// [`Delta::to_seq`] as the next one once the delta is safely exported.
    pub fn export_minimal(&self, since: u64, mode: DrMode) -> Result<Delta> {
        self.export_changes(since, mode.exported_kinds())
    }

    /// A full copy of what the legacy mode protects ([`DrMode::Legacy`]'s
    /// [`exported_kinds`](DrMode::exported_kinds)), from one consistent read.
    pub fn export_full(&self) -> Result<Delta> {
        let rtx = self.read()?;
        let kinds = DrMode::Legacy.exported_kinds();
        let to_seq =
            read_u64(&rtx.open_table(META).store("opening meta")?, meta::SEQ)?.unwrap_or(0);
        let mut changes = Vec::new();
        for kind in kinds.iter() {
            changes.extend(list_in(&rtx, kind)?.into_iter().map(|e| Change {
                seq: e.seq,
                kind: e.kind,
                key: e.key,
                op: Op::Put(e.value),
            }));
        }
        Ok(self.delta(kinds, 0, to_seq, true, changes))
    }

    /// Applies a delta (or a full copy) to this catalog, which must be fresh (never written)
    /// or being restored from the same source. Deltas apply in order, oldest first: one that
    /// starts after what was applied is refused ([`Error::DeltaGap`]); one already applied is
    /// skipped, so applying twice is harmless. Deletes are applied. The first apply marks the
    /// catalog as restored and without maintenance ownership, in the same transaction.
    pub fn apply_delta(&self, delta: &Delta) -> Result<ApplyOutcome> {
        self.apply(delta, false)
    }

    /// Imports a full copy ([`export_full`](Self::export_full)) into a fresh catalog.
    pub fn import_full(&self, full: &Delta) -> Result<ApplyOutcome> {
        if !full.is_full() {
            return Err(Error::BadDelta {
                reason: "an incremental delta, not a full copy; apply it with apply_delta"
                    .to_owned(),
            });
        }
        self.apply(full, true)
    }

    /// Where this catalog was restored from, if it was.
    pub fn restore_state(&self) -> Result<Option<RestoreState>> {
        let rtx = self.read()?;
        let meta_table = rtx.open_table(META).store("opening meta")?;
        let value = meta_table
            .get(meta::RESTORE)
            .store("reading meta")?
            .map(|g| g.value().to_vec());
        value.map(|v| parse_restore_state(&v)).transpose()
    }

    fn delta(
        &self,
        kinds: KindSet,
        from_seq: u64,
        to_seq: u64,
        full: bool,
        changes: Vec<Change>,
    ) -> Delta {
        Delta {
            format: DELTA_FORMAT,
            schema_version: SCHEMA_VERSION,
            cluster_id: self.cluster_id(),
            kinds,
            from_seq,
            to_seq,
            full,
            changes,
        }
    }

    fn apply(&self, delta: &Delta, require_pristine: bool) -> Result<ApplyOutcome> {
        delta.check()?;
        self.write(|tx| {
            let existing = tx
                .meta_raw(meta::RESTORE)?
                .map(|v| parse_restore_state(&v))
                .transpose()?;
            let not_empty = |seq| Error::NotEmpty {
                path: self.path().to_path_buf(),
                seq,
            };
            let mut state = match existing {
                Some(_) if require_pristine => return Err(not_empty(tx.next_seq - 1)),
                Some(state) if state.source != delta.cluster_id => {
                    return Err(Error::WrongSource {
                        expected: state.source,
                        found: delta.cluster_id,
                    });
                }
                Some(state) => state,
                None if !tx.is_pristine() => return Err(not_empty(tx.next_seq - 1)),
                None => {
                    tx.set_meta_raw(meta::MAINTENANCE_OWNER, Some(&[0]))?;
                    RestoreState {
                        source: delta.cluster_id,
                        applied: BTreeMap::new(),
                    }
                }
            };
            let applied_of = |state: &RestoreState, kind| *state.applied.get(&kind).unwrap_or(&0);
            for kind in delta.kinds.iter() {
                let applied = applied_of(&state, kind);
                if delta.from_seq > applied {
                    return Err(Error::DeltaGap {
                        kind,
                        applied,
                        from: delta.from_seq,
                    });
                }
            }
            let mut outcome = ApplyOutcome {
                applied: 0,
                skipped: 0,
            };
            for change in &delta.changes {
                if delta.to_seq <= applied_of(&state, change.kind) {
                    outcome.skipped += 1;
                    continue;
                }
                let before = tx.next_seq;
                match &change.op {
                    // A full copy into a fresh catalog: `check` refused deletes in it.
                    Op::Put(value) if require_pristine => {
                        tx.insert_fresh(change.kind, &change.key, value.get().as_bytes())?;
                    }
                    Op::Put(value) => {
                        tx.put_bytes(change.kind, &change.key, value.get().as_bytes())?;
                    }
                    Op::Delete => {
                        tx.delete(change.kind, &change.key)?;
                    }
                }
                if tx.next_seq == before {
                    outcome.skipped += 1;
                } else {
                    outcome.applied += 1;
                }
            }
            for kind in delta.kinds.iter() {
                let entry = state.applied.entry(kind).or_insert(0);
                *entry = (*entry).max(delta.to_seq);
            }
            let encoded = serde_json::to_vec(&state).map_err(|e| Error::CorruptInternal {
                what: format!("meta key {}", meta::RESTORE),
                reason: e.to_string(),
            })?;
            tx.set_meta_raw(meta::RESTORE, Some(&encoded))?;
            Ok(outcome)
        })
    }
}

/// Applies the source's changes after the snapshot's cut to the snapshot, exactly (same
/// sequences, tombstones and meta); returns the new cut and the snapshot's record count.
fn refresh(
    rtx: &ReadTransaction,
    wtx: &WriteTransaction,
    path: &Path,
    cluster_id: Uuid,
) -> Result<(u64, u64)> {
    let mut target_meta = wtx.open_table(META).store("opening the snapshot's meta")?;
    let found = check_meta(&target_meta, path)?;
    if found != cluster_id {
        return Err(Error::ForeignSnapshot {
            path: path.to_path_buf(),
            expected: cluster_id,
            found,
        });
    }
    let source_meta = rtx.open_table(META).store("opening meta")?;
    let from = read_u64(&target_meta, meta::SEQ)?.unwrap_or(0);
    let to = read_u64(&source_meta, meta::SEQ)?.unwrap_or(0);
    let horizon = read_u64(&source_meta, meta::HORIZON)?.unwrap_or(0);
    let target_horizon = read_u64(&target_meta, meta::HORIZON)?.unwrap_or(0);
    if from > to {
        return Err(Error::InvalidCursor {
            cursor: from,
            current: to,
        });
    }
    if from != 0 && from < horizon {
        return Err(Error::CursorTooOld {
            since: from,
            horizon,
        });
    }

    let source_log = rtx.open_table(LOG).store("opening the change log")?;
    let mut log = wtx
        .open_table(LOG)
        .store("opening the snapshot's change log")?;
    let mut tombstones = wtx
        .open_table(TOMBSTONES)
        .store("opening the snapshot's tombstones")?;
    let mut source_records = Vec::with_capacity(Kind::COUNT);
    let mut records = Vec::with_capacity(Kind::COUNT);
    for kind in Kind::ALL {
        source_records.push(
            rtx.open_table(records_table(kind))
                .store("opening a record table")?,
        );
        records.push(
            wtx.open_table(records_table(kind))
                .store("opening a snapshot record table")?,
        );
    }
    for item in source_log
        .range(from.saturating_add(1)..)
        .store("scanning the change log")?
    {
        let (seq, value) = item.store("scanning the change log")?;
        let seq = seq.value();
        let (kind_name, key, deleted) = value.value();
        let kind = Kind::from_name(kind_name).ok_or_else(|| Error::CorruptInternal {
            what: format!("change log entry {seq}"),
            reason: format!("unknown kind `{kind_name}`"),
        })?;
        let target = &mut records[kind.index()];
        let old_put = target
            .remove(key)
            .store("updating the snapshot")?
            .map(|g| g.value().0);
        let old_delete = tombstones
            .remove((kind_name, key))
            .store("updating the snapshot")?
            .map(|g| g.value());
        for old in old_put.into_iter().chain(old_delete) {
            log.remove(old).store("updating the snapshot")?;
        }
        if deleted {
            tombstones
                .insert((kind_name, key), seq)
                .store("updating the snapshot")?;
        } else {
            let found = source_records[kind.index()]
                .get(key)
                .store("reading a record")?;
            let Some(guard) = found else {
                return Err(Error::CorruptInternal {
                    what: format!("change log entry {seq}"),
                    reason: format!("the {kind} record `{key}` it names is missing"),
                });
            };
            let (record_seq, bytes) = guard.value();
            if record_seq != seq {
                return Err(Error::CorruptInternal {
                    what: format!("change log entry {seq}"),
                    reason: format!("the {kind} record `{key}` is at change {record_seq}"),
                });
            }
            target
                .insert(key, (seq, bytes))
                .store("updating the snapshot")?;
        }
        log.insert(seq, (kind_name, key, deleted))
            .store("updating the snapshot")?;
    }
    if horizon > target_horizon {
        prune_tombstones_in(&mut log, &mut tombstones, horizon)?;
    }
    // Meta (cursor, ownership, restore state, sequence) is small: replace it whole.
    let mut stale = Vec::new();
    for item in target_meta.iter().store("reading the snapshot's meta")? {
        stale.push(
            item.store("reading the snapshot's meta")?
                .0
                .value()
                .to_owned(),
        );
    }
    for name in &stale {
        target_meta
            .remove(name.as_str())
            .store("updating the snapshot's meta")?;
    }
    for item in source_meta.iter().store("reading meta")? {
        let (name, value) = item.store("reading meta")?;
        target_meta
            .insert(name.value(), value.value())
            .store("updating the snapshot's meta")?;
    }
    let mut count = 0;
    for table in &records {
        count += table.len().store("counting the snapshot's records")?;
    }
    Ok((to, count))
}

fn parse_restore_state(bytes: &[u8]) -> Result<RestoreState> {
    serde_json::from_slice(bytes).map_err(|e| Error::CorruptInternal {
        what: format!("meta key {}", meta::RESTORE),
        reason: e.to_string(),
    })
}

/// Copies one table from a read view into a new database; returns how many entries it copied.
fn copy_table<K: Key + 'static, V: Value + 'static>(
    rtx: &ReadTransaction,
    wtx: &WriteTransaction,
    definition: TableDefinition<'_, K, V>,
) -> Result<u64> {
    let source = rtx
        .open_table(definition)
        .store("opening a table to copy")?;
    let mut target = wtx
        .open_table(definition)
        .store("creating a table in the snapshot")?;
    let mut copied = 0;
    for item in source.iter().store("reading a table to copy")? {
        let (key, value) = item.store("reading a table to copy")?;
        target
            .insert(key.value(), value.value())
            .store("writing the snapshot")?;
        copied += 1;
    }
    Ok(copied)
}
