//! `cairn:blueprint/exec`: commands in the target workload's containers (capability `exec`).

use std::time::Duration;

use cairn_cluster::{ExecOutput, ExecRequest, Stdin, Stdout, WorkloadRef};

use super::{bounded, from_cluster};
use crate::bindings::{HostResult, WitError, exec};
use crate::capability::Capability;
use crate::limits::{MAX_STDIN, human_bytes};
use crate::state::{Blanked as _, HostState};

/// A checked command: where it runs and how long it may take.
pub(crate) struct Checked {
    pub host: crate::run::HostContext,
    pub workload: WorkloadRef,
    pub request: ExecRequest,
    /// The host call's own timeout: the command's plus a margin for the backend to report.
    pub call_timeout: Duration,
}

/// Most programs in one command's pipeline (`argv` and `then`).
const MAX_PIPELINE: usize = 8;

/// Time a backend gets past a command's own timeout to kill it and report.
const REPORT_MARGIN: Duration = Duration::from_secs(5);

/// Pods one `run-all` runs its command in at once. A workload may have a thousand pods (the
/// local target's replica cap, or a big StatefulSet), and each exec holds processes, pipes and
/// buffers on the host (or a stream to the API server): the rest wait their turn.
const RUN_ALL_IN_FLIGHT: usize = 8;

/// The stdout and stderr one `run-all` captures across all its pods. The whole result is held
/// on the host before the guest gets it, so the per-command cap times the pod count (2 GiB
/// for 1024 pods) would let one call exhaust the host; each pod gets an equal share instead.
const RUN_ALL_OUTPUT: usize = 16 << 20;

/// The least a pod's stdout and its stderr are each cut at in a `run-all`, however many pods
/// share [`RUN_ALL_OUTPUT`]: enough for a status line and an error message.
const RUN_ALL_OUTPUT_FLOOR: usize = 4 << 10;

/// The cap on each of a pod's stdout and stderr in a `run-all` over `pods` pods: the
/// command's own cap, or its pod's share of [`RUN_ALL_OUTPUT`] if smaller.
fn run_all_output_limit(own: usize, pods: usize) -> usize {
    let share = RUN_ALL_OUTPUT / (2 * pods.max(1));
    own.min(share.max(RUN_ALL_OUTPUT_FLOOR))
}

impl HostState {
    /// Checks a command against the grant and the scope, and builds the backend request; a
    /// command that names no timeout gets `default` (at most what is left of the phase).
    pub(crate) fn check_command(
        &self,
        cap: Capability,
        command: exec::Command,
        default: Duration,
    ) -> Result<Checked, WitError> {
        let host = self.require(cap)?;
        let workload = self.resolve(command.workload)?;
        if command.argv.is_empty() {
            return Err(WitError::Invalid(
                "the command's argv is empty; name a program".into(),
            ));
        }
        if command.then.len() > MAX_PIPELINE - 1 {
            return Err(WitError::Invalid(format!(
                "the command pipes into {} more programs; a pipeline has at most {MAX_PIPELINE}",
                command.then.len()
            )));
        }
        if let Some(i) = command.then.iter().position(Vec::is_empty) {
            return Err(WitError::Invalid(format!(
                "`then[{i}]` of the command is empty; name a program or drop it"
            )));
        }
        // No program can be given a NUL: each argument and variable ends at one.
        let words = command.argv.iter().chain(command.then.iter().flatten());
        let env = command.env.iter().flat_map(|(k, v)| [k, v]);
        if let Some(word) = words.chain(env).find(|w| w.contains('\0')) {
            return Err(WitError::Invalid(format!(
                "the command's argument or variable `{}` holds a NUL byte, which no program can \
                 be given; pass such data on stdin or through an export",
                crate::state::controls_escaped(word.clone())
            )));
        }
        let stdin = match command.stdin {
            None => Stdin::Empty,
            Some(bytes) if bytes.len() > MAX_STDIN => {
                return Err(WitError::Invalid(format!(
                    "stdin of {} is over the limit of {}; pipe bulk input from an import stream",
                    human_bytes(bytes.len() as u64),
                    human_bytes(MAX_STDIN as u64)
                )));
            }
            Some(bytes) => Stdin::Bytes(bytes),
        };
        let limits = &self.action.limits;
        let wanted = command.timeout_ms.map_or(default, Duration::from_millis);
        let timeout = self.call_timeout(wanted);
        Ok(Checked {
            host,
            workload,
            request: ExecRequest {
                pod: command.pod,
                container: command.container,
                argv: command.argv,
                then: command.then,
                env: command.env,
                stdin,
                stdout: Stdout::Capture,
                output_limit: limits.exec_output,
                timeout,
                stopped: command.stopped,
            },
            call_timeout: timeout + REPORT_MARGIN,
        })
    }
}

/// The longest command line or end of stderr a debug trace shows.
const TRACED: usize = 400;

impl HostState {
    /// `text` as a debug trace may show it: one line, secrets blanked, cut.
    fn shown(&self, text: &str) -> String {
        self.log.secrets().shown_line(text, TRACED, "text")
    }

    /// The end of a command's output as a debug trace may show it (secrets blanked in the
    /// whole output first, so a cut never leaves part of one).
    fn shown_end(&self, output: &[u8]) -> String {
        let whole = String::from_utf8_lossy(output);
        let clear = self.log.secrets().redact(&whole).into_owned();
        let clear = crate::state::controls_escaped(clear);
        let mut start = clear.len().saturating_sub(TRACED);
        while !clear.is_char_boundary(start) {
            start += 1;
        }
        clear[start..].to_owned()
    }
}

pub(crate) fn to_wit(out: ExecOutput) -> exec::Output {
    exec::Output {
        pod: out.pod,
        exit_code: out.exit_code,
        stdout: out.stdout,
        stderr: out.stderr,
        stdout_truncated: out.stdout_truncated,
        stderr_truncated: out.stderr_truncated,
    }
}

impl exec::Host for HostState {
    async fn run(&mut self, command: exec::Command) -> HostResult<exec::Output> {
        let target = command
            .workload
            .as_ref()
            .map_or_else(|| self.scope(), |w| format!("{}/{}", w.namespace, w.name));
        let checked =
            self.check_command(Capability::Exec, command, self.action.limits.exec_timeout);
        let result = match checked {
            Err(e) => Err(e),
            Ok(Checked {
                host,
                workload,
                request,
                call_timeout,
            }) => {
                let traced = tracing::enabled!(tracing::Level::DEBUG);
                if traced {
                    let line = self.shown(&request.argv.join(" "));
                    tracing::debug!(%workload, command = %line, "exec");
                }
                let result = bounded("exec.run", call_timeout, async {
                    host.cluster
                        .exec(&workload, request)
                        .await
                        .map(to_wit)
                        .map_err(from_cluster)
                })
                .await;
                if traced {
                    match &result {
                        Ok(out) => tracing::debug!(
                            pod = %out.pod,
                            exit_code = out.exit_code,
                            stdout_bytes = out.stdout.len(),
                            stderr_end = %self.shown_end(&out.stderr),
                            "exec ended"
                        ),
                        Err(e) => {
                            tracing::debug!(error = %self.shown(super::message(e)), "exec failed")
                        }
                    }
                }
                result
            }
        };
        self.audit(Capability::Exec, "exec.run", &target, &result);
        Ok(result)
    }

    async fn run_all(&mut self, command: exec::Command) -> HostResult<Vec<exec::Output>> {
        let target = command
            .workload
            .as_ref()
            .map_or_else(|| self.scope(), |w| format!("{}/{}", w.namespace, w.name));
        if command.stopped {
            let refused = Err(WitError::Invalid(
                "run-all runs in every pod, and a stopped workload has none: use run for a \
                 command against a stopped workload"
                    .into(),
            ));
            self.audit(Capability::Exec, "exec.run-all", &target, &refused);
            return Ok(refused);
        }
        let checked =
            self.check_command(Capability::Exec, command, self.action.limits.exec_timeout);
        // Pods run a few at a time: each within one command's time, the whole within the
        // phase's.
        let phase_left = self.call_timeout(Duration::MAX);
        let result = match checked {
            Err(e) => Err(e),
            Ok(Checked {
                host,
                workload,
                request,
                call_timeout,
            }) => {
                let ExecRequest {
                    container,
                    argv,
                    then,
                    env,
                    stdin,
                    output_limit,
                    timeout,
                    ..
                } = request;
                let stdin = match stdin {
                    Stdin::Bytes(b) => Some(b),
                    _ => None,
                };
                bounded("exec.run-all", phase_left, async {
                    let info = host
                        .cluster
                        .workload(&workload)
                        .await
                        .map_err(from_cluster)?;
                    let output_limit = run_all_output_limit(output_limit, info.pods.len());
                    // Made before they are streamed: a stream over the map would hold its
                    // closure, which the future of this call cannot (it must be `Send` for
                    // any borrow of the pods).
                    let runs: Vec<_> = info
                        .pods
                        .iter()
                        .map(|pod| {
                            let req = ExecRequest {
                                pod: Some(pod.name.clone()),
                                container: container.clone(),
                                argv: argv.clone(),
                                then: then.clone(),
                                env: env.clone(),
                                stdin: stdin.clone().map_or(Stdin::Empty, Stdin::Bytes),
                                stdout: Stdout::Capture,
                                output_limit,
                                timeout,
                                stopped: false,
                            };
                            let (cluster, workload) = (host.cluster.clone(), workload.clone());
                            bounded("exec.run-all", call_timeout, async move {
                                cluster
                                    .exec(&workload, req)
                                    .await
                                    .map(to_wit)
                                    .map_err(from_cluster)
                            })
                        })
                        .collect();
                    // In pod order, whichever finishes first.
                    use futures::StreamExt as _;
                    futures::stream::iter(runs)
                        .buffered(RUN_ALL_IN_FLIGHT)
                        .collect::<Vec<_>>()
                        .await
                        .into_iter()
                        .collect()
                })
                .await
            }
        };
        self.audit(Capability::Exec, "exec.run-all", &target, &result);
        Ok(result)
    }

    async fn session_open(&mut self, name: String, command: exec::Command) -> HostResult<()> {
        let target = format!("{}/session/{name}", self.scope());
        let result = self.open_session(name, command).await;
        self.audit(Capability::Exec, "exec.session-open", &target, &result);
        Ok(result)
    }

    async fn session_send(
        &mut self,
        name: String,
        input: Vec<u8>,
        until: String,
        timeout_ms: Option<u64>,
    ) -> HostResult<Vec<u8>> {
        let target = format!("{}/session/{name}", self.scope());
        let result = self.send_session(name, input, until, timeout_ms).await;
        self.audit(Capability::Exec, "exec.session-send", &target, &result);
        Ok(result)
    }

    async fn session_close(&mut self, name: String) -> HostResult<exec::Output> {
        let target = format!("{}/session/{name}", self.scope());
        let result = self.close_session(name).await;
        self.audit(Capability::Exec, "exec.session-close", &target, &result);
        Ok(result)
    }

    async fn session_kill(&mut self, name: String) -> HostResult<()> {
        let target = format!("{}/session/{name}", self.scope());
        let result = self.kill_session(name).await;
        self.audit(Capability::Exec, "exec.session-kill", &target, &result);
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run-all's captured output stays within its total however many pods share it, each
    /// pod keeping at least the floor and at most the command's own cap.
    #[test]
    fn run_all_shares_its_output_cap_among_the_pods() {
        let own = crate::limits::DEFAULT_EXEC_OUTPUT;
        assert_eq!(run_all_output_limit(own, 1), own);
        assert_eq!(run_all_output_limit(own, 8), own);
        assert_eq!(run_all_output_limit(own, 1024), 8 << 10);
        assert!(2 * 1024 * run_all_output_limit(own, 1024) <= RUN_ALL_OUTPUT);
        assert_eq!(run_all_output_limit(own, 100_000), RUN_ALL_OUTPUT_FLOOR);
        assert_eq!(run_all_output_limit(100, 1024), 100);
        assert_eq!(run_all_output_limit(own, 0), own);
    }
}
