//! The exports seam: where export streams go and where import streams come from.
//!
//! [`Exports`] has three methods; [`DirExports`] keeps plain files under a directory. The
//! deduplicating, encrypting repository implements the same trait later.

use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
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
        if let Some((key, _)) = a
            .values
            .iter()
            .find(|(k, _)| a.reference.iter().any(|(r, _)| r == k))
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
    /// Starts the export `name` of the action `action_id`.
    async fn create(&self, action_id: &str, name: &str) -> Result<Box<dyn ExportWriter>>;

    /// Opens an export that an earlier `finish` produced.
    async fn open(&self, artifact: &Artifact) -> Result<Box<dyn AsyncRead + Send + Unpin>>;

    /// Removes an export that an earlier `finish` produced.
    async fn delete(&self, artifact: &Artifact) -> Result<()>;

    /// The shape of this store's export references, to tell them apart from the blueprint's
    /// values in a flat [`Artifact`].
    fn reference_keys(&self) -> ReferenceKeys;
}

/// Exports as plain files under a directory: `<action id>/<name>`, written under a temporary
/// name and renamed into place on finish. Every path is resolved through a `cap-std`
/// directory handle, so no name (`..`, absolute, through a symlink) can escape it.
///
/// Export references: `kind=file`, `path=<relative path>`, `bytes=<n>`, `sha256=<hex>`.
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

/// Checks one path component: 1 to 128 of `[A-Za-z0-9._-]`, not starting with a dot.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::InvalidName {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() || name.len() > 128 {
        return bad("it must be 1 to 128 characters long");
    }
    if name.starts_with('.') {
        return bad("it must not start with a dot");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("use only letters, digits, '.', '_' and '-'");
    }
    Ok(())
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

#[async_trait]
impl Exports for DirExports {
    async fn create(&self, action_id: &str, name: &str) -> Result<Box<dyn ExportWriter>> {
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
            final_path,
            file: tokio::fs::File::from_std(file),
            hasher: Sha256::new(),
            bytes: 0,
            finished: false,
        }))
    }

    async fn open(&self, artifact: &Artifact) -> Result<Box<dyn AsyncRead + Send + Unpin>> {
        let path = artifact_path(artifact)?;
        let root = self.root.clone();
        let p = path.clone();
        let file = tokio::task::spawn_blocking(move || root.open(&p))
            .await
            .map_err(|e| Error::Host(format!("import task failed: {e}")))?
            .map_err(|e| {
                Error::io(
                    "opening the export",
                    Path::new(&self.display).join(&path),
                    e,
                )
            })?;
        Ok(Box::new(tokio::fs::File::from_std(file.into_std())))
    }

    async fn delete(&self, artifact: &Artifact) -> Result<()> {
        let path = artifact_path(artifact)?;
        let root = self.root.clone();
        let p = path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            root.remove_file(&p)?;
            // The action's directory goes when its last export does.
            let _ = root.remove_dir(action_id_of(&p));
            Ok(())
        })
        .await
        .map_err(|e| Error::Host(format!("delete task failed: {e}")))?
        .map_err(|e| {
            Error::io(
                "deleting the export",
                Path::new(&self.display).join(&path),
                e,
            )
        })
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

/// A file being written under a temporary name.
struct DirWriter {
    root: Arc<Dir>,
    tmp: String,
    final_path: String,
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
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if root.exists(&dest) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "export exists",
                ));
            }
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

impl Drop for DirWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.root.remove_file(&self.tmp);
        }
    }
}
