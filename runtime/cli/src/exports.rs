//! The engine's exports, written through the export repository: what a blueprint pipes into
//! an export stream is chunked, deduplicated, compressed and encrypted on the host side, and
//! becomes a stream snapshot tagged `export`, `action:<action id>`, and `key=value` for each of
//! the export's tags (the blueprint's and the host's).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_trait::async_trait;
use cairn_engine::{Artifact, ExportWriter, Exports, ReferenceKeys};
use cairn_repository::{BackupOptions, Repository, SnapshotWriter};
use tokio::io::{AsyncRead, AsyncWrite};

/// The artifact value that says an export lives in a repository.
const KIND: &str = "repository";

/// The tag of every export's repository snapshot.
pub(crate) const TAG: &str = "export";

/// The snapshots of the exports each action finished, by action id.
type Finished = Arc<Mutex<HashMap<String, Vec<String>>>>;

/// [`Exports`] into one repository.
#[derive(Debug)]
pub(crate) struct RepoExports {
    repo: Repository,
    /// Where the repository is, for messages.
    url: String,
    /// The location profile it was opened through, if any: recorded on restore points.
    profile: Option<String>,
    finished: Finished,
}

impl RepoExports {
    /// Waits, before a backup starts, for a prune running in the repository to finish (up to
    /// [`EXPORT_LOCK_WAIT`], or until `interrupt`): not once the backup runs, where the wait
    /// would hold the application quiesced. A prune that starts meanwhile still fails the
    /// export at once, as a wait past this one does.
    pub(crate) async fn wait_for_prune(&self, interrupt: &cairn_engine::Interrupt) {
        let waited = self
            .repo
            .wait_for_exclusive(EXPORT_LOCK_WAIT, &|| interrupt.is_triggered())
            .await;
        if let Err(e) = waited
            && !matches!(e, cairn_repository::Error::Interrupted)
        {
            tracing::warn!(error = %e, "starting the backup anyway");
        }
    }

    pub(crate) fn new(repo: Repository, url: String, profile: Option<String>) -> Self {
        Self {
            repo,
            url,
            profile,
            finished: Finished::default(),
        }
    }

    /// Forgets the exports action `action_id` finished whose snapshots are not in `keep` (a
    /// failed backup's, which no restore point references, or ones a backup finished and did
    /// not return); returns their snapshot ids. The action's record of them goes either way.
    pub(crate) async fn discard_unkept(
        &self,
        action_id: &str,
        keep: &[String],
    ) -> cairn_repository::Result<Vec<String>> {
        let finished = self
            .finished
            .lock()
            .map(|mut f| f.remove(action_id))
            .unwrap_or_default()
            .unwrap_or_default();
        let mut unkept = Vec::new();
        for id in finished.into_iter().filter(|s| !keep.contains(s)) {
            // One the blueprint deleted itself is gone already.
            match self.repo.snapshot(&id).await {
                Ok(_) => unkept.push(id),
                Err(cairn_repository::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if unkept.is_empty() {
            return Ok(unkept);
        }
        // What the protection period keeps stays, and is not said to be discarded.
        Ok(self.repo.forget_ids(&unkept, false).await?.removed)
    }

    /// Where the repository is: the URL restore points record.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The location profile the repository was opened through, if any.
    pub(crate) fn profile(&self) -> Option<&str> {
        self.profile.as_deref()
    }

    /// The repository.
    pub(crate) fn repository(&self) -> &Repository {
        &self.repo
    }

    /// The snapshot an artifact names, refusing artifacts of another repository or kind.
    fn snapshot_of<'a>(&self, artifact: &'a Artifact) -> cairn_engine::Result<&'a str> {
        let bad = |reason: String| cairn_engine::Error::BadArtifact {
            name: artifact.name.clone(),
            reason,
        };
        match artifact.get("kind") {
            Some(KIND) => {}
            Some(other) => {
                return Err(bad(format!(
                    "it is a {other:?} export, not a repository export; run with the exports it was written to"
                )));
            }
            None => return Err(bad("it names no export kind".into())),
        }
        match artifact.get("repository") {
            Some(id) if id == self.repo.id() => {}
            Some(id) => {
                return Err(bad(format!(
                    "it was exported to repository {id}, but this run uses {} ({}); pass the --repo it was written to",
                    self.repo.id(),
                    self.url
                )));
            }
            None => return Err(bad("it names no repository".into())),
        }
        match artifact.get("snapshot") {
            None => Err(bad("it names no snapshot".into())),
            // Never `latest` or a prefix: a reference names one snapshot, as finish() wrote it.
            Some(id) if !cairn_repository::is_snapshot_id(id) => Err(bad(format!(
                "its snapshot {id:?} is not a whole snapshot id (32 hex digits, as finish() writes it)"
            ))),
            Some(id) => Ok(id),
        }
    }
}

fn repo_error(what: &str, e: cairn_repository::Error) -> cairn_engine::Error {
    match e {
        cairn_repository::Error::NotFound { .. } => {
            cairn_engine::Error::NotFound(format!("{what}: {e}; was it deleted?"))
        }
        e => cairn_engine::Error::Host(format!("{what}: {e}")),
    }
}

/// How long a backup waits, before it starts, for a prune of its repository (another
/// policy's, `cairn repo prune`) to finish: a prune's lock, refreshed while it runs, is taken
/// for gone after [`cairn_repository::LOCK_STALE_AFTER`].
const EXPORT_LOCK_WAIT: std::time::Duration = cairn_repository::LOCK_STALE_AFTER;

#[async_trait]
impl Exports for RepoExports {
    async fn create(
        &self,
        action_id: &str,
        name: &str,
        tags: &[(String, String)],
    ) -> cairn_engine::Result<Box<dyn ExportWriter>> {
        let opts = tags.iter().fold(
            BackupOptions::new()
                .tag(TAG)
                .tag(format!("action:{action_id}")),
            |opts, (k, v)| opts.tag(format!("{k}={v}")),
        );
        let writer = self
            .repo
            .stream_writer(name, opts)
            .await
            .map_err(|e| repo_error(&format!("starting export {name:?} in {}", self.url), e))?;
        Ok(Box::new(RepoWriter {
            inner: writer,
            repository: self.repo.id().to_string(),
            finished: self.finished.clone(),
            action_id: action_id.to_owned(),
        }))
    }

    async fn open(
        &self,
        artifact: &Artifact,
    ) -> cairn_engine::Result<Box<dyn AsyncRead + Send + Unpin>> {
        let snapshot = self.snapshot_of(artifact)?;
        let reader = self
            .repo
            .stream_reader(snapshot)
            .await
            .map_err(|e| repo_error(&format!("opening export {:?}", artifact.name), e))?;
        Ok(Box::new(reader))
    }

    async fn delete(&self, artifact: &Artifact) -> cairn_engine::Result<()> {
        let snapshot = self.snapshot_of(artifact)?;
        self.repo
            .forget_snapshot(snapshot)
            .await
            .map_err(|e| repo_error(&format!("deleting export {:?}", artifact.name), e))
    }

    async fn tags(&self, artifact: &Artifact) -> cairn_engine::Result<Vec<(String, String)>> {
        let snapshot = self.snapshot_of(artifact)?;
        let info = self
            .repo
            .snapshot(snapshot)
            .await
            .map_err(|e| repo_error(&format!("reading export {:?}", artifact.name), e))?;
        if !info.tags.iter().any(|t| t == TAG) {
            return Err(cairn_engine::Error::BadArtifact {
                name: artifact.name.clone(),
                reason: format!("snapshot {snapshot} is not an export (it has no `export` tag)"),
            });
        }
        Ok(info
            .tags
            .iter()
            .filter_map(|t| t.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    fn reference_keys(&self) -> ReferenceKeys {
        ReferenceKeys {
            kind: KIND,
            keys: &["kind", "repository", "snapshot", "bytes"],
        }
    }
}

/// A repository stream snapshot being written.
struct RepoWriter {
    inner: SnapshotWriter,
    repository: String,
    /// Where its snapshot is recorded once finished, under `action_id`.
    finished: Finished,
    action_id: String,
}

impl AsyncWrite for RepoWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl ExportWriter for RepoWriter {
    async fn finish(self: Box<Self>) -> cairn_engine::Result<Vec<(String, String)>> {
        let RepoWriter {
            inner,
            repository,
            finished,
            action_id,
        } = *self;
        let info = inner
            .finish()
            .await
            .map_err(|e| repo_error("sealing the export", e))?;
        if let Ok(mut f) = finished.lock() {
            f.entry(action_id).or_default().push(info.id.clone());
        }
        Ok(vec![
            ("kind".into(), KIND.into()),
            ("repository".into(), repository),
            ("snapshot".into(), info.id.clone()),
            ("bytes".into(), info.summary.bytes.to_string()),
        ])
    }
}
