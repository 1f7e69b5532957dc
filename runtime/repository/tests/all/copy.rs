//! Copying snapshots into another repository.

use crate::support::*;
use cairn_repository::{BackupOptions, Error, Repository, SnapshotFilter};

async fn new_repo(url: &str, passphrase: &str) -> Repository {
    Repository::init(url, &pass(passphrase), Default::default())
        .await
        .unwrap()
}

async fn stream_of(repo: &Repository, id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    repo.restore_stream(id, &mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_restore_as_the_originals_keep_their_stamps_and_deduplicate() {
    let dir = tempfile::tempdir().unwrap();
    let src_dir = dir.path().join("src-repo");
    let (src, dst) = (
        new_repo(&src_dir.display().to_string(), "one").await,
        new_repo(&memory_url(), "two").await,
    );
    let mut day1 = text(4_000_000, 1);
    day1.extend(noise(2_000_000, 2));
    let s1 = src
        .backup_stream("db.sql", &day1[..], BackupOptions::new().tag("nightly"))
        .await
        .unwrap();
    let day1_packs = files(&src_dir, "data");
    let tree = dir.path().join("src");
    make_tree(&tree, 3);
    // 2,560 page chunks: list chunks on both sides.
    std::fs::write(tree.join("big.db"), noise(20 << 20, 4)).unwrap();
    let t1 = src.backup_tree(&tree, BackupOptions::new()).await.unwrap();

    let c1 = dst
        .copy_snapshot(&src, &s1, &BackupOptions::new())
        .await
        .unwrap();
    let ct = dst
        .copy_snapshot(&src, &t1, &BackupOptions::new())
        .await
        .unwrap();
    for (c, o) in [(&c1, &s1), (&ct, &t1)] {
        assert_ne!(c.id, o.id);
        assert_eq!(c.original.as_deref(), Some(o.id.as_str()));
        assert_eq!(c.original_id(), o.id);
        assert_eq!(
            (c.time, &c.hostname, &c.tags),
            (o.time, &o.hostname, &o.tags)
        );
        assert_eq!(c.source(), o.source());
        assert_eq!(
            (
                c.summary.bytes,
                c.summary.files,
                c.summary.dirs,
                c.summary.chunks
            ),
            (
                o.summary.bytes,
                o.summary.files,
                o.summary.dirs,
                o.summary.chunks
            )
        );
    }
    assert!(stream_of(&dst, &c1.id).await == day1, "stream copy differs");
    let out = dir.path().join("out");
    dst.restore_tree(&ct.id, &out).await.unwrap();
    assert_same_tree(&tree, &out);
    let mtime = |p: &std::path::Path| std::fs::metadata(p).unwrap().modified().unwrap();
    assert_eq!(
        mtime(&tree.join("a/dump.sql")),
        mtime(&out.join("a/dump.sql"))
    );

    // The next day's stream shares most chunks with the first: its copy stores little.
    let mut day2 = day1.clone();
    day2[1_000_000..1_000_100].fill(b'#');
    let s2 = src
        .backup_stream("db.sql", &day2[..], BackupOptions::new())
        .await
        .unwrap();
    // The copy reads only the chunks the first copy did not bring: the first day's packs
    // are not needed.
    for p in &day1_packs {
        std::fs::remove_file(p).unwrap();
    }
    let c2 = dst
        .copy_snapshot(&src, &s2, &BackupOptions::new())
        .await
        .unwrap();
    assert!(
        c2.summary.new_bytes < 200_000,
        "a copy deduplicates against earlier copies: {:?}",
        c2.summary
    );
    assert!(stream_of(&dst, &c2.id).await == day2);

    // A copy of a copy names the first original.
    let third = new_repo(&memory_url(), "three").await;
    let cc = third
        .copy_snapshot(&dst, &c1, &BackupOptions::new())
        .await
        .unwrap();
    assert_eq!(cc.original.as_deref(), Some(s1.id.as_str()));
    assert!(stream_of(&third, &cc.id).await == day1);
    // The copy of a copy maps too: the next day comes from the source without the first
    // day's packs.
    let c3 = third
        .copy_snapshot(&src, &s2, &BackupOptions::new())
        .await
        .unwrap();
    assert!(stream_of(&third, &c3.id).await == day2);

    // Listed like any snapshot, and whole.
    let listed = dst
        .snapshots(&SnapshotFilter::new().tag("nightly"))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].original.as_deref(), Some(s1.id.as_str()));
    let report = dst.check(true).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_from_damaged_data_fails_and_leaves_no_snapshot() {
    let d = tempfile::tempdir().unwrap();
    let src_url = d.path().join("src").display().to_string();
    let src = new_repo(&src_url, "one").await;
    let s = src
        .backup_stream("db.sql", &noise(3_000_000, 5)[..], BackupOptions::new())
        .await
        .unwrap();
    let packs = files(&d.path().join("src"), "data");
    assert!(!packs.is_empty());
    let mut bytes = std::fs::read(&packs[0]).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&packs[0], bytes).unwrap();

    let dst = new_repo(&memory_url(), "two").await;
    let src = Repository::open(src_url.as_str(), &pass("one"))
        .await
        .unwrap();
    let e = dst
        .copy_snapshot(&src, &s, &BackupOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("data/") && msg.contains(&s.id[..8]), "{msg}");
    assert!(
        dst.snapshots(&SnapshotFilter::new())
            .await
            .unwrap()
            .is_empty()
    );
}
