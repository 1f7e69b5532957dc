//! Reading chunks back: plan ranged reads over packs, fetch and decode them in parallel, yield
//! chunk data in order.

use crate::backend::Backend;
use crate::crypto::{self, ChunkId, MasterKeys};
use crate::error::{Error, Result};
use crate::format::{self, Index, PackId};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::collections::HashMap;
use std::sync::Arc;

/// Most bytes one ranged read covers (2 MiB): large reads for throughput, bounded so the reads
/// in flight stay small (a unit of text decodes to about three times its size).
pub(crate) const READ_UNIT_BYTES: u64 = 2 << 20;
/// Largest hole between two needed frames of a pack that is read through rather than split
/// into two requests (256 KiB).
pub(crate) const READ_GAP_BYTES: u64 = 256 << 10;
/// Read units fetched and decoded at once: three per core keeps both cores busy while reads
/// wait and the writer drains; with [`READ_UNIT_BYTES`] this bounds restore memory.
pub(crate) const READS_IN_FLIGHT: usize = 6;

/// One ranged read of a pack and the chunks it yields, in order.
#[derive(Debug)]
pub(crate) struct Unit {
    pack: PackId,
    start: u64,
    end: u64,
    /// Frames in the range: (offset in pack, sealed length).
    frames: Vec<(u64, u32)>,
    /// Chunks: (frame number in `frames`, offset in the decoded frame, length, id).
    chunks: Vec<(u32, u32, u32, ChunkId)>,
}

/// Plans the reads for a sequence of chunks; a chunk missing from the index is an error naming
/// the chunk.
pub(crate) fn plan(index: &Index, ids: &[ChunkId]) -> Result<Vec<Unit>> {
    let mut units: Vec<Unit> = Vec::new();
    let mut frame_no: HashMap<u64, u32> = HashMap::new();
    for id in ids {
        let loc = index.map.get(id).ok_or_else(|| Error::Missing {
            object: format!("chunk {id}"),
            snapshots: Vec::new(),
        })?;
        let pack = index.packs[loc.pack as usize];
        let (fo, fl) = (u64::from(loc.frame_off), loc.frame_len);
        let fits = units.last().is_some_and(|u| {
            u.pack == pack
                && (frame_no.contains_key(&fo)
                    || (fo >= u.end
                        && fo - u.end <= READ_GAP_BYTES
                        && fo + u64::from(fl) - u.start <= READ_UNIT_BYTES))
        });
        if !fits {
            frame_no.clear();
            units.push(Unit {
                pack,
                start: fo,
                end: fo,
                frames: Vec::new(),
                chunks: Vec::new(),
            });
        }
        let Some(u) = units.last_mut() else { continue };
        let n = match frame_no.get(&fo) {
            Some(&n) => n,
            None => {
                let n = u.frames.len() as u32;
                u.frames.push((fo, fl));
                u.end = u.end.max(fo + u64::from(fl));
                frame_no.insert(fo, n);
                n
            }
        };
        u.chunks.push((n, loc.inner_off, loc.len, *id));
    }
    Ok(units)
}

/// Fetches and decodes one unit: every frame is authenticated, decompressed with a bound, and
/// every chunk's keyed hash checked.
async fn fetch(backend: &Backend, keys: Arc<MasterKeys>, u: Unit) -> Result<Vec<Bytes>> {
    let hex = format::pack_hex(&u.pack);
    let path = format::pack_path(&hex);
    let data = backend.get_range(&path, u.start..u.end).await?;
    if (data.len() as u64) < u.end - u.start {
        return Err(Error::corrupt(&path, "is truncated"));
    }
    tokio::task::spawn_blocking(move || decode_unit(&keys, &u, &hex, &path, &data))
        .await
        .map_err(|e| Error::Invalid(format!("decode task failed: {e}")))?
}

pub(crate) fn decode_frame(
    keys: &MasterKeys,
    pack_hex: &str,
    path: &str,
    off: u64,
    sealed: &[u8],
) -> Result<Bytes> {
    let plain = keys
        .open(&crypto::frame_aad(pack_hex, off), sealed)
        .ok_or_else(|| {
            Error::corrupt(path, format!("frame at offset {off} fails authentication"))
        })?;
    crypto::decode_payload_owned(plain, format::MAX_FRAME_BYTES)
        .ok_or_else(|| Error::corrupt(path, format!("frame at offset {off} cannot be decoded")))
}

fn decode_unit(
    keys: &MasterKeys,
    u: &Unit,
    hex: &str,
    path: &str,
    data: &[u8],
) -> Result<Vec<Bytes>> {
    let mut frames = Vec::with_capacity(u.frames.len());
    for &(off, len) in &u.frames {
        let s = (off - u.start) as usize;
        frames.push(decode_frame(
            keys,
            hex,
            path,
            off,
            &data[s..s + len as usize],
        )?);
    }
    let mut out = Vec::with_capacity(u.chunks.len());
    for &(n, inner, len, id) in &u.chunks {
        let f = &frames[n as usize];
        let (a, b) = (inner as usize, inner as usize + len as usize);
        if b > f.len() {
            return Err(Error::corrupt(
                path,
                format!("chunk {id} lies outside its frame"),
            ));
        }
        let c = f.slice(a..b);
        if keys.chunk_id(&c) != id {
            return Err(Error::corrupt(
                path,
                format!("chunk {id} does not match its hash"),
            ));
        }
        out.push(c);
    }
    Ok(out)
}

/// Decoded chunks of `units`, in order, with at most [`READS_IN_FLIGHT`] reads at once.
pub(crate) fn chunks(
    backend: Backend,
    keys: Arc<MasterKeys>,
    units: Vec<Unit>,
) -> impl Stream<Item = Result<Vec<Bytes>>> + Send + 'static {
    futures::stream::iter(units)
        .map(move |u| {
            let (b, k) = (backend.clone(), keys.clone());
            async move { fetch(&b, k, u).await }
        })
        .buffered(READS_IN_FLIGHT)
}
