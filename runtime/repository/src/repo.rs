//! The repository handle and its operations.

use crate::backend::{Backend, Location};
use crate::chunker::Chunking;
use crate::crypto::{ChunkId, IdSet, MasterKeys};
use crate::error::{Error, Result};
use crate::format::{self, Config, Content, Entry, PackId, SnapshotInfo};
use crate::index::{Index, IndexBuilder, Loc};
use crate::keys::{self, KeyFile, KeyProvider, KeySlotInfo, SlotFile};
use crate::lock::LockGuard;
use crate::mark::{Marks, NodeLine, SeenNodeChunks, parse_node};
use crate::pipeline::{self, Pipeline, PipelineConfig};
use crate::retention::Retention;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Metadata objects read at once when listing (snapshots, index files).
const METADATA_READS_IN_FLIGHT: usize = 16;
/// The longest protection period (100 years): any longer overflows the dates it is added to.
pub const MAX_PROTECTION: Duration = Duration::from_secs(100 * 365 * 86_400);
/// Packs `check --read-data` reads and verifies at once: one read while others decode on
/// both cores; each holds its whole pack (16 MiB by default) and one decoded frame.
const PACKS_VERIFIED_AT_ONCE: usize = 3;

/// Options of [`Repository::init`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct InitOptions {
    /// During this period after it is written, no object of the repository may be deleted or
    /// overwritten (immutability). Zero disables protection.
    pub protection: Duration,
    /// A label for the first key slot.
    pub label: String,
}

impl InitOptions {
    /// Default options: no protection.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the protection period.
    pub fn protection(mut self, p: Duration) -> Self {
        self.protection = p;
        self
    }
}

/// Options of a backup.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BackupOptions {
    /// Tags recorded in the snapshot.
    pub tags: Vec<String>,
    /// Chunking; `None` picks per artifact: [`Chunking::for_file`] for each file of a tree,
    /// [`Chunking::STREAM`] for streams.
    pub chunking: Option<Chunking>,
    /// zstd level for data (negative levels are faster still).
    pub zstd_level: i32,
    /// zstd level for frames that look like text (dumps, logs): a higher level pays there
    /// (on the reference dataset's SQL dumps level 3 stores 6.5 % less than level 1), while
    /// on binary pages it costs time for nothing.
    pub text_zstd_level: i32,
    /// Uncompressed bytes of new chunks compressed together as one frame (frames that look
    /// like text grow to [`TEXT_FRAME_FACTOR`](crate::TEXT_FRAME_FACTOR) times this); the
    /// chunk size compresses every chunk on its own.
    pub frame_bytes: usize,
    /// Compression threads (default: the available cores).
    pub threads: usize,
    /// Bytes read so far, updated as the backup runs (for progress bars).
    pub progress: Option<Arc<AtomicU64>>,
    /// Glob patterns of paths a tree backup leaves out (see [`BackupOptions::exclude`]).
    pub exclude: Vec<String>,
    /// The snapshot a tree backup takes unchanged files from (see [`Parent`]).
    pub parent: Parent,
    /// A tree backup stays on the filesystem of its root: a directory where another is
    /// mounted is kept, empty.
    pub one_file_system: bool,
    /// The host the snapshot is recorded as made on (default: this host's name), and whose
    /// latest snapshot of the same directory is the parent.
    pub host: Option<String>,
    /// Set to stop the backup (Ctrl-C): it saves no snapshot, indexes what it uploaded (the
    /// next backup reuses it), releases its lock and returns [`Error::Interrupted`].
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// Receives what a tree backup left out because it could not read it (see
    /// [`BackupOptions::left_out`]).
    pub left_out: Option<Arc<crate::LeftOut>>,
    /// How long to wait for a prune (or another operation holding the repository alone) to
    /// finish before failing with [`Error::Locked`] (default: not at all).
    pub lock_wait: Duration,
}

/// Where a tree backup takes the files that did not change from, instead of reading them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Parent {
    /// The latest tree snapshot of the same directory from the same host.
    #[default]
    Latest,
    /// This snapshot (id, unique prefix or `latest`).
    Snapshot(String),
    /// None: every file is read.
    None,
}

impl Default for BackupOptions {
    fn default() -> Self {
        Self {
            tags: Vec::new(),
            chunking: None,
            zstd_level: pipeline::DEFAULT_ZSTD_LEVEL,
            text_zstd_level: pipeline::DEFAULT_TEXT_ZSTD_LEVEL,
            frame_bytes: pipeline::DEFAULT_FRAME_BYTES,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            progress: None,
            exclude: Vec::new(),
            parent: Parent::Latest,
            one_file_system: false,
            host: None,
            stop: None,
            left_out: None,
            lock_wait: Duration::ZERO,
        }
    }
}

impl BackupOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a tag.
    pub fn tag(mut self, t: impl Into<String>) -> Self {
        self.tags.push(t.into());
        self
    }
    /// Sets the chunking.
    pub fn chunking(mut self, c: Chunking) -> Self {
        self.chunking = Some(c);
        self
    }
    /// Sets the zstd level, of text-like frames too.
    pub fn zstd_level(mut self, l: i32) -> Self {
        self.zstd_level = l;
        self.text_zstd_level = l;
        self
    }
    /// Sets the zstd level of text-like frames only.
    pub fn text_zstd_level(mut self, l: i32) -> Self {
        self.text_zstd_level = l;
        self
    }
    /// Sets the frame size.
    pub fn frame_bytes(mut self, n: usize) -> Self {
        self.frame_bytes = n;
        self
    }
    /// Sets the progress counter.
    pub fn progress(mut self, p: Arc<AtomicU64>) -> Self {
        self.progress = Some(p);
        self
    }
    /// Where a tree backup notes each file or directory it leaves out because this process
    /// cannot read it (a permission, a path too long, a read error of the disk), with why: the
    /// snapshot counts them in [`BackupSummary::unreadable`](crate::BackupSummary), and this
    /// names them.
    pub fn left_out(mut self, l: Arc<crate::LeftOut>) -> Self {
        self.left_out = Some(l);
        self
    }
    /// Waits up to `wait` for a prune running in the repository to finish, instead of
    /// failing at once (see [`BackupOptions::lock_wait`]).
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }
    /// Leaves out of a tree backup what `pattern` matches (and, for a directory, all under
    /// it). `*` and `?` match within one path component, `**` any number of components. A
    /// pattern without `/` matches a name at any depth (`*.tmp`, `lost+found`); one with `/`
    /// matches the path from the tree's root (`/postmaster.pid`; `pg_wal/**`, what the
    /// directory holds but not the directory).
    pub fn exclude(mut self, pattern: impl Into<String>) -> Self {
        self.exclude.push(pattern.into());
        self
    }
    /// Sets where a tree backup takes unchanged files from.
    pub fn parent(mut self, p: Parent) -> Self {
        self.parent = p;
        self
    }
    /// Refuses a tag or host a listing could not show as it is: empty, holding a control
    /// character (a newline would forge a line of `snapshots`), or a tag holding a comma
    /// (listings join tags with commas).
    pub(crate) fn check_labels(&self) -> Result<()> {
        let tags = self.tags.iter().map(|t| ("tag", t));
        for (what, v) in tags.chain(self.host.iter().map(|h| ("host", h))) {
            let why = if v.is_empty() {
                "is empty"
            } else if v.chars().any(char::is_control) {
                "holds a control character, which listings would show as another line"
            } else if what == "tag" && v.contains(',') {
                "holds a comma, which listings put between tags"
            } else {
                continue;
            };
            return Err(Error::Invalid(format!("the {what} {v:?} {why}")));
        }
        Ok(())
    }
    /// Keeps a tree backup on the filesystem of its root (see
    /// [`BackupOptions::one_file_system`]).
    pub fn one_file_system(mut self, yes: bool) -> Self {
        self.one_file_system = yes;
        self
    }
    /// Records the snapshot as made on `host`: a pod gets a new hostname each run, and a
    /// backup finds its parent among the snapshots of its host.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }
}

/// A snapshot object [`Repository::snapshots_with_damage`] could not read.
#[derive(Debug)]
#[non_exhaustive]
pub struct DamagedSnapshot {
    /// The snapshot's id (its object's name).
    pub id: String,
    /// When the store last wrote the object, by the store's clock.
    pub stored: Option<jiff::Timestamp>,
    /// Why it cannot be read.
    pub error: Error,
}

/// Which snapshots to list or forget.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SnapshotFilter {
    /// Snapshots carrying all of these tags.
    pub tags: Vec<String>,
    /// Snapshots carrying none of these tags.
    pub without_tags: Vec<String>,
    /// Snapshots of this tree path or stream name.
    pub source: Option<String>,
    /// Snapshots made on this host.
    pub host: Option<String>,
    /// Made at or after.
    pub since: Option<jiff::Timestamp>,
    /// Made before.
    pub until: Option<jiff::Timestamp>,
    /// A relative `source` made absolute against the current directory, as a backup of a
    /// relative path records it: a tree of it matches too.
    pub source_dir: Option<String>,
}

impl SnapshotFilter {
    /// Everything.
    pub fn new() -> Self {
        Self::default()
    }
    /// Requires a tag.
    pub fn tag(mut self, t: impl Into<String>) -> Self {
        self.tags.push(t.into());
        self
    }
    /// Leaves out the snapshots carrying a tag.
    pub fn without_tag(mut self, t: impl Into<String>) -> Self {
        self.without_tags.push(t.into());
        self
    }
    /// Requires a source (path or stream name). An absolute path is cleaned as a backup
    /// records it (`/data/` is `/data`).
    pub fn source(mut self, s: impl Into<String>) -> Self {
        let s = s.into();
        let clean = |p: &std::path::Path| crate::tree::clean(p).display().to_string();
        if s.starts_with('/') {
            self.source = Some(clean(std::path::Path::new(&s)));
        } else {
            self.source_dir = std::path::absolute(&s).ok().map(|p| clean(&p));
            self.source = Some(s);
        }
        self
    }
    /// Requires the host the snapshots were made on.
    pub fn host(mut self, h: impl Into<String>) -> Self {
        self.host = Some(h.into());
        self
    }
    /// Requires snapshots made at or after a time: RFC 3339 (`2026-01-31T12:00:00Z`), a date
    /// and time in time zone `zone` (`2026-01-31T12:00:00`), a date there (`2026-01-31`, its
    /// midnight) or a while ago (`36h`, `7d`, `2w`, `1y 6mo`; months on `zone`'s calendar).
    pub fn since(mut self, time: &str, zone: &jiff::tz::TimeZone) -> Result<Self> {
        self.since = Some(parse_time(time, zone)?);
        Ok(self)
    }
    /// Requires snapshots made before a time (as [`SnapshotFilter::since`] takes it).
    pub fn until(mut self, time: &str, zone: &jiff::tz::TimeZone) -> Result<Self> {
        self.until = Some(parse_time(time, zone)?);
        Ok(self)
    }
    fn matches(&self, s: &SnapshotInfo) -> bool {
        self.tags.iter().all(|t| s.tags.contains(t))
            && !self.without_tags.iter().any(|t| s.tags.contains(t))
            && self.source.as_deref().is_none_or(|p| {
                same_source(s, p)
                    || matches!(s.kind, crate::format::SnapshotKind::Tree { .. })
                        && self
                            .source_dir
                            .as_deref()
                            .is_some_and(|d| same_source(s, d))
            })
            && self.host.as_deref().is_none_or(|h| s.hostname == h)
            && self.since.is_none_or(|t| s.time >= t)
            && self.until.is_none_or(|t| s.time < t)
    }
}

/// Whether snapshot `s` is of `source`: a tree's path is compared cleaned, as builds before
/// 2026-12-06 recorded it as given (`/data/`).
fn same_source(s: &SnapshotInfo, source: &str) -> bool {
    match &s.kind {
        crate::format::SnapshotKind::Tree { path } if path.starts_with('/') => {
            path == source || crate::tree::clean(std::path::Path::new(path)).as_os_str() == source
        }
        _ => s.source() == source,
    }
}

/// A time as a filter takes it: RFC 3339 (`2026-01-31T12:00:00Z`), a date and time in `zone`
/// (`2026-01-31T12:00:00`, `2026-01-31 12:00`), a date there (`2026-01-31`, its midnight) or a
/// while ago (`36h`, `7d`, `2w`, `1y 6mo`: `Retention::parse_within`'s units).
pub fn parse_time(s: &str, zone: &jiff::tz::TimeZone) -> Result<jiff::Timestamp> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    let local = |t: jiff::civil::DateTime| t.to_zoned(zone.clone()).ok();
    // A date and time before a date: a date's parser would take the date of either.
    if let Some(z) = s.parse::<jiff::civil::DateTime>().ok().and_then(local) {
        return Ok(z.timestamp());
    }
    if let Some(z) = s
        .parse::<jiff::civil::Date>()
        .ok()
        .and_then(|d| local(d.to_datetime(jiff::civil::Time::midnight())))
    {
        return Ok(z.timestamp());
    }
    let bad = |why: String| {
        Error::Invalid(format!(
            "{s:?} is not a time: give an RFC 3339 time (2026-01-31T12:00:00Z), a local date \
             and time (2026-01-31T12:00:00), a date (2026-01-31, its midnight) or a while ago \
             (36h, 7d, 2w, 1y 6mo){why}"
        ))
    };
    let (months, secs) = cairn_retention::Retention::parse_within(s).map_err(|e| {
        bad(if s.ends_with('m') {
            format!(": {e}")
        } else {
            String::new()
        })
    })?;
    // Spans hold months only so far (`try_months`): beyond, an error rather than a panic.
    jiff::Span::new()
        .try_months(i64::from(months))
        .ok()
        .and_then(|span| {
            jiff::Timestamp::now()
                .to_zoned(zone.clone())
                .checked_sub(span)
                .ok()
        })
        .and_then(|z| {
            let secs = i64::try_from(secs).ok()?;
            z.timestamp()
                .checked_sub(jiff::SignedDuration::from_secs(secs))
                .ok()
        })
        .ok_or_else(|| bad(": it is too long ago".into()))
}

/// A damaged or missing object found by `check`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Problem {
    /// The object path.
    pub object: String,
    /// What is wrong.
    pub reason: String,
    /// Snapshots that can no longer be fully restored because of it.
    pub snapshots: Vec<String>,
}

/// The result of [`Repository::check`].
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct CheckReport {
    /// Damage: the repository is not healthy when this is not empty.
    pub errors: Vec<Problem>,
    /// Harmless findings (foreign files, unreferenced data that prune removes).
    pub warnings: Vec<String>,
    /// Snapshots checked.
    pub snapshots: usize,
    /// Packs whose data was read and verified.
    pub packs_read: usize,
    /// Bytes read and verified.
    pub bytes_read: u64,
    /// Packs the index names, read or not.
    pub packs: usize,
}

/// What [`Repository::stats`] reports.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct RepoStats {
    /// Snapshots.
    pub snapshots: usize,
    /// Bytes the snapshots hold, each counted whole (what restoring every one would write).
    pub snapshot_bytes: u64,
    /// Distinct chunks in the index (with any unreferenced ones `prune` has yet to remove).
    pub chunks: u64,
    /// Their bytes before compression.
    pub chunk_bytes: u64,
    /// Pack objects on the store.
    pub packs: u64,
    /// Their bytes: compressed, encrypted chunks and the pack headers.
    pub pack_bytes: u64,
    /// Bytes of every other object: index, snapshot contents and metadata, keys, config.
    pub metadata_bytes: u64,
}

/// Which packs [`Repository::check_data`] reads and verifies, besides checking structure.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum ReadData {
    /// None: structure only.
    None,
    /// Every pack.
    All,
    /// Group `n` of `m` (1 ≤ n ≤ m): the packs whose id, as a number, is `n - 1` modulo `m`.
    /// Checks of groups 1 to `m` on successive days together read every pack once.
    Group {
        /// Which group, from 1.
        n: u32,
        /// How many groups.
        m: u32,
    },
    /// This share of the packs (0.0–1.0, rounded, at least one), chosen at random on every
    /// check.
    Share(f64),
}

impl ReadData {
    /// Parses `N/M` (a group) or `P%` (a share), as `cairn repo check --read-data-subset`.
    pub fn parse_subset(s: &str) -> Result<Self> {
        let bad = || {
            Error::Invalid(format!(
                "`{s}` is not a subset of the data: give N/M (group N of M, 1 ≤ N ≤ M, e.g. \
                 2/7) or P% (a random share above 0, e.g. 10%)"
            ))
        };
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            // 0% would read nothing and report a clean check.
            return if p > 0.0 && p <= 100.0 {
                Ok(Self::Share(p / 100.0))
            } else {
                Err(bad())
            };
        }
        let (n, m) = s.split_once('/').ok_or_else(bad)?;
        let (n, m): (u32, u32) = (
            n.trim().parse().map_err(|_| bad())?,
            m.trim().parse().map_err(|_| bad())?,
        );
        if n == 0 || n > m {
            return Err(bad());
        }
        Ok(Self::Group { n, m })
    }

    /// Whether the pack named `hex` is read.
    fn reads(&self, hex: &str) -> bool {
        match *self {
            Self::None => false,
            Self::All => true,
            Self::Group { n, m } => hex
                .get(..16)
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .is_some_and(|v| v % u64::from(m) == u64::from(n - 1)),
            // Chosen by `chosen` beforehand.
            Self::Share(_) => true,
        }
    }

    /// The packs (of `packs`) a share reads: that share of them, rounded, at least one, at
    /// random; None for the other kinds, which choose by `reads`.
    fn chosen<'a>(&self, packs: &[&'a String]) -> Option<HashSet<&'a String>> {
        let Self::Share(share) = *self else {
            return None;
        };
        let n = packs.len();
        let k = ((n as f64 * share).round() as usize).clamp(usize::from(share > 0.0 && n > 0), n);
        let picked = rand::seq::index::sample(&mut rand::rng(), n, k);
        Some(picked.into_iter().map(|i| packs[i]).collect())
    }
}

impl CheckReport {
    /// Whether no damage was found.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// The result of [`Repository::forget`].
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct ForgetReport {
    /// Kept snapshots and the rules that keep them.
    pub kept: BTreeMap<String, Vec<&'static str>>,
    /// Snapshots removed (or that would be, in a dry run).
    pub removed: Vec<String>,
    /// Snapshots the policy would remove but the protection period keeps, with its end.
    pub protected: Vec<(String, String)>,
}

/// The result of [`Repository::repair_index`].
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct IndexRepair {
    /// Packs no readable index file listed, indexed again from their own headers (or that
    /// would be, in a dry run).
    pub packs_indexed: usize,
    /// The chunks in them.
    pub chunks_indexed: usize,
    /// Damaged index files removed once their packs were indexed again.
    pub index_files_removed: usize,
    /// Packs whose header is damaged (truncated, or fails authentication), with why: their
    /// chunks stay unindexed (`check` names the snapshots that need them). A store that
    /// fails to answer stops the repair with its error instead, writing nothing.
    pub packs_unreadable: Vec<(String, String)>,
    /// Packs the index lists that are gone: their chunks are dropped from the index, so the
    /// next backup of the same data stores them again, and the snapshots that need them
    /// restore again.
    pub packs_missing: Vec<String>,
    /// Index files that listed a missing pack, replaced by one without it.
    pub index_files_replaced: usize,
    /// Chunks left the index, and a repair marker says so: the next tree backup reads again
    /// the files of several chunks rather than taking them from an older parent.
    pub marked: bool,
}

/// The result of [`Repository::repair_packs`].
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct PackRepair {
    /// Each pack named, as it was found and what became of it.
    pub packs: Vec<RepairedPack>,
    /// The index repair that dropped the packs from the index.
    pub index: IndexRepair,
}

/// One pack [`Repository::repair_packs`] was asked to repair.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct RepairedPack {
    /// The pack's id.
    pub pack: String,
    /// Chunks the index places in it.
    pub chunks: usize,
    /// Of those, the ones that failed to authenticate, decode or match their id: dropped from
    /// the index, so the next backup of the same data stores them again.
    pub damaged: usize,
    /// Why, when it was damaged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The result of [`Repository::prune`].
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct PruneReport {
    /// Packs deleted (or that would be, in a dry run).
    pub packs_deleted: usize,
    /// Their bytes.
    pub bytes_deleted: u64,
    /// Unreferenced packs kept because they are protected.
    pub packs_protected: usize,
    /// Packs still in use.
    pub packs_kept: usize,
    /// Index files rewritten into one.
    pub index_files_replaced: usize,
    /// Orphaned snapshot contents deleted.
    pub contents_deleted: usize,
    /// Files of uploads that processes began and never finished (killed while writing),
    /// removed (or that would be): local repositories only.
    pub unfinished_removed: usize,
    /// Their bytes.
    pub unfinished_bytes: u64,
    /// Packs in use whose unused share reached [`PruneOptions::repack_unused`]: their live
    /// chunks were copied into new packs (or would be, in a dry run), and the next prune
    /// deletes them, so a restore that is reading them now still finds them.
    pub packs_repacked: usize,
    /// The live chunk bytes copied.
    pub bytes_repacked: u64,
    /// The unused chunk bytes in those packs, which their deletion frees.
    pub bytes_reclaimable: u64,
    /// Why repacking was given up, if it was (a pack that cannot be read); the rest of the
    /// prune went ahead.
    pub repack_error: Option<String>,
}

/// How [`Repository::prune_with`] prunes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PruneOptions {
    /// Report what would be done, change nothing.
    pub dry_run: bool,
    /// A pack in use is repacked once at least this share of its chunk bytes is unused
    /// (0.0–1.0; above 1.0, never). Default 0.2: unused data stays below about a fifth of
    /// the repository while copying each live byte rarely.
    pub repack_unused: f64,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            repack_unused: DEFAULT_REPACK_UNUSED,
        }
    }
}

/// How long an unfinished upload has not been written before `check` names it.
const UNFINISHED_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Default of [`PruneOptions::repack_unused`].
pub const DEFAULT_REPACK_UNUSED: f64 = 0.2;

/// How a restore runs.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RestoreOptions {
    pub(crate) progress: Option<Arc<AtomicU64>>,
    pub(crate) total: Option<Arc<AtomicU64>>,
    pub(crate) sparse: bool,
    pub(crate) delete: bool,
    pub(crate) stop: Option<tokio::sync::watch::Receiver<bool>>,
}

impl RestoreOptions {
    /// Defaults: no progress counters, every byte written.
    pub fn new() -> Self {
        Self::default()
    }

    /// A counter the restore adds the bytes it hands to the output to, as it goes (for a
    /// progress bar).
    pub fn progress(mut self, p: Arc<AtomicU64>) -> Self {
        self.progress = Some(p);
        self
    }

    /// A counter the restore sets to the bytes it is about to write as soon as it knows them
    /// (for a progress bar's length): a tree restore of selected paths knows them only once
    /// it has read the snapshot's content and selected its files.
    pub fn total(mut self, t: Arc<AtomicU64>) -> Self {
        self.total = Some(t);
        self
    }

    /// Whether a tree restore leaves holes where its files hold whole blocks of zeros
    /// (sparse files: disk images, preallocated files), instead of writing the zeros. Off by
    /// default, as in restic and borg: a file its program preallocated (PostgreSQL's WAL
    /// segments) is then no longer allocated, and a full disk shows later than the restore.
    pub fn sparse(mut self, yes: bool) -> Self {
        self.sparse = yes;
        self
    }

    /// Whether a tree restore, once every file is written, removes what the restored
    /// directories hold that the snapshot does not (below the included paths only, when
    /// some are named), so the target becomes the snapshot: a database's data directory rolled
    /// back in place, without the files it made since. Off by default: other files stay.
    pub fn delete(mut self, yes: bool) -> Self {
        self.delete = yes;
        self
    }

    /// Stops a tree restore once `stop` holds `true` (Ctrl-C): the files it was writing are
    /// removed (those it was replacing stay as they were) and the restore returns
    /// [`Error::Interrupted`].
    pub fn stop(mut self, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Returns once the restore is asked to stop; never without a stop signal.
    pub(crate) async fn stopped(&self) {
        match self.stop.clone() {
            Some(mut rx) => {
                if rx.wait_for(|stop| *stop).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }

    pub(crate) fn advance(&self, bytes: usize) {
        if let Some(p) = &self.progress {
            p.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    pub(crate) fn set_total(&self, bytes: u64) {
        if let Some(t) = &self.total {
            t.store(bytes, Ordering::Relaxed);
        }
    }
}

/// The result of a restore.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct RestoreSummary {
    /// Files written.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Entries removed from the target because the snapshot does not hold them
    /// ([`RestoreOptions::delete`]); a directory counts once, with what it held.
    pub deleted: u64,
    /// Paths a salvaging restore could not restore (damaged or missing data), with why; the
    /// rest of the tree was restored.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<(String, String)>,
}

pub(crate) struct Inner {
    pub(crate) backend: Backend,
    pub(crate) config: Config,
    pub(crate) keys: Arc<MasterKeys>,
    slot: String,
    pub(crate) index: Arc<RwLock<Index>>,
    /// Whether `index` has been read from the store: it is read on first need, not at open
    /// (a backup reads it afresh anyway, and a restore reads it beside the snapshot).
    index_read: AtomicBool,
    /// Snapshots listed before, by id: a snapshot object never changes, so listing again
    /// reads only the new ones (a `copy` of many snapshots lists both repositories for each).
    listed: std::sync::Mutex<HashMap<String, SnapshotInfo>>,
}

/// An open repository. Cheap to clone; every clone shares the index.
#[derive(Clone)]
pub struct Repository {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("url", &self.inner.backend.url)
            .finish_non_exhaustive()
    }
}

pub(crate) fn poisoned() -> Error {
    Error::Invalid("repository index lock poisoned".into())
}

/// How old, in seconds, a key slot with no config is taken for one an interrupted init left
/// (an init writes its config a moment after its slot).
const LEFT_SLOT_AGE: i64 = 600;

impl Repository {
    /// Creates a repository at `location`, with one key slot wrapped by `key`.
    pub async fn init(
        location: impl Into<Location>,
        key: &dyn KeyProvider,
        opts: InitOptions,
    ) -> Result<Self> {
        let location = location.into();
        if opts.protection > MAX_PROTECTION {
            return Err(Error::Invalid(format!(
                "a protection period of {} days is longer than the longest, 100 years",
                opts.protection.as_secs() / 86_400
            )));
        }
        let mut backend = Backend::connect(&location, true)?;
        if backend.get(format::CONFIG).await?.is_some() {
            return Err(Error::AlreadyInitialised { url: location.url });
        }
        // A repository whose config is lost still holds its data, which a new repository's
        // keys could never read: nothing is made over it.
        for prefix in ["snapshots/", "index/", "data/"] {
            if let Some(found) = backend.first(prefix).await? {
                return Err(Error::Invalid(format!(
                    "{} has no config but holds a repository's objects ({found}): a repository \
                     whose config is lost cannot be made again over its data. Put the config \
                     back from a copy (`cairn repo` then opens it), or init at another URL",
                    location.url
                )));
            }
        }
        // Key slots alone: an init stopped between its slot and its config. They open nothing
        // (no data was written under a key that has no config), and go; but not while they
        // are young, when another init may be between its slot and its config now.
        let slots: Vec<object_store::ObjectMeta> = backend
            .list("keys/")
            .await?
            .into_iter()
            .filter(|m| m.location.filename().is_some_and(format::is_id))
            .collect();
        if !slots.is_empty() {
            backend.probe_clock().await;
        }
        for m in slots {
            let age = backend.now() - m.last_modified.timestamp();
            if age < LEFT_SLOT_AGE {
                return Err(Error::Invalid(format!(
                    "{} has a key slot written {age} s ago ({}) but no config: another init may \
                     be making the repository now. If none is, init again in {} minutes, when \
                     the slot is taken for one an interrupted init left, or remove it",
                    location.url,
                    m.location,
                    LEFT_SLOT_AGE / 60
                )));
            }
            backend.delete_any(m.location.as_ref()).await.map_err(|e| {
                Error::Invalid(format!(
                    "{} has key slots but no config, as an init stopped before its config \
                     leaves it, and {} cannot be removed ({e}); remove it, then init again",
                    location.url, m.location
                ))
            })?;
            tracing::warn!(slot = %m.location, "removed a key slot an earlier, unfinished init left");
        }
        let keys = MasterKeys::generate();
        let mut config = Config {
            format: format::FORMAT_NAME.into(),
            version: format::FORMAT_VERSION,
            id: format::new_id(),
            created: jiff::Timestamp::now(),
            // Whole seconds, rounded up: never shorter than asked (1 ms was none).
            protection_secs: opts.protection.as_secs()
                + u64::from(opts.protection.subsec_nanos() > 0),
            object_lock: false,
        };
        let slot = write_slot(&backend, &config.id, &keys, key, &opts.label).await?;
        let slot_path = format::key_path(&slot);
        if let Err(e) = Self::write_config(&mut backend, &mut config, &location, &slot_path).await {
            // A write reported failed may have landed (a retry after a timeout finds its own
            // first attempt): the config there is then this repository's, and its key stays.
            let ours = match backend.get(format::CONFIG).await {
                Ok(Some(b)) => {
                    serde_json::from_slice::<Config>(&b).is_ok_and(|c| c.id == config.id)
                }
                _ => false,
            };
            if !ours {
                // The key slot of a repository that was not made would be taken for one of
                // the next init's (and refused by it).
                let _ = backend.delete_any(&format::key_path(&slot)).await;
                return Err(e);
            }
        }
        // The slot was written before the config said what protects the repository: written
        // again under that protection, or a deleted slot would leave the protected data
        // unreadable. (A crash in between leaves both slots, either of which opens it.)
        let slot = if opts.protection.is_zero() {
            slot
        } else {
            let protected = write_slot(&backend, &config.id, &keys, key, &opts.label).await?;
            backend.delete_any(&format::key_path(&slot)).await?;
            protected
        };
        // A new repository's index is known: empty.
        Ok(Self::from_parts(
            backend,
            config,
            keys,
            slot,
            Some(Index::default()),
        ))
    }

    /// Writes a new repository's config, under Object Lock where the bucket has it and a
    /// protection period is asked for. `slot` is the key slot init wrote just before: whether
    /// the store keeps versions of it says whether Object Lock can hold anything.
    async fn write_config(
        backend: &mut Backend,
        config: &mut Config,
        location: &Location,
        slot: &str,
    ) -> Result<()> {
        // As the config keeps it (whole seconds, rounded up), so that what init reports is
        // what holds.
        backend.protection = Duration::from_secs(config.protection_secs);
        let already = |e| match e {
            Error::Protected { .. } => Error::AlreadyInitialised {
                url: location.url.clone(),
            },
            e => e,
        };
        let body = |c: &Config| {
            serde_json::to_vec_pretty(c)
                .map(Bytes::from)
                .map_err(|e| Error::Invalid(e.to_string()))
        };
        // On S3 with a protection period, data objects go under Object Lock when the bucket
        // has it enabled; the config, written first, is the probe. Object Lock needs
        // versioning: a server that keeps no versions (s3s-fs) would take the retention
        // headers and hold nothing, so it is not sent them.
        let lockable = !backend.protection.is_zero() && backend.supports_object_lock();
        if lockable && !keeps_versions(backend, slot).await? {
            tracing::warn!(
                url = %location.url,
                "the store keeps no object versions, so S3 Object Lock cannot hold its objects; protection is enforced by cairn only"
            );
        } else if lockable {
            config.object_lock = true;
            backend.object_lock = true;
            match backend.put_data(format::CONFIG, body(config)?).await {
                Ok(()) => {}
                Err(Error::Store { ref cause, .. }) if lacks_object_lock(cause) => {
                    tracing::warn!(
                        url = %location.url,
                        "the bucket has no Object Lock configuration; protection is enforced by cairn only"
                    );
                    config.object_lock = false;
                    backend.object_lock = false;
                }
                Err(e) => return Err(already(e)),
            }
        }
        if !config.object_lock {
            backend
                .put_data(format::CONFIG, body(config)?)
                .await
                .map_err(already)?;
        }
        Ok(())
    }

    /// The folders directly under `location` that hold a repository, by name, sorted: where
    /// several share one location (a DR location keeps each cluster's in a folder named by its
    /// id). Reads only, and needs no key.
    /// Only folders whose name passes `wanted` are looked into.
    pub async fn repositories_at(
        location: impl Into<Location>,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>> {
        Backend::connect(&location.into(), false)?
            .repositories(wanted)
            .await
    }

    /// Opens the repository at `location` with `key`. Reads only: a wrong key writes nothing.
    pub async fn open(location: impl Into<Location>, key: &dyn KeyProvider) -> Result<Self> {
        let location = location.into();
        let mut backend = Backend::connect(&location, false)?;
        // The key slots are read while the config is: on a remote store, one round trip
        // fewer before the key derivation.
        let (config, slots) = tokio::join!(backend.get(format::CONFIG), read_slots(&backend));
        let config = match config? {
            Some(b) => Config::parse(&b, &location.url)?,
            // A store that cannot list either (a bucket that does not exist) says why: `init`
            // would fail the same way.
            None => {
                return Err(slots
                    .err()
                    .unwrap_or(Error::NotARepository { url: location.url }));
            }
        };
        // The config is not authenticated: a period beyond what init allows is taken as the
        // longest, never wrapped round to none.
        backend.protection = Duration::from_secs(config.protection_secs).min(MAX_PROTECTION);
        backend.object_lock = config.object_lock;
        let (keys, slot) = open_slots(slots?, &config.id, key).await?;
        Ok(Self::from_parts(backend, config, keys, slot, None))
    }

    /// Opens the local repository in `dir` with the key in `key_file`, creating both when
    /// absent: the zero-setup default repository of `cairn run`.
    pub async fn open_or_init_local(
        dir: impl AsRef<std::path::Path>,
        key_file: impl AsRef<std::path::Path>,
    ) -> Result<Self> {
        let (dir, key_file) = (dir.as_ref(), key_file.as_ref());
        if dir.join(format::CONFIG).exists() {
            // A new key would open nothing, and would stand where the user expects theirs.
            if !key_file.exists() {
                return Err(Error::Invalid(format!(
                    "the repository {} exists, but its key file {} is missing: put back your copy \
                     of it; without it the repository cannot be opened",
                    dir.display(),
                    key_file.display()
                )));
            }
            Self::open(dir, &KeyFile::load(key_file)?).await
        } else {
            let key = KeyFile::load_or_create(key_file)?;
            let opts = InitOptions {
                label: "default local key file".into(),
                ..Default::default()
            };
            Self::init(dir, &key, opts).await
        }
    }

    fn from_parts(
        backend: Backend,
        config: Config,
        keys: MasterKeys,
        slot: String,
        index: Option<Index>,
    ) -> Self {
        let index_read = index.is_some().into();
        backend.renew_with(Some(format::key_path(&slot)));
        Self {
            inner: Arc::new(Inner {
                backend,
                config,
                keys: Arc::new(keys),
                slot,
                index: Arc::new(RwLock::new(index.unwrap_or_default())),
                index_read,
                listed: Default::default(),
            }),
        }
    }

    /// The repository's id (from its config).
    pub fn id(&self) -> &str {
        &self.inner.config.id
    }

    /// Whether data objects are also under S3 Object Lock retention (compliance mode), so
    /// not even the bucket's owner can delete them inside the protection period.
    pub fn object_lock(&self) -> bool {
        self.inner.backend.object_lock
    }

    /// The protection period set at init.
    pub fn protection(&self) -> Duration {
        self.inner.backend.protection
    }

    pub(crate) async fn start_backup(
        &self,
        opts: &BackupOptions,
        default: Chunking,
    ) -> Result<(LockGuard, Pipeline)> {
        let lock =
            LockGuard::acquire_waiting(&self.inner.backend, "backup", opts.lock_wait, &|| {
                opts.stop.as_ref().is_some_and(|s| *s.borrow())
            })
            .await?;
        // Dedup against what other processes stored since this handle opened.
        if let Err(e) = self.update_index().await {
            lock.release().await;
            return Err(e);
        }
        match self.start_pipeline(opts, default, self.inner.index.clone(), &lock) {
            Ok(p) => Ok((lock, p)),
            Err(e) => {
                lock.release().await;
                Err(e)
            }
        }
    }

    /// A backup pipeline writing into this repository, deduplicating against `index`.
    fn start_pipeline(
        &self,
        opts: &BackupOptions,
        default: Chunking,
        index: Arc<RwLock<Index>>,
        lock: &LockGuard,
    ) -> Result<Pipeline> {
        let cfg = PipelineConfig {
            chunking: opts.chunking.unwrap_or(default),
            level: opts.zstd_level,
            text_level: opts.text_zstd_level,
            frame_bytes: opts.frame_bytes,
            pack_bytes: pipeline::DEFAULT_PACK_BYTES,
            threads: opts.threads,
            progress: opts.progress.clone(),
            list_ids: (self.inner.config.version >= format::LIST_CHUNKS_VERSION).then_some(
                if default == Chunking::NODES {
                    format::NODE_LIST_IDS
                } else {
                    format::LIST_IDS
                },
            ),
            // A tree's files (a copy carries trees too): unchanged ones then cost the next
            // snapshot one id each. A stream's list stays in its content below LIST_IDS.
            min_listed: (default == Chunking::PAGES).then_some(format::MIN_LISTED_IDS),
            lists_by_content: self.inner.config.version >= format::LISTS_BY_CONTENT_VERSION,
            at_lines: default == Chunking::NODES,
        };
        let shared = pipeline::Shared {
            backend: self.inner.backend.clone(),
            keys: self.inner.keys.clone(),
            index,
            lock: lock.check(),
        };
        Pipeline::start(shared, cfg)
    }

    /// Writes the content (a tree's nodes compressed at the levels `opts` gives) and then
    /// the snapshot `info` (given its content's id, and the content's bytes in its stored
    /// bytes): the snapshot is the commit.
    pub(crate) async fn commit(
        &self,
        lock: &LockGuard,
        content: Content,
        mut info: SnapshotInfo,
        opts: &BackupOptions,
    ) -> Result<SnapshotInfo> {
        let mut content = content;
        info.summary.stored_bytes += self.store_nodes(lock, &mut content, opts).await?;
        let keys = &self.inner.keys;
        info.content = format::new_id();
        let sealed = format::seal_json(keys, "content", &info.content, &content)?;
        drop(content);
        info.summary.stored_bytes += sealed.len() as u64;
        self.inner
            .backend
            .put_data(&format::content_path(&info.content), Bytes::from(sealed))
            .await?;
        // What it shares with older snapshots is retained as long as it is, before it counts.
        self.retain_shared(&info).await?;
        let plain = serde_json::to_vec(&info).map_err(|e| Error::Invalid(e.to_string()))?;
        let sealed = format::seal_object(keys, "snapshot", &info.id, &plain);
        // Still held: had another process taken the lock for stale, a prune may have deleted
        // packs this snapshot needs, which it would name.
        lock.held().await?;
        self.inner
            .backend
            .put_data(&format::snapshot_path(&info.id), Bytes::from(sealed))
            .await?;
        tracing::info!(snapshot = %info.id, bytes = info.summary.bytes, stored = info.summary.stored_bytes, "snapshot written");
        Ok(info)
    }

    /// Version 3: stores a tree's nodes in chunks of their own, as JSON lines cut by content
    /// ([`Chunking::NODES`]), and names those in the content instead of the nodes. A snapshot
    /// then stores again only the stretches of nodes that changed since the last one, and a
    /// reader takes the nodes one by one as their chunks arrive. They go in packs of their
    /// own, so reading a tree's nodes reads no file data. Returns the bytes stored.
    async fn store_nodes(
        &self,
        lock: &LockGuard,
        content: &mut Content,
        opts: &BackupOptions,
    ) -> Result<u64> {
        let Some((nodes, node_chunks, node_lists)) = content.tree_parts() else {
            return Ok(0);
        };
        // A copy's nodes arrive with the ids of the chunks that held them where they were.
        (*node_chunks, *node_lists) = Default::default();
        if self.inner.config.version < format::NODE_CHUNKS_VERSION || nodes.is_empty() {
            return Ok(0);
        }
        // The backup's compression; not its progress, which counts the data read.
        let node_opts = BackupOptions {
            zstd_level: opts.zstd_level,
            text_zstd_level: opts.text_zstd_level,
            threads: opts.threads,
            ..BackupOptions::default()
        };
        let pipeline =
            self.start_pipeline(&node_opts, Chunking::NODES, self.inner.index.clone(), lock)?;
        let (tx, blocks) = (pipeline.sender(), pipeline.blocks());
        let written = std::mem::take(nodes);
        let fed = tokio::task::spawn_blocking(move || -> Result<()> {
            let tx = tx.ok_or(Error::Aborted)?;
            let send = |input| tx.blocking_send(input).map_err(|_| Error::Aborted);
            let block = || {
                let mut b = blocks.take().unwrap_or_default();
                b.clear();
                b
            };
            let mut buf = block();
            for n in &written {
                format::write_node_line(&mut buf, n)?;
                if buf.len() >= pipeline::INPUT_BLOCK {
                    send(pipeline::Input::Data(std::mem::replace(&mut buf, block())))?;
                }
            }
            send(pipeline::Input::Data(buf))?;
            send(pipeline::Input::EndFile)
        })
        .await
        .map_err(|e| Error::Invalid(format!("node task failed: {e}")));
        // The pipeline's error is the cause when both failed.
        let (cut, packed) = pipeline.finish().await?;
        fed??;
        let stream = cut.files.into_iter().next().unwrap_or_default();
        (node_chunks.0, node_lists.0) = (stream.chunks, stream.lists);
        Ok(packed.stored_bytes)
    }

    async fn snapshot_ids(&self) -> Result<Vec<String>> {
        self.inner.backend.list_ids("snapshots/").await
    }

    async fn read_snapshot(&self, id: &str) -> Result<SnapshotInfo> {
        let path = format::snapshot_path(id);
        let b = self
            .inner
            .backend
            .get(&path)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "snapshot",
                id: id.to_string(),
            })?;
        let plain = format::open_object(&self.inner.keys, "snapshot", id, &path, &b)?;
        let info: SnapshotInfo =
            serde_json::from_slice(&plain).map_err(|e| Error::corrupt(&path, e))?;
        if info.id != id {
            return Err(Error::corrupt(&path, "holds another snapshot's id"));
        }
        Ok(info)
    }

    /// Lists snapshots matching `filter`, oldest first. A snapshot object that is damaged is
    /// left out with a warning naming it (`forget ID` removes it), so one damaged object does
    /// not hide every other snapshot; prune, which must know every snapshot, refuses instead.
    pub async fn snapshots(&self, filter: &SnapshotFilter) -> Result<Vec<SnapshotInfo>> {
        let (found, damaged) = self.snapshots_and_damage(filter).await?;
        for (id, e) in damaged {
            tracing::warn!("snapshot {id} is left out: {e} (`cairn repo forget {id}` removes it)");
        }
        Ok(found)
    }

    /// Waits up to `wait` for a prune (or another operation that holds the repository alone)
    /// to finish, reading the locks only, so that a backup started next is not refused
    /// ([`Error::Locked`] once `wait`
    /// is over; [`Error::Interrupted`] as soon as `stopped` says so). A caller that must not
    /// wait while holding something (an application quiesced for the backup) waits here first.
    pub async fn wait_for_exclusive(
        &self,
        wait: Duration,
        stopped: &(dyn Fn() -> bool + Sync),
    ) -> Result<()> {
        crate::lock::wait_unlocked(&self.inner.backend, wait, stopped).await
    }

    /// [`Repository::snapshots`], with the snapshot objects left out as damaged (of any source:
    /// what they hold cannot be read), each with when the store last wrote it, for a caller
    /// that must not take an older snapshot for the newest unawares.
    pub async fn snapshots_with_damage(
        &self,
        filter: &SnapshotFilter,
    ) -> Result<(Vec<SnapshotInfo>, Vec<DamagedSnapshot>)> {
        let (found, damaged) = self.snapshots_and_damage(filter).await?;
        let mut left_out = Vec::with_capacity(damaged.len());
        for (id, error) in damaged {
            let path = format::snapshot_path(&id);
            let stored = match self.inner.backend.head(&path).await? {
                Some(meta) => jiff::Timestamp::new(
                    meta.last_modified.timestamp(),
                    meta.last_modified.timestamp_subsec_nanos() as i32,
                )
                .ok(),
                // Forgotten since it was read.
                None => continue,
            };
            left_out.push(DamagedSnapshot { id, stored, error });
        }
        Ok((found, left_out))
    }

    /// [`Repository::snapshots`], with the ids of the damaged snapshot objects and why.
    async fn snapshots_and_damage(
        &self,
        filter: &SnapshotFilter,
    ) -> Result<(Vec<SnapshotInfo>, Vec<(String, Error)>)> {
        let ids = self.snapshot_ids().await?;
        // A cache: a panic elsewhere while it was held leaves nothing wrong in it.
        let listed = || {
            self.inner
                .listed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let (mut v, mut unread) = (Vec::with_capacity(ids.len()), Vec::new());
        {
            let l = listed();
            for id in &ids {
                match l.get(id) {
                    Some(s) => v.push(s.clone()),
                    None => unread.push(id.clone()),
                }
            }
        }
        let results: Vec<(String, Result<SnapshotInfo>)> = futures::stream::iter(unread)
            .map(|id| async move {
                let r = self.read_snapshot(&id).await;
                (id, r)
            })
            .buffer_unordered(METADATA_READS_IN_FLIGHT)
            .collect()
            .await;
        let (mut read, mut damaged) = (Vec::new(), Vec::new());
        for (id, r) in results {
            match r {
                Ok(s) => read.push(s),
                // Forgotten since it was listed.
                Err(Error::NotFound { .. }) => {}
                Err(e @ Error::Corrupt { .. }) => damaged.push((id, e)),
                Err(e) => return Err(e),
            }
        }
        damaged.sort_by(|a, b| a.0.cmp(&b.0));
        {
            // Forgotten snapshots leave the cache as they leave the listing.
            let present: HashSet<&String> = ids.iter().collect();
            let mut l = listed();
            l.retain(|id, _| present.contains(id));
            l.extend(read.iter().map(|s| (s.id.clone(), s.clone())));
        }
        v.extend(read);
        v.retain(|s| filter.matches(s));
        v.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.id.cmp(&b.id)));
        Ok((v, damaged))
    }

    /// [`Repository::snapshot`], for a restore that follows: the chunk index, when this
    /// handle has not read it, is read meanwhile instead of after (on a remote store, the
    /// listing and reading of snapshots and of index files overlap).
    pub async fn snapshot_to_restore(&self, id_or_prefix: &str) -> Result<SnapshotInfo> {
        self.beside_index(self.snapshot(id_or_prefix)).await
    }

    /// Awaits `work` while the chunk index, when this handle has not read it, loads on
    /// another task (its files are decrypted and decoded as they arrive, on another core).
    /// When `work` fails (a snapshot id mistyped), the load is stopped rather than waited for.
    pub(crate) async fn beside_index<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        let loading = (!self.inner.index_read.load(Ordering::Acquire)).then(|| {
            let repo = self.clone();
            tokio::spawn(async move { repo.refresh_index().await })
        });
        let done = work.await;
        if let Some(h) = loading {
            if done.is_err() {
                h.abort();
                return done;
            }
            h.await
                .map_err(|e| Error::Invalid(format!("index task failed: {e}")))??;
        }
        done
    }

    /// [`Repository::snapshots`], for a restore of one of them that follows: the chunk index,
    /// when this handle has not read it, is read meanwhile (as [`Repository::snapshot_to_restore`]).
    pub async fn snapshots_to_restore(&self, filter: &SnapshotFilter) -> Result<Vec<SnapshotInfo>> {
        self.beside_index(self.snapshots(filter)).await
    }

    /// [`Repository::snapshot`] for what takes only a tree (a listing, a diff, a backup's
    /// parent, a tree restore): `latest` is the newest *tree* snapshot, so that a stream saved
    /// since (a nightly dump beside the directory's backups) does not hide the trees.
    pub async fn tree_snapshot(&self, id_or_prefix: &str) -> Result<SnapshotInfo> {
        self.latest_of_kind(id_or_prefix, true).await
    }

    /// [`Repository::snapshot`] for what takes only a stream: `latest` is the newest *stream*
    /// snapshot, not a tree saved since.
    pub async fn stream_snapshot(&self, id_or_prefix: &str) -> Result<SnapshotInfo> {
        self.latest_of_kind(id_or_prefix, false).await
    }

    /// The snapshot `id_or_prefix` names, where `latest` is the newest tree (`tree`) or the
    /// newest stream.
    async fn latest_of_kind(&self, id_or_prefix: &str, tree: bool) -> Result<SnapshotInfo> {
        if id_or_prefix != "latest" {
            return self.snapshot(id_or_prefix).await;
        }
        self.snapshots(&SnapshotFilter::default())
            .await?
            .into_iter()
            .rev()
            .find(|s| matches!(s.kind, format::SnapshotKind::Tree { .. }) == tree)
            .ok_or_else(|| Error::NotFound {
                kind: if tree {
                    "tree snapshot"
                } else {
                    "stream snapshot"
                },
                id: "latest".into(),
            })
    }

    /// Finds a snapshot by id or unique id prefix; `latest` is the newest snapshot, of either
    /// kind ([`Repository::tree_snapshot`] and [`Repository::stream_snapshot`] take one kind).
    pub async fn snapshot(&self, id_or_prefix: &str) -> Result<SnapshotInfo> {
        if id_or_prefix == "latest" {
            return self
                .snapshots(&SnapshotFilter::default())
                .await?
                .pop()
                .ok_or_else(|| Error::NotFound {
                    kind: "snapshot",
                    id: "latest".into(),
                });
        }
        // A whole id is read directly: no listing (a round trip, and a long one on a large
        // bucket); it cannot be a prefix of another id.
        if format::is_id(id_or_prefix) {
            return self.read_snapshot(id_or_prefix).await;
        }
        let ids: Vec<String> = self
            .snapshot_ids()
            .await?
            .into_iter()
            .filter(|i| i.starts_with(id_or_prefix))
            .collect();
        match ids.as_slice() {
            [one] => self.read_snapshot(one).await,
            [] => Err(Error::NotFound {
                kind: "snapshot",
                id: id_or_prefix.to_string(),
            }),
            _ => Err(Error::Ambiguous {
                prefix: id_or_prefix.to_string(),
            }),
        }
    }

    /// A snapshot's content, with the chunk lists kept in list chunks read.
    pub(crate) async fn content(&self, info: &SnapshotInfo) -> Result<Content> {
        let mut content = self.content_object(info).await?;
        self.read_lists(&mut content, info).await?;
        Ok(content)
    }

    /// Fills in the chunk lists that format version 2 keeps in list chunks.
    pub(crate) async fn read_lists(
        &self,
        content: &mut Content,
        info: &SnapshotInfo,
    ) -> Result<()> {
        self.fill_lists(content.chunk_lists(), info).await
    }

    /// Reads the list chunks of each pair into the ids they hold.
    pub(crate) async fn fill_lists(
        &self,
        lists: Vec<(&[ChunkId], &mut Vec<ChunkId>)>,
        info: &SnapshotInfo,
    ) -> Result<()> {
        let ids: Vec<ChunkId> = lists.iter().flat_map(|(l, _)| l.iter().copied()).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let mut read = Box::pin(self.read_chunks(&ids, &info.id).await?);
        let mut got: Vec<Bytes> = Vec::with_capacity(ids.len());
        while let Some(batch) = read.next().await {
            got.extend(batch?);
        }
        let bad = || {
            let path = format::content_path(&info.content);
            with_snapshot(
                Error::corrupt(&path, "a list chunk is not a whole number of chunk ids"),
                &info.id,
            )
        };
        let mut got = got.into_iter();
        for (l, out) in lists {
            out.clear();
            for _ in l {
                let b = got.next().ok_or_else(bad)?;
                out.extend(format::decode_list(&b).ok_or_else(bad)?);
            }
        }
        Ok(())
    }

    /// A snapshot's content object, with a tree's nodes read from its node chunks (version
    /// 3) and its files' chunk lists still in their list chunks.
    pub(crate) async fn content_object(&self, info: &SnapshotInfo) -> Result<Content> {
        let mut content = self.content_object_as(info).await?;
        self.read_nodes(&mut content, info).await?;
        Ok(content)
    }

    /// Reads the nodes of a tree kept in node chunks (version 3) into its `nodes`, and checks
    /// that they have the shape a restore needs ([`crate::tree::TreeShape`]): every reader
    /// of a tree's nodes for a restore, `ls`, `diff` or a repair comes here, so a damaged or
    /// forged tree is refused before anything is made of it.
    async fn read_nodes(&self, content: &mut Content, info: &SnapshotInfo) -> Result<()> {
        let Some((nodes, node_chunks, node_lists)) = content.tree_parts() else {
            return Ok(());
        };
        self.each_node(info, node_chunks, node_lists, |n| nodes.push(n))
            .await?;
        crate::tree::check_shape(nodes, info)
    }

    /// Hands each node of a tree's node chunks, read as `T`, to `each` as the chunks are
    /// read, with `chunks` first read from `lists` when those hold the ids. Nothing for a
    /// tree that keeps its nodes in its content object.
    pub(crate) async fn each_node<T: serde::de::DeserializeOwned>(
        &self,
        info: &SnapshotInfo,
        chunks: &mut format::ChunkList,
        lists: &format::ChunkList,
        mut each: impl FnMut(T) + Send,
    ) -> Result<()> {
        *chunks = self
            .node_chunk_ids(info, std::mem::take(chunks), lists)
            .await?;
        let all = SeenNodeChunks::default();
        self.node_lines(info, &chunks.0, &all, |l| {
            if let NodeLine::Line(line) = l {
                each(parse_node(info, line)?);
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// The content object of `info` read as `T`: a reader that wants less of it than
    /// [`Content`] holds keeps only that.
    pub(crate) async fn content_object_as<T: serde::de::DeserializeOwned>(
        &self,
        info: &SnapshotInfo,
    ) -> Result<T> {
        let path = format::content_path(&info.content);
        let b = self
            .inner
            .backend
            .get(&path)
            .await?
            .ok_or_else(|| Error::Missing {
                object: path.clone(),
                snapshots: vec![info.id.clone()],
            })?;
        let plain = format::open_object(&self.inner.keys, "content", &info.content, &path, &b)
            .map_err(|e| with_snapshot(e, &info.id))?;
        serde_json::from_slice(&plain)
            .map_err(|e| with_snapshot(Error::corrupt(&path, e), &info.id))
    }

    /// Plans the reads of `ids` and returns the decoded chunks in order. Chunks this handle
    /// has not seen (written by another process since it opened) are found by reloading the
    /// index once.
    pub(crate) async fn read_chunks(
        &self,
        ids: &[ChunkId],
        snapshot: &str,
    ) -> Result<impl futures::Stream<Item = Result<Vec<Bytes>>> + Send + 'static> {
        // Read now, it is as fresh as a reload on a miss would make it.
        let fresh = !self.inner.index_read.load(Ordering::Acquire);
        if fresh {
            self.refresh_index().await?;
        }
        let planned = {
            let idx = self.inner.index.read().map_err(|_| poisoned())?;
            crate::restore::plan(&idx, &self.inner.keys, ids)
        };
        let plan = match planned {
            Ok(u) => u,
            Err(Error::Missing { .. }) if !fresh => {
                self.update_index().await?;
                let idx = self.inner.index.read().map_err(|_| poisoned())?;
                crate::restore::plan(&idx, &self.inner.keys, ids)
                    .map_err(|e| with_snapshot(e, snapshot))?
            }
            Err(e) => return Err(with_snapshot(e, snapshot)),
        };
        let snap = snapshot.to_string();
        Ok(
            crate::restore::chunks(self.inner.backend.clone(), self.inner.keys.clone(), plan)
                .map(move |r| r.map_err(|e| with_snapshot(e, &snap))),
        )
    }

    /// Reloads the chunk index from the store; returns why each index file it skipped is
    /// damaged.
    pub(crate) async fn refresh_index(&self) -> Result<Vec<Error>> {
        let files = self.inner.backend.list_sized_ids("index/").await?;
        self.reload_index(files).await
    }

    async fn reload_index(&self, files: Vec<(String, u64)>) -> Result<Vec<Error>> {
        let mut index = IndexBuilder::with_capacity(chunk_bound(&files));
        let read = read_index(&self.inner.backend, &self.inner.keys, files, |id, packs| {
            index.add_file(id, packs)
        });
        let damaged = read.await?;
        *self.inner.index.write().map_err(|_| poisoned())? = index.finish();
        self.inner.index_read.store(true, Ordering::Release);
        Ok(damaged)
    }

    /// Brings the chunk index up to date for a backup or a read: reads only the index files
    /// this handle has not read (index files are never overwritten), or all of them again
    /// when one it read is gone (a prune replaced it). Damaged files are skipped with a
    /// warning, as by [`Repository::refresh_index`].
    pub(crate) async fn update_index(&self) -> Result<()> {
        let files = self.inner.backend.list_sized_ids("index/").await?;
        let new = {
            let idx = self.inner.index.read().map_err(|_| poisoned())?;
            let listed: HashSet<&str> = files.iter().map(|(id, _)| id.as_str()).collect();
            let whole = self.inner.index_read.load(Ordering::Acquire)
                && idx.files.keys().all(|f| listed.contains(f.as_str()));
            whole.then(|| {
                let new: Vec<(String, u64)> = files
                    .iter()
                    .filter(|(id, _)| !idx.files.contains_key(id))
                    .cloned()
                    .collect();
                new
            })
        };
        let Some(new) = new else {
            return self.reload_index(files).await.map(drop);
        };
        if new.is_empty() {
            return Ok(());
        }
        let bound = chunk_bound(&new);
        // Read and decoded before the index is taken: other tasks of this handle use it
        // meanwhile.
        let mut read = Vec::new();
        read_index(&self.inner.backend, &self.inner.keys, new, |id, packs| {
            read.push((id, packs))
        })
        .await?;
        let mut idx = self.inner.index.write().map_err(|_| poisoned())?;
        let mut index = IndexBuilder::extend(std::mem::take(&mut *idx));
        index.reserve(bound);
        for (id, packs) in read {
            index.add_file(id, packs);
        }
        *idx = index.finish();
        Ok(())
    }

    /// A snapshot's content for a restore; the index, when not read yet, is read beside it
    /// (on another core: both are decrypted and decoded).
    pub(crate) async fn restore_content(&self, info: &SnapshotInfo) -> Result<Content> {
        self.restore_content_of(info, |_| Ok(())).await
    }

    /// [`Repository::restore_content`], with `keep` trimming the content before the chunk
    /// lists are read, so a partial restore reads only the lists it restores.
    pub(crate) async fn restore_content_of(
        &self,
        info: &SnapshotInfo,
        keep: impl FnOnce(&mut Content) -> Result<()>,
    ) -> Result<Content> {
        let mut content = self.beside_index(self.content_object_as(info)).await?;
        self.read_nodes(&mut content, info).await?;
        keep(&mut content)?;
        self.read_lists(&mut content, info).await?;
        Ok(content)
    }

    /// Verifies the repository. Structure always: config, key slots, index files, snapshots
    /// and their contents, and that every chunk a snapshot needs is indexed in an existing
    /// pack. With `read_data`, every pack is read, decrypted and every chunk hash-verified.
    pub async fn check(&self, read_data: bool) -> Result<CheckReport> {
        self.check_data(if read_data {
            ReadData::All
        } else {
            ReadData::None
        })
        .await
    }

    /// [`Repository::check`] reading the packs `read` selects.
    pub async fn check_data(&self, read: ReadData) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        // Index files must all open: the load skips a damaged one and says why.
        let damaged_index_files = self.refresh_index().await?;
        let backend = &self.inner.backend;
        // Foreign objects.
        let all = backend.list("").await?;
        let mut packs_present: HashMap<String, u64> = HashMap::new();
        for m in &all {
            let p = m.location.to_string();
            let parts: Vec<&str> = p.split('/').collect();
            let known = match parts.as_slice() {
                ["config"] => true,
                ["retention", _] => crate::retain::parse_name(&p).is_some(),
                [
                    "keys" | "index" | "snapshots" | "content" | "locks" | "repairs",
                    id,
                ] => format::is_id(id),
                ["data", pre, id] => {
                    let ok = format::is_id(id) && id.starts_with(pre);
                    if ok {
                        packs_present.insert(id.to_string(), m.size);
                    }
                    ok
                }
                _ => false,
            };
            if !known {
                report.warnings.push(format!(
                    "foreign object {p} (not part of the repository format; ignored)"
                ));
            }
        }
        // Records of retention extensions that do not open or name no writer's date.
        report
            .warnings
            .extend(self.read_retention(i64::MIN).await?.1);
        for id in read_all_slots(backend).await?.1 {
            report.warnings.push(format!(
                "key slot keys/{id} is damaged (not a key slot of its name) and opens nothing: \
                 `cairn repo key remove {id}` removes it"
            ));
        }
        // Uploads being written change by the millisecond; one idle for a minute was left.
        for u in backend.unfinished_uploads().await? {
            if u.idle >= UNFINISHED_IDLE {
                report.warnings.push(format!(
                    "unfinished upload {} ({} bytes), left by a process that stopped while \
                     writing it; `cairn repo prune` removes it",
                    u.path, u.size
                ));
            }
        }
        // Snapshots and the chunks they need, each node and list chunk they share read once.
        // Each tree's shape too: one a restore would refuse is damaged.
        let mut marks = Marks::checking_shapes();
        let mut marked: Vec<SnapshotInfo> = Vec::new();
        for id in self.snapshot_ids().await? {
            let info = match self.read_snapshot(&id).await {
                Ok(i) => i,
                Err(e) => {
                    report.errors.push(problem(e, vec![id.clone()]));
                    continue;
                }
            };
            match self.mark(&info, &mut marks).await {
                Ok(()) => marked.push(info),
                Err(e) => report.errors.push(problem(e, vec![id.clone()])),
            }
        }
        report.snapshots = marked.len() + report.errors.len();
        // Snapshots that could not be read: what they reference is not known, so data no
        // other snapshot references is not known to be unused.
        let unreadable = report.errors.len();
        let referenced = marks.referenced;
        let mut blame = Blame::default();
        report.errors.extend(
            damaged_index_files
                .into_iter()
                .map(|e| problem(e, Vec::new())),
        );
        let (by_pack, missing_chunks, dup_only) = {
            let idx = self.inner.index.read().map_err(|_| poisoned())?;
            // Grouped by pack number, then named: one hex name per pack, not per chunk.
            // With the second places of chunks stored twice (two backups of the same data at
            // once): their packs are indexed, and read by `--read-data` like any other.
            let mut per_pack: Vec<Vec<(ChunkId, Loc)>> = vec![Vec::new(); idx.packs.len()];
            let mut primary = vec![false; idx.packs.len()];
            for (c, l) in idx.iter() {
                per_pack[l.pack as usize].push((*c, l));
                primary[l.pack as usize] = true;
            }
            for (c, l) in idx.duplicates() {
                per_pack[l.pack as usize].push((*c, l));
            }
            // Packs of second places only: what they hold is read from elsewhere.
            let dup_only: HashSet<String> = idx
                .packs
                .iter()
                .zip(&primary)
                .filter(|(_, p)| !**p)
                .map(|(p, _)| format::pack_hex(p))
                .collect();
            let by_pack: HashMap<String, Vec<(ChunkId, Loc)>> = idx
                .packs
                .iter()
                .zip(per_pack)
                .filter(|(_, entries)| !entries.is_empty())
                .map(|(p, entries)| (format::pack_hex(p), entries))
                .collect();
            let missing: IdSet = referenced
                .iter()
                .filter(|c| !idx.contains(c))
                .copied()
                .collect();
            (by_pack, missing, dup_only)
        };
        let unindexed = packs_present
            .keys()
            .filter(|h| !by_pack.contains_key(*h))
            .count();
        if !missing_chunks.is_empty() {
            let reason = format!(
                "{} chunks referenced by snapshots are in no index ({})",
                missing_chunks.len(),
                if unindexed > 0 {
                    format!(
                        "{unindexed} packs are in no index: `cairn repo repair index` indexes \
                         them from their own headers"
                    )
                } else {
                    "no pack holds them any more: backing the same data up again stores them \
                     anew, and the snapshots restore again; if it is gone, `cairn repo repair \
                     snapshots --forget` keeps the rest of each tree snapshot, or forget the \
                     snapshots"
                        .to_owned()
                }
            );
            blame.push(&mut report, "index".into(), reason, missing_chunks);
        }
        let mut unreferenced_packs = 0usize;
        let mut pack_names: Vec<&String> = by_pack.keys().collect();
        pack_names.sort();
        report.packs = pack_names.len();
        // A share of the packs that are there: a missing one is named, never read.
        let present: Vec<&String> = pack_names
            .iter()
            .filter(|h| packs_present.contains_key(h.as_str()))
            .copied()
            .collect();
        let chosen = read.chosen(&present);
        let mut to_read = Vec::new();
        for hex in pack_names {
            let entries = &by_pack[hex];
            let path = format::pack_path(hex);
            if !entries.iter().any(|e| referenced.contains(&e.0)) {
                unreferenced_packs += 1;
            }
            let Some(&size) = packs_present.get(hex.as_str()) else {
                if dup_only.contains(hex) {
                    report.warnings.push(format!(
                        "pack {path} is missing; the index holds every chunk it held in other \
                         packs too, so nothing is lost: `cairn repo repair index` drops it"
                    ));
                } else {
                    blame.push(&mut report, path, "is missing".into(), ids_of(entries));
                }
                continue;
            };
            let needed = entries
                .iter()
                .map(|(_, l)| u64::from(l.frame_off) + u64::from(l.frame_len))
                .max()
                .unwrap_or(0);
            if size < needed {
                let reason = format!(
                    "is truncated ({size} bytes, index needs {needed}){}",
                    repair_hint(hex)
                );
                blame.push(&mut report, path, reason, ids_of(entries));
                continue;
            }
            if read.reads(hex) && chosen.as_ref().is_none_or(|c| c.contains(hex)) {
                report.packs_read += 1;
                report.bytes_read += size;
                to_read.push((hex, path, size, entries));
            }
        }
        // Packs are read and verified a few at a time, on every core; their problems are
        // reported in the order of the packs.
        let mut verified = futures::stream::iter(to_read)
            .map(|(hex, path, size, entries)| async move {
                let r = self.verify_pack(hex, &path, size, entries).await;
                (path, entries, r)
            })
            .buffered(PACKS_VERIFIED_AT_ONCE);
        while let Some((path, entries, r)) = verified.next().await {
            if let Err(e) = r {
                let bad: IdSet = match &e {
                    VerifyError::Chunks(c, _) => c.clone(),
                    VerifyError::Whole(_) => ids_of(entries),
                };
                let hex = path.rsplit('/').next().unwrap_or_default();
                let reason = format!("{}{}", e.reason(), repair_hint(hex));
                blame.push(&mut report, path, reason, bad);
            }
        }
        for hex in packs_present.keys() {
            if !by_pack.contains_key(hex) {
                report.warnings.push(format!(
                    "pack {} is in no index ({})",
                    format::pack_path(hex),
                    if blame.0.is_empty() && unreadable == 0 {
                        "being written by a backup that is running, left by an interrupted one, \
                         or replaced by a repack; prune removes it when no backup runs"
                    } else {
                        "it may hold what the damage above names as missing: `cairn repo \
                         repair index` indexes it from its own header"
                    }
                ));
            }
        }
        if unreferenced_packs > 0 {
            report.warnings.push(if unreadable == 0 {
                format!(
                    "{unreferenced_packs} packs hold only unreferenced data (prune removes them)"
                )
            } else {
                format!(
                    "{unreferenced_packs} packs hold data no readable snapshot references; the \
                     {unreadable} snapshot(s) that cannot be read may need it, so prune leaves it \
                     until they are repaired or forgotten"
                )
            });
        }
        if !blame.0.is_empty() {
            // Only a check that found damage reads the snapshots whole again, to name those
            // that need each damaged chunk.
            for info in &marked {
                let Ok(ids) = self.content(info).await.map(|c| c.chunk_ids()) else {
                    continue;
                };
                for (i, damaged) in &blame.0 {
                    if ids.iter().any(|c| damaged.contains(c)) {
                        report.errors[*i].snapshots.push(info.id.clone());
                    }
                }
            }
        }
        Ok(report)
    }

    /// Verifies pack `hex` (`size` bytes) against its index `entries`: its header, then every
    /// frame authenticated and decoded and every chunk's hash checked, the frames read in
    /// ranges of at most [`VERIFY_READ_BYTES`], one at a time, so a check holds a few ranges
    /// rather than whole packs.
    async fn verify_pack(
        &self,
        hex: &str,
        path: &str,
        size: u64,
        entries: &[(ChunkId, Loc)],
    ) -> Result<(), VerifyError> {
        let whole = |e: Error| VerifyError::Whole(e.to_string());
        let mut entries = entries.to_vec();
        entries.sort_unstable_by_key(|(_, l)| (l.frame_off, l.inner_off));
        let frame_end = |l: &Loc| u64::from(l.frame_off) + u64::from(l.frame_len);
        let (mut bad, mut first, mut tail) = (IdSet::default(), None, None);
        let mut rest = &entries[..];
        while let Some((_, l)) = rest.first() {
            let start = u64::from(l.frame_off);
            let n = rest
                .iter()
                .position(|(_, l)| frame_end(l) - start > VERIFY_READ_BYTES)
                .unwrap_or(rest.len())
                .max(1);
            let (group, next) = rest.split_at(n);
            rest = next;
            // In pack order, the last chunk's frame ends the range; the last range reads on
            // to the pack's end, so the header comes with it.
            let mut end = group.last().map_or(start, |(_, l)| frame_end(l));
            if rest.is_empty() && size.saturating_sub(end) <= VERIFY_READ_BYTES {
                end = size.max(end);
            }
            let data = self
                .inner
                .backend
                .get_range(path, start..end)
                .await
                .map_err(whole)?;
            if end == size {
                tail = Some((start, data.clone()));
            }
            let (keys, hex, path, group) = (
                self.inner.keys.clone(),
                hex.to_string(),
                path.to_string(),
                group.to_vec(),
            );
            let found = tokio::task::spawn_blocking(move || {
                bad_chunks(&keys, &hex, &path, start, &data, &group)
            })
            .await
            .map_err(|e| VerifyError::Whole(e.to_string()))?;
            if let Some((off, ids)) = found {
                first.get_or_insert(off);
                bad.extend(ids);
            }
        }
        // A damaged header is reported, and the frames are verified against the index all
        // the same.
        let header_problem = match self.pack_header_within(hex, size, tail).await {
            Ok(h) => {
                let in_header: IdSet = h.iter().map(|e| e.id).collect();
                entries
                    .iter()
                    .any(|(c, _)| !in_header.contains(c))
                    .then(|| "pack header does not list chunks the index places in it".into())
            }
            Err(Error::Corrupt { reason, .. }) => Some(reason),
            Err(e) => return Err(whole(e)),
        };
        if let Some(off) = first {
            return Err(VerifyError::Chunks(
                bad,
                format!("frame at offset {off} is damaged"),
            ));
        }
        match header_problem {
            Some(p) => Err(VerifyError::Chunks(IdSet::default(), p)),
            None => Ok(()),
        }
    }

    /// What the repository holds and what it costs: the snapshots' bytes, the distinct
    /// chunks they are stored as, and the bytes on the store. Reads the snapshot objects and
    /// the index, and lists the store; no data.
    pub async fn stats(&self) -> Result<RepoStats> {
        let all = SnapshotFilter::new();
        let (snapshots, damaged, objects) = futures::try_join!(
            self.snapshots(&all),
            self.refresh_index(),
            self.inner.backend.list(""),
        )?;
        if let Some(e) = damaged.into_iter().next() {
            tracing::warn!(error = %e, "an index file is damaged; `cairn repo check` names it");
        }
        let mut stats = RepoStats {
            snapshots: snapshots.len(),
            snapshot_bytes: snapshots.iter().map(|s| s.summary.bytes).sum(),
            ..RepoStats::default()
        };
        {
            let index = self.inner.index.read().map_err(|_| poisoned())?;
            for (_, loc) in index.iter() {
                stats.chunks += 1;
                stats.chunk_bytes += u64::from(loc.len);
            }
        }
        for o in &objects {
            if o.location.as_ref().starts_with("data/") {
                stats.packs += 1;
                stats.pack_bytes += o.size;
            } else {
                stats.metadata_bytes += o.size;
            }
        }
        Ok(stats)
    }

    /// Removes snapshots that `policy` does not keep, among those matching `filter`, its
    /// periods those of time zone `zone` (see [`retained`](crate::retained)). Protected
    /// snapshots are kept and reported.
    pub async fn forget(
        &self,
        policy: &Retention,
        filter: &SnapshotFilter,
        zone: &jiff::tz::TimeZone,
        dry_run: bool,
    ) -> Result<ForgetReport> {
        if policy.is_empty() {
            return Err(Error::Invalid(
                "no retention rule given; refusing to forget every snapshot".into(),
            ));
        }
        let snaps = self.snapshots(filter).await?;
        let kept = crate::retention::retained(policy, &snaps, zone);
        let doomed = snaps
            .into_iter()
            .filter(|s| !kept.contains_key(&s.id))
            .collect();
        let report = ForgetReport {
            kept,
            ..Default::default()
        };
        self.remove_unprotected(doomed, report, dry_run).await
    }

    /// Removes the snapshots named (ids, unique prefixes or `latest`), but those the
    /// protection period keeps (reported). Every name is resolved before anything is removed,
    /// so a typo removes nothing.
    pub async fn forget_ids(&self, ids: &[String], dry_run: bool) -> Result<ForgetReport> {
        let mut doomed: Vec<SnapshotInfo> = Vec::with_capacity(ids.len());
        // Damaged snapshot objects are removed too, unread.
        let mut damaged: Vec<String> = Vec::new();
        for id in ids {
            match self.snapshot(id).await {
                Ok(s) => {
                    if !doomed.iter().any(|d| d.id == s.id) {
                        doomed.push(s);
                    }
                }
                Err(Error::Corrupt { .. }) if format::is_id(id) => damaged.push(id.clone()),
                // Named by a unique prefix, as `snapshots` shows ids: the one it names.
                Err(e @ Error::Corrupt { .. }) => {
                    let mut named = self.snapshot_ids().await?;
                    named.retain(|i| i.starts_with(id.as_str()));
                    match named.as_slice() {
                        [one] => damaged.push(one.clone()),
                        _ => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let mut report = self
            .remove_unprotected(doomed, ForgetReport::default(), dry_run)
            .await?;
        for id in damaged {
            if !dry_run {
                // The backend refuses it inside the protection period (Error::Protected);
                // its content object, which only it names, goes at the next prune.
                self.inner
                    .backend
                    .delete_data(&format::snapshot_path(&id), None)
                    .await?;
            }
            report.removed.push(id);
        }
        Ok(report)
    }

    /// Removes `doomed` but the snapshots still protected, adding both to `report`.
    async fn remove_unprotected(
        &self,
        doomed: Vec<SnapshotInfo>,
        mut report: ForgetReport,
        dry_run: bool,
    ) -> Result<ForgetReport> {
        self.inner.backend.know_clock().await;
        let listed: HashMap<String, i64> = self
            .inner
            .backend
            .list("snapshots/")
            .await?
            .into_iter()
            .filter_map(|m| {
                m.location
                    .filename()
                    .map(|n| (n.to_string(), m.last_modified.timestamp()))
            })
            .collect();
        for s in doomed {
            let written = listed
                .get(&s.id)
                .copied()
                .unwrap_or(s.time.as_second())
                .max(s.time.as_second());
            if let Some(until) = self.inner.backend.protected_until(written) {
                report.protected.push((s.id.clone(), until.to_string()));
                continue;
            }
            if !dry_run {
                self.remove_snapshot(&s).await?;
            }
            report.removed.push(s.id);
        }
        Ok(report)
    }

    /// Removes one snapshot (an export whose restore point was retired), unless the
    /// protection period still covers it. Its data goes at the next `prune`.
    pub async fn forget_snapshot(&self, id_or_prefix: &str) -> Result<()> {
        let s = self.snapshot(id_or_prefix).await?;
        self.remove_snapshot(&s).await
    }

    async fn remove_snapshot(&self, s: &SnapshotInfo) -> Result<()> {
        // The backend refuses deletes inside the protection period (Error::Protected).
        self.inner
            .backend
            .delete_data(&format::snapshot_path(&s.id), None)
            .await?;
        // The content goes with it; prune would collect it otherwise.
        match self
            .inner
            .backend
            .delete_data(&format::content_path(&s.content), None)
            .await
        {
            Ok(()) | Err(Error::Protected { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes data no snapshot references. Takes the exclusive lock, so it never runs while
    /// a backup is writing (see FORMAT.md, "Prune and concurrency").
    pub async fn prune(&self, dry_run: bool) -> Result<PruneReport> {
        self.prune_with(&PruneOptions {
            dry_run,
            ..Default::default()
        })
        .await
    }

    /// [`Repository::prune`] with options: also repacks the packs in use that are mostly
    /// unused.
    pub async fn prune_with(&self, opts: &PruneOptions) -> Result<PruneReport> {
        let lock = LockGuard::acquire(&self.inner.backend, true, "prune").await?;
        let r = self.prune_locked(&lock, opts).await;
        lock.release().await;
        r
    }

    async fn prune_locked(&self, lock: &LockGuard, opts: &PruneOptions) -> Result<PruneReport> {
        let dry_run = opts.dry_run;
        let backend = &self.inner.backend;
        let mut report = PruneReport::default();
        // Reload the index: other processes may have added to it.
        let damaged = self.refresh_index().await?;
        // Packs whose retention was extended are protected until then.
        let (retention, _) = self.read_retention(backend.now()).await?;
        let (snaps, damaged_snaps) = self
            .snapshots_and_damage(&SnapshotFilter::default())
            .await?;
        // A snapshot it cannot read: prune would take its data for unused.
        if let Some((id, e)) = damaged_snaps.into_iter().next() {
            // The object is named once, by the error made here.
            let why = match &e {
                Error::Corrupt { object, reason, .. } if *object == format::snapshot_path(&id) => {
                    reason.clone()
                }
                e => e.to_string(),
            };
            return Err(Error::corrupt(
                format::snapshot_path(&id),
                format!(
                    "{why}; prune cannot tell what it uses, and stops: `cairn repo forget {id}` \
                     removes it, then prune"
                ),
            ));
        }
        // Chunks in no index file (one lost): prune would take their packs for unused.
        let unindexed = |what: String| {
            Error::corrupt(
                "index",
                format!(
                    "{what} in no index file (an index file is missing, or their packs are), \
                     and prune would delete their packs as unused: run `cairn repo repair \
                     index`, which indexes every pack again from its own header; if chunks are \
                     still missing, `cairn repo check` names the snapshots that need them: \
                     repair (`cairn repo repair snapshots --forget`) or forget those, then prune"
                ),
            )
        };
        let mut marks = Marks::default();
        let mut contents = HashSet::new();
        for s in &snaps {
            match self.mark(s, &mut marks).await {
                Ok(()) => {}
                // A file's chunk list is kept in list chunks, and one is in no index.
                Err(Error::Missing { object, .. }) if object.starts_with("chunk ") => {
                    return Err(unindexed(format!(
                        "{object}, a list of snapshot {}'s chunks, is",
                        s.short_id()
                    )));
                }
                // A pack the index names is gone from the store, with what the snapshot's
                // nodes or lists need to be read.
                Err(Error::Missing { object, .. }) if object.starts_with("data/") => {
                    return Err(Error::corrupt(
                        "index",
                        format!(
                            "it names pack {object}, which the store no longer holds and snapshot \
                             {} needs to be read; prune removes nothing: `cairn repo check` \
                             names the snapshots that need it, `cairn repo repair index` drops \
                             it from the index",
                            s.short_id()
                        ),
                    ));
                }
                Err(e) => return Err(e),
            }
            contents.insert(s.content.clone());
        }
        let referenced = marks.referenced;
        let listed: HashMap<String, object_store::ObjectMeta> =
            backend.list_packs().await?.into_iter().collect();
        self.refuse_lost_packs(&referenced, &listed).await?;
        if !dry_run {
            lock.held().await?;
        }
        for m in backend.list("content/").await? {
            let Some(id) = m.location.filename().filter(|n| format::is_id(n)) else {
                continue;
            };
            if !contents.contains(id) && backend.protected(&m).is_none() {
                if !dry_run {
                    backend.delete_data(m.location.as_ref(), Some(&m)).await?;
                }
                report.contents_deleted += 1;
            }
        }
        // A repair marker every tree snapshot saw no longer makes any backup read what its
        // parent holds (streams have no parents): removed.
        for (id, m) in self.repair_markers().await? {
            let moot = snaps
                .iter()
                .filter(|s| matches!(s.kind, format::SnapshotKind::Tree { .. }))
                .all(|s| s.repairs.contains(&id));
            if moot && !dry_run && backend.protected(&m).is_none() {
                backend.delete_data(m.location.as_ref(), Some(&m)).await?;
            }
        }
        // Uploads killed processes began: under this lock nothing writes what backups write,
        // so theirs are dead at any age; a lock or key slot is written outside the locks, in
        // a moment, so one idle for a minute was left (a writer stopped longer only fails its
        // rename).
        for u in backend.unfinished_uploads().await? {
            let backup_written = ["data/", "index/", "content/", "snapshots/"]
                .iter()
                .any(|p| u.path.starts_with(p));
            if backup_written || u.idle >= UNFINISHED_IDLE {
                if !dry_run {
                    backend.remove_unfinished(&u).await?;
                }
                report.unfinished_removed += 1;
                report.unfinished_bytes += u.size;
            }
        }
        // Prune deletes the packs the index does not show in use: with an index file unread,
        // the packs it listed would look unused, unless `repair index` has indexed every pack
        // again (a damaged file it could not delete, being protected, then names none).
        if let Some(e) = damaged.into_iter().next() {
            let indexed: HashSet<String> = {
                let idx = self.inner.index.read().map_err(|_| poisoned())?;
                idx.packs.iter().map(format::pack_hex).collect()
            };
            if listed.keys().any(|p| !indexed.contains(p)) {
                const REPAIR: &str = "prune would delete the packs it listed as unused: run \
                    `cairn repo repair index` to index them again from their own headers, then \
                    prune";
                return Err(match e {
                    Error::Corrupt {
                        object,
                        reason,
                        snapshots,
                    } => Error::Corrupt {
                        object,
                        reason: format!("{reason}; {REPAIR}"),
                        snapshots,
                    },
                    e => e,
                });
            }
        }
        let missing = {
            let idx = self.inner.index.read().map_err(|_| poisoned())?;
            referenced.iter().filter(|c| !idx.contains(c)).count()
        };
        if missing > 0 {
            return Err(unindexed(format!(
                "{missing} chunks that snapshots use are"
            )));
        }
        let index_files: Vec<object_store::ObjectMeta> = backend.list("index/").await?;
        let (used_packs, mut survivors, protected_index_packs, repack) = {
            let idx = self.inner.index.read().map_err(|_| poisoned())?;
            // By pack number while walking the chunks; named once per pack at the end.
            let mut in_use = vec![false; idx.packs.len()];
            let mut live = vec![0u64; idx.packs.len()];
            for c in &referenced {
                if let Some(l) = idx.get(c) {
                    in_use[l.pack as usize] = true;
                    live[l.pack as usize] += u64::from(l.len);
                }
            }
            // A pack the store no longer holds (lost, named only by protected index files) is
            // not carried into the new index, where it would be protected anew and backups
            // would go on storing nothing of the data it held.
            let present: Vec<bool> = idx
                .packs
                .iter()
                .map(|p| listed.contains_key(&format::pack_hex(p)))
                .collect();
            // Entries that survive: the canonical location of every chunk in a used pack.
            let mut survivors: BTreeMap<format::PackId, Vec<format::Entry>> = BTreeMap::new();
            let mut total = vec![0u64; idx.packs.len()];
            // The copies of chunks read elsewhere (two backups that stored the same data at
            // once) count as their packs' unused bytes, so a pack left mostly copies is
            // repacked; in a pack that stays they stay indexed, to be counted again.
            for (c, l) in idx.iter().chain(idx.duplicates()) {
                total[l.pack as usize] += u64::from(l.len);
                let p = idx.packs[l.pack as usize];
                if in_use[l.pack as usize] && present[l.pack as usize] {
                    survivors.entry(p).or_default().push(format::Entry {
                        id: *c,
                        frame_off: l.frame_off,
                        frame_len: l.frame_len,
                        inner_off: l.inner_off,
                        len: l.len,
                    });
                }
            }
            // Packs named by an index file that cannot be deleted yet must stay, or that file
            // would point at nothing.
            let mut protected_packs = HashSet::new();
            for m in &index_files {
                if backend.protected(m).is_some()
                    && let Some(ps) = m.location.filename().and_then(|n| idx.files.get(n))
                {
                    protected_packs.extend(ps.iter().map(format::pack_hex));
                }
            }
            let used: HashSet<String> = idx
                .packs
                .iter()
                .zip(&in_use)
                .filter(|(_, used)| **used)
                .map(|(p, _)| format::pack_hex(p))
                .collect();
            let repack = repack_plan(
                &idx,
                &referenced,
                (&live, &total),
                opts.repack_unused,
                // By its write alone: a pack whose retention newer snapshots extend stays
                // protected for as long as they use it, so its unused part would never be
                // freed. Repacked, newer snapshots use the copy, and it lapses.
                |p| {
                    let hex = format::pack_hex(p);
                    protected_packs.contains(&hex)
                        || listed.get(&hex).is_none_or(|m| {
                            backend
                                .protected_until(m.last_modified.timestamp())
                                .is_some()
                        })
                },
            );
            (used, survivors, protected_packs, repack)
        };
        report.packs_repacked = repack.packs.len();
        report.bytes_repacked = repack.live_bytes;
        report.bytes_reclaimable = repack.unused_bytes;
        if !dry_run && !repack.packs.is_empty() {
            match self.repack(lock, &repack.ids).await {
                // Their chunks are indexed in the new packs now: the old packs leave the
                // index here and the store at the next prune.
                Ok(()) => survivors.retain(|p, _| !repack.packs.contains(p)),
                Err(e) => {
                    tracing::warn!(error = %e, "repacking failed; those packs stay as they are");
                    report.repack_error = Some(e.to_string());
                    (
                        report.packs_repacked,
                        report.bytes_repacked,
                        report.bytes_reclaimable,
                    ) = (0, 0, 0);
                }
            }
        }
        let mut doomed = Vec::new();
        for (hex, m) in &listed {
            if used_packs.contains(hex) {
                report.packs_kept += 1;
            } else if protected_index_packs.contains(hex) || backend.protected(m).is_some() {
                report.packs_protected += 1;
            } else {
                doomed.push((hex.clone(), m.clone()));
            }
        }
        report.packs_deleted = doomed.len();
        report.bytes_deleted = doomed.iter().map(|(_, m)| m.size).sum();
        if !dry_run {
            self.drop_past_retention(&retention).await?;
        }
        if dry_run || (doomed.is_empty() && report.packs_repacked == 0) {
            return Ok(report);
        }
        // 1. one new index with the survivors, 2. drop the old index files, 3. drop packs.
        // A crash between steps leaves duplicates or orphans, never a dangling reference.
        // Only while the lock is still held: a backup may have started once it was not.
        lock.held().await?;
        self.no_snapshot_since(&snaps, "nothing was removed: run prune again")
            .await?;
        let entries: Vec<(format::PackId, Vec<format::Entry>)> = survivors.into_iter().collect();
        self.write_index_file(&entries).await?;
        for m in &index_files {
            let p = m.location.to_string();
            if m.location.filename().is_some_and(format::is_id) && backend.protected(m).is_none() {
                backend.delete_data(&p, Some(m)).await?;
                report.index_files_replaced += 1;
            }
        }
        // The packs last, and only while no snapshot it did not mark has appeared: a backup
        // that went on past a lock lost (a holder judged gone by mistake) may use them. The
        // lock is checked again every few deletes, which a slow store can make long.
        self.no_snapshot_since(&snaps, "the packs it found unused are kept, and the index no longer lists them: run `cairn repo repair index`, which lists them again, then prune").await?;
        for (i, (hex, m)) in doomed.iter().enumerate() {
            if i % 64 == 0 {
                lock.held().await?;
            }
            backend
                .delete_data(&format::pack_path(hex), Some(m))
                .await?;
        }
        self.refresh_index().await?;
        Ok(report)
    }

    /// Refuses to go on removing data when a snapshot not among `marked` (those a prune read)
    /// was saved since: a backup that took the prune's lock for gone by mistake. `then` says
    /// what was left and what to do.
    async fn no_snapshot_since(&self, marked: &[SnapshotInfo], then: &str) -> Result<()> {
        let marked: HashSet<&str> = marked.iter().map(|s| s.id.as_str()).collect();
        match self
            .snapshot_ids()
            .await?
            .into_iter()
            .find(|id| !marked.contains(id.as_str()))
        {
            Some(id) => Err(Error::Locked {
                holder: format!("a backup that saved snapshot {id} while the prune ran"),
                reason: format!("its lock was not seen, and prune stopped; {then}"),
            }),
            None => Ok(()),
        }
    }

    /// Repairs damaged packs (ids or unique prefixes, as `check --read-data` names them):
    /// the chunks of each that are intact are stored again in new packs, the pack is deleted,
    /// and the index drops it (see [`Repository::repair_index`]). The damaged chunks are then
    /// in no index, so the next backup of the same data stores them again, where until then
    /// every backup deduplicated against them and made snapshots that could not be restored;
    /// and the snapshots that needed them restore again once it has. A pack found intact is
    /// left as it is. Takes the exclusive lock, as prune does.
    pub async fn repair_packs(&self, packs: &[String], dry_run: bool) -> Result<PackRepair> {
        let lock = LockGuard::acquire(&self.inner.backend, true, "repair packs").await?;
        let r = self.repair_packs_locked(&lock, packs, dry_run).await;
        lock.release().await;
        r
    }

    async fn repair_packs_locked(
        &self,
        lock: &LockGuard,
        packs: &[String],
        dry_run: bool,
    ) -> Result<PackRepair> {
        let backend = &self.inner.backend;
        self.refresh_index().await?;
        let listed: HashMap<String, object_store::ObjectMeta> =
            backend.list_packs().await?.into_iter().collect();
        let mut report = PackRepair::default();
        let mut doomed = Vec::new();
        for name in packs {
            let found: Vec<&String> = listed.keys().filter(|h| h.starts_with(name)).collect();
            let hex = match found.as_slice() {
                [one] => (*one).clone(),
                [] => {
                    return Err(Error::NotFound {
                        kind: "pack",
                        id: format!(
                            "{name} (a missing pack needs no repair of its own: `cairn repo \
                             repair index` drops it from the index)"
                        ),
                    });
                }
                _ => {
                    return Err(Error::Ambiguous {
                        prefix: name.clone(),
                    });
                }
            };
            let meta = &listed[&hex];
            if let Some(until) = backend.protected(meta) {
                return Err(Error::Protected {
                    object: format::pack_path(&hex),
                    until: until.to_string(),
                });
            }
            let entries: Vec<(ChunkId, Loc)> = {
                let idx = self.inner.index.read().map_err(|_| poisoned())?;
                idx.iter()
                    .filter(|(_, l)| format::pack_hex(&idx.packs[l.pack as usize]) == hex)
                    .map(|(c, l)| (*c, l))
                    .collect()
            };
            let path = format::pack_path(&hex);
            let (bad, reason) = match self.verify_pack(&hex, &path, meta.size, &entries).await {
                Ok(()) => (IdSet::default(), None),
                Err(VerifyError::Chunks(bad, why)) => (bad, Some(why)),
                Err(VerifyError::Whole(why)) => (ids_of(&entries), Some(why)),
            };
            report.packs.push(RepairedPack {
                pack: hex.clone(),
                chunks: entries.len(),
                damaged: bad.len(),
                reason: reason.clone(),
            });
            if reason.is_some() {
                let intact: Vec<ChunkId> = entries
                    .iter()
                    .map(|(c, _)| *c)
                    .filter(|c| !bad.contains(c))
                    .collect();
                doomed.push((hex, intact));
            }
        }
        if dry_run || doomed.is_empty() {
            return Ok(report);
        }
        lock.held().await?;
        // Before any chunk leaves the index: backups must not take files from older parents.
        self.mark_repair().await?;
        // The intact chunks go into new packs and index files first: a crash after leaves
        // them indexed twice, never lost.
        for (_, intact) in &doomed {
            if !intact.is_empty() {
                self.repack(lock, intact).await?;
            }
        }
        lock.held().await?;
        for (hex, _) in &doomed {
            backend
                .delete_data(&format::pack_path(hex), listed.get(hex))
                .await?;
        }
        report.index = self.repair_index_locked(lock, false, true).await?;
        Ok(report)
    }

    /// Indexes again, from their own headers, the packs no readable index file lists (an
    /// index file deleted or damaged), then removes the damaged index files. Takes the
    /// exclusive lock, as prune does. Packs left by interrupted backups are indexed too; the
    /// next prune removes what no snapshot uses.
    pub async fn repair_index(&self, dry_run: bool) -> Result<IndexRepair> {
        let lock = LockGuard::acquire(&self.inner.backend, true, "repair index").await?;
        let r = self.repair_index_locked(&lock, dry_run, false).await;
        lock.release().await;
        r
    }

    /// `marked`: a repair marker is written already (by `repair packs`, before it deleted
    /// the packs this drops).
    async fn repair_index_locked(
        &self,
        lock: &LockGuard,
        dry_run: bool,
        marked: bool,
    ) -> Result<IndexRepair> {
        let backend = &self.inner.backend;
        let damaged = self.refresh_index().await?;
        let indexed: HashSet<String> = {
            let idx = self.inner.index.read().map_err(|_| poisoned())?;
            idx.packs.iter().map(format::pack_hex).collect()
        };
        let stored = backend.list_packs().await?;
        let present: HashSet<&str> = stored.iter().map(|(hex, _)| hex.as_str()).collect();
        let unindexed: Vec<(String, format::PackId, u64)> = stored
            .iter()
            .filter(|(hex, _)| !indexed.contains(hex))
            .filter_map(|(hex, m)| Some((hex.clone(), format::pack_id(hex)?, m.size)))
            .collect();
        // Index files listing a pack that is gone, and what they list of the packs that are
        // not (a chunk the merged index holds elsewhere is left out: it stays indexed there).
        let (mut missing, stale, kept) = {
            let idx = self.inner.index.read().map_err(|_| poisoned())?;
            let gone: HashSet<format::PackId> = idx
                .packs
                .iter()
                .filter(|p| !present.contains(format::pack_hex(p).as_str()))
                .copied()
                .collect();
            let stale: Vec<String> = idx
                .files
                .iter()
                .filter(|(_, packs)| packs.iter().any(|p| gone.contains(p)))
                .map(|(id, _)| id.clone())
                .collect();
            let keep: HashSet<format::PackId> = idx
                .files
                .iter()
                .filter(|(id, _)| stale.contains(id))
                .flat_map(|(_, packs)| packs.iter().copied())
                .filter(|p| !gone.contains(p))
                .collect();
            let mut kept: std::collections::BTreeMap<format::PackId, Vec<format::Entry>> =
                Default::default();
            for (id, loc) in idx.iter() {
                let pack = idx.packs[loc.pack as usize];
                if keep.contains(&pack) {
                    kept.entry(pack).or_default().push(format::Entry {
                        id: *id,
                        frame_off: loc.frame_off,
                        frame_len: loc.frame_len,
                        inner_off: loc.inner_off,
                        len: loc.len,
                    });
                }
            }
            for pack in &keep {
                kept.entry(*pack).or_default();
            }
            let missing: Vec<String> = gone.iter().map(format::pack_hex).collect();
            (missing, stale, kept)
        };
        missing.sort();
        // A store that lists no pack at all while the index names some is more likely a wrong
        // location or a listing gone wrong than every pack lost: nothing is dropped.
        if present.is_empty() && !missing.is_empty() {
            return Err(Error::Invalid(format!(
                "the store lists no pack under data/ while the index names {}: check the \
                 location; nothing is dropped",
                missing.len()
            )));
        }
        // What the stale files list of the packs that are there comes from those packs' own
        // headers: the merged index holds one place per chunk, which may be the lost one.
        let sizes: HashMap<&str, u64> = stored
            .iter()
            .map(|(hex, m)| (hex.as_str(), m.size))
            .collect();
        let mut kept = kept;
        for (pack, entries) in kept.iter_mut() {
            let hex = format::pack_hex(pack);
            if let Some(&size) = sizes.get(hex.as_str())
                && let Ok(whole) = self.pack_header(&hex, size).await
            {
                *entries = whole;
            }
        }
        kept.retain(|_, entries| !entries.is_empty());
        let headers: Vec<_> = futures::stream::iter(unindexed)
            .map(|(hex, id, size)| async move {
                let h = self.pack_header(&hex, size).await;
                (hex, id, h)
            })
            .buffer_unordered(METADATA_READS_IN_FLIGHT)
            .collect()
            .await;
        let mut report = IndexRepair::default();
        let mut packs = Vec::new();
        for (hex, id, h) in headers {
            match h {
                Ok(entries) => {
                    report.packs_indexed += 1;
                    report.chunks_indexed += entries.len();
                    packs.push((id, entries));
                }
                Err(e @ Error::Corrupt { .. }) => {
                    report.packs_unreadable.push((hex, e.to_string()))
                }
                // The store failing is not the pack: stop, and a rerun indexes it.
                Err(e) => return Err(e),
            }
        }
        packs.sort_unstable_by_key(|p| p.0);
        report.packs_unreadable.sort();
        let damaged: Vec<String> = damaged
            .into_iter()
            .filter_map(|e| match e {
                Error::Corrupt { object, .. } => Some(object),
                _ => None,
            })
            .collect();
        report.packs_missing = missing;
        if dry_run {
            report.index_files_removed = damaged.len();
            report.index_files_replaced = stale.len();
            return Ok(report);
        }
        lock.held().await?;
        if !report.packs_missing.is_empty() {
            // Before their chunks leave the index: backups must not take files from older
            // parents.
            if !marked {
                self.mark_repair().await?;
            }
            report.marked = true;
        }
        // The packs indexed again and what the stale files list of the others, in one new
        // file, before any file is removed: a crash in between leaves chunks indexed twice.
        let replaced_packs: HashSet<format::PackId> = packs.iter().map(|p| p.0).collect();
        packs.extend(
            kept.into_iter()
                .filter(|(p, _)| !replaced_packs.contains(p)),
        );
        packs.sort_unstable_by_key(|p| p.0);
        if !packs.is_empty() {
            self.write_index_file(&packs).await?;
        }
        for id in &stale {
            match backend.delete_data(&format::index_path(id), None).await {
                Ok(()) => report.index_files_replaced += 1,
                Err(e) => {
                    tracing::warn!(error = %e, "keeping index file {id}, which lists a missing pack")
                }
            }
        }
        // Only now: until the new index file is written, a crash leaves the damaged ones
        // where they were.
        for path in &damaged {
            match backend.delete_data(path, None).await {
                Ok(()) => report.index_files_removed += 1,
                Err(e) => tracing::warn!(error = %e, "keeping damaged index file {path}"),
            }
        }
        self.refresh_index().await?;
        Ok(report)
    }

    /// Refuses, before prune removes anything, while the index lends snapshots' chunks from
    /// packs the store no longer holds (`listed`): their data is lost, and backups would go on
    /// reusing it; `repair index` drops them, as restic's prune refuses too. A pack that only
    /// protected index files name cannot be dropped before their protection ends: a warning.
    async fn refuse_lost_packs(
        &self,
        referenced: &IdSet,
        listed: &HashMap<String, object_store::ObjectMeta>,
    ) -> Result<()> {
        let (gone, naming) = {
            let idx = self.inner.index.read().map_err(|_| poisoned())?;
            let mut gone: Vec<format::PackId> = referenced
                .iter()
                .filter_map(|c| idx.get(c))
                .map(|l| idx.packs[l.pack as usize])
                .filter(|p| !listed.contains_key(&format::pack_hex(p)))
                .collect();
            gone.sort_unstable();
            gone.dedup();
            let naming: Vec<String> = idx
                .files
                .iter()
                .filter(|(_, packs)| packs.iter().any(|p| gone.contains(p)))
                .map(|(id, _)| id.clone())
                .collect();
            (gone, naming)
        };
        if gone.is_empty() {
            return Ok(());
        }
        let backend = &self.inner.backend;
        let index_files: HashMap<String, object_store::ObjectMeta> = backend
            .list("index/")
            .await?
            .into_iter()
            .filter_map(|m| Some((m.location.filename()?.to_owned(), m)))
            .collect();
        let stuck = naming.iter().all(|id| {
            index_files
                .get(id)
                .is_some_and(|m| backend.protected(m).is_some())
        });
        let names: Vec<String> = gone.iter().map(format::pack_hex).collect();
        let shown = match names.len() {
            n @ 4.. => format!("{} and {} more", names[..3].join(", "), n - 3),
            _ => names.join(", "),
        };
        if stuck {
            tracing::warn!(
                "{} packs that snapshots use are gone from the store ({shown}), and only \
                 protected index files name them: `cairn repo check` names the snapshots that \
                 need them",
                names.len()
            );
            return Ok(());
        }
        Err(Error::corrupt(
            "index",
            format!(
                "it names {} packs that snapshots use and the store no longer holds ({shown}); \
                 prune removes nothing: `cairn repo check` names the snapshots that need them, \
                 `cairn repo repair index` drops them from the index so that the next backup \
                 of the same data stores it again",
                names.len()
            ),
        ))
    }

    /// Writes a repair marker: a tree backup whose parent was made before it reads again
    /// every file whose chunk ids are in list chunks, instead of taking it from the parent
    /// (which checks only that the list chunks are indexed, not what they name, which the
    /// repair may drop). FORMAT.md, "Repair markers".
    async fn mark_repair(&self) -> Result<()> {
        let id = format::new_id();
        let body = serde_json::json!({ "time": jiff::Timestamp::now().to_string() });
        let sealed =
            format::seal_object(&self.inner.keys, "repair", &id, body.to_string().as_bytes());
        self.inner
            .backend
            .put_data(&format::repair_path(&id), Bytes::from(sealed))
            .await
    }

    /// The repair markers, by id, sorted. Names and ids only, not times: a copy of the
    /// repository keeps ids, where it would not keep the store's times.
    pub(crate) async fn repair_markers(&self) -> Result<Vec<(String, object_store::ObjectMeta)>> {
        let mut markers: Vec<(String, object_store::ObjectMeta)> = self
            .inner
            .backend
            .list("repairs/")
            .await?
            .into_iter()
            .filter_map(|m| {
                let id = m
                    .location
                    .filename()
                    .filter(|n| format::is_id(n))?
                    .to_owned();
                Some((id, m))
            })
            .collect();
        markers.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(markers)
    }

    /// Writes one new index file listing `packs`.
    async fn write_index_file(&self, packs: &[(format::PackId, Vec<format::Entry>)]) -> Result<()> {
        let id = format::new_id();
        let sealed =
            format::seal_object(&self.inner.keys, "index", &id, &format::encode_index(packs));
        self.inner
            .backend
            .put_data(&format::index_path(&id), Bytes::from(sealed))
            .await
    }

    /// The entries of pack `hex` (`size` bytes) as its own sealed header lists them.
    async fn pack_header(&self, hex: &str, size: u64) -> Result<Vec<format::Entry>> {
        self.pack_header_within(hex, size, None).await
    }

    /// [`Self::pack_header`], taken from `read` (the pack's bytes from an offset to its end,
    /// read already) where it holds them.
    async fn pack_header_within(
        &self,
        hex: &str,
        size: u64,
        read: Option<(u64, Bytes)>,
    ) -> Result<Vec<format::Entry>> {
        let path = format::pack_path(hex);
        let damaged = |reason: &str| Error::corrupt(&path, reason);
        if size < 4 {
            return Err(damaged("is truncated"));
        }
        let get = |r: std::ops::Range<u64>| {
            let held = read.as_ref().and_then(|(at, b)| {
                let a = usize::try_from(r.start.checked_sub(*at)?).ok()?;
                let z = usize::try_from(r.end - at).ok()?;
                (z <= b.len()).then(|| b.slice(a..z))
            });
            let path = &path;
            async move {
                match held {
                    Some(b) => Ok(b),
                    None => self.inner.backend.get_range(path, r).await,
                }
            }
        };
        let tail = get(size - 4..size).await?;
        let len = u64::from(u32::from_le_bytes(
            tail[..].try_into().map_err(|_| damaged("is truncated"))?,
        ));
        if len + 4 > size {
            return Err(damaged("pack header length is out of range"));
        }
        let sealed = get(size - 4 - len..size - 4).await?;
        let keys = self.inner.keys.clone();
        let aad = crate::crypto::object_aad("pack-header", hex);
        let entries = tokio::task::spawn_blocking(move || {
            keys.open(&aad, &sealed)
                .and_then(|h| format::decode_pack_header(&h))
        })
        .await
        .map_err(|e| Error::Invalid(format!("header task failed: {e}")))?;
        let entries = entries.ok_or_else(|| damaged("pack header fails authentication"))?;
        // Authenticated, so written by this repository's key; still, no place past the frames.
        let frames_end = size - 4 - len;
        if entries
            .iter()
            .any(|e| u64::from(e.frame_off) + u64::from(e.frame_len) > frames_end)
        {
            return Err(damaged("pack header places chunks past its frames"));
        }
        Ok(entries)
    }

    /// Copies the chunks `ids` (in pack order) into new packs and index files, through the
    /// backup pipeline, with nothing deduplicated against the current index.
    async fn repack(&self, lock: &LockGuard, ids: &[ChunkId]) -> Result<()> {
        let plan = {
            let idx = self.inner.index.read().map_err(|_| poisoned())?;
            crate::restore::plan(&idx, &self.inner.keys, ids)?
        };
        // An empty index: every chunk is stored. The chunking is unused (chunks arrive cut).
        let pipeline = self.start_pipeline(
            &BackupOptions::default(),
            Chunking::PAGES,
            Arc::new(RwLock::new(Index::default())),
            lock,
        )?;
        let tx = pipeline
            .sender()
            .ok_or_else(|| Error::Invalid("repack pipeline has no input".into()))?;
        let mut chunks =
            crate::restore::chunks(self.inner.backend.clone(), self.inner.keys.clone(), plan);
        let mut ids = ids.iter();
        while let Some(run) = chunks.next().await {
            for c in run? {
                let id = *ids
                    .next()
                    .ok_or_else(|| Error::Invalid("repack read more chunks than planned".into()))?;
                if tx.send(pipeline::Input::Chunk(id, c)).await.is_err() {
                    // The pipeline stopped; finish says why.
                    break;
                }
            }
        }
        drop(tx);
        pipeline.finish().await?;
        if ids.next().is_some() {
            return Err(Error::Invalid(
                "repack read fewer chunks than planned".into(),
            ));
        }
        Ok(())
    }

    /// Adds a key slot wrapped by `key`; returns its id. Refused when `key` opens a slot
    /// already: a second slot for the same passphrase or key file adds no way in.
    pub async fn add_key(&self, key: &dyn KeyProvider, label: &str) -> Result<String> {
        let slots = read_slots(&self.inner.backend).await?;
        if let Ok((_, id)) = open_slots(slots, &self.inner.config.id, key).await {
            return Err(Error::Invalid(format!(
                "this {} opens key slot {id} already: choose another",
                key.kind()
            )));
        }
        write_slot(
            &self.inner.backend,
            &self.inner.config.id,
            &self.inner.keys,
            key,
            label,
        )
        .await
    }

    /// Lists the repository's locks and removes those whose holder is gone (stale: not
    /// refreshed for [`LOCK_STALE_AFTER`](crate::LOCK_STALE_AFTER), or left by a dead process
    /// of this host); with `all`, every lock. Only for when no backup or prune runs: a lock
    /// removed from under a running backup lets a prune delete what it deduplicated against.
    pub async fn unlock(&self, all: bool) -> Result<Vec<crate::LockInfo>> {
        crate::lock::unlock(&self.inner.backend, all).await
    }

    /// Lists key slots.
    pub async fn keys(&self) -> Result<Vec<KeySlotInfo>> {
        let mut v = Vec::new();
        for (id, s) in read_slots(&self.inner.backend).await? {
            v.push(KeySlotInfo {
                current: id == self.inner.slot,
                id,
                kind: s.key.kind,
                label: s.label,
                created: s.created,
            });
        }
        v.sort_by_key(|k| k.created);
        Ok(v)
    }

    /// Removes a key slot (id or unique prefix); refuses to remove the last one. Returns the
    /// removed slot's id.
    pub async fn remove_key(&self, id_or_prefix: &str) -> Result<String> {
        if id_or_prefix.is_empty() {
            return Err(Error::Invalid(
                "name the key slot to remove (`key list`)".into(),
            ));
        }
        // A damaged slot is named too: it opens nothing, and removing it is how it goes.
        let (slots, damaged) = read_all_slots(&self.inner.backend).await?;
        let matching: Vec<&String> = slots
            .iter()
            .map(|(i, _)| i)
            .chain(&damaged)
            .filter(|i| i.starts_with(id_or_prefix))
            .collect();
        let id = match matching.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(Error::NotFound {
                    kind: "key slot",
                    id: id_or_prefix.into(),
                });
            }
            _ => {
                return Err(Error::Ambiguous {
                    prefix: id_or_prefix.into(),
                });
            }
        };
        if !damaged.contains(&id) && slots.len() <= 1 {
            return Err(Error::LastKey { slot: id });
        }
        if id == self.inner.slot {
            return Err(Error::Invalid(format!(
                "key slot {id} is the one this repository was opened with: open it with another \
                 key to remove this one, or replace it with `key rotate`"
            )));
        }
        let backend = &self.inner.backend;
        let path = format::key_path(&id);
        let Some(bytes) = backend.get(&path).await? else {
            return Ok(id);
        };
        backend.delete_data(&path, None).await?;
        // Another process removing another slot at the same time (the one this process was
        // opened with, by a process opened with this one) may have left none that opens the
        // repository: this slot goes back. Of two such removals, the later to look sees none.
        if !damaged.contains(&id) && read_all_slots(backend).await?.0.is_empty() {
            backend.put_data(&path, bytes).await?;
            return Err(Error::Invalid(format!(
                "key slot {id} was put back: another key slot was removed at the same time, and \
                 none would have been left to open the repository (`key list`)"
            )));
        }
        Ok(id)
    }

    /// Replaces the slot this repository was opened with by one wrapped by `new_key` (a new
    /// passphrase or key); data is not rewritten. Returns the new slot id.
    pub async fn rotate_key(&self, new_key: &dyn KeyProvider) -> Result<String> {
        let old = read_slots(&self.inner.backend)
            .await?
            .into_iter()
            .find(|(i, _)| *i == self.inner.slot);
        let label = old.map(|(_, s)| s.label).unwrap_or_default();
        // A slot inside the protection period cannot go: refused before a new one is added.
        self.inner.backend.know_clock().await;
        let path = format::key_path(&self.inner.slot);
        if let Some(m) = self.inner.backend.head(&path).await?
            && let Some(until) = self.inner.backend.protected(&m)
        {
            return Err(Error::Protected {
                object: path,
                until: until.to_string(),
            });
        }
        // The slot going away is not renewed on its way out (a new retention date would
        // protect it from the delete below): the new one is, from its first write.
        self.inner.backend.renew_with(None);
        let id = self.add_key(new_key, &label).await?;
        self.inner.backend.renew_with(Some(format::key_path(&id)));
        if let Err(e) = self.inner.backend.delete_data(&path, None).await {
            // Half done: said so, lest a second try add a third slot.
            let old = &self.inner.slot;
            let note = format!(
                "; key rotate added the new key slot {id} but could not remove the old one, \
                 {old}: both open the repository now; once the cause is fixed, remove the old \
                 one with `cairn repo key remove {old}` (not another rotate)"
            );
            return Err(match e {
                e @ Error::Store { .. } => e.map_hint(|hint| hint + &note),
                e => Error::Invalid(format!("{e}{note}")),
            });
        }
        Ok(id)
    }

    /// The key slot this repository was opened with, as stored: for [`Repository::import_key`]
    /// to put back should every slot on the store be lost or deleted. It is as safe to keep
    /// as the passphrase or key file that opens it is secret.
    pub async fn export_key(&self) -> Result<Vec<u8>> {
        let path = format::key_path(&self.inner.slot);
        match self.inner.backend.get(&path).await? {
            Some(b) => Ok(b.to_vec()),
            None => Err(Error::Missing {
                object: path,
                snapshots: Vec::new(),
            }),
        }
    }

    /// Puts back a key slot [`Repository::export_key`] wrote, once it is known to open the
    /// repository at `location` with `key`; returns its id. For a repository whose slots are
    /// gone (deleted, or damaged), which cannot be opened otherwise.
    pub async fn import_key(
        location: impl Into<Location>,
        slot: &[u8],
        key: &dyn KeyProvider,
    ) -> Result<String> {
        let location = location.into();
        let mut backend = Backend::connect(&location, false)?;
        let config = match backend.get(format::CONFIG).await? {
            Some(b) => Config::parse(&b, &location.url)?,
            None => return Err(Error::NotARepository { url: location.url }),
        };
        backend.protection = Duration::from_secs(config.protection_secs).min(MAX_PROTECTION);
        backend.object_lock = config.object_lock;
        let file: SlotFile = serde_json::from_slice(slot).map_err(|e| {
            Error::Invalid(format!("not a key slot `cairn repo key export` wrote: {e}"))
        })?;
        if !format::is_id(&file.id) {
            return Err(Error::Invalid(format!(
                "not a key slot `cairn repo key export` wrote: bad slot id {}",
                file.id
            )));
        }
        let id = file.id.clone();
        // Refused as opening is (a wrong key, a slot of another repository) before any write.
        open_slots(vec![(id.clone(), file)], &config.id, key).await?;
        let path = format::key_path(&id);
        if backend.exists(&path).await? {
            return Err(Error::Invalid(format!(
                "key slot {id} is in the repository already: it opens as it is"
            )));
        }
        backend.put_data(&path, Bytes::from(slot.to_vec())).await?;
        Ok(id)
    }
}

enum VerifyError {
    Whole(String),
    Chunks(IdSet, String),
}

impl VerifyError {
    fn reason(&self) -> String {
        match self {
            VerifyError::Whole(r) | VerifyError::Chunks(_, r) => r.clone(),
        }
    }
}

/// Bytes of a pack `check --read-data` reads at once (more when a frame is larger).
const VERIFY_READ_BYTES: u64 = 4 << 20;

/// The chunks of `group` (in pack order) that `data`, read from offset `start` of the pack,
/// does not hold intact, with the offset of the first damaged frame; one decoded frame is
/// held at a time.
fn bad_chunks(
    keys: &MasterKeys,
    hex: &str,
    path: &str,
    start: u64,
    data: &[u8],
    group: &[(ChunkId, Loc)],
) -> Option<(u32, Vec<ChunkId>)> {
    let mut frame: Option<(u32, Option<Bytes>)> = None;
    let (mut bad, mut first) = (Vec::new(), None);
    for (c, l) in group {
        if frame.as_ref().is_none_or(|(off, _)| *off != l.frame_off) {
            let a = (u64::from(l.frame_off) - start) as usize;
            let decoded = data.get(a..a + l.frame_len as usize).and_then(|s| {
                crate::restore::decode_frame(keys, hex, path, u64::from(l.frame_off), s).ok()
            });
            frame = Some((l.frame_off, decoded));
        }
        let ok = frame
            .as_ref()
            .and_then(|(_, f)| f.as_ref())
            .is_some_and(|f| {
                let (a, b) = (l.inner_off as usize, l.inner_off as usize + l.len as usize);
                f.get(a..b).is_some_and(|s| keys.chunk_id(s) == *c)
            });
        if !ok {
            bad.push(*c);
            first.get_or_insert(l.frame_off);
        }
    }
    first.map(|off| (off, bad))
}

fn problem(e: Error, snapshots: Vec<String>) -> Problem {
    match e {
        Error::Corrupt { object, reason, .. } => Problem {
            object,
            reason,
            snapshots,
        },
        Error::Missing { object, .. } => Problem {
            object,
            reason: "is missing".into(),
            snapshots,
        },
        e => Problem {
            object: String::new(),
            reason: e.to_string(),
            snapshots,
        },
    }
}

pub(crate) fn with_snapshot(e: Error, snapshot: &str) -> Error {
    match e {
        Error::Corrupt {
            object,
            reason,
            mut snapshots,
        } => {
            snapshots.push(snapshot.to_string());
            Error::Corrupt {
                object,
                reason,
                snapshots,
            }
        }
        Error::Missing {
            object,
            mut snapshots,
        } => {
            snapshots.push(snapshot.to_string());
            Error::Missing { object, snapshots }
        }
        e => e,
    }
}

async fn write_slot(
    backend: &Backend,
    repository: &str,
    keys: &MasterKeys,
    key: &dyn KeyProvider,
    label: &str,
) -> Result<String> {
    let id = format::new_id();
    let wrapped = key
        .wrap(keys.raw(), &keys::slot_aad(repository, &id))
        .await?;
    let slot = SlotFile {
        version: 1,
        id: id.clone(),
        label: label.to_string(),
        created: jiff::Timestamp::now(),
        key: wrapped,
    };
    let body = serde_json::to_vec_pretty(&slot).map_err(|e| Error::Invalid(e.to_string()))?;
    // Protected as data is: a slot deleted would leave the data it opens unreadable.
    backend
        .put_data(&format::key_path(&id), Bytes::from(body))
        .await?;
    Ok(id)
}

/// The key slots, in listing order, read at once.
async fn read_slots(backend: &Backend) -> Result<Vec<(String, SlotFile)>> {
    let (slots, damaged) = read_all_slots(backend).await?;
    // A slot that does not parse is not a working key; it is skipped, not fatal, and said,
    // or a wrong passphrase would be all the user hears of it.
    for id in damaged {
        tracing::warn!(
            "key slot {id} is damaged (keys/{id} is not a key slot of its name); skipped: \
             `cairn repo key remove {id}` removes it"
        );
    }
    Ok(slots)
}

/// The key slots that parse, and the ids of those that do not (damaged).
async fn read_all_slots(backend: &Backend) -> Result<(Vec<(String, SlotFile)>, Vec<String>)> {
    let ids = backend.list_ids("keys/").await?;
    let read: Vec<Option<(String, Option<SlotFile>)>> = futures::stream::iter(ids)
        .map(|id| async move {
            let Some(b) = backend.get(&format::key_path(&id)).await? else {
                return Ok(None);
            };
            let slot = serde_json::from_slice::<SlotFile>(&b)
                .ok()
                .filter(|s| s.id == id);
            Ok::<_, Error>(Some((id, slot)))
        })
        .buffered(METADATA_READS_IN_FLIGHT)
        .try_collect()
        .await?;
    let (mut slots, mut damaged) = (Vec::new(), Vec::new());
    for (id, slot) in read.into_iter().flatten() {
        match slot {
            Some(s) => slots.push((id, s)),
            None => damaged.push(id),
        }
    }
    Ok((slots, damaged))
}

async fn open_slots(
    slots: Vec<(String, SlotFile)>,
    repository: &str,
    key: &dyn KeyProvider,
) -> Result<(MasterKeys, String)> {
    if slots.is_empty() {
        return Err(Error::Invalid(format!(
            "repository {repository} has no readable key slot (its keys/ objects are gone or \
             damaged), so no key opens it: `cairn repo key import FILE` puts back a slot `key \
             export` wrote, or put back a copy of keys/"
        )));
    }
    for (id, s) in slots {
        if s.key.kind != key.kind() {
            continue;
        }
        if let Some(secret) = key.unwrap(&s.key, &keys::slot_aad(repository, &id)).await? {
            return Ok((keys::master_from(&secret)?, id));
        }
    }
    Err(if key.kind() == "passphrase" {
        Error::WrongPassphrase
    } else {
        Error::WrongKey {
            provider: key.kind().into(),
        }
    })
}

/// What check says to do of a damaged pack: until it is repaired, every backup of the same
/// data deduplicates against its damaged chunks.
fn repair_hint(hex: &str) -> String {
    format!(
        "; `cairn repo repair packs {}` keeps its intact chunks and drops the damaged ones, \
         which backups otherwise go on reusing: the next backup of the same data stores them \
         again",
        &hex[..hex.len().min(8)]
    )
}

/// The problems a check found in chunks, by their place among the report's errors, with the
/// chunks each found damaged: the snapshots that need those are named at the end.
#[derive(Default)]
struct Blame(Vec<(usize, IdSet)>);

impl Blame {
    fn push(&mut self, report: &mut CheckReport, object: String, reason: String, damaged: IdSet) {
        self.0.push((report.errors.len(), damaged));
        report.errors.push(Problem {
            object,
            reason,
            snapshots: Vec::new(),
        });
    }
}

/// The ids of a pack's chunks: what a damaged pack affects.
fn ids_of(entries: &[(ChunkId, Loc)]) -> IdSet {
    entries.iter().map(|e| e.0).collect()
}

/// The packs prune repacks and the live chunks it copies out of them.
#[derive(Debug, Default)]
struct Repack {
    packs: HashSet<format::PackId>,
    /// In pack and frame order, so the reads are sequential.
    ids: Vec<ChunkId>,
    live_bytes: u64,
    unused_bytes: u64,
}

/// Chooses the packs in use whose unused share is at least `threshold` and that may be
/// deleted (`kept` says which may not).
fn repack_plan(
    idx: &Index,
    referenced: &IdSet,
    (live, total): (&[u64], &[u64]),
    threshold: f64,
    kept: impl Fn(&format::PackId) -> bool,
) -> Repack {
    let chosen: Vec<bool> = (0..idx.packs.len())
        .map(|p| {
            live[p] > 0
                && total[p] > live[p]
                && (total[p] - live[p]) as f64 >= threshold * total[p] as f64
                && !kept(&idx.packs[p])
        })
        .collect();
    let mut r = Repack::default();
    let mut ids: Vec<(u32, u32, u32, ChunkId)> = Vec::new();
    for (c, l) in idx.iter() {
        if !chosen[l.pack as usize] {
            continue;
        }
        if referenced.contains(c) {
            ids.push((l.pack, l.frame_off, l.inner_off, *c));
            r.live_bytes += u64::from(l.len);
        } else {
            r.unused_bytes += u64::from(l.len);
        }
    }
    for (_, l) in idx.duplicates() {
        if chosen[l.pack as usize] {
            r.unused_bytes += u64::from(l.len);
        }
    }
    ids.sort_unstable();
    r.ids = ids.into_iter().map(|(_, _, _, c)| c).collect();
    r.packs = idx
        .packs
        .iter()
        .zip(chosen)
        .filter(|(_, c)| *c)
        .map(|(p, _)| *p)
        .collect();
    r
}

/// The bytes of an index file a chunk takes at least: its id (a keyed hash, incompressible).
const INDEX_ID_BYTES: u64 = 32;

/// An upper bound on the chunks index files of these sizes hold, so the index is allocated
/// once.
fn chunk_bound(files: &[(String, u64)]) -> usize {
    files
        .iter()
        // No index file is read past the largest object, whatever size the listing says.
        .map(|(_, size)| {
            usize::try_from((*size).min(crate::backend::MAX_WHOLE_READ) / INDEX_ID_BYTES)
                .unwrap_or(usize::MAX)
        })
        .fold(0usize, usize::saturating_add)
}

/// Reads index `files` (id, size), giving each one's packs and their entries to `each` as it
/// is decoded, in name order (so the index and the damage reported do not depend on which
/// read finished first; loading holds the files in flight, not every file decoded). Returns
/// why each file it skipped is damaged. A file gone since the listing (a prune replaced it)
/// is given with no packs.
async fn read_index(
    backend: &Backend,
    keys: &MasterKeys,
    mut files: Vec<(String, u64)>,
    mut each: impl FnMut(String, Vec<(PackId, Vec<Entry>)>),
) -> Result<Vec<Error>> {
    files.sort_unstable();
    let mut damaged = Vec::new();
    // Fetched ahead, decoded one at a time.
    let mut fetched = futures::stream::iter(files)
        .map(|(id, size)| async move {
            let path = format::index_path(&id);
            if size > crate::backend::MAX_WHOLE_READ {
                let why = format!("is {size} bytes, larger than any index file Cairn writes");
                return Ok((id, path.clone(), Err(Error::corrupt(&path, why))));
            }
            backend.get(&path).await.map(|b| (id, path, Ok(b)))
        })
        .buffered(METADATA_READS_IN_FLIGHT);
    while let Some((id, path, sealed)) = fetched.try_next().await? {
        let sealed = match sealed {
            Err(e) => {
                // Too large to be an index file: damaged, as one that does not decrypt.
                tracing::warn!(error = %e, "skipping damaged index file");
                damaged.push(e);
                each(id, Vec::new());
                continue;
            }
            Ok(sealed) => sealed,
        };
        let Some(sealed) = sealed else {
            each(id, Vec::new());
            continue;
        };
        let packs = format::open_object(keys, "index", &id, &path, &sealed).and_then(|p| {
            format::decode_index(&p).ok_or_else(|| Error::corrupt(&path, "bad index encoding"))
        });
        drop(sealed);
        // A damaged index file is skipped (check reports it): its chunks are then stored
        // again by the next backup instead of the repository becoming unusable.
        let packs = packs.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "skipping damaged index file");
            damaged.push(e);
            Vec::new()
        });
        each(id, packs);
    }
    Ok(damaged)
}

/// Whether the store reports a version of the object at `path`, just written (S3's
/// `x-amz-version-id`; `null` is the version in a bucket whose versioning is suspended).
async fn keeps_versions(backend: &Backend, path: &str) -> Result<bool> {
    let Some(meta) = backend.head(path).await? else {
        return Err(Error::Invalid(format!(
            "{}: {path}, just written, is not there: the store does not keep what it takes; \
             nothing was made",
            backend.url
        )));
    };
    Ok(meta.version.is_some_and(|v| !v.is_empty() && v != "null"))
}

/// Whether S3 refused a write with retention because the bucket has no Object Lock
/// configuration (`InvalidRequest: Bucket is missing Object Lock Configuration`). Servers that
/// accept the headers and ignore them are told apart by [`keeps_versions`].
fn lacks_object_lock(e: &object_store::Error) -> bool {
    let text = e.to_string();
    // AWS says "Object Lock Configuration", moto and MinIO "ObjectLockConfiguration".
    text.contains("InvalidRequest")
        && (text.contains("Object Lock Configuration") || text.contains("ObjectLockConfiguration"))
}

#[cfg(test)]
mod tests {
    /// A filter's time: RFC 3339, a date, or a while ago; anything else is refused
    /// naming the three.
    #[test]
    fn filter_times() {
        let t = |s: &str| super::parse_time(s, &jiff::tz::TimeZone::UTC);
        assert_eq!(
            t("2026-01-31T12:00:00Z").expect("rfc 3339").to_string(),
            "2026-01-31T12:00:00Z"
        );
        assert_eq!(
            t("2026-01-31").expect("a date").to_string(),
            "2026-01-31T00:00:00Z"
        );
        // Without an offset, the time of day is the zone's, not dropped.
        for utc in ["2024-06-30T23:59:59", "2024-06-30 23:59:59"] {
            assert_eq!(t(utc).expect(utc).to_string(), "2024-06-30T23:59:59Z");
        }
        let plus_two = jiff::tz::TimeZone::fixed(jiff::tz::offset(2));
        for (local, utc) in [
            ("2024-06-30T23:59:59", "2024-06-30T21:59:59Z"),
            ("2024-07-01", "2024-06-30T22:00:00Z"),
            ("2024-07-01T00:00:00+00:00", "2024-07-01T00:00:00Z"),
        ] {
            let parsed = super::parse_time(local, &plus_two).expect(local);
            assert_eq!(parsed.to_string(), utc);
        }
        assert!(t("99999999y").is_err(), "too long ago, not a panic");
        let ago = jiff::Timestamp::now().as_second() - t("1y").expect("ago").as_second();
        assert!((365 * 86_400..=366 * 86_400 + 5).contains(&ago), "{ago}");
        let e = t("30m").expect_err("ambiguous").to_string();
        assert!(e.contains("`30mo` for months or `30min`"), "{e}");
        let ago = jiff::Timestamp::now().as_second() - t("36h").expect("ago").as_second();
        assert!((36 * 3600..36 * 3600 + 5).contains(&ago), "{ago}");
        let ago = jiff::Timestamp::now().as_second() - t("2w").expect("ago").as_second();
        assert!((14 * 86_400..14 * 86_400 + 5).contains(&ago), "{ago}");
        for bad in [
            "",
            "d",
            "-3d",
            "3x",
            "yesterday",
            "2026-13-01",
            "99999999999999999w",
        ] {
            let e = t(bad).expect_err(bad).to_string();
            assert!(e.contains("a while ago"), "{bad}: {e}");
        }
    }

    use super::lacks_object_lock;

    fn s3_error(body: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: format!("Server returned non-2xx status code: 400 Bad Request: {body}").into(),
        }
    }

    #[test]
    fn only_a_bucket_without_object_lock_falls_back() {
        assert!(lacks_object_lock(&s3_error(
            "<Error><Code>InvalidRequest</Code><Message>Bucket is missing Object Lock Configuration</Message></Error>"
        )));
        // moto's and MinIO's words.
        assert!(lacks_object_lock(&s3_error(
            "<Error><Code>InvalidRequest</Code><Message>Bucket is missing ObjectLockConfiguration</Message></Error>"
        )));
        assert!(!lacks_object_lock(&s3_error(
            "<Error><Code>MissingUploadObjectWithObjectLockHeaders</Code><Message>Content-MD5 or \
             x-amz-sdk-checksum-algorithm header required to upload an object with a retention period \
             configured using Object Lock</Message></Error>"
        )));
        assert!(!lacks_object_lock(&s3_error(
            "<Error><Code>AccessDenied</Code></Error>"
        )));
    }
}

#[cfg(test)]
mod prune_tests {
    use super::*;
    use crate::keys::{KdfParams, Passphrase};

    /// A snapshot prune did not read stops it, naming the snapshot and what to do.
    #[tokio::test]
    async fn a_snapshot_saved_while_prune_runs_stops_it() {
        let key = Passphrase::new("p").with_params(KdfParams::insecure_for_tests());
        let repo = Repository::init("memory://prune-appeared", &key, InitOptions::default())
            .await
            .expect("init");
        let read = repo
            .snapshots(&SnapshotFilter::default())
            .await
            .expect("list");
        repo.backup_stream("s", &b"data"[..], BackupOptions::default())
            .await
            .expect("backup");
        let e = repo
            .no_snapshot_since(&read, "nothing was removed")
            .await
            .expect_err("a new snapshot");
        let text = e.to_string();
        assert!(
            matches!(e, Error::Locked { .. }) && text.contains("nothing was removed"),
            "{text}"
        );
        let all = repo
            .snapshots(&SnapshotFilter::default())
            .await
            .expect("list");
        repo.no_snapshot_since(&all, "")
            .await
            .expect("every snapshot read");
    }
}
