//! The chunks that snapshots reference, for `prune` and `check`: each node chunk and list
//! chunk that snapshots share is read once, not once per snapshot. Restic reads each of its
//! tree blobs once in the same way; reading every snapshot's nodes whole made a prune of a
//! hundred snapshots of 200,000 files read and parse their nodes a hundred times.

use futures::StreamExt;
use serde::Deserialize;

use crate::crypto::{ChunkId, IdSet};
use crate::error::{Error, Result};
use crate::format::{self, ChunkList, NodeLines, SnapshotInfo};
use crate::repo::{Repository, with_snapshot};

/// What snapshots marked so far reference, and which of their node and list chunks were read.
#[derive(Default)]
pub(crate) struct Marks {
    /// Every chunk the snapshots marked reference.
    pub(crate) referenced: IdSet,
    /// Node chunks read from a line's start to a line's end: their nodes are marked, and a
    /// later snapshot skips them where they start a line there too.
    whole: IdSet,
    /// Node chunks read that end with a line's end.
    ends_line: IdSet,
    /// List chunks read: the ids they hold are marked.
    lists_read: IdSet,
}

/// A node as marking reads it: only the chunks it names.
#[derive(Deserialize)]
struct NodeRefs {
    #[serde(default)]
    chunks: ChunkList,
    #[serde(default)]
    lists: ChunkList,
}

/// A content object as marking reads it: a stream's chunks or a tree's nodes, or the node
/// chunks that hold the nodes (version 3).
#[derive(Deserialize)]
struct ContentRefs {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    chunks: ChunkList,
    #[serde(default)]
    lists: ChunkList,
    #[serde(default)]
    nodes: Vec<NodeRefs>,
    #[serde(default)]
    node_chunks: ChunkList,
    #[serde(default)]
    node_lists: ChunkList,
}

impl Marks {
    /// Adds a node's (or a stream's) chunks to `to`, and its list chunks not read yet to
    /// its `unread`.
    fn node(&self, to: &mut Marked, chunks: &ChunkList, lists: &ChunkList) {
        to.ids.extend(chunks.0.iter().chain(&lists.0).copied());
        to.unread
            .extend(lists.0.iter().filter(|l| !self.lists_read.contains(l)));
    }
}

/// What one snapshot adds to [`Marks`], kept apart until the whole snapshot is read: a
/// snapshot that cannot be read adds nothing, as it did when it was read whole.
#[derive(Default)]
struct Marked {
    ids: IdSet,
    unread: Vec<ChunkId>,
    /// Node chunks read that end a line, and whether they started one.
    ends_line: Vec<(ChunkId, bool)>,
}

impl Repository {
    /// Adds the chunks snapshot `info` references to `marks`: what its content object names,
    /// its node chunks and the nodes they hold, and the ids its files' list chunks hold. Node
    /// chunks and list chunks that an earlier snapshot read are not read again.
    pub(crate) async fn mark(&self, info: &SnapshotInfo, marks: &mut Marks) -> Result<()> {
        let c: ContentRefs = self.content_object_as(info).await?;
        let path = format::content_path(&info.content);
        let bad = |why: String| with_snapshot(Error::corrupt(&path, why), &info.id);
        if c.kind != "tree" && c.kind != "stream" {
            return Err(bad(format!("unknown content type {:?}", c.kind)));
        }
        let mut new = Marked::default();
        marks.node(&mut new, &c.chunks, &c.lists);
        for n in &c.nodes {
            marks.node(&mut new, &n.chunks, &n.lists);
        }
        let mut node_chunks = c.node_chunks;
        if !c.node_lists.is_empty() {
            new.ids.extend(c.node_lists.0.iter().copied());
            self.fill_lists(vec![(&c.node_lists.0[..], &mut node_chunks.0)], info)
                .await?;
        }
        new.ids.extend(node_chunks.0.iter().copied());
        let read = marks.node_chunks_to_read(&node_chunks.0);
        if !read.is_empty() {
            let mut chunks = Box::pin(self.read_chunks(&read, &info.id).await?);
            let mut read = read.iter();
            let mut lines = NodeLines::default();
            while let Some(batch) = chunks.next().await {
                for (piece, id) in batch?.into_iter().zip(&mut read) {
                    let end = feed(&mut lines, *id, &piece, |line| {
                        let n: NodeRefs = serde_json::from_slice(line)
                            .map_err(|e| bad(format!("a node in its node chunks: {e}")))?;
                        marks.node(&mut new, &n.chunks, &n.lists);
                        Ok(())
                    })?;
                    new.ends_line.extend(end);
                }
            }
            if !lines.ended() {
                return Err(bad("its node chunks end within a node".into()));
            }
        }
        new.unread.sort_unstable();
        new.unread.dedup();
        let mut listed = Vec::new();
        self.fill_lists(vec![(&new.unread[..], &mut listed)], info)
            .await?;
        new.ids.extend(listed);
        // Only now that all is read: a later snapshot reads again what this one could not,
        // and reports it too.
        if marks.referenced.is_empty() {
            marks.referenced = new.ids;
        } else {
            marks.referenced.extend(new.ids);
        }
        marks.lists_read.extend(new.unread);
        marks.read_node_chunks(new.ends_line);
        Ok(())
    }
}

impl Marks {
    /// The node chunks of `ids` (a snapshot's, in order) to read: all but those read whole
    /// before that start a line here too, where the chunk before them is known to end one.
    /// No line is then split by what is skipped.
    fn node_chunks_to_read(&self, ids: &[ChunkId]) -> Vec<ChunkId> {
        (0..ids.len())
            .filter(|&i| {
                let starts_line = i == 0 || self.ends_line.contains(&ids[i - 1]);
                !(starts_line && self.whole.contains(&ids[i]))
            })
            .map(|i| ids[i])
            .collect()
    }

    /// Notes the node chunks read that end a line, each with whether it started one.
    fn read_node_chunks(&mut self, ends_line: Vec<(ChunkId, bool)>) {
        for (id, whole) in ends_line {
            self.ends_line.insert(id);
            if whole {
                self.whole.insert(id);
            }
        }
    }
}

/// Feeds node chunk `id`, read as `piece` in its place, to `lines`, handing each line it
/// ends to `each`. Returns the chunk, and whether it started a line, when it ends a line.
fn feed(
    lines: &mut NodeLines,
    id: ChunkId,
    piece: &[u8],
    each: impl FnMut(&[u8]) -> Result<()>,
) -> Result<Option<(ChunkId, bool)>> {
    let starts_line = lines.ended();
    lines.feed(piece, each)?;
    Ok((piece.last() == Some(&b'\n')).then_some((id, starts_line)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunker::{Chunker, Chunking};
    use std::collections::{BTreeSet, HashMap};

    fn line(i: usize, v: usize) -> String {
        let pad = "x".repeat(i * 31 % 150);
        format!("{{\"path\":\"dir/file-{i:05}\",\"size\":{v},\"pad\":\"{pad}\"}}\n")
    }

    fn cut(lines: &[String], at_lines: bool) -> Vec<Vec<u8>> {
        let mut c = if at_lines {
            Chunker::at_lines(Chunking::NODES)
        } else {
            Chunker::new(Chunking::NODES)
        };
        let mut v = Vec::new();
        c.push(lines.concat().as_bytes(), &mut |x| v.push(x.to_vec()));
        c.finish(&mut |x| v.push(x.to_vec()));
        v
    }

    /// Marks `snapshots` (each its node lines) one after another as [`Repository::mark`]
    /// does, and checks that the lines read are exactly every snapshot's lines: whatever was
    /// skipped was read whole before, and no line was split. Returns the chunks read for each.
    fn mark_all(snapshots: &[Vec<String>], at_lines: bool) -> Vec<usize> {
        let cuts: Vec<_> = snapshots.iter().map(|s| cut(s, at_lines)).collect();
        mark_chunks(&cuts)
    }

    /// [`mark_all`] of snapshots given as their node chunks.
    fn mark_chunks(snapshots: &[Vec<Vec<u8>>]) -> Vec<usize> {
        let mut marks = Marks::default();
        let mut read_lines = BTreeSet::new();
        let mut reads = Vec::new();
        for chunks in snapshots {
            let ids: Vec<ChunkId> = chunks
                .iter()
                .map(|c| ChunkId(*blake3::hash(c).as_bytes()))
                .collect();
            let by_id: HashMap<ChunkId, &Vec<u8>> =
                ids.iter().copied().zip(chunks.iter()).collect();
            let read = marks.node_chunks_to_read(&ids);
            let (mut text, mut ends) = (NodeLines::default(), Vec::new());
            for id in &read {
                let end = feed(&mut text, *id, by_id[id], |l| {
                    read_lines.insert(l.to_vec());
                    Ok(())
                });
                ends.extend(end.expect("lines"));
            }
            assert!(text.ended());
            marks.read_node_chunks(ends);
            reads.push(read.len());
        }
        let every: BTreeSet<Vec<u8>> = snapshots
            .iter()
            .flat_map(|chunks| {
                let text = chunks.concat();
                let lines: Vec<Vec<u8>> = text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
                lines.into_iter().filter(|l| !l.is_empty())
            })
            .collect();
        assert_eq!(read_lines, every);
        reads
    }

    #[test]
    fn shared_node_chunks_are_read_once_and_every_node_is_marked() {
        let first: Vec<String> = (0..3000).map(|i| line(i, i)).collect();
        let mut changed = first.clone();
        changed[700] = line(700, 1_000_000);
        let mut grown = changed.clone();
        grown.insert(1500, line(99_999, 7));
        let snapshots = [first.clone(), changed, grown, first];
        let reads = mark_all(&snapshots, true);
        let all = cut(&snapshots[0], true).len();
        assert!(all > 15, "{all} chunks");
        assert_eq!(reads[0], all);
        // The changed chunk and the one after it (whose start is not known to start a line).
        assert!(reads[1] <= 2 && reads[2] <= 2 && reads[3] == 0, "{reads:?}");
        // Node chunks cut within lines (as version 3 was first written): fewer skipped, but
        // still every node marked.
        mark_all(&snapshots, false);
    }

    /// A chunk that ends a line but was first read from within one is read again where it
    /// starts a line: its first bytes are a line there that was never read.
    #[test]
    fn a_chunk_read_from_within_a_line_is_not_skipped() {
        let chunks = |c: &[&str]| c.iter().map(|c| c.as_bytes().to_vec()).collect::<Vec<_>>();
        let (a, b, z) = (
            chunks(&["aa\nb", "b\ncc\n"]),
            chunks(&["zz\n"]),
            chunks(&["zz\n", "b\ncc\n"]),
        );
        // The third snapshot's second chunk follows one known to end a line.
        assert_eq!(mark_chunks(&[a, b, z]), [2, 1, 1]);
    }
}
