//! What the integration tests need to write that Cairn itself never writes: a tree snapshot
//! whose nodes are given as they are, as a damaged or forged one (anyone holding the
//! repository's key can write one) would be. Not a stable API.

use crate::error::{Error, Result};
use crate::format::{BackupSummary, Content, Node, SnapshotInfo};
use crate::lock::LockGuard;
use crate::repo::{BackupOptions, Repository};

/// Writes a tree snapshot of `like`'s source, time, host and tags whose nodes are `nodes`
/// (each a node's JSON object as FORMAT.md gives it), in node chunks as a backup writes
/// them, and returns it. Nothing checks what the nodes say.
pub async fn commit_tree_nodes(
    repo: &Repository,
    like: &SnapshotInfo,
    nodes: &[serde_json::Value],
) -> Result<SnapshotInfo> {
    let nodes = nodes
        .iter()
        .map(|v| serde_json::from_value::<Node>(v.clone()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Invalid(format!("not a node: {e}")))?;
    let info = SnapshotInfo::made(
        like.kind.clone(),
        like.time,
        Some(like.hostname.clone()),
        like.tags.clone(),
        BackupSummary::default(),
    );
    let lock = LockGuard::acquire(&repo.inner.backend, false, "test snapshot").await?;
    let done = repo
        .commit(
            &lock,
            Content::tree(nodes, None),
            info,
            &BackupOptions::default(),
        )
        .await;
    lock.release().await;
    done
}
