//! The exports seam: where export streams go and where import streams come from.
//!
//! [`Exports`] has three methods; [`DirExports`] keeps plain files under a directory. The
//! deduplicating, encrypting repository implements the same trait later.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_trait::async_trait;
use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::bindings::types;
use crate::error::{Error, Result};

/// A named record of small key/values: where an export went, a snapshot id, an LSN.
///
/// Kept flat, as reports and restore points store it (records written before the contract
/// split artifacts read the same): the export reference [`ExportWriter::finish`] wrote and
/// the blueprint's own values in one map. They never collide, because the engine refuses a
/// phase whose value is named like a key of its artifact's reference; a guest sees the two
/// apart again, split by the export store's [`ReferenceKeys`].
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Artifact {
    /// Its name, unique within the action that produced it.
    pub name: String,
    /// Its values: the export reference's keys first, then the blueprint's.
    pub values: Vec<(String, String)>,
}

impl Artifact {
    /// The value of `key`, if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The artifact as a guest sees it: the keys of the export reference `keys` describes
    /// (when the artifact is of its kind) apart from the blueprint's values.
    pub(crate) fn to_wit(&self, keys: ReferenceKeys) -> types::Artifact {
        let (reference, values) = if self.get("kind") == Some(keys.kind) {
            self.values
                .iter()
                .cloned()
                .partition(|(k, _)| keys.keys.contains(&k.as_str()))
        } else {
            (Vec::new(), self.values.clone())
        };
        types::Artifact {
            name: self.name.clone(),
            values,
            reference,
        }
    }

    /// A guest's artifact, flat: the reference's keys first, so they win a lookup.
    pub(crate) fn from_wit(a: types::Artifact) -> Artifact {
        let mut values = a.reference;
        values.extend(a.values);
        Artifact {
            name: a.name,
            values,
        }
    }

    /// A guest's artifact, flat, refusing a value named like a key of its reference: one
    /// line naming the artifact and the key.
    pub(crate) fn checked_from_wit(a: types::Artifact) -> std::result::Result<Artifact, String> {
        let reference: std::collections::HashSet<&str> =
            a.reference.iter().map(|(k, _)| k.as_str()).collect();
        if let Some((key, _)) = a
            .values
            .iter()
            .find(|(k, _)| reference.contains(k.as_str()))
        {
            return Err(format!(
                "artifact `{}` has a value `{key}`, but `{key}` is a key of its export reference (written by \
                 finish()); a value never shadows the reference: give the value another name",
                a.name
            ));
        }
        Ok(Artifact::from_wit(a))
    }
}

/// The export references a run may read and delete whatever their tags say: those of the
/// artifacts it was given (a restore point's, possibly of another namespace when restoring into
/// a new one) and those its own exports finished with. Other exports are reachable only when
/// their tags put them in the action's scope; see `HostState::may_use`.
///
/// A reference the run deletes is no longer vouched for, but remembered as deleted: a
/// restore point recording it would name data that is gone (a posthook deleting the export
/// its main phase returned), so the run's outputs may not name it.
#[derive(Debug, Default)]
pub(crate) struct References(Mutex<Vouched>);

#[derive(Debug, Default)]
struct Vouched {
    kept: BTreeSet<Vec<(String, String)>>,
    deleted: BTreeSet<Vec<(String, String)>>,
}

impl References {
    /// The references of `artifacts` (as a guest sees them: `keys` apart from values).
    pub(crate) fn of(artifacts: &[Artifact], keys: ReferenceKeys) -> Self {
        let given = Self::default();
        for a in artifacts {
            given.vouch(a.to_wit(keys).reference);
        }
        given
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vouched> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn vouch(&self, mut reference: Vec<(String, String)>) {
        if reference.is_empty() {
            return;
        }
        reference.sort();
        self.lock().kept.insert(reference);
    }

    /// Forgets a reference the run deleted, remembering it as deleted if it was vouched for
    /// (only those: a run deleting in a loop does not grow the set).
    pub(crate) fn unvouch(&self, reference: &[(String, String)]) {
        let mut reference = reference.to_vec();
        reference.sort();
        let mut vouched = self.lock();
        if vouched.kept.remove(&reference) {
            vouched.deleted.insert(reference);
        }
    }

    pub(crate) fn vouched(&self, reference: &[(String, String)]) -> bool {
        let mut reference = reference.to_vec();
        reference.sort();
        !reference.is_empty() && self.lock().kept.contains(&reference)
    }

    /// Whether the run deleted the export `reference` names, which it had been given or had
    /// finished.
    pub(crate) fn deleted(&self, reference: &[(String, String)]) -> bool {
        let mut reference = reference.to_vec();
        reference.sort();
        self.lock().deleted.contains(&reference)
    }
}

/// What an export store's references look like: the `kind` value it writes, and every key its
/// [`ExportWriter::finish`] writes (`kind` among them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReferenceKeys {
    /// The value of `kind` in this store's references.
    pub kind: &'static str,
    /// Every key of a reference.
    pub keys: &'static [&'static str],
}

/// A stream being written. Dropped without [`ExportWriter::finish`], it is discarded.
#[async_trait]
pub trait ExportWriter: AsyncWrite + Send + Unpin {
    /// Seals the stream and returns the export reference that names it: only keys of the
    /// store's [`Exports::reference_keys`], `kind` among them.
    async fn finish(self: Box<Self>) -> Result<Vec<(String, String)>>;
}

/// Where export streams go and where import streams come from.
#[async_trait]
pub trait Exports: Send + Sync + fmt::Debug + 'static {
    /// Starts the export `name` of the action `action_id`, tagged with `tags`: the
    /// blueprint's (checked by the host: unique keys of `[a-z0-9][a-z0-9._-]{0,62}`, printable
    /// values without `=` or `,`), then the host's own (`action`, `namespace`, `workload`,
    /// `blueprint`, `blueprint-digest`). The store keeps them with the export, as `key=value`
    /// where it has tags.
    async fn create(
        &self,
        action_id: &str,
        name: &str,
        tags: &[(String, String)],
    ) -> Result<Box<dyn ExportWriter>>;

    /// Opens an export that an earlier `finish` produced.
    async fn open(&self, artifact: &Artifact) -> Result<Box<dyn AsyncRead + Send + Unpin>>;

    /// Removes an export that an earlier `finish` produced.
    async fn delete(&self, artifact: &Artifact) -> Result<()>;

    /// The tags the export `artifact` names was written with (`create`'s, the host's among
    /// them), so the host can tell whose it is; an error when it names none of this store's
    /// exports.
    async fn tags(&self, artifact: &Artifact) -> Result<Vec<(String, String)>>;

    /// The shape of this store's export references, to tell them apart from the blueprint's
    /// values in a flat [`Artifact`].
    fn reference_keys(&self) -> ReferenceKeys;
}

/// Exports as plain files under a directory: `<action id>/<name>`, written under a temporary
/// name and renamed into place on finish. Every path is resolved through a `cap-std`
/// directory handle, so no name (`..`, absolute, through a symlink) can escape it.
///
/// Export references: `kind=file`, `path=<relative path>`, `bytes=<n>`, `sha256=<hex>`. An
/// export's tags are kept beside it in `<action id>/.<name>.tags`, one `key=value` a line
/// (export names never start with a dot, so it never clashes with one).
#[derive(Clone)]
pub struct DirExports {
    root: Arc<Dir>,
    display: String,
}

impl fmt::Debug for DirExports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirExports")
            .field("root", &self.display)
            .finish()
    }
}

impl DirExports {
    /// Keeps exports under `root`, creating it if needed.
    pub fn new(root: impl AsRef<Path>) -> Result<DirExports> {
        let root = root.as_ref();
        std::fs::create_dir_all(root)
            .map_err(|e| Error::io("creating the exports directory", root, e))?;
        let dir = Dir::open_ambient_dir(root, ambient_authority())
            .map_err(|e| Error::io("opening the exports directory", root, e))?;
        Ok(DirExports {
            root: Arc::new(dir),
            display: root.display().to_string(),
        })
    }
}

pub(crate) use cairn_contract::{HOST_TAG_KEYS, check_tags, name_problem};

/// Checks one path component: 1 to 128 of `[A-Za-z0-9._-]`, not starting with a dot.
pub(crate) fn check_name(name: &str) -> Result<()> {
    match name_problem(name) {
        Some(reason) => Err(Error::InvalidName {
            name: name.to_string(),
            reason: reason.to_string(),
        }),
        None => Ok(()),
    }
}

fn artifact_path(artifact: &Artifact) -> Result<String> {
    let bad = |reason: &str| {
        Err(Error::BadArtifact {
            name: artifact.name.clone(),
            reason: reason.to_string(),
        })
    };
    match artifact.get("kind") {
        Some("file") => {}
        Some(other) => {
            return bad(&format!(
                "it is of kind {other:?}; this export store holds kind \"file\""
            ));
        }
        None => return bad("it has no `kind` value; was it produced by an export?"),
    }
    let Some(path) = artifact.get("path") else {
        return bad("it has no `path` value");
    };
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() != 2 || parts.iter().any(|p| check_name(p).is_err()) {
        return bad(&format!("its path {path:?} is not <action>/<name>"));
    }
    Ok(path.to_string())
}

impl DirExports {
    /// Runs `f` on the export `artifact` names (its path relative to the root) on a blocking
    /// thread; an error names `what` was done and the export's whole path.
    async fn at_export<T: Send + 'static>(
        &self,
        artifact: &Artifact,
        what: &'static str,
        f: impl FnOnce(&Dir, &str) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T> {
        let path = artifact_path(artifact)?;
        let (root, p) = (self.root.clone(), path.clone());
        tokio::task::spawn_blocking(move || f(&root, &p))
            .await
            .map_err(|e| Error::Host(format!("export task failed: {e}")))?
            .map_err(|e| Error::io(what, Path::new(&self.display).join(&path), e))
    }
}

#[async_trait]
impl Exports for DirExports {
    async fn create(
        &self,
        action_id: &str,
        name: &str,
        tags: &[(String, String)],
    ) -> Result<Box<dyn ExportWriter>> {
        check_name(action_id)?;
        check_name(name)?;
        let root = self.root.clone();
        let final_path = format!("{action_id}/{name}");
        let tmp_path = format!("{action_id}/.{name}.tmp-{:016x}", rand::random::<u64>());
        let (file, tmp) = {
            let (dest, tmp_path) = (final_path.clone(), tmp_path.clone());
            let root = root.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                root.create_dir_all(action_id_of(&dest))?;
                if root.exists(&dest) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "export exists",
                    ));
                }
                let file =
                    root.open_with(&tmp_path, OpenOptions::new().write(true).create_new(true))?;
                Ok((file.into_std(), tmp_path))
            })
            .await
            .map_err(|e| Error::Host(format!("export task failed: {e}")))?
            .map_err(|e| {
                Error::io(
                    "creating the export",
                    Path::new(&self.display).join(&final_path),
                    e,
                )
            })?
        };
        Ok(Box::new(DirWriter {
            root,
            tmp,
            tags_path: tags_path(&final_path),
            tags: tags.iter().map(|(k, v)| format!("{k}={v}\n")).collect(),
            final_path,
            file: tokio::fs::File::from_std(file),
            hasher: Sha256::new(),
            bytes: 0,
            finished: false,
        }))
    }

    async fn open(&self, artifact: &Artifact) -> Result<Box<dyn AsyncRead + Send + Unpin>> {
        let file = self
            .at_export(artifact, "opening the export", |root, path| root.open(path))
            .await?;
        Ok(Box::new(Verified {
            file: tokio::fs::File::from_std(file.into_std()),
            hasher: Sha256::new(),
            bytes: 0,
            want_bytes: artifact.get("bytes").map(str::to_owned),
            want_sha: artifact.get("sha256").map(str::to_owned),
            path: artifact_path(artifact)?,
            end: None,
        }))
    }

    async fn delete(&self, artifact: &Artifact) -> Result<()> {
        self.at_export(artifact, "deleting the export", |root, path| {
            root.remove_file(path)?;
            // Exports written before tags were kept have none.
            match root.remove_file(tags_path(path)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            // The action's directory goes when its last export does.
            let _ = root.remove_dir(action_id_of(path));
            Ok(())
        })
        .await
    }

    async fn tags(&self, artifact: &Artifact) -> Result<Vec<(String, String)>> {
        let text = self
            .at_export(artifact, "reading the export's tags", |root, path| {
                // The export itself first: one that is gone is not found, whatever its tags.
                root.metadata(path)?;
                match root.read_to_string(tags_path(path)) {
                    // Exports written before tags were kept have none.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                    other => other,
                }
            })
            .await?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    fn reference_keys(&self) -> ReferenceKeys {
        ReferenceKeys {
            kind: "file",
            keys: &["kind", "path", "bytes", "sha256"],
        }
    }
}

fn action_id_of(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
}

/// Where the tags of the export at `<action>/<name>` are kept: `<action>/.<name>.tags`.
fn tags_path(path: &str) -> String {
    match path.split_once('/') {
        Some((action, name)) => format!("{action}/.{name}.tags"),
        None => format!(".{path}.tags"),
    }
}

/// A file being written under a temporary name.
struct DirWriter {
    root: Arc<Dir>,
    tmp: String,
    final_path: String,
    /// Where the tags go, and their `key=value` lines.
    tags_path: String,
    tags: String,
    file: tokio::fs::File,
    hasher: Sha256,
    bytes: u64,
    finished: bool,
}

impl AsyncWrite for DirWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.file).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.hasher.update(&buf[..n]);
                this.bytes += n as u64;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

#[async_trait]
impl ExportWriter for DirWriter {
    async fn finish(mut self: Box<Self>) -> Result<Vec<(String, String)>> {
        let final_path = self.final_path.clone();
        let io = |e| Error::io("finishing the export", final_path.clone(), e);
        self.file.flush().await.map_err(io)?;
        self.file.sync_all().await.map_err(io)?;
        let (root, tmp, dest) = (self.root.clone(), self.tmp.clone(), final_path.clone());
        let (tags_path, tags) = (self.tags_path.clone(), std::mem::take(&mut self.tags));
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if root.exists(&dest) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "export exists",
                ));
            }
            // The tags first: an export in place always has its tags beside it.
            root.write(&tags_path, tags)?;
            root.rename(&tmp, &root, &dest)
        })
        .await
        .map_err(|e| Error::Host(format!("export task failed: {e}")))?
        .map_err(io)?;
        self.finished = true;
        let sha = hex::encode(std::mem::take(&mut self.hasher).finalize());
        Ok(vec![
            ("kind".into(), "file".into()),
            ("path".into(), final_path),
            ("bytes".into(), self.bytes.to_string()),
            ("sha256".into(), sha),
        ])
    }
}

/// A file export read back, checked against its reference's `bytes` and `sha256` at the end:
/// a damaged or truncated file fails the read there, instead of ending like a whole one.
struct Verified {
    file: tokio::fs::File,
    hasher: Sha256,
    bytes: u64,
    want_bytes: Option<String>,
    want_sha: Option<String>,
    path: String,
    /// Set at the end: `Ok` once checked, or the damage, returned again on every later read.
    end: Option<std::result::Result<(), String>>,
}

impl Verified {
    fn check_end(&mut self) -> std::io::Result<()> {
        let end = self.end.get_or_insert_with(|| {
            let sha = hex::encode(std::mem::take(&mut self.hasher).finalize());
            let damage = match (&self.want_bytes, &self.want_sha) {
                (Some(want), _) if *want != self.bytes.to_string() => Some(format!(
                    "it holds {} bytes where its reference says {want}",
                    self.bytes
                )),
                (_, Some(want)) if *want != sha => {
                    Some(format!("its SHA-256 is {sha}, not {want}"))
                }
                _ => None,
            };
            match damage {
                None => Ok(()),
                Some(what) => Err(format!(
                    "export {} is damaged: {what}; restore from another restore point",
                    self.path
                )),
            }
        });
        end.clone()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

impl AsyncRead for Verified {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.end.is_some() {
            return Poll::Ready(self.check_end());
        }
        let before = buf.filled().len();
        let asked = buf.remaining() > 0;
        match Pin::new(&mut self.file).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let this = &mut *self;
                let read = &buf.filled()[before..];
                if read.is_empty() && asked {
                    return Poll::Ready(this.check_end());
                }
                this.hasher.update(read);
                this.bytes += read.len() as u64;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl Drop for DirWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.root.remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_sit_beside_their_export() {
        assert_eq!(tags_path("abc/dump"), "abc/.dump.tags");
    }
}
