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
