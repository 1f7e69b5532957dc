//! Reading the nodes of many snapshots, each node chunk they share read once: `prune` and
//! `check` mark the chunks snapshots reference, `find` looks for paths. Restic reads each of
//! its tree blobs once in the same way; reading every snapshot's nodes whole made a prune of
//! 30 snapshots of 200,000 files read and parse their nodes 30 times.

use futures::StreamExt;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;

use crate::crypto::{ChunkId, IdSet};
use crate::error::{Error, Result};
use crate::format::{self, ChunkList, NodeLines, SnapshotInfo};
use crate::repo::{Repository, with_snapshot};
use crate::tree::{TreeShape, shape_error};

/// The node chunks that snapshots read one after another have read, and which of them a
/// later snapshot can skip.
#[derive(Default)]
pub(crate) struct SeenNodeChunks {
    /// Read from a line's start to a line's end: what they hold was handed on whole.
    whole: IdSet,
    /// Read, and ending with a line's end.
    ends_line: IdSet,
}

impl SeenNodeChunks {
    /// For each of a snapshot's node chunks `ids` (in order), whether it is skipped: read
    /// whole before, and starting a line here too, where the chunk before it is known to end
    /// one. No line is then split by what is skipped.
    fn skips(&self, ids: &[ChunkId]) -> Vec<bool> {
        (0..ids.len())
            .map(|i| {
                let starts_line = i == 0 || self.ends_line.contains(&ids[i - 1]);
                starts_line && self.whole.contains(&ids[i])
            })
            .collect()
    }

    /// Takes in what [`Repository::node_lines`] read: the chunks that end a line, each with
    /// whether it started one. Only once a snapshot is wholly taken in, so that a snapshot
    /// that could not be read leaves nothing to skip.
    pub(crate) fn learn(&mut self, read: Vec<(ChunkId, bool)>) {
        for (id, whole) in read {
            self.ends_line.insert(id);
            if whole {
                self.whole.insert(id);
            }
        }
    }
}

/// What [`Repository::node_lines`] hands on, in the order of the node chunks.
pub(crate) enum NodeLine<'a> {
    /// A node's line, whole.
    Line(&'a [u8]),
    /// The end of a node chunk read; `whole` when it held whole lines only (those handed on
    /// since the last `End`), which a later snapshot may skip.
    End { id: ChunkId, whole: bool },
    /// A node chunk not read: one read whole before.
    Skipped(ChunkId),
}

/// A node line that does not parse as `T`: the snapshot's content is damaged.
pub(crate) fn parse_node<T: serde::de::DeserializeOwned>(
    info: &SnapshotInfo,
    line: &[u8],
) -> Result<T> {
    serde_json::from_slice(line).map_err(|e| {
        let path = format::content_path(&info.content);
        with_snapshot(
            Error::corrupt(&path, format!("a node in its node chunks: {e}")),
            &info.id,
        )
    })
}

impl Repository {
    /// The ids of a tree's node chunks: `chunks`, or the ids its node `lists` hold.
    pub(crate) async fn node_chunk_ids(
        &self,
        info: &SnapshotInfo,
        mut chunks: ChunkList,
        lists: &ChunkList,
    ) -> Result<ChunkList> {
        if !lists.is_empty() {
            self.fill_lists(vec![(&lists.0[..], &mut chunks.0)], info)
                .await?;
        }
        Ok(chunks)
    }

    /// Goes through the node chunks `ids` of snapshot `info` in order, handing each line of
    /// those it reads to `each`, and each that `seen` lets it skip as skipped. Returns what
    /// [`SeenNodeChunks::learn`] takes.
    pub(crate) async fn node_lines(
        &self,
        info: &SnapshotInfo,
        ids: &[ChunkId],
        seen: &SeenNodeChunks,
        mut each: impl FnMut(NodeLine<'_>) -> Result<()>,
    ) -> Result<Vec<(ChunkId, bool)>> {
        let mut walk = NodeWalk::new(ids, seen);
        let read = walk.to_read();
        if !read.is_empty() {
            let mut chunks = Box::pin(self.read_chunks(&read, &info.id).await?);
            while let Some(batch) = chunks.next().await {
                for piece in batch? {
                    walk.take(&piece, &mut each)?;
                }
            }
        }
        walk.finish(&mut each)?.ok_or_else(|| {
            let path = format::content_path(&info.content);
            with_snapshot(
                Error::corrupt(&path, "its node chunks end within a node"),
                &info.id,
            )
        })
    }
}

/// One snapshot's node chunks gone through in order, the chunks read handed in as they
/// arrive ([`Repository::node_lines`]).
struct NodeWalk<'a> {
    ids: &'a [ChunkId],
    skips: Vec<bool>,
    /// The place in `ids` of the next chunk.
    next: usize,
    lines: NodeLines,
    learned: Vec<(ChunkId, bool)>,
}

impl<'a> NodeWalk<'a> {
    fn new(ids: &'a [ChunkId], seen: &SeenNodeChunks) -> Self {
        NodeWalk {
            ids,
            skips: seen.skips(ids),
            next: 0,
            lines: NodeLines::default(),
            learned: Vec::new(),
        }
    }

    /// The chunks to read, in order.
    fn to_read(&self) -> Vec<ChunkId> {
        let read = self.ids.iter().zip(&self.skips).filter(|(_, skip)| !**skip);
        read.map(|(id, _)| *id).collect()
    }

    /// Hands on the chunks skipped before the next one to read.
    fn skip(&mut self, each: &mut impl FnMut(NodeLine<'_>) -> Result<()>) -> Result<()> {
        while self.skips.get(self.next) == Some(&true) {
            each(NodeLine::Skipped(self.ids[self.next]))?;
            self.next += 1;
        }
        Ok(())
    }

    /// Takes the next chunk read, `piece`.
    fn take(
        &mut self,
        piece: &[u8],
        each: &mut impl FnMut(NodeLine<'_>) -> Result<()>,
    ) -> Result<()> {
        self.skip(each)?;
        let Some(&id) = self.ids.get(self.next) else {
            return Ok(());
        };
        self.next += 1;
        let starts_line = self.lines.ended();
        self.lines.feed(piece, |line| each(NodeLine::Line(line)))?;
        let ends_line = piece.last() == Some(&b'\n');
        each(NodeLine::End {
            id,
            whole: starts_line && ends_line,
        })?;
        if ends_line {
            self.learned.push((id, starts_line));
        }
        Ok(())
    }

    /// Hands on the chunks skipped after the last one read; `None` when the chunks end within
    /// a line (or some were not read).
    fn finish(
        mut self,
        each: &mut impl FnMut(NodeLine<'_>) -> Result<()>,
    ) -> Result<Option<Vec<(ChunkId, bool)>>> {
        self.skip(each)?;
        let whole = self.next == self.ids.len() && self.lines.ended();
        Ok(whole.then_some(self.learned))
    }
}

/// What snapshots marked so far reference, and which of their node and list chunks were read.
#[derive(Default)]
pub(crate) struct Marks {
    /// Every chunk the snapshots marked reference.
    pub(crate) referenced: IdSet,
    nodes: SeenNodeChunks,
    /// List chunks read: the ids they hold are marked.
    lists_read: IdSet,
    /// For `check`, which checks each tree's shape ([`TreeShape`]) too: the nodes of each node
    /// chunk read whole, as the shape takes them, for the snapshots that skip that chunk.
    /// `None` when shapes are not checked (a prune marks what a tree references, whatever
    /// its shape).
    shapes: Option<HashMap<ChunkId, Vec<(PathBuf, bool)>>>,
}

impl Marks {
    /// Marks that also check each tree's shape, as [`Repository::mark`] says.
    pub(crate) fn checking_shapes() -> Self {
        Marks {
            shapes: Some(HashMap::new()),
            ..Marks::default()
        }
    }
}

/// A node as marking reads it: the chunks it names, and its path and type for its tree's
/// shape.
#[derive(Deserialize)]
struct NodeRefs {
    #[serde(default)]
    chunks: ChunkList,
    #[serde(default)]
    lists: ChunkList,
    #[serde(default)]
    path: String,
    #[serde(default)]
    path_raw: Option<String>,
    /// Read as text: a type this build does not know is no directory, and no damage here.
    #[serde(rename = "type", default)]
    kind: String,
}

impl NodeRefs {
    /// Adds this node of snapshot `info` to its tree's `shape`; returns what the shape took.
    fn shape(&self, shape: &mut TreeShape, info: &SnapshotInfo) -> Result<(PathBuf, bool)> {
        let key = TreeShape::key(&self.path, self.path_raw.as_deref())
            .map_err(|why| shape_error(info, why))?;
        let dir = self.kind == "dir";
        shape.add(&key, dir).map_err(|why| shape_error(info, why))?;
        Ok((key, dir))
    }
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
}

impl Repository {
    /// Adds the chunks snapshot `info` references to `marks`: what its content object names,
    /// its node chunks and the nodes they hold, and the ids its files' list chunks hold. Node
    /// chunks and list chunks that an earlier snapshot read are not read again. With
    /// [`Marks::checking_shapes`], a tree without the shape a restore needs is damage, as it
    /// is to a restore: the nodes of the chunks skipped are taken from those read before.
    pub(crate) async fn mark(&self, info: &SnapshotInfo, marks: &mut Marks) -> Result<()> {
        let c: ContentRefs = self.content_object_as(info).await?;
        if c.kind != "tree" && c.kind != "stream" {
            let path = format::content_path(&info.content);
            let why = format!("unknown content type {:?}", c.kind);
            return Err(with_snapshot(Error::corrupt(&path, why), &info.id));
        }
        let mut new = Marked::default();
        let mut shape = marks.shapes.is_some().then(TreeShape::default);
        marks.node(&mut new, &c.chunks, &c.lists);
        for n in &c.nodes {
            marks.node(&mut new, &n.chunks, &n.lists);
            if let Some(shape) = &mut shape {
                n.shape(shape, info)?;
            }
        }
        new.ids.extend(c.node_lists.0.iter().copied());
        let ids = self
            .node_chunk_ids(info, c.node_chunks, &c.node_lists)
            .await?;
        new.ids.extend(ids.0.iter().copied());
        // Taken out while the lines are read, and put back whatever comes of it.
        let mut shapes = marks.shapes.take();
        let mut in_chunk = Vec::new();
        let read = self
            .node_lines(info, &ids.0, &marks.nodes, |l| {
                match (l, &mut shape, &mut shapes) {
                    (NodeLine::Line(line), shape, _) => {
                        let n: NodeRefs = parse_node(info, line)?;
                        marks.node(&mut new, &n.chunks, &n.lists);
                        if let Some(shape) = shape {
                            in_chunk.push(n.shape(shape, info)?);
                        }
                    }
                    (NodeLine::End { id, whole }, _, Some(shapes)) => {
                        let nodes = std::mem::take(&mut in_chunk);
                        if whole {
                            shapes.insert(id, nodes);
                        }
                    }
                    (NodeLine::Skipped(id), Some(shape), Some(shapes)) => {
                        // Skipped only once read whole, when its nodes were kept.
                        for (key, dir) in shapes.get(&id).into_iter().flatten() {
                            shape.add(key, *dir).map_err(|why| shape_error(info, why))?;
                        }
                    }
                    _ => {}
                }
                Ok(())
            })
            .await;
        marks.shapes = shapes;
        let read = read?;
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
        marks.nodes.learn(read);
        Ok(())
    }
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
        let mut seen = SeenNodeChunks::default();
        let mut read_lines = BTreeSet::new();
        let mut reads = Vec::new();
        for chunks in snapshots {
            let ids: Vec<ChunkId> = chunks
                .iter()
                .map(|c| ChunkId(*blake3::hash(c).as_bytes()))
                .collect();
            let by_id: HashMap<ChunkId, &Vec<u8>> =
                ids.iter().copied().zip(chunks.iter()).collect();
            let mut walk = NodeWalk::new(&ids, &seen);
            let read = walk.to_read();
            let mut each = |l: NodeLine<'_>| {
                if let NodeLine::Line(l) = l {
                    read_lines.insert(l.to_vec());
                }
                Ok(())
            };
            for id in &read {
                walk.take(by_id[id], &mut each).expect("lines");
            }
            let learned = walk.finish(&mut each).expect("lines").expect("whole");
            seen.learn(learned);
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
