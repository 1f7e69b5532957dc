//! Forget, prune, protection and concurrency.

use crate::support::*;
use cairn_repository::{
    BackupOptions, Error, InitOptions, PruneOptions, Repository, Retention, SnapshotFilter,
    retained,
};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_forgotten_data_only() {
    let url = memory_url();
    let repo = init_repo(url.as_str()).await;
    let old = repo
        .backup_stream("s", &noise(3_000_000, 1)[..], Default::default())
        .await
        .unwrap();
    let new = repo
        .backup_stream("s", &noise(3_000_000, 2)[..], Default::default())
        .await
        .unwrap();
    let f = keep_last(&repo, 1).await;
    assert_eq!(f.removed, vec![old.id.clone()]);
    let r = repo.prune(false).await.unwrap();
    assert!(r.packs_deleted >= 1, "{r:?}");
    assert!(repo.check(true).await.unwrap().is_ok());
    let mut out = Vec::new();
    repo.restore_stream(&new.id, &mut out).await.unwrap();
    assert!(out == noise(3_000_000, 2));
    assert!(matches!(
        repo.snapshot(&old.id).await.unwrap_err(),
        Error::NotFound { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protection_refuses_forget_and_prune() {
    let d = tempfile::tempdir().unwrap();
    let url = d.path().join("r").display().to_string();
    let opts = InitOptions::new().protection(Duration::from_secs(86_400));
    let repo = Repository::init(url.as_str(), &pass("p"), opts)
        .await
        .unwrap();
    let a = repo
        .backup_stream("s", &noise(1_000_000, 1)[..], Default::default())
        .await
        .unwrap();
    repo.backup_stream("s", &noise(1_000_000, 2)[..], Default::default())
        .await
        .unwrap();
    let f = keep_last(&repo, 1).await;
    assert!(f.removed.is_empty());
    assert_eq!(f.protected.len(), 1);
    assert_eq!(f.protected[0].0, a.id);
    let f = repo
        .forget_ids(std::slice::from_ref(&a.id), false)
        .await
        .unwrap();
    assert!(f.removed.is_empty() && f.protected[0].0 == a.id, "{f:?}");
    let r = repo.prune(false).await.unwrap();
    assert_eq!(r.packs_deleted, 0);
    // Reopened, the protection still holds (it is in the config).
    let repo = Repository::open(url.as_str(), &pass("p")).await.unwrap();
    assert_eq!(repo.protection(), Duration::from_secs(86_400));
    assert_eq!(
        repo.snapshots(&SnapshotFilter::new()).await.unwrap().len(),
        2
    );

    // A period past 100 years is refused at init; one written into the config (which is not
    // authenticated) is taken as 100 years, never wrapped round to none.
    let err = Repository::init(
        d.path().join("r2").display().to_string().as_str(),
        &pass("p"),
        InitOptions::new().protection(Duration::from_secs(u64::MAX)),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("longer than the longest, 100 years"),
        "{err}"
    );
    let config = d.path().join("r/config");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(
        "\"protection_secs\": 86400",
        &format!("\"protection_secs\": {}", u64::MAX),
    );
    assert!(text.contains(&u64::MAX.to_string()), "{text}");
    // The config is written read-only under protection: make it writable to tamper with it.
    let mut perms = std::fs::metadata(&config).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&config, perms).unwrap();
    std::fs::write(&config, text).unwrap();
    let repo = Repository::open(url.as_str(), &pass("p")).await.unwrap();
    assert_eq!(repo.protection(), cairn_repository::MAX_PROTECTION);
    let f = repo
        .forget_ids(std::slice::from_ref(&a.id), false)
        .await
        .unwrap();
    assert!(f.removed.is_empty(), "{f:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_by_name_removes_those_or_nothing() {
    let repo = init_repo(memory_url().as_str()).await;
    let mut ids = Vec::new();
    for seed in 1..=3 {
        let s = repo
            .backup_stream("s", &noise(100_000, seed)[..], Default::default())
            .await
            .unwrap();
        ids.push(s.id);
    }
    // One name that matches nothing: nothing is removed.
    let e = repo
        .forget_ids(&[ids[0].clone(), "ffffffff".into()], false)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    let dry = repo
        .forget_ids(&[ids[0][..8].to_string()], true)
        .await
        .unwrap();
    assert_eq!(dry.removed, vec![ids[0].clone()]);
    assert_eq!(
        repo.snapshots(&SnapshotFilter::new()).await.unwrap().len(),
        3
    );
    // A prefix and `latest`, the same snapshot twice: removed once.
    let f = repo
        .forget_ids(
            &[ids[0][..8].to_string(), "latest".into(), ids[2].clone()],
            false,
        )
        .await
        .unwrap();
    assert_eq!(f.removed, vec![ids[0].clone(), ids[2].clone()]);
    let left = repo.snapshots(&SnapshotFilter::new()).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, ids[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gfs_retention() {
    let url = memory_url();
    let repo = init_repo(url.as_str()).await;
    for i in 0..3 {
        repo.backup_stream("s", &noise(1000, i)[..], Default::default())
            .await
            .unwrap();
    }
    // All three were made within the same day: daily=1 keeps one, last=2 keeps two.
    let snaps = repo.snapshots(&SnapshotFilter::new()).await.unwrap();
    let keep = retained(&Retention::new().daily(1), &snaps, &jiff::tz::TimeZone::UTC);
    assert_eq!(keep.len(), 1);
    assert!(keep.contains_key(&snaps[2].id));
    assert_eq!(
        retained(&Retention::new().last(2), &snaps, &jiff::tz::TimeZone::UTC).len(),
        2
    );
    assert!(
        repo.forget(
            &Retention::new(),
            &SnapshotFilter::new(),
            &jiff::tz::TimeZone::UTC,
            true
        )
        .await
        .is_err()
    );

    // Exports of two workloads share a name (`dump`): each workload keeps its own. Their
    // host (the pod Cairn ran in, renamed at every restart) does not part them.
    for (i, workload) in ["orders", "orders", "billing"].iter().enumerate() {
        let opts = cairn_repository::BackupOptions::new()
            .host(format!("cairn-pod-{i}"))
            .tag("export")
            .tag("namespace=shop")
            .tag(format!("workload={workload}"));
        repo.backup_stream("dump", &noise(1000, 10 + i as u64)[..], opts)
            .await
            .unwrap();
    }
    let snaps = repo.snapshots(&SnapshotFilter::new()).await.unwrap();
    let keep = retained(&Retention::new().last(1), &snaps, &jiff::tz::TimeZone::UTC);
    let kept: Vec<&str> = snaps
        .iter()
        .filter(|s| keep.contains_key(&s.id))
        .map(|s| s.tags.last().map_or(s.source(), String::as_str))
        .collect();
    assert_eq!(
        kept.len(),
        3,
        "one of `s`, and one dump per workload: {kept:?}"
    );
    assert!(kept.contains(&"workload=orders") && kept.contains(&"workload=billing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_backups_and_prune_during_backup() {
    let url = memory_url();
    let repo = init_repo(url.as_str()).await;
    let other = Repository::open(url.as_str(), &pass("p")).await.unwrap();
    let mut w1 = repo.stream_writer("one", Default::default()).await.unwrap();
    let mut w2 = other
        .stream_writer("two", Default::default())
        .await
        .unwrap();
    w1.write_all(&noise(2_000_000, 1)).await.unwrap();
    w2.write_all(&noise(2_000_000, 2)).await.unwrap();
    // Prune must not run while backups hold their locks.
    let e = other.prune(false).await.unwrap_err();
    assert!(matches!(e, Error::Locked { .. }), "{e}");
    let s1 = w1.finish().await.unwrap();
    let s2 = w2.finish().await.unwrap();
    other.prune(false).await.unwrap();
    for (s, seed) in [(&s1, 1), (&s2, 2)] {
        let mut out = Vec::new();
        repo.restore_stream(&s.id, &mut out).await.unwrap();
        assert!(out == noise(2_000_000, seed));
    }
    assert!(repo.check(true).await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_snapshots_distinct_data_and_stored_bytes() {
    let repo = init_repo(memory_url().as_str()).await;
    let data = noise(1_000_000, 3);
    for _ in 0..2 {
        repo.backup_stream("s", &data[..], Default::default())
            .await
            .unwrap();
    }
    let st = repo.stats().await.unwrap();
    assert_eq!((st.snapshots, st.snapshot_bytes), (2, 2_000_000), "{st:?}");
    // Stored once: random data has no repeated chunks, and is stored raw (with its overhead).
    assert_eq!(st.chunk_bytes, 1_000_000, "{st:?}");
    assert!(st.chunks > 1 && st.packs == 1, "{st:?}");
    assert!(
        (1_000_000..1_010_000).contains(&st.pack_bytes) && st.metadata_bytes > 0,
        "{st:?}"
    );
}

/// Locks left by holders that are gone: a lost host's (held until stale, or removed by
/// `unlock --remove-all`), a stale one, a dead process of this host's, and an object in
/// `locks/` that is not a lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_of_holders_that_are_gone_are_ignored_tidied_and_unlocked() {
    let (_d, root, repo) = local_repo().await;
    // The local store removes directories it empties, `locks/` among them.
    let put = |id: &str, body: String| {
        std::fs::create_dir_all(root.join("locks")).unwrap();
        std::fs::write(root.join("locks").join(id), body).unwrap()
    };
    // A pid is judged in its own PID namespace only: this process's.
    let pidns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let pidns = pidns.to_string_lossy();
    // And on this boot only: a cloned machine has the same host name and PID namespace id.
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let boot = boot.trim();
    let lock = |host: &str, pid: u32, ago: Duration| {
        let time = jiff::Timestamp::now() - jiff::SignedDuration::try_from(ago).unwrap();
        format!(
            r#"{{"exclusive":true,"hostname":"{host}","pid":{pid},"operation":"prune","time":"{time}","pidns":"{pidns}","boot":"{boot}"}}"#
        )
    };

    // A prune on another host, refreshed a minute ago: it holds.
    put("lost", lock("elsewhere", 7, Duration::from_secs(60)));
    let e = repo
        .backup_stream("s", &noise(10_000, 1)[..], Default::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Locked { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("elsewhere (pid 7, prune") && text.contains("cairn repo unlock --remove-all"),
        "{text}"
    );
    let locks = repo.unlock(false).await.unwrap();
    assert_eq!(locks.len(), 1);
    assert!(locks[0].stale.is_none() && !locks[0].removed, "{locks:?}");
    let locks = repo.unlock(true).await.unwrap();
    assert!(locks[0].removed, "{locks:?}");
    repo.backup_stream("s", &noise(10_000, 1)[..], Default::default())
        .await
        .unwrap();

    // Not refreshed for 31 minutes (by the store's clock): ignored, and removed by the
    // operation that saw it.
    put("old", lock("elsewhere", 7, Duration::from_secs(31 * 60)));
    let old = std::fs::File::options()
        .write(true)
        .open(root.join("locks/old"))
        .unwrap();
    old.set_modified(std::time::SystemTime::now() - Duration::from_secs(31 * 60))
        .unwrap();
    repo.prune(false).await.unwrap();
    assert!(!root.join("locks/old").exists());

    // Written just now by a host whose clock is an hour off, either way: it holds.
    for skew in ["behind", "ahead"] {
        let hour = jiff::SignedDuration::from_hours(1);
        let time = match skew {
            "behind" => jiff::Timestamp::now() - hour,
            _ => jiff::Timestamp::now() + hour,
        };
        put(
            skew,
            format!(
                r#"{{"exclusive":true,"hostname":"elsewhere","pid":7,"operation":"prune","time":"{time}"}}"#
            ),
        );
        let e = repo
            .backup_stream("s", &noise(10_000, 1)[..], Default::default())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Locked { .. }), "{skew}: {e}");
        assert!(root.join("locks").join(skew).exists(), "{skew}");
        std::fs::remove_file(root.join("locks").join(skew)).unwrap();
    }

    // A dead process of this host, and an object that is not a lock: `unlock` removes both
    // and says why.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    // The host name locks record, from a running backup's lock (which holds).
    let writer = repo.stream_writer("t", Default::default()).await.unwrap();
    let held = repo.unlock(false).await.unwrap();
    assert!(held.len() == 1 && held[0].stale.is_none() && !held[0].removed);
    let here = held[0].hostname.clone();
    writer.finish().await.unwrap();
    put("dead", lock(&here, dead, Duration::from_secs(1)));
    // The same pid in another PID namespace (a sibling container of one pod) is not judged.
    put(
        "sibling",
        lock(&here, dead, Duration::from_secs(1)).replace(&*pidns, "pid:[1]"),
    );
    // Nor on another machine of the same name (a clone), nor by an older build that did not
    // record its boot.
    put(
        "clone",
        lock(&here, dead, Duration::from_secs(1)).replace(boot, "another-boot"),
    );
    put(
        "older",
        lock(&here, dead, Duration::from_secs(1)).replace(&format!(r#","boot":"{boot}""#), ""),
    );
    put("junk", "not json".into());
    put("probe", r#"{"probe":"the store's clock"}"#.into());
    let mut locks = repo.unlock(false).await.unwrap();
    locks.sort_by(|a, b| a.id.cmp(&b.id));
    for held in ["clone", "older", "sibling"] {
        let at = locks.iter().position(|l| l.id == held).expect("listed");
        let lock = locks.remove(at);
        assert!(lock.stale.is_none() && !lock.removed, "{lock:?}");
        std::fs::remove_file(root.join("locks").join(held)).unwrap();
    }
    assert_eq!(locks.len(), 3, "{locks:?}");
    assert_eq!(locks[0].id, "dead");
    assert_eq!(
        locks[0].stale.as_deref(),
        Some("its process on this host is gone")
    );
    // What is not a lock is another's, left alone; a probe of a killed process is Cairn's.
    assert!(
        locks[1]
            .stale
            .as_deref()
            .unwrap()
            .starts_with("not a lock object")
    );
    assert_eq!(
        locks.iter().map(|l| l.removed).collect::<Vec<_>>(),
        [true, false, true],
        "{locks:?}"
    );
    // Deeper than `locks/<id>` is not a lock of this repository's: neither listed nor
    // removed, even with --remove-all.
    std::fs::create_dir_all(root.join("locks/sub")).unwrap();
    put("sub/bbbbbbbb", lock("otherhost", 1, Duration::from_secs(1)));
    let left = repo.unlock(true).await.unwrap();
    assert!(left.len() == 1 && left[0].id == "junk" && !left[0].removed);
    assert!(root.join("locks/junk").exists() && root.join("locks/sub/bbbbbbbb").exists());
}

/// A backup whose lock another process removed (taken for stale while it was paused) commits
/// nothing: a prune may have deleted what it deduplicated against.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_whose_lock_was_removed_commits_nothing() {
    let (_d, root, repo) = local_repo().await;
    let mut writer = repo.stream_writer("s", Default::default()).await.unwrap();
    writer.write_all(&noise(100_000, 1)).await.unwrap();
    for lock in std::fs::read_dir(root.join("locks")).unwrap() {
        std::fs::remove_file(lock.unwrap().path()).unwrap();
    }
    let e = writer.finish().await.unwrap_err();
    assert!(matches!(e, Error::LockLost { .. }), "{e}");
    assert!(e.to_string().contains("nothing was committed"), "{e}");
    assert!(
        repo.snapshots(&SnapshotFilter::new())
            .await
            .unwrap()
            .is_empty()
    );
    // Run again, it commits.
    repo.backup_stream("s", &noise(100_000, 1)[..], Default::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_writer_leaves_no_snapshot_and_prune_cleans_up() {
    let url = memory_url();
    let repo = init_repo(url.as_str()).await;
    let mut w = repo
        .stream_writer("partial", BackupOptions::new())
        .await
        .unwrap();
    w.write_all(&noise(40_000_000, 9)).await.unwrap();
    drop(w);
    assert!(
        repo.snapshots(&SnapshotFilter::new())
            .await
            .unwrap()
            .is_empty()
    );
    // The dropped writer's lock goes away (best effort, asynchronously); wait for it bounded.
    let pruned = timed(async {
        loop {
            match repo.prune(false).await {
                Ok(r) => break r,
                Err(Error::Locked { .. }) => tokio::task::yield_now().await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    let _ = pruned;
    assert!(repo.check(true).await.unwrap().is_ok());
}

/// Bytes under a local directory.
fn du(dir: &std::path::Path) -> u64 {
    let mut n = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dirs.push(e.path());
            } else {
                n += m.len();
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_repacks_packs_that_pages_rewritten_since_left_mostly_unused() {
    let d = tempfile::tempdir().unwrap();
    let (src, dir) = (d.path().join("src"), d.path().join("r"));
    std::fs::create_dir_all(&src).unwrap();
    let url = dir.display().to_string();
    let repo = init_repo(url.as_str()).await;
    // A database file of 1,024 pages, then the same file with every other page rewritten.
    let mut db = noise(8 << 20, 1);
    std::fs::write(src.join("db"), &db).unwrap();
    repo.backup_tree(&src, Default::default()).await.unwrap();
    let fresh = noise(8 << 20, 2);
    for page in (0..1024).step_by(2) {
        let r = page * 8192..(page + 1) * 8192;
        db[r.clone()].copy_from_slice(&fresh[r]);
    }
    std::fs::write(src.join("db"), &db).unwrap();
    let new = repo.backup_tree(&src, Default::default()).await.unwrap();
    keep_last(&repo, 1).await;

    // Never repacking deletes only the forgotten snapshot's node pack (its file's chunk list
    // changed, so its nodes did), and a dry run changes nothing.
    let mut opts = PruneOptions::default();
    opts.repack_unused = 1.0;
    let r = repo.prune_with(&opts).await.unwrap();
    assert_eq!((r.packs_deleted, r.packs_repacked), (1, 0), "{r:?}");
    assert!(r.bytes_deleted < 4096, "{r:?}");
    let before = du(&dir);
    let mut opts = PruneOptions::default();
    opts.dry_run = true;
    let r = repo.prune_with(&opts).await.unwrap();
    assert_eq!(r.packs_repacked, 1, "{r:?}");
    assert_eq!(du(&dir), before);

    // Half of the first pack is unused: its live half is copied out, the pack leaves the
    // index, and the next prune deletes it.
    let r = repo.prune(false).await.unwrap();
    assert_eq!(r.packs_repacked, 1, "{r:?}");
    assert_eq!(r.bytes_repacked, 4 << 20, "{r:?}");
    // The old pages, and the forgotten snapshot's list of the file's 1,024 chunk ids.
    assert_eq!(r.bytes_reclaimable, (4 << 20) + 1024 * 32, "{r:?}");
    assert!(r.repack_error.is_none(), "{r:?}");
    let report = repo.check(true).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(
        report.warnings.iter().any(|w| w.contains("in no index")),
        "{report:?}"
    );
    let r = repo.prune(false).await.unwrap();
    assert_eq!((r.packs_deleted, r.packs_repacked), (1, 0), "{r:?}");
    let report = repo.check(true).await.unwrap();
    assert!(report.is_ok() && report.warnings.is_empty(), "{report:?}");
    let after = du(&dir);
    assert!(
        after < before - (3 << 20),
        "{before} bytes before, {after} after"
    );

    // The snapshot still restores, from a fresh open too.
    let repo = Repository::open(url.as_str(), &pass("p")).await.unwrap();
    let dst = d.path().join("dst");
    repo.restore_tree(&new.id, &dst).await.unwrap();
    assert!(std::fs::read(dst.join("db")).unwrap() == db);
}

/// Listing keeps what it read: what another handle adds or forgets shows all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_follow_other_handles() {
    let d = tempfile::tempdir().unwrap();
    let url = d.path().display().to_string();
    let a = init_repo(url.as_str()).await;
    let b = Repository::open(url.as_str(), &pass("p")).await.unwrap();
    let first = a
        .backup_stream("s", &noise(100_000, 1)[..], Default::default())
        .await
        .unwrap();
    let ids = |v: Vec<cairn_repository::SnapshotInfo>| -> Vec<String> {
        v.into_iter().map(|s| s.id).collect()
    };
    let all = SnapshotFilter::new();
    assert_eq!(
        ids(a.snapshots(&all).await.unwrap()),
        vec![first.id.clone()]
    );
    let second = b
        .backup_stream("s", &noise(100_000, 2)[..], Default::default())
        .await
        .unwrap();
    assert_eq!(
        ids(a.snapshots(&all).await.unwrap()),
        vec![first.id.clone(), second.id.clone()]
    );
    b.forget_ids(std::slice::from_ref(&first.id), false)
        .await
        .unwrap();
    assert_eq!(
        ids(a.snapshots(&all).await.unwrap()),
        vec![second.id.clone()]
    );
    assert_eq!(
        ids(a
            .snapshots(&SnapshotFilter::new().tag("none"))
            .await
            .unwrap()),
        Vec::<String>::new()
    );
}

/// A backup reads only the index files its handle has not read, unless one it read is gone:
/// then a prune has removed chunks it knows, and it must not count on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_that_read_the_index_before_a_prune_stores_pruned_data_again() {
    let url = memory_url();
    let a = init_repo(url.as_str()).await;
    let b = Repository::open(url.as_str(), &pass("p")).await.unwrap();
    let data = noise(2_000_000, 1);
    let backup = || a.backup_stream("s", &data[..], Default::default());
    let first = backup().await.unwrap();
    // The index file the first backup wrote is read now, and only it.
    let again = backup().await.unwrap();
    assert_eq!(again.summary.new_chunks, 0, "{:?}", again.summary);
    let other = b
        .backup_stream("t", &noise(500_000, 2)[..], Default::default())
        .await
        .unwrap();
    b.forget_ids(&[first.id, again.id], false).await.unwrap();
    assert!(b.prune(false).await.unwrap().packs_deleted >= 1);
    let third = backup().await.unwrap();
    assert!(third.summary.new_chunks > 0, "{:?}", third.summary);
    for (s, want) in [(&third, data), (&other, noise(500_000, 2))] {
        let mut out = Vec::new();
        a.restore_stream(&s.id, &mut out).await.unwrap();
        assert!(out == want);
    }
    assert!(a.check(true).await.unwrap().is_ok());
}

/// A backup asked to stop (Ctrl-C) saves no snapshot, releases its lock and indexes what it
/// uploaded, so the next backup reuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_asked_to_stop_keeps_what_it_uploaded_for_the_next() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let d = tempfile::tempdir().unwrap();
    let url = d.path().join("repo").display().to_string();
    let repo = init_repo(url.as_str()).await;
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..8u64 {
        std::fs::write(src.join(format!("f{i}")), noise(8 << 20, 60 + i)).unwrap();
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let read = Arc::new(AtomicU64::new(0));
    let watcher = {
        let read = read.clone();
        tokio::spawn(async move {
            while read.load(Ordering::Relaxed) < 40 << 20 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            let _ = stop.send(true);
        })
    };
    let mut opts = BackupOptions::new().progress(read.clone());
    opts.stop = Some(stopped);
    let e = repo.backup_tree(&src, opts).await.unwrap_err();
    watcher.await.unwrap();
    assert!(matches!(e, Error::Interrupted), "{e}");
    assert!(
        repo.snapshots(&SnapshotFilter::new())
            .await
            .unwrap()
            .is_empty()
    );
    let locks = d.path().join("repo/locks");
    assert!(
        !locks.exists() || std::fs::read_dir(&locks).unwrap().next().is_none(),
        "a lock is left"
    );
    let s = repo.backup_tree(&src, Default::default()).await.unwrap();
    assert!(
        s.summary.new_chunks < s.summary.chunks,
        "the next backup stored everything again: {:?}",
        s.summary
    );
    let out = tempfile::tempdir().unwrap();
    repo.restore_tree_of(&s, out.path()).await.unwrap();
    assert_same_tree(&src, out.path());
}

/// A local upload stopped between its staging file and the rename leaves `NAME#N`, which no
/// listing shows: check names it once it sits idle, prune removes what backups write at any
/// age (nothing writes those under its lock) and a lock's or key's once idle a minute (such a
/// write takes a moment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_uploads_are_reported_and_pruned() {
    let d = tempfile::tempdir().unwrap();
    let repo = init_repo(d.path().display().to_string().as_str()).await;
    let s = repo
        .backup_stream("s", &noise(300_000, 4)[..], Default::default())
        .await
        .unwrap();
    let idle = |path: &str, bytes: usize, age: Duration| {
        let p = d.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, vec![7u8; bytes]).unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(std::time::SystemTime::now() - age).unwrap();
        p
    };
    let pack = idle(
        &format!("data/ab/ab{}#17", "0".repeat(62)),
        5000,
        Duration::ZERO,
    );
    let old_lock = idle("locks/0123#3", 90, Duration::from_secs(120));
    let young_lock = idle("locks/4567#8", 90, Duration::ZERO);
    // Not a staging name: a foreign file, as before.
    let foreign = idle("data/ab/notes#draft", 10, Duration::from_secs(3600));

    let report = repo.check(false).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    let unfinished: Vec<&String> = report
        .warnings
        .iter()
        .filter(|w| w.starts_with("unfinished upload"))
        .collect();
    // The pack and a lock were written just now: they may be uploads in progress, and are
    // not named yet.
    assert_eq!(unfinished.len(), 1, "{report:?}");
    assert!(unfinished.iter().any(|w| w.contains("locks/0123#3")));
    assert!(unfinished[0].contains("cairn repo prune"), "{unfinished:?}");
    assert!(
        report.warnings.iter().any(|w| w.contains("notes#draft")),
        "{report:?}"
    );

    let dry = repo
        .prune_with(&{
            let mut o = PruneOptions::default();
            o.dry_run = true;
            o
        })
        .await
        .unwrap();
    assert_eq!((dry.unfinished_removed, dry.unfinished_bytes), (2, 5090));
    assert!(pack.exists() && old_lock.exists());

    let r = repo.prune(false).await.unwrap();
    assert_eq!((r.unfinished_removed, r.unfinished_bytes), (2, 5090));
    assert!(!pack.exists() && !old_lock.exists());
    assert!(young_lock.exists() && foreign.exists());
    repo.restore_stream(&s.id, &mut Vec::new()).await.unwrap();
}

/// Two backups of the same data at once, neither seeing the other's new chunks, store it
/// twice. The index reads one copy, and prune frees the other: the packs left holding only
/// copies are deleted, and those left mostly copies are repacked, then deleted by the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_frees_data_two_backups_stored_at_once() {
    let d = tempfile::tempdir().unwrap();
    let url = d.path().display().to_string();
    let repo = init_repo(url.as_str()).await;
    let other = Repository::open(url.as_str(), &pass("p")).await.unwrap();
    let data = noise(20_000_000, 31);
    let (a, b) = tokio::join!(
        repo.backup_stream("s", &data[..], Default::default()),
        other.backup_stream("s", &data[..], Default::default()),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let twice = du(&d.path().join("data"));
    assert!(twice > 39_000_000, "stored twice: {twice}");
    // Before prune, check reads both copies' packs, and none is "in no index".
    let packs = std::fs::read_dir(d.path().join("data"))
        .unwrap()
        .flat_map(|sub| std::fs::read_dir(sub.unwrap().path()).unwrap())
        .count();
    let report = repo.check(true).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.packs_read, packs, "{report:?}");
    assert!(
        !report.warnings.iter().any(|w| w.contains("in no index")),
        "{report:?}"
    );
    for _ in 0..2 {
        repo.prune(false).await.unwrap();
    }
    let once = du(&d.path().join("data"));
    assert!(
        once < 22_000_000,
        "{twice} bytes stored, {once} after prune"
    );
    for id in [&a.id, &b.id] {
        let mut out = Vec::new();
        repo.restore_stream(id, &mut out).await.unwrap();
        assert!(out == data);
    }
    assert!(repo.check(true).await.unwrap().is_ok());
}
