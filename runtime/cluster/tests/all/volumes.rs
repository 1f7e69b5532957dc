//! Volume snapshots: copy, restore, delete, confinement.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use cairn_cluster::{Cluster, Error, WorkloadRef};

use crate::{Fixture, HELLO, bounded, hello};

/// Every entry under `root` (not following symlinks): path -> description.
fn listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let entry = entry.expect("entry");
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            let mode = meta.permissions().mode() & 0o777;
            let what = if meta.file_type().is_symlink() {
                format!(
                    "link -> {}",
                    std::fs::read_link(&path).expect("readlink").display()
                )
            } else if meta.is_dir() {
                pending.push(path.clone());
                format!("dir {mode:o}")
            } else {
                format!("file {mode:o} {:?}", std::fs::read(&path).expect("read"))
            };
            out.insert(rel, what);
        }
    }
    out
}

fn populate(data: &Path) {
    std::fs::create_dir_all(data.join("a/b/c")).expect("mkdir");
    std::fs::write(data.join("top.txt"), "top").expect("write");
    std::fs::write(data.join("a/b/c/deep.txt"), "deep").expect("write");
    std::fs::write(data.join("a/empty"), "").expect("write");
    std::fs::write(data.join("a/big.bin"), vec![7u8; 3 * 1024 * 1024]).expect("write");
    std::fs::set_permissions(data.join("top.txt"), std::fs::Permissions::from_mode(0o640))
        .expect("chmod");
    std::os::unix::fs::symlink("a/b/c/deep.txt", data.join("rel-link")).expect("symlink");
    std::os::unix::fs::symlink("/etc", data.join("etc")).expect("symlink");
    std::os::unix::fs::symlink("../../outside", data.join("a/escape")).expect("symlink");
}

#[tokio::test]
async fn snapshot_mutate_restore_is_equal() {
    let fx = Fixture::new(HELLO, &["work", "data"]);
    let data = fx.path("data");
    populate(&data);
    let before = listing(&data);
    let cluster = fx.open();

    let snap = bounded(cluster.snapshot(&hello(), "data"))
        .await
        .expect("snapshot");
    assert!(snap.id.starts_with("default.hello.data."), "{}", snap.id);
    assert_eq!(snap.bytes, 3 + 4 + 3 * 1024 * 1024);
    assert_eq!(snap.workload, hello());
    assert_eq!(
        bounded(cluster.snapshot_info(&snap.id))
            .await
            .expect("info"),
        snap
    );

    // Mutate: change, add, remove, replace a dir with a file.
    std::fs::write(data.join("top.txt"), "changed").expect("write");
    std::fs::write(data.join("new.txt"), "new").expect("write");
    std::fs::remove_dir_all(data.join("a/b")).expect("rm");
    std::fs::write(data.join("a/b"), "now a file").expect("write");
    assert_ne!(listing(&data), before);

    let restored = bounded(cluster.restore_snapshot(&snap.id))
        .await
        .expect("restore");
    assert_eq!(restored, snap);
    assert_eq!(listing(&data), before);
    // Nothing left beside the volume.
    let siblings: Vec<_> = std::fs::read_dir(fx.dir.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("cairn"))
        .collect();
    assert!(siblings.is_empty(), "{siblings:?}");

    bounded(cluster.delete_snapshot(&snap.id))
        .await
        .expect("delete");
    let err = bounded(cluster.snapshot_info(&snap.id))
        .await
        .expect_err("deleted");
    assert!(
        matches!(
            err,
            Error::NotFound {
                kind: "snapshot",
                ..
            }
        ),
        "{err}"
    );
    let err = bounded(cluster.delete_snapshot(&snap.id))
        .await
        .expect_err("already deleted");
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    let err = bounded(cluster.restore_snapshot(&snap.id))
        .await
        .expect_err("deleted");
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert_eq!(
        std::fs::read_dir(fx.path("state/snapshots"))
            .expect("read_dir")
            .count(),
        0
    );
}

#[tokio::test]
async fn symlinks_are_copied_as_links_never_followed() {
    let fx = Fixture::new(HELLO, &["work", "data"]);
    populate(&fx.path("data"));
    let cluster = fx.open();
    let snap = bounded(cluster.snapshot(&hello(), "data"))
        .await
        .expect("snapshot");
    let copy = fx.path("state/snapshots").join(&snap.id).join("data");
    let etc = std::fs::symlink_metadata(copy.join("etc")).expect("lstat");
    assert!(
        etc.file_type().is_symlink(),
        "the link to /etc is a link in the snapshot"
    );
    assert_eq!(
        std::fs::read_link(copy.join("etc")).expect("readlink"),
        Path::new("/etc")
    );
    assert_eq!(
        std::fs::read_link(copy.join("a/escape")).expect("readlink"),
        Path::new("../../outside")
    );
    // Only the volume's own bytes were copied, not /etc's.
    assert_eq!(snap.bytes, 3 + 4 + 3 * 1024 * 1024);
}

#[tokio::test]
async fn special_files_are_skipped() {
    let fx = Fixture::new(HELLO, &["work", "data"]);
    let socket_path = fx.path("data/sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket_path).expect("bind a socket");
    std::fs::write(fx.path("data/file"), "x").expect("write");
    let cluster = fx.open();
    let snap = bounded(cluster.snapshot(&hello(), "data"))
        .await
        .expect("snapshot despite a socket");
    let copy = fx.path("state/snapshots").join(&snap.id).join("data");
    assert!(copy.join("file").exists());
    assert!(std::fs::symlink_metadata(copy.join("sock")).is_err());
}

#[tokio::test]
async fn snapshot_ids_are_validated() {
    let fx = Fixture::new(HELLO, &["work", "data"]);
    let cluster = fx.open();
    for id in [
        "../../etc",
        "default.hello.data.20260101T000000000Z.abc/../../x",
        "default/hello",
        "..",
        "",
        "default.hello.data.20260101T000000000Z.zz",
        "default.hello..data.20260101T000000000Z.ab",
    ] {
        for err in [
            bounded(cluster.snapshot_info(id))
                .await
                .expect_err("invalid"),
            bounded(cluster.restore_snapshot(id))
                .await
                .expect_err("invalid"),
            bounded(cluster.delete_snapshot(id))
                .await
                .expect_err("invalid"),
        ] {
            assert!(matches!(err, Error::Invalid(_)), "{id:?}: {err}");
        }
    }
    let err = bounded(cluster.snapshot(&hello(), "../data"))
        .await
        .expect_err("no such volume");
    assert!(
        matches!(&err, Error::NotFound { kind: "volume", hint, .. } if hint.contains("data")),
        "{err}"
    );
    let err = bounded(cluster.snapshot(&WorkloadRef::new("default", "x"), "data"))
        .await
        .expect_err("no workload");
    assert!(
        matches!(
            err,
            Error::NotFound {
                kind: "workload",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn ids_are_unique_and_snapshots_of_volumes_run_in_parallel() {
    let yaml = r#"
namespaces:
  default:
    workloads:
      hello:
        volumes: {one: v/one, two: v/two}
"#;
    let fx = Fixture::new(yaml, &["v/one", "v/two"]);
    std::fs::write(fx.path("v/one/f"), "1").expect("write");
    std::fs::write(fx.path("v/two/f"), "22").expect("write");
    let cluster = Arc::new(fx.open());
    let tasks: Vec<_> = ["one", "two", "one", "two"]
        .into_iter()
        .map(|volume| {
            let cluster = Arc::clone(&cluster);
            tokio::spawn(async move { cluster.snapshot(&hello(), volume).await.expect("snapshot") })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for task in tasks {
        let snap = bounded(task).await.expect("task");
        assert_eq!(snap.bytes, if snap.volume == "one" { 1 } else { 2 });
        ids.insert(snap.id);
    }
    assert_eq!(ids.len(), 4);
}

#[tokio::test]
async fn restore_swaps_in_a_readonly_tree() {
    let fx = Fixture::new(HELLO, &["work", "data/ro"]);
    std::fs::write(fx.path("data/ro/f"), "x").expect("write");
    std::fs::set_permissions(fx.path("data/ro"), std::fs::Permissions::from_mode(0o555))
        .expect("chmod");
    let cluster = fx.open();
    let snap = bounded(cluster.snapshot(&hello(), "data"))
        .await
        .expect("snapshot");
    bounded(cluster.restore_snapshot(&snap.id))
        .await
        .expect("restore");
    assert_eq!(crate::read(&fx.path("data/ro/f")), "x");
    // Let the tempdir clean up.
    std::fs::set_permissions(fx.path("data/ro"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let copy = fx.path("state/snapshots").join(&snap.id).join("data/ro");
    std::fs::set_permissions(copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[tokio::test]
async fn a_snapshot_whose_run_stopped_is_not_left_behind() {
    let fx = Fixture::new(HELLO, &["work", "data"]);
    let data = fx.path("data");
    for i in 0..3_000 {
        std::fs::write(data.join(format!("f{i}")), [7u8; 64]).expect("write");
    }
    let cluster = fx.open();
    // Dropped almost at once, as an interrupted or timed-out run drops it: the copy on the
    // blocking pool stops instead of finishing into a snapshot nothing records.
    let dropped = tokio::time::timeout(
        std::time::Duration::from_millis(1),
        cluster.snapshot(&hello(), "data"),
    )
    .await;
    assert!(dropped.is_err(), "the snapshot finished within 1 ms");
    let snapshots = fx.path("state/snapshots");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left: Vec<_> = std::fs::read_dir(&snapshots)
            .expect("snapshots")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            left.iter().all(|name| name.starts_with(".tmp-")),
            "a snapshot was left behind: {left:?}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "still copying: {left:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// What a process that is gone left of a copy or a delete is removed when the state is
/// opened; another live process's copy in progress (two runs on one home) is not.
#[tokio::test]
async fn only_leftovers_of_processes_that_are_gone_are_cleaned() {
    let fx = Fixture::new(HELLO, &["work", "data"]);
    drop(fx.open());
    let snapshots = fx.path("state/snapshots");
    let mut gone = std::process::Command::new("true")
        .spawn()
        .expect("true runs");
    let gone_pid = gone.id();
    gone.wait().expect("true exits");
    let live = format!(".tmp-{}.0-default.hello.data.live", std::process::id());
    let dead = format!(".tmp-{gone_pid}.0-default.hello.data.dead");
    let deleting = format!(".deleting-{gone_pid}.0-default.hello.data.old");
    let unowned = ".tmp-default.hello.data.older".to_owned();
    for name in [&live, &dead, &deleting, &unowned] {
        std::fs::create_dir_all(snapshots.join(name).join("data")).expect("mkdir");
    }
    drop(fx.open());
    let left: Vec<String> = std::fs::read_dir(&snapshots)
        .expect("snapshots")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, [live]);
}
