//! Running local processes: bounded capture, streamed stdout with backpressure, timeouts that
//! kill the whole process group.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::pipes::{Finished, Pipes, Reader, StreamFailure, Writer, drive, pipefail};
use crate::{Error, Result, Stdin, Stdout};

/// How long to wait for a killed process to be reaped before giving up on it (it is then
/// reaped in the background by tokio).
const REAP_GRACE: Duration = Duration::from_secs(5);

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
        self.signal();
        self.0 = None;
    }

    /// Kills the group, leaving the killer armed.
    fn signal(&self) {
        if let Some(pgid) = self.0 {
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

/// Kills a group when dropped while still holding it: see `run`.
struct KillFirst<'a>(Option<&'a GroupKiller>);

impl Drop for KillFirst<'_> {
    fn drop(&mut self) {
        if let Some(killer) = self.0 {
            killer.signal();
        }
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

    let pipes = Pipes {
        stdin: children
            .first_mut()
            .and_then(|c| c.stdin.take())
            .map(|p| Box::new(p) as Writer),
        stdout: children
            .last_mut()
            .and_then(|c| c.stdout.take())
            .map(|p| Box::new(p) as Reader),
        stderrs: children
            .iter_mut()
            .map(|c| c.stderr.take().map(|p| Box::new(p) as Reader))
            .collect(),
    };
    let exit = async {
        let mut codes = Vec::with_capacity(children.len());
        for child in children.iter_mut() {
            let status = child.wait().await.map_err(|e| StreamFailure {
                stage: "waiting for it",
                error: e,
            })?;
            codes.push(exit_code(status));
        }
        pipefail(codes).ok_or(StreamFailure {
            stage: "starting it",
            error: io::Error::other("no program to run"),
        })
    };
    let outcome = {
        let cut = || killer.signal();
        let driven = drive(pipes, stdin, stdout, limit, &stdin_bytes, &cut, exit);
        tokio::pin!(driven);
        // Declared after `driven`, so dropped before it should this future be dropped (the
        // engine's deadline, a cancelled run): the group dies before its pipes close.
        let mut cancelled = KillFirst(Some(&killer));
        let outcome = tokio::select! {
            outcome = &mut driven => Ok(outcome),
            () = tokio::time::sleep(timeout) => {
                // Killed before the pipes close with `driven`: the command must not read the
                // end of a cut-short input and act on it.
                killer.signal();
                Err(())
            }
        };
        cancelled.0 = None;
        outcome
    };
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
            Err(failure.into_error(what))
        }
        Ok(Ok(finished)) => {
            // The leader exited and its pipes closed; anything it left running in the
            // background (a daemon) is the command's business.
            killer.disarm();
            Ok(finished)
        }
    }
}

/// Runs a command with no stdin and with stdout and stderr going to `log` (a file, so that a
/// daemon it starts in the background cannot hold a pipe open); returns its exit code.
pub(crate) async fn run_logged(
    command: &mut Command,
    what: &str,
    log: Option<std::fs::File>,
    timeout: Duration,
) -> Result<ExitStatus> {
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
            Ok(status)
        }
    }
}
