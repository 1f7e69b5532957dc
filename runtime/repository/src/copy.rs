//! Copying snapshots between repositories (`cairn repo copy`): a second, offsite copy of
//! what backups wrote, under the other repository's keys.

use crate::chunker::Chunking;
use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use crate::format::{Content, Node, NodeKind, SnapshotInfo};
use crate::index::Index;
use crate::pipeline::{INPUT_BLOCK, Input};
use crate::repo::{BackupOptions, Repository, SnapshotFilter};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::HashMap;
use tokio::sync::mpsc::Sender;

impl Repository {
    /// Copies snapshot `info` of `from` into this repository: the same files or stream, with
    /// the original's time, host, tags and source, and [`SnapshotInfo::original`] naming the
    /// snapshot first copied. Chunks keep the original's boundaries and are named with this
    /// repository's key, so copies deduplicate against each other as the originals did.
    ///
    /// Only chunks that an earlier copy of the same source did not bring are read from
    /// `from` (each checked against its id there): the newest snapshot of the same source
    /// that both repositories hold (one a copy of the other, or both copies of one original)
    /// maps `from`'s chunk ids to this repository's, so a daily copy reads about what the
    /// day's backup added. What this repository holds already is not
    /// stored again. Of `opts`, the progress counter (the snapshot's bytes), the zstd level
    /// and the frame size apply; its tags and chunking do not.
    ///
    /// Like a backup, it takes this repository's backup lock; `from` is only read, as a
    /// restore reads it. A copy that fails leaves no snapshot, and the data it stored is
    /// reused by the next attempt.
    pub async fn copy_snapshot(
        &self,
        from: &Repository,
        info: &SnapshotInfo,
        opts: &BackupOptions,
    ) -> Result<SnapshotInfo> {
        let mut content = from.restore_content(info).await?;
        let earlier = self.earlier_copy(from, info).await?;
        // Chunks arrive cut or known: the chunking is not used.
        let (lock, pipeline) = self.start_backup(opts, Chunking::PAGES).await?;
        // Mapped against the index the pipeline deduplicates with (a poisoned lock: no map,
        // every chunk is read).
        let known = match &earlier {
            Some((original, copy)) => self
                .inner
                .index
                .read()
                .map(|idx| id_map(original, copy, &idx))
                .unwrap_or_default(),
            None => HashMap::new(),
        };
        drop(earlier);
        let fed = feed(from, &content, &known, &info.id, pipeline.sender()).await;
        drop(known);
        let finished = pipeline.finish().await;
        let result = async {
            // The pipeline's error is the cause when both failed.
            let (cut, packed) = finished?;
            fed?;
            let summary = content.fill(cut, packed.stored_bytes, &[]);
            let (kind, host, tags) = (info.kind.clone(), info.hostname.clone(), info.tags.clone());
            let mut copy = SnapshotInfo::made(kind, info.time, Some(host), tags, summary);
            copy.original = Some(info.original_id().to_owned());
            self.commit(&lock, content, copy, opts).await
        }
        .await;
        lock.release().await;
        result
    }

    /// The contents of the newest snapshot here of `info`'s source that `from` holds too
    /// (as the same snapshot or a copy of it, in either direction), there and here. None when
    /// there is none, or when reading one fails: the copy then reads every chunk.
    async fn earlier_copy(
        &self,
        from: &Repository,
        info: &SnapshotInfo,
    ) -> Result<Option<(Content, Content)>> {
        let here: Vec<SnapshotInfo> = self
            .snapshots(&SnapshotFilter::new())
            .await?
            .into_iter()
            .filter(|s| s.kind == info.kind)
            .collect();
        if here.is_empty() {
            return Ok(None);
        }
        let there: HashMap<String, SnapshotInfo> = from
            .snapshots(&SnapshotFilter::new())
            .await?
            .into_iter()
            .filter(|s| s.kind == info.kind)
            .map(|s| (s.original_id().to_owned(), s))
            .collect();
        // Oldest first: the newest is the likeliest to share the most.
        let Some((a, b)) = here
            .iter()
            .rev()
            .find_map(|s| Some((there.get(s.original_id())?, s)))
        else {
            return Ok(None);
        };
        match (from.content(a).await, self.content(b).await) {
            (Ok(x), Ok(y)) => Ok(Some((x, y))),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "reading every chunk: the earlier copy cannot be read");
                Ok(None)
            }
        }
    }
}

/// Chunk ids of `original` mapped to those of `copy` (its copy, cut the same), keeping only
/// chunks `index` holds; empty when the two do not line up.
fn id_map(original: &Content, copy: &Content, index: &Index) -> HashMap<ChunkId, ChunkId> {
    let (a, b) = (file_chunks(original), file_chunks(copy));
    let aligned = a.len() == b.len()
        && a.iter()
            .zip(&b)
            .all(|(x, y)| x.0 == y.0 && x.1.len() == y.1.len());
    if !aligned {
        tracing::warn!("reading every chunk: an earlier copy does not line up with its original");
        return HashMap::new();
    }
    a.iter()
        .zip(&b)
        .flat_map(|(x, y)| x.1.iter().copied().zip(y.1.iter().copied()))
        .filter(|(_, here)| index.contains(here))
        .collect()
}

fn file_nodes(nodes: &[Node]) -> impl Iterator<Item = &Node> + Clone {
    nodes.iter().filter(|n| n.kind == NodeKind::File)
}

/// Each file's path and chunk ids, in order (a stream: one, without a path).
fn file_chunks(c: &Content) -> Vec<(&str, &[ChunkId])> {
    match c {
        Content::Stream { chunks, .. } => vec![("", &chunks.0[..])],
        Content::Tree { nodes, .. } => file_nodes(nodes)
            .map(|n| (n.path.as_str(), &n.chunks.0[..]))
            .collect(),
    }
}

/// Chunk ids sent to the pipeline in one message; cut chunks go in messages of up to
/// [`INPUT_BLOCK`] bytes, as a backup's reads do. One message per chunk spent half a copy's
/// time waking threads.
const KNOWN_RUN: usize = 4096;

/// Chunks bound for the pipeline, gathered into messages.
struct Runs {
    tx: Sender<Input>,
    known: Vec<ChunkId>,
    cut: Vec<Bytes>,
    cut_bytes: usize,
}

impl Runs {
    async fn send(&self, input: Input) -> Result<()> {
        // A closed channel means the pipeline failed; its error is reported instead.
        self.tx.send(input).await.map_err(|_| Error::Aborted)
    }

    async fn known(&mut self, id: ChunkId) -> Result<()> {
        self.flush_cut().await?;
        self.known.push(id);
        if self.known.len() >= KNOWN_RUN {
            self.flush_known().await?;
        }
        Ok(())
    }

    async fn cut(&mut self, c: Bytes) -> Result<()> {
        self.flush_known().await?;
        self.cut_bytes += c.len();
        self.cut.push(c);
        if self.cut_bytes >= INPUT_BLOCK {
            self.flush_cut().await?;
        }
        Ok(())
    }

    async fn flush_known(&mut self) -> Result<()> {
        if self.known.is_empty() {
            return Ok(());
        }
        let run = std::mem::take(&mut self.known);
        self.send(Input::Known(run)).await
    }

    async fn flush_cut(&mut self) -> Result<()> {
        if self.cut.is_empty() {
            return Ok(());
        }
        self.cut_bytes = 0;
        let run = std::mem::take(&mut self.cut);
        self.send(Input::Cut(run)).await
    }

    async fn end_file(&mut self) -> Result<()> {
        self.flush_known().await?;
        self.flush_cut().await?;
        self.send(Input::EndFile).await
    }
}

/// Sends the files of `content` (read from `from`) into the pipeline, chunk by chunk: as
/// [`Input::Known`] what `known` maps, else read and sent as [`Input::Cut`].
async fn feed(
    from: &Repository,
    content: &Content,
    known: &HashMap<ChunkId, ChunkId>,
    snapshot: &str,
    tx: Option<Sender<Input>>,
) -> Result<()> {
    let mut runs = Runs {
        tx: tx.ok_or(Error::Aborted)?,
        known: Vec::new(),
        cut: Vec::new(),
        cut_bytes: 0,
    };
    let files = file_chunks(content);
    let wanted: Vec<ChunkId> = files
        .iter()
        .flat_map(|f| f.1.iter())
        .filter(|id| !known.contains_key(id))
        .copied()
        .collect();
    let mut read = Box::pin(from.read_chunks(&wanted, snapshot).await?);
    drop(wanted);
    let mut batch: std::vec::IntoIter<Bytes> = Vec::new().into_iter();
    let stopped = || Error::Invalid("the copy stopped before the snapshot's last chunk".into());
    for (_, file) in files {
        for id in file {
            match known.get(id) {
                Some(here) => runs.known(*here).await?,
                None => {
                    let c = loop {
                        if let Some(c) = batch.next() {
                            break c;
                        }
                        batch = read.next().await.ok_or_else(stopped)??.into_iter();
                    };
                    runs.cut(c).await?;
                }
            }
        }
        runs.end_file().await?;
    }
    Ok(())
}
