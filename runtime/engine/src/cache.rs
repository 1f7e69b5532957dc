//! The on-disk compile cache.
//!
//! Entries are named `<sha256 of the component>-<engine compatibility hash>.cwasm`, so a
//! different wasmtime build or configuration never even looks at another's entries. Each is
//! written to a temporary name and renamed into place.
//!
//! Deserializing precompiled code runs it as native code, so the cache only deserializes files
//! that this runtime wrote itself. **The choice:** every entry starts with a header carrying a
//! keyed BLAKE3 MAC over the component digest, the compatibility hash and the payload, under a
//! 256-bit key kept in `cache.key` (created once, mode 0600) in the cache directory. A file
//! planted by anything that does not hold the key — copied from another machine, written by
//! another tool, truncated or corrupted — fails the check, is ignored and removed, and the
//! component is compiled again. (Whoever can read the key can already write native code that
//! this user runs, so the key adds no new trust.)

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::component::Component;

use crate::error::{Error, Result};

/// The first bytes of every entry; bump the digit when the layout changes.
const MAGIC: &[u8; 8] = b"CAIRNCC1";
/// The MAC's length.
const MAC_LEN: usize = 32;
/// The key file's name in the cache directory.
const KEY_FILE: &str = "cache.key";

/// The compile cache in one directory.
pub(crate) struct CompileCache {
    dir: PathBuf,
    key: [u8; 32],
    compat: String,
}

impl std::fmt::Debug for CompileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompileCache")
            .field("dir", &self.dir)
            .field("compat", &self.compat)
            .finish()
    }
}

impl CompileCache {
    /// Opens (creating if needed) the cache in `dir` for `engine`.
    pub(crate) fn open(dir: &Path, engine: &wasmtime::Engine) -> Result<CompileCache> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io("creating the compile cache", dir, e))?;
        let key = load_or_create_key(dir)?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Ok(CompileCache {
            dir: dir.to_path_buf(),
            key,
            compat: format!("{:016x}", h.finish()),
        })
    }

    fn entry(&self, digest_hex: &str) -> PathBuf {
        self.dir.join(format!("{digest_hex}-{}.cwasm", self.compat))
    }

    fn mac(&self, digest_hex: &str, payload: &[u8]) -> [u8; MAC_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(digest_hex.as_bytes())
            .update(b"\0")
            .update(self.compat.as_bytes())
            .update(b"\0")
            .update(payload);
        *h.finalize().as_bytes()
    }

    /// The cached compilation of the component with `digest_hex`, if there is a valid one.
    pub(crate) fn get(&self, engine: &wasmtime::Engine, digest_hex: &str) -> Option<Component> {
        let path = self.entry(digest_hex);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read a compile cache entry; compiling instead");
                return None;
            }
        };
        let verified = bytes.len() > MAGIC.len() + MAC_LEN && bytes.starts_with(MAGIC) && {
            let (mac, payload) = bytes[MAGIC.len()..].split_at(MAC_LEN);
            // Constant-time comparison: the key must not leak through timing.
            blake3::Hash::from_bytes(self.mac(digest_hex, payload))
                == blake3::Hash::from_bytes(copy32(mac))
        };
        if !verified {
            tracing::warn!(
                path = %path.display(),
                "ignoring a compile cache entry this runtime did not write (bad header or MAC); compiling again"
            );
            let _ = std::fs::remove_file(&path);
            return None;
        }
        match deserialize(engine, &bytes[MAGIC.len() + MAC_LEN..]) {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot deserialize a compile cache entry; compiling again");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores the compilation of the component with `digest_hex`. Failures are logged: the
    /// cache only saves time.
    pub(crate) fn put(&self, digest_hex: &str, component: &Component) {
        let path = self.entry(digest_hex);
        let write = || -> std::io::Result<()> {
            let payload = component
                .serialize()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let mac = self.mac(digest_hex, &payload);
            let tmp = self
                .dir
                .join(format!(".{digest_hex}.tmp-{:016x}", rand::random::<u64>()));
            let result = (|| {
                let mut f = std::fs::File::create_new(&tmp)?;
                f.write_all(MAGIC)?;
                f.write_all(&mac)?;
                f.write_all(&payload)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result
        };
        if let Err(e) = write() {
            tracing::warn!(path = %path.display(), error = %e, "cannot write a compile cache entry");
        }
    }
}

fn copy32(s: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&s[..32]);
    out
}

/// Deserializes precompiled code that [`CompileCache::get`] has verified.
#[allow(unsafe_code)]
fn deserialize(engine: &wasmtime::Engine, payload: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `Component::deserialize` trusts its input to be wasmtime's own output for a
    // compatible engine. `payload` carries a valid MAC under this cache's secret key, computed
    // by `CompileCache::put` over exactly these bytes right after `Component::serialize`, and
    // the entry's name pins the engine's compatibility hash, so these are bytes this runtime
    // serialized for an engine configured like this one.
    unsafe { Component::deserialize(engine, payload) }
}

/// The cache's MAC key: read it, or create it once (atomically, readable only by this user).
fn load_or_create_key(dir: &Path) -> Result<[u8; 32]> {
    let path = dir.join(KEY_FILE);
    for _ in 0..2 {
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == 32 => return Ok(copy32(&bytes)),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "the compile cache key is malformed; making a new one");
                let _ = std::fs::remove_file(&path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("reading the compile cache key", &path, e)),
        }
        let key: [u8; 32] = rand::random();
        let tmp = dir.join(format!(".{KEY_FILE}.tmp-{:016x}", rand::random::<u64>()));
        let written = (|| {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&tmp)?;
            f.write_all(&key)?;
            f.sync_all()?;
            // A hard link fails if the key exists: two runtimes racing agree on one key.
            std::fs::hard_link(&tmp, &path)
        })();
        let _ = std::fs::remove_file(&tmp);
        match written {
            Ok(()) => return Ok(key),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("creating the compile cache key", &path, e)),
        }
    }
    Err(Error::Host(format!(
        "cannot settle on a compile cache key in {}",
        dir.display()
    )))
}
