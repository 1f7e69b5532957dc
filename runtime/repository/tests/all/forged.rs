//! Forged and damaged trees (anyone holding the repository's key can write a snapshot), and
//! targets holding links: a restore makes nothing, removes nothing and changes no owner or
//! mode outside its target, and `check` names a tree a restore would refuse.

use crate::support::*;
use cairn_repository::test_internals::commit_tree_nodes;
use cairn_repository::{Error, RestoreOptions, SnapshotInfo};
use serde_json::json;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// A directory outside every target, holding `precious` and `victim/keep`, with modes 0o750
/// (`victim`) a restore has no reason to change.
fn outside(d: &Path) -> std::path::PathBuf {
    let out = d.join("outside");
    std::fs::create_dir_all(out.join("victim")).unwrap();
    std::fs::write(out.join("precious"), "mine").unwrap();
    std::fs::write(out.join("victim/keep"), "mine").unwrap();
    std::fs::set_permissions(out.join("victim"), std::fs::Permissions::from_mode(0o750)).unwrap();
    out
}

/// Asserts [`outside`] is as it was made.
fn assert_untouched(out: &Path) {
    let mut names: Vec<_> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["precious", "victim"],
        "the outside directory changed"
    );
    assert_eq!(std::fs::read(out.join("precious")).unwrap(), b"mine");
    assert_eq!(std::fs::read(out.join("victim/keep")).unwrap(), b"mine");
    let mode = std::fs::symlink_metadata(out.join("victim"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o750, "the outside directory's mode changed");
}

/// A node of a forged tree: `kind` at `path`, with `more` fields.
fn node(path: &str, kind: &str, more: serde_json::Value) -> serde_json::Value {
    let mut n = json!({"path": path, "type": kind, "mode": 0o755, "mtime_ns": 0});
    n.as_object_mut()
        .unwrap()
        .extend(more.as_object().unwrap().clone());
    n
}

/// A tree snapshot to forge others like (the same source, host and time).
async fn template(d: &Path, repo: &cairn_repository::Repository) -> SnapshotInfo {
    let src = d.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "f").unwrap();
    repo.backup_tree(&src, Default::default()).await.unwrap()
}

/// A snapshot that lists a symlink `s` to a directory outside the target, then nodes below
/// `s` (a symlink, a FIFO): a restore made the link, then removed and made what is below it
/// outside, and chowned and chmodded it there. It is refused before anything is made, and
/// `check` (with or without reading data) and `ls` name it; a second such snapshot, whose
/// node chunks `check` skips (read for the first), is named too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_below_a_symlink_of_the_same_snapshot_is_refused_and_named_by_check() {
    let (d, _dir, repo) = local_repo().await;
    let like = template(d.path(), &repo).await;
    let out = outside(d.path());
    let out_text = out.display().to_string();
    let nodes = [
        node("d", "dir", json!({})),
        node("s", "symlink", json!({"mode": 0o777, "target": out_text})),
        node("s/precious", "symlink", json!({"target": "/nowhere"})),
        node("s/victim", "fifo", json!({"mode": 0o666})),
    ];
    let forged = commit_tree_nodes(&repo, &like, &nodes).await.unwrap();
    let again = commit_tree_nodes(&repo, &like, &nodes).await.unwrap();
    let target = d.path().join("target");
    for info in [&forged, &again] {
        let opts = RestoreOptions::new().delete(true);
        for e in [
            repo.restore_tree_of(info, &target).await.unwrap_err(),
            repo.restore_paths_salvaging(info, &target, &[], &opts)
                .await
                .unwrap_err(),
            repo.list_tree(info, &[]).await.unwrap_err(),
        ] {
            let msg = e.to_string();
            assert!(matches!(e, Error::Corrupt { .. }), "{e}");
            assert!(
                msg.contains("content/")
                    && msg.contains("\"s/precious\"")
                    && msg.contains(&info.id),
                "{msg}"
            );
        }
        assert_untouched(&out);
        assert!(!target.exists(), "the restore made its target");
    }
    for read_data in [false, true] {
        let report = repo.check(read_data).await.unwrap();
        for info in [&forged, &again] {
            let p = report
                .errors
                .iter()
                .find(|p| p.snapshots.contains(&info.id))
                .unwrap_or_else(|| panic!("{} not named: {report:?}", info.id));
            assert!(
                p.object.starts_with("content/") && p.reason.contains("\"s/precious\""),
                "{p:?}"
            );
        }
        assert!(
            !report.errors.iter().any(|p| p.snapshots.contains(&like.id)),
            "{report:?}"
        );
    }
    // Every other way a non-directory ends up above a node, or a node twice.
    for (nodes, named) in [
        (vec![node("a/b", "dir", json!({}))], "\"a/b\""),
        (
            vec![node("a/b", "dir", json!({})), node("a", "dir", json!({}))],
            "\"a/b\"",
        ),
        (
            vec![node("a", "fifo", json!({})), node("a/b", "fifo", json!({}))],
            "\"a/b\"",
        ),
        (
            vec![
                node("a", "dir", json!({})),
                node("a", "symlink", json!({"target": "/"})),
            ],
            "\"a\"",
        ),
        (
            vec![
                node("a", "symlink", json!({"target": "/"})),
                node("a/./b", "fifo", json!({})),
            ],
            "\"a/b\"",
        ),
    ] {
        let bad = commit_tree_nodes(&repo, &like, &nodes).await.unwrap();
        let e = repo.restore_tree_of(&bad, &target).await.unwrap_err();
        assert!(
            matches!(e, Error::Corrupt { .. }) && e.to_string().contains(named),
            "{nodes:?}: {e}"
        );
        assert!(!target.exists(), "the restore made its target");
    }
}

/// A target holding a symlink `a` to a directory outside it, and a snapshot with a directory
/// `a/victim` but no `a`, restored with `--delete --include a/victim`: the restore emptied
/// the outside `victim` and set its mode and time. It is refused, and nothing outside
/// changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_below_a_symlink_of_the_target_is_not_emptied_through_it() {
    let (d, _dir, repo) = local_repo().await;
    let like = template(d.path(), &repo).await;
    let out = outside(d.path());
    let target = d.path().join("target");
    std::fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&out, target.join("a")).unwrap();
    let nodes = [node("a/victim", "dir", json!({"mode": 0o777}))];
    let forged = commit_tree_nodes(&repo, &like, &nodes).await.unwrap();
    let include = ["a/victim".to_owned()];
    let opts = RestoreOptions::new().delete(true);
    for e in [
        repo.restore_paths_with(&forged, &target, &include, &opts)
            .await
            .unwrap_err(),
        repo.restore_paths_salvaging(&forged, &target, &include, &opts)
            .await
            .unwrap_err(),
    ] {
        assert!(
            matches!(e, Error::Corrupt { .. }) && e.to_string().contains("\"a/victim\""),
            "{e}"
        );
    }
    assert_untouched(&out);
    assert_eq!(std::fs::read_link(target.join("a")).unwrap(), out);
}

/// A well-formed snapshot whose directory `a` a salvaging restore never gets to make (the
/// list of its one file's chunks is damaged), into a target holding a symlink `a` to a
/// directory outside: with `--delete`, what the snapshot does not hold was deleted through
/// the link, and the directory there given `a`'s mode. Nothing outside changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_salvaging_restore_deletes_nothing_through_a_symlink_it_did_not_replace() {
    let (d, dir, repo) = local_repo().await;
    let src = d.path().join("src");
    std::fs::create_dir_all(src.join("a")).unwrap();
    // Stored first, in the first frame: untouched by the damage below.
    std::fs::write(src.join("keep.txt"), b"intact\n").unwrap();
    // 2,560 page chunks: its chunk list is kept in two list chunks, the second stored last,
    // in the last frame of the last pack.
    std::fs::write(src.join("a/big.db"), noise(20 << 20, 9)).unwrap();
    std::fs::set_permissions(src.join("a"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let tree = repo.backup_tree(&src, Default::default()).await.unwrap();
    let mut packs = files(&dir, "data");
    packs.retain(|p| std::fs::metadata(p).unwrap().len() > 1 << 20);
    for p in &packs {
        let mut bytes = std::fs::read(p).unwrap();
        let n = bytes.len();
        let header = u32::from_le_bytes(bytes[n - 4..].try_into().unwrap()) as usize;
        bytes[n - 4 - header - 1] ^= 0x40;
        std::fs::write(p, bytes).unwrap();
    }
    let out = outside(d.path());
    let target = d.path().join("target");
    std::fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&out, target.join("a")).unwrap();
    let opts = RestoreOptions::new().delete(true);
    let r = repo
        .restore_paths_salvaging(&tree, &target, &[], &opts)
        .await
        .unwrap();
    assert_eq!(
        r.lost.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        ["a/big.db"],
        "{r:?}"
    );
    assert_eq!(std::fs::read(target.join("keep.txt")).unwrap(), b"intact\n");
    assert_untouched(&out);
}
