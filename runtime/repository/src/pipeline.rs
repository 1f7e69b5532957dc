//! The backup pipeline: chunk → hash → dedup → compress → encrypt → pack → upload.
//!
//! Threads joined by bounded channels, so memory stays bounded whatever the input size and a
//! slow store slows the producer down (backpressure) instead of buffering:
//!
//! ```text
//! producer ─Input─► chunker (cut, keyed BLAKE3, dedup, group new chunks into frames)
//!                      ─Frame─► N compressors (zstd per frame, raw when it does not pay)
//!                                  ─Frame─► packer (AES-GCM per frame, packs, uploads, index)
//! ```

use crate::backend::Backend;
use crate::chunker::{Chunker, Chunking};
use crate::crypto::{self, ChunkId, IdSet, MasterKeys};
use crate::error::{Error, Result};
use crate::format::{self, Entry, PackId};
use crate::index::Index;
use crate::lock::LockCheck;
use bytes::Bytes;
use rand::RngCore;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

/// Size of the blocks producers hand to the chunker (1 MiB): large enough to amortise channel
/// costs, small enough that the queue holds little.
pub(crate) const INPUT_BLOCK: usize = 1 << 20;
/// Blocks queued in front of the chunker.
pub(crate) const INPUT_QUEUE: usize = 4;
/// Frames queued per compressor thread, in front of the compressors and again in front of
/// the packer. The stages' speeds swing with the data (random blobs load the chunker and the
/// packer, text the compressors), and deeper queues let one run ahead while another catches
/// up: a 1 GiB day-1 backup on two cores took a median 2.11 s with 2, 1.98 s with 4 and
/// 1.96 s with 8, peaking at 80, 86 and 92 MiB (2026-12-04).
const FRAMES_QUEUED_PER_THREAD: usize = 4;
/// Default uncompressed size of a frame (a run of new chunks compressed as one zstd frame):
/// 128 KiB keeps most of zstd's ratio on pages that compress poorly one by one, while a
/// restore reading one old chunk from a frame decodes at most this much.
pub const DEFAULT_FRAME_BYTES: usize = 128 * 1024;
/// Frames that look like text grow to this many times the frame size: text keeps gaining
/// ratio from context where pages do not (the reference dataset's SQL dumps at level 3:
/// 136.7 MB in 128 KiB frames, 132.3 MB in 512 KiB ones, 131.7 MB whole-file).
pub const TEXT_FRAME_FACTOR: usize = 4;
/// Default pack size (16 MiB): few objects and requests on cloud stores, bounded memory.
pub const DEFAULT_PACK_BYTES: usize = 16 << 20;
/// Packs uploading at once; with the pack size this bounds upload memory.
pub const MAX_UPLOADS_IN_FLIGHT: usize = 2;
/// Index entries gathered before an index file is written, so an interrupted backup leaves
/// reusable data behind (about 2.6 MB of index plaintext, 1.6 GiB of a stream): small enough
/// that the entries held for it do not show in a long stream's memory.
pub(crate) const INDEX_FLUSH_ENTRIES: usize = 50_000;
/// Packs uploaded before an index file is written whatever their entries (256 MiB at the
/// default pack size): a backup of large chunks killed outright (`kill -9`, a lost node) leaves
/// at most this much that its rerun cannot reuse.
pub(crate) const INDEX_FLUSH_PACKS: usize = 16;
/// How long packs wait for their index file at most, for a slow backup (a throttled upload,
/// a slow stream) killed outright.
pub(crate) const INDEX_FLUSH_AFTER: std::time::Duration = std::time::Duration::from_secs(60);
/// Default zstd level: low levels keep up with two cores.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;
/// Default zstd level of frames that look like text.
pub const DEFAULT_TEXT_ZSTD_LEVEL: i32 = 3;
/// Minimum match length of text frames at the fast levels, where zstd's own is 5: dumps
/// repeat whole words and keys, and skipping shorter matches leaves fewer, longer sequences.
/// On the reference dataset's SQL dumps at level 3 (day-2 tree, 1,116 MB backed up): 1.6 MB
/// smaller, no more CPU, and zstd's CLI decodes the frames about 10 % faster (2026-12-07).
const TEXT_MIN_MATCH: u32 = 6;
/// Text levels up to this one get [`TEXT_MIN_MATCH`]; higher levels search harder, and
/// their shorter minimum pays for itself.
const TEXT_MIN_MATCH_UP_TO_LEVEL: i32 = 4;

/// Tunables of one backup.
#[derive(Debug, Clone)]
pub(crate) struct PipelineConfig {
    pub(crate) chunking: Chunking,
    pub(crate) level: i32,
    pub(crate) text_level: i32,
    pub(crate) frame_bytes: usize,
    pub(crate) pack_bytes: usize,
    pub(crate) threads: usize,
    pub(crate) progress: Option<Arc<AtomicU64>>,
    /// Chunk ids per list chunk; `None` in a version 1 repository (no list chunks).
    pub(crate) list_ids: Option<usize>,
    /// Fewest ids a file's list chunk holds, when shorter lists are written as list chunks
    /// too (a tree's files, [`format::MIN_LISTED_IDS`]); `None` keeps them in the content.
    pub(crate) min_listed: Option<usize>,
    /// List chunks end where an id says so (about every `list_ids`, from a quarter to four
    /// times that), not after exactly `list_ids`: a chunk inserted or removed then changes
    /// the list chunk around it, not every list chunk after it (format version 3).
    pub(crate) lists_by_content: bool,
    /// Content-defined cuts move on to the end of their line ([`Chunker::at_lines`]).
    pub(crate) at_lines: bool,
}

pub(crate) enum Input {
    /// How the files that follow are cut (a tree backup picks per file); the pipeline's
    /// configured chunking until the first of these.
    Chunking(Chunking),
    Data(Vec<u8>),
    /// The next `n` bytes of the current file are zeros (a hole, not read).
    Zeros(u64),
    EndFile,
    /// A chunk read back from the repository with its (checked) id, stored as it is: prune
    /// repacking the live chunks of mostly unused packs.
    Chunk(ChunkId, Bytes),
    /// The next chunks of the current file, already cut (by the repository a snapshot is
    /// copied from): named with this repository's key, not cut again, so the copy keeps the
    /// original's chunk boundaries and deduplicates as it did.
    Cut(Vec<Bytes>),
    /// The next chunks of the current file, which the repository holds already under these
    /// ids (the same chunks of an earlier copy): recorded without their data.
    Known(Vec<ChunkId>),
    /// Inputs sent as one message (a tree's small files), so that each does not wake the
    /// chunker on its own; never nested.
    Batch(Vec<Input>),
}

struct Frame {
    data: Vec<u8>,
    entries: Vec<(ChunkId, u32, u32)>,
    /// What the frame's first [`ChunkState::frame_bytes`] looked like, once sampled.
    looks: Option<Looks>,
}

/// One file's (or the stream's) chunks: either the ids themselves, or, past
/// [`PipelineConfig::list_ids`] of them, the list chunks that hold them.
#[derive(Debug, Default)]
pub(crate) struct FileChunks {
    pub(crate) chunks: Vec<ChunkId>,
    pub(crate) lists: Vec<ChunkId>,
    pub(crate) size: u64,
}

/// What the chunker learnt.
#[derive(Debug, Default)]
pub(crate) struct ChunkerOut {
    pub(crate) files: Vec<FileChunks>,
    pub(crate) chunks: u64,
    pub(crate) new_chunks: u64,
    pub(crate) new_bytes: u64,
    pub(crate) bytes: u64,
}

#[derive(Debug, Default)]
pub(crate) struct PackerOut {
    pub(crate) stored_bytes: u64,
}

/// Buffers handed back for reuse. Fresh memory costs a page fault per 4 KiB on first touch
/// (and zeroing, for read buffers); the pipeline moves every byte of a backup through input
/// blocks and pack buffers, so it recycles both, keeping at most `kept` of each.
#[derive(Clone)]
pub(crate) struct Pool {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
    kept: usize,
}

impl Pool {
    pub(crate) fn new(kept: usize) -> Self {
        Self {
            free: Arc::new(Mutex::new(Vec::new())),
            kept,
        }
    }

    /// A buffer handed back earlier, as it was (length and contents), if there is one.
    pub(crate) fn take(&self) -> Option<Vec<u8>> {
        self.free.lock().ok()?.pop()
    }

    /// Hands `buf` back for reuse.
    pub(crate) fn put(&self, buf: Vec<u8>) {
        if let Ok(mut free) = self.free.lock()
            && free.len() < self.kept
        {
            free.push(buf);
        }
    }

    /// `buf` as `Bytes` that hand the buffer back here once the last of them is dropped.
    fn bytes(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Recycled {
            buf,
            pool: self.clone(),
        })
    }
}

struct Recycled {
    buf: Vec<u8>,
    pool: Pool,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

pub(crate) struct Shared {
    pub(crate) backend: Backend,
    pub(crate) keys: Arc<MasterKeys>,
    pub(crate) index: Arc<RwLock<Index>>,
    /// The lock the pipeline writes under: checked before each index file, so a backup that
    /// lost it (taken for stale while the machine slept, and a prune ran) indexes no pack
    /// that prune may have deleted meanwhile.
    pub(crate) lock: LockCheck,
}

/// A running pipeline; [`Pipeline::finish`] waits for everything to be durable.
pub(crate) struct Pipeline {
    tx: Option<tokio::sync::mpsc::Sender<Input>>,
    blocks: Pool,
    chunker: Option<JoinHandle<Result<ChunkerOut>>>,
    workers: Vec<JoinHandle<()>>,
    packer: Option<JoinHandle<Result<PackerOut>>>,
    abort: Arc<AtomicBool>,
    failure: Arc<std::sync::OnceLock<String>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pipeline")
    }
}

fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| Error::io("spawn thread", name, e))
}

impl Pipeline {
    pub(crate) fn start(shared: Shared, cfg: PipelineConfig) -> Result<Self> {
        cfg.chunking.validate()?;
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Invalid("backups must run inside a Tokio runtime".into()))?;
        let abort = Arc::new(AtomicBool::new(false));
        let (tx, rx) = tokio::sync::mpsc::channel::<Input>(INPUT_QUEUE);
        let threads = cfg.threads.max(1);
        let (ftx, frx) = sync_channel::<Frame>(threads * FRAMES_QUEUED_PER_THREAD);
        let (ctx, crx) = sync_channel::<Frame>(threads * FRAMES_QUEUED_PER_THREAD);
        let frx = Arc::new(Mutex::new(frx));
        // Blocks queued, one being read into, one being cut.
        let blocks = Pool::new(INPUT_QUEUE + 2);

        let chunker = {
            let (keys, index, cfg, abort, blocks) = (
                shared.keys.clone(),
                shared.index.clone(),
                cfg.clone(),
                abort.clone(),
                blocks.clone(),
            );
            spawn("cairn-chunker", move || {
                chunker_loop(rx, ftx, &keys, &index, &cfg, &abort, &blocks)
            })?
        };
        let mut workers = Vec::new();
        for i in 0..threads {
            let (frx, ctx, levels) = (frx.clone(), ctx.clone(), (cfg.level, cfg.text_level));
            workers.push(spawn(&format!("cairn-zstd-{i}"), move || {
                compress_loop(&frx, &ctx, levels)
            })?);
        }
        drop(ctx);
        let failure = Arc::new(std::sync::OnceLock::new());
        let packer = {
            let (abort, pack_bytes, failure) = (abort.clone(), cfg.pack_bytes, failure.clone());
            spawn("cairn-packer", move || {
                let r = packer_loop(&crx, &shared, pack_bytes, &handle, &abort);
                // Said before the channels close, so whoever finds them closed can say why.
                if let Err(e) = &r {
                    let _ = failure.set(e.to_string());
                }
                drop(crx);
                r
            })?
        };
        Ok(Self {
            tx: Some(tx),
            blocks,
            chunker: Some(chunker),
            workers,
            packer: Some(packer),
            abort,
            failure,
        })
    }

    /// Why the pipeline stopped, once its packer failed (a full store, a store refusing):
    /// what a producer that finds its input closed says.
    pub(crate) fn failure(&self) -> Arc<std::sync::OnceLock<String>> {
        self.failure.clone()
    }

    /// The producer side. Sending fails once the pipeline has stopped on an error; call
    /// [`Pipeline::finish`] to learn it.
    pub(crate) fn sender(&self) -> Option<tokio::sync::mpsc::Sender<Input>> {
        self.tx.clone()
    }

    /// Where producers take the buffers of [`Input::Data`] from: the chunker hands each block
    /// back here once it is cut.
    pub(crate) fn blocks(&self) -> Pool {
        self.blocks.clone()
    }

    /// Closes the input and waits until all packs and index files are written.
    pub(crate) async fn finish(mut self) -> Result<(ChunkerOut, PackerOut)> {
        self.tx.take();
        let (c, w, p) = (
            self.chunker.take(),
            std::mem::take(&mut self.workers),
            self.packer.take(),
        );
        tokio::task::spawn_blocking(move || {
            let c = c.map(|h| h.join());
            for h in w {
                let _ = h.join();
            }
            let p = p.map(|h| h.join());
            let lost = || Error::Invalid("a backup thread panicked".into());
            let p = p.ok_or_else(lost)?.map_err(|_| lost())?;
            let c = c.ok_or_else(lost)?.map_err(|_| lost())?;
            // The packer's error is the cause; the chunker only sees its channel closing.
            let p = p?;
            Ok((c?, p))
        })
        .await
        .map_err(|e| Error::Invalid(format!("backup task failed: {e}")))?
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // Dropped without finish: stop uploading; no snapshot will reference what was written.
        if self.packer.is_some() {
            self.abort.store(true, Ordering::Relaxed);
        }
    }
}

struct ChunkState<'a> {
    keys: &'a MasterKeys,
    frame_bytes: usize,
    /// The size text-like frames grow to.
    text_frame_bytes: usize,
    frame: Frame,
    /// List chunks, framed apart from the data.
    lists: Frame,
    /// New chunks this backup sent, the latest up to [`DEDUP_WINDOW`] of them; `older` holds
    /// the window before. The shared index is the repository's as loaded when the backup
    /// started: the packer does not add to it, so memory stays flat however long the backup.
    new: IdSet,
    older: IdSet,
    /// [`DEDUP_WINDOW`] (smaller in tests).
    window: usize,
    out: ChunkerOut,
    list_ids: usize,
    lists_by_content: bool,
    /// Fewest ids a file's list chunk holds ([`PipelineConfig::min_listed`]).
    min_listed: usize,
    /// The length and id of the last chunk of zeros cut.
    zeros: Option<(usize, ChunkId)>,
    /// The file being cut.
    current: FileChunks,
    /// Frames complete but not yet sent: sent once the index read lock is released, so a
    /// full queue never blocks while holding it.
    ready: Vec<Frame>,
}

impl<'a> ChunkState<'a> {
    fn new(keys: &'a MasterKeys, cfg: &PipelineConfig, window: usize) -> Self {
        ChunkState {
            keys,
            frame_bytes: cfg.frame_bytes.clamp(1, format::MAX_FRAME_BYTES / 2),
            text_frame_bytes: (cfg.frame_bytes.saturating_mul(TEXT_FRAME_FACTOR))
                .clamp(1, format::MAX_FRAME_BYTES / 2),
            frame: Frame::new(0),
            lists: Frame::new(0),
            new: IdSet::default(),
            older: IdSet::default(),
            window: window.max(1),
            out: ChunkerOut::default(),
            list_ids: cfg.list_ids.unwrap_or(usize::MAX).max(1),
            lists_by_content: cfg.lists_by_content && cfg.list_ids.is_some(),
            min_listed: match (cfg.list_ids, cfg.min_listed) {
                (Some(n), Some(m)) => m.min(n).max(1),
                _ => usize::MAX,
            },
            current: FileChunks::default(),
            ready: Vec::new(),
            zeros: None,
        }
    }

    /// Counts `n` bytes of input to the current file.
    fn take_in(&mut self, n: usize, cfg: &PipelineConfig) {
        self.out.bytes += n as u64;
        self.current.size += n as u64;
        if let Some(p) = &cfg.progress {
            p.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    fn chunk(&mut self, c: &[u8], index: &Index) {
        // A run of zeros (a disk image's holes, a database's unused pages) is hashed once per
        // chunk length, not once per chunk.
        let id = match self.zeros {
            _ if !is_zero(c) => self.keys.chunk_id(c),
            Some((len, id)) if len == c.len() => id,
            _ => {
                let id = self.keys.chunk_id(c);
                self.zeros = Some((c.len(), id));
                id
            }
        };
        self.store(id, c, index);
        self.record(id, index);
    }

    /// Adds chunk `id` to the current file's list.
    fn record(&mut self, id: ChunkId, index: &Index) {
        self.current.chunks.push(id);
        self.out.chunks += 1;
        let (n, per) = (self.current.chunks.len(), self.list_ids);
        let full = if self.lists_by_content {
            // Ids are keyed hashes: their first bytes are uniform. A repeated id (zeros) that
            // ends lists makes them a quarter long, no shorter.
            let mut head = [0u8; 8];
            head.copy_from_slice(&id.0[..8]);
            n >= per.saturating_mul(4)
                || (n >= per / 4 && u64::from_le_bytes(head).is_multiple_of(per as u64))
        } else {
            n >= per
        };
        if full {
            self.spill(index);
        }
    }

    /// Stores the file's chunk ids so far as one list chunk.
    fn spill(&mut self, index: &Index) {
        let list = format::encode_list(&std::mem::take(&mut self.current.chunks));
        let id = self.keys.chunk_id(&list);
        self.store_list(id, &list, index);
        self.current.lists.push(id);
    }

    /// The file is complete: its last ids join its lists when it has any, and make one when
    /// they are enough.
    fn end_file(&mut self, index: &Index) {
        let left = self.current.chunks.len();
        if left > 0 && (!self.current.lists.is_empty() || left >= self.min_listed) {
            self.spill(index);
        }
        let file = std::mem::take(&mut self.current);
        self.out.files.push(file);
    }

    /// Sends a chunk on to be stored, unless the repository or this backup has it.
    fn store(&mut self, id: ChunkId, c: &[u8], index: &Index) {
        if !self.is_new(id, c.len(), index) {
            return;
        }
        let len = self.frame.push(id, c);
        if len >= self.frame_bytes {
            let looks = *self
                .frame
                .looks
                .get_or_insert_with(|| looks(&self.frame.data));
            if looks != Looks::Text {
                let f = self.frame.take(self.frame_bytes * 2);
                self.ready.push(f);
            } else if len >= self.text_frame_bytes {
                // Text comes in runs (a dump): the next frame is likely text too.
                let f = self.frame.take(self.text_room());
                self.ready.push(f);
            } else {
                // Grown once to its full size here, not doubled past it by its last chunk.
                let room = self.text_room() - len;
                self.frame.data.reserve(room);
            }
        }
    }

    /// Stores a list chunk (ids: random bytes, unless a file repeats a chunk) in frames of
    /// its own, so that it neither dilutes a text frame nor decides how one is sampled.
    fn store_list(&mut self, id: ChunkId, c: &[u8], index: &Index) {
        if self.is_new(id, c.len(), index) && self.lists.push(id, c) >= self.frame_bytes {
            let f = self.lists.take(self.frame_bytes * 2);
            self.ready.push(f);
        }
    }

    /// Whether chunk `id` is new to the repository and to this backup; counts it if so.
    fn is_new(&mut self, id: ChunkId, len: usize, index: &Index) -> bool {
        if index.contains(&id) || self.older.contains(&id) || !self.new.insert(id) {
            return false;
        }
        if self.new.len() >= self.window {
            // The older window's table is reused: no allocation churn once both are full.
            std::mem::swap(&mut self.older, &mut self.new);
            self.new.clear();
        }
        self.out.new_chunks += 1;
        self.out.new_bytes += len as u64;
        true
    }

    /// Room for a text frame: its full size and the largest chunk of the default modes.
    fn text_room(&self) -> usize {
        self.text_frame_bytes + Chunking::STREAM.max_chunk()
    }

    /// Sends the frames begun on.
    fn flush(&mut self) {
        for f in [&mut self.frame, &mut self.lists] {
            if !f.entries.is_empty() {
                let f = f.take(0);
                self.ready.push(f);
            }
        }
    }
}

impl Frame {
    fn new(capacity: usize) -> Self {
        Frame {
            data: Vec::with_capacity(capacity),
            entries: Vec::new(),
            looks: None,
        }
    }

    /// Appends chunk `c`; returns the frame's length.
    fn push(&mut self, id: ChunkId, c: &[u8]) -> usize {
        let off = self.data.len() as u32;
        self.data.extend_from_slice(c);
        self.entries.push((id, off, c.len() as u32));
        self.data.len()
    }

    /// The frame, leaving an empty one with room for `capacity` bytes.
    fn take(&mut self, capacity: usize) -> Frame {
        std::mem::replace(self, Frame::new(capacity))
    }
}

/// New chunks a backup remembers for deduplication against itself, twice over (the current
/// window and the one before): 2 × 64 Ki ids, about 9 MB of tables. Chunks already in the
/// repository always deduplicate; a chunk repeated within one backup is stored again only
/// when between 64 Ki and 128 Ki other new chunks (0.5–1 GiB of new 8 KiB pages, 2–4 GiB of
/// a new stream) came between — space, never correctness, is what that costs.
const DEDUP_WINDOW: usize = 1 << 16;

fn chunker_loop(
    mut rx: tokio::sync::mpsc::Receiver<Input>,
    ftx: SyncSender<Frame>,
    keys: &MasterKeys,
    index: &RwLock<Index>,
    cfg: &PipelineConfig,
    abort: &AtomicBool,
    blocks: &Pool,
) -> Result<ChunkerOut> {
    let mut chunker = if cfg.at_lines {
        Chunker::at_lines(cfg.chunking)
    } else {
        Chunker::new(cfg.chunking)
    };
    let mut st = ChunkState::new(keys, cfg, DEDUP_WINDOW);
    let poisoned = || Error::Invalid("repository index lock poisoned".into());
    let send = |st: &mut ChunkState<'_>| -> Result<()> {
        for f in st.ready.drain(..) {
            ftx.send(f).map_err(|_| Error::Aborted)?;
        }
        Ok(())
    };
    while let Some(msg) = rx.blocking_recv() {
        if abort.load(Ordering::Relaxed) {
            return Err(Error::Aborted);
        }
        let idx = index.read().map_err(|_| poisoned())?;
        match msg {
            Input::Batch(batch) => {
                for msg in batch {
                    take(msg, &mut chunker, &mut st, &idx, cfg, blocks)?;
                }
            }
            msg => take(msg, &mut chunker, &mut st, &idx, cfg, blocks)?,
        }
        drop(idx);
        send(&mut st)?;
    }
    st.flush();
    send(&mut st)?;
    Ok(st.out)
}

/// Cuts, names and stores what one input brings.
fn take(
    msg: Input,
    chunker: &mut Chunker,
    st: &mut ChunkState<'_>,
    idx: &Index,
    cfg: &PipelineConfig,
    blocks: &Pool,
) -> Result<()> {
    match msg {
        Input::Chunking(c) => chunker.set_mode(c),
        Input::Data(d) => {
            st.take_in(d.len(), cfg);
            chunker.push(&d, &mut |c| st.chunk(c, idx));
            blocks.put(d);
        }
        Input::Zeros(mut n) => {
            while n > 0 {
                let k = n.min(ZEROS.len() as u64) as usize;
                st.take_in(k, cfg);
                chunker.push(&ZEROS[..k], &mut |c| st.chunk(c, idx));
                n -= k as u64;
            }
        }
        Input::Cut(run) => {
            for c in run {
                st.take_in(c.len(), cfg);
                st.chunk(&c, idx);
            }
        }
        Input::Known(ids) => {
            for id in ids {
                let len = idx.get(&id).map(|l| l.len).ok_or_else(|| {
                    Error::Invalid(format!("chunk {id} is not in the repository's index"))
                })?;
                st.take_in(len as usize, cfg);
                st.record(id, idx);
            }
        }
        Input::EndFile => {
            chunker.finish(&mut |c| st.chunk(c, idx));
            st.end_file(idx);
        }
        Input::Chunk(id, c) => st.store(id, &c, idx),
        Input::Batch(_) => {
            return Err(Error::Invalid("a batch of inputs within a batch".into()));
        }
    }
    Ok(())
}

/// Zeros a hole is cut from ([`Input::Zeros`]), and a restore's chunks of zeros are
/// slices of.
pub(crate) static ZEROS: [u8; 256 << 10] = [0; 256 << 10];

/// Whether `c` is a slice of [`ZEROS`]: a hole's zeros, or a restore's chunk of zeros, known
/// to be zeros without looking.
pub(crate) fn in_zeros(c: &[u8]) -> bool {
    !c.is_empty() && ZEROS.as_ptr_range().contains(&c.as_ptr())
}

/// Whether `c` is all zeros; its first bytes settle it for nearly all other data, and an OR
/// over the rest vectorises where the early exit of `all` does not.
pub(crate) fn is_zero(c: &[u8]) -> bool {
    in_zeros(c) || c.iter().take(16).all(|&b| b == 0) && c.iter().fold(0u8, |acc, &b| acc | b) == 0
}

/// Compresses frames: binary ones at `levels.0`, text-like ones at `levels.1`.
fn compress_loop(rx: &Mutex<Receiver<Frame>>, tx: &SyncSender<Frame>, levels: (i32, i32)) {
    let mut binary = zstd::bulk::Compressor::new(levels.0).ok();
    let mut text = zstd::bulk::Compressor::new(levels.1).ok();
    if levels.1 <= TEXT_MIN_MATCH_UP_TO_LEVEL
        && let Some(z) = text.as_mut()
    {
        // A failure leaves zstd's own minimum: the same frames, a little larger.
        let _ = z.set_parameter(zstd::zstd_safe::CParameter::MinMatch(TEXT_MIN_MATCH));
    }
    loop {
        let f = match rx.lock() {
            Ok(r) => match r.recv() {
                Ok(f) => f,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let data = match f.looks.unwrap_or_else(|| looks(&f.data)) {
            Looks::Random => raw_frame(&f.data),
            Looks::Text => encode_frame(text.as_mut(), &f.data),
            Looks::Other => encode_frame(binary.as_mut(), &f.data),
        };
        if tx
            .send(Frame {
                data,
                entries: f.entries,
                looks: f.looks,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Bytes sampled to estimate a frame's entropy before compressing it.
const ENTROPY_SAMPLE: usize = 4096;
/// Above this many bits per byte in the sample, a frame is taken for already-compressed or
/// encrypted data and stored raw without running zstd over it (random data measures about
/// 7.95 in a 4 KiB sample; the most random page or text data of the reference set stays far
/// below).
const RAW_ENTROPY_BITS: f64 = 7.9;

/// What a frame's sample says about how to compress it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Looks {
    /// Already compressed or encrypted: stored raw.
    Random,
    /// Text (dumps, logs, CSV): compressed at the text level.
    Text,
    Other,
}

/// Samples the middle of a frame (past headers that compress): random when its bytes'
/// entropy is near 8 bits, text when at least 99 % of them are printable ASCII, tabs or
/// line ends. On the reference dataset every SQL dump frame samples 100 % printable, every
/// page frame 12–27 %.
pub(crate) fn looks(data: &[u8]) -> Looks {
    if data.len() < 4 * ENTROPY_SAMPLE {
        return Looks::Other;
    }
    let start = data.len() / 2 - ENTROPY_SAMPLE / 2;
    let mut counts = [0u32; 256];
    for &b in &data[start..start + ENTROPY_SAMPLE] {
        counts[b as usize] += 1;
    }
    let printable: u32 = counts[32..127].iter().sum::<u32>() + counts[9] + counts[10] + counts[13];
    if printable as usize * 100 >= ENTROPY_SAMPLE * 99 {
        return Looks::Text;
    }
    let n = ENTROPY_SAMPLE as f64;
    let bits: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    if bits > RAW_ENTROPY_BITS {
        Looks::Random
    } else {
        Looks::Other
    }
}

fn raw_frame(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(crypto::CODEC_RAW);
    out.extend_from_slice(data);
    out
}

fn encode_frame(z: Option<&mut zstd::bulk::Compressor<'static>>, data: &[u8]) -> Vec<u8> {
    if let Some(z) = z {
        // Compressed straight behind the codec byte (a cursor past it: zstd writes at the
        // cursor), so the frame is not copied a second time.
        let mut out = Vec::with_capacity(1 + zstd::zstd_safe::compress_bound(data.len()));
        out.push(crypto::CODEC_ZSTD);
        let mut cursor = std::io::Cursor::new(out);
        cursor.set_position(1);
        let compressed = z.compress_to_buffer(data, &mut cursor);
        let out = cursor.into_inner();
        if let Ok(n) = compressed {
            // Incompressible data is stored raw: restoring it is then a copy, not a decode.
            if n + n / 32 < data.len() && out.len() == n + 1 {
                return out;
            }
        }
        return raw_frame(data);
    }
    crypto::encode_payload(data, DEFAULT_ZSTD_LEVEL)
}

struct PackBuf {
    id: PackId,
    hex: String,
    data: Vec<u8>,
    entries: Vec<Entry>,
}

impl PackBuf {
    fn new(cap: usize, pool: &Pool) -> Self {
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let mut data = pool.take().unwrap_or_default();
        data.clear();
        data.reserve(cap);
        Self {
            id,
            hex: format::pack_hex(&id),
            data,
            entries: Vec::new(),
        }
    }
}

fn packer_loop(
    rx: &Receiver<Frame>,
    shared: &Shared,
    pack_bytes: usize,
    handle: &tokio::runtime::Handle,
    abort: &AtomicBool,
) -> Result<PackerOut> {
    let sem = Arc::new(tokio::sync::Semaphore::new(MAX_UPLOADS_IN_FLIGHT));
    let cap = pack_bytes + format::MAX_FRAME_BYTES;
    // Packs uploading, the one being filled.
    let pool = Pool::new(MAX_UPLOADS_IN_FLIGHT + 1);
    let mut pack = PackBuf::new(cap, &pool);
    let mut uploads: Vec<tokio::task::JoinHandle<Result<()>>> = Vec::new();
    let mut pending: Vec<(PackId, Vec<Entry>)> = Vec::new();
    let mut pending_entries = 0usize;
    // When the first pack waiting for an index file was uploaded.
    let mut pending_since: Option<std::time::Instant> = None;
    let mut out = PackerOut::default();
    // Set by an upload that failed, so the loop stops feeding packs to a store that refuses
    // them (a full disk) instead of waiting for the next index flush to notice.
    let upload_failed = Arc::new(AtomicBool::new(false));

    let upload = |pack: PackBuf,
                  uploads: &mut Vec<tokio::task::JoinHandle<Result<()>>>,
                  pending: &mut Vec<(PackId, Vec<Entry>)>,
                  out: &mut PackerOut|
     -> Result<usize> {
        let mut data = pack.data;
        let header = format::encode_pack_header(&pack.entries);
        let sealed = shared
            .keys
            .seal(&crypto::object_aad("pack-header", &pack.hex), &header);
        data.extend_from_slice(&sealed);
        data.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        out.stored_bytes += data.len() as u64;
        let data = pool.bytes(data);
        let permit = handle
            .block_on(sem.clone().acquire_owned())
            .map_err(|_| Error::Invalid("upload semaphore closed".into()))?;
        let backend = shared.backend.clone();
        let path = format::pack_path(&pack.hex);
        let failed = upload_failed.clone();
        uploads.push(handle.spawn(async move {
            let r = backend.put_data(&path, data).await;
            drop(permit);
            if r.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            r
        }));
        let n = pack.entries.len();
        pending.push((pack.id, pack.entries));
        Ok(n)
    };

    let flush_index = |uploads: &mut Vec<tokio::task::JoinHandle<Result<()>>>,
                       pending: &mut Vec<(PackId, Vec<Entry>)>,
                       out: &mut PackerOut|
     -> Result<()> {
        // Wait for every upload; when some failed, still index the packs that were written,
        // so a rerun reuses them, then report the first failure.
        let mut failure = None;
        let mut written = Vec::with_capacity(pending.len());
        for (u, p) in uploads.drain(..).zip(pending.drain(..)) {
            match handle
                .block_on(u)
                .map_err(|e| Error::Invalid(format!("upload task failed: {e}")))
                .and_then(|r| r)
            {
                Ok(()) => written.push(p),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        *pending = written;
        let done = |failure: Option<Error>| failure.map_or(Ok(()), Err);
        if pending.is_empty() {
            return done(failure);
        }
        match handle.block_on(shared.lock.held()) {
            Ok(()) => {}
            // Its packs stay unindexed: prune removes them, or `repair index` takes them in.
            Err(e @ Error::LockLost { .. }) => {
                pending.clear();
                return Err(failure.unwrap_or(e));
            }
            // The store not answering about the lock proves nothing lost; the commit asks again.
            Err(e) => tracing::warn!(error = %e, "the backup's lock could not be looked at"),
        }
        let id = format::new_id();
        let sealed =
            format::seal_object(&shared.keys, "index", &id, &format::encode_index(pending));
        out.stored_bytes += sealed.len() as u64;
        let indexed = handle.block_on(
            shared
                .backend
                .put_data(&format::index_path(&id), Bytes::from(sealed)),
        );
        if let Err(e) = indexed {
            // The upload failure, when there is one, is the cause.
            pending.clear();
            return Err(failure.unwrap_or(e));
        }
        // Not merged into the shared index: that would grow with the backup. Reads of these
        // chunks through the same handle find them by reloading the index.
        pending.clear();
        done(failure)
    };

    loop {
        // Packs uploaded wait a minute at most for their index file, frames or not.
        let next = match pending_since {
            Some(since) => rx.recv_timeout(INDEX_FLUSH_AFTER.saturating_sub(since.elapsed())),
            None => rx
                .recv()
                .map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
        };
        let f = match next {
            Ok(f) => f,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                flush_index(&mut uploads, &mut pending, &mut out)?;
                pending_entries = 0;
                pending_since = None;
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if abort.load(Ordering::Relaxed) {
            return Err(Error::Aborted);
        }
        let off = pack.data.len();
        shared.keys.seal_into(
            &crypto::frame_aad(&pack.hex, off as u64),
            &f.data,
            &mut pack.data,
        );
        let flen = (pack.data.len() - off) as u32;
        for (id, inner, len) in f.entries {
            pack.entries.push(Entry {
                id,
                frame_off: off as u32,
                frame_len: flen,
                inner_off: inner,
                len,
            });
        }
        if pack.data.len() >= pack_bytes {
            let full = std::mem::replace(&mut pack, PackBuf::new(cap, &pool));
            let since = *pending_since.get_or_insert_with(std::time::Instant::now);
            pending_entries += upload(full, &mut uploads, &mut pending, &mut out)?;
            if pending_entries >= INDEX_FLUSH_ENTRIES
                || pending.len() >= INDEX_FLUSH_PACKS
                || since.elapsed() >= INDEX_FLUSH_AFTER
                || upload_failed.load(Ordering::Relaxed)
            {
                flush_index(&mut uploads, &mut pending, &mut out)?;
                pending_entries = 0;
                pending_since = None;
            }
        }
    }
    if abort.load(Ordering::Relaxed) {
        return Err(Error::Aborted);
    }
    if !pack.entries.is_empty() {
        upload(pack, &mut uploads, &mut pending, &mut out)?;
    }
    flush_index(&mut uploads, &mut pending, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` bytes of numbered dump lines: text, and no two 8 KiB chunks alike.
    fn text(n: usize) -> Vec<u8> {
        let mut out: Vec<u8> = (0..)
            .flat_map(|i| format!("INSERT INTO t VALUES ({i}, 'cairn');\n").into_bytes())
            .take(n)
            .collect();
        out.truncate(n);
        out
    }

    fn random(n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        rand::rng().fill_bytes(&mut out);
        out
    }

    fn config() -> PipelineConfig {
        PipelineConfig {
            chunking: Chunking::PAGES,
            level: DEFAULT_ZSTD_LEVEL,
            text_level: DEFAULT_TEXT_ZSTD_LEVEL,
            frame_bytes: DEFAULT_FRAME_BYTES,
            pack_bytes: DEFAULT_PACK_BYTES,
            threads: 1,
            progress: None,
            list_ids: Some(2),
            min_listed: None,
            lists_by_content: false,
            at_lines: false,
        }
    }

    #[test]
    fn lists_cut_by_content_change_only_around_an_inserted_chunk() {
        let keys = MasterKeys::generate();
        let cfg = PipelineConfig {
            list_ids: Some(16),
            lists_by_content: true,
            ..config()
        };
        let index = Index::default();
        let lists = |chunks: &[Vec<u8>]| {
            let mut st = ChunkState::new(&keys, &cfg, 1 << 16);
            for c in chunks {
                st.chunk(c, &index);
            }
            st.end_file(&index);
            st.out.files.remove(0).lists
        };
        let mut chunks: Vec<Vec<u8>> = (0u32..2000).map(|i| i.to_le_bytes().to_vec()).collect();
        let before = lists(&chunks);
        chunks.insert(1000, b"inserted".to_vec());
        let after = lists(&chunks);
        assert!(
            (2000 / 64..=2000 / 4).contains(&before.len()),
            "{}",
            before.len()
        );
        let kept = after.iter().filter(|id| before.contains(id)).count();
        assert!(
            kept + 3 >= before.len(),
            "{kept} of {} lists kept after one insertion",
            before.len()
        );
    }

    #[test]
    fn pools_hand_buffers_back_as_they_were_and_keep_a_bounded_number() {
        let pool = Pool::new(2);
        assert!(pool.take().is_none());
        let buf = vec![7u8; 100];
        let at = buf.as_ptr();
        let bytes = pool.bytes(buf);
        let slice = bytes.slice(10..20);
        drop(bytes);
        // Still referenced by a slice: not handed back yet.
        assert!(pool.take().is_none());
        assert_eq!(&slice[..], &[7u8; 10]);
        drop(slice);
        let back = pool
            .take()
            .expect("the buffer comes back once its last slice is dropped");
        assert_eq!((back.as_ptr(), back.len()), (at, 100));
        for n in 0..3 {
            pool.put(vec![n; 4]);
        }
        assert_eq!(pool.take(), Some(vec![1; 4]));
        assert_eq!(pool.take(), Some(vec![0; 4]));
        assert!(pool.take().is_none(), "only two are kept");
    }

    #[test]
    fn chunks_of_zeros_get_the_ids_their_hash_gives() {
        let keys = MasterKeys::generate();
        let cfg = PipelineConfig {
            list_ids: None,
            ..config()
        };
        let index = Index::default();
        let mut st = ChunkState::new(&keys, &cfg, 1 << 10);
        let (page, small) = (vec![0u8; 8192], vec![0u8; 100]);
        let mut almost = vec![0u8; 8192];
        almost[8191] = 1;
        let chunks = [&page, &page, &small, &page, &almost];
        for c in chunks {
            st.chunk(c, &index);
        }
        st.end_file(&index);
        let ids: Vec<ChunkId> = chunks.iter().map(|c| keys.chunk_id(c)).collect();
        assert_eq!(st.out.files[0].chunks, ids);
        assert_eq!(st.out.new_chunks, 3, "zeros stored once for each length");
    }

    #[test]
    fn a_trees_files_of_a_few_chunks_are_listed_and_their_lists_deduplicate() {
        let keys = MasterKeys::generate();
        let cfg = PipelineConfig {
            list_ids: Some(2048),
            min_listed: Some(4),
            ..config()
        };
        let index = Index::default();
        let mut st = ChunkState::new(&keys, &cfg, 1 << 10);
        let file = |st: &mut ChunkState<'_>, chunks: &[&[u8]]| {
            for c in chunks {
                st.chunk(c, &index);
            }
            st.end_file(&index);
        };
        file(&mut st, &[b"a", b"b", b"c"]);
        file(&mut st, &[b"a", b"b", b"c", b"d"]);
        file(&mut st, &[b"a", b"b", b"c", b"d"]);
        let [short, listed, again] = &st.out.files[..] else {
            panic!("three files");
        };
        assert_eq!(
            (short.chunks.len(), short.lists.len()),
            (3, 0),
            "too few to list"
        );
        assert_eq!((listed.chunks.len(), listed.lists.len()), (0, 1));
        assert_eq!(
            again.lists, listed.lists,
            "the same ids, the same list chunk"
        );
        assert_eq!(st.out.new_chunks, 4 + 1, "four chunks and one list");
    }

    #[test]
    fn long_files_spill_their_chunk_lists_and_dedup_remembers_two_windows() {
        let keys = MasterKeys::generate();
        let cfg = config();
        let index = Index::default();
        let mut st = ChunkState::new(&keys, &cfg, 4);
        // Five chunks: lists of 2, 2 and 1 ids, no ids left in the node itself.
        for c in [b"a", b"b", b"c", b"d", b"e"] {
            st.chunk(c, &index);
        }
        st.end_file(&index);
        let file = &st.out.files[0];
        assert!(file.chunks.is_empty());
        assert_eq!(file.lists.len(), 3);
        let first: Vec<u8> = [b"a", b"b"]
            .iter()
            .flat_map(|c| keys.chunk_id(*c).0)
            .collect();
        assert_eq!(file.lists[0], keys.chunk_id(&first));
        assert_eq!(st.out.chunks, 5);
        assert_eq!(st.out.new_chunks, 8, "five chunks and three lists");
        // A short file keeps its ids; `e` is still remembered (the window before).
        st.chunk(b"e", &index);
        st.end_file(&index);
        assert_eq!(st.out.files[1].chunks, vec![keys.chunk_id(b"e")]);
        assert_eq!(st.out.new_chunks, 8);
        // Two windows later `e` is forgotten and stored again; the sets never pass the window.
        for c in [b"f", b"g", b"h", b"i", b"j", b"k", b"l", b"m"] {
            st.chunk(c, &index);
            assert!(st.new.len() < 4 && st.older.len() <= 4);
        }
        st.chunk(b"e", &index);
        assert_eq!(
            st.out.new_chunks,
            8 + 8 + 4 + 1,
            "eight chunks, their four lists, e"
        );
    }

    #[test]
    fn text_frames_grow_to_four_times_the_frame_size_and_lists_keep_apart() {
        let keys = MasterKeys::generate();
        let (cfg, index) = (config(), Index::default());
        let mut st = ChunkState::new(&keys, &cfg, 1 << 16);
        for c in text(1 << 20)
            .chunks(8192)
            .chain(random(1 << 20).chunks(8192))
        {
            st.chunk(c, &index);
        }
        st.flush();
        // A list chunk of two ids after every two chunks, all in the last frame.
        let (lists, data) = st.ready.split_last().expect("frames are ready");
        assert_eq!((lists.entries.len(), lists.data.len()), (128, 128 * 64));
        let sizes: Vec<usize> = data.iter().map(|f| f.data.len()).collect();
        let (frame, text_frame) = (DEFAULT_FRAME_BYTES, DEFAULT_FRAME_BYTES * TEXT_FRAME_FACTOR);
        assert_eq!(sizes[..2], [text_frame, text_frame], "{sizes:?}");
        assert!(sizes[2..].iter().all(|&n| n == frame), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 2 << 20);
        let looks: Vec<Option<Looks>> = data.iter().map(|f| f.looks).collect();
        assert_eq!(
            looks[..3],
            [Some(Looks::Text), Some(Looks::Text), Some(Looks::Random)]
        );
    }

    #[test]
    fn frames_are_sampled_as_text_random_or_other() {
        let (text, noise) = (text(128 << 10), random(128 << 10));
        // Pages: a binary header and tuples of small integers, then free space.
        let pages: Vec<u8> = (0..128 << 10)
            .map(|i: usize| match i % 8192 {
                0..24 => (i / 8192) as u8,
                24..6000 => (i % 7) as u8,
                _ => 0,
            })
            .collect();
        assert_eq!(looks(&text), Looks::Text);
        assert_eq!(looks(&noise), Looks::Random);
        assert_eq!(looks(&pages), Looks::Other);
        assert_eq!(looks(&text[..8192]), Looks::Other, "too short to sample");
    }

    /// A backup writes an index file every 16 packs, not only every 50,000 chunks: one killed
    /// outright leaves all but its last packs reusable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_index_file_follows_every_sixteen_packs() {
        let backend = Backend::connect(
            &crate::backend::Location::new("memory://index-every-16-packs"),
            false,
        )
        .expect("a store");
        let lock = crate::lock::LockGuard::acquire(&backend, false, "test")
            .await
            .expect("a lock");
        let shared = Shared {
            backend: backend.clone(),
            keys: Arc::new(MasterKeys::generate()),
            index: Arc::default(),
            lock: lock.check(),
        };
        // Packs of one 128 KiB frame each: about 40 of them for 5 MiB that does not compress.
        let cfg = PipelineConfig {
            pack_bytes: 64 << 10,
            ..config()
        };
        let pipeline = Pipeline::start(shared, cfg).expect("a pipeline");
        let tx = pipeline.sender().expect("open");
        tx.send(Input::Data(random(5 << 20))).await.expect("sent");
        tx.send(Input::EndFile).await.expect("sent");
        drop(tx);
        pipeline.finish().await.expect("finished");
        let packs = backend.list_ids("data/").await.expect("packs").len();
        let indexes = backend.list_ids("index/").await.expect("index").len();
        assert!((33..=48).contains(&packs), "{packs} packs");
        assert_eq!(indexes, 3, "after packs 16 and 32, and at the end");
    }

    #[test]
    fn frames_decode_to_what_was_encoded() {
        let mut z = zstd::bulk::Compressor::new(DEFAULT_ZSTD_LEVEL).ok();
        let (text, noise) = (text(128 << 10), random(128 << 10));
        for (data, codec) in [(&text, crypto::CODEC_ZSTD), (&noise, crypto::CODEC_RAW)] {
            for z in [z.as_mut(), None] {
                let framed = encode_frame(z, data);
                assert_eq!(framed[0], codec);
                let back = crypto::decode_payload(&framed, format::MAX_FRAME_BYTES);
                assert_eq!(back.as_deref(), Some(&data[..]));
            }
        }
    }
}
