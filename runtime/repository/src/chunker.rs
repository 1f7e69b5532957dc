//! Splitting byte streams into chunks, incrementally.

use serde::{Deserialize, Serialize};

use crate::pipeline::Looks;

/// How an artifact is cut into chunks; chosen per artifact.
///
/// Measured on the reference dataset (FORMAT.md, "Measurements"): databases rewrite 8 KiB pages in
/// place, and page-aligned fixed chunks store exactly the rewritten pages, where
/// content-defined chunks of 16 KiB average store about twice that. Streams (dumps, logs) are
/// regenerated with insertions, which only content-defined chunking survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
#[non_exhaustive]
pub enum Chunking {
    /// Fixed-size chunks aligned to the start of the file: for files rewritten in place.
    Fixed {
        /// Chunk size in bytes (the database page size).
        size: u32,
    },
    /// FastCDC (2020) content-defined chunks: for streams.
    Cdc {
        /// Smallest chunk.
        min: u32,
        /// Target average.
        avg: u32,
        /// Largest chunk.
        max: u32,
    },
}

impl Chunking {
    /// 8 KiB page-aligned chunks, the page size of PostgreSQL (and a multiple of most
    /// others'): the default for files of a tree.
    pub const PAGES: Chunking = Chunking::Fixed { size: 8 * 1024 };
    /// FastCDC with 8/32/128 KiB min/avg/max: the default for streams. Smaller averages dedup
    /// insertions a little better but grow the index and the chunk list of a 10 GiB stream.
    pub const STREAM: Chunking = Chunking::Cdc {
        min: 8 * 1024,
        avg: 32 * 1024,
        max: 128 * 1024,
    };

    /// Content-defined chunks of 16 KiB average (4/16/64 KiB min/avg/max): files of a tree
    /// that are not whole pages (dumps, logs, archives).
    pub const FILES: Chunking = Chunking::Cdc {
        min: 4 * 1024,
        avg: 16 * 1024,
        max: 64 * 1024,
    };

    /// Content-defined chunks of 8 KiB average (2/8/32 KiB min/avg/max): a tree's nodes
    /// (version 3), about 30 files' each, so a change stores the nodes around it again and
    /// not the whole tree's.
    pub(crate) const NODES: Chunking = Chunking::Cdc {
        min: 2 * 1024,
        avg: 8 * 1024,
        max: 32 * 1024,
    };

    /// The chunking a tree backup picks for a file of `len` bytes whose first bytes are
    /// `head`: [`Chunking::PAGES`] when the file is whole 4 KiB pages, as every relation file
    /// of PostgreSQL, MySQL/MariaDB and SQLite is, and does not look like text;
    /// [`Chunking::FILES`] otherwise. Page-aligned chunks store exactly the pages a database
    /// rewrote in place; content-defined ones survive the insertions of a dump or a log
    /// regenerated between backups, and cut a tree's dumps and blobs into fewer chunks (less
    /// index, fewer ids in the snapshot).
    pub fn for_file(len: u64, head: &[u8]) -> Chunking {
        if len.is_multiple_of(4096) && crate::pipeline::looks(head) != Looks::Text {
            Chunking::PAGES
        } else {
            Chunking::FILES
        }
    }

    /// The largest chunk this mode produces.
    pub fn max_chunk(&self) -> usize {
        match *self {
            Chunking::Fixed { size } => size as usize,
            Chunking::Cdc { max, .. } => max as usize,
        }
    }

    pub(crate) fn validate(&self) -> crate::Result<()> {
        let ok = match *self {
            Chunking::Fixed { size } => {
                (512..=crate::format::MAX_FRAME_BYTES as u32 / 2).contains(&size)
            }
            Chunking::Cdc { min, avg, max } => {
                min >= fastcdc::v2020::MINIMUM_MIN
                    && avg >= fastcdc::v2020::AVERAGE_MIN
                    && max >= fastcdc::v2020::MAXIMUM_MIN
                    && min <= avg
                    && avg <= max
                    && max as usize <= crate::format::MAX_FRAME_BYTES / 2
                    && min <= fastcdc::v2020::MINIMUM_MAX
                    && avg <= fastcdc::v2020::AVERAGE_MAX
            }
        };
        if ok {
            Ok(())
        } else {
            Err(crate::Error::Invalid(format!(
                "invalid chunking parameters {self:?}"
            )))
        }
    }
}

/// Incremental chunker: feed blocks, get the same chunks as over the whole stream at once.
#[derive(Debug)]
pub(crate) struct Chunker {
    mode: Chunking,
    /// Content-defined cuts move on to the end of their line (a tree's nodes, JSON lines).
    at_lines: bool,
    buf: Vec<u8>,
}

impl Chunker {
    pub(crate) fn new(mode: Chunking) -> Self {
        Self {
            mode,
            at_lines: false,
            buf: Vec::new(),
        }
    }

    /// A chunker whose content-defined cuts each move on to the end of the line they fall in,
    /// so that every chunk but a stream's last is whole lines: a tree's node chunks, which a
    /// reader of many snapshots can then skip where it read them already (`mark`). A chunk
    /// grows to twice `max` at most: one whose line runs on past that is cut within it.
    pub(crate) fn at_lines(mode: Chunking) -> Self {
        Self {
            at_lines: true,
            ..Self::new(mode)
        }
    }

    /// Cuts what comes next with `mode`; only between files (after [`Chunker::finish`]).
    pub(crate) fn set_mode(&mut self, mode: Chunking) {
        debug_assert!(self.buf.is_empty());
        self.mode = mode;
    }

    /// Feeds `data`, calling `emit` for every chunk that is complete.
    pub(crate) fn push(&mut self, mut data: &[u8], emit: &mut dyn FnMut(&[u8])) {
        match self.mode {
            Chunking::Fixed { size } => {
                let size = size as usize;
                if !self.buf.is_empty() {
                    let need = size - self.buf.len();
                    let take = need.min(data.len());
                    self.buf.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.buf.len() == size {
                        emit(&self.buf);
                        self.buf.clear();
                    }
                }
                let mut chunks = data.chunks_exact(size);
                for c in &mut chunks {
                    emit(c);
                }
                self.buf.extend_from_slice(chunks.remainder());
            }
            Chunking::Cdc { min, avg, max } if self.at_lines => {
                self.buf.extend_from_slice(data);
                self.cut_at_lines(min, avg, max, false, emit);
            }
            Chunking::Cdc { min, avg, max } => {
                self.buf.extend_from_slice(data);
                // Cut only when enough is buffered that every cut but the last is final.
                if self.buf.len() < 2 * max as usize {
                    return;
                }
                let mut last_start = 0;
                let mut last_len = 0;
                for c in fastcdc::v2020::FastCDC::new(&self.buf, min, avg, max) {
                    if last_len > 0 {
                        emit(&self.buf[last_start..last_start + last_len]);
                    }
                    last_start = c.offset;
                    last_len = c.length;
                }
                // The last cut may have been forced by the end of the buffer: keep it.
                self.buf.drain(..last_start);
            }
        }
    }

    /// Emits the chunks of the buffer that are final, each FastCDC's next cut moved on to the
    /// end of its line; with `end`, the buffer is the rest of the stream.
    fn cut_at_lines(
        &mut self,
        min: u32,
        avg: u32,
        max: u32,
        end: bool,
        emit: &mut dyn FnMut(&[u8]),
    ) {
        let longest = 2 * max as usize;
        let mut start = 0;
        while start < self.buf.len() {
            let rest = &self.buf[start..];
            // Cut only with a whole window of what follows, as the other modes do.
            if rest.len() < longest && !end {
                break;
            }
            let Some(cut) = fastcdc::v2020::FastCDC::new(rest, min, avg, max).next() else {
                break;
            };
            let line_end = rest[cut.length - 1..].iter().position(|&b| b == b'\n');
            let len = line_end.map_or(rest.len(), |i| cut.length + i).min(longest);
            emit(&rest[..len]);
            start += len;
        }
        self.buf.drain(..start);
    }

    /// Ends the stream, emitting what is left.
    pub(crate) fn finish(&mut self, emit: &mut dyn FnMut(&[u8])) {
        match self.mode {
            Chunking::Fixed { .. } => {
                if !self.buf.is_empty() {
                    emit(&self.buf);
                }
            }
            Chunking::Cdc { min, avg, max } if self.at_lines => {
                self.cut_at_lines(min, avg, max, true, emit);
            }
            Chunking::Cdc { min, avg, max } => {
                for c in fastcdc::v2020::FastCDC::new(&self.buf, min, avg, max) {
                    emit(&self.buf[c.offset..c.offset + c.length]);
                }
            }
        }
        self.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        let mut x = 0x12345678u32;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    fn cuts(mode: Chunking, d: &[u8], block: usize) -> Vec<usize> {
        cuts_by(Chunker::new(mode), d, block)
    }

    fn cuts_by(mut c: Chunker, d: &[u8], block: usize) -> Vec<usize> {
        let mut v = Vec::new();
        for b in d.chunks(block) {
            c.push(b, &mut |x| v.push(x.len()));
        }
        c.finish(&mut |x| v.push(x.len()));
        v
    }

    #[test]
    fn incremental_cuts_match_whole_stream() {
        let d = data(3_000_000);
        for mode in [Chunking::STREAM, Chunking::PAGES] {
            let whole = cuts(mode, &d, d.len());
            assert_eq!(whole.iter().sum::<usize>(), d.len());
            for block in [1000, 65536, 1 << 20] {
                assert_eq!(cuts(mode, &d, block), whole, "{mode:?} block {block}");
            }
        }
    }

    /// A restore knows a chunk of zeros by its id only at lengths of whole 4 KiB pages
    /// (`restore::plan`): every mode cuts a run of zeros into such chunks.
    #[test]
    fn runs_of_zeros_are_cut_into_whole_pages() {
        let mut d = data(100_001);
        d.resize(d.len() + (3 << 20), 0);
        d.extend(data(50_000));
        for mode in [Chunking::STREAM, Chunking::FILES, Chunking::PAGES] {
            let mut at = 0;
            let mut zero_chunks = 0;
            for len in cuts(mode, &d, 1 << 20) {
                if d[at..at + len].iter().all(|&b| b == 0) {
                    assert_eq!(len % 4096, 0, "{mode:?}: {len} bytes of zeros at {at}");
                    zero_chunks += 1;
                }
                at += len;
            }
            assert!(zero_chunks >= 20, "{mode:?}: {zero_chunks}");
        }
    }

    /// Node chunks end with their line, however the stream arrives, except within a line
    /// longer than twice the largest chunk; a line inserted changes only the chunk it is in.
    #[test]
    fn node_chunks_end_lines_and_an_insertion_changes_one() {
        let line = |i: usize| {
            let mut l = format!(
                "{{\"path\":\"dir/file-{i}\",\"size\":{}",
                i * 7919 % 100_000
            );
            l.push_str(&"x".repeat(i * 31 % 200));
            l.push_str("}\n");
            l
        };
        let stream = |lines: &[String]| lines.concat().into_bytes();
        let mut lines: Vec<String> = (0..3000).map(line).collect();
        lines.insert(1500, format!("{}\n", "y".repeat(100_000)));
        let d = stream(&lines);
        let whole = cuts_by(Chunker::at_lines(Chunking::NODES), &d, d.len());
        for block in [1000, 65536] {
            let got = cuts_by(Chunker::at_lines(Chunking::NODES), &d, block);
            assert_eq!(got, whole, "block {block}");
        }
        let (mut at, mut within_long) = (0, 0);
        for &len in &whole {
            assert!(len <= 64 * 1024, "{len}");
            if d[at + len - 1] != b'\n' {
                within_long += 1;
                assert!(at >= d.len() / 2 - 100_000 && at < d.len() / 2 + 100_000);
            }
            at += len;
        }
        assert!(
            within_long >= 1 && whole.len() > 20,
            "{within_long} of {}",
            whole.len()
        );

        let chunks = |d: &[u8]| {
            let mut v = Vec::new();
            let mut c = Chunker::at_lines(Chunking::NODES);
            c.push(d, &mut |x| v.push(x.to_vec()));
            c.finish(&mut |x| v.push(x.to_vec()));
            v
        };
        let before = chunks(&d);
        lines.insert(700, line(99_999));
        let after = chunks(&stream(&lines));
        let new = after.iter().filter(|c| !before.contains(c)).count();
        assert!((1..=2).contains(&new), "{new} new chunks");
    }
}
