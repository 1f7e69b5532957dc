//! Thin wrappers over internal primitives so the criterion benches measure the real code.

use crate::chunker::{Chunker, Chunking};

/// Cuts `data` and returns the number of chunks.
pub fn chunk_count(mode: Chunking, data: &[u8]) -> usize {
    let mut c = Chunker::new(mode);
    let mut n = 0;
    c.push(data, &mut |_| n += 1);
    c.finish(&mut |_| n += 1);
    n
}

/// Keyed BLAKE3 of every `size`-byte chunk of `data`.
pub fn hash_chunks(data: &[u8], size: usize) -> u8 {
    let keys = crate::crypto::MasterKeys::from_raw([7u8; crate::crypto::MASTER_LEN]);
    data.chunks(size)
        .fold(0u8, |a, c| a ^ keys.chunk_id(c).0[0])
}

/// Compressed size of `data` compressed in groups of `group` bytes (the chunk size for
/// per-chunk compression), at `level`, with raw fallback.
pub fn compressed_size(data: &[u8], group: usize, level: i32) -> usize {
    data.chunks(group)
        .map(|g| crate::crypto::encode_payload(g, level).len())
        .sum()
}

/// Seals `data` in pieces of `size` bytes; returns the sealed size.
pub fn seal_size(data: &[u8], size: usize) -> usize {
    let keys = crate::crypto::MasterKeys::from_raw([7u8; crate::crypto::MASTER_LEN]);
    data.chunks(size)
        .map(|c| keys.seal(b"bench", c).len())
        .sum()
}

/// `n` chunks' index entries (16 to a frame, one pack) and the index built from them.
#[derive(Debug)]
pub struct IndexFixture {
    ids: Vec<crate::crypto::ChunkId>,
    entries: Vec<crate::format::Entry>,
    index: crate::index::Index,
}

impl IndexFixture {
    pub fn new(n: u32) -> Self {
        let keys = crate::crypto::MasterKeys::from_raw([7u8; crate::crypto::MASTER_LEN]);
        let ids: Vec<_> = (0..n).map(|i| keys.chunk_id(&i.to_le_bytes())).collect();
        let entries: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| crate::format::Entry {
                id: *id,
                frame_off: (i / 16 * 20_000) as u32,
                frame_len: 20_000,
                inner_off: (i % 16 * 8192) as u32,
                len: 8192,
            })
            .collect();
        let mut f = Self {
            ids,
            entries,
            index: Default::default(),
        };
        f.index = f.build_index();
        f
    }

    fn build_index(&self) -> crate::index::Index {
        let mut b = crate::index::IndexBuilder::with_capacity(self.entries.len());
        b.add([1; 16], &self.entries);
        b.finish()
    }

    /// Builds the index again; returns how many chunks it holds.
    pub fn build(&self) -> usize {
        self.build_index().iter().count()
    }

    /// Looks every id up, in the order they were added; returns the sum of their lengths.
    pub fn look_up(&self) -> u64 {
        self.ids
            .iter()
            .filter_map(|id| self.index.get(id))
            .map(|l| u64::from(l.len))
            .sum()
    }
}
