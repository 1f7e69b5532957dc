//! The same checks on every backend.

use crate::support::*;
use cairn_repository::{
    BackupOptions, Location, Repository, RestoreOptions, Retention, SnapshotFilter, SnapshotKind,
};
use tokio::io::AsyncWriteExt;

async fn suite(loc: Location) {
    let p = pass("conformance");
    let repo = Repository::init(loc.clone(), &p, Default::default())
        .await
        .unwrap();
    // Stream round trip, bit-exact, written in odd-sized pieces.
    let mut data = text(5_000_000, 1);
    data.extend(noise(3_000_000, 2));
    let mut w = repo
        .stream_writer("db.sql", BackupOptions::new().tag("nightly"))
        .await
        .unwrap();
    for piece in data.chunks(777_777) {
        w.write_all(piece).await.unwrap();
    }
    let s1 = w.finish().await.unwrap();
    assert_eq!(s1.summary.bytes, data.len() as u64);
    assert!(matches!(&s1.kind, SnapshotKind::Stream { name } if name == "db.sql"));
    // Reopen from scratch: everything is in the store.
    let repo = Repository::open(loc.clone(), &p).await.unwrap();
    let mut out = Vec::new();
    let n = repo.restore_stream(&s1.id, &mut out).await.unwrap();
    assert_eq!(n, data.len() as u64);
    assert!(out == data, "stream restore differs");
    // Same stream again: deduplicated.
    let s2 = repo
        .backup_stream("db.sql", &data[..], BackupOptions::new())
        .await
        .unwrap();
    assert_eq!(s2.summary.new_chunks, 0, "{:?}", s2.summary);
    // Tree round trip.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src, 3);
    // 2,560 page chunks: its chunk list is kept in two list chunks.
    std::fs::write(src.join("big.db"), noise(20 << 20, 4)).unwrap();
    let t1 = repo
        .backup_tree(&src, BackupOptions::new().tag("files"))
        .await
        .unwrap();
    assert_eq!(t1.summary.files, 5);
    let dst = dir.path().join("dst");
    let r = repo.restore_tree(&t1.id[..8], &dst).await.unwrap();
    assert_eq!(r.files, 5);
    assert_same_tree(&src, &dst);
    // Filters.
    assert_eq!(
        repo.snapshots(&SnapshotFilter::new().tag("nightly"))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        repo.snapshots(&SnapshotFilter::new().source("db.sql"))
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        repo.snapshots(&SnapshotFilter::new()).await.unwrap().len(),
        3
    );
    // Check, with data.
    let report = repo.check(true).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(report.packs_read > 0);
    // Forget keeps the newest stream; prune leaves all restorable.
    let f = repo
        .forget(
            &Retention::new().last(1),
            &SnapshotFilter::new().source("db.sql"),
            &jiff::tz::TimeZone::UTC,
            false,
        )
        .await
        .unwrap();
    assert_eq!(f.removed, vec![s1.id.clone()]);
    repo.prune(false).await.unwrap();
    let mut out = Vec::new();
    repo.restore_stream(&s2.id, &mut out).await.unwrap();
    assert!(out == data);
    let dst2 = dir.path().join("dst2");
    repo.restore_tree(&t1.id, &dst2).await.unwrap();
    assert_same_tree(&src, &dst2);
    assert!(repo.check(true).await.unwrap().is_ok());
    // Copies out of this backend restore as the originals.
    let offsite = Repository::init(memory_url().as_str(), &pass("offsite"), Default::default())
        .await
        .unwrap();
    let c = offsite
        .copy_snapshot(&repo, &t1, &BackupOptions::new())
        .await
        .unwrap();
    let dst3 = dir.path().join("dst3");
    offsite.restore_tree(&c.id, &dst3).await.unwrap();
    assert_same_tree(&src, &dst3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory() {
    timed(suite(Location::new(memory_url()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_filesystem() {
    let d = tempfile::tempdir().unwrap();
    timed(suite(Location::new(
        d.path().join("repo").display().to_string(),
    )))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_compatible() {
    let Some(server) = crate::s3::S3Server::start() else {
        return;
    };
    timed(suite(server.location())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure() {
    let Some(server) = crate::azure::AzureServer::start() else {
        return;
    };
    timed(suite(server.location())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_count_their_progress() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    make_tree(&src, 7);
    let repo = init_repo(memory_url().as_str()).await;
    let tree = repo.backup_tree(&src, Default::default()).await.unwrap();
    let stream = repo
        .backup_stream("s", &noise(3_000_000, 8)[..], Default::default())
        .await
        .unwrap();
    let (counted, total) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let opts = RestoreOptions::new()
        .progress(counted.clone())
        .total(total.clone());
    let r = repo
        .restore_paths_with(&tree, d.path().join("dst"), &[], &opts)
        .await
        .unwrap();
    assert!(r.bytes > 5_000_000);
    assert_eq!(counted.load(Ordering::Relaxed), r.bytes);
    assert_eq!(total.load(Ordering::Relaxed), r.bytes);
    // Selected paths: the total is what the selection writes, known only after selecting.
    counted.store(0, Ordering::Relaxed);
    let listed = repo.list_tree(&tree, &[]).await.unwrap();
    let file = listed
        .iter()
        .find(|e| e.kind == "file" && e.size > 0)
        .unwrap();
    let r = repo
        .restore_paths_with(
            &tree,
            d.path().join("one"),
            std::slice::from_ref(&file.path),
            &opts,
        )
        .await
        .unwrap();
    assert_eq!((r.files, r.bytes), (1, file.size));
    assert_eq!(counted.load(Ordering::Relaxed), file.size);
    assert_eq!(total.load(Ordering::Relaxed), file.size);
    counted.store(0, Ordering::Relaxed);
    let mut out = Vec::new();
    let n = repo
        .restore_stream_with(&stream, &mut out, &opts)
        .await
        .unwrap();
    assert_eq!((n, counted.load(Ordering::Relaxed)), (3_000_000, 3_000_000));
    assert_eq!(total.load(Ordering::Relaxed), 3_000_000);
    assert!(out == noise(3_000_000, 8));
}

/// The engine pipes a command's stdout into the writer from any task, and hands the reader to
/// a command's stdin: both must be `Send + Unpin`.
#[test]
fn streaming_types_are_send_and_unpin() {
    fn check<T: Send + Unpin + 'static>() {}
    check::<cairn_repository::SnapshotWriter>();
    check::<cairn_repository::SnapshotReader>();
    check::<Repository>();
}

/// A tree's files of whole pages are cut at page boundaries, the rest by content: a page
/// rewritten in place and a dump regenerated with a row inserted near its start both store
/// little more than what changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_stores_rewritten_pages_and_inserted_rows_alone() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut pages = noise(8192 * 400, 1);
    // Whole 4 KiB pages, but text: cut by content all the same.
    let dump = text(3 << 20, 2);
    std::fs::write(src.join("16384"), &pages).unwrap();
    std::fs::write(src.join("dump.sql"), &dump).unwrap();
    let repo = init_repo(memory_url().as_str()).await;
    let first = repo.backup_tree(&src, Default::default()).await.unwrap();
    pages[8192 * 7..8192 * 8].copy_from_slice(&noise(8192, 3));
    let mut regenerated = dump[..5000].to_vec();
    regenerated.extend_from_slice(b"INSERT INTO t VALUES (42, 'new row');\n");
    regenerated.extend_from_slice(&dump[5000..]);
    std::fs::write(src.join("16384"), &pages).unwrap();
    std::fs::write(src.join("dump.sql"), &regenerated).unwrap();
    let second = repo.backup_tree(&src, Default::default()).await.unwrap();
    // One page, the dump's one or two chunks around the row (64 KiB at most each), the
    // chunk lists.
    assert!(
        second.summary.new_bytes < 200_000,
        "{:?} after {:?}",
        second.summary,
        first.summary
    );
    let dst = d.path().join("dst");
    repo.restore_tree(&second.id, &dst).await.unwrap();
    assert_same_tree(&src, &dst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_and_restoring_only_some_paths_of_a_tree() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    make_tree(&src, 5);
    let repo = init_repo(memory_url().as_str()).await;
    let info = repo.backup_tree(&src, Default::default()).await.unwrap();

    let all = repo.list_tree(&info, &[]).await.unwrap();
    let pages = all.iter().find(|e| e.path == "a/b/pages.bin").unwrap();
    assert_eq!((pages.kind, pages.size), ("file", 8192 * 300));
    #[cfg(unix)]
    assert_eq!(
        all.iter()
            .find(|e| e.path == "link")
            .unwrap()
            .target
            .as_deref(),
        Some("a/dump.sql")
    );
    let some: Vec<String> = repo
        .list_tree(&info, &["./a/b/".into()])
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(some, ["a", "a/b", "a/b/pages.bin"]);

    let dst = d.path().join("dst");
    let r = repo
        .restore_paths_of(&info, &dst, &["a/b".into(), "small.conf".into()])
        .await
        .unwrap();
    assert_eq!((r.files, r.dirs), (2, 2), "{r:?}");
    assert!(std::fs::read(dst.join("a/b/pages.bin")).unwrap() == noise(8192 * 300, 6));
    assert_eq!(
        std::fs::read(dst.join("small.conf")).unwrap(),
        b"key = value\n"
    );
    for absent in ["a/dump.sql", "empty", "empty-dir", "link"] {
        assert!(
            std::fs::symlink_metadata(dst.join(absent)).is_err(),
            "{absent} restored"
        );
    }
    // "a/b" does not select "a/bc"; a path the snapshot lacks is named.
    for missing in ["a/bc", "nope"] {
        let e = repo
            .restore_paths_of(&info, d.path().join("x"), &[missing.into()])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("`{missing}` is not in snapshot")) && e.contains("cairn repo ls"),
            "{e}"
        );
    }
    let stream = repo
        .backup_stream("s", &b"x"[..], Default::default())
        .await
        .unwrap();
    let e = repo.list_tree(&stream, &[]).await.unwrap_err().to_string();
    assert!(e.contains("is a stream"), "{e}");

    // Diff against a changed copy: one page of the big file rewritten (its size unchanged),
    // a file removed, one added, a file replaced by a directory, one file's mode changed, and
    // a file touched without a change (not reported).
    let mut pages = std::fs::read(src.join("a/b/pages.bin")).unwrap();
    pages[8192 * 150] ^= 1;
    std::fs::write(src.join("a/b/pages.bin"), pages).unwrap();
    std::fs::remove_file(src.join("empty")).unwrap();
    std::fs::write(src.join("new.txt"), b"new").unwrap();
    std::fs::remove_file(src.join("small.conf")).unwrap();
    std::fs::create_dir(src.join("small.conf")).unwrap();
    #[cfg(unix)]
    std::fs::set_permissions(
        src.join("a/dump.sql"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let later = repo.backup_tree(&src, Default::default()).await.unwrap();
    let changes: Vec<(String, &str)> = repo
        .diff_trees(&info, &later)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.path, c.change))
        .collect();
    let mut expected = vec![
        ("a/b/pages.bin".to_string(), "modified"),
        ("empty".into(), "removed"),
        ("new.txt".into(), "added"),
        ("small.conf".into(), "type"),
    ];
    #[cfg(unix)]
    expected.insert(1, ("a/dump.sql".into(), "metadata"));
    assert_eq!(changes, expected);
    assert!(repo.diff_trees(&later, &later).await.unwrap().is_empty());
    let e = repo
        .diff_trees(&info, &stream)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("is a stream"), "{e}");
}

/// Fails every read with `0`'s kind.
struct FailingReader(std::io::ErrorKind);

impl tokio::io::AsyncRead for FailingReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Err(self.0.into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_reading_fails_saves_no_snapshot_and_keeps_its_data() {
    let repo = init_repo(memory_url().as_str()).await;
    // A broken pipe too: it is the reader's, not the backup pipeline's.
    for kind in [
        std::io::ErrorKind::BrokenPipe,
        std::io::ErrorKind::ConnectionReset,
    ] {
        // The data, then the error.
        let data = text(3_000_000, 1);
        let reader = tokio::io::AsyncReadExt::chain(&data[..], FailingReader(kind));
        let err = repo
            .backup_stream("db.sql", reader, BackupOptions::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("read stream db.sql"), "{err}");
    }
    let all = repo.snapshots(&SnapshotFilter::new()).await.unwrap();
    assert!(all.is_empty(), "{all:?}");
    // What was read is stored: the next backup of the same data reuses all of it.
    let s = repo
        .backup_stream("db.sql", &text(3_000_000, 1)[..], BackupOptions::new())
        .await
        .unwrap();
    assert_eq!(s.summary.new_chunks, 0, "{:?}", s.summary);
}

/// An in-memory repository, and a [`make_tree`] in `src` of a temporary directory.
async fn repo_and_tree(seed: u64) -> (Repository, tempfile::TempDir, std::path::PathBuf) {
    let repo = init_repo(memory_url().as_str()).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src, seed);
    (repo, dir, src)
}

/// Modification times before 1970 come back, and a symlink's own time too.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_before_1970_and_of_symlinks_are_restored() {
    use std::os::unix::fs::MetadataExt;
    let (repo, dir, src) = repo_and_tree(6).await;
    let old = std::time::UNIX_EPOCH - std::time::Duration::from_secs(9 * 365 * 86_400 + 7);
    std::fs::File::options()
        .write(true)
        .open(src.join("a/dump.sql"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    // The link's own time, not its target's (touch -h).
    let out = std::process::Command::new("touch")
        .args(["-h", "-d", "2001-02-03 04:05:06"])
        .arg(src.join("link"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let snap = repo.backup_tree(&src, BackupOptions::new()).await.unwrap();
    let dst = dir.path().join("dst");
    repo.restore_tree(&snap.id, &dst).await.unwrap();
    let time = |p: std::path::PathBuf| {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.mtime(), m.mtime_nsec())
    };
    assert_eq!(time(dst.join("a/dump.sql")), time(src.join("a/dump.sql")));
    assert!(time(dst.join("a/dump.sql")).0 < 0);
    assert_eq!(time(dst.join("link")), time(src.join("link")));
}

/// Owners come back when the restore may give files away (as root, as in CI), set before
/// the mode so set-id bits stay; otherwise what is restored belongs to the user restoring.
/// A target the restore creates gets the backed-up directory's owner, mode and time.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_restores_its_owners_set_id_bits_and_root() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, chown, lchown};
    let (repo, dir, src) = repo_and_tree(5).await;
    let root = chown(src.join("a/dump.sql"), Some(1234), Some(5678)).is_ok();
    // The directory backed up: a data directory's mode, which the target it restores into
    // must get.
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o700)).unwrap();
    if root {
        chown(&src, Some(999), Some(998)).unwrap();
        chown(src.join("a/b"), Some(2345), Some(6789)).unwrap();
        lchown(src.join("link"), Some(3456), Some(7890)).unwrap();
        std::fs::set_permissions(
            src.join("a/dump.sql"),
            std::fs::Permissions::from_mode(0o4750),
        )
        .unwrap();
    }
    let snap = repo.backup_tree(&src, BackupOptions::new()).await.unwrap();
    let listed = repo.list_tree(&snap, &[]).await.unwrap();
    let dump = listed.iter().find(|e| e.path == "a/dump.sql").unwrap();
    let me = std::fs::metadata(&src).unwrap();
    let expected = if root {
        (1234, 5678)
    } else {
        (me.uid(), me.gid())
    };
    assert_eq!((dump.uid, dump.gid), (Some(expected.0), Some(expected.1)));
    let dst = dir.path().join("dst");
    repo.restore_tree(&snap.id, &dst).await.unwrap();
    // Owners included.
    assert_same_tree(&src, &dst);
    let (s, t) = (
        std::fs::metadata(&src).unwrap(),
        std::fs::metadata(&dst).unwrap(),
    );
    assert_eq!(
        t.permissions().mode() & 0o7777,
        0o700,
        "the created target is the root"
    );
    assert_eq!((t.uid(), t.gid(), t.mtime()), (s.uid(), s.gid(), s.mtime()));
    // A target that exists keeps its own.
    let existing = dir.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o755)).unwrap();
    repo.restore_tree(&snap.id, &existing).await.unwrap();
    let e = std::fs::metadata(&existing).unwrap();
    assert_eq!(e.permissions().mode() & 0o7777, 0o755);
    let m = std::fs::symlink_metadata(dst.join("link")).unwrap();
    let d = std::fs::metadata(dst.join("a/dump.sql")).unwrap();
    if root {
        assert_eq!((m.uid(), m.gid()), (3456, 7890), "the link itself");
        assert_eq!(d.permissions().mode() & 0o7777, 0o4750, "set-uid kept");
        // A new owner alone is a change of metadata.
        chown(src.join("small.conf"), Some(42), None).unwrap();
        let next = repo.backup_tree(&src, BackupOptions::new()).await.unwrap();
        let changes = repo.diff_trees(&snap, &next).await.unwrap();
        let seen: Vec<(&str, &str)> = changes
            .iter()
            .map(|c| (c.path.as_str(), c.change))
            .collect();
        assert_eq!(seen, [("small.conf", "metadata")]);
    } else {
        assert_eq!((d.uid(), m.uid()), (me.uid(), me.uid()));
    }
}

/// Restoring into a directory that holds links where the snapshot has a directory and a
/// file: the links are replaced, and nothing is written where they point.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_replaces_links_in_its_target_instead_of_writing_through_them() {
    let (repo, dir, src) = repo_and_tree(6).await;
    let snap = repo.backup_tree(&src, BackupOptions::new()).await.unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("precious"), b"keep me").unwrap();
    let dst = dir.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    std::os::unix::fs::symlink(&outside, dst.join("a")).unwrap();
    std::os::unix::fs::symlink(outside.join("precious"), dst.join("small.conf")).unwrap();
    // A hard link: truncating it in place would empty the file elsewhere too.
    std::fs::hard_link(outside.join("precious"), dst.join("empty")).unwrap();
    repo.restore_tree(&snap.id, &dst).await.unwrap();
    assert_same_tree(&src, &dst);
    let left: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["precious"]);
    assert_eq!(std::fs::read(outside.join("precious")).unwrap(), b"keep me");
}

/// With `delete`, a restore into a directory that holds more than the snapshot removes the
/// rest (files, directories with what they hold, links as links, below the included paths
/// only when some are named); without it, the rest stays.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_with_delete_makes_the_target_the_snapshot() {
    let (repo, dir, src) = repo_and_tree(8).await;
    let snap = repo.backup_tree(&src, BackupOptions::new()).await.unwrap();
    let info = repo.snapshot(&snap.id).await.unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("precious"), b"keep me").unwrap();
    let dst = dir.path().join("dst");
    let extras = |dst: &std::path::Path| {
        std::fs::create_dir_all(dst.join("a/new-dir/deeper")).unwrap();
        std::fs::create_dir_all(dst.join("a/b")).unwrap();
        std::fs::write(dst.join("a/new-dir/deeper/f"), b"x").unwrap();
        std::fs::write(dst.join("extra.wal"), b"y").unwrap();
        std::fs::write(dst.join("a/b/extra"), b"z").unwrap();
        std::fs::write(dst.join(".cairn-restore-1-0"), b"half").unwrap();
        std::os::unix::fs::symlink(&outside, dst.join("a/to-outside")).unwrap();
    };
    std::fs::create_dir(&dst).unwrap();
    extras(&dst);
    // What a restore killed part way left beside a file it was replacing, by a process that
    // is gone (above the largest pid): removed without --delete too; pid 1's stays.
    std::fs::write(dst.join("a/.cairn-restore-4194305-0"), b"half").unwrap();
    let kept = repo.restore_tree(&snap.id, &dst).await.unwrap();
    assert_eq!(kept.deleted, 0);
    assert!(
        dst.join("extra.wal").exists(),
        "without delete the rest stays"
    );
    assert!(!dst.join("a/.cairn-restore-4194305-0").exists());
    assert!(dst.join(".cairn-restore-1-0").exists());

    // Only below the included path: `a`'s extras go, the root's stay.
    let opts = RestoreOptions::new().delete(true);
    let r = repo
        .restore_paths_with(&info, &dst, &["a".into()], &opts)
        .await
        .unwrap();
    assert_eq!(r.deleted, 3, "a/new-dir, a/b/extra, a/to-outside");
    assert!(dst.join("extra.wal").exists());
    assert!(!dst.join("a/b/extra").exists());

    // The whole tree: the target is the snapshot, and nothing a link pointed at is touched;
    // a directory where the snapshot has a file goes with what it holds, which a restore
    // without --delete refuses to touch.
    extras(&dst);
    std::fs::remove_file(dst.join("a/dump.sql")).unwrap();
    std::fs::create_dir_all(dst.join("a/dump.sql/since")).unwrap();
    std::fs::write(dst.join("a/dump.sql/since/f"), b"made since").unwrap();
    let e = repo.restore_tree(&snap.id, &dst).await.unwrap_err();
    assert!(
        e.to_string().contains("with --delete, which removes them"),
        "{e}"
    );
    let r = repo
        .restore_paths_with(&info, &dst, &[], &opts)
        .await
        .unwrap();
    assert_eq!(
        r.deleted, 6,
        "the three below a, extra.wal, the half-written file and a/dump.sql/"
    );
    assert_same_tree(&src, &dst);
    assert_eq!(std::fs::read(outside.join("precious")).unwrap(), b"keep me");
}

/// A file with two names comes back as one file with two names; restoring only the second
/// name writes it whole.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_links_are_restored_as_links() {
    use std::os::unix::fs::MetadataExt;
    let (repo, dir, src) = repo_and_tree(7).await;
    std::fs::create_dir(src.join("z")).unwrap();
    std::fs::hard_link(src.join("a/dump.sql"), src.join("z/again.sql")).unwrap();
    std::fs::hard_link(src.join("a/dump.sql"), src.join("z/third.sql")).unwrap();
    let snap = repo.backup_tree(&src, BackupOptions::new()).await.unwrap();
    // A listing names the file each link is of.
    let listed = repo.list_tree(&snap, &[]).await.unwrap();
    let of = |p: &str| {
        let e = listed.iter().find(|e| e.path == p).unwrap();
        e.hard_link_of.as_deref()
    };
    assert_eq!(
        [of("a/dump.sql"), of("z/again.sql"), of("z/third.sql")],
        [None, Some("a/dump.sql"), Some("a/dump.sql")]
    );
    let dst = dir.path().join("dst");
    let (counted, total) = (
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
    );
    let opts = RestoreOptions::new()
        .progress(counted.clone())
        .total(total.clone());
    let r = repo
        .restore_paths_with(&snap, &dst, &[], &opts)
        .await
        .unwrap();
    assert_eq!(r.files, 6);
    // The links are neither read nor written: the bar's total leaves them out and is reached.
    let linked = std::fs::metadata(src.join("a/dump.sql")).unwrap().len();
    let total = total.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(total, r.bytes - 2 * linked);
    assert_eq!(counted.load(std::sync::atomic::Ordering::Relaxed), total);
    assert_same_tree(&src, &dst);
    let (a, b) = (
        std::fs::metadata(dst.join("a/dump.sql")).unwrap(),
        std::fs::metadata(dst.join("z/again.sql")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 3), "one file, three names");
    // Without the first name, the names restored are still one file.
    let part = dir.path().join("part");
    repo.restore_paths_of(&snap, &part, &["z".to_string()])
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(part.join("z/again.sql")).unwrap(),
        std::fs::read(src.join("a/dump.sql")).unwrap()
    );
    let (b, c) = (
        std::fs::metadata(part.join("z/again.sql")).unwrap(),
        std::fs::metadata(part.join("z/third.sql")).unwrap(),
    );
    assert_eq!((b.ino(), b.nlink()), (c.ino(), 2), "one file, two names");
}

/// Names that are not UTF-8 are linked too: the link records the first name's bytes; and a
/// symlink's target that is not UTF-8 is restored byte for byte.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_links_of_names_that_are_not_utf8_are_restored_as_links() {
    use std::os::unix::{ffi::OsStrExt, fs::MetadataExt};
    let (repo, dir, src) = repo_and_tree(8).await;
    let name = |b: &[u8]| std::ffi::OsStr::from_bytes(b).to_owned();
    std::fs::create_dir(src.join("z")).unwrap();
    let names = [
        std::path::PathBuf::from(name(b"caf\xe9.sql")),
        std::path::Path::new("z").join(name(b"\xff\xfe")),
        std::path::PathBuf::from("z/plain.sql"),
    ];
    std::fs::write(src.join(&names[0]), b"one file, three names").unwrap();
    for n in &names[1..] {
        std::fs::hard_link(src.join(&names[0]), src.join(n)).unwrap();
    }
    // A symlink to such a name points at its bytes, not at U+FFFD.
    std::os::unix::fs::symlink(&names[0], src.join("z/link")).unwrap();
    let snap = repo.backup_tree(&src, BackupOptions::new()).await.unwrap();
    // A listing gives the bytes of a name that is not UTF-8.
    let listed = repo.list_tree(&snap, &[]).await.unwrap();
    let raw: Vec<&str> = listed
        .iter()
        .filter_map(|e| e.path_raw.as_deref())
        .collect();
    assert!(raw.contains(&"636166e92e73716c"), "{raw:?}");
    let link = listed.iter().find(|e| e.path == "z/link").unwrap();
    assert_eq!(link.target_raw.as_deref(), Some("636166e92e73716c"));
    let plain = listed.iter().find(|e| e.path == "z/plain.sql").unwrap();
    assert_eq!(
        (
            plain.hard_link_of.as_deref(),
            plain.hard_link_of_raw.as_deref()
        ),
        (None, Some("636166e92e73716c"))
    );
    let dst = dir.path().join("dst");
    repo.restore_paths_of(&snap, &dst, &[]).await.unwrap();
    assert_same_tree(&src, &dst);
    let inodes: Vec<(u64, u64)> = names
        .iter()
        .map(|n| std::fs::metadata(dst.join(n)).unwrap())
        .map(|m| (m.ino(), m.nlink()))
        .collect();
    assert_eq!(inodes, vec![(inodes[0].0, 3); 3], "one file, three names");
}

#[tokio::test]
async fn a_sparse_restore_leaves_holes_for_zero_blocks_only() {
    use std::os::unix::fs::MetadataExt;
    let (repo, dir, src) = repo_and_tree(9).await;
    // A disk image: data, 1 MiB of zeros, data cut mid-block, and 3 MiB of zeros at the end;
    // and a file of zeros alone.
    let mut image = noise(100_000, 10);
    image.resize(image.len() + (1 << 20), 0);
    image.extend(noise(5_000, 11));
    image.resize(image.len() + (3 << 20), 0);
    std::fs::write(src.join("disk.img"), &image).unwrap();
    std::fs::write(src.join("zeros"), vec![0u8; 2 << 20]).unwrap();
    let snap = repo.backup_tree(&src, BackupOptions::new()).await.unwrap();
    let (dense, sparse) = (dir.path().join("dense"), dir.path().join("sparse"));
    repo.restore_tree_of(&snap, &dense).await.unwrap();
    let r = repo
        .restore_paths_with(&snap, &sparse, &[], &RestoreOptions::new().sparse(true))
        .await
        .unwrap();
    assert_eq!(r.files, 6);
    assert_same_tree(&src, &sparse);
    let used = |root: &std::path::Path, name: &str| {
        std::fs::metadata(root.join(name)).unwrap().blocks() * 512
    };
    // Dense: every byte allocated. Sparse: only the blocks holding data, about 108 KB.
    assert!(used(&dense, "disk.img") >= image.len() as u64);
    assert!(
        used(&sparse, "disk.img") < 200_000,
        "{}",
        used(&sparse, "disk.img")
    );
    assert_eq!(used(&sparse, "zeros"), 0);
    // Files without zero blocks are written whole.
    for f in ["a/dump.sql", "a/b/pages.bin"] {
        assert_eq!(used(&sparse, f), used(&dense, f), "{f}");
    }
}

/// Rate limits hold transfers to their average: 3 MiB of incompressible data written at
/// 4 MiB/s takes at least the 0.75 s its rate allows after the first object, and reading it
/// back at the same rate as long; unlimited, the same repository is no slower than that.
#[tokio::test]
async fn transfers_keep_to_their_rate_limits() {
    let url = memory_url();
    init_repo(url.as_str()).await;
    let limited = |up, down| {
        Location::new(url.clone())
            .limit_upload(up)
            .limit_download(down)
    };
    let data = noise(3 << 20, 50);
    let repo = Repository::open(limited(4 << 20, 0), &pass("p"))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // Two backups: the second's objects wait for the first's 3 MiB to have gone through.
    let snap = repo
        .backup_stream("a", &data[..], BackupOptions::new())
        .await
        .unwrap();
    repo.backup_stream("b", &noise(1 << 20, 51)[..], BackupOptions::new())
        .await
        .unwrap();
    assert!(
        started.elapsed().as_secs_f64() >= 0.7,
        "{:?}",
        started.elapsed()
    );
    let repo = Repository::open(limited(0, 4 << 20), &pass("p"))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    repo.restore_stream_of(&snap, &mut out).await.unwrap();
    repo.restore_stream_of(&snap, &mut Vec::new())
        .await
        .unwrap();
    assert_eq!(out, data);
    assert!(
        started.elapsed().as_secs_f64() >= 0.7,
        "{:?}",
        started.elapsed()
    );
}

/// `find` names the tree snapshots that hold what a pattern matches, newest first: a name at
/// any depth, or a path from the root; streams are not searched.
#[tokio::test]
async fn find_names_the_snapshots_holding_a_path() {
    let (repo, _dir, src) = repo_and_tree(15).await;
    let first = repo.backup_tree(&src, BackupOptions::new()).await.unwrap();
    std::fs::remove_file(src.join("small.conf")).unwrap();
    let second = repo.backup_tree(&src, BackupOptions::new()).await.unwrap();
    repo.backup_stream("s.conf", &b"x"[..], Default::default())
        .await
        .unwrap();
    let all = SnapshotFilter::new();
    let found = |patterns: &[&str]| {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        let repo = &repo;
        let all = &all;
        async move {
            repo.find(all, &patterns)
                .await
                .unwrap()
                .into_iter()
                .flat_map(|(s, entries)| entries.into_iter().map(move |e| (s.id.clone(), e.path)))
                .collect::<Vec<_>>()
        }
    };
    let at = |s: &cairn_repository::SnapshotInfo, p: &str| (s.id.clone(), p.to_string());
    // The file deleted since: only in the first snapshot.
    assert_eq!(found(&["*.conf"]).await, [at(&first, "small.conf")]);
    assert_eq!(
        found(&["a/*.sql", "pages.bin"]).await,
        [
            at(&second, "a/dump.sql"),
            at(&second, "a/b/pages.bin"),
            at(&first, "a/dump.sql"),
            at(&first, "a/b/pages.bin"),
        ]
    );
    assert!(found(&["nothing-*"]).await.is_empty());
    let e = repo.find(&all, &["/".into()]).await.unwrap_err();
    assert!(e.to_string().contains("matches nothing"), "{e}");
}

/// One file of a tree comes out on its own (`restore ID --include PATH --target -`), reading
/// only its own chunk lists; a directory, a path the snapshot lacks and a stream are refused.
#[tokio::test]
async fn one_file_of_a_tree_restores_into_a_writer() {
    let (repo, _dir, src) = repo_and_tree(14).await;
    let snap = repo.backup_tree(&src, BackupOptions::new()).await.unwrap();
    let opts = RestoreOptions::new();
    // Chunk ids in a list chunk (300 pages), inline (one line of text), and none.
    for path in ["a/b/pages.bin", "./a/dump.sql", "small.conf", "empty"] {
        let mut out = Vec::new();
        let n = repo
            .restore_file_with(&snap, path, &mut out, &opts)
            .await
            .unwrap();
        assert_eq!(out, std::fs::read(src.join(path)).unwrap(), "{path}");
        assert_eq!(n, out.len() as u64);
    }
    for (path, says) in [
        ("a/b", "is a dir, not a file"),
        ("link", "is a symlink, not a file"),
        ("a/none", "is not in snapshot"),
    ] {
        let e = repo
            .restore_file_with(&snap, path, Vec::new(), &opts)
            .await
            .unwrap_err();
        assert!(e.to_string().contains(says), "{path}: {e}");
    }
    let stream = repo
        .backup_stream("s", &b"x"[..], Default::default())
        .await
        .unwrap();
    let e = repo
        .restore_file_with(&stream, "s", Vec::new(), &opts)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is a stream"), "{e}");
}

/// Files with holes (a disk image, a log preallocated by truncation) are backed up without
/// reading their holes, into the chunks their dense copies give, and restore bit-exact.
#[cfg(unix)]
#[tokio::test]
async fn holes_give_the_chunks_their_dense_copies_do() {
    use std::os::unix::fs::FileExt;
    let (repo, dir, _) = repo_and_tree(13).await;
    let (holes, dense) = (dir.path().join("holes"), dir.path().join("dense"));
    std::fs::create_dir(&holes).unwrap();
    // Whole pages (page chunks): data, holes cut mid-chunk, a hole to the end. Not whole
    // pages (content-defined chunks): a hole first. And a file that is one hole.
    for (name, len, parts) in [
        (
            "disk.img",
            24u64 << 20,
            vec![(0, 300_000), ((5 << 20) + 12_288, 20_000)],
        ),
        (
            "app.log",
            (10 << 20) + 123,
            vec![(3 << 20, 70_000), (9 << 20, 1_000)],
        ),
        ("empty.img", 8 << 20, vec![]),
    ] {
        let f = std::fs::File::create(holes.join(name)).unwrap();
        f.set_len(len).unwrap();
        for (i, (at, n)) in parts.into_iter().enumerate() {
            f.write_all_at(&noise(n, 40 + i as u64), at).unwrap();
        }
    }
    let sparse = repo
        .backup_tree(&holes, BackupOptions::new())
        .await
        .unwrap();
    assert_eq!(sparse.summary.bytes, (42 << 20) + 123);
    std::fs::create_dir(&dense).unwrap();
    for name in ["disk.img", "app.log", "empty.img"] {
        std::fs::write(dense.join(name), std::fs::read(holes.join(name)).unwrap()).unwrap();
    }
    let read = repo
        .backup_tree(&dense, BackupOptions::new())
        .await
        .unwrap();
    assert_eq!(read.summary.new_chunks, 0, "{:?}", read.summary);
    assert_eq!(read.summary.chunks, sparse.summary.chunks);
    let back = dir.path().join("back");
    repo.restore_tree_of(&sparse, &back).await.unwrap();
    assert_same_tree(&holes, &back);
    // A dense restore allocates the holes' blocks (without writing them where it can).
    use std::os::unix::fs::MetadataExt;
    let image = std::fs::metadata(back.join("disk.img")).unwrap();
    assert!(
        image.blocks() * 512 >= 24 << 20,
        "{} blocks",
        image.blocks()
    );
    // Chunks of zeros are restored without being read: a stream of nothing else too.
    let zeros = vec![0u8; 3 << 20];
    let s = repo
        .backup_stream("zeros", &zeros[..], BackupOptions::new())
        .await
        .unwrap();
    let mut out = Vec::new();
    repo.restore_stream_of(&s, &mut out).await.unwrap();
    assert!(out == zeros, "{} bytes back", out.len());
}

/// Extended attributes come back — users' own, and a POSIX ACL (`system.posix_acl_access`) —
/// on files, directories and the backed-up directory itself; `diff` sees them change.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn extended_attributes_and_acls_come_back() {
    let (repo, dir, src) = repo_and_tree(12).await;
    let set = |p: &std::path::Path, name: &str, value: &[u8]| {
        rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty()).unwrap()
    };
    set(&src.join("a/dump.sql"), "user.origin", b"pg_dump 15");
    set(&src.join("a/b"), "user.tier", b"hot");
    set(&src, "user.root", b"yes");
    // user::rw-, user:1234:r--, group::r--, mask::r--, other::---, as the kernel stores them.
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX),
        (0x02, 4, 1234),
        (0x04, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        acl.extend(tag.to_le_bytes());
        acl.extend(perm.to_le_bytes());
        acl.extend(id.to_le_bytes());
    }
    let conf = src.join("small.conf");
    set(&conf, "system.posix_acl_access", &acl);
    let before = repo.backup_tree(&src, BackupOptions::new()).await.unwrap();
    let dst = dir.path().join("dst");
    repo.restore_tree_of(&before, &dst).await.unwrap();
    assert_same_tree(&src, &dst);
    assert!(xattrs_of(&dst.join("small.conf")).contains("system.posix_acl_access="));
    assert_eq!(xattrs_of(&dst), xattrs_of(&src));
    assert!(xattrs_of(&dst).contains("user.root="));
    set(&src.join("a/b"), "user.tier", b"cold");
    let after = repo.backup_tree(&src, BackupOptions::new()).await.unwrap();
    let changes = repo.diff_trees(&before, &after).await.unwrap();
    let changes: Vec<_> = changes
        .iter()
        .map(|c| (c.path.as_str(), c.change))
        .collect();
    assert_eq!(changes, [("a/b", "metadata")]);
}

/// A file is backed up as a tree of that one file: none of its directory's other entries,
/// restored under its name into the target (with --delete, the target's other entries left
/// alone), and taken unread from the parent by the next backup of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_a_tree_of_that_one_file() {
    let (repo, dir, src) = repo_and_tree(15).await;
    let file = src.join("big.db");
    std::fs::write(&file, noise(1 << 20, 16)).unwrap();
    // Files changed within two seconds of a backup's start are read again by the next.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let first = repo.backup_tree(&file, BackupOptions::new()).await.unwrap();
    assert!(
        matches!(&first.kind, SnapshotKind::Tree { path } if *path == file.display().to_string()),
        "{:?}",
        first.kind
    );
    let repo = &repo;
    let names = |snap| async move {
        let listed = repo.list_tree(snap, &[]).await.unwrap();
        listed.into_iter().map(|e| e.path).collect::<Vec<_>>()
    };
    assert_eq!(names(&first).await, ["big.db"]);
    let dst = dir.path().join("dst");
    repo.restore_tree_of(&first, &dst).await.unwrap();
    assert_eq!(
        std::fs::read(dst.join("big.db")).unwrap(),
        std::fs::read(&file).unwrap()
    );
    let mtime = |p: &std::path::Path| std::fs::metadata(p).unwrap().modified().unwrap();
    assert_eq!(mtime(&dst.join("big.db")), mtime(&file));
    let second = repo.backup_tree(&file, BackupOptions::new()).await.unwrap();
    let s = &second.summary;
    assert_eq!(
        (s.files, s.unchanged_files, s.new_bytes),
        (1, 1, 0),
        "{s:?}"
    );

    // Restored in place with --delete, it leaves the directory's other entries alone: they
    // were never in it.
    let dst_file = src.join("small.conf");
    let before = std::fs::read(&dst_file).unwrap();
    repo.restore_paths_with(&second, &src, &[], &RestoreOptions::new().delete(true))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dst_file).unwrap(), before);

    // A link to the file, and a file --exclude leaves out, are refused, not saved empty.
    std::os::unix::fs::symlink("big.db", src.join("current")).unwrap();
    let e = repo
        .backup_tree(src.join("current"), BackupOptions::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("symbolic link to the file"), "{e}");
    let e = repo
        .backup_tree(&file, BackupOptions::new().exclude("*.db"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("left out by --exclude"), "{e}");
}

/// A tree backup takes the files whose size, times and inode did not change from the parent
/// snapshot instead of reading them — a file rewritten in place with its size and mtime put
/// back is still read — and the snapshot restores whole.
#[tokio::test]
async fn unchanged_files_are_taken_from_the_parent_snapshot() {
    use cairn_repository::Parent;
    let (repo, dir, src) = repo_and_tree(13).await;
    // 2,560 page chunks: kept in list chunks, which are taken over as they are.
    std::fs::write(src.join("big.db"), noise(20 << 20, 14)).unwrap();
    // Files changed within two seconds of a backup's start are read again by the next.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let first = repo.backup_tree(&src, BackupOptions::new()).await.unwrap();
    assert_eq!(first.summary.unchanged_files, 0);
    let dump = src.join("a/dump.sql");
    let mtime = std::fs::metadata(&dump).unwrap().modified().unwrap();
    let mut text = std::fs::read(&dump).unwrap();
    text[1000] ^= 1;
    std::fs::write(&dump, &text).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&dump)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::write(src.join("small.conf"), b"key = other\n").unwrap();
    let second = repo.backup_tree(&src, BackupOptions::new()).await.unwrap();
    let s = &second.summary;
    // big.db and pages.bin; the empty file is always "read".
    assert_eq!((s.files, s.unchanged_files), (5, 2), "{s:?}");
    assert_eq!(s.bytes, first.summary.bytes);
    assert!(s.chunks < 500 && s.new_bytes < 200_000, "{s:?}");
    let dst = dir.path().join("dst");
    repo.restore_tree_of(&second, &dst).await.unwrap();
    assert_same_tree(&src, &dst);
    // --force reads everything; a named parent is used; a stream is no parent.
    let forced = repo
        .backup_tree(&src, BackupOptions::new().parent(Parent::None))
        .await
        .unwrap();
    assert_eq!(forced.summary.unchanged_files, 0);
    assert_eq!(forced.summary.new_chunks, 0);
    let named = repo
        .backup_tree(
            &src,
            BackupOptions::new().parent(Parent::Snapshot(first.id.clone())),
        )
        .await
        .unwrap();
    assert_eq!(named.summary.unchanged_files, 2);
    // A pod's hostname changes from run to run: a host named at backup keeps the parent.
    let pod = || BackupOptions::new().host("db-backup");
    let first_of_pod = repo.backup_tree(&src, pod()).await.unwrap();
    assert_eq!(
        first_of_pod.summary.unchanged_files, 0,
        "no snapshot of that host yet"
    );
    assert_eq!(first_of_pod.hostname, "db-backup");
    let next_of_pod = repo.backup_tree(&src, pod()).await.unwrap();
    // big.db and pages.bin, and the two files changed after the first backup once their
    // change is over two seconds older than the pod's first backup.
    let taken = next_of_pod.summary.unchanged_files;
    assert!((2..=4).contains(&taken), "{taken}");
    let of_pod = SnapshotFilter::new().host("db-backup");
    assert_eq!(repo.snapshots(&of_pod).await.unwrap().len(), 2);
    let stream = repo
        .backup_stream("s", &b"x"[..], BackupOptions::new())
        .await
        .unwrap();
    let e = repo
        .backup_tree(
            &src,
            BackupOptions::new().parent(Parent::Snapshot(stream.id)),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a tree"), "{e}");
}

/// A tree's nodes are kept in chunks cut by content (format version 3): a snapshot after a
/// change to one file of thousands stores the nodes around it again, not every node, and
/// reads, lists and restores as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_stores_again_only_the_nodes_around_a_change() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    for dir in ["a", "b", "c"] {
        std::fs::create_dir_all(src.join(dir)).unwrap();
        for i in 0..1000 {
            // The same bytes everywhere: the files' data is one chunk, the nodes are the rest.
            std::fs::write(src.join(dir).join(format!("{i:04}.eml")), b"Subject: hi\n").unwrap();
        }
    }
    let repo = init_repo(memory_url().as_str()).await;
    let first = repo.backup_tree(&src, Default::default()).await.unwrap();
    std::fs::write(src.join("b/0500.eml"), b"Subject: changed\n").unwrap();
    let second = repo.backup_tree(&src, Default::default()).await.unwrap();
    let (one, two) = (first.summary.stored_bytes, second.summary.stored_bytes);
    // Inline nodes would store about as much again. Stored again here: the two node chunks
    // that hold the changed lines (the file's and its directory's), and what every snapshot
    // writes (its content object, naming the ~50 node chunks, a pack header, an index file),
    // together a tenth of the first snapshot, give or take with the files' times.
    assert!(
        two * 5 < one,
        "the second stored {two} B, the first {one} B"
    );
    assert_eq!(second.summary.files, 3000);
    let listed = repo
        .list_tree(&second, &["b/0500.eml".into()])
        .await
        .unwrap();
    assert!(
        listed
            .iter()
            .any(|e| e.path == "b/0500.eml" && e.size == 17),
        "{listed:?}"
    );
    let dst = d.path().join("dst");
    repo.restore_tree_of(&second, &dst).await.unwrap();
    assert_same_tree(&src, &dst);
    assert!(repo.check(true).await.unwrap().is_ok());

    // find reads the node chunks the snapshots share once, and still names what they hold
    // in each snapshot (newest first).
    std::fs::write(src.join("c/new.eml"), b"Subject: new\n").unwrap();
    let third = repo.backup_tree(&src, Default::default()).await.unwrap();
    let all = SnapshotFilter::new();
    let found = repo.find(&all, &["0500.eml".into()]).await.unwrap();
    let sizes: Vec<(String, Vec<(String, u64)>)> = found
        .into_iter()
        .map(|(s, e)| (s.id, e.into_iter().map(|e| (e.path, e.size)).collect()))
        .collect();
    let of = |b: u64| {
        vec![
            ("a/0500.eml".to_string(), 12),
            ("b/0500.eml".to_string(), b),
            ("c/0500.eml".to_string(), 12),
        ]
    };
    assert_eq!(
        sizes,
        [(third.id, of(17)), (second.id, of(17)), (first.id, of(12))]
    );
    let found = repo.find(&all, &["new.eml".into()]).await.unwrap();
    assert_eq!(found.len(), 1);
}

/// What this process cannot read (here a path longer than the system takes; permissions for a
/// backup not run as root) is left out and counted, and the rest of the tree is backed up.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_read_is_left_out_and_counted() {
    let (repo, dir, src) = repo_and_tree(8).await;
    // Made one level at a time from the one before (chdir, in a process of its own): no path
    // names it whole.
    let name = "d".repeat(200);
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import os\nos.chdir({:?})\nfor _ in range(25):\n    os.mkdir('{name}')\n    \
             os.chdir('{name}')\nopen('f', 'w').write('deep')\n",
            src.display().to_string()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let snap = repo.backup_tree(&src, BackupOptions::new()).await.unwrap();
    assert!(snap.summary.unreadable >= 1, "{:?}", snap.summary);
    let dst = dir.path().join("dst");
    repo.restore_tree(&snap.id, &dst).await.unwrap();
    assert_eq!(
        std::fs::read(dst.join("a/dump.sql")).unwrap(),
        std::fs::read(src.join("a/dump.sql")).unwrap()
    );
    // Removed by `rm`, which walks relative to each directory.
    let _ = std::process::Command::new("rm")
        .arg("-rf")
        .arg(src.join(&name))
        .output();
}

/// A tag, host or stream name a listing could not show as it is (a newline would forge a
/// line of `snapshots`; listings join tags with commas) is refused before anything is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_listings_cannot_show_are_refused() {
    let repo = init_repo(memory_url().as_str()).await;
    let data = noise(1000, 1);
    for (opts, name, says) in [
        (BackupOptions::new().tag("a\nb"), "s", "control character"),
        (BackupOptions::new().tag(""), "s", "is empty"),
        (BackupOptions::new().tag("x,y"), "s", "comma"),
        (BackupOptions::new().host("h\r"), "s", "control character"),
        (BackupOptions::new(), "evil\nname", "control character"),
    ] {
        let e = repo.backup_stream(name, &data[..], opts).await.unwrap_err();
        assert!(e.to_string().contains(says), "{e}");
    }
    let d = tempfile::tempdir().unwrap();
    let e = repo
        .backup_tree(d.path(), BackupOptions::new().tag("a\tb"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("control character"), "{e}");
    assert!(
        repo.snapshots(&Default::default())
            .await
            .unwrap()
            .is_empty()
    );
    repo.backup_stream("s", &data[..], BackupOptions::new().tag("k=v").host("h"))
        .await
        .unwrap();
}

/// FIFOs and (as root) device nodes are kept, with their modes and device numbers, and made
/// again by a restore; a diff sees a device's number change. A socket is left out.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifos_and_devices_are_restored() {
    use rustix::fs::{CWD, FileType, Mode, mknodat};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let (repo, dir, src) = repo_and_tree(12).await;
    mknodat(
        CWD,
        src.join("pipe"),
        FileType::Fifo,
        Mode::from_bits_truncate(0o640),
        0,
    )
    .unwrap();
    // /proc/self belongs to the process's effective user.
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    let null = rustix::fs::makedev(1, 3);
    if root {
        mknodat(
            CWD,
            src.join("null"),
            FileType::CharacterDevice,
            Mode::from_bits_truncate(0o666),
            null,
        )
        .unwrap();
    }
    let _socket = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    let snap = repo.backup_tree(&src, BackupOptions::new()).await.unwrap();
    let listed = repo.list_tree(&snap, &[]).await.unwrap();
    let kind = |p: &str| listed.iter().find(|e| e.path == p).map(|e| e.kind);
    assert_eq!(kind("pipe"), Some("fifo"));
    assert_eq!(kind("sock"), None);

    let dst = dir.path().join("dst");
    repo.restore_paths_of(&snap, &dst, &[]).await.unwrap();
    let pipe = std::fs::symlink_metadata(dst.join("pipe")).unwrap();
    assert!(pipe.file_type().is_fifo());
    assert_eq!(pipe.mode() & 0o777, 0o640);
    if root {
        assert_eq!(kind("null"), Some("chardev"));
        let listed_null = listed.iter().find(|e| e.path == "null").unwrap();
        assert_eq!(listed_null.rdev, Some(null));
        let dev = std::fs::symlink_metadata(dst.join("null")).unwrap();
        assert!(dev.file_type().is_char_device());
        assert_eq!(dev.rdev(), null);
        // Another device under the same name is a change.
        std::fs::remove_file(src.join("null")).unwrap();
        let zero = rustix::fs::makedev(1, 5);
        mknodat(
            CWD,
            src.join("null"),
            FileType::CharacterDevice,
            Mode::from_bits_truncate(0o666),
            zero,
        )
        .unwrap();
        let again = repo.backup_tree(&src, BackupOptions::new()).await.unwrap();
        let changes = repo.diff_trees(&snap, &again).await.unwrap();
        assert!(
            changes
                .iter()
                .any(|c| c.path == "null" && c.change == "modified"),
            "{changes:?}"
        );
    }
}

/// A file something keeps appending to (a live log) is read up to its size when it was opened,
/// not for as long as it grows: the backup ends, and the snapshot holds that much.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_keeps_growing_is_read_to_its_size_when_opened() {
    let repo = init_repo(memory_url().as_str()).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let log = src.join("live.log");
    std::fs::write(&log, noise(1 << 20, 1)).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (log, stop) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            // Grown by holes (no disk used), far faster than any backup reads, until told to
            // stop (or 64 GiB at most).
            let f = std::fs::File::options().write(true).open(&log).unwrap();
            for _ in 0..1024 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let len = f.metadata().unwrap().len();
                f.set_len(len + (64 << 20)).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        })
    };
    let backed_up = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        repo.backup_tree(&src, Default::default()),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    let info = backed_up.expect("the backup ends").unwrap();
    let listed = repo.list_tree(&info, &[]).await.unwrap();
    let size = listed
        .iter()
        .find(|e| e.path == "live.log")
        .expect("listed")
        .size;
    let now = std::fs::metadata(&log).unwrap().len();
    assert!(size >= 1 << 20 && size < now, "{size} of {now}");
}
