//! The on-disk format: object names, the config, index and pack encodings, and snapshots.
//! `FORMAT.md` beside `Cargo.toml` is the reference; keep the two in step.

use crate::crypto::{self, ChunkId, MasterKeys};
use crate::error::{Error, Result};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Write;

/// The format version this build writes and the newest it reads. Versions 1 (no list
/// chunks) and 2 (a tree's nodes in its content object) are read and, in repositories
/// created as such, written.
pub const FORMAT_VERSION: u32 = 3;
/// The first version with list chunks ([`LIST_IDS`]).
pub(crate) const LIST_CHUNKS_VERSION: u32 = 2;
/// The first version that keeps a tree's nodes in chunks of their own (node chunks) rather
/// than in its content object.
pub(crate) const NODE_CHUNKS_VERSION: u32 = 3;
/// The first version whose writers end list chunks where an id says so (from a quarter to
/// four times their usual count) rather than after a fixed count, so that a chunk inserted
/// early in a long stream changes the list chunk around it, not every one after it. Readers
/// of every version read lists of any length.
pub(crate) const LISTS_BY_CONTENT_VERSION: u32 = 3;
/// Chunk ids per list chunk (64 KiB; on average since version 3): a file or stream with more
/// chunks than this has its chunk list written as chunks of ids while it is backed up, so
/// neither the backup's memory nor the content object grows with its size.
pub(crate) const LIST_IDS: usize = 2048;
/// Chunk ids per list chunk of a tree's node chunks, on average (8 KiB): a change among the
/// nodes stores again one list chunk of about this size with the node chunks around it (a
/// tree of 200,000 files has about 5,000 node chunks; in lists of [`LIST_IDS`], a new file
/// would cost the next snapshot 64 KiB of ids that do not compress).
pub(crate) const NODE_LIST_IDS: usize = 256;
/// A tree's file with fewer chunks than [`LIST_IDS`] but at least this many has its ids
/// written as one list chunk all the same: the content object then holds one id for it, and
/// as the list chunk deduplicates, a file unchanged since the last snapshot costs the next
/// one a single id instead of all of its own (every snapshot of the reference dataset's
/// tree stored 1.4 MB of content, and stores 29 KB once they are listed).
pub(crate) const MIN_LISTED_IDS: usize = 4;
/// The `format` field of the config, so foreign JSON is not mistaken for a repository.
pub(crate) const FORMAT_NAME: &str = "cairn-repository";
/// Upper bound of a frame's decoded size, checked before decompressing so a damaged or
/// hostile frame cannot make a reader allocate without bound (4 MiB).
pub(crate) const MAX_FRAME_BYTES: usize = 4 << 20;
/// Upper bound of a decoded metadata object (index, snapshot content): 1 GiB.
pub(crate) const MAX_OBJECT_BYTES: usize = 1 << 30;
/// Bytes of one index entry.
const INDEX_ENTRY_LEN: usize = 32 + 4 * 5;
/// Bytes of one pack-header entry.
const HEADER_ENTRY_LEN: usize = 32 + 4 * 4;

/// A random object id (128 bits, hex).
pub(crate) fn new_id() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

pub(crate) fn is_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(crate) const CONFIG: &str = "config";
pub(crate) fn pack_path(id: &str) -> String {
    format!("data/{}/{id}", &id[..2])
}
pub(crate) fn index_path(id: &str) -> String {
    format!("index/{id}")
}
pub(crate) fn snapshot_path(id: &str) -> String {
    format!("snapshots/{id}")
}
pub(crate) fn content_path(id: &str) -> String {
    format!("content/{id}")
}
/// A repair marker: written before a repair drops chunks from the index (FORMAT.md, "Repair
/// markers").
pub(crate) fn repair_path(id: &str) -> String {
    format!("repairs/{id}")
}
pub(crate) fn key_path(id: &str) -> String {
    format!("keys/{id}")
}
pub(crate) fn lock_path(id: &str) -> String {
    format!("locks/{id}")
}

/// The plaintext `config` object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Config {
    pub(crate) format: String,
    pub(crate) version: u32,
    pub(crate) id: String,
    pub(crate) created: jiff::Timestamp,
    /// Seconds during which objects may not be deleted or overwritten.
    #[serde(default)]
    pub(crate) protection_secs: u64,
    /// Whether data objects carry S3 Object Lock retention (compliance mode) for the
    /// protection period, on top of the runtime's own refusal to delete them.
    #[serde(default)]
    pub(crate) object_lock: bool,
}

impl Config {
    pub(crate) fn parse(bytes: &[u8], url: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            Error::corrupt(
                "config",
                format!("not JSON ({e}); is {url} a cairn repository?"),
            )
        })?;
        if v.get("format").and_then(|f| f.as_str()) != Some(FORMAT_NAME) {
            return Err(Error::corrupt(
                "config",
                format!("{url} holds no cairn repository config"),
            ));
        }
        let found = v.get("version").and_then(|f| f.as_u64()).unwrap_or(0);
        if !(1..=u64::from(FORMAT_VERSION)).contains(&found) {
            return Err(Error::UnsupportedVersion {
                found: u32::try_from(found).unwrap_or(u32::MAX),
                supported: FORMAT_VERSION,
            });
        }
        serde_json::from_value(v).map_err(|e| Error::corrupt("config", e))
    }
}

/// A pack id: 16 random bytes, hex in object names.
pub(crate) type PackId = [u8; 16];

pub(crate) fn pack_hex(p: &PackId) -> String {
    hex::encode(p)
}

/// The pack id an object name spells, if it spells one.
pub(crate) fn pack_id(hex: &str) -> Option<PackId> {
    if !is_id(hex) {
        return None;
    }
    let mut id = PackId::default();
    hex::decode_to_slice(hex, &mut id).ok()?;
    Some(id)
}

/// One entry of an index file or a pack header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub(crate) id: ChunkId,
    pub(crate) frame_off: u32,
    pub(crate) frame_len: u32,
    pub(crate) inner_off: u32,
    pub(crate) len: u32,
}

/// Encodes an index file's plaintext: `CIDX`, version, pack table, entries.
pub(crate) fn encode_index(packs: &[(PackId, Vec<Entry>)]) -> Vec<u8> {
    let n: usize = packs.iter().map(|p| p.1.len()).sum();
    let mut out = Vec::with_capacity(16 + packs.len() * 16 + n * INDEX_ENTRY_LEN);
    out.extend_from_slice(b"CIDX");
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for (p, _) in packs {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for (i, (_, entries)) in packs.iter().enumerate() {
        for e in entries {
            out.extend_from_slice(&e.id.0);
            for v in [i as u32, e.frame_off, e.frame_len, e.inner_off, e.len] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    out
}

struct Reader<'a>(&'a [u8]);
impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn id(&mut self) -> Option<ChunkId> {
        let b = self.take(32)?;
        let mut a = [0u8; 32];
        a.copy_from_slice(b);
        Some(ChunkId(a))
    }
}

pub(crate) fn decode_index(buf: &[u8]) -> Option<Vec<(PackId, Vec<Entry>)>> {
    let mut r = Reader(buf);
    if r.take(4)? != b"CIDX" || r.u32()? != 1 {
        return None;
    }
    let np = r.u32()? as usize;
    let mut packs = Vec::with_capacity(np.min(1 << 20));
    for _ in 0..np {
        let mut p = [0u8; 16];
        p.copy_from_slice(r.take(16)?);
        packs.push((p, Vec::new()));
    }
    let n = r.u32()? as usize;
    for _ in 0..n {
        let id = r.id()?;
        let (pi, frame_off, frame_len, inner_off, len) =
            (r.u32()?, r.u32()?, r.u32()?, r.u32()?, r.u32()?);
        packs.get_mut(pi as usize)?.1.push(Entry {
            id,
            frame_off,
            frame_len,
            inner_off,
            len,
        });
    }
    Some(packs)
}

/// Encodes a list chunk: the chunk ids, concatenated.
pub(crate) fn encode_list(ids: &[ChunkId]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.0).collect()
}

/// Decodes a list chunk; `None` unless it is a whole number of ids.
pub(crate) fn decode_list(buf: &[u8]) -> Option<Vec<ChunkId>> {
    if !buf.len().is_multiple_of(32) {
        return None;
    }
    let mut r = Reader(buf);
    (0..buf.len() / 32).map(|_| r.id()).collect()
}

/// Encodes a pack header (the pack's own list of chunks, so a lost index can be rebuilt and
/// `check` can compare the two).
pub(crate) fn encode_pack_header(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + entries.len() * HEADER_ENTRY_LEN);
    out.extend_from_slice(b"CPAK");
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.id.0);
        for v in [e.frame_off, e.frame_len, e.inner_off, e.len] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

pub(crate) fn decode_pack_header(buf: &[u8]) -> Option<Vec<Entry>> {
    let mut r = Reader(buf);
    if r.take(4)? != b"CPAK" {
        return None;
    }
    let n = r.u32()? as usize;
    let mut v = Vec::with_capacity(n.min(1 << 20));
    for _ in 0..n {
        let id = r.id()?;
        v.push(Entry {
            id,
            frame_off: r.u32()?,
            frame_len: r.u32()?,
            inner_off: r.u32()?,
            len: r.u32()?,
        });
    }
    Some(v)
}

/// Seals a metadata object: zstd (level 3: these are small and read often) then AES-GCM bound
/// to `kind/id`.
pub(crate) fn seal_object(keys: &MasterKeys, kind: &str, id: &str, plain: &[u8]) -> Vec<u8> {
    let payload = crypto::encode_payload(plain, 3);
    keys.seal(&crypto::object_aad(kind, id), &payload)
}

/// Seals `value` as JSON like [`seal_object`], without holding the JSON text: it is measured
/// first, then compressed as it is written (the zstd frame records its size, as bulk
/// compression does), then encrypted in place. A 10 GiB stream's chunk list is 21 MB of hex;
/// this keeps only its compressed form.
pub(crate) fn seal_json(
    keys: &MasterKeys,
    kind: &str,
    id: &str,
    value: &impl Serialize,
) -> Result<Vec<u8>> {
    let invalid = |e: &dyn fmt::Display| Error::Invalid(format!("cannot encode {kind} {id}: {e}"));
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, value).map_err(|e| invalid(&e))?;
    if counter.0 < 1 << 20 {
        let plain = serde_json::to_vec(value).map_err(|e| invalid(&e))?;
        return Ok(seal_object(keys, kind, id, &plain));
    }
    let mut out = Vec::with_capacity(crypto::NONCE_LEN + 1 + counter.0 as usize / 2);
    out.resize(crypto::NONCE_LEN, 0);
    out.push(crypto::CODEC_ZSTD);
    let mut z = zstd::stream::Encoder::new(out, 3).map_err(|e| invalid(&e))?;
    z.include_contentsize(true).map_err(|e| invalid(&e))?;
    z.set_pledged_src_size(Some(counter.0))
        .map_err(|e| invalid(&e))?;
    serde_json::to_writer(&mut z, value).map_err(|e| invalid(&e))?;
    let mut out = z.finish().map_err(|e| invalid(&e))?;
    keys.seal_in_place(&crypto::object_aad(kind, id), &mut out);
    Ok(out)
}

/// Counts bytes written.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) fn open_object(
    keys: &MasterKeys,
    kind: &str,
    id: &str,
    path: &str,
    sealed: &[u8],
) -> Result<Vec<u8>> {
    let payload = keys
        .open(&crypto::object_aad(kind, id), sealed)
        .ok_or_else(|| {
            Error::corrupt(
                path,
                "fails authentication (damaged, truncated or not from this repository)",
            )
        })?;
    crypto::decode_payload(&payload, MAX_OBJECT_BYTES)
        .ok_or_else(|| Error::corrupt(path, "cannot be decompressed"))
}

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
#[non_exhaustive]
pub enum SnapshotKind {
    /// A directory tree.
    Tree {
        /// The directory backed up, as given.
        path: String,
    },
    /// A byte stream (a dump, a command's stdout).
    Stream {
        /// The stream's name.
        name: String,
    },
}

/// Counters of a backup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BackupSummary {
    /// Files in a tree snapshot (1 for a stream).
    pub files: u64,
    /// Directories in a tree snapshot.
    pub dirs: u64,
    /// Bytes in the snapshot: those read, and those of the files taken unchanged from the
    /// parent snapshot.
    pub bytes: u64,
    /// Chunks cut from what was read.
    pub chunks: u64,
    /// Chunks that were new to the repository.
    pub new_chunks: u64,
    /// Bytes of new chunks before compression.
    pub new_bytes: u64,
    /// Bytes added to the repository (packs, index and snapshot objects).
    pub stored_bytes: u64,
    /// Files of a tree taken from the parent snapshot without being read: their size, times
    /// and inode had not changed.
    #[serde(default)]
    pub unchanged_files: u64,
    /// Files and directories of a tree this process could not read (permissions, a path too
    /// long, a loop), left out of the snapshot.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unreadable: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A snapshot's metadata, as listed and as stored in `snapshots/<id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SnapshotInfo {
    /// The snapshot id (32 hex characters; unique prefixes are accepted where an id is asked).
    pub id: String,
    /// When the backup started.
    pub time: jiff::Timestamp,
    /// The host that made it.
    pub hostname: String,
    /// Tags given at backup.
    pub tags: Vec<String>,
    /// A tree or a stream.
    pub kind: SnapshotKind,
    /// Counters.
    pub summary: BackupSummary,
    /// The content object (tree or chunk list).
    pub(crate) content: String,
    /// For a copy (`cairn repo copy`), the id of the snapshot first copied: the same for a
    /// copy of a copy, so copying again finds what is already there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<String>,
    /// The repair markers there were when a tree backup began (FORMAT.md, "Repair markers"):
    /// a later backup takes files of several chunks from this snapshot only when it saw every
    /// marker there is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) repairs: Vec<String>,
}

impl SnapshotInfo {
    /// A snapshot made on `host` (this machine's name when `None`), to commit.
    pub(crate) fn made(
        kind: SnapshotKind,
        time: jiff::Timestamp,
        host: Option<String>,
        tags: Vec<String>,
        summary: BackupSummary,
    ) -> Self {
        Self {
            id: new_id(),
            time,
            hostname: host.unwrap_or_else(crate::lock::hostname),
            tags,
            kind,
            summary,
            content: String::new(),
            original: None,
            repairs: Vec::new(),
        }
    }
    /// The first 8 characters of the id, as shown in listings.
    pub fn short_id(&self) -> &str {
        &self.id[..8.min(self.id.len())]
    }
    /// The id of the snapshot this one is, or is a copy of.
    pub fn original_id(&self) -> &str {
        self.original.as_deref().unwrap_or(&self.id)
    }
    /// The path or stream name, for grouping and filtering.
    pub fn source(&self) -> &str {
        match &self.kind {
            SnapshotKind::Tree { path } => path,
            SnapshotKind::Stream { name } => name,
        }
    }
}

/// A node of a tree snapshot. A backup and a restore hold one for every file of a tree, so the
/// fields most nodes leave empty are kept apart, boxed ([`Rare`]): 152 bytes a node instead
/// of 264. On the wire it is [`NodeForm`].
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// Path relative to the snapshot root, `/`-separated.
    pub(crate) path: String,
    pub(crate) kind: NodeKind,
    pub(crate) mode: u32,
    pub(crate) mtime_ns: i64,
    /// The owner's user and group ids (Unix; absent in snapshots of older builds).
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    pub(crate) size: u64,
    /// A file's change time and inode (Unix), which with its size and `mtime_ns` tell the
    /// next backup whether it changed.
    pub(crate) ctime_ns: Option<i64>,
    pub(crate) inode: Option<u64>,
    /// Concatenated chunk ids, hex.
    pub(crate) chunks: ChunkList,
    /// Version 2: when not empty, the ids of the list chunks that hold `chunks` (which is
    /// then not written, and is filled in when the content is read).
    pub(crate) lists: ChunkList,
    /// What few nodes have; `None` when the node has none of it.
    pub(crate) rare: Option<Box<Rare>>,
}

/// The fields of a [`Node`] that most nodes leave empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Rare {
    /// The raw path bytes, hex, when the path is not UTF-8 (Unix).
    pub(crate) path_raw: Option<String>,
    /// A symlink's target.
    pub(crate) target: Option<String>,
    /// Its bytes, hex, when they are not UTF-8 (`target` then has U+FFFD in their place).
    pub(crate) target_raw: Option<String>,
    /// A file that is a hard link of an earlier file node: that node's `path`. The node
    /// still lists its chunks, so a reader that does not know this field restores a copy.
    pub(crate) link: Option<String>,
    /// In place of `link` when that node's name is not UTF-8: its `path_raw`.
    pub(crate) link_raw: Option<String>,
    /// Extended attributes (Linux): name → value, hex.
    pub(crate) xattrs: crate::xattrs::Xattrs,
    /// A device's number (`st_rdev`).
    pub(crate) rdev: Option<u64>,
}

/// No extended attributes, for nodes without [`Rare`] fields.
static NO_XATTRS: crate::xattrs::Xattrs = crate::xattrs::Xattrs::new();

impl Node {
    pub(crate) fn path_raw(&self) -> Option<&str> {
        self.rare.as_ref()?.path_raw.as_deref()
    }
    pub(crate) fn target(&self) -> Option<&str> {
        self.rare.as_ref()?.target.as_deref()
    }
    pub(crate) fn target_raw(&self) -> Option<&str> {
        self.rare.as_ref()?.target_raw.as_deref()
    }
    pub(crate) fn rdev(&self) -> Option<u64> {
        self.rare.as_ref()?.rdev
    }
    pub(crate) fn link(&self) -> Option<&str> {
        self.rare.as_ref()?.link.as_deref()
    }
    pub(crate) fn link_raw(&self) -> Option<&str> {
        self.rare.as_ref()?.link_raw.as_deref()
    }
    /// No longer a hard link of another node: a file of its own, with its own chunks.
    pub(crate) fn unlink(&mut self) {
        if let Some(r) = self.rare.as_mut() {
            (r.link, r.link_raw) = (None, None);
        }
    }
    pub(crate) fn xattrs(&self) -> &crate::xattrs::Xattrs {
        self.rare.as_ref().map_or(&NO_XATTRS, |r| &r.xattrs)
    }
    /// The node's rare fields, to set them.
    pub(crate) fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_default()
    }
}

/// A [`Node`] on the wire: owned when read, borrowed from the node when written, so both
/// directions share one definition of the format's fields, names and defaults.
#[derive(Serialize, Deserialize)]
#[serde(bound(
    serialize = "S: Serialize, X: Serialize + Empty, C: Serialize + Empty",
    deserialize = "S: Deserialize<'de>, X: Deserialize<'de> + Default, C: Deserialize<'de> + Default"
))]
struct NodeForm<S, X, C> {
    path: S,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path_raw: Option<S>,
    #[serde(rename = "type")]
    kind: NodeKind,
    mode: u32,
    mtime_ns: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gid: Option<u32>,
    #[serde(default)]
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<S>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target_raw: Option<S>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ctime_ns: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inode: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link: Option<S>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link_raw: Option<S>,
    #[serde(default, skip_serializing_if = "Empty::is_empty")]
    xattrs: X,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rdev: Option<u64>,
    #[serde(default, skip_serializing_if = "Empty::is_empty")]
    chunks: C,
    #[serde(default, skip_serializing_if = "Empty::is_empty")]
    lists: C,
}

/// Fields the wire form leaves out when empty.
trait Empty {
    fn is_empty(&self) -> bool;
}

impl Empty for crate::xattrs::Xattrs {
    fn is_empty(&self) -> bool {
        crate::xattrs::Xattrs::is_empty(self)
    }
}

impl Empty for ChunkList {
    fn is_empty(&self) -> bool {
        ChunkList::is_empty(self)
    }
}

impl<T: Empty> Empty for &T {
    fn is_empty(&self) -> bool {
        T::is_empty(self)
    }
}

impl Serialize for Node {
    fn serialize<Ser: serde::Serializer>(
        &self,
        s: Ser,
    ) -> std::result::Result<Ser::Ok, Ser::Error> {
        let rare = self.rare.as_deref();
        let text = |field: fn(&Rare) -> &Option<String>| rare.and_then(|r| field(r).as_deref());
        NodeForm {
            path: self.path.as_str(),
            path_raw: text(|r| &r.path_raw),
            kind: self.kind,
            mode: self.mode,
            mtime_ns: self.mtime_ns,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            target: text(|r| &r.target),
            target_raw: text(|r| &r.target_raw),
            ctime_ns: self.ctime_ns,
            inode: self.inode,
            link: text(|r| &r.link),
            link_raw: text(|r| &r.link_raw),
            xattrs: self.xattrs(),
            rdev: self.rdev(),
            chunks: &self.chunks,
            lists: &self.lists,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let f = NodeForm::<String, crate::xattrs::Xattrs, ChunkList>::deserialize(d)?;
        let rare = Rare {
            path_raw: f.path_raw,
            target: f.target,
            target_raw: f.target_raw,
            link: f.link,
            link_raw: f.link_raw,
            xattrs: f.xattrs,
            rdev: f.rdev,
        };
        Ok(Node {
            path: f.path,
            kind: f.kind,
            mode: f.mode,
            mtime_ns: f.mtime_ns,
            uid: f.uid,
            gid: f.gid,
            size: f.size,
            ctime_ns: f.ctime_ns,
            inode: f.inode,
            chunks: f.chunks,
            lists: f.lists,
            rare: (rare != Rare::default()).then(|| Box::new(rare)),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum NodeKind {
    File,
    Dir,
    Symlink,
    /// A named pipe (since 2026-12-06, as the three below).
    Fifo,
    /// A character device, with its device number (`rdev`).
    #[serde(rename = "chardev")]
    CharDevice,
    /// A block device, with its device number (`rdev`).
    #[serde(rename = "blockdev")]
    BlockDevice,
}

impl NodeKind {
    /// `file`, `dir`, `symlink`, `fifo`, `chardev` or `blockdev`, as listings print it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            NodeKind::File => "file",
            NodeKind::Dir => "dir",
            NodeKind::Symlink => "symlink",
            NodeKind::Fifo => "fifo",
            NodeKind::CharDevice => "chardev",
            NodeKind::BlockDevice => "blockdev",
        }
    }

    /// A FIFO or a device: made with `mknod`, holding no data.
    pub(crate) fn is_special(self) -> bool {
        matches!(
            self,
            NodeKind::Fifo | NodeKind::CharDevice | NodeKind::BlockDevice
        )
    }
}

/// The content object of a snapshot.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub(crate) enum Content {
    Tree {
        nodes: Vec<Node>,
        /// The backed-up directory itself (its mode, owner and time), which a restore gives
        /// the target directory it creates. Absent in snapshots of older builds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        root: Option<Box<Node>>,
        /// Version 3: the chunks that hold the nodes, one JSON object per line (`nodes` is
        /// then written empty and filled in when the content is read), or the list chunks
        /// that hold those ids.
        #[serde(default, skip_serializing_if = "ChunkList::is_empty")]
        node_chunks: ChunkList,
        #[serde(default, skip_serializing_if = "ChunkList::is_empty")]
        node_lists: ChunkList,
    },
    Stream {
        size: u64,
        /// Always written (version 1 readers require it); empty when `lists` holds the ids.
        #[serde(default)]
        chunks: ChunkList,
        /// As a node's `lists`.
        #[serde(default, skip_serializing_if = "ChunkList::is_empty")]
        lists: ChunkList,
    },
}

impl<'de> Deserialize<'de> for Content {
    /// Read as one struct of every variant's fields, then checked: serde reads an internally
    /// tagged enum by buffering the whole object as generic values before it looks at the
    /// tag, which for a tree of 200,000 files took over 200 MB.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        #[derive(Deserialize)]
        struct Fields {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            nodes: Option<Vec<Node>>,
            #[serde(default)]
            root: Option<Box<Node>>,
            #[serde(default)]
            size: Option<u64>,
            #[serde(default)]
            chunks: ChunkList,
            #[serde(default)]
            lists: ChunkList,
            #[serde(default)]
            node_chunks: ChunkList,
            #[serde(default)]
            node_lists: ChunkList,
        }
        let f = Fields::deserialize(d)?;
        match f.kind.as_str() {
            "tree" => Ok(Content::Tree {
                nodes: f.nodes.ok_or_else(|| D::Error::missing_field("nodes"))?,
                root: f.root,
                node_chunks: f.node_chunks,
                node_lists: f.node_lists,
            }),
            "stream" => Ok(Content::Stream {
                size: f.size.ok_or_else(|| D::Error::missing_field("size"))?,
                chunks: f.chunks,
                lists: f.lists,
            }),
            other => Err(D::Error::unknown_variant(other, &["tree", "stream"])),
        }
    }
}

/// Appends node `n` to a tree's node stream (version 3): its JSON object and a newline.
pub(crate) fn write_node_line(buf: &mut Vec<u8>, n: &Node) -> Result<()> {
    serde_json::to_writer(&mut *buf, n).map_err(|e| Error::Invalid(e.to_string()))?;
    buf.push(b'\n');
    Ok(())
}

/// Splits a tree's node stream, fed in pieces as its chunks are read, into its lines (one
/// node each; JSON escapes the newlines within a value).
#[derive(Debug, Default)]
pub(crate) struct NodeLines {
    /// The start of a line that the pieces so far did not end.
    carry: Vec<u8>,
}

impl NodeLines {
    /// Hands each line that `piece` ends to `each`, without its newline.
    pub(crate) fn feed(
        &mut self,
        mut piece: &[u8],
        mut each: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        while let Some(end) = piece.iter().position(|&b| b == b'\n') {
            if self.carry.is_empty() {
                each(&piece[..end])?;
            } else {
                self.carry.extend_from_slice(&piece[..end]);
                each(&self.carry)?;
                self.carry.clear();
            }
            piece = &piece[end + 1..];
        }
        self.carry.extend_from_slice(piece);
        Ok(())
    }

    /// Whether the stream so far ends with a whole line, as a whole node stream does.
    pub(crate) fn ended(&self) -> bool {
        self.carry.is_empty()
    }
}

/// A file's or a stream's chunk ids, in order; stored as one string of concatenated hex ids,
/// written and read without building that string in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ChunkList(pub(crate) Vec<ChunkId>);

impl ChunkList {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ChunkList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 64];
        for id in &self.0 {
            // Cannot fail: the buffer is exactly twice the id's length.
            if hex::encode_to_slice(id.0, &mut buf).is_ok() {
                f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)?;
            }
        }
        Ok(())
    }
}

impl Serialize for ChunkList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ChunkList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Hex;
        impl serde::de::Visitor<'_> for Hex {
            type Value = ChunkList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string of concatenated 64-digit hex chunk ids")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<ChunkList, E> {
                if !s.len().is_multiple_of(64) {
                    return Err(E::custom("chunk list has a bad length"));
                }
                let mut out = Vec::with_capacity(s.len() / 64);
                let mut buf = [0u8; 32];
                // By bytes: a slice of the string could end within a character.
                for id in s.as_bytes().chunks_exact(64) {
                    hex::decode_to_slice(id, &mut buf)
                        .map_err(|_| E::custom("chunk list is not hex"))?;
                    out.push(ChunkId(buf));
                }
                Ok(ChunkList(out))
            }
        }
        d.deserialize_str(Hex)
    }
}

impl Content {
    /// Every chunk the snapshot references: a tree's node chunks (and their list chunks),
    /// then for each file or stream its list chunks and its data chunks in order (those are
    /// known once [`Content::chunk_lists`] were read).
    pub(crate) fn chunk_ids(&self) -> Vec<ChunkId> {
        match self {
            Content::Stream { chunks, lists, .. } => {
                lists.0.iter().chain(&chunks.0).copied().collect()
            }
            Content::Tree {
                nodes,
                node_chunks,
                node_lists,
                ..
            } => node_lists
                .0
                .iter()
                .chain(&node_chunks.0)
                .chain(
                    nodes
                        .iter()
                        .flat_map(|n| n.lists.0.iter().chain(&n.chunks.0)),
                )
                .copied()
                .collect(),
        }
    }

    /// A tree's nodes, and the node chunks and their list chunks that hold them (version 3);
    /// None for a stream.
    pub(crate) fn tree_parts(
        &mut self,
    ) -> Option<(&mut Vec<Node>, &mut ChunkList, &mut ChunkList)> {
        match self {
            Content::Tree {
                nodes,
                node_chunks,
                node_lists,
                ..
            } => Some((nodes, node_chunks, node_lists)),
            Content::Stream { .. } => None,
        }
    }

    /// A tree with `nodes` (in the content object, as versions 1 and 2 keep them).
    pub(crate) fn tree(nodes: Vec<Node>, root: Option<Box<Node>>) -> Self {
        Content::Tree {
            nodes,
            root,
            node_chunks: ChunkList::default(),
            node_lists: ChunkList::default(),
        }
    }

    /// Sets the chunks, lists and sizes of the files a backup pipeline cut (a tree's file
    /// nodes in order, or the stream) and returns the backup's counters. The tree's files at
    /// the places `unchanged` lists (sorted) were taken from the parent snapshot, not read:
    /// they keep their chunks, and the pipeline's files fill the others.
    pub(crate) fn fill(
        &mut self,
        cut: crate::pipeline::ChunkerOut,
        stored_bytes: u64,
        unchanged: &[usize],
    ) -> BackupSummary {
        let mut summary = BackupSummary {
            chunks: cut.chunks,
            new_chunks: cut.new_chunks,
            new_bytes: cut.new_bytes,
            bytes: cut.bytes,
            stored_bytes,
            ..Default::default()
        };
        let mut files = cut.files.into_iter();
        let mut next = |size: &mut u64, chunks: &mut ChunkList, lists: &mut ChunkList| {
            let file = files.next().unwrap_or_default();
            *size = file.size;
            *chunks = ChunkList(file.chunks);
            *lists = ChunkList(file.lists);
            summary.files += 1;
        };
        match self {
            Content::Stream {
                size,
                chunks,
                lists,
            } => next(size, chunks, lists),
            Content::Tree { nodes, .. } => {
                let mut dirs = 0;
                let (mut file, mut kept) = (0, 0);
                for n in nodes {
                    match n.kind {
                        NodeKind::File => {
                            if unchanged.binary_search(&file).is_ok() {
                                kept += n.size;
                            } else {
                                next(&mut n.size, &mut n.chunks, &mut n.lists);
                            }
                            file += 1;
                        }
                        NodeKind::Dir => dirs += 1,
                        _ => {}
                    }
                }
                summary.dirs = dirs;
                summary.unchanged_files = unchanged.len() as u64;
                summary.files += summary.unchanged_files;
                summary.bytes += kept;
            }
        }
        summary
    }

    /// Each file's (or the stream's) list chunk ids and the chunk list they hold.
    pub(crate) fn chunk_lists(&mut self) -> Vec<(&[ChunkId], &mut Vec<ChunkId>)> {
        match self {
            Content::Stream { chunks, lists, .. } => vec![(&lists.0[..], &mut chunks.0)],
            Content::Tree { nodes, .. } => nodes
                .iter_mut()
                .filter(|n| !n.lists.is_empty())
                .map(|n| (&n.lists.0[..], &mut n.chunks.0))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire form is the one nodes had before their rare fields were boxed: same names,
    /// same order, the same fields left out; and it reads back whole.
    #[test]
    fn nodes_keep_their_wire_form_and_their_rare_fields_only_when_they_have_some() {
        let plain = r#"{"path":"a/b","type":"file","mode":420,"mtime_ns":5,"uid":1,"gid":2,"size":3,"ctime_ns":6,"inode":7}"#;
        let rare = r#"{"path":"cx","path_raw":"63ff","type":"symlink","mode":511,"mtime_ns":5,"size":0,"target":"a/�","target_raw":"612fff","link":"x","link_raw":"ff","xattrs":{"user.k":"76"}}"#;
        for (text, has_rare) in [(plain, false), (rare, true)] {
            let n: Node = serde_json::from_str(text).expect("node");
            assert_eq!(n.rare.is_some(), has_rare, "{text}");
            assert_eq!(serde_json::to_string(&n).expect("json"), text);
        }
        let n: Node = serde_json::from_str(rare).expect("node");
        assert_eq!(
            (n.path_raw(), n.target(), n.link(), n.link_raw()),
            (Some("63ff"), Some("a/\u{fffd}"), Some("x"), Some("ff"))
        );
        assert_eq!(n.target_raw(), Some("612fff"));
        assert_eq!(n.xattrs().get("user.k").map(String::as_str), Some("76"));
        assert!(size_of::<Node>() <= 152, "{} bytes", size_of::<Node>());
    }

    fn ids(n: u32) -> ChunkList {
        ChunkList(
            (0..n)
                .map(|i| ChunkId(*blake3::hash(&i.to_le_bytes()).as_bytes()))
                .collect(),
        )
    }

    #[test]
    fn node_lines_are_whole_however_the_stream_is_cut() {
        let stream = b"{\"a\":1}\n{\"b\":\"x\\ny\"}\n{}\n";
        for cut in [1, 2, 5, 7, 100] {
            let (mut lines, mut got) = (NodeLines::default(), Vec::new());
            for piece in stream.chunks(cut) {
                lines
                    .feed(piece, |l| {
                        got.push(String::from_utf8_lossy(l).into_owned());
                        Ok(())
                    })
                    .expect("fed");
            }
            assert!(lines.ended());
            assert_eq!(got, ["{\"a\":1}", "{\"b\":\"x\\ny\"}", "{}"], "cut {cut}");
        }
        let mut lines = NodeLines::default();
        lines.feed(b"{}\n{", |_| Ok(())).expect("fed");
        assert!(!lines.ended(), "a stream cut within a node is not whole");
    }

    #[test]
    fn a_large_content_seals_streamed_and_opens_as_before() {
        let keys = MasterKeys::generate();
        // 40,000 ids: 2.5 MB of JSON, over the streamed threshold.
        let content = Content::Stream {
            size: 7,
            chunks: ids(40_000),
            lists: ChunkList::default(),
        };
        let sealed = seal_json(&keys, "content", "c1", &content).expect("sealed");
        let plain = open_object(&keys, "content", "c1", "content/c1", &sealed).expect("opens");
        assert_eq!(plain, serde_json::to_vec(&content).expect("json"));
        let back: Content = serde_json::from_slice(&plain).expect("decodes");
        assert_eq!(back.chunk_ids(), content.chunk_ids());
        assert!(open_object(&keys, "content", "c2", "content/c2", &sealed).is_err());
    }

    #[test]
    fn a_stream_always_writes_its_chunks_field_for_version_1_readers() {
        let empty = Content::Stream {
            size: 0,
            chunks: ChunkList::default(),
            lists: ChunkList::default(),
        };
        let json = serde_json::to_string(&empty).expect("json");
        assert_eq!(json, r#"{"type":"stream","size":0,"chunks":""}"#);
        let listed: Content = serde_json::from_str(&format!(
            r#"{{"type":"stream","size":9,"lists":"{}"}}"#,
            "ab".repeat(32)
        ))
        .expect("lists alone decode");
        assert_eq!(listed.chunk_ids().len(), 1);
    }

    #[test]
    fn contents_decode_by_their_type_and_refuse_what_they_lack() {
        let tree: Content = serde_json::from_str(
            r#"{"nodes":[{"path":"a","type":"file","mode":420,"mtime_ns":0,"size":1}],
                "type":"tree","future":1}"#,
        )
        .expect("a tree, its type last, a field unknown");
        let Content::Tree { nodes, root, .. } = tree else {
            panic!("not a tree");
        };
        assert_eq!((nodes.len(), root.is_none()), (1, true));
        for (json, want) in [
            (r#"{"type":"tree"}"#, "missing field `nodes`"),
            (r#"{"type":"stream","chunks":""}"#, "missing field `size`"),
            (r#"{"type":"graph","nodes":[]}"#, "unknown variant `graph`"),
            (r#"{"nodes":[]}"#, "missing field `type`"),
        ] {
            let e = serde_json::from_str::<Content>(json).expect_err(json);
            assert!(e.to_string().contains(want), "{json}: {e}");
        }
    }

    #[test]
    fn list_chunks_decode_to_their_ids_and_refuse_a_partial_one() {
        let l = ids(3);
        let bytes = encode_list(&l.0);
        assert_eq!(bytes.len(), 96);
        assert_eq!(decode_list(&bytes), Some(l.0));
        assert_eq!(decode_list(&bytes[..95]), None);
        assert_eq!(decode_list(&[]), Some(Vec::new()));
    }

    #[test]
    fn a_chunk_list_of_bad_hex_or_length_is_refused() {
        // The last: 128 bytes with a two-byte character across the first id's end.
        let split = format!("\"{}é{}\"", "a".repeat(63), "a".repeat(63));
        for bad in [r#""abc""#, &format!("\"{}\"", "zz".repeat(32)), &split] {
            let e = serde_json::from_str::<ChunkList>(bad).expect_err("refused");
            assert!(e.to_string().contains("chunk list"), "{e}");
        }
        let small = ids(3);
        let json = serde_json::to_string(&small).expect("json");
        assert_eq!(json.len(), 2 + 3 * 64);
        assert_eq!(
            serde_json::from_str::<ChunkList>(&json).expect("back"),
            small
        );
    }
}
