//! Authenticated encryption of objects and keyed chunk ids.
//!
//! Every object (and every frame inside a pack) is sealed as `nonce (12) ‖ ciphertext ‖ tag (16)`
//! with AES-256-GCM under the repository's data key; the associated data names the object's
//! kind and id (for frames: the pack id and the frame's offset), so objects cannot be swapped,
//! moved or replayed under another name.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use rand::RngCore;
use std::fmt;

/// Bytes of an AES-GCM nonce.
pub(crate) const NONCE_LEN: usize = 12;
/// Bytes of an AES-GCM tag.
pub(crate) const TAG_LEN: usize = 16;
/// What sealing adds to a plaintext.
pub(crate) const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Bytes of the secret held in a key slot: the AES data key and the chunk-id key.
pub(crate) const MASTER_LEN: usize = 64;

/// Keyed BLAKE3 hash of a chunk's plaintext: its name in the repository.
///
/// The key is a repository secret, so ids reveal nothing about the content to someone who
/// can read the store but has no key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChunkId(pub(crate) [u8; 32]);

/// Ids are keyed hashes, uniform and unpredictable without the repository's key, so a map of
/// them needs no hashing of its own: eight of the id's bytes are the hash (see `IdMap`).
impl std::hash::Hash for ChunkId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(head));
    }
}

/// The hasher of [`IdMap`] and [`IdSet`]: passes a chunk id's own bits through.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only chunk ids are hashed here, through `write_u64`; anything else still mixes.
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// A set of chunk ids, without a second hash.
pub(crate) type IdSet = std::collections::HashSet<ChunkId, std::hash::BuildHasherDefault<IdHasher>>;

impl ChunkId {
    /// The id in lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The repository's secrets once a key slot has been opened.
pub(crate) struct MasterKeys {
    cipher: Aes256Gcm,
    id_key: [u8; 32],
    raw: [u8; MASTER_LEN],
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKeys(..)")
    }
}

impl MasterKeys {
    pub(crate) fn generate() -> Self {
        let mut raw = [0u8; MASTER_LEN];
        rand::rng().fill_bytes(&mut raw);
        Self::from_raw(raw)
    }

    pub(crate) fn from_raw(raw: [u8; MASTER_LEN]) -> Self {
        let mut data = [0u8; 32];
        data.copy_from_slice(&raw[..32]);
        let mut id_key = [0u8; 32];
        id_key.copy_from_slice(&raw[32..]);
        let cipher = Aes256Gcm::new(&data.into());
        Self {
            cipher,
            id_key,
            raw,
        }
    }

    pub(crate) fn raw(&self) -> &[u8; MASTER_LEN] {
        &self.raw
    }

    pub(crate) fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.id_key, data).as_bytes())
    }

    /// Seals `plaintext` and appends `nonce ‖ ciphertext ‖ tag` to `out`.
    pub(crate) fn seal_into(&self, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        seal_with(&self.cipher, aad, plaintext, out);
    }

    pub(crate) fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        self.seal_into(aad, plaintext, &mut out);
        out
    }

    /// Opens a sealed buffer; `None` when it fails authentication.
    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        open_with(&self.cipher, aad, sealed)
    }

    /// [`open_in_place`] with the data key.
    pub(crate) fn open_in_place(
        &self,
        aad: &[u8],
        sealed: &mut [u8],
    ) -> Option<std::ops::Range<usize>> {
        open_in_place(&self.cipher, aad, sealed)
    }
}

impl MasterKeys {
    /// Seals `buf[NONCE_LEN..]` in place: `buf` starts with [`NONCE_LEN`] bytes of room for the
    /// nonce, and gets the tag appended — the layout [`MasterKeys::seal`] produces.
    pub(crate) fn seal_in_place(&self, aad: &[u8], buf: &mut Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        buf[..NONCE_LEN].copy_from_slice(&nonce);
        let tag = self
            .cipher
            .encrypt_inout_detached(&Nonce::from(nonce), aad, (&mut buf[NONCE_LEN..]).into())
            // Only fails for plaintexts over 64 GiB, which the format never produces.
            .unwrap_or_default();
        buf.extend_from_slice(&tag);
    }
}

pub(crate) fn seal_with(cipher: &Aes256Gcm, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let start = out.len();
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_inout_detached(
            &Nonce::from(nonce),
            aad,
            (&mut out[start + NONCE_LEN..]).into(),
        )
        // Only fails for plaintexts over 64 GiB, which the format never produces.
        .unwrap_or_default();
    out.extend_from_slice(&tag);
}

pub(crate) fn open_with(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let mut buf = sealed.to_vec();
    let plain = open_in_place(cipher, aad, &mut buf)?;
    buf.truncate(plain.end);
    buf.drain(..plain.start);
    Some(buf)
}

/// Authenticates and decrypts `sealed` (nonce, ciphertext, tag) where it lies; returns where
/// in it the plaintext is.
pub(crate) fn open_in_place(
    cipher: &Aes256Gcm,
    aad: &[u8],
    sealed: &mut [u8],
) -> Option<std::ops::Range<usize>> {
    if sealed.len() < SEAL_OVERHEAD {
        return None;
    }
    let end = sealed.len() - TAG_LEN;
    let nonce = Nonce::try_from(&sealed[..NONCE_LEN]).ok()?;
    let tag = Tag::try_from(&sealed[end..]).ok()?;
    cipher
        .decrypt_inout_detached(&nonce, aad, (&mut sealed[NONCE_LEN..end]).into(), &tag)
        .ok()?;
    Some(NONCE_LEN..end)
}

pub(crate) fn cipher_from(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(key.into())
}

/// Associated data for a whole object.
pub(crate) fn object_aad(kind: &str, id: &str) -> Vec<u8> {
    format!("cairn/{kind}/{id}").into_bytes()
}

/// Associated data for a frame inside a pack.
pub(crate) fn frame_aad(pack: &str, offset: u64) -> Vec<u8> {
    format!("cairn/frame/{pack}/{offset}").into_bytes()
}

/// Plaintext codec byte: stored as is.
pub(crate) const CODEC_RAW: u8 = 0;
/// Plaintext codec byte: one zstd frame.
pub(crate) const CODEC_ZSTD: u8 = 1;

/// Compresses `data` with a codec byte in front, keeping it raw when zstd does not pay.
pub(crate) fn encode_payload(data: &[u8], level: i32) -> Vec<u8> {
    if let Ok(c) = zstd::bulk::compress(data, level) {
        // Incompressible data (already-compressed blobs) is stored raw: reading it back then
        // costs a copy instead of a decode.
        if c.len() + c.len() / 32 < data.len() {
            let mut out = Vec::with_capacity(c.len() + 1);
            out.push(CODEC_ZSTD);
            out.extend_from_slice(&c);
            return out;
        }
    }
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(CODEC_RAW);
    out.extend_from_slice(data);
    out
}

/// Like [`decode_payload`], on a shared buffer: a raw payload is a slice of it, not a copy.
pub(crate) fn decode_payload_bytes(buf: bytes::Bytes, max: usize) -> Option<bytes::Bytes> {
    match buf.first()? {
        &CODEC_RAW => Some(buf.slice(1..)),
        _ => decode_payload(&buf, max).map(bytes::Bytes::from),
    }
}

thread_local! {
    /// One decompression context per thread: creating a context per frame costs as much as a
    /// tenth of decoding a 128 KiB frame.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn with_decompressor(
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> std::io::Result<Vec<u8>>,
) -> Option<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().ok()?);
        }
        f(slot.as_mut()?).ok()
    })
}

/// Inverse of [`encode_payload`]; `max` bounds the decoded size.
pub(crate) fn decode_payload(buf: &[u8], max: usize) -> Option<Vec<u8>> {
    match buf.split_first()? {
        (&CODEC_RAW, rest) => Some(rest.to_vec()),
        (&CODEC_ZSTD, rest) => {
            // The frame header records the content size (bulk compression always writes it),
            // so the output is allocated once at its exact size.
            match zstd::zstd_safe::get_frame_content_size(rest) {
                Ok(Some(n)) if n <= max as u64 => {
                    with_decompressor(|d| d.decompress(rest, n as usize))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

pub(crate) fn seal_to_vec(cipher: &Aes256Gcm, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
    seal_with(cipher, aad, plaintext, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_aad_binds() {
        let k = MasterKeys::generate();
        let s = k.seal(b"a", b"hello");
        assert_eq!(k.open(b"a", &s).as_deref(), Some(&b"hello"[..]));
        assert!(k.open(b"b", &s).is_none());
    }

    #[test]
    fn payload_round_trip() {
        let text = b"abcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabc".repeat(100);
        let e = encode_payload(&text, 1);
        assert_eq!(e[0], CODEC_ZSTD);
        assert_eq!(decode_payload(&e, text.len()).as_deref(), Some(&text[..]));
    }
}
