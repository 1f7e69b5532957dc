//! Running local processes: bounded capture, streamed stdout with backpressure, timeouts that
//! kill the whole process group.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::{Error, Result, Stdin, Stdout};

/// Size of the buffer each pipe is copied through. Streams are copied through this one buffer,
/// never accumulated, so a command's memory cost is flat however much it writes.
const COPY_BUFFER: usize = 64 * 1024;

/// How long to wait for a killed process to be reaped before giving up on it (it is then
/// reaped in the background by tokio).
const REAP_GRACE: Duration = Duration::from_secs(5);

/// What a finished process produced.
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

/// An exit status as one number: the exit code, or 128 + the signal that ended the process.
pub(crate) fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// Kills a process group when dropped, unless disarmed: a timed-out or cancelled command
/// (the engine drops the future at its own deadline) must not leave processes behind.
#[derive(Debug)]
struct GroupKiller(Option<rustix::process::Pid>);

impl GroupKiller {
    fn new(child: &Child) -> Self {
        Self(
            child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .and_then(rustix::process::Pid::from_raw),
        )
    }

    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // ESRCH (the group is already gone) is the expected outcome of a race.
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `command` in a new process group (so that a timeout can kill everything it started).
fn spawn(command: &mut Command, what: &str) -> Result<Child> {
    spawn_in(command, what, 0)
}

/// Spawns `command` in the process group `pgid` (0: a new one, led by the command).
fn spawn_in(command: &mut Command, what: &str, pgid: i32) -> Result<Child> {
    command.process_group(pgid).kill_on_drop(true);
    command.spawn().map_err(|e| Error::Failed {
        what: format!("starting {what}"),
        source: Box::new(e),
    })
}

/// Kills a timed-out child's group and reaps the child, boundedly.
async fn kill_and_reap(child: &mut Child, killer: &mut GroupKiller) {
    reap_all(std::slice::from_mut(child), killer).await;
}

/// Kills the group of a pipeline's children and reaps each, boundedly.
async fn reap_all(children: &mut [Child], killer: &mut GroupKiller) {
    killer.kill();
    for child in children.iter_mut() {
        let _ = child.start_kill();
    }
    let _ = tokio::time::timeout(REAP_GRACE, async {
        for child in children.iter_mut() {
            let _ = child.wait().await;
        }
    })
    .await;
}

/// Runs a command, or a pipeline of commands each reading the previous one's stdout, to
/// completion with the exec contract of [`crate::ExecRequest`]: stdin fed from `stdin` to the
/// first, the last one's stdout captured (up to `limit`) or streamed, each one's stderr
/// captured up to `limit` in all with the rest drained, the whole group killed at `timeout`.
pub(crate) async fn run(
    commands: &mut [Command],
    what: &str,
    stdin: Stdin,
    stdout: Stdout,
    limit: usize,
    timeout: Duration,
) -> Result<Finished> {
    let mut children: Vec<Child> = Vec::with_capacity(commands.len());
    let mut killer = GroupKiller(None);
    for (i, command) in commands.iter_mut().enumerate() {
        let input = match children.last_mut() {
            None if matches!(stdin, Stdin::Empty) => Stdio::null(),
            None => Stdio::piped(),
            Some(before) => match before.stdout.take().map(TryInto::try_into) {
                Some(Ok(pipe)) => pipe,
                other => {
                    reap_all(&mut children, &mut killer).await;
                    return Err(Error::Failed {
                        what: format!("connecting the pipeline of {what}"),
                        source: Box::new(match other {
                            Some(Err(e)) => e,
                            _ => io::Error::other("no stdout to read from"),
                        }),
                    });
                }
            },
        };
        command
            .stdin(input)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Every program joins the first one's group, so one kill stops the whole pipeline.
        let pgid = killer.0.map_or(0, |p| p.as_raw_nonzero().get());
        let child = match spawn_in(command, what, pgid) {
            Ok(c) => c,
            Err(e) => {
                reap_all(&mut children, &mut killer).await;
                return Err(e);
            }
        };
        if i == 0 {
            killer = GroupKiller::new(&child);
        }
        children.push(child);
    }
    let stdin_bytes = AtomicU64::new(0);

    let outcome = tokio::time::timeout(
        timeout,
        drive(&mut children, stdin, stdout, limit, &stdin_bytes),
    )
    .await;
    match outcome {
        Err(_elapsed) => {
            reap_all(&mut children, &mut killer).await;
            Err(Error::TimedOut {
                what: what.to_owned(),
                after: timeout,
            })
        }
        Ok(Err(failure)) => {
            // A broken stdin source or stdout sink: the command must not go on and, say, commit
            // a restore from truncated input.
            reap_all(&mut children, &mut killer).await;
            Err(Error::Failed {
                what: format!("{what}: {}", failure.stage),
                source: Box::new(failure.error),
            })
        }
        Ok(Ok(mut finished)) => {
            // The leader exited and its pipes closed; anything it left running in the
            // background (a daemon) is the command's business.
            killer.disarm();
            finished.stdin_bytes = stdin_bytes.load(Ordering::Relaxed);
            Ok(finished)
        }
    }
}

struct StreamFailure {
    stage: &'static str,
    error: io::Error,
}

async fn drive(
    children: &mut [Child],
    stdin: Stdin,
    stdout: Stdout,
    limit: usize,
    stdin_bytes: &AtomicU64,
) -> std::result::Result<Finished, StreamFailure> {
    let child_stdin = children.first_mut().and_then(|c| c.stdin.take());
    let child_stdout = children.last_mut().and_then(|c| c.stdout.take());
    let child_stderrs: Vec<_> = children.iter_mut().map(|c| c.stderr.take()).collect();

    let feed = async {
        let Some(mut pipe) = child_stdin else {
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
        // Dropping the pipe closes the command's stdin, so it sees end of input.
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
        let Some(mut pipe) = child_stdout else {
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

    let err = futures::future::join_all(child_stderrs.into_iter().map(|pipe| async move {
        let Some(mut pipe) = pipe else {
            return Ok(Captured::default());
        };
        capture(&mut pipe, limit).await.map_err(|e| StreamFailure {
            stage: "reading stderr",
            error: e,
        })
    }));

    let io = async {
        let (out, errs) = tokio::join!(out, err);
        let out = out?;
        // One stderr, the programs' in order, within the one limit.
        let mut err = Captured::default();
        for e in errs {
            let e = e?;
            let room = limit.saturating_sub(err.bytes.len());
            err.truncated |= e.truncated || e.bytes.len() > room;
            err.bytes
                .extend_from_slice(&e.bytes[..e.bytes.len().min(room)]);
        }
        // As `set -o pipefail`: the last non-zero status, else the last one's.
        let mut status = None;
        for child in children.iter_mut() {
            let s = child.wait().await.map_err(|e| StreamFailure {
                stage: "waiting for it",
                error: e,
            })?;
            if status.is_none_or(|_| !s.success()) {
                status = Some(s);
            }
        }
        let status = status.ok_or(StreamFailure {
            stage: "starting it",
            error: io::Error::other("no program to run"),
        })?;
        Ok::<_, StreamFailure>((out, err, status))
    };

    // Stdin is fed beside the output, but the command's end does not wait for the source of
    // stdin: a command that exits without reading all of its input is finished.
    tokio::pin!(feed);
    tokio::pin!(io);
    let mut fed = false;
    let (out, err, status) = loop {
        tokio::select! {
            result = &mut feed, if !fed => {
                result?;
                fed = true;
            }
            result = &mut io => break result?,
        }
    };
    Ok(Finished {
        exit_code: exit_code(status),
        stdout_bytes: out.total,
        stdout: out.bytes,
        stdout_truncated: out.truncated,
        stderr: err.bytes,
        stderr_truncated: err.truncated,
        stdin_bytes: 0,
    })
}

/// The stage of a failed write into the command's stdin.
const WRITING_STDIN: &str = "writing stdin";

async fn feed_stream(
    source: &mut (dyn AsyncRead + Send + Unpin),
    pipe: &mut (dyn AsyncWrite + Send + Unpin),
    count: &AtomicU64,
) -> std::result::Result<(), StreamFailure> {
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = source.read(&mut buf).await.map_err(|e| StreamFailure {
            stage: "reading the stdin stream",
            error: e,
        })?;
        if n == 0 {
            return Ok(());
        }
        pipe.write_all(&buf[..n]).await.map_err(|e| StreamFailure {
            stage: WRITING_STDIN,
            error: e,
        })?;
        count.fetch_add(n as u64, Ordering::Relaxed);
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
) -> std::result::Result<Captured, StreamFailure> {
    let mut total = 0u64;
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = pipe.read(&mut buf).await.map_err(|e| StreamFailure {
            stage: "reading stdout",
            error: e,
        })?;
        if n == 0 {
            break;
        }
        sink.write_all(&buf[..n]).await.map_err(|e| StreamFailure {
            stage: "writing the stdout stream",
            error: e,
        })?;
        total += n as u64;
    }
    sink.shutdown().await.map_err(|e| StreamFailure {
        stage: "closing the stdout stream",
        error: e,
    })?;
    Ok(Captured {
        bytes: Vec::new(),
        truncated: false,
        total,
    })
}

/// Runs a command with no stdin and with stdout and stderr going to `log` (a file, so that a
/// daemon it starts in the background cannot hold a pipe open); returns its exit code.
pub(crate) async fn run_logged(
    command: &mut Command,
    what: &str,
    log: Option<std::fs::File>,
    timeout: Duration,
) -> Result<i32> {
    let (out, err) = match log {
        Some(file) => {
            let clone = file.try_clone().map_err(|e| Error::Failed {
                what: format!("{what}: log file"),
                source: Box::new(e),
            })?;
            (Stdio::from(file), Stdio::from(clone))
        }
        None => (Stdio::null(), Stdio::null()),
    };
    command.stdin(Stdio::null()).stdout(out).stderr(err);
    let mut child = spawn(command, what)?;
    let mut killer = GroupKiller::new(&child);
    match tokio::time::timeout(timeout, child.wait()).await {
        Err(_elapsed) => {
            kill_and_reap(&mut child, &mut killer).await;
            Err(Error::TimedOut {
                what: what.to_owned(),
                after: timeout,
            })
        }
        Ok(Err(e)) => {
            kill_and_reap(&mut child, &mut killer).await;
            Err(Error::Failed {
                what: format!("waiting for {what}"),
                source: Box::new(e),
            })
        }
        Ok(Ok(status)) => {
            killer.disarm();
            Ok(exit_code(status))
        }
    }
}
