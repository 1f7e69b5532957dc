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

/// Records whose date is further ahead than any Cairn stamps, with this much room for clocks,
/// are not Cairn's (a forged or damaged object): they are left out, as unreadable ones are.
const RECORD_SLACK_SECS: i64 = 86_400;

impl Repository {
    /// Reads the records of extensions to `from` or later, notes what they retain in the
    /// backend (which then protects those packs so long), and returns the listing of every
    /// record with the date each names, and what was wrong with those left out: one that
    /// does not open, or names a date no writer stamps. Such a record only costs time (a
    /// backup extends again what it named) or leaves an unused pack to prune, which on an
    /// Object Lock bucket hides a version the store still keeps: never data a snapshot needs.
    pub(crate) async fn read_retention(
        &self,
        from: i64,
    ) -> Result<(Vec<(object_store::ObjectMeta, i64)>, Vec<String>)> {
        use futures::StreamExt as _;
        let backend = &self.inner.backend;
        // Only a repository under Object Lock extends, and so has records: no other pays for
        // a listing and a look at the store's clock at each prune and check.
        if backend.lock_ahead().is_zero() {
            return Ok((Vec::new(), Vec::new()));
        }
        // By the store's clock ([`Backend::retain_date`] learns it first).
        let latest = backend.retain_date().await?.as_second() + RECORD_SLACK_SECS;
        let mut records = Vec::new();
        let mut wanted = Vec::new();
        let mut problems = Vec::new();
        for m in backend.list(RECORDS).await? {
            let Some((until, _)) = parse_name(m.location.as_ref()) else {
                continue;
            };
            if until > latest {
                problems.push(format!(
                    "retention record {} names a date no writer stamps; ignored",
                    m.location
                ));
                continue;
            }
            if until >= from {
                wanted.push(m.location.to_string());
            }
            records.push((m, until));
        }
        let read: Vec<Result<Option<Record>>> = futures::stream::iter(wanted)
            .map(|path| async move { self.read_record(&path).await })
            .buffer_unordered(16)
            .collect()
            .await;
        for r in read {
            match r {
                Ok(Some(r)) => {
                    let packs = r.packs.iter().filter(|p| format::is_id(p));
                    backend.note_extended(packs.map(|p| format::pack_path(p)), r.until);
                }
                Ok(None) => {}
                Err(e) => problems.push(format!("{e}; the retention record is ignored")),
            }
        }
        for p in &problems {
            tracing::warn!("{p}");
        }
        Ok((records, problems))
    }

    /// One record; `None` when it is gone. Its date is the lower of the one in its name and
    /// the one it holds.
    async fn read_record(&self, path: &str) -> Result<Option<Record>> {
        let Some((until, name)) = parse_name(path) else {
            return Ok(None);
        };
        let Some(sealed) = self.inner.backend.get(path).await? else {
            return Ok(None);
        };
        let plain = format::open_object(&self.inner.keys, "retention", name, path, &sealed)?;
        let mut r: Record = serde_json::from_slice(&plain).map_err(|e| Error::corrupt(path, e))?;
        r.until = r.until.min(until);
        Ok(Some(r))
    }

    /// Before snapshot `info` is committed (its content written, its snapshot object not yet):
    /// when a pack it references would be retained for less than the protection period and
    /// half of [`crate::backend::Backend::lock_ahead`] from now, retains every pack it
    /// references as long as a pack written now, and records it. Taking them all at once,
    /// rather than those due alone, makes the extensions come in batches, one each half lead,
    /// whatever the backups' frequency. Nothing to do without Object Lock.
    pub(crate) async fn retain_shared(&self, info: &SnapshotInfo) -> Result<()> {
        let backend = &self.inner.backend;
        let ahead = backend.lock_ahead();
        if ahead.is_zero() {
            return Ok(());
        }
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
        drop(marks);
        // Dated only now that the snapshot is read, which may have taken a while: what is not
        // extended is retained at least the period and half the lead from here.
        let until = backend.retain_date().await?;
        let lead = (ahead / 2 + crate::backend::LOCK_CLIENT_LIFE).as_secs() as i64;
        let due_below = until.as_second() - lead;
        self.read_retention(due_below).await?;
        let listed: HashMap<String, object_store::ObjectMeta> =
            backend.list_packs().await?.into_iter().collect();
        let known = |hex: &String| listed.get(hex).map(|m| backend.retained_until(m));
        if !shared
            .iter()
            .any(|hex| known(hex).is_some_and(|k| k < due_below))
        {
            return Ok(());
        }
        let mut packs: Vec<String> = shared
            .into_iter()
            .filter(|hex| known(hex).is_some_and(|k| k < until.as_second()))
            .collect();
        packs.sort();
        let paths: Vec<String> = packs.iter().map(|p| format::pack_path(p)).collect();
        let (done, failed) = backend.retain(&paths, until).await;
        // Those extended are recorded even when others were not: prune then knows their date,
        // and the next backup does not send them again.
        if !done.is_empty() {
            let done: HashSet<&String> = done.iter().collect();
            packs.retain(|p| done.contains(&format::pack_path(p)));
            let name = format!("{:012}-{}", until.as_second(), format::new_id());
            let record = Record {
                until: until.as_second(),
                packs,
            };
            let sealed = format::seal_json(&self.inner.keys, "retention", &name, &record)?;
            backend
                .put_data(&format!("{RECORDS}{name}"), bytes::Bytes::from(sealed))
                .await?;
            tracing::info!(
                packs = record.packs.len(),
                until = %until,
                "extended the Object Lock retention of the packs the new snapshot references"
            );
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
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
