//! Repairing snapshots whose data is lost (`cairn repo repair snapshots`): a tree snapshot is
//! written again without the files whose chunks no pack holds, so the rest of it stays
//! restorable, `check` passes and `prune` can run.

use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use crate::format::{self, Content, Node, NodeKind, SnapshotInfo};
use crate::lock::LockGuard;
use crate::pipeline::ChunkerOut;
use crate::repo::{BackupOptions, Repository, poisoned};
use serde::Serialize;
use std::collections::HashSet;

/// The tag a repaired snapshot carries beside the original's.
pub const REPAIRED_TAG: &str = "repaired";

/// What [`Repository::repair_snapshot`] found in one snapshot and did about it.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct SnapshotRepair {
    /// The snapshot looked at.
    pub snapshot: String,
    /// The files it holds whose data is lost, each with why: left out of the repaired
    /// snapshot. Empty for a snapshot found whole.
    pub dropped: Vec<(String, String)>,
    /// The repaired snapshot written in its place; none when it was whole, or on a dry run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repaired: Option<String>,
    /// Whether the damaged snapshot was removed (`forget`).
    pub forgotten: bool,
    /// Why it was kept although asked to remove it: the protection period (until when).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protected_until: Option<String>,
}

impl Repository {
    /// Looks for lost data in tree snapshot `id_or_prefix`: files with a chunk, or a list
    /// chunk of their chunk ids, that the index does not hold. When it finds some, and unless
    /// `dry_run`, it writes a new snapshot of the same time, host, source and tags (and
    /// [`REPAIRED_TAG`]) without those files, unless an earlier run wrote that already; with
    /// `forget`, it then removes the damaged one (unless the protection period keeps it).
    /// Directories, links and the other files stay as they were; a hard link whose first name
    /// was left out becomes a file of its own.
    ///
    /// Run `repair index` and `repair packs` first: while the index names a missing pack this
    /// refuses (a chunk in it may be whole elsewhere), and a damaged pack's chunks count as
    /// whole until `repair packs` drops them. Only damage leaves a file out: a store that
    /// fails, or a permission, stops the repair with nothing written. A stream with lost data,
    /// and a tree whose list of files (its node chunks) is lost, cannot be repaired by leaving
    /// files out, and are an error that says so.
    ///
    /// Takes the backup lock, as a backup does: what it writes is a snapshot, and the data it
    /// names is in packs already. [`Repository::repair_snapshots`] repairs many under one lock.
    pub async fn repair_snapshot(
        &self,
        id_or_prefix: &str,
        dry_run: bool,
        forget: bool,
    ) -> Result<SnapshotRepair> {
        let mut done = self
            .repair_snapshots(&[id_or_prefix.to_owned()], dry_run, forget)
            .await?;
        match done.pop() {
            Some((_, r)) => r,
            None => Err(Error::Invalid("no snapshot was repaired".into())),
        }
    }

    /// [`Repository::repair_snapshot`] for each of `ids`, under one lock, with one look at
    /// the index and the packs. Each comes back with its own result: what is wrong with one
    /// snapshot (not found, a stream with lost data, its list of files lost) is that one's
    /// error, and the others are repaired; what is wrong with the repository or the store
    /// stops them all.
    pub async fn repair_snapshots(
        &self,
        ids: &[String],
        dry_run: bool,
        forget: bool,
    ) -> Result<Vec<(String, Result<SnapshotRepair>)>> {
        let lock = LockGuard::acquire(&self.inner.backend, false, "repair snapshots").await?;
        let r = self.repair_all_locked(&lock, ids, dry_run, forget).await;
        lock.release().await;
        r
    }

    async fn repair_all_locked(
        &self,
        lock: &LockGuard,
        ids: &[String],
        dry_run: bool,
        forget: bool,
    ) -> Result<Vec<(String, Result<SnapshotRepair>)>> {
        self.update_index().await?;
        // A chunk the index places in a missing pack may be whole in another (two backups
        // stored it at once): only `repair index`, which drops the missing packs, can tell.
        let packs: HashSet<String> = self
            .inner
            .backend
            .list_packs()
            .await?
            .into_iter()
            .map(|(hex, _)| hex)
            .collect();
        let gone = {
            let idx = self.inner.index.read().map_err(|_| poisoned())?;
            idx.packs
                .iter()
                .filter(|p| !packs.contains(&format::pack_hex(p)))
                .count()
        };
        if gone > 0 {
            return Err(Error::Invalid(format!(
                "the index names {gone} packs that are missing; run `cairn repo repair index` \
                 first, which drops them (a chunk they held may be whole in another pack), \
                 then repair the snapshots"
            )));
        }
        // Repairs written before (a run that could not remove the damaged snapshot, or was
        // not asked to), and by this run: each stands, and no second one is written.
        let mut repairs = self
            .snapshots(&crate::repo::SnapshotFilter::new().tag(REPAIRED_TAG))
            .await?;
        let mut done = Vec::with_capacity(ids.len());
        for id in ids {
            let r = match self.snapshot(id).await {
                Ok(info) => {
                    self.repair_locked(lock, &info, &mut repairs, dry_run, forget)
                        .await
                }
                Err(e) => Err(e),
            };
            match r {
                Ok(r) => {
                    if r.forgotten {
                        repairs.retain(|s| s.id != r.snapshot);
                    }
                    done.push((id.clone(), Ok(r)));
                }
                // What is wrong with this snapshot; anything else stops every repair.
                Err(
                    e @ (Error::Invalid(_)
                    | Error::NotFound { .. }
                    | Error::Ambiguous { .. }
                    | Error::Corrupt { .. }
                    | Error::Missing { .. }),
                ) => done.push((id.clone(), Err(e))),
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    async fn repair_locked(
        &self,
        lock: &LockGuard,
        info: &SnapshotInfo,
        repairs: &mut Vec<SnapshotInfo>,
        dry_run: bool,
        forget: bool,
    ) -> Result<SnapshotRepair> {
        let lost = |ids: &[ChunkId]| -> Result<usize> {
            let idx = self.inner.index.read().map_err(|_| poisoned())?;
            Ok(ids.iter().filter(|id| !idx.contains(id)).count())
        };
        let mut report = SnapshotRepair {
            snapshot: info.id.clone(),
            ..SnapshotRepair::default()
        };
        // Damage only: a store that fails, or a permission, is not lost data.
        let mut content = self.content_object(info).await.map_err(|e| match e {
            Error::Corrupt { .. } | Error::Missing { .. } => Error::Invalid(format!(
                "snapshot {}: {e}; its list of files is lost, so no repair can keep part of \
                 it: `cairn repo forget {}` removes it",
                info.short_id(),
                info.id
            )),
            e => e,
        })?;
        let nodes = match &mut content {
            Content::Stream { chunks, lists, .. } => {
                let mut ids = lists.0.clone();
                if lost(&lists.0)? == 0 {
                    self.fill_lists(vec![(&lists.0[..], &mut chunks.0)], info)
                        .await?;
                    ids = chunks.0.clone();
                }
                return match lost(&ids)? {
                    0 => Ok(report),
                    n => Err(Error::Invalid(format!(
                        "stream snapshot {} has lost {n} of its chunks; a stream cannot be \
                         repaired by leaving files out: restore what is left of it, then \
                         `cairn repo forget {}`",
                        info.short_id(),
                        info.id
                    ))),
                };
            }
            Content::Tree { nodes, .. } => nodes,
        };
        // Each file's chunk ids: its own, or those its list chunks hold when all of those are
        // there (read together; one at a time when one of them cannot be read).
        let files: Vec<usize> = (0..nodes.len())
            .filter(|&i| nodes[i].kind == NodeKind::File)
            .collect();
        let mut ids: Vec<Vec<ChunkId>> = vec![Vec::new(); nodes.len()];
        let mut why: Vec<Option<String>> = vec![None; nodes.len()];
        let mut listed = Vec::new();
        for &i in &files {
            let n = &nodes[i];
            if n.lists.is_empty() {
                ids[i] = n.chunks.0.clone();
            } else if lost(&n.lists.0)? > 0 {
                why[i] = Some("the list of its chunks is lost".to_owned());
            } else {
                listed.push(i);
            }
        }
        match self
            .fill_lists(lists_of(nodes, &mut ids, &listed), info)
            .await
        {
            Ok(()) => {}
            Err(Error::Corrupt { .. } | Error::Missing { .. }) => {
                for &i in &listed {
                    match self.fill_lists(lists_of(nodes, &mut ids, &[i]), info).await {
                        Ok(()) => {}
                        Err(e @ (Error::Corrupt { .. } | Error::Missing { .. })) => {
                            why[i] = Some(format!("the list of its chunks is damaged: {e}"));
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            // Not damage (the store failing, a permission): nothing is known lost.
            Err(e) => return Err(e),
        }
        for &i in &files {
            if why[i].is_none() {
                let n = lost(&ids[i])?;
                if n > 0 {
                    why[i] = Some(format!("{n} of its {} chunks are lost", ids[i].len()));
                }
            }
        }
        drop(ids);
        let dropped: HashSet<std::borrow::Cow<str>> = files
            .iter()
            .filter(|&&i| why[i].is_some())
            .map(|&i| crate::tree::link_key(&nodes[i]))
            .collect();
        report.dropped = files
            .iter()
            .filter_map(|&i| Some((nodes[i].path.clone(), why[i].clone()?)))
            .collect();
        if report.dropped.is_empty() || dry_run {
            return Ok(report);
        }
        let earlier = repairs.iter().find(|s| {
            s.id != info.id
                && s.time == info.time
                && s.kind == info.kind
                && s.hostname == info.hostname
                && s.tags
                    .iter()
                    .filter(|t| *t != REPAIRED_TAG)
                    .eq(info.tags.iter().filter(|t| *t != REPAIRED_TAG))
        });
        if let Some(earlier) = earlier {
            report.repaired = Some(earlier.id.clone());
            return self.forget_repaired(info, forget, report).await;
        }
        // A hard link of a file left out keeps its own chunks: it becomes that file.
        let unlinked: Vec<usize> = (0..nodes.len())
            .filter(|&i| {
                why[i].is_none()
                    && crate::tree::linked_key(&nodes[i]).is_some_and(|l| dropped.contains(&l))
            })
            .collect();
        drop(dropped);
        for i in unlinked {
            nodes[i].unlink();
        }
        let mut i = 0;
        nodes.retain(|_| {
            i += 1;
            why[i - 1].is_none()
        });
        let kept: Vec<usize> =
            (0..nodes.iter().filter(|n| n.kind == NodeKind::File).count()).collect();
        let summary = content.fill(ChunkerOut::default(), 0, &kept);
        let mut tags = info.tags.clone();
        if !tags.iter().any(|t| t == REPAIRED_TAG) {
            tags.push(REPAIRED_TAG.to_owned());
        }
        let repaired = SnapshotInfo::made(
            info.kind.clone(),
            info.time,
            Some(info.hostname.clone()),
            tags,
            summary,
        );
        // Not named a copy of the original: a `copy` from where it is whole then brings it
        // whole again, rather than taking this part of it for it.
        let repaired = self
            .commit(lock, content, repaired, &BackupOptions::default())
            .await?;
        report.repaired = Some(repaired.id.clone());
        repairs.push(repaired);
        self.forget_repaired(info, forget, report).await
    }

    /// With `forget`, removes the damaged snapshot `info` that `report` repaired, unless the
    /// protection period keeps it.
    async fn forget_repaired(
        &self,
        info: &SnapshotInfo,
        forget: bool,
        mut report: SnapshotRepair,
    ) -> Result<SnapshotRepair> {
        if forget {
            let removed = self
                .forget_ids(std::slice::from_ref(&info.id), false)
                .await?;
            report.forgotten = !removed.removed.is_empty();
            report.protected_until = removed.protected.into_iter().next().map(|(_, until)| until);
        }
        Ok(report)
    }
}

/// The list chunks of the nodes at `which` (sorted), each paired with where the ids they hold
/// go.
fn lists_of<'a>(
    nodes: &'a [Node],
    ids: &'a mut [Vec<ChunkId>],
    which: &[usize],
) -> Vec<(&'a [ChunkId], &'a mut Vec<ChunkId>)> {
    ids.iter_mut()
        .enumerate()
        .filter(|(i, _)| which.binary_search(i).is_ok())
        .map(|(i, out)| (&nodes[i].lists.0[..], out))
        .collect()
}
