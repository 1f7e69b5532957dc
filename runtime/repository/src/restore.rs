//! Reading chunks back: plan ranged reads over packs, fetch and decode them in parallel, yield
//! chunk data in order.
//!
//! A snapshot's chunks rarely come from one pack in order: a file whose pages were rewritten
//! since an earlier snapshot alternates between the old pack and the new one, page by page.
//! Planning read by read in chunk order would then issue one small read per switch. Instead the
//! chunk list is cut into windows of bounded size; within a window every pack has its own
//! growing read, so the alternation costs nothing, and the chunks are put back in order as the
//! reads complete.

use crate::backend::Backend;
use crate::crypto::{self, ChunkId, MasterKeys};
use crate::error::{Error, Result};
use crate::format::{self, PackId};
use crate::index::Index;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;

/// Most bytes one ranged read covers (1 MiB): large reads for throughput, small enough that
/// many can be in flight within a bounded memory (a unit of text decodes to about three times
/// its size).
pub(crate) const READ_UNIT_BYTES: u64 = 1 << 20;
/// Largest hole between two needed frames of a pack that is read through rather than split
/// into two requests (256 KiB).
pub(crate) const READ_GAP_BYTES: u64 = 256 << 10;
/// Most chunk bytes one ranged read yields before it takes another frame (2 MiB; read in
/// order, its frames decode to that plus at most one frame). Text compresses 3:1 and some
/// dumps 80:1 (a pgbench table's blank-padded rows): a read bounded by its stored bytes
/// alone would decode to a whole planning window, and the reads in flight and queued held
/// over 100 MiB restoring such a dump.
pub(crate) const READ_UNIT_CHUNK_BYTES: u64 = 2 << 20;
/// Read units fetched and decoded at once, each its own task: enough to keep two cores busy
/// while a large read holds up smaller ones behind it and while the writer drains; with
/// [`READ_UNIT_BYTES`] and [`READ_UNIT_CHUNK_BYTES`] this bounds restore memory. Measured on
/// a 1 GiB tree restore, warm, six alternating runs each (2026-12-04): 8 reads of 2 MiB
/// (4 MiB decoded) median 1.02–1.13 s at 77 MiB; 16 of 2 MiB 0.97–0.99 s at 82–97 MiB;
/// 16 of 1 MiB 0.96–1.01 s at 77–78 MiB; 32 of 512 KiB 1.08 s. Smaller reads balance
/// better over the two cores; more of them buy nothing.
pub(crate) const READS_IN_FLIGHT: usize = 16;
/// Read units in flight from a network store (S3, Azure, GCS), where each read waits on the
/// network more than on the cores. Measured restoring the 1,116 MB day-2 tree of
/// `bench/compare.sh` from `s3s-fs` on loopback (2026-12-07, two runs each): 16 reads
/// 5.6–6.3 s at 85–87 MiB, 32 reads 3.8–4.8 s at 96–108 MiB, 64 reads 3.3–3.8 s at 154–158
/// MiB (over the 128 MiB restore budget); restic 0.14 5.3 s at 151 MiB. Reads of 4 MiB and
/// 16 MiB instead of 1 MiB were slower (7.1–7.4 s, 12–14 s).
pub(crate) const REMOTE_READS_IN_FLIGHT: usize = 32;
/// Most chunk bytes, and most bytes read, in one planning window (8 MiB each). A decoded
/// read is held until the last of its chunks is yielded, which is within its window, so this
/// bounds what restore holds beyond the reads in flight.
pub(crate) const WINDOW_BYTES: u64 = 8 << 20;

/// One ranged read of a pack and the chunks it yields.
#[derive(Debug)]
pub(crate) struct Unit {
    pack: PackId,
    start: u64,
    end: u64,
    /// Frames in the range: (offset in pack, sealed length).
    frames: Vec<(u64, u32)>,
    /// Chunks: (frame number in `frames`, offset in the decoded frame, length, id).
    chunks: Vec<(u32, u32, u32, ChunkId)>,
    /// The sum of the chunks' lengths.
    chunk_bytes: u64,
}

/// The reads for a sequence of chunks, and where each chunk comes from.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Reads, numbered in the order their first chunk is needed.
    units: Vec<Unit>,
    /// For every chunk in order: (read number, index among that read's chunks), or
    /// ([`ZEROS_READ`], length) for a chunk of zeros.
    order: Vec<(u32, u32)>,
}

/// The read number of a chunk of zeros: its id is the hash of zeros of its length, so it is
/// what it names without being read (a disk image's holes, restored at memory speed).
const ZEROS_READ: u32 = u32::MAX;

/// Plans the reads for a sequence of chunks; a chunk missing from the index is an error naming
/// the chunk.
pub(crate) fn plan(index: &Index, keys: &MasterKeys, ids: &[ChunkId]) -> Result<Plan> {
    let mut plan = Plan::default();
    // The id of a chunk of zeros of each length met that could be one.
    let mut zero_ids: HashMap<u32, ChunkId> = HashMap::new();
    // Within the current window: the read still growing per pack, and where each frame
    // already planned is (read, frame number).
    let mut growing: HashMap<u32, usize> = HashMap::new();
    let mut frames: HashMap<(u32, u64), (usize, u32)> = HashMap::new();
    let (mut chunk_bytes, mut read_bytes) = (0u64, 0u64);
    for id in ids {
        let loc = index.get(id).ok_or_else(|| Error::Missing {
            object: format!("chunk {id}"),
            snapshots: Vec::new(),
        })?;
        // Runs of zeros are cut into whole pages (page chunks, or content-defined chunks cut
        // at their largest size); other lengths are not worth hashing zeros for.
        if loc.len % 4096 == 0
            && let Some(zeros) = crate::pipeline::ZEROS.get(..loc.len as usize)
        {
            let zero = zero_ids
                .entry(loc.len)
                .or_insert_with(|| keys.chunk_id(zeros));
            if zero == id {
                plan.order.push((ZEROS_READ, loc.len));
                continue;
            }
        }
        if chunk_bytes >= WINDOW_BYTES || read_bytes >= WINDOW_BYTES {
            growing.clear();
            frames.clear();
            (chunk_bytes, read_bytes) = (0, 0);
        }
        let (fo, fl) = (u64::from(loc.frame_off), loc.frame_len);
        let (u, n) = match frames.get(&(loc.pack, fo)) {
            Some(&at) => at,
            None => {
                let extends = growing.get(&loc.pack).copied().filter(|&u| {
                    let g = &plan.units[u];
                    fo >= g.end
                        && fo - g.end <= READ_GAP_BYTES
                        && fo + u64::from(fl) - g.start <= READ_UNIT_BYTES
                        && g.chunk_bytes < READ_UNIT_CHUNK_BYTES
                });
                let u = match extends {
                    Some(u) => u,
                    None => {
                        plan.units.push(Unit {
                            pack: index.packs[loc.pack as usize],
                            start: fo,
                            end: fo,
                            frames: Vec::new(),
                            chunks: Vec::new(),
                            chunk_bytes: 0,
                        });
                        growing.insert(loc.pack, plan.units.len() - 1);
                        plan.units.len() - 1
                    }
                };
                let g = &mut plan.units[u];
                let n = g.frames.len() as u32;
                g.frames.push((fo, fl));
                // A new read starts at the frame; a growing one reads through the hole.
                read_bytes += fo + u64::from(fl) - g.end;
                g.end = fo + u64::from(fl);
                frames.insert((loc.pack, fo), (u, n));
                (u, n)
            }
        };
        let g = &mut plan.units[u];
        plan.order.push((u as u32, g.chunks.len() as u32));
        g.chunks.push((n, loc.inner_off, loc.len, *id));
        g.chunk_bytes += u64::from(loc.len);
        chunk_bytes += u64::from(loc.len);
    }
    Ok(plan)
}

/// Fetches and decodes one unit: every frame is authenticated, decompressed with a bound, and
/// every chunk's keyed hash checked.
async fn fetch(backend: &Backend, keys: Arc<MasterKeys>, u: Unit) -> Result<Vec<Bytes>> {
    let hex = format::pack_hex(&u.pack);
    let path = format::pack_path(&hex);
    let data = backend.get_range(&path, u.start..u.end).await?;
    if (data.len() as u64) < u.end - u.start {
        return Err(Error::corrupt(&path, "is truncated"));
    }
    tokio::task::spawn_blocking(move || decode_unit(&keys, &u, &hex, &path, data))
        .await
        .map_err(|e| Error::Invalid(format!("decode task failed: {e}")))?
}

/// Decodes the sealed frame at `off` of a pack.
pub(crate) fn decode_frame(
    keys: &MasterKeys,
    pack_hex: &str,
    path: &str,
    off: u64,
    sealed: &[u8],
) -> Result<Bytes> {
    let mut buf = BytesMut::from(sealed);
    let plain = open_frame(keys, pack_hex, path, off, &mut buf)?;
    decode_plain(buf.freeze().slice(plain), path, off)
}

/// Authenticates and decrypts a sealed frame where it lies; returns where its plaintext is.
fn open_frame(
    keys: &MasterKeys,
    pack_hex: &str,
    path: &str,
    off: u64,
    sealed: &mut [u8],
) -> Result<Range<usize>> {
    keys.open_in_place(&crypto::frame_aad(pack_hex, off), sealed)
        .ok_or_else(|| Error::corrupt(path, format!("frame at offset {off} fails authentication")))
}

fn decode_plain(plain: Bytes, path: &str, off: u64) -> Result<Bytes> {
    crypto::decode_payload_bytes(plain, format::MAX_FRAME_BYTES)
        .ok_or_else(|| Error::corrupt(path, format!("frame at offset {off} cannot be decoded")))
}

/// Decodes a unit's frames in the buffer they were read into (no copy of the ciphertext;
/// stored frames are slices of it) and checks its chunks.
fn decode_unit(
    keys: &MasterKeys,
    u: &Unit,
    hex: &str,
    path: &str,
    data: Bytes,
) -> Result<Vec<Bytes>> {
    let mut buf = data
        .try_into_mut()
        .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
    let mut plain = Vec::with_capacity(u.frames.len());
    for &(off, len) in &u.frames {
        let s = (off - u.start) as usize;
        let sealed = buf
            .get_mut(s..s + len as usize)
            .ok_or_else(|| Error::corrupt(path, "is truncated"))?;
        let r = open_frame(keys, hex, path, off, sealed)?;
        plain.push(s + r.start..s + r.end);
    }
    let buf = buf.freeze();
    let mut frames = Vec::with_capacity(plain.len());
    for (r, &(off, _)) in plain.into_iter().zip(&u.frames) {
        frames.push(decode_plain(buf.slice(r), path, off)?);
    }
    let mut out = Vec::with_capacity(u.chunks.len());
    for &(n, inner, len, id) in &u.chunks {
        let f = &frames[n as usize];
        let (a, b) = (inner as usize, inner as usize + len as usize);
        if b > f.len() {
            return Err(Error::corrupt(
                path,
                format!("chunk {id} lies outside its frame"),
            ));
        }
        let c = f.slice(a..b);
        if keys.chunk_id(&c) != id {
            return Err(Error::corrupt(
                path,
                format!("chunk {id} does not match its hash"),
            ));
        }
        out.push(c);
    }
    Ok(out)
}

/// Decoded chunks of `plan`, in order, with at most [`READS_IN_FLIGHT`] reads at once
/// ([`REMOTE_READS_IN_FLIGHT`] from a network store). Each item is the run of chunks that the
/// latest completed read made ready.
pub(crate) fn chunks(
    backend: Backend,
    keys: Arc<MasterKeys>,
    plan: Plan,
) -> impl Stream<Item = Result<Vec<Bytes>>> + Send + 'static {
    let Plan { units, order } = plan;
    let mut remaining: Vec<u32> = units.iter().map(|u| u.chunks.len() as u32).collect();
    let in_flight = if backend.remote() {
        REMOTE_READS_IN_FLIGHT
    } else {
        READS_IN_FLIGHT
    };
    // Each read is its own task, so reads and decoding go on while the consumer is busy
    // writing (the stream is not polled then); dropping the stream aborts the tasks.
    let reads = futures::stream::iter(units)
        .map(move |u| {
            let (b, k) = (backend.clone(), keys.clone());
            Task(tokio::spawn(async move { fetch(&b, k, u).await }))
        })
        .buffered(in_flight);
    // Reads complete in their order. `held` holds the decoded reads from number `first` on;
    // a read is released (None) once all its chunks are yielded. After the last read, an
    // item (None) yields the chunks of zeros that follow it.
    let mut held: VecDeque<Option<Vec<Bytes>>> = VecDeque::new();
    let (mut first, mut next) = (0usize, 0usize);
    reads
        .map(Some)
        .chain(futures::stream::iter([None]))
        .map(move |r| {
            match r {
                Some(r) => held.push_back(Some(r?)),
                None if next == order.len() => return Ok(Vec::new()),
                None => {}
            }
            let done = first + held.len();
            let mut out = Vec::new();
            while let Some(&(u, i)) = order.get(next) {
                if u == ZEROS_READ {
                    out.push(Bytes::from_static(&crate::pipeline::ZEROS[..i as usize]));
                    next += 1;
                    continue;
                }
                let u = u as usize;
                if u >= done {
                    break;
                }
                let slot = &mut held[u - first];
                let Some(chunks) = slot else {
                    return Err(Error::Invalid(format!(
                        "restore plan reuses released read {u}"
                    )));
                };
                out.push(chunks[i as usize].clone());
                remaining[u] -= 1;
                if remaining[u] == 0 {
                    *slot = None;
                }
                next += 1;
            }
            while held.front().is_some_and(Option::is_none) {
                held.pop_front();
                first += 1;
            }
            Ok(out)
        })
}

/// A spawned read: aborted when dropped (a restore that stops early leaves no reads behind),
/// and its result with a panic or cancellation turned into an error.
struct Task(tokio::task::JoinHandle<Result<Vec<Bytes>>>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::future::Future for Task {
    type Output = Result<Vec<Bytes>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| {
            r.unwrap_or_else(|e| Err(Error::Invalid(format!("restore read task failed: {e}"))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Entry;
    use crate::index::IndexBuilder;

    /// One pack of `frames` frames of 512 KiB of chunks (eight of 64 KiB each), each frame
    /// stored in `stored` bytes; the chunks' ids in pack order.
    fn pack(frames: u32, stored: u32) -> (Index, Vec<ChunkId>) {
        let entries: Vec<Entry> = (0..frames * 8)
            .map(|i| Entry {
                id: ChunkId(*blake3::hash(&i.to_le_bytes()).as_bytes()),
                frame_off: i / 8 * stored,
                frame_len: stored,
                inner_off: i % 8 * (64 << 10),
                len: 64 << 10,
            })
            .collect();
        let ids = entries.iter().map(|e| e.id).collect();
        let mut b = IndexBuilder::with_capacity(entries.len());
        b.add([0; 16], &entries);
        (b.finish(), ids)
    }

    #[test]
    fn chunks_of_zeros_are_planned_without_reads() {
        let keys = MasterKeys::generate();
        let zero = keys.chunk_id(&[0u8; 8192]);
        let other = ChunkId(*blake3::hash(b"other").as_bytes());
        let at = |id, frame_off, len| Entry {
            id,
            frame_off,
            frame_len: 100,
            inner_off: 0,
            len,
        };
        let mut b = IndexBuilder::with_capacity(2);
        b.add([0; 16], &[at(zero, 0, 8192), at(other, 100, 10)]);
        let index = b.finish();
        let plan = plan(&index, &keys, &[zero, other, zero]).expect("every chunk is indexed");
        assert_eq!(plan.units.len(), 1, "one read, for the other chunk");
        assert_eq!(plan.order, [(ZEROS_READ, 8192), (0, 0), (ZEROS_READ, 8192)]);
    }

    #[test]
    fn a_read_decodes_to_a_bounded_size_however_well_its_frames_compressed() {
        // 80:1 (blank-padded rows), 3:1 (text), stored raw.
        for stored in [6 << 10, 170 << 10, 512 << 10] {
            let (index, ids) = pack(64, stored);
            let keys = MasterKeys::generate();
            let plan = plan(&index, &keys, &ids).expect("every chunk is indexed");
            for u in &plan.units {
                assert!(u.end - u.start <= READ_UNIT_BYTES, "{stored}: {u:?}");
                assert!(
                    u.chunk_bytes <= (4 << 20) + (512 << 10),
                    "{stored}: {} chunk bytes",
                    u.chunk_bytes
                );
            }
            // Every chunk once, in order.
            assert_eq!(plan.order.len(), ids.len());
            let total: u64 = plan.units.iter().map(|u| u.chunk_bytes).sum();
            assert_eq!(total, 64 * (512 << 10));
        }
    }
}
