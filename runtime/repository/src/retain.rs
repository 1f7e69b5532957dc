//! Object Lock retention that follows reuse. A new snapshot deduplicates against packs older
//! snapshots wrote, and each of those was retained from its own first write: without more, a
//! stolen credential could delete, once that pack's date passed, data a snapshot of yesterday
//! needs. So before a snapshot is committed, the packs it shares whose retention ends too soon
//! are retained again (S3's `PutObjectRetention`), and a record of that goes under
//! `retention/`: later backups and prunes read it to know those packs' dates, which S3 does
//! not list.

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::format::{self, SnapshotInfo};
use crate::mark::Marks;
use crate::repo::{Repository, poisoned};

/// Where the records of extensions go, each named `<until>-<id>`: the date they retain to
/// (unix seconds, twelve digits, so names sort by it) and a random id.
pub(crate) const RECORDS: &str = "retention/";

/// One extension: the packs it retained, until when.
#[derive(Serialize, Deserialize)]
struct Record {
    /// Unix seconds.
    until: i64,
    /// Pack ids.
    packs: Vec<String>,
}

/// A record's date and id, from its object's name, if it is one of Cairn's.
pub(crate) fn parse_name(path: &str) -> Option<(i64, &str)> {
    let name = path.strip_prefix(RECORDS)?;
    let (until, id) = name.split_once('-')?;
    (until.len() == 12 && until.bytes().all(|b| b.is_ascii_digit()) && format::is_id(id))
        .then(|| Some((until.parse().ok()?, name)))?
}

impl Repository {
    /// Reads the records of extensions to `from` or later, notes what they retain in the
    /// backend (which then protects those packs so long), and returns the listing of every
    /// record with the date each names.
    pub(crate) async fn read_retention(
        &self,
        from: i64,
    ) -> Result<Vec<(object_store::ObjectMeta, i64)>> {
        let backend = &self.inner.backend;
        let mut records = Vec::new();
        for m in backend.list(RECORDS).await? {
            let Some((until, name)) = parse_name(m.location.as_ref()) else {
                continue;
            };
            if until >= from {
                let path = m.location.to_string();
                let Some(sealed) = backend.get(&path).await? else {
                    continue;
                };
                let plain =
                    format::open_object(&self.inner.keys, "retention", name, &path, &sealed)?;
                let r: Record =
                    serde_json::from_slice(&plain).map_err(|e| Error::corrupt(&path, e))?;
                let packs = r
                    .packs
                    .iter()
                    .filter(|p| format::is_id(p))
                    .map(|p| format::pack_path(p));
                backend.note_extended(packs, r.until.min(until));
            }
            records.push((m, until));
        }
        Ok(records)
    }

    /// Before snapshot `info` is committed (its content written, its snapshot object not yet):
    /// retains the packs it shares with older snapshots at least as long as a pack written now,
    /// when their retention would end within half of [`crate::backend::Backend::lock_ahead`]
    /// of the protection period from now, and records it. Nothing to do without Object Lock.
    pub(crate) async fn retain_shared(&self, info: &SnapshotInfo) -> Result<()> {
        let backend = &self.inner.backend;
        let ahead = backend.lock_ahead();
        if ahead.is_zero() {
            return Ok(());
        }
        let until = backend.retain_date().await?;
        // A pack retained to at least this is left until a later backup.
        let due_below =
            until.as_second() - (ahead / 2 + crate::backend::LOCK_CLIENT_LIFE).as_secs() as i64;
        // The packs this backup wrote are indexed in files the shared index has not read.
        self.update_index().await?;
        let mut marks = Marks::default();
        self.mark(info, &mut marks).await?;
        let shared: HashSet<String> = {
            let idx = self.inner.index.read().map_err(|_| poisoned())?;
            marks
                .referenced
                .iter()
                .filter_map(|id| idx.get(id))
                .filter_map(|l| idx.packs.get(l.pack as usize))
                .map(format::pack_hex)
                .collect()
        };
        self.read_retention(due_below).await?;
        let listed: HashMap<String, object_store::ObjectMeta> =
            backend.list_packs().await?.into_iter().collect();
        let mut due: Vec<String> = shared
            .iter()
            .filter(|hex| {
                listed
                    .get(*hex)
                    .is_some_and(|m| backend.retained_until(m) < due_below)
            })
            .cloned()
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        due.sort();
        let paths: Vec<String> = due.iter().map(|p| format::pack_path(p)).collect();
        backend.retain(&paths, until).await?;
        let name = format!("{:012}-{}", until.as_second(), format::new_id());
        let record = Record {
            until: until.as_second(),
            packs: due,
        };
        let sealed = format::seal_json(&self.inner.keys, "retention", &name, &record)?;
        backend
            .put_data(&format!("{RECORDS}{name}"), bytes::Bytes::from(sealed))
            .await?;
        tracing::info!(
            packs = record.packs.len(),
            until = %until,
            "extended the Object Lock retention of packs the new snapshot shares with older ones"
        );
        Ok(())
    }

    /// Deletes the records of extensions whose date has passed (a prune's, not in a dry run).
    pub(crate) async fn drop_past_retention(
        &self,
        records: &[(object_store::ObjectMeta, i64)],
    ) -> Result<()> {
        let backend = &self.inner.backend;
        let now = backend.now();
        for (m, until) in records {
            if *until < now && backend.protected(m).is_none() {
                backend.delete_data(m.location.as_ref(), Some(m)).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::parse_name;

    #[test]
    fn record_names_carry_their_date() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            parse_name(&format!("retention/001780000000-{id}")),
            Some((1_780_000_000, &*format!("001780000000-{id}")))
        );
        for foreign in [
            format!("retention/1780000000-{id}"),
            format!("retention/00178000000x-{id}"),
            "retention/001780000000-short".to_string(),
            format!("index/001780000000-{id}"),
        ] {
            assert_eq!(parse_name(&foreign), None, "{foreign}");
        }
    }
}
