//! `cairn:blueprint/data`: export and import streams (capabilities `export` and `import`).
//!
//! Bulk bytes never enter guest memory: `pipe-from` runs a command through the cluster with
//! its stdout streamed straight into the export writer, and `pipe-into` streams an export into
//! a command's stdin. Piping runs a command in the workload, so it also needs `exec`. Only
//! `write` and `read` move bytes through the guest, each bounded by [`MAX_DATA_IO`].

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wasmtime::component::Resource;

use super::exec::Checked;
use super::{bounded, from_cluster, from_engine};
use crate::bindings::{HostResult, WitError, data, exec, types};
use crate::capability::Capability;
use crate::exports::{Artifact, ExportWriter, HOST_TAG_KEYS, check_name, check_tags};
use crate::limits::{MAX_DATA_IO, MAX_EXPORTS_PER_RUN, MAX_OPEN_STREAMS, human_bytes};
use crate::run::HostContext;
use crate::state::{ActionCtx, HostState};

type Writer = Arc<Mutex<Option<Box<dyn ExportWriter>>>>;

/// An open export stream. Dropped without `finish`, its writer is dropped, which discards it.
pub struct ExportStreamState {
    name: String,
    writer: Writer,
    finished: bool,
    /// Why the stream is broken, once a write or pipe into it failed part-way: its writer is
    /// dropped then (discarding what it had) and every later call is refused. Otherwise a
    /// blueprint that retried on the same stream would seal a cut-short dump followed by a
    /// whole one as one export that looks complete.
    broken: Option<String>,
    /// What ended the stream's appending: a command piped into it that exited non-zero after
    /// writing some of its output, which may then be cut short. Later pipes and writes are
    /// refused (a retry into the same stream would seal the cut output followed by a whole
    /// one); the stream may still be finished as it is, or dropped.
    ended_by: Option<String>,
}

/// An open import stream.
pub struct ImportStreamState {
    name: String,
    reader: Option<Box<dyn AsyncRead + Send + Unpin>>,
}

/// An import, counting the bytes read from it.
struct Counted {
    inner: Box<dyn AsyncRead + Send + Unpin>,
    read: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.read.fetch_add(n, Ordering::Relaxed);
        polled
    }
}

/// The export writer, lent to a command's stdout; shutting it down only flushes, because the
/// stream stays open for more writes until the guest calls `finish`.
struct Lent(Writer);

impl Lent {
    fn with<R>(
        &self,
        f: impl FnOnce(Pin<&mut (dyn ExportWriter + 'static)>) -> Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        let mut guard = match self.0.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match guard.as_mut() {
            Some(w) => f(Pin::new(w.as_mut())),
            None => Poll::Ready(Err(std::io::Error::other("the export stream is closed"))),
        }
    }
}

impl AsyncWrite for Lent {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.with(|w| w.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.with(|w| w.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.with(|w| w.poll_flush(cx))
    }
}

impl ExportStreamState {
    /// The stream's name, and its writer while it is open (for the catalog exports).
    pub(crate) fn open_writer(
        &self,
    ) -> Result<(String, impl AsyncWrite + Unpin + use<>), WitError> {
        self.appendable()?;
        Ok((self.name.clone(), Lent(self.writer.clone())))
    }

    /// Refuses an append to a stream that is not [`usable`](Self::usable), or whose appending
    /// a failed command ended.
    fn appendable(&self) -> Result<(), WitError> {
        self.usable()?;
        match &self.ended_by {
            None => Ok(()),
            Some(why) => Err(WitError::Invalid(cairn_contract::export_ended(
                &self.name, why,
            ))),
        }
    }

    /// Refuses a call on a stream that is finished, or broken by an earlier failure.
    fn usable(&self) -> Result<(), WitError> {
        let name = &self.name;
        if self.finished {
            return Err(WitError::Invalid(format!(
                "export {name:?} is already finished"
            )));
        }
        match &self.broken {
            None => Ok(()),
            Some(why) => Err(WitError::Failed(format!(
                "export {name:?} is broken: {why}, so the data written into it was discarded; \
                 open a new export (under another name: this one's stays taken) and write it \
                 again from the start"
            ))),
        }
    }

    /// Marks the stream broken by the failed `call` and drops its writer, which discards the
    /// part written so far, as for a stream dropped unfinished. The stream keeps its place
    /// among the open ones until the guest drops it.
    pub(crate) fn break_off(&mut self, call: &str, e: &WitError) {
        if self.broken.is_none() {
            self.broken = Some(format!(
                "an earlier {call} into it failed ({})",
                super::describe_error(e)
            ));
        }
        let writer = match self.writer.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if writer.is_some() {
            tracing::debug!(export = %self.name, call, "export stream broken by a failed call; discarded");
        }
    }
}

impl ImportStreamState {
    /// The stream's name, and the rest of its bytes' reader (taken: the stream is at its end
    /// afterwards).
    pub(crate) fn take_reader(&mut self) -> (String, Option<Box<dyn AsyncRead + Send + Unpin>>) {
        (self.name.clone(), self.reader.take())
    }
}

impl HostState {
    /// A blueprint's export tags followed by the host's own, keyed by [`HOST_TAG_KEYS`] in
    /// its order: the phase that wrote the export, its target, and the blueprint's name and
    /// digest.
    fn with_host_tags(&self, mut tags: Vec<(String, String)>) -> Vec<(String, String)> {
        let action = &self.action;
        let host = [
            Some(action.phase.clone()),
            Some(action.namespace.clone()),
            action.workload.clone(),
            Some(action.blueprint_name.clone()),
            Some(action.blueprint.clone()),
        ];
        tags.extend(
            HOST_TAG_KEYS
                .iter()
                .zip(host)
                .filter_map(|(k, v)| Some((k.to_string(), v?))),
        );
        tags
    }

    /// Whether this action may read or delete the export `artifact` (whose reference as the
    /// guest passed it is `reference`): one it was given or wrote in this run, or one whose
    /// tags put it in the action's scope (its namespace, and its workload when the action has
    /// one). Without this a blueprint could read or forget any export of the repository, by
    /// guessing or listing references.
    async fn may_use(
        action: Arc<ActionCtx>,
        host: &HostContext,
        reference: &[(String, String)],
        artifact: &Artifact,
        timeout: std::time::Duration,
    ) -> Result<(), WitError> {
        if action.references.vouched(reference) {
            return Ok(());
        }
        let tags = bounded("data.tags", timeout, async {
            host.exports.tags(artifact).await.map_err(from_engine)
        })
        .await?;
        let tag = |key: &str| tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        let inside = tag("namespace") == Some(action.namespace.as_str())
            && action
                .workload
                .as_deref()
                .is_none_or(|w| tag("workload") == Some(w));
        if inside {
            return Ok(());
        }
        let owner = match (tag("namespace"), tag("workload")) {
            (Some(ns), Some(w)) => format!("workload `{ns}/{w}`"),
            (Some(ns), None) => format!("namespace `{ns}`"),
            _ => "no workload (it has no tags)".to_owned(),
        };
        let scope = match &action.workload {
            Some(w) => format!("{}/{w}", action.namespace),
            None => action.namespace.clone(),
        };
        Err(WitError::Denied(format!(
            "export `{}` belongs to {owner}, outside this action's scope `{scope}`, and was \
             neither given to this action nor written by it",
            artifact.name
        )))
    }

    /// Refuses a new export or import stream while [`MAX_OPEN_STREAMS`] are open: each holds
    /// threads, buffers and (an export) a repository lock.
    fn room_for_a_stream(&self) -> Result<(), WitError> {
        if self.open_streams >= MAX_OPEN_STREAMS {
            return Err(WitError::Invalid(format!(
                "this phase already has {MAX_OPEN_STREAMS} export and import streams open, the most it may; \
                 finish or drop one first"
            )));
        }
        Ok(())
    }

    fn opened_stream(&mut self) -> &mut Self {
        self.open_streams += 1;
        self
    }

    /// Checks a pipe: the command as exec checks it, plus the data capability. Without a
    /// timeout of its own it may run as long as the phase: a dump takes as long as its data.
    fn check_pipe(&self, cap: Capability, command: exec::Command) -> Result<Checked, WitError> {
        self.require(cap)?;
        self.check_command(Capability::Exec, command, Duration::MAX)
    }

    /// Pipes the rest of an import into `command`'s stdin, then `trailer` if the import was
    /// read to its end; the transfer counts the import's bytes only.
    async fn pipe_import(
        &mut self,
        call: &'static str,
        stream: Resource<ImportStreamState>,
        command: exec::Command,
        trailer: Option<Vec<u8>>,
    ) -> HostResult<data::Transfer> {
        let checked = self
            .check_pipe(Capability::Import, command)
            .and_then(|c| match &trailer {
                Some(t) if t.len() > MAX_DATA_IO => Err(WitError::Invalid(format!(
                    "a trailer of {} is over the limit of {}",
                    human_bytes(t.len() as u64),
                    human_bytes(MAX_DATA_IO as u64)
                ))),
                _ => Ok(c),
            });
        let state = self.table().get_mut(&stream)?;
        let name = state.name.clone();
        let target = match &checked {
            Ok(c) => format!("import {name} -> {}", c.workload),
            Err(_) => format!("import {name}"),
        };
        let result = match checked {
            Err(e) => Err(e),
            Ok(mut checked) => {
                let reader = state
                    .reader
                    .take()
                    .unwrap_or_else(|| Box::new(tokio::io::empty()));
                let read = Arc::new(AtomicU64::new(0));
                let counted = Counted {
                    inner: reader,
                    read: read.clone(),
                };
                // `chain` reads the trailer only after the import's end, never after an error.
                checked.request.stdin = cairn_cluster::Stdin::Stream(match trailer {
                    Some(t) => Box::new(counted.chain(std::io::Cursor::new(t))),
                    None => Box::new(counted),
                });
                // The import reaches stdin before the trailer, so the smaller is the import's
                // share of what crossed.
                checked
                    .transfer(call, |out| {
                        out.stdin_bytes.min(read.load(Ordering::Relaxed))
                    })
                    .await
            }
        };
        self.audit(Capability::Import, call, &target, &result);
        Ok(result)
    }
}

impl Checked {
    /// Runs the checked command within its call's time, as a transfer of the bytes `crossed`
    /// counts.
    async fn transfer(
        self,
        call: &'static str,
        crossed: impl FnOnce(&cairn_cluster::ExecOutput) -> u64 + Send,
    ) -> Result<data::Transfer, WitError> {
        let Checked {
            host,
            workload,
            request,
            call_timeout,
        } = self;
        bounded(call, call_timeout, async {
            let out = host
                .cluster
                .exec(&workload, request)
                .await
                .map_err(from_cluster)?;
            Ok(data::Transfer {
                bytes: crossed(&out),
                exit_code: out.exit_code,
                stderr: out.stderr,
                stderr_truncated: out.stderr_truncated,
            })
        })
        .await
    }
}

impl data::HostExportStream for HostState {
    async fn pipe_from(
        &mut self,
        stream: Resource<ExportStreamState>,
        command: exec::Command,
    ) -> HostResult<data::Transfer> {
        let state = self.table().get(&stream)?;
        let (name, writer, usable) = (state.name.clone(), state.writer.clone(), state.appendable());
        let checked = self.check_pipe(Capability::Export, command);
        let target = match &checked {
            Ok(c) => format!("{} -> export {name}", c.workload),
            Err(_) => format!("export {name}"),
        };
        let result = match (checked, usable) {
            (Err(e), _) | (_, Err(e)) => Err(e),
            (Ok(mut checked), Ok(())) => {
                checked.request.stdout = cairn_cluster::Stdout::Stream(Box::new(Lent(writer)));
                let piped = checked
                    .transfer("data.pipe-from", |out| out.stdout_bytes)
                    .await;
                // A command that ran may have put some of its output in the stream, however
                // it failed; one refused before it started (not allowed, no such pod) put none.
                if let Err(e @ (WitError::TimedOut(_) | WitError::Failed(_))) = &piped {
                    self.table()
                        .get_mut(&stream)?
                        .break_off("data.pipe-from", e);
                }
                if let Ok(t) = &piped
                    && t.exit_code != 0
                    && t.bytes > 0
                {
                    self.table().get_mut(&stream)?.ended_by =
                        Some(cairn_contract::export_ended_by(t.exit_code, t.bytes));
                }
                piped
            }
        };
        self.audit(Capability::Export, "data.pipe-from", &target, &result);
        Ok(result)
    }

    async fn write(
        &mut self,
        stream: Resource<ExportStreamState>,
        bytes: Vec<u8>,
    ) -> HostResult<()> {
        let timeout = self.call_timeout(self.action.limits.host_call_timeout);
        let state = self.table().get(&stream)?;
        let (name, writer, usable) = (state.name.clone(), state.writer.clone(), state.appendable());
        if let Err(e) = self.require(Capability::Export).and(usable) {
            return Ok(Err(e));
        }
        if bytes.len() > MAX_DATA_IO {
            return Ok(Err(WitError::Invalid(format!(
                "a write of {} is over the limit of {}; pipe bulk data with pipe-from",
                human_bytes(bytes.len() as u64),
                human_bytes(MAX_DATA_IO as u64)
            ))));
        }
        let written = bounded("data.write", timeout, async {
            Lent(writer)
                .write_all(&bytes)
                .await
                .map_err(|e| WitError::Failed(format!("writing export {name:?}: {e}")))
        })
        .await;
        // Part of the bytes may have gone in.
        if let Err(e) = &written {
            self.table().get_mut(&stream)?.break_off("data.write", e);
        }
        Ok(written)
    }

    async fn finish(&mut self, stream: Resource<ExportStreamState>) -> HostResult<types::Artifact> {
        let timeout = self.call_timeout(self.action.limits.host_call_timeout);
        let state = self.table().get_mut(&stream)?;
        let name = state.name.clone();
        // Refused and left as it is: a broken stream keeps its place until it is dropped.
        if state.broken.is_some()
            && let Err(e) = state.usable()
        {
            let refused: Result<types::Artifact, _> = Err(e);
            self.audit(
                Capability::Export,
                "data.finish",
                &format!("export {name}"),
                &refused,
            );
            return Ok(refused);
        }
        let already = state.finished;
        state.finished = true;
        let writer = match state.writer.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if writer.is_some() {
            self.open_streams = self.open_streams.saturating_sub(1);
        }
        let result = match (self.require(Capability::Export), writer) {
            (Err(e), _) => Err(e),
            (Ok(_), None) if already => Err(WitError::Invalid(format!(
                "export {name:?} is already finished"
            ))),
            (Ok(_), None) => Err(WitError::Failed(format!("export {name:?} lost its writer"))),
            (Ok(host), Some(writer)) => {
                bounded("data.finish", timeout, async {
                    let reference = writer.finish().await.map_err(from_engine)?;
                    let keys = host.exports.reference_keys();
                    if let Some((key, _)) = reference.iter().find(|(k, _)| !keys.keys.contains(&k.as_str())) {
                        // A broken export store, not the guest: its reference could not be
                        // told apart from the blueprint's values once stored.
                        return Err(WitError::Failed(format!(
                            "export {name:?}: the export store wrote the reference key `{key}`, which it does not \
                             declare among {:?}",
                            keys.keys
                        )));
                    }
                    self.action.references.vouch(reference.clone());
                    Ok(types::Artifact {
                        name: name.clone(),
                        values: Vec::new(),
                        reference,
                    })
                })
                .await
            }
        };
        let target = match &result {
            Ok(a) => export_target(&name, &Artifact::from_wit(a.clone())),
            Err(_) => format!("export {name}"),
        };
        self.audit(Capability::Export, "data.finish", &target, &result);
        Ok(result)
    }

    async fn drop(&mut self, stream: Resource<ExportStreamState>) -> wasmtime::Result<()> {
        let state = self.table().delete(stream)?;
        if !state.finished {
            self.open_streams = self.open_streams.saturating_sub(1);
            tracing::debug!(export = %state.name, "export stream dropped without finish; discarded");
        }
        Ok(())
    }
}

impl data::HostImportStream for HostState {
    async fn pipe_into(
        &mut self,
        stream: Resource<ImportStreamState>,
        command: exec::Command,
    ) -> HostResult<data::Transfer> {
        self.pipe_import("data.pipe-into", stream, command, None)
            .await
    }

    async fn pipe_into_with_trailer(
        &mut self,
        stream: Resource<ImportStreamState>,
        command: exec::Command,
        trailer: Vec<u8>,
    ) -> HostResult<data::Transfer> {
        self.pipe_import(
            "data.pipe-into-with-trailer",
            stream,
            command,
            Some(trailer),
        )
        .await
    }

    async fn read(&mut self, stream: Resource<ImportStreamState>, max: u32) -> HostResult<Vec<u8>> {
        let timeout = self.call_timeout(self.action.limits.host_call_timeout);
        if let Err(e) = self.require(Capability::Import) {
            return Ok(Err(e));
        }
        let state = self.table().get_mut(&stream)?;
        let name = state.name.clone();
        let Some(reader) = state.reader.as_mut() else {
            return Ok(Ok(Vec::new()));
        };
        let max = (max as usize).min(MAX_DATA_IO);
        Ok(bounded("data.read", timeout, async {
            let mut buf = Vec::with_capacity(max.min(64 << 10));
            reader
                .take(max as u64)
                .read_to_end(&mut buf)
                .await
                .map_err(|e| WitError::Failed(format!("reading import {name:?}: {e}")))?;
            Ok(buf)
        })
        .await)
    }

    async fn drop(&mut self, stream: Resource<ImportStreamState>) -> wasmtime::Result<()> {
        self.table().delete(stream)?;
        self.open_streams = self.open_streams.saturating_sub(1);
        Ok(())
    }
}

impl data::Host for HostState {
    async fn open_export(
        &mut self,
        name: String,
        tags: Vec<(String, String)>,
    ) -> HostResult<Resource<ExportStreamState>> {
        let timeout = self.call_timeout(self.action.limits.host_call_timeout);
        let host = match self.require(Capability::Export) {
            Ok(host) => host,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = check_name(&name) {
            return Ok(Err(WitError::Invalid(e.to_string())));
        }
        if let Err(e) = check_tags(&tags) {
            return Ok(Err(WitError::Invalid(format!("export {name:?}: {e}"))));
        }
        // Its name and tags go into the export's reference and the repository's listing, which
        // no secret may reach (the reference is kept in the catalog).
        let secrets = self.log.secrets();
        if let Some(secret) = std::iter::once(&name)
            .chain(tags.iter().flat_map(|(k, v)| [k, v]))
            .find_map(|text| secrets.held_by(text))
        {
            return Ok(Err(WitError::Invalid(format!(
                "an export's name or tags hold secret `{secret}`: they are kept in the \
                 catalog and the repository's listing, where a secret never goes"
            ))));
        }
        if let Err(e) = self.room_for_a_stream() {
            return Ok(Err(e));
        }
        if self.export_names.contains(&name) {
            return Ok(Err(WitError::Invalid(format!(
                "an export named {name:?} was already opened by this action"
            ))));
        }
        // Counted whether finished or not: a loop of open and drop writes to the repository
        // too.
        let opened = self.action.exports_opened.fetch_add(1, Ordering::Relaxed);
        if opened >= MAX_EXPORTS_PER_RUN {
            self.action.exports_opened.fetch_sub(1, Ordering::Relaxed);
            return Ok(Err(WitError::Invalid(format!(
                "a run opens at most {MAX_EXPORTS_PER_RUN} exports, finished or not (each is a \
                 repository snapshot the run keeps track of), and this one has opened {opened}: \
                 put many small items in one export"
            ))));
        }
        self.export_names.insert(name.clone());
        let action_id = self.action.action_id.clone();
        let tags = self.with_host_tags(tags);
        let writer = bounded("data.open-export", timeout, async {
            host.exports
                .create(&action_id, &name, &tags)
                .await
                .map_err(from_engine)
        })
        .await;
        Ok(match writer {
            Err(e) => Err(e),
            Ok(writer) => Ok(self.opened_stream().table().push(ExportStreamState {
                name,
                writer: Arc::new(Mutex::new(Some(writer))),
                finished: false,
                broken: None,
                ended_by: None,
            })?),
        })
    }

    async fn open_import(
        &mut self,
        source: types::Artifact,
    ) -> HostResult<Resource<ImportStreamState>> {
        let timeout = self.call_timeout(self.action.limits.host_call_timeout);
        let host = match self.require(Capability::Import) {
            Ok(host) => host,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = self.room_for_a_stream() {
            return Ok(Err(e));
        }
        let reference = source.reference.clone();
        let artifact = Artifact::from_wit(source);
        if let Err(e) =
            Self::may_use(self.action.clone(), &host, &reference, &artifact, timeout).await
        {
            return Ok(Err(e));
        }
        let reader = bounded("data.open-import", timeout, async {
            host.exports.open(&artifact).await.map_err(from_engine)
        })
        .await;
        Ok(match reader {
            Err(e) => Err(e),
            Ok(reader) => Ok(self.opened_stream().table().push(ImportStreamState {
                name: artifact.name,
                reader: Some(reader),
            })?),
        })
    }

    async fn delete(&mut self, source: types::Artifact) -> HostResult<()> {
        let timeout = self.call_timeout(self.action.limits.host_call_timeout);
        let reference = source.reference.clone();
        let artifact = Artifact::from_wit(source);
        let target = export_target(&artifact.name, &artifact);
        // The reason, when the export was already gone.
        let mut gone = None;
        let result = match self.require(Capability::Export) {
            Err(e) => Err(e),
            Ok(host) => {
                let deleted =
                    match Self::may_use(self.action.clone(), &host, &reference, &artifact, timeout)
                        .await
                    {
                        Err(e) => Err(e),
                        Ok(()) => {
                            bounded("data.delete", timeout, async {
                                host.exports.delete(&artifact).await.map_err(from_engine)
                            })
                            .await
                        }
                    };
                // Already gone is deleted: a delete action run again after it removed some
                // of a point's exports (a later step failed, Cairn stopped) must not fail on
                // them forever, leaving the point and the rest of its data behind.
                let deleted = match deleted {
                    Err(WitError::NotFound(why)) => {
                        gone = Some(why);
                        Ok(())
                    }
                    other => other,
                };
                // Gone either way: the run's outputs may no longer name it.
                if deleted.is_ok() {
                    self.action.references.unvouch(&reference);
                }
                deleted
            }
        };
        match gone {
            // Not `ok`: nothing was deleted, and a guest may repeat it in a loop.
            Some(why) => self.audit_not_found(
                Capability::Export,
                "data.delete",
                &target,
                &format!("already gone, which counts as deleted ({why})"),
            ),
            None => self.audit(Capability::Export, "data.delete", &target, &result),
        }
        Ok(result)
    }
}

/// An export as the audit log names it: with where it went, a repository's snapshot or a
/// directory export's file.
fn export_target(name: &str, artifact: &Artifact) -> String {
    match artifact.get("snapshot").or(artifact.get("path")) {
        Some(at) => format!("export {name} ({at})"),
        None => format!("export {name}"),
    }
}
