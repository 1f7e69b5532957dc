//! Streaming backup and restore: an `AsyncWrite` a command's stdout pipes into, and an
//! `AsyncRead` over a stream snapshot.

use crate::chunker::Chunking;
use crate::error::{Error, Result};
use crate::format::{self, Content, SnapshotInfo, SnapshotKind};
use crate::lock::LockGuard;
use crate::pipeline::{ChunkerOut, INPUT_BLOCK, Input, PackerOut, Pipeline, Pool};
use crate::repo::{BackupOptions, Repository, RestoreOptions};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc::{OwnedPermit, Sender};

/// Decoded read units queued ahead of a [`SnapshotReader`]'s consumer.
const READER_QUEUE: usize = 2;
/// The size of the writes a stream restore makes (1 MiB).
const RESTORE_WRITE_BYTES: usize = 1 << 20;
/// The most a stream backup reads at once (256 KiB).
const STREAM_READ_BYTES: usize = 256 << 10;

type PermitFuture = Pin<
    Box<
        dyn Future<Output = Result<OwnedPermit<Input>, tokio::sync::mpsc::error::SendError<()>>>
            + Send,
    >,
>;

/// Backs up a byte stream: write into it (it is a [`tokio::io::AsyncWrite`]), then call
/// [`SnapshotWriter::finish`]. Memory is bounded whatever the size: writes wait while the
/// pipeline is busy (backpressure). Dropped without `finish`, it writes no snapshot.
pub struct SnapshotWriter {
    repo: Repository,
    name: String,
    tags: Vec<String>,
    host: Option<String>,
    time: jiff::Timestamp,
    lock: Option<LockGuard>,
    pipeline: Option<Pipeline>,
    tx: Option<Sender<Input>>,
    buf: Vec<u8>,
    blocks: Pool,
    pending: Option<PermitFuture>,
    /// Why the pipeline stopped, once it did.
    failure: Arc<OnceLock<String>>,
}

impl std::fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWriter")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The stream's input closed: the pipeline stopped on `failure`, when it said.
fn broken(failure: &OnceLock<String>) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        match failure.get() {
            Some(why) => format!("the backup stopped: {why}"),
            None => "the backup stopped".to_owned(),
        },
    )
}

impl SnapshotWriter {
    pub(crate) async fn new(repo: &Repository, name: &str, opts: BackupOptions) -> Result<Self> {
        if name.is_empty() {
            return Err(Error::Invalid("a stream needs a name".into()));
        }
        if let Some(c) = name.chars().find(|c| c.is_control()) {
            return Err(Error::Invalid(format!(
                "the stream name {name:?} holds the control character {c:?}: listings would \
                 show it as another line"
            )));
        }
        opts.check_labels()?;
        let time = jiff::Timestamp::now();
        let (lock, pipeline) = repo.start_backup(&opts, Chunking::STREAM).await?;
        let (tx, blocks, failure) = (pipeline.sender(), pipeline.blocks(), pipeline.failure());
        Ok(Self {
            repo: repo.clone(),
            name: name.to_string(),
            tags: opts.tags,
            host: opts.host,
            time,
            lock: Some(lock),
            pipeline: Some(pipeline),
            tx,
            buf: Vec::with_capacity(INPUT_BLOCK),
            blocks,
            pending: None,
            failure,
        })
    }

    /// Sends the buffered block once the pipeline has room.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.buf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if self.pending.is_none() {
            let tx = self.tx.clone().ok_or_else(|| broken(&self.failure))?;
            self.pending = Some(Box::pin(tx.reserve_owned()));
        }
        let Some(fut) = self.pending.as_mut() else {
            return Poll::Ready(Err(broken(&self.failure)));
        };
        let permit = ready!(fut.as_mut().poll(cx));
        self.pending = None;
        let permit = permit.map_err(|_| broken(&self.failure))?;
        let mut next = self
            .blocks
            .take()
            .unwrap_or_else(|| Vec::with_capacity(INPUT_BLOCK));
        next.clear();
        let block = std::mem::replace(&mut self.buf, next);
        permit.send(Input::Data(block));
        Poll::Ready(Ok(()))
    }

    /// Ends the stream and commits the snapshot once all its data is stored.
    pub async fn finish(mut self) -> Result<SnapshotInfo> {
        let lock = self.lock.take().ok_or(Error::Aborted)?;
        let r = match self.close().await {
            Ok((c, p)) => {
                let mut content = Content::Stream {
                    size: 0,
                    chunks: format::ChunkList::default(),
                    lists: format::ChunkList::default(),
                };
                let summary = content.fill(c, p.stored_bytes, &[]);
                let kind = SnapshotKind::Stream {
                    name: self.name.clone(),
                };
                let tags = std::mem::take(&mut self.tags);
                let info = SnapshotInfo::made(kind, self.time, self.host.take(), tags, summary);
                // A stream has no nodes to compress.
                self.repo
                    .commit(&lock, content, info, &crate::BackupOptions::default())
                    .await
            }
            Err(e) => Err(e),
        };
        lock.release().await;
        r
    }

    /// Stores what was written so far and saves no snapshot: for a stream found incomplete
    /// (its source failed). A later backup of the same data reuses what was stored, and
    /// prune removes it if none does. Dropping the writer instead discards what is not
    /// stored yet. An error is why the pipeline failed.
    pub async fn abandon(mut self) -> Result<()> {
        let lock = self.lock.take().ok_or(Error::Aborted)?;
        let r = self.close().await.map(drop);
        lock.release().await;
        r
    }

    /// Sends what is buffered, ends the input and waits until everything is stored.
    async fn close(&mut self) -> Result<(ChunkerOut, PackerOut)> {
        self.pending = None;
        let tx = self.tx.take().ok_or(Error::Aborted)?;
        if !self.buf.is_empty() {
            let block = std::mem::take(&mut self.buf);
            // A closed channel means the pipeline failed; its error comes from finish below.
            let _ = tx.send(Input::Data(block)).await;
        }
        let _ = tx.send(Input::EndFile).await;
        drop(tx);
        let pipeline = self.pipeline.take().ok_or(Error::Aborted)?;
        pipeline.finish().await
    }
}

impl AsyncWrite for SnapshotWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.buf.len() >= INPUT_BLOCK {
            ready!(self.poll_send(cx))?;
        }
        let n = data.len().min(INPUT_BLOCK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_send(cx)
    }

    /// Shutting down only flushes: the snapshot is written by [`SnapshotWriter::finish`].
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_send(cx)
    }
}

/// Reads a stream snapshot back (a [`tokio::io::AsyncRead`]); a damaged or missing object is
/// an I/O error whose inner error is the crate's [`Error`] naming it.
pub struct SnapshotReader {
    rx: tokio::sync::mpsc::Receiver<Result<Vec<Bytes>>>,
    current: VecDeque<Bytes>,
    /// An error met after some bytes of the same read were copied; returned by the next read.
    failed: Option<Error>,
    size: u64,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for SnapshotReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotReader")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl SnapshotReader {
    pub(crate) async fn new(repo: &Repository, info: &SnapshotInfo) -> Result<Self> {
        let content = repo.restore_content(info).await?;
        let Content::Stream { size, chunks, .. } = content else {
            return Err(Error::Invalid(format!(
                "snapshot {} is a tree, not a stream; restore it into a directory, or one of \
                 its files with --include PATH",
                info.short_id()
            )));
        };
        Self::of(repo, info, chunks.0, size).await
    }

    /// The regular file at `path` (relative to the root) of a tree snapshot; only its chunk
    /// lists are read.
    pub(crate) async fn file(repo: &Repository, info: &SnapshotInfo, path: &str) -> Result<Self> {
        let content = repo
            .restore_content_of(info, |c| match c {
                Content::Tree { nodes, .. } => crate::tree::keep_file(nodes, path, info),
                Content::Stream { .. } => Err(Error::Invalid(format!(
                    "snapshot {} is a stream, restored whole; --include selects a file of a tree",
                    info.short_id()
                ))),
            })
            .await?;
        match content {
            Content::Tree { mut nodes, .. } if nodes.len() == 1 => {
                let node = nodes.remove(0);
                Self::of(repo, info, node.chunks.0, node.size).await
            }
            _ => Err(Error::Invalid(format!("`{path}` is not a file of a tree"))),
        }
    }

    async fn of(
        repo: &Repository,
        info: &SnapshotInfo,
        ids: Vec<crate::crypto::ChunkId>,
        size: u64,
    ) -> Result<Self> {
        let mut stream = Box::pin(repo.read_chunks(&ids, &info.id).await?);
        let (tx, rx) = tokio::sync::mpsc::channel(READER_QUEUE);
        let task = tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    break;
                }
            }
        });
        Ok(Self {
            rx,
            current: VecDeque::new(),
            failed: None,
            size,
            task,
        })
    }

    /// The stream's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for SnapshotReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AsyncRead for SnapshotReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        // Fills `buf` with as many decoded chunks as are ready (chunks average a few KiB: one
        // per read would mean one write, and one wakeup, per chunk downstream), waiting only
        // while nothing has been copied yet.
        let start = buf.filled().len();
        while buf.remaining() > 0 {
            if let Some(front) = self.current.front_mut() {
                let n = front.len().min(buf.remaining());
                buf.put_slice(&front[..n]);
                bytes::Buf::advance(front, n);
                if front.is_empty() {
                    self.current.pop_front();
                }
                continue;
            }
            let next = match self.rx.poll_recv(cx) {
                Poll::Ready(next) => next,
                Poll::Pending if buf.filled().len() > start => break,
                Poll::Pending => return Poll::Pending,
            };
            match next {
                Some(Ok(v)) => self.current.extend(v.into_iter().filter(|b| !b.is_empty())),
                // What was copied goes out first; the error comes with the next read.
                Some(Err(e)) if buf.filled().len() > start => {
                    self.failed = Some(e);
                    break;
                }
                Some(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e))),
                None => break,
            }
        }
        if buf.filled().len() == start
            && let Some(e) = self.failed.take()
        {
            return Poll::Ready(Err(std::io::Error::other(e)));
        }
        Poll::Ready(Ok(()))
    }
}

impl Repository {
    /// Starts a stream backup named `name` (the artifact name, e.g. `pg_dump.sql`).
    pub async fn stream_writer(&self, name: &str, opts: BackupOptions) -> Result<SnapshotWriter> {
        SnapshotWriter::new(self, name, opts).await
    }

    /// Backs up everything `reader` yields as a stream snapshot. A read error, whatever its
    /// kind, saves no snapshot (a stream cut short is never taken for a whole one); what was
    /// read is stored for the next backup, as [`SnapshotWriter::abandon`] does.
    pub async fn backup_stream<R: AsyncRead + Unpin>(
        &self,
        name: &str,
        mut reader: R,
        opts: BackupOptions,
    ) -> Result<SnapshotInfo> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let stop = opts.stop.clone();
        let stopped = || stop.as_ref().is_some_and(|s| *s.borrow());
        let mut w = self.stream_writer(name, opts).await?;
        // Reads of a pipe return at most its 64 KiB; a file's fill the buffer.
        let mut buf = vec![0u8; STREAM_READ_BYTES];
        loop {
            if stopped() {
                if let Err(stored) = w.abandon().await {
                    tracing::warn!(stream = name, "storing what was read failed: {stored}");
                }
                return Err(Error::Interrupted);
            }
            let n = match reader.read(&mut buf).await {
                // Asked to stop meanwhile, the end may be the writer's, killed by the same
                // Ctrl-C: never taken for a whole stream.
                Ok(0) if stopped() => continue,
                Ok(0) => return w.finish().await,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Kept for the next backup, which is likely to read the same data again.
                    if let Err(stored) = w.abandon().await {
                        tracing::warn!(stream = name, "storing what was read failed: {stored}");
                    }
                    return Err(Error::io("read stream", name, e));
                }
            };
            if w.write_all(&buf[..n]).await.is_err() {
                // The pipeline stopped; abandoning it returns why.
                return Err(w.abandon().await.err().unwrap_or(Error::Aborted));
            }
        }
    }

    /// Opens a stream snapshot for reading.
    pub async fn stream_reader(&self, id_or_prefix: &str) -> Result<SnapshotReader> {
        let info = self.stream_snapshot(id_or_prefix).await?;
        SnapshotReader::new(self, &info).await
    }

    /// Restores a stream snapshot into `writer`; returns the bytes written.
    pub async fn restore_stream<W: AsyncWrite + Unpin>(
        &self,
        id_or_prefix: &str,
        writer: W,
    ) -> Result<u64> {
        let info = self
            .beside_index(self.stream_snapshot(id_or_prefix))
            .await?;
        self.restore_stream_of(&info, writer).await
    }

    /// [`Repository::restore_stream`] of a snapshot already looked up.
    pub async fn restore_stream_of<W: AsyncWrite + Unpin>(
        &self,
        info: &SnapshotInfo,
        writer: W,
    ) -> Result<u64> {
        self.restore_stream_with(info, writer, &RestoreOptions::new())
            .await
    }

    /// [`Repository::restore_stream_of`] with options (a progress counter).
    pub async fn restore_stream_with<W: AsyncWrite + Unpin>(
        &self,
        info: &SnapshotInfo,
        writer: W,
        opts: &RestoreOptions,
    ) -> Result<u64> {
        let r = SnapshotReader::new(self, info).await?;
        copy_out(r, &info.id, writer, opts).await
    }

    /// Restores the regular file at `path` of a tree snapshot into `writer` (`cairn repo
    /// restore ID --include PATH --target -`); returns the bytes written.
    pub async fn restore_file_with<W: AsyncWrite + Unpin>(
        &self,
        info: &SnapshotInfo,
        path: &str,
        writer: W,
        opts: &RestoreOptions,
    ) -> Result<u64> {
        let r = SnapshotReader::file(self, info, path).await?;
        copy_out(r, &info.id, writer, opts).await
    }
}

/// Copies what `r` reads into `writer`; returns the bytes written.
async fn copy_out<W: AsyncWrite + Unpin>(
    r: SnapshotReader,
    id: &str,
    mut writer: W,
    opts: &RestoreOptions,
) -> Result<u64> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    opts.set_total(r.size());
    // Large writes: an 8 KiB buffer would mean a write per 8 KiB (and for tokio's
    // stdout, a blocking-pool handoff per write).
    let mut r = tokio::io::BufReader::with_capacity(RESTORE_WRITE_BYTES, r);
    let write_err = |e| Error::io("write restored stream", "output", e);
    let mut n = 0u64;
    let stopped = opts.stopped();
    tokio::pin!(stopped);
    loop {
        let buf = tokio::select! {
            buf = r.fill_buf() => buf,
            () = &mut stopped => return Err(Error::Interrupted),
        };
        let buf = buf.map_err(|e| match e.downcast::<Error>() {
            Ok(e) => e,
            Err(e) => Error::io("read snapshot", id, e),
        })?;
        if buf.is_empty() {
            break;
        }
        let len = buf.len();
        writer.write_all(buf).await.map_err(write_err)?;
        r.consume(len);
        n += len as u64;
        opts.advance(len);
    }
    writer
        .flush()
        .await
        .map_err(|e| Error::io("flush", "output", e))?;
    Ok(n)
}
