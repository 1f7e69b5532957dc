//! Object storage through `object_store`, chosen by URL, with the protection period enforced on
//! every delete.

use crate::error::{Error, Result};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

/// How a repository location is given: a URL and backend options.
///
/// `file:///abs/dir` or a plain path (local filesystem), `memory://name` (an in-process store
/// shared by every open of the same name, for tests), `s3://bucket/prefix`,
/// `az://container/prefix`, `gs://bucket/prefix`. Cloud options (`aws_endpoint`,
/// `aws_access_key_id`, `aws_secret_access_key`, `aws_region`, `aws_allow_http`, and the Azure
/// and GCS equivalents) come from [`Location::option`] and then from the usual environment
/// variables (`AWS_*`, `AZURE_*`, `GOOGLE_*`).
#[derive(Debug, Clone)]
pub struct Location {
    pub(crate) url: String,
    pub(crate) options: Vec<(String, String)>,
}

impl Location {
    /// A location from a URL or a local path.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            options: Vec::new(),
        }
    }
    /// Adds a backend option, e.g. `("aws_endpoint", "http://127.0.0.1:9000")`.
    pub fn option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((key.into(), value.into()));
        self
    }
    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl From<&str> for Location {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}
impl From<String> for Location {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}
impl From<&std::path::Path> for Location {
    fn from(p: &std::path::Path) -> Self {
        Self::new(p.display().to_string())
    }
}

fn memory_stores() -> &'static Mutex<HashMap<String, Arc<object_store::memory::InMemory>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<object_store::memory::InMemory>>>> =
        OnceLock::new();
    STORES.get_or_init(Default::default)
}

/// The object store under a repository, with the repository's protection period.
#[derive(Debug, Clone)]
pub(crate) struct Backend {
    store: Arc<dyn ObjectStore>,
    pub(crate) url: String,
    /// Set from the config once it is read.
    pub(crate) protection: std::time::Duration,
}

fn invalid(url: &str, reason: impl ToString) -> Error {
    Error::InvalidLocation {
        url: url.to_string(),
        reason: reason.to_string(),
    }
}

impl Backend {
    pub(crate) fn connect(loc: &Location, create_local: bool) -> Result<Self> {
        let raw = loc.url.as_str();
        let url = match url::Url::parse(raw) {
            Ok(u) if u.scheme().len() > 1 => u,
            // A plain (or Windows drive) path is a local directory.
            _ => {
                let p = std::path::absolute(raw).map_err(|e| invalid(raw, e))?;
                url::Url::from_directory_path(&p)
                    .map_err(|()| invalid(raw, "not an absolute path"))?
            }
        };
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "file" => {
                let dir = url
                    .to_file_path()
                    .map_err(|()| invalid(raw, "not a local path"))?;
                if create_local {
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| Error::io("create directory", &dir, e))?;
                } else if !dir.is_dir() {
                    return Err(Error::NotARepository {
                        url: raw.to_string(),
                    });
                }
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(&dir)
                        .map_err(|e| invalid(raw, e))?
                        .with_automatic_cleanup(true),
                )
            }
            "memory" => {
                let name = format!("{}{}", url.host_str().unwrap_or(""), url.path());
                let mut m = memory_stores()
                    .lock()
                    .map_err(|_| invalid(raw, "memory store registry poisoned"))?;
                m.entry(name).or_default().clone()
            }
            "s3" | "s3a" => {
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_url(url.as_str());
                for (k, v) in &loc.options {
                    let key = k
                        .parse()
                        .map_err(|e| invalid(raw, format!("option {k}: {e}")))?;
                    b = b.with_config(key, v);
                }
                prefixed(Arc::new(b.build().map_err(|e| invalid(raw, e))?), &url)
            }
            "az" | "azure" | "abfs" | "abfss" => {
                let mut b =
                    object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url.as_str());
                for (k, v) in &loc.options {
                    let key = k
                        .parse()
                        .map_err(|e| invalid(raw, format!("option {k}: {e}")))?;
                    b = b.with_config(key, v);
                }
                prefixed(Arc::new(b.build().map_err(|e| invalid(raw, e))?), &url)
            }
            "gs" => {
                let mut b =
                    object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(url.as_str());
                for (k, v) in &loc.options {
                    let key = k
                        .parse()
                        .map_err(|e| invalid(raw, format!("option {k}: {e}")))?;
                    b = b.with_config(key, v);
                }
                prefixed(Arc::new(b.build().map_err(|e| invalid(raw, e))?), &url)
            }
            other => {
                return Err(invalid(
                    raw,
                    format!("unsupported scheme {other}:// (use file, memory, s3, az or gs)"),
                ));
            }
        };
        Ok(Self {
            store,
            url: raw.to_string(),
            protection: std::time::Duration::ZERO,
        })
    }

    pub(crate) async fn get(&self, path: &str) -> Result<Option<Bytes>> {
        match self.store.get(&Path::from(path)).await {
            Ok(r) => r
                .bytes()
                .await
                .map(Some)
                .map_err(|e| Error::store("read", path, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::store("read", path, e)),
        }
    }

    pub(crate) async fn get_range(&self, path: &str, range: Range<u64>) -> Result<Bytes> {
        match self.store.get_range(&Path::from(path), range).await {
            Ok(b) => Ok(b),
            Err(object_store::Error::NotFound { .. }) => Err(Error::Missing {
                object: path.to_string(),
                snapshots: Vec::new(),
            }),
            Err(e) => Err(Error::store("read", path, e)),
        }
    }

    /// Writes an object that must not exist yet (create-if-absent).
    pub(crate) async fn put_new(&self, path: &str, data: Bytes) -> Result<()> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&Path::from(path), PutPayload::from_bytes(data), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(Error::Protected {
                object: path.to_string(),
                until: "forever (objects are never overwritten)".into(),
            }),
            Err(e) => Err(Error::store("write", path, e)),
        }
    }

    /// Writes or replaces a mutable object (key slots, locks).
    pub(crate) async fn put_replace(&self, path: &str, data: Bytes) -> Result<()> {
        self.store
            .put(&Path::from(path), PutPayload::from_bytes(data))
            .await
            .map(|_| ())
            .map_err(|e| Error::store("write", path, e))
    }

    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let p = Path::from(prefix);
        self.store
            .list(Some(&p))
            .try_collect()
            .await
            .map_err(|e| Error::store("list", prefix, e))
    }

    /// The end of an object's protection, if it is still protected.
    pub(crate) fn protected_until(&self, last_modified_unix: i64) -> Option<jiff::Timestamp> {
        if self.protection.is_zero() {
            return None;
        }
        let until = last_modified_unix.saturating_add(self.protection.as_secs() as i64);
        let now = jiff::Timestamp::now().as_second();
        (now < until).then(|| jiff::Timestamp::from_second(until).unwrap_or(jiff::Timestamp::MAX))
    }

    /// Deletes a data object, refusing inside the protection period. `meta` saves a HEAD when
    /// the caller listed the object.
    pub(crate) async fn delete_data(&self, path: &str, meta: Option<&ObjectMeta>) -> Result<()> {
        if !self.protection.is_zero() {
            let lm = match meta {
                Some(m) => m.last_modified.timestamp(),
                None => match self.store.head(&Path::from(path)).await {
                    Ok(m) => m.last_modified.timestamp(),
                    Err(object_store::Error::NotFound { .. }) => return Ok(()),
                    Err(e) => return Err(Error::store("stat", path, e)),
                },
            };
            if let Some(until) = self.protected_until(lm) {
                return Err(Error::Protected {
                    object: path.to_string(),
                    until: until.to_string(),
                });
            }
        }
        self.delete_any(path).await
    }

    /// Deletes a mutable object (key slot, lock).
    pub(crate) async fn delete_any(&self, path: &str) -> Result<()> {
        match self.store.delete(&Path::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::store("delete", path, e)),
        }
    }
}

fn prefixed(store: Arc<dyn ObjectStore>, url: &url::Url) -> Arc<dyn ObjectStore> {
    let prefix = url.path().trim_matches('/');
    if prefix.is_empty() {
        store
    } else {
        Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
    }
}
