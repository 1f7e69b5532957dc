//! Directory trees: walk and back up, restore into a directory.

use crate::chunker::Chunking;
use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use crate::format::{self, ChunkList, Content, Node, NodeKind, SnapshotInfo, SnapshotKind};
use crate::mark::{NodeLine, SeenNodeChunks, parse_node};
use crate::pipeline::{INPUT_BLOCK, Input, Pool};
use crate::repo::{
    BackupOptions, Parent, Repository, RestoreOptions, RestoreSummary, SnapshotFilter,
};
use crate::xattrs;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Decoded read units queued in front of each file writer thread.
const WRITER_QUEUE: usize = 2;
/// Threads a restore writes files with. Creating a file (its inode, its directory entry) and
/// giving it its owner, mode and time cost more than writing a small file's data: one thread
/// restoring 200,000 files of about 3 KiB spent 9 s of 10 in the kernel while the other core
/// waited.
const WRITERS: usize = 2;
/// Most files, and most bytes, a writer takes in turn before the other takes the next files:
/// files of one directory, so that the two seldom create files in one directory at once
/// (which waits on the directory's lock).
const WRITER_RUN: (usize, u64) = (128, 8 << 20);

fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    let Ok(t) = m.modified() else {
        return 0;
    };
    // Nanoseconds either side of 1970, as far as 64 bits reach (1677 to 2262).
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

#[cfg(unix)]
fn mode_of(m: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o7777
}
/// A file's change time (ns) and inode, which tell with its size and modification time
/// whether it changed since the parent snapshot (Unix).
#[cfg(unix)]
fn change_of(m: &std::fs::Metadata) -> (Option<i64>, Option<u64>) {
    use std::os::unix::fs::MetadataExt;
    let ns = i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec());
    (Some(i64::try_from(ns).unwrap_or(i64::MAX)), Some(m.ino()))
}
#[cfg(not(unix))]
fn change_of(_: &std::fs::Metadata) -> (Option<i64>, Option<u64>) {
    (None, None)
}
#[cfg(unix)]
fn owner_of(m: &std::fs::Metadata) -> (Option<u32>, Option<u32>) {
    use std::os::unix::fs::MetadataExt;
    (Some(m.uid()), Some(m.gid()))
}
#[cfg(not(unix))]
fn owner_of(_: &std::fs::Metadata) -> (Option<u32>, Option<u32>) {
    (None, None)
}
#[cfg(not(unix))]
fn mode_of(m: &std::fs::Metadata) -> u32 {
    if m.is_dir() {
        0o755
    } else if m.permissions().readonly() {
        0o444
    } else {
        0o644
    }
}

fn rel_name(rel: &Path) -> (String, Option<String>) {
    let s = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/");
    (s, raw_hex(rel))
}

/// A path's bytes, hex, when it is not UTF-8 (where its text has U+FFFD in their place).
fn raw_hex(p: &Path) -> Option<String> {
    p.to_str()
        .is_none()
        .then(|| hex::encode(p.as_os_str().as_encoded_bytes()))
}

/// A pattern of [`BackupOptions::exclude`] (and of [`Repository::find`]), split into path
/// components.
struct Pattern {
    parts: Vec<Vec<char>>,
    /// Matched against the whole path from the root, not only the name.
    anchored: bool,
}

impl Pattern {
    fn parse(pattern: &str) -> Result<Self> {
        let anchored = pattern.trim_end_matches('/').contains('/');
        let mut parts: Vec<Vec<char>> = pattern
            .split('/')
            .filter(|p| !p.is_empty())
            .map(|p| p.chars().collect())
            .collect();
        // `**/**` is `**`; kept apart, each would try every depth of the other.
        parts.dedup_by(|a, b| a.as_slice() == ['*', '*'] && b.as_slice() == ['*', '*']);
        if parts.is_empty() {
            return Err(Error::Invalid(format!(
                "pattern {pattern:?} matches nothing; give a name or a path, e.g. \
                 `*.tmp` or `pg_wal/**`"
            )));
        }
        Ok(Self { parts, anchored })
    }

    /// Whether the entry at `path` (components from the root) matches: is left out, or found.
    fn matches(&self, path: &[&str]) -> bool {
        if self.anchored {
            parts_match(&self.parts, path)
        } else {
            path.last()
                .is_some_and(|name| parts_match(&self.parts, &[name]))
        }
    }
}

/// Whether pattern components `p` match path components `t`; `**` matches any number, and
/// at the end at least one (`pg_wal/**` leaves out what the directory holds, not the
/// directory itself).
fn parts_match(p: &[Vec<char>], t: &[&str]) -> bool {
    match p.split_first() {
        None => t.is_empty(),
        Some((first, rest)) if first.as_slice() == ['*', '*'] => {
            let least = usize::from(rest.is_empty());
            (least..=t.len()).any(|k| parts_match(rest, &t[k..]))
        }
        Some((first, rest)) => t
            .split_first()
            .is_some_and(|(name, more)| wildcard(first, name, true) && parts_match(rest, more)),
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters (and nothing
/// else is special): what a policy's workload patterns are.
pub fn star_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    wildcard(&p, name, false)
}

/// Whether `name` matches `p`, where `*` is any run of characters and, with `any_one`, `?`
/// any one. Greedy with one backtrack point (the last `*`): linear in the name for each of the
/// pattern's characters, however many `*` it has.
fn wildcard(p: &[char], name: &str, any_one: bool) -> bool {
    let t: Vec<char> = name.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // The last `*` seen and where in `t` its match ends so far, to backtrack to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && ((any_one && p[pi] == '?') || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((s, m)) = star {
            star = Some((s, m + 1));
            pi = s + 1;
            ti = m + 1;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Whether `e` says that what was listed is gone: a live directory's files come and go while
/// it is backed up (a database's temporary files, recycled WAL segments), and one removed
/// between being listed and being read is left out of the snapshot, with a warning, as it
/// would have been had it been removed a moment sooner.
fn vanished(e: &std::io::Error, path: &Path) -> bool {
    let gone = e.kind() == std::io::ErrorKind::NotFound;
    if gone {
        tracing::warn!(path = %path.display(), "removed while being backed up; left out");
    }
    gone
}

/// Whether `e` says that this process cannot read what was listed, and only that: no
/// permission (a backup not run as root), a path longer than the system takes, a symlink
/// loop, a read error of the disk under that file, a file of `/proc` or a device that refuses
/// reads. It is left out, with a warning, and counted in `unreadable`: one such file does not
/// fail a tree's backup (the backup says how many were left out, and exits 1; restic and borg
/// save their snapshots likewise). What says the process or the system is short of
/// something (open files, memory) fails the backup: every file after would be left out too.
fn unreadable(e: &std::io::Error, path: &Path, left_out: &LeftOut) -> bool {
    use rustix::io::Errno;
    let systemic = [Errno::MFILE, Errno::NFILE, Errno::NOMEM, Errno::NOBUFS]
        .iter()
        .any(|c| e.raw_os_error() == Some(c.raw_os_error()));
    let cannot = e.kind() == std::io::ErrorKind::PermissionDenied
        || (e.raw_os_error().is_some() && !systemic);
    if cannot {
        tracing::warn!(path = %path.display(), error = %e, "cannot be read; left out");
        left_out.add(path, e);
    }
    cannot
}

/// How many names of what a backup left out [`LeftOut`] keeps; past them it only counts.
pub const LEFT_OUT_NAMED: usize = 1000;

/// What a tree's backup left out because this process could not read it (see
/// [`BackupOptions::left_out`](crate::BackupOptions::left_out)): how many files and
/// directories, and the first [`LEFT_OUT_NAMED`] of them with why. One per backup: given to
/// another, it names both's.
#[derive(Debug, Default)]
pub struct LeftOut {
    count: AtomicU64,
    named: std::sync::Mutex<Vec<Unreadable>>,
}

/// A file or directory a backup could not read.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Unreadable {
    /// Its path (U+FFFD in place of bytes that are not UTF-8).
    pub path: String,
    /// The path's bytes, hex, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_raw: Option<String>,
    /// Why it could not be read.
    pub error: String,
}

impl LeftOut {
    fn add(&self, path: &Path, e: &std::io::Error) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut named) = self.named.lock()
            && named.len() < LEFT_OUT_NAMED
        {
            named.push(Unreadable {
                path: path.to_string_lossy().into_owned(),
                path_raw: raw_hex(path),
                error: e.to_string(),
            });
        }
    }

    /// How many files and directories were left out.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The first [`LEFT_OUT_NAMED`] left out, each path with why it could not be read.
    pub fn named(&self) -> Vec<Unreadable> {
        self.named.lock().map(|n| n.clone()).unwrap_or_default()
    }
}

/// Walks `root` depth-first, sorted by name, not following symlinks, leaving out what
/// `exclude` matches and what is removed meanwhile. The entries of a directory are looked at
/// (their `stat` and extended attributes, the walk's cost) on every core, 64 or more to a
/// task, and stated relative to the open directory rather than by their whole path.
/// With `device`, directories of other filesystems (mount points under `root`) are kept,
/// empty, and not walked. With `only`, of `root`'s own entries only the one of that name is.
fn walk(
    root: &Path,
    only: Option<&std::ffi::OsStr>,
    exclude: &[Pattern],
    device: Option<u64>,
    skipped: &LeftOut,
) -> Result<Vec<Node>> {
    use rayon::prelude::*;
    let mut out = Vec::new();
    // The first name seen of each file with more than one (device, inode → path).
    let mut linked = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        // The one name asked for is looked at alone: its directory may be one this process
        // may enter but not list (mode 711).
        if let (Some(name), true) = (only, rel.as_os_str().is_empty()) {
            let path = dir.join(name);
            let meta = std::fs::symlink_metadata(&path);
            let walked = walk_entry(path, name, meta, &rel, exclude, device, skipped)?;
            out.extend(walked.map(|w| w.node));
            continue;
        }
        let listed = std::fs::read_dir(&dir).and_then(|d| d.collect::<std::io::Result<Vec<_>>>());
        let mut entries = match listed {
            Ok(entries) => entries,
            // A subdirectory removed since it was listed, or that cannot be read, is kept,
            // empty.
            Err(e) if !rel.as_os_str().is_empty() && vanished(&e, &dir) => continue,
            Err(e) if !rel.as_os_str().is_empty() && unreadable(&e, &dir, skipped) => continue,
            Err(e) => return Err(Error::io("read directory", &dir, e)),
        };
        entries.sort_by_key(|e| e.file_name());
        let walked: Vec<Option<Walked>> = entries
            .par_iter()
            .with_min_len(64)
            // `fstatat` on the open directory: no lookup of the whole path.
            .map(|e| {
                walk_entry(
                    e.path(),
                    &e.file_name(),
                    e.metadata(),
                    &rel,
                    exclude,
                    device,
                    skipped,
                )
            })
            .collect::<Result<_>>()?;
        let mut subdirs = Vec::new();
        for Walked {
            mut node,
            subdir,
            links,
        } in walked.into_iter().flatten()
        {
            subdirs.extend(subdir);
            if let Some(file) = links {
                match linked.entry(file) {
                    std::collections::hash_map::Entry::Occupied(first) => {
                        // A name that is not UTF-8 by its bytes alone: a reader that does not
                        // know `link_raw` then restores a copy rather than link a lossy name.
                        let (path, raw): &(String, Option<String>) = first.get();
                        match raw {
                            Some(raw) => node.rare_mut().link_raw = Some(raw.clone()),
                            None => node.rare_mut().link = Some(path.clone()),
                        }
                    }
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert((node.path.clone(), node.path_raw().map(str::to_owned)));
                    }
                }
            }
            out.push(node);
        }
        // Depth-first in name order: push in reverse so the first directory is walked first.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(out)
}

/// What the walk keeps of a directory entry: its node, its path relative to the root when it
/// is a directory to walk, and its device and inode when it is a file with other links.
struct Walked {
    node: Node,
    subdir: Option<PathBuf>,
    links: Option<(u64, u64)>,
}

/// The walk's look at the entry `name` of the directory `rel`, at `path`, whose own metadata
/// (links not followed) is `meta`; `None` when `exclude` leaves it out, it is a socket, or it
/// was removed meanwhile.
fn walk_entry(
    path: PathBuf,
    name: &std::ffi::OsStr,
    meta: std::io::Result<std::fs::Metadata>,
    rel: &Path,
    exclude: &[Pattern],
    device: Option<u64>,
    skipped: &LeftOut,
) -> Result<Option<Walked>> {
    let m = match meta {
        Ok(m) => m,
        Err(e) if vanished(&e, &path) || unreadable(&e, &path, skipped) => return Ok(None),
        Err(e) => return Err(Error::io("stat", &path, e)),
    };
    let r = rel.join(name);
    let (name, raw) = rel_name(&r);
    if !exclude.is_empty() {
        let parts: Vec<&str> = name.split('/').collect();
        if exclude.iter().any(|x| x.matches(&parts)) {
            return Ok(None);
        }
    }
    let ft = m.file_type();
    let (kind, target, size) = if ft.is_dir() {
        (NodeKind::Dir, None, 0)
    } else if ft.is_symlink() {
        let t = match std::fs::read_link(&path) {
            Ok(t) => t,
            Err(e) if vanished(&e, &path) || unreadable(&e, &path, skipped) => return Ok(None),
            Err(e) => return Err(Error::io("read link", &path, e)),
        };
        (NodeKind::Symlink, Some(t), 0)
    } else if ft.is_file() {
        (NodeKind::File, None, m.len())
    } else if let Some(kind) = special_kind(&ft) {
        (kind, None, 0)
    } else {
        // A socket is made by the program that listens on it, as restic and borg leave it.
        tracing::warn!(path = %path.display(), "a socket: left out");
        return Ok(None);
    };
    let xattrs = match xattrs::read(&path) {
        Ok(x) => x,
        Err(e) if vanished(&e, &path) || unreadable(&e, &path, skipped) => return Ok(None),
        Err(e) => return Err(Error::io("read the extended attributes of", &path, e)),
    };
    let mut node = dir_node(name, &m);
    (node.kind, node.size) = (kind, size);
    if node.mtime_ns == i64::MAX || node.mtime_ns == i64::MIN {
        tracing::warn!(
            path = %path.display(),
            "a modification time outside 1677-2262 is recorded as the nearest time those \
             years hold"
        );
    }
    if matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice) {
        node.rare_mut().rdev = device_number(&m);
    }
    if raw.is_some() || target.is_some() || !xattrs.is_empty() {
        let rare = node.rare_mut();
        (rare.path_raw, rare.xattrs) = (raw, xattrs);
        if let Some(t) = target {
            rare.target = Some(t.to_string_lossy().into_owned());
            rare.target_raw = raw_hex(&t);
        }
    }
    if kind == NodeKind::File {
        (node.ctime_ns, node.inode) = change_of(&m);
    }
    let links = other_links(&node, &m);
    let crossing = kind == NodeKind::Dir && device.is_some_and(|d| Some(d) != device_of(&m));
    if crossing {
        tracing::info!(path = %path.display(), "another filesystem: kept empty, not crossed");
    }
    Ok(Some(Walked {
        subdir: (kind == NodeKind::Dir && !crossing).then_some(r),
        node,
        links,
    }))
}

/// A FIFO's or a device's kind (Unix); `None` for anything else.
fn special_kind(ft: &std::fs::FileType) -> Option<NodeKind> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return Some(NodeKind::Fifo);
        } else if ft.is_char_device() {
            return Some(NodeKind::CharDevice);
        } else if ft.is_block_device() {
            return Some(NodeKind::BlockDevice);
        }
    }
    let _ = ft;
    None
}

/// The device number of the device `m` describes (Unix).
fn device_number(m: &std::fs::Metadata) -> Option<u64> {
    #[cfg(unix)]
    return Some(std::os::unix::fs::MetadataExt::rdev(m));
    #[cfg(not(unix))]
    None
}

/// Makes the FIFO or device `node` describes at `p` (what is there removed first, a symlink
/// never followed). A device needs root (`CAP_MKNOD`): refused that, it is left out, with one
/// warning for them all.
#[cfg(target_os = "linux")]
fn make_special(p: &Path, node: &Node, refused: &AtomicBool) -> Result<bool> {
    use rustix::fs::{CWD, FileType, Mode, mknodat};
    let kind = match node.kind {
        NodeKind::Fifo => FileType::Fifo,
        NodeKind::CharDevice => FileType::CharacterDevice,
        NodeKind::BlockDevice => FileType::BlockDevice,
        _ => return Ok(false),
    };
    if kind != FileType::Fifo && refused.load(Ordering::Relaxed) {
        return Ok(false);
    }
    let make = |p: &Path| {
        mknodat(
            CWD,
            p,
            kind,
            Mode::from_bits_truncate(0o600),
            node.rdev().unwrap_or(0),
        )
        .map_err(std::io::Error::from)
    };
    match replace_with(p, make) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && kind != FileType::Fifo => {
            if !refused.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    path = %p.display(),
                    "device nodes are left out: making them needs root (CAP_MKNOD)"
                );
            }
            Ok(false)
        }
        Err(e) => Err(Error::io("make", p, e)),
    }
}

#[cfg(not(target_os = "linux"))]
fn make_special(p: &Path, node: &Node, _: &AtomicBool) -> Result<bool> {
    tracing::warn!(path = %p.display(), kind = node.kind.name(), "not restored on this platform");
    Ok(false)
}

/// The device `m` is on (Unix).
fn device_of(m: &std::fs::Metadata) -> Option<u64> {
    #[cfg(unix)]
    return Some(std::os::unix::fs::MetadataExt::dev(m));
    #[cfg(not(unix))]
    None
}

/// The device and inode of the file `node` describes when it has other links that may name
/// it earlier (Unix).
#[cfg(unix)]
fn other_links(node: &Node, m: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    (node.kind == NodeKind::File && m.nlink() >= 2).then(|| (m.dev(), m.ino()))
}
#[cfg(not(unix))]
fn other_links(_: &Node, _: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

/// Most bytes of a hole one message to the pipeline stands for (16 MiB), so the pipeline
/// holds the index lock no longer for a hole than for a block of data.
const HOLE_PIECE: u64 = 16 << 20;

/// Reads every file into the pipeline, block by block; with `per_file`, each is cut as
/// [`Chunking::for_file`] picks from its size and first block. A file's holes (a disk image's
/// unwritten blocks) are not read: the pipeline is told their length and cuts zeros, so they
/// give the chunks reading them would. Returns the positions in `files` of those removed
/// before they could be opened (each then ends empty in the pipeline, for [`drop_files`] to
/// leave out).
fn feed(
    files: &[(PathBuf, u64)],
    per_file: bool,
    tx: &tokio::sync::mpsc::Sender<Input>,
    blocks: &Pool,
    stop: Option<&tokio::sync::watch::Receiver<bool>>,
    skipped: &LeftOut,
) -> Result<Vec<usize>> {
    use std::io::Read;
    let mut out = Batcher::new(tx);
    let mut ahead = Ahead::new(files);
    let mut gone = Vec::new();
    for (i, (path, size)) in files.iter().enumerate() {
        let mut f = match ahead.next_file() {
            Ok(f) => f,
            Err(e) if vanished(&e, path) || unreadable(&e, path, skipped) => {
                gone.push(i);
                out.send(Input::EndFile)?;
                continue;
            }
            Err(e) => return Err(Error::io("open", path, e)),
        };
        // Read no further than its size when opened (or when walked, if larger): a file
        // something keeps appending to (a live log) would otherwise be read without end.
        let limit = f.metadata().map_or(*size, |m| m.len()).max(*size);
        // Read up to `pos`; holes are looked for again from `data_end`: where the data found
        // last ends, or a block on from where it started, so a file of many small holes is
        // read through them (as zeros) rather than asked about every few KiB. The first
        // block is read as it is, to pick the chunking from.
        let (mut pos, mut data_end) = (0u64, INPUT_BLOCK as u64);
        loop {
            if stop.is_some_and(|s| *s.borrow()) {
                return Err(Error::Interrupted);
            }
            if pos >= data_end {
                let r = match data_region(&f, pos) {
                    Ok(r) => r,
                    Err(e) if unreadable(&e, path, skipped) => {
                        gone.push(i);
                        break;
                    }
                    Err(e) => return Err(Error::io("read", path, e)),
                };
                // Never past its size when opened: a file that grew by a hole stops there.
                let start = r.start.min(limit);
                out.zeros(start - pos)?;
                (pos, data_end) = (start, r.end.max(start + INPUT_BLOCK as u64));
            }
            // A recycled block is read into as it is: only a shortened one's tail is zeroed.
            // It is read up to a byte past its size, to meet the end in the same read (a small
            // file zeroes no more than its size); that byte found, the file grew since it was
            // opened, and it is kept to that size.
            let mut block = blocks.take().unwrap_or_default();
            let left = limit - pos + 1;
            let want = (data_end - pos).min(INPUT_BLOCK as u64).min(left) as usize;
            block.resize(want, 0);
            let (mut filled, mut eof, mut failed) = (0, false, false);
            while filled < want {
                match f.read(&mut block[filled..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // Part of it may be in the pipeline already: it ends there, and is then
                    // left out of the snapshot (its chunks are unreferenced, for prune).
                    Err(e) if unreadable(&e, path, skipped) => {
                        failed = true;
                        break;
                    }
                    Err(e) => return Err(Error::io("read", path, e)),
                }
            }
            if failed {
                blocks.put(block);
                gone.push(i);
                break;
            }
            let grew = pos + filled as u64 > limit;
            block.truncate(filled.min((limit - pos) as usize));
            if pos == 0 && per_file {
                out.send(Input::Chunking(Chunking::for_file(*size, &block)))?;
            }
            pos += block.len() as u64;
            if !block.is_empty() {
                out.send(Input::Data(block))?;
            }
            if grew {
                tracing::warn!(
                    path = %path.display(),
                    listed = size,
                    read = pos,
                    "grew while being backed up: the snapshot holds what it had when it was \
                     opened, and the next backup reads it again"
                );
                break;
            }
            if eof {
                if pos != *size {
                    tracing::warn!(
                        path = %path.display(),
                        listed = size,
                        read = pos,
                        "changed size while being backed up: the snapshot holds what was read, \
                         and the next backup reads it again"
                    );
                }
                break;
            }
        }
        out.send(Input::EndFile)?;
    }
    out.flush()?;
    Ok(gone)
}

/// Most files opened ahead of the one being read.
const AHEAD_FILES: usize = 64;
/// Most bytes asked for ahead of the file being read.
const AHEAD_BYTES: u64 = 16 << 20;
/// Most bytes of one file asked for ahead: its first block (the kernel's own read-ahead
/// takes a larger file on from there).
const AHEAD_FILE_BYTES: u64 = INPUT_BLOCK as u64;

/// The files of a backup opened in order, some ahead of the one being read, each of those
/// asked into the page cache (`POSIX_FADV_WILLNEED`, which starts the reads and does not wait
/// for them). A tree of small files that is not in memory (the usual case for a backup: the
/// files were last read long ago) is otherwise read one disk round trip at a time.
struct Ahead<'a> {
    files: &'a [(PathBuf, u64)],
    /// The next file to open.
    next: usize,
    /// Files opened, in order, with the bytes asked for.
    open: std::collections::VecDeque<(std::io::Result<std::fs::File>, u64)>,
    bytes: u64,
}

impl<'a> Ahead<'a> {
    fn new(files: &'a [(PathBuf, u64)]) -> Self {
        Self {
            files,
            next: 0,
            open: Default::default(),
            bytes: 0,
        }
    }

    /// The next file, opened (or why it could not be).
    fn next_file(&mut self) -> std::io::Result<std::fs::File> {
        while let Some((path, size)) = self.files.get(self.next)
            && (self.open.is_empty() || (self.open.len() < AHEAD_FILES && self.bytes < AHEAD_BYTES))
        {
            let f = std::fs::File::open(path);
            let want = (*size).min(AHEAD_FILE_BYTES);
            #[cfg(target_os = "linux")]
            if let (Ok(f), Some(len)) = (&f, std::num::NonZeroU64::new(want)) {
                // Advice only: a filesystem that ignores it is read as before.
                let _ = rustix::fs::fadvise(f, 0, Some(len), rustix::fs::Advice::WillNeed);
            }
            self.open.push_back((f, want));
            self.bytes += want;
            self.next += 1;
        }
        let (f, want) = self
            .open
            .pop_front()
            .ok_or_else(|| std::io::Error::other("no file left to open"))?;
        self.bytes -= want;
        f
    }
}

/// Inputs gathered until they hold a block's worth of bytes (or [`BATCH_INPUTS`] inputs),
/// then sent as one: a tree of small files would otherwise wake the chunker, a futex call
/// and a context switch, two or three times a file (200,000 files of 1 KB: 1.1 million
/// futex calls).
struct Batcher<'a> {
    tx: &'a tokio::sync::mpsc::Sender<Input>,
    inputs: Vec<Input>,
    bytes: u64,
}

/// Most inputs in one batch.
const BATCH_INPUTS: usize = 1024;

impl<'a> Batcher<'a> {
    fn new(tx: &'a tokio::sync::mpsc::Sender<Input>) -> Self {
        Self {
            tx,
            inputs: Vec::new(),
            bytes: 0,
        }
    }

    fn send(&mut self, input: Input) -> Result<()> {
        self.bytes += match &input {
            Input::Data(d) => d.len() as u64,
            Input::Zeros(n) => *n,
            _ => 0,
        };
        self.inputs.push(input);
        if self.bytes >= INPUT_BLOCK as u64 || self.inputs.len() >= BATCH_INPUTS {
            self.flush()?;
        }
        Ok(())
    }

    /// The next `n` bytes are zeros, in pieces of at most [`HOLE_PIECE`].
    fn zeros(&mut self, mut n: u64) -> Result<()> {
        while n > 0 {
            let k = n.min(HOLE_PIECE);
            self.send(Input::Zeros(k))?;
            n -= k;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.bytes = 0;
        let mut inputs = std::mem::take(&mut self.inputs);
        let input = match inputs.len() {
            0 => return Ok(()),
            1 => inputs.swap_remove(0),
            _ => Input::Batch(inputs),
        };
        self.tx.blocking_send(input).map_err(|_| Error::Aborted)
    }
}

/// Where the data of `f` from `pos` on lies, `start..end`, leaving `f` at `start`: when only
/// a hole follows, `start` is the file's length. A filesystem that does not report holes has
/// data everywhere.
#[cfg(target_os = "linux")]
fn data_region(f: &std::fs::File, pos: u64) -> std::io::Result<std::ops::Range<u64>> {
    use rustix::fs::{SeekFrom, seek};
    let region = seek(f, SeekFrom::Data(pos)).and_then(|start| {
        let end = seek(f, SeekFrom::Hole(start))?;
        Ok(start..end)
    });
    let r = match region {
        Ok(r) => r,
        Err(rustix::io::Errno::NXIO) => f.metadata()?.len().max(pos)..u64::MAX,
        // EINVAL, EOPNOTSUPP: holes are not reported here.
        Err(_) => pos..u64::MAX,
    };
    seek(f, SeekFrom::Start(r.start))?;
    Ok(r)
}
#[cfg(not(target_os = "linux"))]
fn data_region(_: &std::fs::File, pos: u64) -> std::io::Result<std::ops::Range<u64>> {
    Ok(pos..u64::MAX)
}

/// Leaves out of `nodes` the files at positions `gone` (sorted) among its files.
fn drop_files(nodes: &mut Vec<Node>, gone: &[usize]) {
    let mut i = 0;
    nodes.retain(|n| {
        if n.kind != NodeKind::File {
            return true;
        }
        i += 1;
        gone.binary_search(&(i - 1)).is_err()
    });
}

/// The parent snapshot's files a backup may take unchanged, and when that snapshot's backup
/// started.
#[derive(Debug)]
struct ParentFiles {
    /// The parent snapshot's id.
    id: String,
    started_ns: i128,
    files: ParentIndex,
    /// The repair markers the parent's backup saw.
    repairs_seen: Vec<String>,
    /// A repair dropped chunks from the index since the parent was made (a marker it did not
    /// see): its files whose ids are in list chunks may name lost chunks, which only reading
    /// those lists would tell.
    repaired_since: bool,
}

impl ParentFiles {
    /// What the parent recorded of the file `now` describes, when that file did not change
    /// since and every chunk it names is `indexed` (its list chunks, for a file whose ids are
    /// in lists: not taken after a repair).
    fn same_file(&self, now: &Node, indexed: impl Fn(&ChunkId) -> bool) -> Option<&Recorded> {
        let key = path_hash(&parent_key(&now.path, now.path_raw()));
        self.files.under(key).find(|&before| {
            unchanged(before, now, self.started_ns)
                && !(self.repaired_since && before.lists)
                && self.files.ids_of(before).iter().all(&indexed)
        })
    }
}

/// What a backup compares of a parent snapshot's file, and the chunks it takes over when the
/// file did not change: read from the parent's content object, which holds more.
#[derive(Debug, Deserialize)]
struct ParentFile {
    #[serde(default)]
    path: String,
    #[serde(default)]
    path_raw: Option<String>,
    #[serde(rename = "type")]
    kind: NodeKind,
    #[serde(default)]
    size: u64,
    mtime_ns: i64,
    #[serde(default)]
    ctime_ns: Option<i64>,
    #[serde(default)]
    inode: Option<u64>,
    #[serde(default)]
    chunks: ChunkList,
    #[serde(default)]
    lists: ChunkList,
}

/// A parent's content object as [`ParentFiles`] reads it.
#[derive(Deserialize)]
struct ParentContent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    nodes: ParentIndex,
    #[serde(default)]
    node_chunks: ChunkList,
    #[serde(default)]
    node_lists: ChunkList,
}

/// A parent's file as [`ParentIndex`] keeps it: what tells whether it changed, and where its
/// chunk ids (or list chunk ids) are in [`ParentIndex::ids`].
#[derive(Debug)]
struct Recorded {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    inode: Option<u64>,
    ids: Range<u32>,
    lists: bool,
}

/// The files of a parent snapshot a later backup may take over, by a 64-bit hash of
/// [`parent_key`], in about 60 bytes a file with one chunk (a map by path held 230 at
/// 200,000 files). Two paths of the same hash are both kept and both compared: a file is
/// taken over only with the inode, size and times recorded, which two files in one tree share
/// only as hard links of one file.
#[derive(Debug, Default)]
struct ParentIndex {
    /// Sorted by hash once read.
    files: Vec<(u64, Recorded)>,
    ids: Vec<ChunkId>,
}

impl ParentIndex {
    /// Keeps `n` when it is a file a later backup may take over.
    fn keep(&mut self, n: ParentFile) {
        let Some(ctime_ns) = n
            .ctime_ns
            .filter(|_| n.kind == NodeKind::File && n.size > 0)
        else {
            return;
        };
        let (ids, lists) = if n.lists.is_empty() {
            (n.chunks.0, false)
        } else {
            (n.lists.0, true)
        };
        let (Ok(from), Ok(to)) = (
            u32::try_from(self.ids.len()),
            u32::try_from(self.ids.len() + ids.len()),
        ) else {
            // Four billion ids: the rest of the files are read again.
            return;
        };
        self.ids.extend(ids);
        let key = path_hash(&parent_key(&n.path, n.path_raw.as_deref()));
        let file = Recorded {
            size: n.size,
            mtime_ns: n.mtime_ns,
            ctime_ns,
            inode: n.inode,
            ids: from..to,
            lists,
        };
        self.files.push((key, file));
    }

    fn sorted(mut self) -> Self {
        self.files.sort_unstable_by_key(|&(key, _)| key);
        self
    }

    /// The files recorded under `key` (one, but for a hash shared by two paths).
    fn under(&self, key: u64) -> impl Iterator<Item = &Recorded> {
        let from = self.files.partition_point(|&(k, _)| k < key);
        self.files[from..]
            .iter()
            .take_while(move |&&(k, _)| k == key)
            .map(|(_, f)| f)
    }

    fn ids_of(&self, f: &Recorded) -> &[ChunkId] {
        &self.ids[f.ids.start as usize..f.ids.end as usize]
    }
}

/// A hash of a [`parent_key`], the same in every process.
fn path_hash(key: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(key)
}

impl<'de> Deserialize<'de> for ParentIndex {
    /// Keeps each node as it is read: the nodes of a tree of 200,000 files would otherwise be
    /// held whole first.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Nodes;
        impl<'de> serde::de::Visitor<'de> for Nodes {
            type Value = ParentIndex;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of nodes")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<ParentIndex, A::Error> {
                let mut files = ParentIndex::default();
                while let Some(n) = seq.next_element::<ParentFile>()? {
                    files.keep(n);
                }
                Ok(files)
            }
        }
        d.deserialize_seq(Nodes)
    }
}

/// A node's path as a key: its raw bytes (hex) after a NUL, which no name holds, when it is
/// not UTF-8.
fn parent_key<'a>(path: &'a str, path_raw: Option<&str>) -> std::borrow::Cow<'a, str> {
    match path_raw {
        Some(raw) => format!("\0{raw}").into(),
        None => path.into(),
    }
}

/// The name hard links give node `n`: its path, or its name's bytes when it is not UTF-8.
pub(crate) fn link_key(n: &Node) -> std::borrow::Cow<'_, str> {
    parent_key(&n.path, n.path_raw())
}

/// The [`link_key`] of the node `n` is a hard link of, if it is one.
pub(crate) fn linked_key(n: &Node) -> Option<std::borrow::Cow<'_, str>> {
    match (n.link_raw(), n.link()) {
        (Some(raw), _) => Some(parent_key("", Some(raw))),
        (None, Some(path)) => Some(path.into()),
        (None, None) => None,
    }
}

/// Margin under a parent backup's start within which a file's change time does not prove it
/// unchanged: a file written in the same clock tick as it was read, just after, keeps the
/// times it was read with (and filesystem clocks tick coarsely, NFS servers' drift).
const CHANGE_MARGIN_NS: i128 = 2_000_000_000;

/// Whether the file `now` describes is the one `before` recorded: same size, times and inode,
/// and last changed well before the parent backup, which started at `started_ns`, read it.
fn unchanged(before: &Recorded, now: &Node, started_ns: i128) -> bool {
    before.size == now.size
        && before.mtime_ns == now.mtime_ns
        && before.inode == now.inode
        && Some(before.ctime_ns) == now.ctime_ns
        && i128::from(before.ctime_ns) < started_ns - CHANGE_MARGIN_NS
}

impl TreeEntry {
    fn of(n: Node) -> Self {
        TreeEntry {
            kind: n.kind.name(),
            mode: n.mode,
            size: n.size,
            mtime: jiff::Timestamp::from_nanosecond(i128::from(n.mtime_ns))
                .map(|t| t.to_string())
                .unwrap_or_default(),
            uid: n.uid,
            gid: n.gid,
            path_raw: n.path_raw().map(str::to_owned),
            target_raw: n.target_raw().map(str::to_owned),
            rdev: n.rdev(),
            hard_link_of: n.link().map(str::to_owned),
            hard_link_of_raw: n.link_raw().map(str::to_owned),
            target: n.rare.and_then(|r| r.target),
            path: n.path,
        }
    }
}

/// A node's path relative to its tree's root as the file system names it: its raw bytes
/// when it has them (a name that is not UTF-8); `None` when those are not hex.
fn rel_path(node: &Node) -> Option<PathBuf> {
    rel_path_of(&node.path, node.path_raw())
}

/// [`rel_path`] of a node's `path` and `path_raw` fields.
fn rel_path_of(path: &str, raw: Option<&str>) -> Option<PathBuf> {
    #[cfg(unix)]
    if let Some(raw) = raw {
        use std::os::unix::ffi::OsStrExt;
        let b = hex::decode(raw).ok()?;
        return Some(PathBuf::from(std::ffi::OsStr::from_bytes(&b)));
    }
    #[cfg(not(unix))]
    let _ = raw;
    Some(PathBuf::from(path))
}

/// The shape a tree's nodes must have for a restore to make them safely, checked as they are
/// read (for a restore, `ls` and `check`): each a plain path below the root, listed once, and
/// below the root itself or a directory listed before it. A restore makes each node by its
/// path, and the system follows whatever that path's directories are; were a node of the
/// snapshot's own that is not a directory (a symlink to `/etc`, say) above another, the
/// restore would make, delete, chown and chmod through it, outside its target. Snapshots
/// Cairn writes always have this shape (a directory comes before what it holds); only a
/// damaged or forged one (written by anyone holding the repository's key) does not.
#[derive(Debug, Default)]
pub(crate) struct TreeShape {
    /// Every path met so far, as the file system names it, and whether it is a directory.
    seen: HashMap<PathBuf, bool>,
}

impl TreeShape {
    /// A node's path (`path_raw` when it has one) as [`TreeShape::add`] takes it, or why it
    /// is no path a restore may make: `a/./b` and `a//b` are `a/b`, as the system has them.
    pub(crate) fn key(path: &str, path_raw: Option<&str>) -> std::result::Result<PathBuf, String> {
        let rel = rel_path_of(path, path_raw)
            .ok_or_else(|| format!("node {path:?} has a raw path that is not hex"))?;
        if rel.as_os_str().is_empty()
            || !rel.components().all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(format!(
                "node {path:?} is not a plain path below the snapshot's root"
            ));
        }
        Ok(rel.components().collect())
    }

    /// Takes the next node in the listing, at `key` ([`TreeShape::key`]), a directory when
    /// `dir`; why it breaks the shape, naming its path, when it does.
    pub(crate) fn add(&mut self, key: &Path, dir: bool) -> std::result::Result<(), String> {
        let parent = key.parent().unwrap_or(Path::new(""));
        if !parent.as_os_str().is_empty() {
            match self.seen.get(parent) {
                Some(true) => {}
                Some(false) => {
                    return Err(format!(
                        "node {key:?} is below {parent:?}, which is not a directory: a restore \
                         would write through it"
                    ));
                }
                None => {
                    return Err(format!(
                        "node {key:?} is listed without the directory {parent:?} that holds it \
                         before it"
                    ));
                }
            }
        }
        if self.seen.insert(key.to_path_buf(), dir).is_some() {
            return Err(format!("node {key:?} is listed twice"));
        }
        Ok(())
    }

    /// [`TreeShape::key`] then [`TreeShape::add`] of `node`.
    pub(crate) fn add_node(&mut self, node: &Node) -> std::result::Result<(), String> {
        let key = Self::key(&node.path, node.path_raw())?;
        self.add(&key, node.kind == NodeKind::Dir)
    }
}

/// Checks that the `nodes` of tree snapshot `info` have the shape a restore needs
/// ([`TreeShape`]); damage to its content, naming the first node that breaks it, otherwise.
pub(crate) fn check_shape(nodes: &[Node], info: &SnapshotInfo) -> Result<()> {
    let mut shape = TreeShape::default();
    for n in nodes {
        shape.add_node(n).map_err(|why| shape_error(info, why))?;
    }
    Ok(())
}

/// The damage [`TreeShape`] found in snapshot `info`: its content object is named, and
/// `why` names the node.
pub(crate) fn shape_error(info: &SnapshotInfo, why: String) -> Error {
    let path = format::content_path(&info.content);
    let why = format!(
        "{why}; Cairn writes no such tree, so the snapshot is damaged or was forged by someone \
         holding the repository's key: nothing is restored from it, and `cairn repo forget {}` \
         removes it",
        info.id
    );
    crate::repo::with_snapshot(Error::corrupt(&path, why), &info.id)
}

/// Where a symlink points, as the file system names it: its raw bytes when it has them.
#[cfg(unix)]
fn link_target(target: &str, raw: Option<&str>) -> Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    match raw {
        Some(raw) => hex::decode(raw)
            .map(|b| PathBuf::from(std::ffi::OsStr::from_bytes(&b)))
            .map_err(|_| Error::corrupt("snapshot content", "bad raw symlink target")),
        None => Ok(PathBuf::from(target)),
    }
}

/// Resolves a snapshot path under `target`, refusing anything that would escape it.
fn safe_join(target: &Path, node: &Node) -> Result<PathBuf> {
    let rel = TreeShape::key(&node.path, node.path_raw())
        .map_err(|why| Error::corrupt("snapshot content", why))?;
    Ok(target.join(rel))
}

/// The directories below a restore's target seen to be directories, not symlinks: a restore
/// makes, removes and sets each node by its path, and the system follows a symlink at any
/// directory of that path. The target itself is not looked at (it may be a link the user
/// chose). Each directory is looked at once ([`std::fs::symlink_metadata`]) and remembered,
/// so a restore of 100,000 files looks at each directory, not each file's directories.
///
/// This is for what the target held before the restore (a link left by an earlier restore or
/// by another user): what changes while the restore runs can change after it was looked at,
/// as with any restore by path.
struct RealDirs<'a> {
    target: &'a Path,
    known: HashSet<PathBuf>,
}

impl<'a> RealDirs<'a> {
    fn new(target: &'a Path) -> Self {
        RealDirs {
            target,
            known: HashSet::new(),
        }
    }

    /// The first of the directories between the target and `p` that is there and is no
    /// directory (a symlink, a file), nearest `p` first; `None` when each is a directory or
    /// not there yet (then [`make_dir`] makes it one).
    fn not_dir_above(&mut self, p: &Path) -> Result<Option<PathBuf>> {
        let mut seen = Vec::new();
        for a in p.ancestors().skip(1) {
            if a == self.target || self.known.contains(a) {
                break;
            }
            match std::fs::symlink_metadata(a) {
                Ok(m) if m.is_dir() => seen.push(a.to_path_buf()),
                Ok(_) => return Ok(Some(a.to_path_buf())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("look at", a, e)),
            }
        }
        self.known.extend(seen);
        Ok(None)
    }

    /// Checks, before `p` is made or replaced, that nothing above it below the target is a
    /// symlink (or a file). The restore made each of those a directory already ([`make_dir`]
    /// replaces a link the target held, and a snapshot lists a directory before what it
    /// holds, [`TreeShape`]), so one that is not was put there since, while the restore ran:
    /// it is refused rather than replaced, as nothing restored into a tree another process
    /// is changing would be the snapshot's.
    fn check(&mut self, p: &Path) -> Result<()> {
        match self.not_dir_above(p)? {
            None => Ok(()),
            Some(a) => Err(Error::Invalid(format!(
                "{} is no longer a directory (a symlink or a file was put there while the \
                 restore ran): nothing is restored through it; stop what else writes into \
                 restore target {}, then restore again",
                a.display(),
                self.target.display()
            ))),
        }
    }

    /// `p`, below the target, was made a directory by [`make_dir`] after [`RealDirs::check`].
    fn made(&mut self, p: &Path) {
        self.known.insert(p.to_path_buf());
    }

    /// Whether `p` is a directory (not a symlink to one) reached through directories alone.
    fn is_real_dir(&mut self, p: &Path) -> Result<bool> {
        Ok(std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
            && self.not_dir_above(p)?.is_none())
    }
}

/// Removes what the restored directories hold that the snapshot does not (a restore with
/// [`RestoreOptions::delete`]): every directory restored at or below the paths `include` names
/// (the target itself too when it names none and the snapshot is `of_dir`, a directory's rather
/// than a file's), never one above them. Nothing is followed: a link is removed as a link, a
/// directory with what it holds. Returns the entries removed.
fn delete_extras(target: &Path, nodes: &[Node], include: &[String], of_dir: bool) -> Result<u64> {
    let include = included(include).unwrap_or_default();
    let within = |path: &str| include.is_empty() || include.iter().any(|inc| under(path, inc));
    let restored: HashSet<PathBuf> = nodes
        .iter()
        .map(|n| safe_join(target, n))
        .collect::<Result<_>>()?;
    let mut dirs = Vec::new();
    // The target is the snapshot's directory only when it has one: a snapshot of a file (no
    // root directory recorded) was never of the target's other entries.
    if include.is_empty() && of_dir {
        dirs.push(target.to_path_buf());
    }
    for n in nodes
        .iter()
        .filter(|n| n.kind == NodeKind::Dir && within(&n.path))
    {
        dirs.push(safe_join(target, n)?);
    }
    let mut deleted = 0;
    let mut real = RealDirs::new(target);
    for dir in dirs {
        // A directory of the snapshot that a salvaging restore did not get to make, where the
        // target holds a link: what the link points at is not the snapshot's to delete from.
        if dir != target && !real.is_real_dir(&dir)? {
            tracing::warn!(path = %dir.display(), "not a directory: nothing is deleted through it");
            continue;
        }
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("list directory", &dir, e))?;
        for entry in entries {
            let p = entry
                .map_err(|e| Error::io("list directory", &dir, e))?
                .path();
            if restored.contains(&p) {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).map_err(|e| Error::io("stat", &p, e))?;
            if m.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            }
            .map_err(|e| Error::io("delete what the snapshot does not hold", &p, e))?;
            tracing::info!(path = %p.display(), "deleted: not in the snapshot");
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Gives the directories of `nodes` that are there below `target` their metadata, deepest
/// first, so each one's time sticks once what is below it is done (a salvaging restore may
/// have left one out). Only directories: a symlink the target holds where one was left out
/// is not followed, as owners and modes are set by path.
fn set_dirs(meta: &Meta, target: &Path, nodes: &[Node]) -> Result<()> {
    let mut real = RealDirs::new(target);
    for n in nodes.iter().rev().filter(|n| n.kind == NodeKind::Dir) {
        let p = safe_join(target, n)?;
        if real.is_real_dir(&p)? {
            meta.set(&p, n)?;
        }
    }
    Ok(())
}

/// Makes `p` a directory. Whatever else is there, in a target that was not empty (a file, or
/// a symlink wherever it points), is removed first, so nothing restored below `p` is written
/// through a link the restore did not make.
fn make_dir(p: &Path, loosened: &mut Loosened) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            // One restored before (a read-only directory of the snapshot) is made writable
            // while the restore fills it: it gets the snapshot's mode back with its metadata,
            // or its own back should the restore stop first.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = m.permissions().mode();
                if mode & 0o700 != 0o700 {
                    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o700))
                        .map_err(|e| Error::io("make writable", p, e))?;
                    loosened.0.push((p.to_path_buf(), mode));
                }
            }
            return Ok(());
        }
        Ok(_) => std::fs::remove_file(p).map_err(|e| Error::io("replace", p, e))?,
        Err(_) => {}
    }
    // Its owner's alone until the restore gives it its recorded mode, at the end: what is
    // restored into it is not open to others meanwhile.
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(p).map_err(|e| Error::io("create directory", p, e))
}

/// Directories of the target a restore made writable, with their modes before: given those
/// modes back when it is dropped, unless [`Loosened::keep`] says the restore set them itself.
#[derive(Default)]
struct Loosened(Vec<(PathBuf, u32)>);

impl Loosened {
    fn keep(mut self) {
        self.0.clear();
    }
}

impl Drop for Loosened {
    fn drop(&mut self) {
        #[cfg(unix)]
        for (p, mode) in self.0.iter().rev() {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(*mode));
        }
    }
}

/// Creates the file `p` anew where nothing is; where something is, creates a file beside it
/// in the same directory (`.cairn-restore-PID-N`), to be renamed over it once written whole,
/// and returns that file's path too. Neither follows a symlink: what is there (a link another
/// user left) is never written through. A `private` file is made readable by its owner alone
/// (its recorded mode comes once it is written): until then it may hold, half written, what
/// only its owner was to read.
pub fn create_or_beside(
    p: &Path,
    private: bool,
) -> std::io::Result<(std::fs::File, Option<PathBuf>)> {
    let create = |p: &Path| {
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        if private {
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        o.open(p)
    };
    match create(p) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        made => return made.map(|f| (f, None)),
    }
    let dir = p.parent().unwrap_or(Path::new("."));
    for n in 0u32.. {
        let beside = dir.join(format!(".cairn-restore-{}-{n}", std::process::id()));
        match create(&beside) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            made => return made.map(|f| (f, Some(beside))),
        }
    }
    unreachable!("one of 2^32 names is free")
}

/// Removes what restores killed part way left beside the files they were replacing
/// (`.cairn-restore-PID-N`, [`create_or_beside`]) in the directories this restore wrote files
/// into, once their process is gone (no `/proc/PID`; Linux only). Best effort: what cannot be
/// looked at or removed stays, as does every other name.
fn remove_stale_besides(target: &Path, nodes: &[Node]) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let dirs: HashSet<PathBuf> = nodes
        .iter()
        .filter(|n| n.kind == NodeKind::File)
        .filter_map(|n| Some(safe_join(target, n).ok()?.parent()?.to_path_buf()))
        .collect();
    let me = std::process::id();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix(".cairn-restore-"))
                .and_then(|rest| rest.split_once('-'))
                .filter(|(_, n)| n.parse::<u32>().is_ok())
                .and_then(|(pid, _)| pid.parse::<u32>().ok());
            if let Some(pid) = pid
                && pid != me
                && !Path::new(&format!("/proc/{pid}")).exists()
                && std::fs::remove_file(e.path()).is_ok()
            {
                tracing::info!(file = %e.path().display(), "removed what a restore killed part way left");
            }
        }
    }
}

/// Makes `p` with `make`, which must not follow or overwrite what is there; when something
/// is, it is removed and `p` made anew. (Trying first spares a new target's files a removal
/// each.)
fn replace_with<T>(p: &Path, make: impl Fn(&Path) -> std::io::Result<T>) -> std::io::Result<T> {
    match make(p) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            make(p)
        }
        made => made,
    }
}

/// A node of what `m` describes, as a directory: its mode, time and owner.
fn dir_node(path: String, m: &std::fs::Metadata) -> Node {
    let (uid, gid) = owner_of(m);
    Node {
        path,
        kind: NodeKind::Dir,
        mode: mode_of(m),
        mtime_ns: mtime_ns(m),
        uid,
        gid,
        size: 0,
        ctime_ns: None,
        inode: None,
        chunks: format::ChunkList::default(),
        lists: format::ChunkList::default(),
        rare: None,
    }
}

/// Gives restored nodes their recorded owners where the restore may: as root, or with
/// `CAP_CHOWN`. Without that right the first refusal ends the attempts, and what is restored
/// belongs to the user restoring (as with tar run by another user than root). An owner the
/// system cannot name (an id outside a container's user namespace) is left out alone.
#[derive(Debug, Default)]
struct Owners {
    refused: AtomicBool,
    unmapped: AtomicBool,
}

impl Owners {
    /// Sets the owner of `path` (of the link itself, for a symlink).
    fn set(&self, path: &Path, node: &Node) -> Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::{chown, lchown};
            let link = node.kind == NodeKind::Symlink;
            self.set_with(path, node, |u, g| {
                if link {
                    lchown(path, u, g)
                } else {
                    chown(path, u, g)
                }
            })
        }
        #[cfg(not(unix))]
        Ok(())
    }

    /// Sets the owner of `path` with `chown`: by its path, or on the file open there.
    #[cfg(unix)]
    fn set_with(
        &self,
        path: &Path,
        node: &Node,
        chown: impl FnOnce(Option<u32>, Option<u32>) -> std::io::Result<()>,
    ) -> Result<()> {
        if self.refused.load(Ordering::Relaxed) || (node.uid.is_none() && node.gid.is_none()) {
            return Ok(());
        }
        match chown(node.uid, node.gid) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                if !self.refused.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        path = %path.display(),
                        "owners are not restored: giving files to other users needs root \
                         (or CAP_CHOWN); what is restored belongs to the user restoring"
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                if !self.unmapped.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        path = %path.display(),
                        uid = ?node.uid,
                        gid = ?node.gid,
                        "an owner this system cannot give (outside its user namespace) \
                         is left to the user restoring, here and wherever else it recurs"
                    );
                }
            }
            Err(e) => return Err(Error::io("set the owner of", path, e)),
        }
        Ok(())
    }
}

/// Sets restored nodes' metadata, warning once of what the system refuses; shared by the
/// writers of a restore, which set their files' metadata at once.
#[derive(Debug, Default)]
struct Meta {
    owners: Owners,
    xattrs: xattrs::Setter,
    setid_cleared: AtomicBool,
    /// Whether making a device was refused (not root).
    mknod_refused: AtomicBool,
}

impl Meta {
    /// The owner first (changing it clears set-id bits and file capabilities), then the
    /// permissions, the extended attributes and the time. A symlink gets its owner, attributes
    /// and time, set on the link itself, not permissions (Linux has none for links).
    fn set(&self, path: &Path, node: &Node) -> Result<()> {
        self.owners.set(path, node)?;
        if node.kind != NodeKind::Symlink {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = self.mode(path, node, || std::fs::metadata(path));
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| Error::io("set permissions", path, e))?;
            }
        }
        self.xattrs.set(path, node.xattrs())?;
        // A FIFO opened would wait for a writer, and a device is not to be opened: their time
        // is set by path, as a link's.
        if node.kind == NodeKind::Symlink || node.kind.is_special() {
            // A filesystem that keeps no time for links refuses it; nothing else is lost.
            #[cfg(unix)]
            let _ = set_link_mtime(path, node);
        } else if let Ok(f) = std::fs::File::open(path) {
            let _ = f.set_modified(mtime(node));
        }
        Ok(())
    }

    /// The mode to give `path`: the recorded one, without its set-user-ID (set-group-ID) bit
    /// on a file whose recorded owner (group) it could not be given, as tar does: a program
    /// set-user-ID root restored by another user must not run as that user.
    #[cfg(unix)]
    fn mode(
        &self,
        path: &Path,
        node: &Node,
        stat: impl FnOnce() -> std::io::Result<std::fs::Metadata>,
    ) -> u32 {
        use std::os::unix::fs::MetadataExt;
        const SETUID: u32 = 0o4000;
        const SETGID: u32 = 0o2000;
        if node.mode & (SETUID | SETGID) == 0 || node.kind == NodeKind::Dir {
            return node.mode;
        }
        let (uid, gid) = match stat() {
            Ok(m) => (Some(m.uid()), Some(m.gid())),
            Err(_) => (None, None),
        };
        let mut mode = node.mode;
        if node.uid.is_some_and(|u| Some(u) != uid) {
            mode &= !SETUID;
        }
        if node.gid.is_some_and(|g| Some(g) != gid) {
            mode &= !SETGID;
        }
        if mode != node.mode && !self.setid_cleared.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                path = %path.display(),
                "set-user-ID and set-group-ID bits are left off files whose recorded owner \
                 could not be given: here and wherever else it recurs"
            );
        }
        mode
    }

    /// [`Meta::set`] on a file just written, through the handle it was written with: its path
    /// is not looked up again, and its time is set after its last write.
    fn set_file(&self, f: &std::fs::File, path: &Path, node: &Node) -> Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            self.owners
                .set_with(path, node, |u, g| std::os::unix::fs::fchown(f, u, g))?;
            let mode = self.mode(path, node, || f.metadata());
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| Error::io("set permissions", path, e))?;
            self.xattrs.set_file(f, path, node.xattrs())?;
            let _ = f.set_modified(mtime(node));
            Ok(())
        }
        #[cfg(not(unix))]
        self.set(path, node)
    }
}

/// `path` (absolute) without `.`, `..` or a trailing separator, resolved by its text as
/// restic's and Go's `Clean` do: `dir/`, `./dir` and `x/../dir` are one directory, recorded
/// once as the source its snapshots and their parent are found by.
pub(crate) fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// The modification time `node` records.
fn mtime(node: &Node) -> std::time::SystemTime {
    let since = std::time::Duration::from_nanos(node.mtime_ns.unsigned_abs());
    if node.mtime_ns >= 0 {
        std::time::UNIX_EPOCH + since
    } else {
        std::time::UNIX_EPOCH - since
    }
}

/// Sets a symlink's own modification time (its access time left as it is).
#[cfg(unix)]
fn set_link_mtime(path: &Path, node: &Node) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, CWD, Timestamps, UTIME_OMIT, utimensat};
    let modified = rustix::fs::Timespec {
        tv_sec: node.mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: node.mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    let times = Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: modified,
    };
    Ok(utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)?)
}

impl Repository {
    /// Backs up the directory tree at `path` (each file cut as [`Chunking::for_file`] picks
    /// unless the options name a chunking), or the file at `path` as a tree of that one file,
    /// which a restore writes into its target directory under its name.
    pub async fn backup_tree(
        &self,
        path: impl AsRef<Path>,
        opts: BackupOptions,
    ) -> Result<SnapshotInfo> {
        let root = std::path::absolute(path.as_ref())
            .map(|p| clean(&p))
            .map_err(|e| Error::io("resolve", path.as_ref(), e))?;
        let meta = match std::fs::metadata(&root) {
            Ok(m) if m.is_dir() || m.is_file() => m,
            Ok(_) => {
                return Err(Error::Invalid(format!(
                    "{} is neither a directory nor a file: back up the directory that holds \
                     it, or its bytes as a stream (`cairn repo backup - --stdin-name NAME < {}`)",
                    root.display(),
                    root.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Invalid(format!(
                    "{} does not exist: name the directory or file to back up",
                    root.display()
                )));
            }
            Err(e) => return Err(Error::io("back up", &root, e)),
        };
        // A link to a file is not taken for the file: walked as its directory's entry, it would
        // be backed up as the link alone, the file's bytes left out.
        if meta.is_file()
            && std::fs::symlink_metadata(&root).is_ok_and(|l| l.file_type().is_symlink())
        {
            let to = std::fs::canonicalize(&root).unwrap_or_else(|_| root.clone());
            return Err(Error::Invalid(format!(
                "{} is a symbolic link to the file {}: back up {} itself, or the directory \
                 that holds both",
                root.display(),
                to.display(),
                to.display()
            )));
        }
        // A file is a tree of that one file: its directory is walked for that name alone, and
        // no directory of its own is recorded for a restore to give the target (nor for
        // `restore --delete` to empty).
        let (walk_root, only) = match (meta.is_file(), root.parent(), root.file_name()) {
            (true, Some(dir), Some(name)) => (dir.to_path_buf(), Some(name.to_owned())),
            _ => (root.clone(), None),
        };
        let single = only.is_some();
        opts.check_labels()?;
        let time = jiff::Timestamp::now();
        let exclude = opts
            .exclude
            .iter()
            .map(|p| Pattern::parse(p))
            .collect::<Result<Vec<_>>>()?;
        let root_node = match only {
            Some(_) => None,
            None => {
                let mut node = dir_node(String::new(), &meta);
                let xattrs = xattrs::read(&root)
                    .map_err(|e| Error::io("read the extended attributes of", &root, e))?;
                if !xattrs.is_empty() {
                    node.rare_mut().xattrs = xattrs;
                }
                Some(Box::new(node))
            }
        };
        let device = if opts.one_file_system {
            device_of(&meta)
        } else {
            None
        };
        // Entries this process cannot read, left out (counted by the walk and the reads).
        let skipped = opts.left_out.clone().unwrap_or_default();
        let skipped_before = skipped.count();
        let (walk_skipped, dir) = (skipped.clone(), walk_root.clone());
        let walked = async {
            tokio::task::spawn_blocking(move || {
                walk(&dir, only.as_deref(), &exclude, device, &walk_skipped)
            })
            .await
            .map_err(|e| Error::Invalid(format!("walk task failed: {e}")))?
        };
        // The parent's files are read while the tree is walked.
        let (walked, parent) = tokio::join!(walked, self.parent_files(&root, &opts));
        let (mut nodes, parent) = (walked?, parent?);
        if single && nodes.is_empty() {
            return Err(Error::Invalid(format!(
                "{} is left out by --exclude, or was removed meanwhile: nothing to back up",
                root.display()
            )));
        }
        let (tags, host) = (opts.tags.clone(), opts.host.clone());
        let (lock, pipeline) = self.start_backup(&opts, Chunking::PAGES).await?;
        // The parent was read before the lock was taken: forgotten and pruned meanwhile, the
        // data chunks its list chunks name may be gone while the list chunks stay indexed (a
        // pack in use keeps all its entries). Still there under the lock, its data stays.
        let parent = match parent {
            Some(p) => match self
                .inner
                .backend
                .exists(&format::snapshot_path(&p.id))
                .await
            {
                Ok(true) => Some(p),
                Ok(false) => {
                    tracing::warn!(parent = %p.id, "the parent snapshot was removed meanwhile: every file is read");
                    None
                }
                Err(e) => {
                    lock.release().await;
                    drop(pipeline);
                    return Err(e);
                }
            },
            None => None,
        };
        // The repair markers, listed under the lock (no repair adds one while it is held): the
        // snapshot records them, and a parent that did not see one gives no file of several
        // chunks. No clock is compared.
        let repairs = match self.repair_markers().await {
            Ok(now) => now.into_iter().map(|(id, _)| id).collect::<Vec<_>>(),
            Err(e) => {
                lock.release().await;
                drop(pipeline);
                return Err(e);
            }
        };
        let parent = parent.map(|mut p| {
            p.repaired_since = repairs.iter().any(|id| !p.repairs_seen.contains(id));
            if p.repaired_since {
                tracing::info!(
                    parent = %p.id,
                    "a repair dropped chunks from the index since the parent snapshot: files of \
                     several chunks are read again, so that what was lost is stored again"
                );
            }
            p
        });
        let (unchanged, unchanged_bytes) = match parent {
            Some(parent) => self.take_unchanged(&mut nodes, parent),
            None => (Vec::new(), 0),
        };
        if let Some(p) = &opts.progress {
            p.fetch_add(unchanged_bytes, std::sync::atomic::Ordering::Relaxed);
        }
        let per_file = opts.chunking.is_none();
        // The files to read, and for each its place among the tree's files.
        // The walk keeps each node's path relative to the root only, not a second, absolute
        // copy of it (about 20 MB for 200,000 files).
        let (files, places): (Vec<(PathBuf, u64)>, Vec<usize>) = nodes
            .iter()
            .filter(|n| n.kind == NodeKind::File)
            .enumerate()
            .filter(|(i, _)| unchanged.binary_search(i).is_err())
            .map(|(i, n)| {
                let rel = rel_path(n).unwrap_or_else(|| PathBuf::from(&n.path));
                ((walk_root.join(rel), n.size), i)
            })
            .unzip();
        let (tx, blocks, stop) = (pipeline.sender(), pipeline.blocks(), opts.stop.clone());
        let feed_skipped = skipped.clone();
        let fed = tokio::task::spawn_blocking(move || match tx {
            Some(tx) => feed(&files, per_file, &tx, &blocks, stop.as_ref(), &feed_skipped),
            None => Err(Error::Aborted),
        })
        .await
        .map_err(|e| Error::Invalid(format!("read task failed: {e}")));
        let finished = pipeline.finish().await;
        let result = async {
            // The pipeline's error is the cause when both failed.
            let (c, p) = finished?;
            let gone: Vec<usize> = fed??.into_iter().map(|i| places[i]).collect();
            // Stopped after the last file was read, while uploads drained: no snapshot either.
            if opts.stop.as_ref().is_some_and(|s| *s.borrow()) {
                return Err(Error::Interrupted);
            }
            let mut content = Content::tree(nodes, root_node);
            let mut summary = content.fill(c, p.stored_bytes, &unchanged);
            if let Content::Tree { nodes, .. } = &mut content {
                drop_files(nodes, &gone);
            }
            summary.files -= gone.len() as u64;
            summary.unreadable = skipped.count() - skipped_before;
            // A file that could not be read leaves nothing: no empty snapshot, which retention
            // would keep as the latest.
            if single && summary.files == 0 && summary.unreadable > 0 {
                return Err(Error::Invalid(format!(
                    "{} could not be read (the warning above says why): nothing was saved",
                    root.display()
                )));
            }
            let kind = SnapshotKind::Tree {
                path: root.display().to_string(),
            };
            let mut info = SnapshotInfo::made(kind, time, host, tags, summary);
            info.repairs = repairs;
            self.commit(&lock, content, info, &opts).await
        }
        .await;
        lock.release().await;
        result
    }

    /// The snapshot a backup of `root` takes unchanged files from, as `parent` picks it: its
    /// start and its files with what tells whether they changed, by path. The latest snapshot
    /// that cannot be read (damaged) is warned about and every file read: it must not stop
    /// new backups. One the options name must be read.
    async fn parent_files(&self, root: &Path, opts: &BackupOptions) -> Result<Option<ParentFiles>> {
        match self.read_parent(root, opts).await {
            Err(e) if opts.parent == Parent::Latest => {
                tracing::warn!(error = %e, "the latest snapshot of this directory cannot be read: every file is read");
                Ok(None)
            }
            found => found,
        }
    }

    async fn read_parent(&self, root: &Path, opts: &BackupOptions) -> Result<Option<ParentFiles>> {
        let info = match &opts.parent {
            Parent::None => return Ok(None),
            Parent::Snapshot(id) => {
                let info = self.tree_snapshot(id).await?;
                if !matches!(info.kind, SnapshotKind::Tree { .. }) {
                    return Err(Error::Invalid(format!(
                        "parent snapshot {} is the stream {}, not a tree",
                        info.short_id(),
                        info.source()
                    )));
                }
                info
            }
            Parent::Latest => {
                let path = root.display().to_string();
                let host = opts.host.clone().unwrap_or_else(crate::lock::hostname);
                let mine = crate::repo::SnapshotFilter::new().source(&path).host(host);
                let found = self
                    .snapshots(&mine)
                    .await?
                    .into_iter()
                    .filter(|s| matches!(s.kind, SnapshotKind::Tree { .. }))
                    .max_by_key(|s| s.time);
                match found {
                    Some(info) => info,
                    None => return Ok(None),
                }
            }
        };
        let mut parent: ParentContent = self.content_object_as(&info).await?;
        if parent.kind != "tree" {
            return Ok(None);
        }
        let mut files = std::mem::take(&mut parent.nodes);
        let (chunks, lists) = (&mut parent.node_chunks, &parent.node_lists);
        self.each_node(&info, chunks, lists, |n| files.keep(n))
            .await?;
        tracing::debug!(
            parent = info.short_id(),
            "files unchanged since are not read"
        );
        Ok(Some(ParentFiles {
            id: info.id.clone(),
            started_ns: info.time.as_nanosecond(),
            files: files.sorted(),
            repairs_seen: info.repairs,
            repaired_since: false,
        }))
    }

    /// Gives the files of `nodes` that did not change since `parent` its chunks, so that they
    /// are not read, when the repository still holds them; returns their places among the
    /// files (in order) and their bytes.
    fn take_unchanged(&self, nodes: &mut [Node], parent: ParentFiles) -> (Vec<usize>, u64) {
        let index = self
            .inner
            .index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut places, mut bytes) = (Vec::new(), 0);
        let files = nodes.iter_mut().filter(|n| n.kind == NodeKind::File);
        for (i, n) in files.enumerate() {
            if let Some(before) = parent.same_file(n, |id| index.contains(id)) {
                let ids = ChunkList(parent.files.ids_of(before).to_vec());
                (n.chunks, n.lists) = if before.lists {
                    (ChunkList::default(), ids)
                } else {
                    (ids, ChunkList::default())
                };
                places.push(i);
                bytes += n.size;
            }
        }
        (places, bytes)
    }

    /// Restores a tree snapshot into `target` (created if needed; existing files are
    /// overwritten).
    pub async fn restore_tree(
        &self,
        id_or_prefix: &str,
        target: impl AsRef<Path>,
    ) -> Result<RestoreSummary> {
        let info = self.beside_index(self.tree_snapshot(id_or_prefix)).await?;
        self.restore_tree_of(&info, target).await
    }

    /// [`Repository::restore_tree`] of a snapshot already looked up.
    pub async fn restore_tree_of(
        &self,
        info: &SnapshotInfo,
        target: impl AsRef<Path>,
    ) -> Result<RestoreSummary> {
        self.restore_paths_of(info, target, &[]).await
    }

    /// [`Repository::restore_tree_of`] of only the paths `include` names (relative to the
    /// snapshot's root; each with everything under it, and the directories above it); none
    /// restores everything. A path the snapshot does not hold is an error that names it.
    pub async fn restore_paths_of(
        &self,
        info: &SnapshotInfo,
        target: impl AsRef<Path>,
        include: &[String],
    ) -> Result<RestoreSummary> {
        self.restore_paths_with(info, target, include, &RestoreOptions::new())
            .await
    }

    /// [`Repository::restore_paths_of`] with options (a progress counter).
    pub async fn restore_paths_with(
        &self,
        info: &SnapshotInfo,
        target: impl AsRef<Path>,
        include: &[String],
        opts: &RestoreOptions,
    ) -> Result<RestoreSummary> {
        // Only the selected files' chunk lists are read.
        let content = self
            .restore_content_of(info, |c| match c {
                Content::Tree { nodes, .. } => select(nodes, include, info),
                Content::Stream { .. } => Ok(()),
            })
            .await?;
        let Content::Tree { nodes, root, .. } = content else {
            return Err(Error::Invalid(format!(
                "snapshot {} is a stream; restore it with --target -",
                info.short_id()
            )));
        };
        let target = target.as_ref().to_path_buf();
        // A snapshot of a file has no root: `--delete` then leaves the target's other entries.
        let of_dir = root.is_some();
        // A target the restore creates is the snapshot's root: it gets the root's owner, mode
        // and time (a database's data directory must be its service user's, mode 0700). One
        // that exists is left as it is.
        let root = root.filter(|_| std::fs::symlink_metadata(&target).is_err());
        if std::fs::metadata(&target).is_ok_and(|m| !m.is_dir()) {
            return Err(Error::Invalid(format!(
                "restore target {} exists and is not a directory: name a directory (it is \
                 created when missing)",
                target.display()
            )));
        }
        // Into a directory that holds something: a directory where the snapshot has a file or
        // a link is not removed with what it holds (an empty one is), and is refused before
        // anything is written; unless the restore deletes what the snapshot does not hold,
        // which such a directory is, with all below it.
        let mut removed = 0;
        let holds_something = std::fs::read_dir(&target).is_ok_and(|mut d| d.next().is_some());
        if holds_something {
            let mut in_the_way = Vec::new();
            // Whether each directory below the target is one (not a link, which the restore
            // replaces with a directory: what is below a link is never looked at).
            let mut real_dirs: HashMap<PathBuf, bool> = HashMap::new();
            for n in nodes.iter().filter(|n| n.kind != NodeKind::Dir) {
                let p =
                    safe_join(&target, n).map_err(|e| crate::repo::with_snapshot(e, &info.id))?;
                let under_real_dirs = p
                    .ancestors()
                    .skip(1)
                    .take_while(|a| *a != target.as_path())
                    .all(|a| {
                        *real_dirs.entry(a.to_path_buf()).or_insert_with(|| {
                            std::fs::symlink_metadata(a).is_ok_and(|m| m.is_dir())
                        })
                    });
                if under_real_dirs
                    && std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir())
                    && std::fs::remove_dir(&p).is_err()
                {
                    in_the_way.push(p);
                }
            }
            if opts.delete {
                for p in in_the_way.drain(..) {
                    std::fs::remove_dir_all(&p)
                        .map_err(|e| Error::io("remove directory", &p, e))?;
                    removed += 1;
                }
            }
            if let Some(first) = in_the_way.first() {
                return Err(Error::Invalid(format!(
                    "restore target {} holds directories where snapshot {} has files or links: \
                     {}{}; move them away (or restore into an empty directory, or with \
                     --delete, which removes them)",
                    target.display(),
                    info.short_id(),
                    first.display(),
                    match in_the_way.len() {
                        1 => String::new(),
                        n => format!(" and {} more", n - 1),
                    }
                )));
            }
        }
        std::fs::create_dir_all(&target).map_err(|e| Error::io("create directory", &target, e))?;
        let mut loosened = Loosened::default();
        let mut summary = RestoreSummary::default();
        let mut files: Vec<ToWrite> = Vec::new();
        let mut ids = Vec::new();
        // Hard links whose first name is restored too are linked to it once it is written;
        // when it is not, the first of them restored is written and the others linked to it.
        // Most trees have none.
        let linking = nodes
            .iter()
            .any(|n| n.link().is_some() || n.link_raw().is_some());
        let mut written: HashMap<std::borrow::Cow<str>, &Node> = nodes
            .iter()
            .filter(|n| linking && n.kind == NodeKind::File)
            .filter(|n| n.link().is_none() && n.link_raw().is_none())
            .map(|n| (link_key(n), n))
            .collect();
        let (mut links, mut to_read) = (Vec::new(), 0);
        let mut real = RealDirs::new(&target);
        for (i, n) in nodes.iter().enumerate() {
            let p = safe_join(&target, n).map_err(|e| crate::repo::with_snapshot(e, &info.id))?;
            match n.kind {
                NodeKind::Dir => {
                    real.check(&p)?;
                    make_dir(&p, &mut loosened)?;
                    real.made(&p);
                    summary.dirs += 1;
                }
                NodeKind::File => {
                    real.check(&p)?;
                    summary.files += 1;
                    summary.bytes += n.size;
                    if let Some(key) = linked_key(n) {
                        match written.get(key.as_ref()) {
                            Some(first) => {
                                let first = safe_join(&target, first)
                                    .map_err(|e| crate::repo::with_snapshot(e, &info.id))?;
                                links.push((first, p));
                                continue;
                            }
                            None => {
                                written.insert(key, n);
                            }
                        }
                    }
                    files.push((p, n.chunks.0.len(), i));
                    ids.extend_from_slice(&n.chunks.0);
                    to_read += n.size;
                }
                // Made with the links, once the data is written.
                _ => {}
            }
        }
        // What is read and written: a hard link is neither.
        opts.set_total(to_read);
        let mut stream = Box::pin(self.read_chunks(&ids, &info.id).await?);
        let sparse = opts.sparse;
        drop(written);
        // Writers give each file its metadata as they finish it.
        let nodes = Arc::new(nodes);
        let meta = Arc::new(Meta::default());
        let (mut route, lanes) = Route::new(files, &nodes);
        let (mut txs, mut writers) = (Vec::new(), Vec::new());
        for files in lanes {
            let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(WRITER_QUEUE);
            let (nodes, meta) = (nodes.clone(), meta.clone());
            txs.push(tx);
            writers.push(tokio::task::spawn_blocking(move || {
                write_files(files, &nodes, rx, sparse, &meta)
            }));
        }
        // Why the restore stopped early: a read failed, or a writer (its lane) did; the other
        // writer then reports only that its chunks stopped coming.
        let (mut err, mut stopped_by) = (None, None);
        let stopped = opts.stopped();
        tokio::pin!(stopped);
        'read: loop {
            let item = tokio::select! {
                item = stream.next() => item,
                () = &mut stopped => {
                    err = Some(Error::Interrupted);
                    break;
                }
            };
            let Some(item) = item else {
                break;
            };
            match item {
                Ok(v) => {
                    opts.advance(v.iter().map(Bytes::len).sum());
                    for (lane, (tx, part)) in txs.iter().zip(route.split(v)).enumerate() {
                        if !part.is_empty() && tx.send(part).await.is_err() {
                            stopped_by = Some(lane);
                            break 'read;
                        }
                    }
                }
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        drop(txs);
        let mut failed = Vec::new();
        for w in writers {
            let written = w
                .await
                .map_err(|e| Error::Invalid(format!("writer task failed: {e}")))?;
            failed.push(written.err());
        }
        let cause = stopped_by.and_then(|lane| failed[lane].take());
        if let Some(e) = err
            .or(cause)
            .or_else(|| failed.into_iter().flatten().next())
        {
            return Err(e);
        }
        for (first, p) in &links {
            replace_with(p, |p| std::fs::hard_link(first, p))
                .map_err(|e| Error::io("create hard link", p, e))?;
        }
        // Links, then metadata (the files have theirs): directories deepest first so their
        // mtimes stick.
        for n in nodes.iter() {
            if let (NodeKind::Symlink, Some(t)) = (n.kind, n.target()) {
                let p = safe_join(&target, n)?;
                real.check(&p)?;
                let _ = std::fs::remove_file(&p);
                #[cfg(unix)]
                std::os::unix::fs::symlink(link_target(t, n.target_raw())?, &p)
                    .map_err(|e| Error::io("create symlink", &p, e))?;
                #[cfg(not(unix))]
                tracing::warn!(path = %p.display(), target = %t, "symlinks are not restored on this platform");
                meta.set(&p, n)?;
            } else if n.kind.is_special() {
                let p = safe_join(&target, n)?;
                real.check(&p)?;
                if make_special(&p, n, &meta.mknod_refused)? {
                    meta.set(&p, n)?;
                }
            }
        }
        if opts.delete {
            summary.deleted = removed + delete_extras(&target, &nodes, include, of_dir)?;
        } else if holds_something {
            remove_stale_besides(&target, &nodes);
        }
        set_dirs(&meta, &target, &nodes)?;
        loosened.keep();
        if let Some(r) = &root {
            meta.set(&target, r)?;
        }
        Ok(summary)
    }
}

/// How a path differs between two tree snapshots, as [`Repository::diff_trees`] reports it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct TreeChange {
    /// Relative to the snapshots' root, `/`-separated.
    pub path: String,
    /// `added`, `removed`, `modified` (a file's content or a link's target), `type` (a file
    /// became a directory or a link, …) or `metadata` (only permission bits, the owner, the
    /// extended attributes or, for files and links, the modification time).
    pub change: &'static str,
    /// Bytes before (0 when added).
    pub size_before: u64,
    /// Bytes after (0 when removed).
    pub size_after: u64,
    /// The path's bytes, hex, when it is not UTF-8 (`path` then has U+FFFD in their place).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_raw: Option<String>,
}

/// An entry of a tree snapshot, as [`Repository::list_tree`] lists it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct TreeEntry {
    /// Relative to the snapshot's root, `/`-separated.
    pub path: String,
    /// `file`, `dir`, `symlink`, `fifo`, `chardev` or `blockdev`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Permission bits.
    pub mode: u32,
    /// Bytes (files).
    pub size: u64,
    /// Modification time, RFC 3339.
    pub mtime: String,
    /// The owner's user id (Unix; absent in snapshots of older builds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The owner's group id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Where a symlink points.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The target's bytes, hex, when they are not UTF-8 (as `path_raw`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_raw: Option<String>,
    /// A device's number (`st_rdev`; `chardev` and `blockdev`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rdev: Option<u64>,
    /// A file that is a hard link of an earlier entry: that entry's `path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hard_link_of: Option<String>,
    /// In place of `hard_link_of` when that entry's path is not UTF-8: its `path_raw`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hard_link_of_raw: Option<String>,
    /// The path's bytes, hex, when it is not UTF-8 (`path` then has U+FFFD in their place).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_raw: Option<String>,
}

impl Repository {
    /// [`Repository::restore_paths_with`], going on past damage: when the restore meets
    /// damaged or missing data, the selected paths are restored again in halves, down to the
    /// single files that cannot be, so everything else is restored. Those are listed in
    /// [`RestoreSummary::lost`] (each file the first pass finished is written once more, and
    /// files it was replacing stay as they were, see `Restoring`; the names of a hard link stay
    /// in one half, and are restored as one file).
    pub async fn restore_paths_salvaging(
        &self,
        info: &SnapshotInfo,
        target: impl AsRef<Path>,
        include: &[String],
        opts: &RestoreOptions,
    ) -> Result<RestoreSummary> {
        let target = target.as_ref();
        let damage = |e: &Error| matches!(e, Error::Corrupt { .. } | Error::Missing { .. });
        // A progress counter counts what is restored in the end: what a failed attempt wrote
        // (restored again by the next) is taken back off, and the length stays the whole
        // selection's, which the first attempt sets.
        let progress = || {
            opts.progress
                .as_ref()
                .map_or(0, |p| p.load(Ordering::Relaxed))
        };
        let take_back = |to: u64| {
            if let Some(p) = &opts.progress {
                p.store(to, Ordering::Relaxed);
            }
        };
        let before = progress();
        let first = match self.restore_paths_with(info, target, include, opts).await {
            Err(e) if damage(&e) => e,
            done => return done,
        };
        // The tree itself damaged (its node chunks), nothing of it can be told apart.
        let (mut nodes, of_dir) = match self.content_object(info).await {
            Ok(Content::Tree { nodes, root, .. }) => (nodes, root.is_some()),
            _ => return Err(first),
        };
        tracing::warn!("{first}; restoring the rest");
        take_back(before);
        // Later attempts leave the length alone: each would set it to its own group's.
        let again = RestoreOptions {
            total: None,
            delete: false,
            ..opts.clone()
        };
        // The leaves: what is not a directory, and directories with nothing below; the names
        // of one hard link kept together, so that they are restored as one file.
        select(&mut nodes, include, info)?;
        let parents: HashSet<&str> = nodes
            .iter()
            .filter(|n| !n.path.is_empty())
            .map(|n| n.path.rsplit_once('/').map_or("", |(dir, _)| dir))
            .collect();
        let mut units: Vec<Vec<String>> = Vec::new();
        let mut unit_of: HashMap<&str, usize> = HashMap::new();
        for n in &nodes {
            if n.kind == NodeKind::Dir && (n.path.is_empty() || parents.contains(n.path.as_str())) {
                continue;
            }
            let first = n.link().unwrap_or(&n.path);
            match unit_of.get(first) {
                Some(&i) => units[i].push(n.path.clone()),
                None => {
                    unit_of.insert(first, units.len());
                    units.push(vec![n.path.clone()]);
                }
            }
        }
        let mut summary = RestoreSummary::default();
        let mut groups = vec![units];
        while let Some(mut group) = groups.pop() {
            if group.is_empty() {
                continue;
            }
            let paths = group.concat();
            let before = progress();
            let restored = self.restore_paths_with(info, target, &paths, &again).await;
            if restored.is_err() {
                take_back(before);
            }
            match restored {
                Ok(r) => {
                    summary.files += r.files;
                    summary.dirs = summary.dirs.max(r.dirs);
                    summary.bytes += r.bytes;
                }
                Err(e) if damage(&e) && group.len() == 1 => {
                    let why = e.to_string();
                    summary
                        .lost
                        .extend(paths.into_iter().map(|p| (p, why.clone())));
                }
                Err(e) if damage(&e) => {
                    let half = group.split_off(group.len() / 2);
                    groups.push(half);
                    groups.push(group);
                }
                Err(e) => return Err(e),
            }
        }
        summary.lost.sort();
        // What the target holds beside the snapshot goes once, over the whole selection: a
        // group's restore sees only its own leaves. (What could not be restored is the
        // snapshot's, and stays as it was.)
        if opts.delete {
            summary.deleted = delete_extras(target, &nodes, include, of_dir)?;
            // Deleting from a directory set its time again: the restored times go back on.
            if summary.deleted > 0 {
                set_dirs(&Meta::default(), target, &nodes)?;
            }
        }
        Ok(summary)
    }

    /// The entries of a tree snapshot, in the order they are stored (a directory before what
    /// it holds), limited to `include` as [`Repository::restore_paths_of`] limits a restore.
    pub async fn list_tree(
        &self,
        info: &SnapshotInfo,
        include: &[String],
    ) -> Result<Vec<TreeEntry>> {
        let mut nodes = self.tree_nodes(info).await?;
        select(&mut nodes, include, info)?;
        Ok(nodes.into_iter().map(TreeEntry::of).collect())
    }

    /// What the tree snapshots `filter` selects hold that any of `patterns` matches (as
    /// [`BackupOptions::exclude`] patterns match: a name at any depth, or with `/` the path
    /// from the root), by snapshot, newest first (snapshots holding none left out): where a
    /// file deleted since can be found.
    pub async fn find(
        &self,
        filter: &SnapshotFilter,
        patterns: &[String],
    ) -> Result<Vec<(SnapshotInfo, Vec<TreeEntry>)>> {
        let patterns = patterns
            .iter()
            .map(|p| Pattern::parse(p))
            .collect::<Result<Vec<_>>>()?;
        if patterns.is_empty() {
            return Err(Error::Invalid(
                "find needs a pattern: a name (`*.conf`) or a path (`etc/**/pg_hba.conf`)".into(),
            ));
        }
        let mut trees: Vec<SnapshotInfo> = self
            .snapshots(filter)
            .await?
            .into_iter()
            .filter(|s| matches!(s.kind, SnapshotKind::Tree { .. }))
            .collect();
        trees.sort_by_key(|s| std::cmp::Reverse(s.time));
        // Content objects a few ahead; node chunks that snapshots share read once, what
        // they matched kept for the snapshots that skip them.
        let contents = futures::stream::iter(trees)
            .map(|info| async move {
                let content = self.content_object_as::<Content>(&info).await;
                content.map(|c| (info, c))
            })
            .buffered(4);
        futures::pin_mut!(contents);
        let matches = |n: &Node| {
            let parts: Vec<&str> = n.path.split('/').collect();
            patterns.iter().any(|p| p.matches(&parts))
        };
        let mut seen = SeenNodeChunks::default();
        let mut matched_in: HashMap<ChunkId, Vec<TreeEntry>> = HashMap::new();
        let mut found = Vec::new();
        while let Some(read) = contents.next().await {
            let (info, content) = read?;
            let Content::Tree {
                nodes,
                node_chunks,
                node_lists,
                ..
            } = content
            else {
                continue;
            };
            let mut matched: Vec<TreeEntry> = nodes
                .into_iter()
                .filter(|n| matches(n))
                .map(TreeEntry::of)
                .collect();
            let ids = self.node_chunk_ids(&info, node_chunks, &node_lists).await?;
            let mut in_chunk = Vec::new();
            let read = self
                .node_lines(&info, &ids.0, &seen, |l| {
                    match l {
                        NodeLine::Line(line) => {
                            let n: Node = parse_node(&info, line)?;
                            if matches(&n) {
                                in_chunk.push(TreeEntry::of(n));
                            }
                        }
                        NodeLine::End { id, whole } => {
                            if whole {
                                matched_in.insert(id, in_chunk.clone());
                            }
                            matched.append(&mut in_chunk);
                        }
                        NodeLine::Skipped(id) => {
                            matched.extend(matched_in.get(&id).into_iter().flatten().cloned());
                        }
                    }
                    Ok(())
                })
                .await?;
            seen.learn(read);
            if !matched.is_empty() {
                found.push((info, matched));
            }
        }
        Ok(found)
    }

    /// The nodes of a tree snapshot; a stream snapshot is an error saying so.
    async fn tree_nodes(&self, info: &SnapshotInfo) -> Result<Vec<Node>> {
        match self.content_object(info).await? {
            Content::Tree { nodes, .. } => Ok(nodes),
            _ => Err(Error::Invalid(format!(
                "snapshot {} is a stream ({}), not a tree",
                info.short_id(),
                info.source()
            ))),
        }
    }

    /// `nodes` of the snapshot `info` with the ids their list chunks hold read into their
    /// chunks, and their lists dropped.
    async fn with_ids_read(&self, nodes: Vec<Node>, info: &SnapshotInfo) -> Result<Vec<Node>> {
        let mut content = Content::tree(nodes, None);
        self.read_lists(&mut content, info).await?;
        let Content::Tree { mut nodes, .. } = content else {
            return Ok(Vec::new());
        };
        for n in &mut nodes {
            n.lists = format::ChunkList::default();
        }
        Ok(nodes)
    }

    /// What changed from tree snapshot `from` to tree snapshot `to`, path by path in path
    /// order, read from their content objects alone: a file's content is compared by its
    /// chunk ids (or the ids of its chunk lists), so nothing else is read.
    pub async fn diff_trees(
        &self,
        from: &SnapshotInfo,
        to: &SnapshotInfo,
    ) -> Result<Vec<TreeChange>> {
        let (before, mut after) = futures::try_join!(self.tree_nodes(from), self.tree_nodes(to))?;
        let key = |n: &Node| (n.path.clone(), n.path_raw().map(str::to_owned));
        let mut old: std::collections::HashMap<_, Node> =
            before.into_iter().map(|n| (key(&n), n)).collect();
        // A file whose ids one snapshot keeps in list chunks and the other in its content
        // (snapshots of builds before and after short lists were written) is compared by
        // its ids: the lists of those files alone are read.
        let mixed = |o: &Node, n: &Node| {
            o.kind == NodeKind::File && n.kind == o.kind && o.lists.is_empty() != n.lists.is_empty()
        };
        let (mut was, mut is) = (Vec::new(), Vec::new());
        for (i, n) in after.iter().enumerate() {
            if let Some(o) = old.get(&key(n)).filter(|o| mixed(o, n)) {
                was.push(o.clone());
                is.push(i);
            }
        }
        if !was.is_empty() {
            for o in self.with_ids_read(was, from).await? {
                old.insert(key(&o), o);
            }
            let listed = is.iter().map(|&i| after[i].clone()).collect();
            for (&i, n) in is.iter().zip(self.with_ids_read(listed, to).await?) {
                after[i] = n;
            }
        }
        let mut changes = Vec::new();
        for new in after {
            let change = match old.remove(&key(&new)) {
                None => Some(("added", 0)),
                Some(o) => {
                    let change = if o.kind != new.kind {
                        Some("type")
                    } else if o.size != new.size
                        || o.chunks != new.chunks
                        || o.lists != new.lists
                        || o.target() != new.target()
                        || o.target_raw() != new.target_raw()
                        || o.rdev() != new.rdev()
                    {
                        Some("modified")
                    } else if o.mode != new.mode
                        || (o.mtime_ns != new.mtime_ns && new.kind != NodeKind::Dir)
                        || owner_changed(o.uid, new.uid)
                        || owner_changed(o.gid, new.gid)
                        || o.xattrs() != new.xattrs()
                    {
                        Some("metadata")
                    } else {
                        None
                    };
                    change.map(|c| (c, o.size))
                }
            };
            if let Some((change, size_before)) = change {
                changes.push(TreeChange {
                    change,
                    size_before,
                    size_after: new.size,
                    path_raw: new.path_raw().map(str::to_owned),
                    path: new.path,
                });
            }
        }
        changes.extend(old.into_values().map(|o| TreeChange {
            change: "removed",
            size_before: o.size,
            size_after: 0,
            path_raw: o.path_raw().map(str::to_owned),
            path: o.path,
        }));
        changes.sort_by(|a, b| (&a.path, &a.path_raw).cmp(&(&b.path, &b.path_raw)));
        Ok(changes)
    }
}

/// An owner recorded in both snapshots and different (older builds recorded none).
fn owner_changed(before: Option<u32>, after: Option<u32>) -> bool {
    matches!((before, after), (Some(a), Some(b)) if a != b)
}

/// Keeps the nodes `include` selects: each path, what is under it, and the directories
/// above it; every node when `include` is empty or names the root. A path that selects
/// nothing is an error naming it.
/// The paths `include` names, relative to a snapshot's root as its nodes' paths are; `None`
/// when one names the root itself (everything).
fn included(include: &[String]) -> Option<Vec<&str>> {
    let include: Vec<&str> = include
        .iter()
        .map(|p| p.trim_start_matches("./").trim_matches('/'))
        .collect();
    (!include.iter().any(|p| p.is_empty() || *p == ".")).then_some(include)
}

/// Whether `path` is `inc` or below it.
fn under(path: &str, inc: &str) -> bool {
    path == inc
        || path
            .strip_prefix(inc)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn select(nodes: &mut Vec<Node>, include: &[String], info: &SnapshotInfo) -> Result<()> {
    let include = included(include).unwrap_or_default();
    if include.is_empty() {
        return Ok(());
    }
    if let Some(missing) = include
        .iter()
        .find(|inc| !nodes.iter().any(|n| under(&n.path, inc)))
    {
        return Err(not_in(missing, info));
    }
    nodes.retain(|n| {
        include
            .iter()
            .any(|inc| under(&n.path, inc) || (n.kind == NodeKind::Dir && under(inc, &n.path)))
    });
    Ok(())
}

/// Keeps only the regular file at `path`; nothing there, or something else, is an error
/// naming it.
pub(crate) fn keep_file(nodes: &mut Vec<Node>, path: &str, info: &SnapshotInfo) -> Result<()> {
    let path = path.trim_start_matches("./").trim_matches('/');
    let Some(at) = nodes.iter().position(|n| n.path == path) else {
        return Err(not_in(path, info));
    };
    let node = nodes.swap_remove(at);
    if node.kind != NodeKind::File {
        return Err(Error::Invalid(format!(
            "`{path}` in snapshot {} is a {}, not a file: restore it into a directory \
             (--target DIR --include {path})",
            info.short_id(),
            node.kind.name()
        )));
    }
    *nodes = vec![node];
    Ok(())
}

fn not_in(path: &str, info: &SnapshotInfo) -> Error {
    Error::Invalid(format!(
        "`{path}` is not in snapshot {}; `cairn repo ls {}` lists what it holds",
        info.short_id(),
        info.short_id()
    ))
}

/// Holes are left in whole blocks of this size, aligned to the file: the usual filesystem
/// block, below which a hole saves nothing.
const HOLE_BLOCK: u64 = 4096;

/// The length of the run of zero blocks (`true`) or of other data (`false`) at the start of
/// `buf`, which belongs at file offset `pos`. Blocks are cut at multiples of [`HOLE_BLOCK`]
/// in the file; a partial block at either end of `buf` is judged by its own bytes (zeros
/// skipped there are never written, and in a new file read back as zeros all the same).
fn leading_run(pos: u64, buf: &[u8]) -> (bool, usize) {
    let mut at = 0;
    let mut zero = None;
    while at < buf.len() {
        let edge = (HOLE_BLOCK - (pos + at as u64) % HOLE_BLOCK) as usize;
        let block = &buf[at..buf.len().min(at + edge)];
        let z = crate::pipeline::is_zero(block);
        if *zero.get_or_insert(z) != z {
            break;
        }
        at += block.len();
    }
    (zero.unwrap_or(false), at)
}

/// A file being restored: its chunks still to come, those received and not yet written, and
/// the zeros skipped since the last write: in a sparse restore, every whole block of zeros; in
/// a dense one, the chunks of zeros the restore did not read (a disk image's holes), which get
/// blocks allocated rather than written.
struct Restoring {
    file: std::fs::File,
    path: PathBuf,
    /// Where it is written when a file was at `path` already: renamed over it once whole, so
    /// a restore that fails or stops leaves that file as it was.
    beside: Option<PathBuf>,
    /// Its node, by place in the snapshot's nodes.
    node: usize,
    left: usize,
    run: Vec<Bytes>,
    sparse: bool,
    pos: u64,
    hole: u64,
}

impl Restoring {
    fn create(path: PathBuf, chunks: usize, node: usize, sparse: bool) -> Result<Self> {
        let (file, beside) =
            create_or_beside(&path, true).map_err(|e| Error::io("create", &path, e))?;
        Ok(Self {
            file,
            path,
            beside,
            node,
            left: chunks,
            run: Vec::new(),
            sparse,
            pos: 0,
            hole: 0,
        })
    }

    /// Takes the file's next chunk.
    fn push(&mut self, chunk: Bytes) -> Result<()> {
        self.left -= 1;
        if !self.sparse {
            let n = chunk.len() as u64;
            // Zeros the restore did not read (it yields them from `ZEROS`).
            if crate::pipeline::in_zeros(&chunk) {
                self.hole += n;
            } else {
                self.resume()?;
                self.run.push(chunk);
            }
            self.pos += n;
            return Ok(());
        }
        let mut rest = chunk;
        while !rest.is_empty() {
            let (zero, n) = leading_run(self.pos, &rest);
            if zero {
                self.hole += n as u64;
            } else {
                self.resume()?;
                self.run.push(rest.slice(..n));
            }
            self.pos += n as u64;
            rest = rest.slice(n..);
        }
        Ok(())
    }

    /// Before data that follows zeros skipped: ends them, and goes on past them to where the
    /// data belongs.
    fn resume(&mut self) -> Result<()> {
        if self.hole == 0 {
            return Ok(());
        }
        self.end_hole()?;
        std::io::Seek::seek(&mut self.file, std::io::SeekFrom::Start(self.pos))
            .map_err(|e| Error::io("seek", &self.path, e))?;
        Ok(())
    }

    /// Writes what came before the zeros skipped; in a dense restore, allocates them.
    fn end_hole(&mut self) -> Result<()> {
        let len = std::mem::take(&mut self.hole);
        self.write()?;
        if self.sparse || len == 0 {
            return Ok(());
        }
        #[cfg(target_os = "linux")]
        {
            use rustix::io::Errno;
            let flags = rustix::fs::FallocateFlags::empty();
            match rustix::fs::fallocate(&self.file, flags, self.pos - len, len) {
                Ok(()) => return Ok(()),
                // Not on this filesystem: written below.
                Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {}
                Err(e) => return Err(Error::io("allocate", &self.path, e.into())),
            }
        }
        let mut left = len;
        while left > 0 {
            let k = left.min(crate::pipeline::ZEROS.len() as u64) as usize;
            self.run
                .push(Bytes::from_static(&crate::pipeline::ZEROS[..k]));
            left -= k as u64;
        }
        self.write()
    }

    /// Writes the chunks received, in vectored writes of at most 1024 (the usual `IOV_MAX`).
    fn write(&mut self) -> Result<()> {
        use std::io::{IoSlice, Write};
        for group in self.run.chunks(1024) {
            let mut slices: Vec<IoSlice<'_>> = group.iter().map(|c| IoSlice::new(c)).collect();
            let mut rest = &mut slices[..];
            while !rest.is_empty() {
                match self.file.write_vectored(rest) {
                    Ok(0) => {
                        return Err(Error::io(
                            "write",
                            &self.path,
                            std::io::ErrorKind::WriteZero.into(),
                        ));
                    }
                    Ok(n) => IoSlice::advance_slices(&mut rest, n),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::io("write", &self.path, e)),
                }
            }
        }
        self.run.clear();
        Ok(())
    }

    /// Puts a file written beside the one it replaces in its place (a symlink or a hard link
    /// there is replaced, never written through).
    fn commit(self) -> Result<()> {
        let Some(beside) = &self.beside else {
            return Ok(());
        };
        std::fs::rename(beside, &self.path).map_err(|e| {
            // Not over a directory, say: nothing of this restore is left beside it.
            let _ = std::fs::remove_file(beside);
            Error::io("replace", &self.path, e)
        })
    }

    /// Removes what was written of a file the restore could not finish: a file it replaces
    /// stays as it was; a new one is not left truncated under its name.
    fn discard(self) {
        drop(self.file);
        let _ = std::fs::remove_file(self.beside.as_ref().unwrap_or(&self.path));
    }

    /// Writes what is left; a file that ends in zeros skipped gets its length.
    fn finish(&mut self) -> Result<()> {
        let hole = self.hole > 0;
        self.end_hole()?;
        if hole && self.sparse {
            self.file
                .set_len(self.pos)
                .map_err(|e| Error::io("set the length of", &self.path, e))?;
        }
        Ok(())
    }
}

/// A file a restore writes: its path, its number of chunks and its node.
type ToWrite = (PathBuf, usize, usize);

/// Which writer each chunk of a restore goes to: writers take runs of files of one directory
/// in turn ([`WRITER_RUN`]).
struct Route {
    /// The files still to come, each with its number of chunks and its writer; the current
    /// file's chunks still to come and its writer.
    files: std::vec::IntoIter<(usize, usize)>,
    left: usize,
    lane: usize,
}

impl Route {
    /// Parts `files` between the writers, and routes their chunks after them.
    fn new(files: Vec<ToWrite>, nodes: &[Node]) -> (Self, [Vec<ToWrite>; WRITERS]) {
        let mut counts = Vec::with_capacity(files.len());
        let mut lanes: [Vec<ToWrite>; WRITERS] = Default::default();
        let (mut lane, mut run, mut bytes) = (0, 0, 0);
        for f in files {
            let size = nodes.get(f.2).map_or(0, |n| n.size);
            // The file before this one is the last of the current writer's.
            let same_dir = lanes[lane]
                .last()
                .is_some_and(|last| last.0.parent() == f.0.parent());
            if !same_dir || run == WRITER_RUN.0 || bytes >= WRITER_RUN.1 {
                if run > 0 {
                    lane = (lane + 1) % WRITERS;
                }
                (run, bytes) = (0, 0);
            }
            (run, bytes) = (run + 1, bytes + size);
            counts.push((f.1, lane));
            lanes[lane].push(f);
        }
        let route = Self {
            files: counts.into_iter(),
            left: 0,
            lane: 0,
        };
        (route, lanes)
    }

    /// `chunks`, the next in order, parted by writer. Chunks beyond the files' go to the last
    /// file's writer, which says that the restore produced more than the snapshot lists.
    fn split(&mut self, chunks: Vec<Bytes>) -> [Vec<Bytes>; WRITERS] {
        let mut out: [Vec<Bytes>; WRITERS] = Default::default();
        for c in chunks {
            while self.left == 0 {
                let Some((n, lane)) = self.files.next() else {
                    break;
                };
                (self.left, self.lane) = (n, lane);
            }
            self.left = self.left.saturating_sub(1);
            out[self.lane].push(c);
        }
        out
    }
}

/// Writes `files` (path, number of chunks, node in `nodes`) from the chunks received on `rx`,
/// in order, leaving holes for zero blocks when `sparse`, and gives each its node's metadata
/// once written with `meta`. A file the restore could not finish — a write failed (a full
/// disk), or the chunks stopped coming (the caller reports why) — is removed rather than left
/// truncated under its real name, and this writer creates no later file.
fn write_files(
    files: Vec<ToWrite>,
    nodes: &[Node],
    rx: tokio::sync::mpsc::Receiver<Vec<Bytes>>,
    sparse: bool,
    meta: &Meta,
) -> Result<()> {
    let mut current = None;
    let written = write_all(files, nodes, rx, sparse, &mut current, meta);
    if let Some(f) = current.take() {
        f.discard();
    }
    written
}

fn write_all(
    files: Vec<ToWrite>,
    nodes: &[Node],
    mut rx: tokio::sync::mpsc::Receiver<Vec<Bytes>>,
    sparse: bool,
    current: &mut Option<Restoring>,
    meta: &Meta,
) -> Result<()> {
    let mut files = files.into_iter();
    // Finishes the current file, if any, and starts the next; false when none is left.
    let mut next = |current: &mut Option<Restoring>| -> Result<bool> {
        if let Some(f) = current.as_mut() {
            f.finish()?;
        }
        // Written whole: kept even if its metadata cannot be set.
        if let Some(f) = current.take() {
            let set = match nodes.get(f.node) {
                Some(node) => meta.set_file(&f.file, &f.path, node),
                None => Err(Error::Invalid(format!(
                    "restore lost the node of {}",
                    f.path.display()
                ))),
            };
            f.commit()?;
            set?;
        }
        match files.next() {
            Some((p, n, node)) => {
                *current = Some(Restoring::create(p, n, node, sparse)?);
                Ok(true)
            }
            None => Ok(false),
        }
    };
    if !next(current)? {
        return Ok(());
    }
    // Chunks of the current file are gathered and written in one vectored call per message,
    // straight from the decoded frames.
    while let Some(item) = rx.blocking_recv() {
        for chunk in item {
            while current.as_ref().is_some_and(|c| c.left == 0) {
                if !next(current)? {
                    return Err(Error::Invalid(
                        "restore produced more data than the snapshot lists".into(),
                    ));
                }
            }
            let Some(f) = current.as_mut() else {
                break;
            };
            f.push(chunk)?;
        }
        if let Some(f) = current.as_mut() {
            f.write()?;
        }
    }
    // What is left are empty files, unless the chunks stopped early.
    loop {
        if let Some(f) = current.as_ref()
            && f.left > 0
        {
            return Err(Error::Invalid(format!(
                "the restore stopped before {} was complete",
                f.path.display()
            )));
        }
        if !next(current)? {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sources_are_cleaned_by_their_text() {
        for (given, clean) in [
            ("/data/s2/", "/data/s2"),
            ("/data/./s2", "/data/s2"),
            ("/data/s2/../s2", "/data/s2"),
            ("/../data", "/data"),
            ("/", "/"),
        ] {
            assert_eq!(
                super::clean(std::path::Path::new(given)).to_str(),
                Some(clean)
            );
        }
    }

    use super::*;

    /// What a feed sent, one word or two an input: `data N`, `end` or `other`.
    fn received(rx: &mut tokio::sync::mpsc::Receiver<Input>) -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(i) = rx.try_recv() {
            seen.extend(unbatched(i).into_iter().map(|i| match i {
                Input::Data(d) => format!("data {}", d.len()),
                Input::EndFile => "end".into(),
                _ => "other".into(),
            }));
        }
        seen
    }

    /// The inputs a message brings, in order.
    fn unbatched(i: Input) -> Vec<Input> {
        match i {
            Input::Batch(b) => b,
            i => vec![i],
        }
    }

    /// Files whose paths share a hash are each compared: the one with the recorded inode,
    /// size and times is taken, and none when no record is of the same file.
    #[test]
    fn files_recorded_under_one_hash_are_each_compared() {
        let id = |b: u8| ChunkId([b; 32]);
        let file = |path: &str, inode: u64, chunk: u8| ParentFile {
            path: path.into(),
            path_raw: None,
            kind: NodeKind::File,
            size: 100,
            mtime_ns: 5,
            ctime_ns: Some(5),
            inode: Some(inode),
            chunks: ChunkList(vec![id(chunk)]),
            lists: ChunkList::default(),
        };
        // Two files recorded under one path's hash, as a collision of two paths would be.
        let mut files = ParentIndex::default();
        files.keep(file("a/x", 1, 1));
        files.keep(file("a/x", 2, 2));
        files.keep(file("a/y", 3, 3));
        let mut parent = ParentFiles {
            id: String::new(),
            started_ns: 10_000_000_000,
            files: files.sorted(),
            repairs_seen: Vec::new(),
            repaired_since: false,
        };
        let now = |path: &str, inode: u64| {
            let mut n = dir_node(path.into(), &std::fs::metadata(".").expect("cwd"));
            (n.kind, n.size, n.mtime_ns) = (NodeKind::File, 100, 5);
            (n.ctime_ns, n.inode) = (Some(5), Some(inode));
            n
        };
        let ids = |p: &ParentFiles, now: Node, indexed: &dyn Fn(&ChunkId) -> bool| {
            p.same_file(&now, indexed)
                .map(|f| p.files.ids_of(f).to_vec())
        };
        assert_eq!(ids(&parent, now("a/x", 2), &|_| true), Some(vec![id(2)]));
        assert_eq!(ids(&parent, now("a/x", 1), &|_| true), Some(vec![id(1)]));
        assert_eq!(ids(&parent, now("a/x", 4), &|_| true), None);
        assert_eq!(ids(&parent, now("a/z", 3), &|_| true), None);
        // Not taken when a chunk is gone from the index, nor when the file changed too close
        // to the parent's start.
        assert_eq!(ids(&parent, now("a/y", 3), &|c| *c != id(3)), None);
        assert_eq!(ids(&parent, now("a/y", 3), &|_| true), Some(vec![id(3)]));
        parent.started_ns = 5 + CHANGE_MARGIN_NS;
        assert_eq!(ids(&parent, now("a/y", 3), &|_| true), None);
    }

    #[test]
    fn a_file_removed_before_it_is_read_is_left_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, gone, c) = (
            dir.path().join("a"),
            dir.path().join("gone"),
            dir.path().join("c"),
        );
        std::fs::write(&a, b"alpha").expect("a");
        std::fs::write(&c, b"").expect("c");
        let files = vec![(a, 5), (gone, 3), (c, 0)];
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let left_out =
            feed(&files, false, &tx, &Pool::new(1), None, &LeftOut::default()).expect("fed");
        assert_eq!(left_out, [1]);
        drop(tx);
        let seen = received(&mut rx);
        // Every file ends, the one removed empty: the pipeline's files stay in step.
        assert_eq!(seen, ["data 5", "end", "end", "end"]);

        let meta = std::fs::metadata(dir.path()).expect("meta");
        let node = |path: &str, kind| Node {
            kind,
            ..dir_node(path.into(), &meta)
        };
        let mut nodes = vec![
            node("a", NodeKind::File),
            node("d", NodeKind::Dir),
            node("gone", NodeKind::File),
            node("c", NodeKind::File),
        ];
        drop_files(&mut nodes, &left_out);
        let kept: Vec<&str> = nodes.iter().map(|n| n.path.as_str()).collect();
        assert_eq!(kept, ["a", "d", "c"]);
    }

    /// With the root's device, a directory where another filesystem is mounted is kept and
    /// not entered. `/dev/shm`, a tmpfs on every Linux this runs on, is one under `/dev`.
    #[cfg(target_os = "linux")]
    #[test]
    fn one_file_system_keeps_mount_points_empty() {
        let dev = std::fs::metadata("/dev").expect("/dev");
        let shm = std::fs::metadata("/dev/shm").expect("/dev/shm");
        assert_ne!(
            device_of(&dev),
            device_of(&shm),
            "/dev/shm is not a mount here"
        );
        let name = format!("cairn-one-fs-{}", std::process::id());
        let file = Path::new("/dev/shm").join(&name);
        std::fs::write(&file, b"x").expect("a file in /dev/shm");
        let walked = |device| walk(Path::new("/dev"), None, &[], device, &LeftOut::default());
        let within = walked(device_of(&dev));
        let across = walked(None);
        let _ = std::fs::remove_file(&file);
        let (within, across) = (within.expect("walk"), across.expect("walk"));
        let has = |nodes: &[Node], path: &str| nodes.iter().any(|n| n.path == path);
        assert!(has(&within, "shm") && !has(&within, &format!("shm/{name}")));
        assert!(has(&across, "shm") && has(&across, &format!("shm/{name}")));
    }

    /// A file the disk or kernel will not read (an input/output error) is left out and
    /// counted, as one without permission is: it does not fail the whole backup.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_file_that_fails_to_read_is_left_out_and_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, c) = (dir.path().join("a"), dir.path().join("c"));
        std::fs::write(&a, b"alpha").expect("a");
        std::fs::write(&c, b"gamma").expect("c");
        // Its first page is not mapped: reading it is EIO.
        let files = vec![(a, 5), (PathBuf::from("/proc/self/mem"), 4096), (c, 5)];
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let skipped = LeftOut::default();
        let left_out = feed(&files, false, &tx, &Pool::new(1), None, &skipped).expect("fed");
        assert_eq!((left_out, skipped.count()), (vec![1], 1));
        assert_eq!(skipped.named()[0].path, files[1].0.display().to_string());
        drop(tx);
        let seen = received(&mut rx);
        assert_eq!(seen, ["data 5", "end", "end", "data 5", "end"]);
    }

    #[test]
    fn small_files_go_in_few_messages_and_sizes_are_only_hints() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut files = Vec::new();
        for i in 0..300 {
            let p = dir.path().join(format!("f{i}"));
            std::fs::write(&p, vec![b'x'; 100]).expect("write");
            files.push((p, 100));
        }
        // Sizes as the walk saw them: one file grew since, one shrank.
        let (grown, shrunk) = (dir.path().join("grown"), dir.path().join("shrunk"));
        std::fs::write(&grown, vec![1u8; (5 << 20) / 2]).expect("grown");
        std::fs::write(&shrunk, vec![2u8; 300]).expect("shrunk");
        files.push((grown, 10));
        files.push((shrunk, 5000));
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let reader = std::thread::spawn(move || {
            feed(&files, true, &tx, &Pool::new(1), None, &LeftOut::default())
        });
        let (mut messages, mut sizes, mut size) = (0, Vec::new(), 0);
        while let Some(m) = rx.blocking_recv() {
            messages += 1;
            for i in unbatched(m) {
                match i {
                    Input::Data(d) => size += d.len(),
                    Input::EndFile => sizes.push(std::mem::take(&mut size)),
                    _ => {}
                }
            }
        }
        reader.join().expect("reader").expect("fed");
        assert_eq!(sizes.len(), 302);
        assert!(sizes[..300].iter().all(|&n| n == 100));
        assert_eq!(sizes[300..], [(5 << 20) / 2, 300]);
        // 300 small files in one message (900 inputs), the grown one in its blocks.
        assert!(messages <= 6, "{messages} messages");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn holes_are_passed_on_unread() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().expect("tempdir");
        // 1 MiB of data, a hole to 5 MiB + 12 KiB, 20 KB of data, a hole to 24 MiB.
        let path = dir.path().join("disk.img");
        let f = std::fs::File::create(&path).expect("create");
        f.set_len(24 << 20).expect("length");
        f.write_all_at(&[7u8; 1 << 20], 0).expect("head");
        f.write_all_at(&[9u8; 20_000], (5 << 20) + 12_288)
            .expect("middle");
        drop(f);
        let files = vec![(path, 24 << 20)];
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let reader = std::thread::spawn(move || {
            feed(&files, true, &tx, &Pool::new(1), None, &LeftOut::default())
        });
        let (mut data, mut zeros, mut data_nonzero) = (0u64, 0u64, 0u64);
        while let Some(i) = rx.blocking_recv() {
            for i in unbatched(i) {
                match i {
                    Input::Data(d) => {
                        data += d.len() as u64;
                        data_nonzero += d.iter().filter(|&&b| b != 0).count() as u64;
                    }
                    Input::Zeros(n) => zeros += n,
                    _ => {}
                }
            }
        }
        reader.join().expect("reader").expect("fed");
        assert_eq!(data + zeros, 24 << 20, "the whole file, once");
        assert_eq!(data_nonzero, (1 << 20) + 20_000, "all of its data");
        // The holes are not read, but for what follows a region of data within a block.
        assert!(
            zeros >= (24 << 20) - (3 << 20),
            "{zeros} bytes of holes passed on"
        );
    }

    #[test]
    fn zero_runs_are_cut_at_blocks_of_the_file() {
        let b = HOLE_BLOCK as usize;
        let mut buf = vec![0u8; 3 * b];
        buf[b + 7] = 1;
        assert_eq!(leading_run(0, &buf), (true, b));
        assert_eq!(leading_run(0, &buf[b..]), (false, b));
        assert_eq!(leading_run(b as u64, &buf[b..]), (false, b));
        assert_eq!(leading_run(2 * b as u64, &buf[2 * b..]), (true, b));
        // Cut at the file's block edges, not the buffer's: 100 bytes into the file, the
        // buffer's first block ends after b - 100 bytes, and the next holds the 1.
        assert_eq!(leading_run(100, &buf), (true, b - 100));
        assert_eq!(leading_run(0, &[]), (false, 0));
        assert_eq!(leading_run(5, &[1, 0, 0]), (false, 3));
    }

    fn excluded(pattern: &str, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').collect();
        Pattern::parse(pattern).expect("pattern").matches(&parts)
    }

    #[test]
    fn exclude_patterns() {
        // No `/`: a name at any depth.
        assert!(excluded("*.tmp", "a.tmp") && excluded("*.tmp", "x/y/a.tmp"));
        assert!(!excluded("*.tmp", "a.tmpl") && !excluded("*.tmp", "tmp"));
        assert!(excluded("lost+found", "lost+found") && excluded("?.log", "d/a.log"));
        assert!(!excluded("?.log", "ab.log"));
        assert!(excluded("a*b*c", "aXbYbc") && !excluded("a*b*c", "aXbYc_"));
        // With `/`: from the root; `*` stays within a component, `**` crosses them.
        assert!(excluded("pg_wal/**", "pg_wal/0001") && excluded("pg_wal/**", "pg_wal/a/b"));
        assert!(
            !excluded("pg_wal/**", "pg_wal"),
            "the directory itself stays"
        );
        assert!(!excluded("pg_wal/**", "base/pg_wal/1"));
        assert!(excluded("/postmaster.pid", "postmaster.pid"));
        assert!(!excluded("/postmaster.pid", "sub/postmaster.pid"));
        assert!(excluded("data/*.db", "data/x.db") && !excluded("data/*.db", "data/s/x.db"));
        assert!(excluded("**/cache", "a/b/cache") && excluded("**/cache", "cache"));
        assert!(excluded("naïve?", "naïveX"));
        assert!(Pattern::parse("/").is_err() && Pattern::parse("").is_err());
        // Repeated `**` is one: no search of every depth for each.
        assert!(excluded("a/**/**/**/b", "a/b") && excluded("pg_wal/**/**", "pg_wal/x"));
        assert!(!excluded("pg_wal/**/**", "pg_wal"));
        let deep = vec!["d"; 200].join("/");
        assert!(!excluded(&format!("{}/x", vec!["**"; 30].join("/")), &deep));
    }

    /// What a restore writes is its owner's alone until it is whole and gets its recorded
    /// mode: a file read by its owner only is never open to others half written.
    #[cfg(unix)]
    #[test]
    fn restored_files_and_directories_are_private_until_their_mode_is_set() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let mode = |p: &Path| {
            std::fs::symlink_metadata(p)
                .expect("made")
                .permissions()
                .mode()
                & 0o7777
        };
        let d = dir.path().join("a/b");
        make_dir(&d, &mut Loosened::default()).expect("made");
        assert_eq!((mode(&dir.path().join("a")), mode(&d)), (0o700, 0o700));
        let (_, beside) = create_or_beside(&d.join("f"), true).expect("created");
        assert_eq!((beside, mode(&d.join("f"))), (None, 0o600));
        // Beside a file already there, too; a stream restored to a file keeps the umask's.
        let (_, beside) = create_or_beside(&d.join("f"), true).expect("created");
        assert_eq!(mode(beside.as_deref().expect("beside")), 0o600);
        let (_, _) = create_or_beside(&d.join("g"), false).expect("created");
        assert_ne!(mode(&d.join("g")), 0o600);
    }

    /// Set-id bits stay only on a file that got its recorded owner and group.
    #[cfg(unix)]
    #[test]
    fn set_id_bits_go_with_an_owner_that_was_not_given() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let m = std::fs::metadata(dir.path()).expect("meta");
        let node = |mode, uid: u32, gid: u32| Node {
            kind: NodeKind::File,
            mode,
            uid: Some(uid),
            gid: Some(gid),
            ..dir_node("f".into(), &m)
        };
        let stat = || std::fs::metadata(dir.path());
        let meta = Meta::default();
        let (uid, gid) = (m.uid(), m.gid());
        assert_eq!(meta.mode(dir.path(), &node(0o6755, uid, gid), stat), 0o6755);
        assert_eq!(
            meta.mode(dir.path(), &node(0o6755, uid + 1, gid), stat),
            0o2755
        );
        assert_eq!(
            meta.mode(dir.path(), &node(0o6755, uid, gid + 1), stat),
            0o4755
        );
        assert_eq!(
            meta.mode(dir.path(), &node(0o4755, uid + 1, gid + 1), stat),
            0o755
        );
        // A directory's set-group-ID bit gives new files its group, no one a right.
        let dir_node = Node {
            kind: NodeKind::Dir,
            ..node(0o2775, uid + 1, gid + 1)
        };
        assert_eq!(meta.mode(dir.path(), &dir_node, stat), 0o2775);
    }
}
