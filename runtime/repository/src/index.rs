//! The repository's chunk index in memory: every chunk id and where it lives.
//!
//! Page-aligned chunks make chunks small (8 KiB), so a repository holds many of them: 128 Ki
//! per GiB of new data. A hash map spent 62–111 bytes on each (the 52 bytes of id and place,
//! then the table's control bytes and the slack it keeps for growth). The index is built
//! whole from the index files and never changed afterwards (a reload builds a new one), so it
//! is kept as one sorted array instead: 44 bytes per chunk, the place of its frame shared with
//! the other chunks of that frame, and a table of bucket starts on the ids' first bits (1–2
//! bytes per chunk) that leaves a lookup a scan of two or three chunks. Lookups take 2–3 times
//! a hash map's (on this project's VM, 32 ns against 10–20 at 136 Ki chunks), which a backup
//! or a restore spends once per chunk: 4 ms per GiB.

use crate::crypto::ChunkId;
use crate::format::{Entry, PackId};
use rayon::slice::ParallelSliceMut;
use std::collections::HashMap;

/// Chunks per bucket the bucket table aims at (2–4 in practice).
const PER_BUCKET: usize = 2;
/// Largest bucket table: 2^26 starts (256 MiB), reached at 128 Mi chunks (1 TiB of pages).
const MAX_BUCKET_BITS: u32 = 26;

/// Where a chunk lives: pack (index into the pack table), frame, and place in the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub(crate) pack: u32,
    pub(crate) frame_off: u32,
    pub(crate) frame_len: u32,
    pub(crate) inner_off: u32,
    pub(crate) len: u32,
}

/// A frame: its pack (index into the pack table) and its place in the pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    pack: u32,
    off: u32,
    len: u32,
}

/// One chunk: its id, its frame (index into the frame table) and its place in the frame.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: ChunkId,
    frame: u32,
    inner_off: u32,
    len: u32,
}

/// The repository's chunk index, merged from all index files; built by [`IndexBuilder`].
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub(crate) packs: Vec<PackId>,
    frames: Vec<Frame>,
    /// Sorted by id, one per id.
    slots: Vec<Slot>,
    /// The other places of chunks stored more than once (by backups that ran at once, each
    /// not seeing the other's): what those copies take is unused, for prune to free.
    duplicates: Vec<Slot>,
    /// Bucket `b` (the id's first `bits` bits) is `slots[starts[b]..starts[b + 1]]`.
    starts: Vec<u32>,
    bits: u32,
    /// Index objects merged in, by id, with the packs each references.
    pub(crate) files: HashMap<String, Vec<PackId>>,
}

impl Index {
    /// Where chunk `id` lives, if the index holds it.
    pub(crate) fn get(&self, id: &ChunkId) -> Option<Loc> {
        let b = self.bucket(id);
        let (lo, hi) = (*self.starts.get(b)?, *self.starts.get(b + 1)?);
        let key = prefix(id);
        // A bucket holds a few chunks: a scan in order beats a binary search's branches.
        for s in &self.slots[lo as usize..hi as usize] {
            match prefix(&s.id).cmp(&key) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal if s.id == *id => return Some(self.loc(s)),
                std::cmp::Ordering::Equal => {}
                std::cmp::Ordering::Greater => return None,
            }
        }
        None
    }

    pub(crate) fn contains(&self, id: &ChunkId) -> bool {
        self.get(id).is_some()
    }

    /// Every chunk and where it lives, in id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&ChunkId, Loc)> {
        self.slots.iter().map(|s| (&s.id, self.loc(s)))
    }

    /// The places of chunks the index holds elsewhere too (see [`Index::get`] for the one
    /// it reads): copies a prune may free.
    pub(crate) fn duplicates(&self) -> impl Iterator<Item = (&ChunkId, Loc)> {
        self.duplicates.iter().map(|s| (&s.id, self.loc(s)))
    }

    /// How many chunks the index holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Bytes the index holds on the heap for its chunks (the pack table and file list aside).
    #[cfg(test)]
    fn chunk_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<Slot>()
            + self.frames.capacity() * size_of::<Frame>()
            + self.starts.capacity() * size_of::<u32>()
    }

    fn loc(&self, s: &Slot) -> Loc {
        let f = self.frames[s.frame as usize];
        Loc {
            pack: f.pack,
            frame_off: f.off,
            frame_len: f.len,
            inner_off: s.inner_off,
            len: s.len,
        }
    }

    fn bucket(&self, id: &ChunkId) -> usize {
        bucket_of(id, self.bits)
    }
}

/// The first 8 bytes of `id`, as a number that sorts as the bytes do.
fn prefix(id: &ChunkId) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&id.0[..8]);
    u64::from_be_bytes(first)
}

/// The ids' byte order. Ids are uniformly random, so the first 8 bytes, compared as one number,
/// almost always decide it: the whole ids are compared only when those are equal.
fn order(a: &ChunkId, b: &ChunkId) -> std::cmp::Ordering {
    prefix(a).cmp(&prefix(b)).then_with(|| a.0.cmp(&b.0))
}

/// The bucket of `id` in a table of `2^bits` buckets: its first `bits` bits.
fn bucket_of(id: &ChunkId, bits: u32) -> usize {
    if bits == 0 {
        return 0;
    }
    (prefix(id) >> (64 - bits)) as usize
}

/// Collects index entries, then sorts them into an [`Index`].
#[derive(Debug, Default)]
pub(crate) struct IndexBuilder {
    index: Index,
    pack_pos: HashMap<PackId, u32>,
    /// The first slots, already sorted and one per id: those of an index built before.
    sorted: usize,
}

impl IndexBuilder {
    /// A builder with room for `chunks` entries.
    pub(crate) fn with_capacity(chunks: usize) -> Self {
        let mut b = Self::default();
        b.reserve(chunks);
        b
    }

    /// A builder that adds to `index`: the new entries are sorted and merged into its slots
    /// rather than all of them sorted again.
    pub(crate) fn extend(index: Index) -> Self {
        let pack_pos = (0u32..).zip(&index.packs).map(|(n, p)| (*p, n)).collect();
        let sorted = index.slots.len();
        Self {
            index,
            pack_pos,
            sorted,
        }
    }

    /// Room for `chunks` more entries, if memory allows: `chunks` is an estimate from listed
    /// sizes, which a stray object or a server can make absurd; entries still fit as they come.
    pub(crate) fn reserve(&mut self, chunks: usize) {
        let _ = self.index.slots.try_reserve_exact(chunks);
    }

    /// Adds the entries of one pack.
    pub(crate) fn add(&mut self, pack: PackId, entries: &[Entry]) {
        let pack = match self.pack_pos.get(&pack) {
            Some(&n) => n,
            None => {
                let n = self.index.packs.len() as u32;
                self.index.packs.push(pack);
                self.pack_pos.insert(pack, n);
                n
            }
        };
        let frames = &mut self.index.frames;
        for e in entries {
            let frame = Frame {
                pack,
                off: e.frame_off,
                len: e.frame_len,
            };
            // A pack's entries come in pack order, so the chunks of a frame are neighbours.
            if frames.last() != Some(&frame) {
                frames.push(frame);
            }
            self.index.slots.push(Slot {
                id: e.id,
                frame: (frames.len() - 1) as u32,
                inner_off: e.inner_off,
                len: e.len,
            });
        }
    }

    /// Adds index object `id`: the entries of each of its packs.
    pub(crate) fn add_file(&mut self, id: String, packs: Vec<(PackId, Vec<Entry>)>) {
        let mut names = Vec::with_capacity(packs.len());
        for (pack, entries) in packs {
            self.add(pack, &entries);
            names.push(pack);
        }
        self.index.files.insert(id, names);
    }

    /// Sorts the entries by id, keeps one place of each id, and builds the bucket table.
    pub(crate) fn finish(self) -> Index {
        let mut index = self.index;
        // Of a chunk's places, the one in the pack of lowest id is read: the same place
        // whatever order the files came in, and for two backups that stored the same data
        // at once, mostly all of one's packs, so the other's are left unused whole.
        let (frames, packs) = (&index.frames, &index.packs);
        let pack_of = |s: &Slot| packs[frames[s.frame as usize].pack as usize];
        let by_id_then_pack =
            |a: &Slot, b: &Slot| order(&a.id, &b.id).then_with(|| pack_of(a).cmp(&pack_of(b)));
        if self.sorted == 0 {
            // On every core: a large repository's index is millions of slots, sorted before
            // any backup or restore can start.
            index.slots.par_sort_unstable_by(by_id_then_pack);
        } else {
            // A sorted run, then the new entries: the standard sort finds the run, sorts only
            // the rest and merges the two, in a pass over the whole.
            index.slots.sort_by(by_id_then_pack);
        }
        // A chunk stored twice (by backups that ran at once) is in the index twice: the
        // first place is kept, the others noted apart.
        let place = |s: &Slot| (index.frames[s.frame as usize], s.inner_off);
        let duplicates: Vec<Slot> = index
            .slots
            .windows(2)
            .filter(|w| w[0].id == w[1].id && place(&w[0]) != place(&w[1]))
            .map(|w| w[1])
            .collect();
        index.duplicates.extend(duplicates);
        index.slots.dedup_by(|a, b| a.id == b.id);
        index.slots.shrink_to_fit();
        index.frames.shrink_to_fit();
        let n = index.slots.len();
        index.bits = (n / PER_BUCKET).max(1).ilog2().min(MAX_BUCKET_BITS);
        let buckets = 1usize << index.bits;
        let mut starts = Vec::with_capacity(buckets + 1);
        let mut i = 0;
        for b in 0..buckets {
            while i < n && bucket_of(&index.slots[i].id, index.bits) < b {
                i += 1;
            }
            starts.push(i as u32);
        }
        starts.push(n as u32);
        index.starts = starts;
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u32) -> ChunkId {
        ChunkId(*blake3::hash(&i.to_le_bytes()).as_bytes())
    }

    fn entry(i: u32, frame_off: u32) -> Entry {
        Entry {
            id: id(i),
            frame_off,
            frame_len: 1000,
            inner_off: i % 16 * 100,
            len: 100,
        }
    }

    #[test]
    fn finds_every_chunk_once_and_only_those() {
        for n in [0u32, 1, 3, 100, 50_000] {
            let mut b = IndexBuilder::with_capacity(n as usize);
            // Two packs; the second repeats the first's chunks below 10 at other places.
            let first: Vec<Entry> = (0..n).map(|i| entry(i, i / 16 * 1000)).collect();
            let again: Vec<Entry> = (0..n.min(10)).map(|i| entry(i, 7_000_000)).collect();
            b.add([1; 16], &first);
            b.add([2; 16], &again);
            let index = b.finish();
            assert_eq!(index.len(), n as usize);
            assert_eq!(index.packs, vec![[1; 16], [2; 16]]);
            for i in 0..n {
                let loc = index.get(&id(i)).expect("present");
                let first = Loc {
                    pack: 0,
                    frame_off: i / 16 * 1000,
                    frame_len: 1000,
                    inner_off: i % 16 * 100,
                    len: 100,
                };
                let second = Loc {
                    pack: 1,
                    frame_off: 7_000_000,
                    ..first
                };
                assert!(loc == first || (i < 10 && loc == second), "{i}: {loc:?}");
            }
            for i in n..n + 1000 {
                assert!(!index.contains(&id(i)));
            }
            let seen: Vec<ChunkId> = index.iter().map(|(c, _)| *c).collect();
            assert!(
                seen.windows(2).all(|w| w[0].0 < w[1].0),
                "sorted, no repeats"
            );
            assert_eq!(seen.len(), n as usize);
        }
    }

    #[test]
    fn an_index_extended_holds_what_one_built_at_once_would() {
        let entries = |ids: std::ops::Range<u32>, off: u32| -> Vec<Entry> {
            ids.map(|i| entry(i, off + i / 16 * 1000)).collect()
        };
        let mut b = IndexBuilder::with_capacity(3000);
        b.add_file("a".into(), vec![([1; 16], entries(0..3000, 0))]);
        let mut b = IndexBuilder::extend(b.finish());
        // The new file repeats 100 of the chunks (two backups stored them at once).
        b.reserve(2100);
        b.add_file("b".into(), vec![([2; 16], entries(2900..5000, 9_000_000))]);
        let index = b.finish();
        assert_eq!(index.len(), 5000);
        assert_eq!(index.packs, vec![[1; 16], [2; 16]]);
        assert_eq!(index.files.len(), 2);
        for i in 0..5000 {
            let loc = index.get(&id(i)).expect("present");
            let (pack, off) = if i < 3000 { (0, 0) } else { (1, 9_000_000) };
            assert_eq!(
                (loc.pack, loc.frame_off),
                (pack, off + i / 16 * 1000),
                "{i}"
            );
        }
        assert!(!index.contains(&id(5000)));
        let seen: Vec<ChunkId> = index.iter().map(|(c, _)| *c).collect();
        assert!(
            seen.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, no repeats"
        );
    }

    #[test]
    fn a_chunk_costs_under_48_bytes() {
        // 1 Mi chunks of 8 KiB pages, 16 to a 128 KiB frame: what an 8 GiB database leaves.
        let n = 1 << 20;
        let entries: Vec<Entry> = (0..n).map(|i| entry(i, i / 16 * 20_000)).collect();
        let mut b = IndexBuilder::with_capacity(entries.len());
        b.add([1; 16], &entries);
        let index = b.finish();
        let per_chunk = index.chunk_bytes() as f64 / f64::from(n);
        assert!(per_chunk < 48.0, "{per_chunk:.1} bytes per chunk");
    }
}
