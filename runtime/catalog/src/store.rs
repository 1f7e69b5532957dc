//! The store: one redb file holding a table per kind, the change log, tombstones and meta.
//!
//! On-disk layout (schema version 1). Names are part of the format:
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `cairn/meta` | name | bytes (see [`meta`]) |
//! | `cairn/log` | change sequence `u64` | `(kind, key, deleted)` |
//! | `cairn/tombstones` | `(kind, key)` | the sequence of the delete |
//! | one per kind, named by [`Kind::as_str`] | key | `(sequence of the last put, JSON bytes)` |
//!
//! The change log is compacted per key: when a key changes, its previous log entry is removed
//! in the same transaction. The log therefore holds one entry per live record and per
//! tombstone, and a range scan from a cursor yields exactly the net changes since it.

use std::io::Read as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use redb::{
    Database, DatabaseError, ReadTransaction, ReadableDatabase as _, ReadableTable as _,
    ReadableTableMetadata as _, StorageError, Table, TableDefinition, TableHandle as _,
    WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::error::{Error, Result, StoreContext as _, StoreError};
use crate::{DrClass, Kind, KindSet};

/// The catalog schema version this build writes and the newest it reads. Bump it when the
/// layout or a record's meaning changes; an older Cairn then refuses the file rather than
/// misreading it.
pub const SCHEMA_VERSION: u32 = 1;

/// The longest record key, in bytes. Keys are names and ids (a Kubernetes `namespace/name` is
/// at most 317 bytes); the bound keeps B-tree pages dense and stops a runaway key early.
pub const MAX_KEY_BYTES: usize = 1024;

/// The largest encoded record, in bytes. Records are metadata (artifacts are small key/values;
/// bulk data lives in the repository); the bound keeps one bad record from bloating every DR
/// delta and snapshot.
pub const MAX_RECORD_BYTES: usize = 16 << 20;

/// redb's page cache bound. The catalog is read by key and by short scans; a bounded cache keeps
/// a long-running controller's memory predictable (redb's default is 1 GiB).
pub(crate) const CACHE_BYTES: usize = 64 << 20;

/// The first bytes of every redb file (redb's `MAGICNUMBER`), checked before handing a file to
/// redb so that a stray file is refused with a clear error instead of a parse failure.
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// The value of the `format` meta key: marks a redb file as a Cairn catalog.
const FORMAT_MARK: &[u8] = b"cairn-catalog";

pub(crate) type LogValue = (&'static str, &'static str, bool);
pub(crate) type RecordValue = (u64, &'static [u8]);

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("cairn/meta");
pub(crate) const LOG: TableDefinition<u64, LogValue> = TableDefinition::new("cairn/log");
pub(crate) const TOMBSTONES: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("cairn/tombstones");

pub(crate) fn records_table(kind: Kind) -> TableDefinition<'static, &'static str, RecordValue> {
    TableDefinition::new(kind.as_str())
}

/// Names of the meta entries. Integers are big-endian.
pub(crate) mod meta {
    /// `cairn-catalog`.
    pub(crate) const FORMAT: &str = "format";
    /// `u32`: [`SCHEMA_VERSION`](super::SCHEMA_VERSION) of the writer.
    pub(crate) const SCHEMA: &str = "schema-version";
    /// 16 bytes: the instance's cluster id, created with the catalog.
    pub(crate) const CLUSTER_ID: &str = "cluster-id";
    /// `u64`: the last change sequence handed out.
    pub(crate) const SEQ: &str = "seq";
    /// `u64`: tombstones at or below this sequence were pruned.
    pub(crate) const HORIZON: &str = "tombstone-horizon";
    /// `u64`: how far DR has exported (absent: never).
    pub(crate) const DR_CURSOR: &str = "dr-cursor";
    /// `0`/`1`: whether this instance may run exclusive maintenance of the backup data.
    pub(crate) const MAINTENANCE_OWNER: &str = "maintenance-owner";
    /// JSON [`RestoreState`](crate::RestoreState): set while and after a DR restore.
    pub(crate) const RESTORE: &str = "restore";
    /// Prefix of free-form entries set through [`Catalog::set_meta`](crate::Catalog::set_meta).
    pub(crate) const USER_PREFIX: &str = "x.";
}

/// A stored record as `ls` shows it: kind, key, the sequence of its last change, and its JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Entry {
    /// The record's kind.
    pub kind: Kind,
    /// The record's key (a name or an id).
    pub key: String,
    /// The change sequence of its last put.
    pub seq: u64,
    /// The record, as stored.
    pub value: Box<RawValue>,
}

impl Entry {
    /// Decodes the record as `T`; a mismatch is [`Error::Corrupt`] naming kind and key.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        decode(self.kind, &self.key, self.value.get())
    }
}

/// One committed change, as the change log yields it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Change {
    /// Its change sequence.
    pub seq: u64,
    /// The record's kind.
    pub kind: Kind,
    /// The record's key.
    pub key: String,
    /// What happened.
    pub op: Op,
}

/// A put (with the record as it is now) or a delete (a tombstone).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// The record was written; this is its current value.
    Put(Box<RawValue>),
    /// The record was deleted.
    Delete,
}

/// How many records of a kind there are, for `cairn catalog ls` without a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct KindCount {
    /// The kind.
    pub kind: Kind,
    /// Its DR class.
    pub dr_class: DrClass,
    /// How many records it has.
    pub count: u64,
}

/// The catalog: one file, opened by one process at a time. `Sync`: share it behind an `Arc`.
/// Readers see a consistent snapshot and never block the writer; writes are serialized.
pub struct Catalog {
    pub(crate) db: Database,
    path: PathBuf,
    cluster_id: Uuid,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("path", &self.path)
            .field("cluster_id", &self.cluster_id)
            .finish_non_exhaustive()
    }
}

impl Catalog {
    /// Opens the catalog at `path`, creating it (and a new cluster id) when the file is missing
    /// or empty. Every page's checksum is verified on open, so a damaged file is an error rather
    /// than a crash later; that reads the whole file (about 0.4 s for 100,000 restore points),
    /// see [`OpenOptions::verify`] to skip it.
    ///
    /// Refuses a file that is not a catalog ([`Error::NotACatalog`]), one written with a newer
    /// schema ([`Error::NewerSchema`]), one in use ([`Error::Locked`]) and a damaged one
    /// ([`Error::CorruptFile`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Catalog> {
        OpenOptions::new().open(path)
    }

    /// Options for opening a catalog.
    pub fn options() -> OpenOptions {
        OpenOptions::new()
    }

    fn open_with(path: &Path, options: &OpenOptions) -> Result<Catalog> {
        let path = path.to_path_buf();
        precheck(&path)?;
        make_private(&path)?;
        let db = open_db(&path, options.verify)?;
        let cluster_id = init(&db, &path)?;
        tracing::debug!(path = %path.display(), %cluster_id, "catalog opened");
        Ok(Catalog {
            db,
            path,
            cluster_id,
        })
    }

    /// The file this catalog lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This instance's cluster id: a UUID created once with the catalog. DR data is stored under
    /// it.
    pub fn cluster_id(&self) -> Uuid {
        self.cluster_id
    }

    /// The sequence of the last committed change (0 when nothing was ever written).
    pub fn current_seq(&self) -> Result<u64> {
        let rtx = self.read()?;
        read_u64(&rtx.open_table(META).store("opening meta")?, meta::SEQ).map(|v| v.unwrap_or(0))
    }

    /// Runs `f` in one write transaction: every change it makes commits together, each with its
    /// own sequence number, or none does (when `f` or the commit fails). Writers are serialized;
    /// readers are not blocked.
    pub fn write<T>(&self, f: impl FnOnce(&mut Transaction<'_>) -> Result<T>) -> Result<T> {
        let txn = self
            .db
            .begin_write()
            .store("starting a write transaction")?;
        match run_write(&txn, f) {
            Ok(out) => {
                txn.commit().store("committing a write transaction")?;
                Ok(out)
            }
            Err(e) => {
                if let Err(abort) = txn.abort() {
                    tracing::warn!(error = %abort, "aborting a catalog write transaction failed");
                }
                Err(e)
            }
        }
    }

    /// Writes one record; returns its change sequence. Writing a value identical to the stored
    /// one records no change (and returns the existing sequence).
    pub fn put<T: Serialize + ?Sized>(&self, kind: Kind, key: &str, value: &T) -> Result<u64> {
        self.write(|tx| tx.put(kind, key, value))
    }

    /// Deletes one record, leaving a tombstone in the change log; `false` when it did not exist
    /// (and nothing is recorded).
    pub fn delete(&self, kind: Kind, key: &str) -> Result<bool> {
        self.write(|tx| tx.delete(kind, key))
    }

    /// Reads one record as `T`.
    pub fn get<T: DeserializeOwned>(&self, kind: Kind, key: &str) -> Result<Option<T>> {
        self.entry(kind, key)?.map(|e| e.decode()).transpose()
    }

    /// Reads one record as stored.
    pub fn entry(&self, kind: Kind, key: &str) -> Result<Option<Entry>> {
        let rtx = self.read()?;
        let table = rtx
            .open_table(records_table(kind))
            .store("opening a record table")?;
        let found = table.get(key).store("reading a record")?;
        found
            .map(|guard| {
                let (seq, bytes) = guard.value();
                entry(kind, key, seq, bytes)
            })
            .transpose()
    }

    /// Every record of `kind`, in key order.
    pub fn list(&self, kind: Kind) -> Result<Vec<Entry>> {
        let rtx = self.read()?;
        list_in(&rtx, kind)
    }

    /// Every record of `kind`, decoded as `T`, in key order.
    pub fn list_as<T: DeserializeOwned>(&self, kind: Kind) -> Result<Vec<T>> {
        self.list(kind)?.iter().map(Entry::decode).collect()
    }

    /// Every record of every kind, kind by kind ([`Kind::ALL`] order), from one consistent
    /// read.
    pub fn list_all(&self) -> Result<Vec<Entry>> {
        let rtx = self.read()?;
        let mut all = Vec::new();
        for kind in Kind::ALL {
            all.extend(list_in(&rtx, kind)?);
        }
        Ok(all)
    }

    /// How many records of `kind` there are.
    pub fn count(&self, kind: Kind) -> Result<u64> {
        let rtx = self.read()?;
        rtx.open_table(records_table(kind))
            .store("opening a record table")?
            .len()
            .store("counting records")
    }

    /// The number of records of every kind, from one consistent read.
    pub fn counts(&self) -> Result<Vec<KindCount>> {
        let rtx = self.read()?;
        Kind::ALL
            .into_iter()
            .map(|kind| {
                let count = rtx
                    .open_table(records_table(kind))
                    .store("opening a record table")?
                    .len()
                    .store("counting records")?;
                Ok(KindCount {
                    kind,
                    dr_class: kind.dr_class(),
                    count,
                })
            })
            .collect()
    }

    /// The net changes after `since`, in sequence order: each changed key once, as a put with
    /// its current value or as a delete. A range scan of the change log, so its cost follows
    /// the number of changes, not the size of the catalog.
    ///
    /// Fails with [`Error::CursorTooOld`] when deletes after `since` were pruned
    /// ([`prune_tombstones`](Self::prune_tombstones)); `since = 0` always works (it is the whole
    /// catalog, for which pruned deletes do not matter).
    pub fn changes_since(&self, since: u64) -> Result<Vec<Change>> {
        let rtx = self.read()?;
        Ok(changes_in(&rtx, since, KindSet::all())?.changes)
    }

    /// Forgets the tombstones at or below `through` (e.g. once every DR consumer has passed
    /// it), with their change-log entries; returns how many were removed. Afterwards
    /// `changes_since(n)` for `0 < n < through` is refused rather than silently incomplete.
    pub fn prune_tombstones(&self, through: u64) -> Result<u64> {
        self.write(|tx| tx.prune_tombstones(through))
    }

    /// How far DR has exported, if it ever ran.
    pub fn dr_cursor(&self) -> Result<Option<u64>> {
        let rtx = self.read()?;
        read_u64(
            &rtx.open_table(META).store("opening meta")?,
            meta::DR_CURSOR,
        )
    }

    /// Records how far DR has exported. Refuses a cursor beyond
    /// [`current_seq`](Self::current_seq). Records no change in the change log.
    pub fn set_dr_cursor(&self, cursor: u64) -> Result<()> {
        self.write(|tx| {
            let current = tx.next_seq - 1;
            if cursor > current {
                return Err(Error::InvalidCursor { cursor, current });
            }
            tx.set_meta_raw(meta::DR_CURSOR, Some(&cursor.to_be_bytes()))
        })
    }

    /// Whether this instance owns the exclusive maintenance (retention, forget, prune) of its
    /// backup data. A new catalog does; a DR-restored one does not until ownership is taken.
    pub fn maintenance_owner(&self) -> Result<bool> {
        let rtx = self.read()?;
        let table = rtx.open_table(META).store("opening meta")?;
        let value = table
            .get(meta::MAINTENANCE_OWNER)
            .store("reading meta")?
            .map(|g| g.value().to_vec());
        match value.as_deref() {
            None | Some([0]) => Ok(false),
            Some([1]) => Ok(true),
            Some(other) => Err(Error::CorruptInternal {
                what: format!("meta key {}", meta::MAINTENANCE_OWNER),
                reason: format!("expected 0 or 1, found {other:?}"),
            }),
        }
    }

    /// Sets whether this instance owns maintenance (`cairn dr take-ownership` sets it).
    pub fn set_maintenance_owner(&self, owner: bool) -> Result<()> {
        self.write(|tx| tx.set_meta_raw(meta::MAINTENANCE_OWNER, Some(&[u8::from(owner)])))
    }

    /// A free-form meta value (e.g. DR status kept by the DR runner). Meta values are not
    /// records: they are neither in the change log nor in DR exports.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        let rtx = self.read()?;
        let table = rtx.open_table(META).store("opening meta")?;
        let name = format!("{}{key}", meta::USER_PREFIX);
        let value = table
            .get(name.as_str())
            .store("reading meta")?
            .map(|g| g.value().to_vec());
        value
            .map(|v| {
                String::from_utf8(v).map_err(|e| Error::CorruptInternal {
                    what: format!("meta key {name}"),
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// Sets (or with `None` removes) a free-form meta value.
    pub fn set_meta(&self, key: &str, value: Option<&str>) -> Result<()> {
        let name = format!("{}{key}", meta::USER_PREFIX);
        self.write(|tx| tx.set_meta_raw(&name, value.map(str::as_bytes)))
    }

    pub(crate) fn read(&self) -> Result<ReadTransaction> {
        self.db.begin_read().store("starting a read transaction")
    }
}

/// How to open a catalog ([`Catalog::options`]).
#[derive(Debug, Clone)]
pub struct OpenOptions {
    verify: bool,
}

impl OpenOptions {
    /// The defaults: verify on open.
    pub fn new() -> Self {
        Self { verify: true }
    }

    /// Whether to verify every page's checksum on open (the default). Without it, opening a
    /// cleanly closed file costs the same at any size, but a file damaged outside Cairn (a
    /// disk fault, a stray write) is only caught where the store happens to check, and may stop
    /// the process. Skip it for short-lived readers of a catalog this process family writes;
    /// keep it for files from elsewhere (restored or copied snapshots).
    pub fn verify(&mut self, verify: bool) -> &mut Self {
        self.verify = verify;
        self
    }

    /// Whether opening verifies every page.
    pub fn is_verify(&self) -> bool {
        self.verify
    }

    /// Opens the catalog at `path`; see [`Catalog::open`].
    pub fn open(&self, path: impl AsRef<Path>) -> Result<Catalog> {
        Catalog::open_with(path.as_ref(), self)
    }
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// A write transaction (see [`Catalog::write`]). Reads through it see its own writes.
pub struct Transaction<'t> {
    meta: Table<'t, &'static str, &'static [u8]>,
    log: Table<'t, u64, LogValue>,
    tombstones: Table<'t, (&'static str, &'static str), u64>,
    records: Vec<Table<'t, &'static str, RecordValue>>,
    /// The sequence the next change gets.
    pub(crate) next_seq: u64,
}

impl std::fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl<'t> Transaction<'t> {
    fn new(txn: &'t WriteTransaction) -> Result<Self> {
        let meta = txn.open_table(META).store("opening meta")?;
        let seq = read_u64(&meta, meta::SEQ)?.unwrap_or(0);
        Ok(Transaction {
            meta,
            log: txn.open_table(LOG).store("opening the change log")?,
            tombstones: txn.open_table(TOMBSTONES).store("opening tombstones")?,
            records: Kind::ALL
                .into_iter()
                .map(|kind| {
                    txn.open_table(records_table(kind))
                        .store("opening a record table")
                })
                .collect::<Result<_>>()?,
            next_seq: seq + 1,
        })
    }

    /// Writes one record; see [`Catalog::put`].
    pub fn put<T: Serialize + ?Sized>(&mut self, kind: Kind, key: &str, value: &T) -> Result<u64> {
        check_key(kind, key)?;
        let bytes = serde_json::to_vec(value).map_err(|source| Error::Encode {
            kind,
            key: key.to_owned(),
            source,
        })?;
        self.put_bytes(kind, key, &bytes)
    }

    /// Writes JSON bytes the caller has validated.
    pub(crate) fn put_bytes(&mut self, kind: Kind, key: &str, bytes: &[u8]) -> Result<u64> {
        check_key(kind, key)?;
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(Error::TooLarge {
                kind,
                key: key.to_owned(),
                size: bytes.len(),
                limit: MAX_RECORD_BYTES,
            });
        }
        let previous = self.records[kind.index()]
            .get(key)
            .store("reading a record")?
            .map(|g| {
                let (seq, old) = g.value();
                (seq, old == bytes)
            });
        match previous {
            Some((seq, true)) => return Ok(seq),
            Some((old_seq, false)) => {
                self.log
                    .remove(old_seq)
                    .store("compacting the change log")?;
            }
            None => {
                let tomb = self
                    .tombstones
                    .remove((kind.as_str(), key))
                    .store("removing a tombstone")?
                    .map(|g| g.value());
                if let Some(tomb_seq) = tomb {
                    self.log
                        .remove(tomb_seq)
                        .store("compacting the change log")?;
                }
            }
        }
        let seq = self.take_seq();
        self.records[kind.index()]
            .insert(key, (seq, bytes))
            .store("writing a record")?;
        self.log
            .insert(seq, (kind.as_str(), key, false))
            .store("appending to the change log")?;
        Ok(seq)
    }

    /// Writes a record into a catalog that has never recorded a delete (a fresh import): no
    /// tombstone can exist and an unchanged value cannot be, so only the insert and its log
    /// entry remain (a repeated key still compacts its earlier entry).
    pub(crate) fn insert_fresh(&mut self, kind: Kind, key: &str, bytes: &[u8]) -> Result<u64> {
        check_key(kind, key)?;
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(Error::TooLarge {
                kind,
                key: key.to_owned(),
                size: bytes.len(),
                limit: MAX_RECORD_BYTES,
            });
        }
        let seq = self.take_seq();
        let old = self.records[kind.index()]
            .insert(key, (seq, bytes))
            .store("writing a record")?
            .map(|g| g.value().0);
        if let Some(old_seq) = old {
            self.log
                .remove(old_seq)
                .store("compacting the change log")?;
        }
        self.log
            .insert(seq, (kind.as_str(), key, false))
            .store("appending to the change log")?;
        Ok(seq)
    }

    /// Deletes one record; see [`Catalog::delete`].
    pub fn delete(&mut self, kind: Kind, key: &str) -> Result<bool> {
        let removed = self.records[kind.index()]
            .remove(key)
            .store("deleting a record")?
            .map(|g| g.value().0);
        let Some(old_seq) = removed else {
            return Ok(false);
        };
        self.log
            .remove(old_seq)
            .store("compacting the change log")?;
        let seq = self.take_seq();
        self.tombstones
            .insert((kind.as_str(), key), seq)
            .store("writing a tombstone")?;
        self.log
            .insert(seq, (kind.as_str(), key, true))
            .store("appending to the change log")?;
        Ok(true)
    }

    /// Reads one record as `T`, including this transaction's writes.
    pub fn get<T: DeserializeOwned>(&self, kind: Kind, key: &str) -> Result<Option<T>> {
        let found = self.records[kind.index()]
            .get(key)
            .store("reading a record")?;
        found
            .map(|g| decode(kind, key, bytes_str(kind, key, g.value().1)?))
            .transpose()
    }

    /// Whether this transaction's catalog has never recorded a change.
    pub(crate) fn is_pristine(&self) -> bool {
        self.next_seq == 1
    }

    pub(crate) fn meta_raw(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .meta
            .get(name)
            .store("reading meta")?
            .map(|g| g.value().to_vec()))
    }

    pub(crate) fn set_meta_raw(&mut self, name: &str, value: Option<&[u8]>) -> Result<()> {
        match value {
            Some(v) => self.meta.insert(name, v).map(drop),
            None => self.meta.remove(name).map(drop),
        }
        .store("writing meta")
    }

    fn prune_tombstones(&mut self, through: u64) -> Result<u64> {
        let current = self.next_seq - 1;
        if through > current {
            return Err(Error::InvalidCursor {
                cursor: through,
                current,
            });
        }
        let pruned = prune_tombstones_in(&mut self.log, &mut self.tombstones, through)?;
        let horizon = read_u64(&self.meta, meta::HORIZON)?.unwrap_or(0);
        if through > horizon {
            self.set_meta_raw(meta::HORIZON, Some(&through.to_be_bytes()))?;
        }
        Ok(pruned)
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }
}

/// Removes the tombstones at or below `through`, with their change-log entries.
pub(crate) fn prune_tombstones_in(
    log: &mut Table<'_, u64, LogValue>,
    tombstones: &mut Table<'_, (&'static str, &'static str), u64>,
    through: u64,
) -> Result<u64> {
    let mut doomed = Vec::new();
    for item in log.range(..=through).store("scanning the change log")? {
        let (seq, value) = item.store("scanning the change log")?;
        let (kind, key, deleted) = value.value();
        if deleted {
            doomed.push((seq.value(), kind.to_owned(), key.to_owned()));
        }
    }
    for (seq, kind, key) in &doomed {
        log.remove(*seq).store("pruning the change log")?;
        tombstones
            .remove((kind.as_str(), key.as_str()))
            .store("pruning tombstones")?;
    }
    Ok(doomed.len() as u64)
}

fn run_write<T>(
    txn: &WriteTransaction,
    f: impl FnOnce(&mut Transaction<'_>) -> Result<T>,
) -> Result<T> {
    let mut tx = Transaction::new(txn)?;
    let start = tx.next_seq;
    let out = f(&mut tx)?;
    if tx.next_seq != start {
        let last = tx.next_seq - 1;
        tx.set_meta_raw(meta::SEQ, Some(&last.to_be_bytes()))?;
    }
    Ok(out)
}

/// Refuses, before redb sees it, a path that cannot be a catalog.
/// Makes the catalog readable by its owner alone: it holds what the instance was told in
/// confidence (a DR passphrase given `raw:`, where secrets are kept). A new file is created
/// so; one that others may read (made by an older build) is narrowed.
fn make_private(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let io = |op| {
            move |source| Error::Io {
                op,
                path: path.to_path_buf(),
                source,
            }
        };
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                        return Err(io("cannot create the catalog")(e));
                    }
                    _ => {}
                }
            }
            Err(e) => return Err(io("cannot inspect the catalog")(e)),
            // Best effort: a catalog this user reads but does not own, or on a read-only
            // mount, still opens.
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                let mode = m.permissions().mode() & 0o700;
                if let Err(e) =
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                {
                    tracing::warn!(
                        path = %path.display(),
                        error = %e,
                        "the catalog is readable by others and could not be made private"
                    );
                }
            }
            Ok(_) => {}
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

pub(crate) fn precheck(path: &Path) -> Result<()> {
    let io = |op| {
        move |source| Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("cannot open the catalog")(e)),
    };
    let metadata = file.metadata().map_err(io("cannot inspect the catalog"))?;
    let not_a_catalog = |reason: &str| Error::NotACatalog {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    if metadata.is_dir() {
        return Err(not_a_catalog("it is a directory"));
    }
    if metadata.len() == 0 {
        return Ok(());
    }
    let mut magic = [0u8; REDB_MAGIC.len()];
    let mut read = 0;
    while read < magic.len() {
        match file.read(&mut magic[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io("cannot read the catalog")(e)),
        }
    }
    if read < magic.len() || magic != REDB_MAGIC {
        return Err(not_a_catalog("it is not a redb database file"));
    }
    Ok(())
}

pub(crate) fn open_db(path: &Path, verify: bool) -> Result<Database> {
    let mut builder = Database::builder();
    builder
        .set_cache_size(CACHE_BYTES)
        .set_check_integrity_on_open(verify);
    // redb verifies checksums on open, but its parsing of a damaged header is not guaranteed
    // panic-free; a damaged file must be an error, never a crash of the controller.
    let opened = catch_unwind(AssertUnwindSafe(|| builder.create(path)));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(open_error(path, e)),
        Err(_) => Err(Error::CorruptFile {
            path: path.to_path_buf(),
            reason: "the store could not parse it".to_owned(),
        }),
    }
}

fn open_error(path: &Path, e: DatabaseError) -> Error {
    let path = path.to_path_buf();
    match e {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            Error::Locked { path }
        }
        DatabaseError::UpgradeRequired(version) => Error::NotACatalog {
            path,
            reason: format!(
                "it is a redb database of file format {version}, which Cairn never wrote"
            ),
        },
        DatabaseError::RepairAborted => Error::CorruptFile {
            path,
            reason: "its repair was aborted".to_owned(),
        },
        DatabaseError::Storage(StorageError::Corrupted(reason)) => {
            Error::CorruptFile { path, reason }
        }
        DatabaseError::Storage(StorageError::Io(source)) => Error::Io {
            op: "cannot open the catalog",
            path,
            source,
        },
        other => Error::Store {
            op: "opening the catalog",
            source: StoreError::new(other),
        },
    }
}

/// Checks the meta of an existing catalog, or initializes a new one; creates missing tables.
fn init(db: &Database, path: &Path) -> Result<Uuid> {
    let txn = db.begin_write().store("starting the open transaction")?;
    let tables: Vec<String> = txn
        .list_tables()
        .store("listing tables")?
        .map(|t| t.name().to_owned())
        .collect();
    let has = |name: &str| tables.iter().any(|t| t == name);
    let cluster_id = if has(META.name()) {
        let meta = txn.open_table(META).store("opening meta")?;
        check_meta(&meta, path)?
    } else if !tables.is_empty() {
        return Err(Error::NotACatalog {
            path: path.to_path_buf(),
            reason: "it is a redb database without Cairn's meta table".to_owned(),
        });
    } else {
        let cluster_id = Uuid::new_v4();
        let mut meta = txn.open_table(META).store("creating meta")?;
        let entries: [(&str, &[u8]); 6] = [
            (meta::FORMAT, FORMAT_MARK),
            (meta::SCHEMA, &SCHEMA_VERSION.to_be_bytes()),
            (meta::CLUSTER_ID, cluster_id.as_bytes()),
            (meta::SEQ, &0u64.to_be_bytes()),
            (meta::HORIZON, &0u64.to_be_bytes()),
            (meta::MAINTENANCE_OWNER, &[1]),
        ];
        for (name, value) in entries {
            meta.insert(name, value).store("initializing meta")?;
        }
        tracing::info!(path = %path.display(), %cluster_id, "created a new catalog");
        cluster_id
    };
    let missing = [META.name(), LOG.name(), TOMBSTONES.name()]
        .into_iter()
        .chain(Kind::ALL.iter().map(|k| k.as_str()))
        .any(|name| !has(name));
    if missing {
        txn.open_table(LOG).store("creating the change log")?;
        txn.open_table(TOMBSTONES).store("creating tombstones")?;
        for kind in Kind::ALL {
            txn.open_table(records_table(kind))
                .store("creating a record table")?;
        }
        txn.commit().store("committing the open transaction")?;
    } else {
        txn.abort().store("closing the open transaction")?;
    }
    Ok(cluster_id)
}

pub(crate) fn check_meta(
    meta: &Table<'_, &'static str, &'static [u8]>,
    path: &Path,
) -> Result<Uuid> {
    let get = |name: &str| -> Result<Option<Vec<u8>>> {
        Ok(meta
            .get(name)
            .store("reading meta")?
            .map(|g| g.value().to_vec()))
    };
    if get(meta::FORMAT)?.as_deref() != Some(FORMAT_MARK) {
        return Err(Error::NotACatalog {
            path: path.to_path_buf(),
            reason: "its meta table does not mark it as a Cairn catalog".to_owned(),
        });
    }
    let schema = get(meta::SCHEMA)?
        .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| Error::CorruptInternal {
            what: format!("meta key {}", meta::SCHEMA),
            reason: "missing or not a 4-byte integer".to_owned(),
        })?;
    if schema > SCHEMA_VERSION {
        return Err(Error::NewerSchema {
            what: path.display().to_string(),
            found: schema,
            supported: SCHEMA_VERSION,
        });
    }
    if schema == 0 {
        return Err(Error::CorruptInternal {
            what: format!("meta key {}", meta::SCHEMA),
            reason: "schema version 0 was never written".to_owned(),
        });
    }
    get(meta::CLUSTER_ID)?
        .and_then(|v| Uuid::from_slice(&v).ok())
        .ok_or_else(|| Error::CorruptInternal {
            what: format!("meta key {}", meta::CLUSTER_ID),
            reason: "missing or not a 16-byte UUID".to_owned(),
        })
}

pub(crate) fn read_u64<T>(meta: &T, name: &str) -> Result<Option<u64>>
where
    T: redb::ReadableTable<&'static str, &'static [u8]>,
{
    let value = meta
        .get(name)
        .store("reading meta")?
        .map(|g| g.value().to_vec());
    value
        .map(|v| {
            <[u8; 8]>::try_from(v.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| Error::CorruptInternal {
                    what: format!("meta key {name}"),
                    reason: format!("expected an 8-byte integer, found {} bytes", v.len()),
                })
        })
        .transpose()
}

fn check_key(kind: Kind, key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        "a key must not be empty"
    } else if key.len() > MAX_KEY_BYTES {
        "a key must be at most 1024 bytes"
    } else if key.chars().any(char::is_control) {
        "a key must not contain control characters"
    } else {
        return Ok(());
    };
    Err(Error::InvalidKey {
        kind,
        key: key.chars().take(64).collect(),
        reason,
    })
}

pub(crate) fn list_in(rtx: &ReadTransaction, kind: Kind) -> Result<Vec<Entry>> {
    let table = rtx
        .open_table(records_table(kind))
        .store("opening a record table")?;
    let mut out = Vec::with_capacity(usize::try_from(table.len().store("counting")?).unwrap_or(0));
    for item in table.iter().store("listing records")? {
        let (key, value) = item.store("listing records")?;
        let (seq, bytes) = value.value();
        out.push(entry(kind, key.value(), seq, bytes)?);
    }
    Ok(out)
}

/// The net changes in `(since, current]` of the kinds in `kinds`, and the current sequence.
pub(crate) struct Changes {
    pub(crate) to_seq: u64,
    pub(crate) changes: Vec<Change>,
}

pub(crate) fn changes_in(rtx: &ReadTransaction, since: u64, kinds: KindSet) -> Result<Changes> {
    let meta = rtx.open_table(META).store("opening meta")?;
    let current = read_u64(&meta, meta::SEQ)?.unwrap_or(0);
    let horizon = read_u64(&meta, meta::HORIZON)?.unwrap_or(0);
    if since > current {
        return Err(Error::InvalidCursor {
            cursor: since,
            current,
        });
    }
    if since != 0 && since < horizon {
        return Err(Error::CursorTooOld { since, horizon });
    }
    let log = rtx.open_table(LOG).store("opening the change log")?;
    let mut records = Vec::with_capacity(Kind::COUNT);
    for kind in Kind::ALL {
        records.push(if kinds.contains(kind) {
            Some(
                rtx.open_table(records_table(kind))
                    .store("opening a record table")?,
            )
        } else {
            None
        });
    }
    let mut changes = Vec::new();
    for item in log
        .range(since.saturating_add(1)..)
        .store("scanning the change log")?
    {
        let (seq, value) = item.store("scanning the change log")?;
        let seq = seq.value();
        let (kind_name, key, deleted) = value.value();
        let kind = Kind::from_name(kind_name).ok_or_else(|| Error::CorruptInternal {
            what: format!("change log entry {seq}"),
            reason: format!("unknown kind `{kind_name}`"),
        })?;
        let Some(table) = &records[kind.index()] else {
            continue;
        };
        let op = if deleted {
            Op::Delete
        } else {
            let found = table.get(key).store("reading a record")?;
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
            Op::Put(raw(kind, key, bytes)?)
        };
        changes.push(Change {
            seq,
            kind,
            key: key.to_owned(),
            op,
        });
    }
    Ok(Changes {
        to_seq: current,
        changes,
    })
}

fn entry(kind: Kind, key: &str, seq: u64, bytes: &[u8]) -> Result<Entry> {
    Ok(Entry {
        kind,
        key: key.to_owned(),
        seq,
        value: raw(kind, key, bytes)?,
    })
}

pub(crate) fn raw(kind: Kind, key: &str, bytes: &[u8]) -> Result<Box<RawValue>> {
    RawValue::from_string(bytes_str(kind, key, bytes)?.to_owned()).map_err(|e| Error::Corrupt {
        kind,
        key: key.to_owned(),
        reason: format!("not JSON: {e}"),
    })
}

fn bytes_str<'b>(kind: Kind, key: &str, bytes: &'b [u8]) -> Result<&'b str> {
    std::str::from_utf8(bytes).map_err(|e| Error::Corrupt {
        kind,
        key: key.to_owned(),
        reason: format!("not UTF-8: {e}"),
    })
}

pub(crate) fn decode<T: DeserializeOwned>(kind: Kind, key: &str, json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| Error::Corrupt {
        kind,
        key: key.to_owned(),
        reason: e.to_string(),
    })
}
