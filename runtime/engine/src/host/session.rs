//! Exec sessions: a command whose stdin and stdout stay piped to the host across the phases
//! of one run, so a prehook can hold a database lock or backup mode that the posthook ends.
//!
//! A session is an ordinary exec whose stdin and stdout are in-memory pipes owned by the run's
//! [`Sessions`]. The backend's exec future runs in a task; dropping the task (at
//! `session-kill`, or when the run ends with the session still open) is the backend's
//! "the caller gave up" signal, which kills the command's process group, and with it whatever
//! it held.

use std::collections::HashMap;
use std::time::Duration;

use cairn_cluster::{ExecOutput, Stdin, Stdout};
// Shared with the SDK's fake host, which refuses the same sessions.
use cairn_contract::MAX_SESSIONS;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::exec::{Checked, to_wit};
use super::{bounded, from_cluster};
use crate::bindings::{WitError, exec};
use crate::capability::Capability;
use crate::limits::human_bytes;
use crate::state::HostState;

/// Bytes buffered between a session's process and the host in each direction. Output that no
/// `session-send` reads waits here; past it, the process blocks on its stdout.
const PIPE_BUFFER: usize = 256 << 10;

/// The sessions of one run, shared by its phases. Dropping it kills what is still open.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

#[derive(Debug)]
struct Session {
    stdin: DuplexStream,
    stdout: BufReader<DuplexStream>,
    exec: Exec,
}

/// The backend's exec of a session; aborted (its process group killed) when dropped.
#[derive(Debug)]
struct Exec(JoinHandle<cairn_cluster::Result<ExecOutput>>);

impl Drop for Exec {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Sessions {
    /// Ends every session still open: the names of those it had to kill.
    pub(crate) async fn end(&self) -> Vec<String> {
        let mut open = self.open.lock().await;
        let mut names: Vec<String> = open.drain().map(|(name, _session)| name).collect();
        names.sort();
        names
    }
}

fn check_name(name: &str) -> Result<(), WitError> {
    match cairn_contract::session_name_problem(name) {
        None => Ok(()),
        Some(problem) => Err(WitError::Invalid(problem)),
    }
}

fn unknown(name: &str) -> WitError {
    WitError::NotFound(cairn_contract::no_session(name))
}

impl HostState {
    pub(crate) async fn open_session(
        &mut self,
        name: String,
        command: exec::Command,
    ) -> Result<(), WitError> {
        check_name(&name)?;
        let life = command.timeout_ms.map(Duration::from_millis);
        let Checked {
            host,
            workload,
            mut request,
            ..
        } = self.check_command(Capability::Exec, command, self.action.limits.exec_timeout)?;
        let sessions = self.action.sessions.clone();
        let mut open = sessions.open.lock().await;
        if open.contains_key(&name) {
            return Err(WitError::Invalid(format!(
                "a session named `{name}` is already open in this run; close it first or pick another name"
            )));
        }
        if open.len() >= MAX_SESSIONS {
            return Err(WitError::Invalid(format!(
                "this run already holds {MAX_SESSIONS} sessions, the most it may; close one first"
            )));
        }
        let first = match std::mem::replace(&mut request.stdin, Stdin::Empty) {
            Stdin::Bytes(bytes) => bytes,
            _ => Vec::new(),
        };
        let (mut stdin, theirs_in) = tokio::io::duplex(PIPE_BUFFER);
        let (theirs_out, stdout) = tokio::io::duplex(PIPE_BUFFER);
        request.stdin = Stdin::Stream(Box::new(theirs_in));
        request.stdout = Stdout::Stream(Box::new(theirs_out));
        // The session lives until it is closed or the run ends, not just this phase.
        // Never past the run's budget: on Kubernetes a session of a stopped workload keeps a
        // pod (with the workload's volumes) alive for this long should Cairn die.
        let budget = self.action.limits.run_budget();
        request.timeout = life.map_or(budget, |life| life.min(budget));
        let cluster = host.cluster.clone();
        let exec = Exec(tokio::spawn(async move {
            cluster.exec(&workload, request).await
        }));
        // Bounded like any host call: a program that never reads its stdin would otherwise
        // hold this call, and the run's sessions, until it exits. On an error `exec` is
        // dropped, which kills the process.
        if !first.is_empty() {
            let timeout = self.call_timeout(self.action.limits.host_call_timeout);
            bounded("exec.session-open", timeout, async {
                stdin.write_all(&first).await.map_err(|_| {
                    WitError::Failed(format!(
                        "session `{name}` ended before it read its first input"
                    ))
                })
            })
            .await?;
        }
        open.insert(
            name,
            Session {
                stdin,
                stdout: BufReader::new(stdout),
                exec,
            },
        );
        Ok(())
    }

    pub(crate) async fn send_session(
        &mut self,
        name: String,
        input: Vec<u8>,
        until: String,
        timeout_ms: Option<u64>,
    ) -> Result<Vec<u8>, WitError> {
        self.require(Capability::Exec)?;
        let limits = &self.action.limits;
        let cap = limits.exec_output;
        let timeout =
            self.call_timeout(timeout_ms.map_or(limits.exec_timeout, Duration::from_millis));
        let sessions = self.action.sessions.clone();
        let mut open = sessions.open.lock().await;
        let session = open.get_mut(&name).ok_or_else(|| unknown(&name))?;
        let exchange = async {
            if session.stdin.write_all(&input).await.is_err() {
                return Ok(None);
            }
            let mut got = Vec::new();
            let mut line = Vec::new();
            let too_much = || {
                WitError::Invalid(format!(
                    "session `{name}` printed more than {} before `{until}`; print less between markers",
                    human_bytes(cap as u64)
                ))
            };
            loop {
                line.clear();
                // A line is read up to what may still come (and the marker's line), so output
                // without line ends cannot grow without bound.
                let room = (cap.saturating_sub(got.len()) + until.len() + 2) as u64;
                let read = (&mut session.stdout)
                    .take(room)
                    .read_until(b'\n', &mut line)
                    .await
                    .unwrap_or(0);
                if read == 0 {
                    return Ok(None);
                }
                if read as u64 == room && !line.ends_with(b"\n") {
                    return Err(too_much());
                }
                let text = line.strip_suffix(b"\n").unwrap_or(&line);
                let text = text.strip_suffix(b"\r").unwrap_or(text);
                if text == until.as_bytes() {
                    return Ok(Some(got));
                }
                if got.len() + line.len() > cap {
                    return Err(too_much());
                }
                got.extend_from_slice(&line);
            }
        };
        match bounded("exec.session-send", timeout, exchange).await {
            Ok(Some(got)) => Ok(got),
            Ok(None) => {
                // The process is gone: say how it ended.
                let session = open.remove(&name).ok_or_else(|| unknown(&name))?;
                Err(ended(&name, &until, session).await)
            }
            Err(e) => Err(e),
        }
    }

    /// Takes the open session `name` out of the run's sessions: ending it is then the caller's.
    async fn take_session(&mut self, name: &str) -> Result<Session, WitError> {
        self.require(Capability::Exec)?;
        let mut open = self.action.sessions.open.lock().await;
        open.remove(name).ok_or_else(|| unknown(name))
    }

    pub(crate) async fn kill_session(&mut self, name: String) -> Result<(), WitError> {
        // Dropping its exec aborts it, which kills the command's process group.
        drop(self.take_session(&name).await?);
        Ok(())
    }

    pub(crate) async fn close_session(&mut self, name: String) -> Result<exec::Output, WitError> {
        let session = self.take_session(&name).await?;
        let limits = &self.action.limits;
        let cap = limits.exec_output;
        let timeout = self.call_timeout(limits.exec_timeout);
        let Session {
            mut stdin,
            stdout,
            mut exec,
        } = session;
        bounded("exec.session-close", timeout, async move {
            let _ = stdin.shutdown().await;
            drop(stdin);
            let (rest, finished) = tokio::join!(drain(stdout, cap), &mut exec.0);
            let mut out = finished
                .map_err(|e| WitError::Failed(format!("session `{name}` was lost: {e}")))?
                .map_err(from_cluster)?;
            (out.stdout, out.stdout_truncated) = rest;
            Ok(to_wit(out))
        })
        .await
    }
}

/// Reads what is left of a session's stdout, keeping the first `cap` bytes.
async fn drain(mut stdout: BufReader<DuplexStream>, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    let mut truncated = false;
    while let Ok(n) = stdout.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = cap.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        truncated |= n > room;
    }
    (kept, truncated)
}

/// The error for a session whose process ended before printing `until`.
async fn ended(name: &str, until: &str, session: Session) -> WitError {
    let Session { mut exec, .. } = session;
    let how = match tokio::time::timeout(Duration::from_secs(5), &mut exec.0).await {
        Ok(Ok(Ok(out))) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail = stderr.trim();
            let tail = &tail[tail.floor_char_boundary(tail.len().saturating_sub(512))..];
            format!("exited with code {}: {tail}", out.exit_code)
        }
        Ok(Ok(Err(e))) => format!("failed: {}", super::message(&from_cluster(e))),
        Ok(Err(e)) => format!("was lost: {e}"),
        Err(_) => "closed its stdout".to_string(),
    };
    WitError::Failed(format!("session `{name}` {how} before printing `{until}`"))
}
