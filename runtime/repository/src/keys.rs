//! Envelope encryption: key providers and key slots.
//!
//! The repository's secrets (the AES-256 data key and the chunk-id key) are generated once at
//! `init` and never change. Each key slot (`keys/<id>`) holds them wrapped by a key-encryption
//! key (KEK) that a [`KeyProvider`] supplies: a passphrase through Argon2id (its parameters
//! stored in the slot), a key file, or in the future Vault or a cloud KMS. Adding, removing or
//! rotating a key rewrites only slots, never data.

use crate::crypto::{self, MASTER_LEN};
use crate::error::{Error, Result};
use async_trait::async_trait;
use rand::RngCore;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// Argon2id memory ceiling accepted from a key slot, so a crafted slot cannot make `open`
/// allocate unbounded memory (4 GiB).
pub const MAX_ARGON2_MEMORY_KIB: u32 = 4 * 1024 * 1024;
/// Argon2id iteration ceiling accepted from a key slot, so a crafted slot cannot stall `open`.
pub const MAX_ARGON2_ITERATIONS: u32 = 64;
/// Bytes of a key file's key (hex-encoded in the file).
pub const KEY_FILE_LEN: usize = 32;

/// A secret wrapped by a key provider, as stored in a key slot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrappedKey {
    /// The provider kind that wrapped it (`passphrase`, `key-file`, ...).
    pub kind: String,
    /// Provider parameters needed to unwrap (KDF parameters and salt, key fingerprint, KMS key
    /// id...). Never secret.
    pub params: serde_json::Value,
    /// The wrapped secret, hex-encoded.
    pub wrapped: String,
}

/// Supplies key-encryption keys: wraps the repository secret into a new slot, and unwraps it
/// from a slot.
///
/// Implementations for Vault transit or a cloud KMS call the service's encrypt/decrypt in
/// `wrap`/`unwrap`; the repository never sees their key.
#[async_trait]
pub trait KeyProvider: Send + Sync + fmt::Debug {
    /// The kind stored in the slot; only slots of this kind are offered to [`Self::unwrap`].
    fn kind(&self) -> &str;
    /// Wraps `secret`, binding `aad` (the slot id) to it.
    async fn wrap(&self, secret: &[u8], aad: &[u8]) -> Result<WrappedKey>;
    /// Unwraps a slot's secret; `Ok(None)` when this provider's key does not open the slot.
    async fn unwrap(&self, slot: &WrappedKey, aad: &[u8]) -> Result<Option<Vec<u8>>>;
}

/// Argon2id parameters, stored in each passphrase slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 4 lanes: RFC 9106's second recommended option, well above OWASP's
    /// minimum for Argon2id. The lanes are computed in parallel: about 0.11 s on two cores,
    /// where one lane took 0.15 s (on an older VM; 0.05 s on the Firecracker VM of
    /// BENCHMARKS.md, memory zeroing included).
    fn default() -> Self {
        Self {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 4,
        }
    }
}

impl KdfParams {
    /// Minimal parameters for tests only: fast, and weak against guessing.
    pub fn insecure_for_tests() -> Self {
        Self {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct PassphraseParams {
    algorithm: String,
    #[serde(flatten)]
    kdf: KdfParams,
    salt: String,
}

/// A passphrase, stretched by Argon2id into a key-encryption key.
#[derive(Clone)]
pub struct Passphrase {
    secret: String,
    params: KdfParams,
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Passphrase")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl Passphrase {
    /// A passphrase with the default Argon2id parameters for new slots.
    pub fn new(secret: impl Into<String>) -> Self {
        Self {
            secret: secret.into(),
            params: KdfParams::default(),
        }
    }
    /// The parameters used when this passphrase wraps a new slot (opening always uses the
    /// slot's own parameters).
    pub fn with_params(mut self, params: KdfParams) -> Self {
        self.params = params;
        self
    }
    /// Reads the passphrase from an environment variable.
    pub fn from_env(var: &str) -> Result<Self> {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Self::new(v)),
            _ => Err(Error::KeyProvider {
                provider: "env".into(),
                reason: format!("environment variable {var} is not set"),
            }),
        }
    }
    /// Reads the passphrase from a file (one trailing newline is ignored).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let s = std::fs::read_to_string(path)
            .map_err(|e| Error::io("read passphrase file", path, e))?;
        let s = s.strip_suffix('\n').unwrap_or(&s);
        let s = s.strip_suffix('\r').unwrap_or(s);
        // An empty file is a secret not mounted or not written yet, not a passphrase to try.
        if s.is_empty() {
            return Err(Error::KeyProvider {
                provider: "file".into(),
                reason: format!("the passphrase file {} is empty", path.display()),
            });
        }
        Ok(Self::new(s))
    }

    /// A value that tells whether a passphrase is still the one a cache of what it opens was
    /// made with, without deriving a slot's key again: Argon2id of it at 8 MiB and one pass
    /// (about 5 ms), salted with `salt` (a slot's id, of any length). Whoever reads it can
    /// test guesses of the passphrase that much faster than against a key slot, so it belongs
    /// only beside what the passphrase opens, never apart from it.
    pub fn fingerprint(&self, salt: &[u8]) -> Result<[u8; 32]> {
        let params = KdfParams {
            memory_kib: 8 * 1024,
            iterations: 1,
            parallelism: 1,
        };
        Self::derive(&self.secret, blake3::hash(salt).as_bytes(), params)
    }

    fn derive(secret: &str, salt: &[u8], p: KdfParams) -> Result<[u8; 32]> {
        if p.memory_kib > MAX_ARGON2_MEMORY_KIB || p.iterations > MAX_ARGON2_ITERATIONS {
            return Err(Error::corrupt(
                "key slot",
                "Argon2 parameters beyond the accepted bounds",
            ));
        }
        let params = argon2::Params::new(p.memory_kib, p.iterations, p.parallelism, Some(32))
            .map_err(|e| Error::corrupt("key slot", format!("bad Argon2 parameters: {e}")))?;
        // The memory (64 MiB by default) is zeroed by both cores: allocated and zeroed by
        // one, as `hash_password_into` does, its first touch of each page (a fault each) took
        // about 25 ms of a 70 ms key derivation on one core while the other waited.
        let blocks = params.block_count();
        let mut memory: Vec<argon2::Block> = Vec::new();
        memory.try_reserve_exact(blocks).map_err(|_| {
            Error::Invalid(format!(
                "cannot allocate the {} MiB the key slot's Argon2 parameters ask for",
                p.memory_kib / 1024
            ))
        })?;
        memory.par_extend((0..blocks).into_par_iter().map(|_| argon2::Block::new()));
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; 32];
        a.hash_password_into_with_memory(secret.as_bytes(), salt, &mut out, &mut memory)
            .map_err(|e| Error::corrupt("key slot", format!("Argon2: {e}")))?;
        Ok(out)
    }
}

#[async_trait]
impl KeyProvider for Passphrase {
    fn kind(&self) -> &str {
        "passphrase"
    }
    async fn wrap(&self, secret: &[u8], aad: &[u8]) -> Result<WrappedKey> {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let (pass, params) = (self.secret.clone(), self.params);
        let kek = tokio::task::spawn_blocking(move || Self::derive(&pass, &salt, params))
            .await
            .map_err(|e| Error::Invalid(format!("key derivation task failed: {e}")))??;
        let wrapped = crypto::seal_to_vec(&crypto::cipher_from(&kek), aad, secret);
        let p = PassphraseParams {
            algorithm: "argon2id".into(),
            kdf: params,
            salt: hex::encode(salt),
        };
        Ok(WrappedKey {
            kind: self.kind().into(),
            params: serde_json::to_value(p).map_err(|e| Error::Invalid(e.to_string()))?,
            wrapped: hex::encode(wrapped),
        })
    }
    async fn unwrap(&self, slot: &WrappedKey, aad: &[u8]) -> Result<Option<Vec<u8>>> {
        let p: PassphraseParams = serde_json::from_value(slot.params.clone())
            .map_err(|e| Error::corrupt("key slot", format!("passphrase parameters: {e}")))?;
        if p.algorithm != "argon2id" {
            return Err(Error::corrupt(
                "key slot",
                format!("unknown KDF {}", p.algorithm),
            ));
        }
        let salt =
            hex::decode(&p.salt).map_err(|_| Error::corrupt("key slot", "salt is not hex"))?;
        let wrapped = hex::decode(&slot.wrapped)
            .map_err(|_| Error::corrupt("key slot", "wrapped key is not hex"))?;
        let pass = self.secret.clone();
        let kek = tokio::task::spawn_blocking(move || Self::derive(&pass, &salt, p.kdf))
            .await
            .map_err(|e| Error::Invalid(format!("key derivation task failed: {e}")))??;
        Ok(crypto::open_with(&crypto::cipher_from(&kek), aad, &wrapped))
    }
}

/// A random 256-bit key kept in a file (hex), used directly as the key-encryption key.
///
/// This is what `cairn run` uses for its default repository: the key lives in the instance's
/// home, so the main job needs no setup.
#[derive(Clone)]
pub struct KeyFile {
    path: PathBuf,
    key: [u8; KEY_FILE_LEN],
}

impl fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Writes `bytes` to a new file at `path`, readable by its owner only, and syncs it and its
/// directory (a key file a power cut forgot, after `key rotate` removed the old slot, would
/// leave nothing that opens the repository); a file already there is an error
/// (`AlreadyExists`), never replaced.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    std::io::Write::write_all(&mut f, bytes)?;
    f.sync_all()?;
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl KeyFile {
    /// Loads a key file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let s = std::fs::read_to_string(path).map_err(|e| Error::io("read key file", path, e))?;
        let bytes = hex::decode(s.trim()).map_err(|_| Error::KeyProvider {
            provider: "key-file".into(),
            reason: format!("{} does not hold a hex key", path.display()),
        })?;
        let key: [u8; KEY_FILE_LEN] = bytes.try_into().map_err(|_| Error::KeyProvider {
            provider: "key-file".into(),
            reason: format!("{} does not hold a {KEY_FILE_LEN}-byte key", path.display()),
        })?;
        Ok(Self {
            path: path.to_owned(),
            key,
        })
    }

    /// Creates a new random key file (readable by its owner only); refuses to overwrite one.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut key = [0u8; KEY_FILE_LEN];
        rand::rng().fill_bytes(&mut key);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        }
        write_private(path, format!("{}\n", hex::encode(key)).as_bytes())
            .map_err(|e| Error::io("create key file", path, e))?;
        Ok(Self {
            path: path.to_owned(),
            key,
        })
    }

    /// Loads the key file, creating it when absent.
    pub fn load_or_create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.exists() {
            Self::load(path)
        } else {
            Self::create(path)
        }
    }

    fn fingerprint(&self) -> String {
        hex::encode(&blake3::derive_key("cairn key-file fingerprint v1", &self.key)[..8])
    }
}

#[async_trait]
impl KeyProvider for KeyFile {
    fn kind(&self) -> &str {
        "key-file"
    }
    async fn wrap(&self, secret: &[u8], aad: &[u8]) -> Result<WrappedKey> {
        let wrapped = crypto::seal_to_vec(&crypto::cipher_from(&self.key), aad, secret);
        Ok(WrappedKey {
            kind: self.kind().into(),
            params: serde_json::json!({ "fingerprint": self.fingerprint() }),
            wrapped: hex::encode(wrapped),
        })
    }
    async fn unwrap(&self, slot: &WrappedKey, aad: &[u8]) -> Result<Option<Vec<u8>>> {
        if slot.params.get("fingerprint").and_then(|v| v.as_str())
            != Some(self.fingerprint().as_str())
        {
            return Ok(None);
        }
        let wrapped = hex::decode(&slot.wrapped)
            .map_err(|_| Error::corrupt("key slot", "wrapped key is not hex"))?;
        Ok(crypto::open_with(
            &crypto::cipher_from(&self.key),
            aad,
            &wrapped,
        ))
    }
}

/// A key slot as stored in `keys/<id>` (plaintext JSON: it holds only wrapped secrets).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SlotFile {
    pub(crate) version: u32,
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) label: String,
    pub(crate) created: jiff::Timestamp,
    #[serde(flatten)]
    pub(crate) key: WrappedKey,
}

/// What `key list` shows about a slot.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct KeySlotInfo {
    /// The slot id.
    pub id: String,
    /// The provider kind.
    pub kind: String,
    /// A free-form label.
    pub label: String,
    /// When the slot was written.
    pub created: jiff::Timestamp,
    /// Whether this is the slot the repository was opened with.
    pub current: bool,
}

/// Binds a slot to its repository and its own id, so a slot left by a failed `init` racing
/// another (same key, other secret) or copied from another repository never opens.
pub(crate) fn slot_aad(repository: &str, id: &str) -> Vec<u8> {
    crypto::object_aad("key", &format!("{repository}/{id}"))
}

pub(crate) fn master_from(bytes: &[u8]) -> Result<crypto::MasterKeys> {
    let raw: [u8; MASTER_LEN] = bytes
        .try_into()
        .map_err(|_| Error::corrupt("key slot", "wrapped secret has the wrong length"))?;
    Ok(crypto::MasterKeys::from_raw(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots keep the parameters they were made with, so a new Argon2 implementation must
    /// derive the keys the old one did: these were computed with argon2 0.5, which made every
    /// slot before the default moved to 4 lanes.
    #[test]
    fn slots_made_before_derive_the_same_key() {
        let cases = [
            (
                KdfParams {
                    memory_kib: 64 * 1024,
                    iterations: 3,
                    parallelism: 1,
                },
                "7b985d8fa00c9eccccf918c8cb9feaa8036af381caf6f498e099b5b849b8c18a",
            ),
            (
                KdfParams {
                    memory_kib: 256,
                    iterations: 2,
                    parallelism: 4,
                },
                "aa29b4d41bfc27d7ab285c326078947808260ac81f65fb5a9fcb1e47e4b6d889",
            ),
        ];
        for (params, want) in cases {
            let kek = Passphrase::derive("correct horse", &[7; 16], params).expect("derives");
            assert_eq!(hex::encode(kek), want, "{params:?}");
        }
    }
}
