//! A running command's pipes, driven to the exec contract of [`crate::ExecRequest`] whatever
//! runs the command (a local process group, or a Kubernetes exec): stdin fed from a source,
//! stdout captured up to a limit or streamed with backpressure, every program's stderr
//! captured within one limit with the rest drained.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{Stdin, Stdout};

/// Size of the buffer each pipe is copied through. Streams are copied through this one buffer,
/// never accumulated, so a command's memory cost is flat however much it writes.
pub(crate) const COPY_BUFFER: usize = 64 * 1024;

/// A command's end of a pipe it reads.
pub(crate) type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// A command's end of a pipe it writes.
pub(crate) type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// The pipes of a running command or pipeline.
#[derive(Default)]
pub(crate) struct Pipes {
    /// The first program's stdin (`None` when it reads nothing).
    pub(crate) stdin: Option<Writer>,
    /// The last program's stdout.
    pub(crate) stdout: Option<Reader>,
    /// Every program's stderr, in order.
    pub(crate) stderrs: Vec<Option<Reader>>,
}

/// What a finished command produced.
#[derive(Debug, Default)]
pub(crate) struct Finished {
    pub(crate) exit_code: i32,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stdout_truncated: bool,
    pub(crate) stderr: Vec<u8>,
    pub(crate) stderr_truncated: bool,
    pub(crate) stdout_bytes: u64,
    pub(crate) stdin_bytes: u64,
}

impl Finished {
    /// What the command produced, as the exec contract reports it.
    pub(crate) fn into_output(self, pod: String) -> crate::ExecOutput {
        crate::ExecOutput {
            pod,
            exit_code: self.exit_code,
            stdout: self.stdout,
            stdout_truncated: self.stdout_truncated,
            stderr: self.stderr,
            stderr_truncated: self.stderr_truncated,
            stdout_bytes: self.stdout_bytes,
            stdin_bytes: self.stdin_bytes,
        }
    }
}

/// Why driving the pipes failed, and at which stage.
pub(crate) struct StreamFailure {
    pub(crate) stage: &'static str,
    pub(crate) error: io::Error,
}

impl StreamFailure {
    /// The error of `what` failing at this stage.
    pub(crate) fn into_error(self, what: &str) -> crate::Error {
        crate::Error::Failed {
            what: format!("{what}: {}", self.stage),
            source: Box::new(self.error),
        }
    }
}

/// What cuts a command off when the source of its stdin broke, before its stdin closes: a
/// closure that kills it at once (a process group), or a future that returns once it is dead
/// (a Kubernetes pod deleted, its exec ended).
pub(crate) trait Cut: Sync {
    /// Cuts the command off; returns once its stdin may close.
    fn cut(&self) -> BoxFuture<'_, ()>;
}

impl<F: Fn() + Sync> Cut for F {
    fn cut(&self) -> BoxFuture<'_, ()> {
        self();
        Box::pin(std::future::ready(()))
    }
}

/// The exit code of a pipeline, as `set -o pipefail`: the last non-zero one, else the last
/// one's.
pub(crate) fn pipefail(codes: impl IntoIterator<Item = i32>) -> Option<i32> {
    codes
        .into_iter()
        .reduce(|last, code| if code == 0 { last } else { code })
}

/// Drives `pipes` until the command has finished: `exit` resolves to its exit code once every
/// program has ended. `stdin_bytes` counts what was fed. When reading the stdin source fails,
/// `cut` is called before the command's stdin closes: it kills the command where it can, which
/// would otherwise read the end of its input and might act on a truncated one (`psql
/// --single-transaction` commits at the end of its input). A failure reading the output or
/// writing its sink returns at once, without waiting for `exit`: the caller then ends the
/// command (kills it, or closes its exec).
pub(crate) async fn drive(
    pipes: Pipes,
    stdin: Stdin,
    stdout: Stdout,
    limit: usize,
    stdin_bytes: &AtomicU64,
    cut: &dyn Cut,
    exit: impl Future<Output = Result<i32, StreamFailure>>,
) -> Result<Finished, StreamFailure> {
    let Pipes {
        stdin: command_stdin,
        stdout: command_stdout,
        stderrs,
    } = pipes;

    // Set when the stdin source broke: the command is being cut off, and its end (killed) is
    // not a result but that failure's consequence.
    let broke = AtomicBool::new(false);
    let feed = async {
        let Some(mut pipe) = command_stdin else {
            return Ok(());
        };
        let result = match stdin {
            Stdin::Empty => Ok(()),
            Stdin::Bytes(bytes) => match pipe.write_all(&bytes).await {
                Ok(()) => {
                    stdin_bytes.store(bytes.len() as u64, Ordering::Relaxed);
                    Ok(())
                }
                Err(e) => Err(StreamFailure {
                    stage: WRITING_STDIN,
                    error: e,
                }),
            },
            Stdin::Stream(mut source) => feed_stream(&mut source, &mut pipe, stdin_bytes).await,
        };
        // Closing the pipe is how the command sees the end of its input: a process's pipe
        // closes when dropped, a Kubernetes exec's when shut down. Not before the command is
        // cut off, when its source broke.
        if matches!(&result, Err(f) if f.stage != WRITING_STDIN) {
            broke.store(true, Ordering::Relaxed);
            cut.cut().await;
        }
        let _ = pipe.shutdown().await;
        drop(pipe);
        match result {
            // The command stopped reading (exited, or closed stdin): not our failure; its exit
            // code tells. A broken pipe while reading the source is a failure like any other.
            Err(StreamFailure { stage, error })
                if stage == WRITING_STDIN && error.kind() == io::ErrorKind::BrokenPipe =>
            {
                Ok(())
            }
            other => other,
        }
    };

    let out = async {
        let Some(mut pipe) = command_stdout else {
            return Ok(Captured::default());
        };
        match stdout {
            Stdout::Capture => capture(&mut pipe, limit).await.map_err(|e| StreamFailure {
                stage: "reading stdout",
                error: e,
            }),
            Stdout::Stream(mut sink) => stream(&mut pipe, &mut sink).await,
        }
    };

    let err = futures::future::try_join_all(stderrs.into_iter().map(|pipe| async move {
        let Some(mut pipe) = pipe else {
            return Ok(Captured::default());
        };
        capture(&mut pipe, limit).await.map_err(|e| StreamFailure {
            stage: "reading stderr",
            error: e,
        })
    }));

    let io = async {
        // The first failure ends the wait: a stdout sink that failed (an object store down, a
        // full disk) must not wait for the command to end, which may take the whole phase
        // (a 500 GB dump into nowhere) while the application stays quiesced. The caller then
        // drops the command's pipes, so it gets EPIPE on its next write, as in a shell
        // (locally; on Kubernetes the exec is closed, see the backend's docs).
        let (out, errs, code) = tokio::try_join!(out, err, exit)?;
        // One stderr, the programs' in order, within the one limit.
        let mut err = Captured::default();
        for e in errs {
            let room = limit.saturating_sub(err.bytes.len());
            err.truncated |= e.truncated || e.bytes.len() > room;
            err.bytes
                .extend_from_slice(&e.bytes[..e.bytes.len().min(room)]);
        }
        Ok::<_, StreamFailure>((out, err, code))
    };

    // Stdin is fed beside the output, but the command's end does not wait for the source of
    // stdin: a command that exits without reading all of its input is finished.
    tokio::pin!(feed);
    tokio::pin!(io);
    let mut fed = false;
    let (out, err, exit_code) = loop {
        tokio::select! {
            result = &mut feed, if !fed => {
                result?;
                fed = true;
            }
            result = &mut io => {
                // Ended as it was being cut off: the failure that cut it is the result.
                if !fed && broke.load(Ordering::Relaxed) {
                    (&mut feed).await?;
                }
                break result?;
            }
        }
    };
    Ok(Finished {
        exit_code,
        stdout_bytes: out.total,
        stdout: out.bytes,
        stdout_truncated: out.truncated,
        stderr: err.bytes,
        stderr_truncated: err.truncated,
        stdin_bytes: stdin_bytes.load(Ordering::Relaxed),
    })
}

/// The stage of a failed write into the command's stdin.
const WRITING_STDIN: &str = "writing stdin";

async fn feed_stream(
    source: &mut (dyn AsyncRead + Send + Unpin),
    pipe: &mut (dyn AsyncWrite + Send + Unpin),
    count: &AtomicU64,
) -> Result<(), StreamFailure> {
    copy(
        source,
        pipe,
        ("reading the stdin stream", WRITING_STDIN),
        count,
    )
    .await
}

/// Copies `from` into `to` through one buffer until `from` ends, counting in `copied` as it
/// goes (a reader may look before the copy ends); a failure names its side with `stages`
/// (reading, writing). `to` is not shut down.
pub(crate) async fn copy(
    from: &mut (dyn AsyncRead + Send + Unpin),
    to: &mut (dyn AsyncWrite + Send + Unpin),
    (read_stage, write_stage): (&'static str, &'static str),
    copied: &AtomicU64,
) -> Result<(), StreamFailure> {
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = from.read(&mut buf).await.map_err(|e| StreamFailure {
            stage: read_stage,
            error: e,
        })?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n]).await.map_err(|e| StreamFailure {
            stage: write_stage,
            error: e,
        })?;
        copied.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
    total: u64,
}

/// Keeps the first `limit` bytes and drains the rest, so the writer never blocks on a full pipe.
async fn capture(pipe: &mut (dyn AsyncRead + Send + Unpin), limit: usize) -> io::Result<Captured> {
    let mut captured = Captured::default();
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = pipe.read(&mut buf).await?;
        if n == 0 {
            return Ok(captured);
        }
        captured.total += n as u64;
        let room = limit.saturating_sub(captured.bytes.len());
        captured.bytes.extend_from_slice(&buf[..n.min(room)]);
        if n > room {
            captured.truncated = true;
        }
    }
}

/// Copies stdout into the sink through one bounded buffer (the sink's pace is the command's
/// pace), then flushes and shuts the sink down.
async fn stream(
    pipe: &mut (dyn AsyncRead + Send + Unpin),
    sink: &mut (dyn AsyncWrite + Send + Unpin),
) -> Result<Captured, StreamFailure> {
    let total = AtomicU64::new(0);
    copy(
        pipe,
        sink,
        ("reading stdout", "writing the stdout stream"),
        &total,
    )
    .await?;
    sink.shutdown().await.map_err(|e| StreamFailure {
        stage: "closing the stdout stream",
        error: e,
    })?;
    Ok(Captured {
        bytes: Vec::new(),
        truncated: false,
        total: total.into_inner(),
    })
}

#[cfg(test)]
mod tests {
    use super::pipefail;

    #[test]
    fn a_pipeline_exits_with_its_last_failure() {
        assert_eq!(pipefail([]), None);
        assert_eq!(pipefail([0, 0]), Some(0));
        assert_eq!(pipefail([3, 0]), Some(3));
        assert_eq!(pipefail([3, 0, 4, 0]), Some(4));
        assert_eq!(pipefail([0, 7]), Some(7));
    }
}
