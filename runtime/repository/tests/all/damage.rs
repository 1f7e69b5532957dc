//! Damaged repositories: every failure names the object and the snapshots it affects, and
//! undamaged snapshots still restore.

use crate::support::*;
use cairn_repository::{Error, InitOptions, ReadData, Repository, SnapshotFilter};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

fn packs(repo: &Path) -> Vec<PathBuf> {
    files(repo, "data")
}

/// A repository in `d/repo` holding a tree snapshot of `d/src`: the files `names`, each `size`
/// bytes of noise (seeds from `seed` on).
async fn tree_of_files(
    d: &Path,
    names: &[&str],
    size: usize,
    seed: u64,
) -> (PathBuf, Repository, PathBuf, cairn_repository::SnapshotInfo) {
    let dir = d.join("repo");
    let url = dir.display().to_string();
    let repo = init_repo(url.as_str()).await;
    let src = d.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for (i, name) in names.iter().enumerate() {
        std::fs::write(src.join(name), noise(size, seed + i as u64)).unwrap();
    }
    let tree = repo.backup_tree(&src, Default::default()).await.unwrap();
    (dir, repo, src, tree)
}

/// Flips a byte in the first frame of every data pack (a tree's nodes are in a small pack of
/// their own, left alone); returns the names of the packs damaged.
fn damage_first_frames(repo: &Path) -> Vec<String> {
    let mut damaged = Vec::new();
    for pack in packs(repo) {
        let mut bytes = std::fs::read(&pack).unwrap();
        if bytes.len() > 100_000 {
            bytes[1000] ^= 0x40;
            std::fs::write(&pack, bytes).unwrap();
            damaged.push(pack.file_name().unwrap().to_str().unwrap().to_owned());
        }
    }
    assert!(!damaged.is_empty(), "no data pack to damage");
    damaged
}

/// Snapshots `a` and `b` of two streams, each backup in packs and an index file of its own;
/// the files in `data` and `index` once `a` was stored.
struct Two {
    repo: Repository,
    a: String,
    b: String,
    a_packs: Vec<PathBuf>,
    a_index: Vec<PathBuf>,
}

async fn two_snapshots(dir: &Path) -> Two {
    let url = dir.display().to_string();
    let repo = init_repo(url.as_str()).await;
    let a = repo
        .backup_stream("a", &noise(2_000_000, 1)[..], Default::default())
        .await
        .unwrap()
        .id;
    let (a_packs, a_index) = (packs(dir), files(dir, "index"));
    let b = repo
        .backup_stream("b", &noise(2_000_000, 2)[..], Default::default())
        .await
        .unwrap()
        .id;
    Two {
        repo,
        a,
        b,
        a_packs,
        a_index,
    }
}

async fn assert_damage_named(repo: &Repository, a: &str, b: &str, pack: &Path) {
    let name = pack.file_name().unwrap().to_str().unwrap();
    let report = repo.check(true).await.unwrap();
    assert!(!report.is_ok());
    let p = report
        .errors
        .iter()
        .find(|p| p.object.contains(name))
        .unwrap_or_else(|| panic!("{report:?}"));
    assert_eq!(p.snapshots, vec![a.to_string()], "{p:?}");
    // Restore of the damaged snapshot names the object and the snapshot.
    let e = repo.restore_stream(a, &mut Vec::new()).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, Error::Corrupt { .. } | Error::Missing { .. }),
        "{e}"
    );
    assert!(msg.contains(name) && msg.contains(a), "{msg}");
    // The other snapshot restores bit-exact.
    let mut out = Vec::new();
    repo.restore_stream(b, &mut out).await.unwrap();
    assert!(out == noise(2_000_000, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_pack() {
    let d = tempfile::tempdir().unwrap();
    let Two {
        repo,
        a,
        b,
        a_packs,
        ..
    } = two_snapshots(d.path()).await;
    let mut bytes = std::fs::read(&a_packs[0]).unwrap();
    bytes[1000] ^= 0x40;
    std::fs::write(&a_packs[0], bytes).unwrap();
    assert_damage_named(&repo, &a, &b, &a_packs[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_pack() {
    let d = tempfile::tempdir().unwrap();
    let Two {
        repo,
        a,
        b,
        a_packs,
        ..
    } = two_snapshots(d.path()).await;
    let bytes = std::fs::read(&a_packs[0]).unwrap();
    std::fs::write(&a_packs[0], &bytes[..bytes.len() / 2]).unwrap();
    assert_damage_named(&repo, &a, &b, &a_packs[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_pack() {
    let d = tempfile::tempdir().unwrap();
    let Two {
        repo,
        a,
        b,
        a_packs,
        ..
    } = two_snapshots(d.path()).await;
    std::fs::remove_file(&a_packs[0]).unwrap();
    assert_damage_named(&repo, &a, &b, &a_packs[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_snapshot_object_is_named() {
    let d = tempfile::tempdir().unwrap();
    let Two { repo, a, b, .. } = two_snapshots(d.path()).await;
    let p = d.path().join("snapshots").join(&a);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&p, bytes).unwrap();
    let report = repo.check(false).await.unwrap();
    assert!(
        report.errors.iter().any(|e| e.object.contains(&a)),
        "{report:?}"
    );
    let e = repo.restore_stream(&a, &mut Vec::new()).await.unwrap_err();
    assert!(e.to_string().contains(&a), "{e}");
    repo.restore_stream(&b, &mut Vec::new()).await.unwrap();
    // The others are still listed (and `latest` found); prune, which would take the damaged
    // one's data for unused, refuses, naming the way out: forget it by id.
    let listed: Vec<String> = repo
        .snapshots(&SnapshotFilter::new())
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, std::slice::from_ref(&b));
    assert_eq!(repo.snapshot("latest").await.unwrap().id, b);
    let e = repo.prune(false).await.unwrap_err();
    assert!(
        e.to_string().contains(&format!("cairn repo forget {a}")),
        "{e}"
    );
    // By the short id `snapshots` shows, as by the whole one.
    let forgot = repo.forget_ids(&[a[..8].to_owned()], true).await.unwrap();
    assert_eq!(forgot.removed, std::slice::from_ref(&a));
    let forgot = repo
        .forget_ids(std::slice::from_ref(&a), false)
        .await
        .unwrap();
    assert_eq!(forgot.removed, std::slice::from_ref(&a));
    repo.prune(false).await.unwrap();
    repo.restore_stream(&b, &mut Vec::new()).await.unwrap();
    let report = repo.check(true).await.unwrap();
    assert!(report.is_ok() && report.warnings.is_empty(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_files_are_reported_not_fatal() {
    let d = tempfile::tempdir().unwrap();
    let Two { repo, a, .. } = two_snapshots(d.path()).await;
    std::fs::write(d.path().join("README.txt"), b"hello").unwrap();
    std::fs::write(d.path().join("snapshots/not-an-id"), b"junk").unwrap();
    let repo2 = Repository::open(d.path().display().to_string(), &pass("p"))
        .await
        .unwrap();
    assert_eq!(repo2.snapshots(&Default::default()).await.unwrap().len(), 2);
    let report = repo.check(true).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(
        report.warnings.iter().any(|w| w.contains("README.txt")),
        "{report:?}"
    );
    repo2.restore_stream(&a, &mut Vec::new()).await.unwrap();
    // Files named like packs, but not where a pack of their name is: not packs. Repairing
    // the index passes them by, and prune neither deletes nor counts them.
    let id = "ffffffffffffffffffffffffffffffff";
    for foreign in [format!("data/zz/{id}"), format!("data/{id}")] {
        let path = d.path().join(&foreign);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"foreign").unwrap();
    }
    let fixed = repo.repair_index(false).await.unwrap();
    assert_eq!(fixed.packs_indexed, 0, "{fixed:?}");
    let pruned = repo.prune(false).await.unwrap();
    assert_eq!(pruned.packs_deleted, 0, "{pruned:?}");
    assert!(d.path().join(format!("data/zz/{id}")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_object_among_the_metadata_is_damage_not_an_allocation() {
    let d = tempfile::tempdir().unwrap();
    let Two { b, .. } = two_snapshots(d.path()).await;
    // 8 GiB, sparse: were it read whole (or its size taken for a count of index entries),
    // this would take the memory of the machine.
    let name = "ff".repeat(16);
    let huge = std::fs::File::create(d.path().join("index").join(&name)).unwrap();
    huge.set_len(8 << 30).unwrap();
    let repo = Repository::open(d.path().display().to_string(), &pass("p"))
        .await
        .unwrap();
    let report = repo.check(false).await.unwrap();
    let damage = report
        .errors
        .iter()
        .find(|p| p.object.contains(&name))
        .unwrap_or_else(|| panic!("{report:?}"));
    assert!(
        damage
            .reason
            .contains("larger than any index file Cairn writes"),
        "{damage:?}"
    );
    let mut out = Vec::new();
    repo.restore_stream(&b, &mut out).await.unwrap();
    assert!(out == noise(2_000_000, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_list_chunk_is_named_by_check_and_restore() {
    let (d, dir, repo) = local_repo().await;
    // 2,560 page chunks: the file's chunk list is kept in two list chunks, the second of them
    // stored last, so it lies in the last frame of the last pack.
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big.db"), noise(20 << 20, 9)).unwrap();
    // Stored first, in the first frame: untouched by the damage below.
    std::fs::write(src.join("a.txt"), b"intact\n").unwrap();
    let a = repo.backup_tree(&src, Default::default()).await.unwrap().id;
    // Its data packs; the pack of its nodes (a few hundred bytes) is left whole.
    let mut a_packs = packs(&dir);
    a_packs.retain(|p| std::fs::metadata(p).unwrap().len() > 1 << 20);
    let b = repo
        .backup_stream("b", &noise(2_000_000, 2)[..], Default::default())
        .await
        .unwrap()
        .id;
    // Break the last frame of each of a's packs (the byte before the sealed pack header).
    for p in &a_packs {
        let mut bytes = std::fs::read(p).unwrap();
        let n = bytes.len();
        let header = u32::from_le_bytes(bytes[n - 4..].try_into().unwrap()) as usize;
        bytes[n - 4 - header - 1] ^= 0x40;
        std::fs::write(p, bytes).unwrap();
    }
    let names: Vec<String> = a_packs
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    // Even the structural check reads list chunks: it names a pack and the snapshot.
    let report = repo.check(false).await.unwrap();
    let p = report
        .errors
        .iter()
        .find(|p| names.iter().any(|n| p.object.contains(n.as_str())))
        .unwrap_or_else(|| panic!("{report:?}"));
    assert_eq!(p.snapshots, vec![a.clone()], "{p:?}");
    let e = repo
        .restore_tree(&a, d.path().join("dst"))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert!(
        names.iter().any(|n| msg.contains(n.as_str())) && msg.contains(&a),
        "{msg}"
    );
    let mut out = Vec::new();
    repo.restore_stream(&b, &mut out).await.unwrap();
    assert!(out == noise(2_000_000, 2));
    // A partial restore reads only the chunk lists of what it restores.
    let info = repo.snapshot(&a).await.unwrap();
    let part = d.path().join("part");
    repo.restore_paths_of(&info, &part, &["a.txt".into()])
        .await
        .unwrap();
    assert_eq!(std::fs::read(part.join("a.txt")).unwrap(), b"intact\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_index_file_is_named_and_its_chunks_are_stored_again() {
    let d = tempfile::tempdir().unwrap();
    let Two { a, b, a_index, .. } = two_snapshots(d.path()).await;
    assert_eq!(a_index.len(), 1, "{a_index:?}");
    let mut bytes = std::fs::read(&a_index[0]).unwrap();
    bytes[30] ^= 0x40;
    std::fs::write(&a_index[0], bytes).unwrap();

    // A fresh open skips the damaged file; check names it, and the snapshot whose chunks
    // it indexed.
    let url = d.path().display().to_string();
    let repo = Repository::open(url.as_str(), &pass("p")).await.unwrap();
    let report = repo.check(false).await.unwrap();
    let name = a_index[0].file_name().unwrap().to_str().unwrap();
    assert!(
        report.errors.iter().any(|p| p.object.contains(name)),
        "{report:?}"
    );
    let unindexed = report
        .errors
        .iter()
        .find(|p| p.reason.contains("in no index"))
        .unwrap_or_else(|| panic!("{report:?}"));
    assert_eq!(unindexed.snapshots, vec![a.clone()], "{unindexed:?}");
    let e = repo.restore_stream(&a, &mut Vec::new()).await.unwrap_err();
    assert!(e.to_string().contains(&a), "{e}");
    let mut out = Vec::new();
    repo.restore_stream(&b, &mut out).await.unwrap();
    assert!(out == noise(2_000_000, 2));

    // Backing the same data up again stores its chunks again, which makes the old snapshot
    // whole as well.
    let again = repo
        .backup_stream("a", &noise(2_000_000, 1)[..], Default::default())
        .await
        .unwrap()
        .id;
    for s in [&again, &a] {
        let mut out = Vec::new();
        repo.restore_stream(s, &mut out).await.unwrap();
        assert!(out == noise(2_000_000, 1), "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_subsets_together_read_every_pack_once_and_name_the_damage() {
    let d = tempfile::tempdir().unwrap();
    let Two {
        repo, a, a_packs, ..
    } = two_snapshots(d.path()).await;
    for seed in 3..7 {
        repo.backup_stream("more", &noise(300_000, seed)[..], Default::default())
            .await
            .unwrap();
    }
    let mut bytes = std::fs::read(&a_packs[0]).unwrap();
    bytes[1000] ^= 0x40;
    std::fs::write(&a_packs[0], bytes).unwrap();
    let name = a_packs[0].file_name().unwrap().to_str().unwrap();

    let all = repo.check_data(ReadData::All).await.unwrap();
    assert_eq!(all.packs_read, all.packs);
    let (mut read, mut bytes_read, mut named) = (0, 0, 0);
    for n in 1..=3 {
        let r = repo
            .check_data(ReadData::parse_subset(&format!("{n}/3")).unwrap())
            .await
            .unwrap();
        assert_eq!(r.packs, all.packs);
        read += r.packs_read;
        bytes_read += r.bytes_read;
        if let Some(p) = r.errors.iter().find(|p| p.object.contains(name)) {
            assert_eq!(p.snapshots, vec![a.clone()], "{p:?}");
            named += 1;
        } else {
            assert!(r.is_ok(), "{r:?}");
        }
    }
    assert_eq!((read, bytes_read, named), (all.packs, all.bytes_read, 1));
    let none = repo.check_data(ReadData::Share(0.0)).await.unwrap();
    assert_eq!(none.packs_read, 0);
    let every = repo.check_data(ReadData::Share(1.0)).await.unwrap();
    assert_eq!(every.packs_read, all.packs);
    // A share is of the count, rounded, and at least one pack (restic's `P%`).
    let one = repo.check_data(ReadData::Share(0.001)).await.unwrap();
    assert_eq!(one.packs_read, 1);
    let half = repo.check_data(ReadData::Share(0.5)).await.unwrap();
    assert_eq!(half.packs_read, all.packs.div_ceil(2), "{half:?}");
    for bad in ["0/3", "4/3", "1/0", "3", "x/2", "150%", "-1%"] {
        let e = ReadData::parse_subset(bad).unwrap_err().to_string();
        assert!(e.contains(bad) && e.contains("N/M"), "{e}");
    }
}

/// Index files lost or damaged: prune refuses rather than delete the packs they listed, and
/// `repair_index` indexes those packs again from their own headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_index_files_are_rebuilt_from_pack_headers_and_prune_waits_for_it() {
    let d = tempfile::tempdir().unwrap();
    let Two { a, b, a_index, .. } = two_snapshots(d.path()).await;
    let all_packs = packs(d.path());
    let index = files(d.path(), "index");
    assert_eq!((a_index.len(), index.len()), (1, 2), "{index:?}");
    let url = d.path().display().to_string();
    let p = pass("p");
    let open = || Repository::open(url.as_str(), &p);

    // b's index file deleted: b's chunks are in no index file.
    let b_index = index.iter().find(|p| !a_index.contains(p)).unwrap();
    std::fs::remove_file(b_index).unwrap();
    let e = open().await.unwrap().prune(false).await.unwrap_err();
    assert!(e.to_string().contains("in no index file"), "{e}");
    assert!(e.to_string().contains("cairn repo repair index"), "{e}");
    assert_eq!(packs(d.path()), all_packs, "prune deleted nothing");
    // check points at the packs in no index and at `repair index`, not at prune.
    let report = open().await.unwrap().check(false).await.unwrap();
    assert!(
        report
            .errors
            .iter()
            .any(|p| p.reason.contains("`cairn repo repair index` indexes them")),
        "{report:?}"
    );
    assert!(
        report
            .warnings
            .iter()
            .filter(|w| w.contains("in no index"))
            .all(|w| w.contains("repair index") && !w.contains("prune removes")),
        "{report:?}"
    );

    // a's damaged as well.
    let mut bytes = std::fs::read(&a_index[0]).unwrap();
    bytes[30] ^= 0x40;
    std::fs::write(&a_index[0], bytes).unwrap();
    let e = open().await.unwrap().prune(false).await.unwrap_err();
    let name = a_index[0].file_name().unwrap().to_str().unwrap();
    assert!(e.to_string().contains(name), "{e}");
    assert_eq!(packs(d.path()), all_packs, "prune deleted nothing");

    let repo = open().await.unwrap();
    let mut r = Default::default();
    for dry_run in [true, false] {
        r = repo.repair_index(dry_run).await.unwrap();
        assert_eq!(
            (r.packs_indexed, r.index_files_removed),
            (all_packs.len(), 1),
            "{r:?}"
        );
        if dry_run {
            assert_eq!(
                files(d.path(), "index"),
                a_index,
                "a dry run writes nothing"
            );
        }
    }
    assert!(
        r.packs_unreadable.is_empty() && r.chunks_indexed > 0,
        "{r:?}"
    );

    let repo = open().await.unwrap();
    assert!(repo.check(true).await.unwrap().is_ok());
    for (s, seed) in [(&a, 1), (&b, 2)] {
        let mut out = Vec::new();
        repo.restore_stream(s, &mut out).await.unwrap();
        assert!(out == noise(2_000_000, seed), "{s}");
    }
    let p = repo.prune(false).await.unwrap();
    assert_eq!(p.packs_deleted, 0, "{p:?}");
    assert_eq!(repo.repair_index(false).await.unwrap().packs_indexed, 0);
}

/// A pack whose header is damaged cannot be indexed again; repair says which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_names_packs_whose_header_is_damaged() {
    let d = tempfile::tempdir().unwrap();
    let Two {
        a_packs, a_index, ..
    } = two_snapshots(d.path()).await;
    std::fs::remove_file(&a_index[0]).unwrap();
    let mut bytes = std::fs::read(&a_packs[0]).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x01;
    std::fs::write(&a_packs[0], bytes).unwrap();
    let url = d.path().display().to_string();
    let repo = Repository::open(url.as_str(), &pass("p")).await.unwrap();
    let r = repo.repair_index(false).await.unwrap();
    let name = a_packs[0].file_name().unwrap().to_str().unwrap();
    assert_eq!(r.packs_unreadable.len(), 1, "{r:?}");
    assert_eq!(r.packs_unreadable[0].0, name);
    assert!(r.packs_unreadable[0].1.contains("pack header"), "{r:?}");
}

/// A damaged index file that the protection period keeps stops prune only until repair has
/// indexed every pack again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_damaged_index_file_stops_prune_only_until_repair() {
    let d = tempfile::tempdir().unwrap();
    let url = d.path().display().to_string();
    let opts = InitOptions::new().protection(std::time::Duration::from_secs(86_400));
    let repo = Repository::init(url.as_str(), &pass("p"), opts)
        .await
        .unwrap();
    let a = repo
        .backup_stream("a", &noise(2_000_000, 1)[..], Default::default())
        .await
        .unwrap()
        .id;
    let index = files(d.path(), "index");
    let mut bytes = std::fs::read(&index[0]).unwrap();
    bytes[30] ^= 0x40;
    std::fs::write(&index[0], bytes).unwrap();
    let repo = Repository::open(url.as_str(), &pass("p")).await.unwrap();
    assert!(repo.prune(false).await.is_err());
    let r = repo.repair_index(false).await.unwrap();
    assert_eq!((r.packs_indexed, r.index_files_removed), (1, 0), "{r:?}");
    assert_eq!(repo.prune(false).await.unwrap().packs_deleted, 0);
    let mut out = Vec::new();
    repo.restore_stream(&a, &mut out).await.unwrap();
    assert!(out == noise(2_000_000, 1));
}

/// A pack lost while only protected index files name it is not written into prune's new
/// index: there it would be protected anew, and every backup of the data it held would go on
/// storing nothing. Once the old index file's protection ends, `repair index` drops the pack
/// and the next backup stores the data again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_does_not_carry_a_lost_pack_into_a_new_index() {
    let d = tempfile::tempdir().unwrap();
    let url = d.path().display().to_string();
    let protection = std::time::Duration::from_secs(3);
    let opts = InitOptions::new().protection(protection);
    let repo = Repository::init(url.as_str(), &pass("p"), opts)
        .await
        .unwrap();
    // c stays; b is out of its protection by the time a is saved and lost.
    repo.backup_stream("c", &noise(300_000, 3)[..], Default::default())
        .await
        .unwrap();
    let b = repo
        .backup_stream("b", &noise(300_000, 2)[..], Default::default())
        .await
        .unwrap()
        .id;
    tokio::time::sleep(protection + std::time::Duration::from_millis(300)).await;
    let (packs_before, index_before) = (files(d.path(), "data"), files(d.path(), "index"));
    let a = repo
        .backup_stream("a", &noise(300_000, 1)[..], Default::default())
        .await
        .unwrap()
        .id;
    let new = |dir: &str, before: &[std::path::PathBuf]| -> Vec<std::path::PathBuf> {
        files(d.path(), dir)
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect()
    };
    let (a_packs, a_index) = (new("data", &packs_before), new("index", &index_before));
    // a's pack is lost; only its index file, protected for a few seconds more, names it.
    for p in &a_packs {
        std::fs::remove_file(p).unwrap();
    }
    repo.forget_ids(std::slice::from_ref(&b), false)
        .await
        .unwrap();
    let pruned = repo.prune(false).await.unwrap();
    assert!(pruned.packs_deleted >= 1, "{pruned:?}");
    // The old index file's protection ends (its time set back; the index prune wrote is still
    // protected): repair drops the lost pack, and a backup of a's data stores it again, where
    // it stored nothing while an index named the lost pack.
    for p in &a_index {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - 10 * protection)
            .unwrap();
    }
    let repo = Repository::open(url.as_str(), &pass("p")).await.unwrap();
    repo.repair_index(false).await.unwrap();
    let again = repo
        .backup_stream("a", &noise(300_000, 1)[..], Default::default())
        .await
        .unwrap();
    assert!(again.summary.new_chunks > 0, "{:?} (of {a})", again.summary);
    let mut out = Vec::new();
    repo.restore_stream(&again.id, &mut out).await.unwrap();
    assert!(out == noise(300_000, 1));
}

/// A tree's nodes are in a pack of their own (format version 3): damaged, `check` names it
/// and the snapshot, restoring or listing that snapshot names both, and another tree restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_node_pack_is_named_by_check_restore_and_ls() {
    let (d, dir, repo) = local_repo().await;
    let tree = |name: &str, seed: u64| {
        let src = d.path().join(name);
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/data.bin"), noise(300_000, seed)).unwrap();
        src
    };
    let (src_a, src_b) = (tree("a", 1), tree("b", 2));
    let a = repo.backup_tree(&src_a, Default::default()).await.unwrap();
    // The pack written for a's nodes, beside its data's (300 KB).
    let node_pack = packs(&dir)
        .into_iter()
        .find(|p| std::fs::metadata(p).unwrap().len() < 4096)
        .expect("a pack of a's nodes");
    let b = repo.backup_tree(&src_b, Default::default()).await.unwrap();
    let mut bytes = std::fs::read(&node_pack).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&node_pack, bytes).unwrap();
    let name = node_pack.file_name().unwrap().to_str().unwrap();
    let report = repo.check(true).await.unwrap();
    let p = report
        .errors
        .iter()
        .find(|p| p.object.contains(name))
        .unwrap_or_else(|| panic!("{report:?}"));
    assert_eq!(p.snapshots, vec![a.id.clone()], "{p:?}");
    for e in [
        repo.restore_tree_of(&a, d.path().join("dst-a"))
            .await
            .unwrap_err(),
        repo.list_tree(&a, &[]).await.unwrap_err(),
    ] {
        let msg = e.to_string();
        assert!(msg.contains(name) && msg.contains(&a.id), "{msg}");
    }
    let dst = d.path().join("dst-b");
    repo.restore_tree_of(&b, &dst).await.unwrap();
    assert_same_tree(&src_b, &dst);
}

/// A restore over files that are there already, stopped by damage, leaves each of them as it
/// was or whole: never removed, never truncated, and no file of its own beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_restore_over_existing_files_leaves_them_as_they_were() {
    let d = tempfile::tempdir().unwrap();
    let (dir, repo, src, tree) = tree_of_files(d.path(), &["a", "b", "c"], 600_000, 10).await;
    let target = d.path().join("target");
    std::fs::create_dir_all(&target).unwrap();
    for name in ["a", "b", "c"] {
        std::fs::write(target.join(name), format!("old {name}")).unwrap();
    }
    damage_first_frames(&dir);
    let e = repo.restore_tree(&tree.id, &target).await.unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    let mut names: Vec<String> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["a", "b", "c"],
        "a file was removed, or one was left beside"
    );
    for name in ["a", "b", "c"] {
        let now = std::fs::read(target.join(name)).unwrap();
        assert!(
            now == format!("old {name}").as_bytes()
                || now == std::fs::read(src.join(name)).unwrap(),
            "{name} is neither as it was nor whole ({} bytes)",
            now.len()
        );
    }
    assert_eq!(std::fs::read(target.join("a")).unwrap(), b"old a");
}

/// A lost pack stays in the index, so a backup of the same data reuses its chunks and saves a
/// snapshot that cannot be restored. `repair_index` drops it from the index; the next backup
/// stores those chunks again, and every snapshot that needs them restores again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_pack_is_dropped_from_the_index_and_the_next_backup_heals_it() {
    let d = tempfile::tempdir().unwrap();
    let Two {
        repo, a, a_packs, ..
    } = two_snapshots(d.path()).await;
    for pack in &a_packs {
        std::fs::remove_file(pack).unwrap();
    }
    let data = noise(2_000_000, 1);
    let reused = repo
        .backup_stream("a", &data[..], Default::default())
        .await
        .unwrap();
    assert_eq!(
        reused.summary.new_chunks, 0,
        "the index still lists the lost pack"
    );
    assert!(
        repo.restore_stream(&reused.id, &mut Vec::new())
            .await
            .is_err()
    );

    // Prune refuses while the index lends backups a pack that is gone, as restic's does.
    let e = repo.prune(false).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("packs that snapshots use and the store no longer holds"),
        "{e}"
    );

    let dry = repo.repair_index(true).await.unwrap();
    let lost: Vec<String> = a_packs
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dry.packs_missing, lost, "{dry:?}");
    assert_eq!(dry.index_files_replaced, 1, "{dry:?}");
    let repaired = repo.repair_index(false).await.unwrap();
    assert_eq!(repaired.packs_missing, lost);
    assert_eq!(repaired.index_files_replaced, 1);

    let healed = repo
        .backup_stream("a", &data[..], Default::default())
        .await
        .unwrap();
    assert!(healed.summary.new_chunks > 0, "{:?}", healed.summary);
    for id in [&a, &reused.id, &healed.id] {
        let mut out = Vec::new();
        repo.restore_stream(id, &mut out).await.unwrap();
        assert!(out == data, "snapshot {id} restores other bytes");
    }
    let report = repo.check(true).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
}

/// A salvaging restore goes on past damage: every file whose data is intact is restored, and
/// the ones that are not are listed with why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_salvaging_restore_restores_all_but_the_damaged_files() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("repo");
    let url = dir.display().to_string();
    let repo = init_repo(url.as_str()).await;
    let src = d.path().join("src");
    std::fs::create_dir_all(src.join("sub/empty")).unwrap();
    for (i, name) in ["a", "b", "sub/c"].iter().enumerate() {
        std::fs::write(src.join(name), noise(600_000, 20 + i as u64)).unwrap();
    }
    std::os::unix::fs::symlink("b", src.join("link")).unwrap();
    // A name of `b` far from it in the tree: the two stay one file.
    std::fs::hard_link(src.join("b"), src.join("z-b")).unwrap();
    let tree = repo.backup_tree(&src, Default::default()).await.unwrap();
    // The start of `a`, stored first.
    damage_first_frames(&dir);
    let target = d.path().join("target");
    let progress = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let opts = cairn_repository::RestoreOptions::new()
        .progress(progress.clone())
        .total(total.clone());
    let r = repo
        .restore_paths_salvaging(&tree, &target, &[], &opts)
        .await
        .unwrap();
    assert_eq!(
        r.lost.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        ["a"],
        "{r:?}"
    );
    // The progress counts what was read and restored, once (`b` and `sub/c`), against the
    // whole selection's length (`a` too; a hard link's second name is not read).
    assert_eq!(progress.load(Ordering::Relaxed), 1_200_000);
    assert_eq!(total.load(Ordering::Relaxed), 1_800_000);
    assert!(r.lost[0].1.contains("does not match") || r.lost[0].1.contains("authentication"));
    assert!(!target.join("a").exists());
    for name in ["b", "sub/c"] {
        assert_eq!(
            std::fs::read(target.join(name)).unwrap(),
            std::fs::read(src.join(name)).unwrap()
        );
    }
    assert!(target.join("sub/empty").is_dir());
    assert_eq!(
        std::fs::read_link(target.join("link")).unwrap(),
        Path::new("b")
    );
    use std::os::unix::fs::MetadataExt as _;
    let inode = |name: &str| std::fs::metadata(target.join(name)).unwrap().ino();
    assert_eq!(inode("b"), inode("z-b"), "a hard link restored as a copy");
}

/// A restore asked to stop (Ctrl-C) stops with `Interrupted`, leaving no file half written and
/// the files it was replacing as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_asked_to_stop_leaves_nothing_half_written() {
    let d = tempfile::tempdir().unwrap();
    let (_dir, repo, src, tree) = tree_of_files(d.path(), &["a", "b"], 3_000_000, 40).await;
    let stream = repo
        .backup_stream("s", &noise(3_000_000, 42)[..], Default::default())
        .await
        .unwrap();
    let target = d.path().join("target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("a"), "old a").unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(true);
    let opts = cairn_repository::RestoreOptions::new().stop(stopped);
    let e = repo
        .restore_paths_salvaging(&tree, &target, &[], &opts)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Interrupted), "{e}");
    let names: Vec<String> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["a"], "a file half written, or one left beside");
    assert_eq!(std::fs::read(target.join("a")).unwrap(), b"old a");
    let e = repo
        .restore_stream_with(&stream, &mut Vec::new(), &opts)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Interrupted), "{e}");
    // Not asked to stop, it restores.
    drop(stop);
    let (_go, running) = tokio::sync::watch::channel(false);
    let opts = cairn_repository::RestoreOptions::new().stop(running);
    repo.restore_paths_salvaging(&tree, &target, &[], &opts)
        .await
        .unwrap();
    assert_same_tree(&src, &target);
}

/// A backup asked to stop saves no snapshot, also when it was asked after the last file was
/// read (while the uploads drained).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_asked_to_stop_after_reading_saves_no_snapshot() {
    let d = tempfile::tempdir().unwrap();
    let repo =
        crate::support::init_repo(d.path().join("repo").display().to_string().as_str()).await;
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (_stop, stopped) = tokio::sync::watch::channel(true);
    let mut opts = cairn_repository::BackupOptions::new();
    opts.stop = Some(stopped);
    let e = repo.backup_tree(&empty, opts).await.unwrap_err();
    assert!(matches!(e, Error::Interrupted), "{e}");
    assert!(
        repo.snapshots(&SnapshotFilter::new())
            .await
            .unwrap()
            .is_empty()
    );
}

/// A restore into a directory holding a directory where the snapshot has a file refuses before
/// writing anything, naming it, rather than stopping half-way; an empty one is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_where_a_file_goes_is_refused_before_anything_is_written() {
    let d = tempfile::tempdir().unwrap();
    let (_dir, repo, src, tree) = tree_of_files(d.path(), &["a", "b"], 100_000, 7).await;
    let target = d.path().join("target");
    std::fs::create_dir_all(target.join("a")).unwrap();
    std::fs::write(target.join("a/keep"), "mine").unwrap();
    let opts = cairn_repository::RestoreOptions::new();
    let e = repo
        .restore_paths_salvaging(&tree, &target, &[], &opts)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    assert!(e.to_string().contains("target/a"), "{e}");
    assert!(!target.join("b").exists(), "nothing is written");
    assert_eq!(std::fs::read(target.join("a/keep")).unwrap(), b"mine");
    // Emptied, the directory gives way to the file.
    std::fs::remove_file(target.join("a/keep")).unwrap();
    repo.restore_paths_salvaging(&tree, &target, &[], &opts)
        .await
        .unwrap();
    assert_same_tree(&src, &target);

    // What is below a symlink in the target is not looked at (the link is replaced by a
    // directory): an empty directory outside the target, where the link points, stays.
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/x"), "x").unwrap();
    let nested = repo.backup_tree(&src, Default::default()).await.unwrap();
    let outside = d.path().join("outside");
    std::fs::create_dir_all(outside.join("x")).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("sub")).unwrap();
    repo.restore_paths_salvaging(&nested, &target, &[], &opts)
        .await
        .unwrap();
    assert!(
        outside.join("x").is_dir(),
        "a directory outside the target was removed"
    );
    assert_same_tree(&src, &target);
}

/// A read-only directory a second restore made writable to fill it gets its mode back when
/// that restore stops (here for want of data).
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_made_writable_gets_its_mode_back_when_the_restore_fails() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let (dir, repo, src, _) = tree_of_files(d.path(), &["a"], 100_000, 9).await;
    std::fs::create_dir(src.join("ro")).unwrap();
    std::fs::write(src.join("ro/f"), noise(200_000, 3)).unwrap();
    std::fs::set_permissions(src.join("ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
    let tree = repo.backup_tree(&src, Default::default()).await.unwrap();
    let target = d.path().join("target");
    let opts = cairn_repository::RestoreOptions::new();
    repo.restore_paths_with(&tree, &target, &[], &opts)
        .await
        .unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&target.join("ro")), 0o555);
    // The files' data damaged, the tree's nodes (in a small pack of their own) left whole:
    // the restore makes its directories, then stops at the data.
    damage_first_frames(&dir);
    let again = Repository::open(dir.display().to_string().as_str(), &pass("p"))
        .await
        .unwrap();
    let e = again
        .restore_paths_with(&tree, &target, &[], &opts)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert_eq!(mode(&target.join("ro")), 0o555);
    std::fs::set_permissions(src.join("ro"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A byte flipped in a pack: until it is repaired, a backup of the same data deduplicates
/// against the damaged chunks and makes a snapshot that cannot be restored. `repair packs`
/// stores the pack's intact chunks again and drops the damaged ones, so the next backup stores
/// those again, and the first snapshot restores again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_packs_drops_damaged_chunks_so_the_next_backup_stores_them_again() {
    let d = tempfile::tempdir().unwrap();
    let Two {
        repo,
        a,
        b,
        a_packs,
        ..
    } = two_snapshots(d.path()).await;
    let pack = &a_packs[0];
    let mut bytes = std::fs::read(pack).unwrap();
    bytes[1000] ^= 0x40;
    std::fs::write(pack, bytes).unwrap();
    let hex = pack.file_name().unwrap().to_str().unwrap().to_string();
    let report = repo.check(true).await.unwrap();
    assert!(
        report.errors[0].reason.contains("cairn repo repair packs"),
        "{report:?}"
    );
    // The damage is carried into a new backup of the same data.
    let again = repo
        .backup_stream("a", &noise(2_000_000, 1)[..], Default::default())
        .await
        .unwrap();
    assert_eq!(again.summary.new_chunks, 0);
    assert!(
        repo.restore_stream(&again.id, &mut Vec::new())
            .await
            .is_err()
    );

    // A dry run changes nothing; an intact pack is left as it is.
    let dry = repo
        .repair_packs(&[hex[..10].to_string()], true)
        .await
        .unwrap();
    let damaged = dry.packs[0].damaged;
    assert!(damaged > 0 && damaged < dry.packs[0].chunks, "{dry:?}");
    assert!(pack.exists());
    let r = repo
        .repair_packs(std::slice::from_ref(&hex), false)
        .await
        .unwrap();
    assert_eq!(r.packs[0].damaged, damaged);
    assert!(!pack.exists());
    assert!(repo.restore_stream(&a, &mut Vec::new()).await.is_err());

    let fixed = repo
        .backup_stream("a", &noise(2_000_000, 1)[..], Default::default())
        .await
        .unwrap();
    assert_eq!(fixed.summary.new_chunks as usize, damaged);
    for id in [&a, &again.id, &fixed.id] {
        let mut out = Vec::new();
        repo.restore_stream(id, &mut out).await.unwrap();
        assert!(out == noise(2_000_000, 1), "{id}");
    }
    repo.restore_stream(&b, &mut Vec::new()).await.unwrap();
    let report = repo.check(true).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    // Nothing to repair in a pack that is whole; a name that is no pack is an error.
    let whole = packs(d.path())[0]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let r = repo.repair_packs(&[whole], false).await.unwrap();
    assert!(r.packs[0].reason.is_none(), "{r:?}");
    assert!(matches!(
        repo.repair_packs(&["ffffffffff".into()], false).await,
        Err(Error::NotFound { .. })
    ));
}

/// A tree's files keep their chunk ids in list chunks, and a backup takes a file unchanged
/// since its parent when those list chunks are indexed, without reading what they name. After
/// `repair packs` dropped damaged chunks, the lists that name them are dropped from the index
/// too: the next backup reads those files again and stores what was lost, where it made
/// another snapshot that could not be restored, and said so nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_repair_packs_a_backup_with_a_parent_stores_the_lost_chunks_again() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("repo");
    let repo = init_repo(dir.display().to_string().as_str()).await;
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        std::fs::write(src.join(name), noise(600_000, 60 + i as u64)).unwrap();
    }
    // Changed (their ctime) well before the first backup starts: taken from the parent after.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let first = repo.backup_tree(&src, Default::default()).await.unwrap();
    let again = repo.backup_tree(&src, Default::default()).await.unwrap();
    assert_eq!(again.summary.unchanged_files, 3, "{:?}", again.summary);
    let damaged = damage_first_frames(&dir);
    let r = repo.repair_packs(&damaged, false).await.unwrap();
    assert!(r.index.marked, "{r:?}");

    let healed = repo.backup_tree(&src, Default::default()).await.unwrap();
    assert!(
        healed.summary.unchanged_files < 3 && healed.summary.new_chunks > 0,
        "{:?}",
        healed.summary
    );
    for (n, id) in [&first.id, &again.id, &healed.id].into_iter().enumerate() {
        let target = d.path().join(format!("target-{n}"));
        repo.restore_tree(id, &target).await.unwrap();
        for name in ["a", "b", "c"] {
            assert!(
                std::fs::read(target.join(name)).unwrap() == std::fs::read(src.join(name)).unwrap(),
                "{name} of snapshot {id}"
            );
        }
    }
    let report = repo.check(true).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(
        report.warnings.iter().all(|w| !w.contains("foreign")),
        "{report:?}"
    );
    // The next backup takes them from its parent again.
    let next = repo.backup_tree(&src, Default::default()).await.unwrap();
    assert_eq!(next.summary.unchanged_files, 3, "{:?}", next.summary);
    // Prune keeps the marker while a snapshot older than it is left, then removes it.
    let markers = || {
        std::fs::read_dir(dir.join("repairs"))
            .map(Iterator::count)
            .unwrap_or(0)
    };
    repo.prune(false).await.unwrap();
    assert!(markers() > 0);
    repo.forget_ids(&[first.id.clone(), again.id.clone()], false)
        .await
        .unwrap();
    repo.prune(false).await.unwrap();
    assert_eq!(markers(), 0);
}

/// Data lost for good (a damaged pack repaired, the source gone): `repair snapshots` writes
/// the tree again without the files it cannot restore, so the rest restores, `check` passes
/// and prune runs; a stream with lost data is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_snapshots_leaves_out_the_files_whose_data_is_lost() {
    let d = tempfile::tempdir().unwrap();
    let (dir, repo, src, first) = tree_of_files(d.path(), &["a", "b", "c"], 600_000, 40).await;
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::os::unix::fs::symlink("b", src.join("sub/link")).unwrap();
    let tree = repo
        .backup_tree(&src, cairn_repository::BackupOptions::new().tag("nightly"))
        .await
        .unwrap();
    let stream = repo
        .backup_stream("s", &noise(300_000, 49)[..], Default::default())
        .await
        .unwrap();
    // The start of `a` (stored first) and of the stream.
    let damaged = damage_first_frames(&dir);

    // Until `repair packs` drops them, damaged chunks are in the index and count as there.
    let r = repo.repair_snapshot(&tree.id, false, true).await.unwrap();
    assert!(r.dropped.is_empty() && r.repaired.is_none(), "{r:?}");
    // A pack missing from under the index: its chunks may be whole elsewhere, which only
    // `repair index` tells; refused until it has run.
    let pack = packs(&dir)
        .into_iter()
        .find(|p| std::fs::metadata(p).unwrap().len() <= 100_000)
        .expect("a small pack");
    let saved = std::fs::read(&pack).unwrap();
    std::fs::remove_file(&pack).unwrap();
    let e = repo
        .repair_snapshot(&tree.id, false, true)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("run `cairn repo repair index` first"),
        "{e}"
    );
    std::fs::write(&pack, saved).unwrap();
    repo.repair_packs(&damaged, false).await.unwrap();

    let dry = repo
        .repair_snapshot(&tree.id[..8], true, true)
        .await
        .unwrap();
    assert_eq!(dry.dropped.len(), 1, "{dry:?}");
    assert_eq!(dry.dropped[0].0, "a");
    assert!(dry.dropped[0].1.contains("chunks are lost"), "{dry:?}");
    assert!(dry.repaired.is_none() && !dry.forgotten);
    assert_eq!(
        repo.snapshots(&SnapshotFilter::new()).await.unwrap().len(),
        3
    );

    let r = repo.repair_snapshot(&tree.id, false, true).await.unwrap();
    let new = r.repaired.clone().expect("a repaired snapshot");
    assert!(r.forgotten, "{r:?}");
    let e = repo.snapshot(&tree.id).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    let repaired = repo.snapshot(&new).await.unwrap();
    assert_eq!(repaired.time, tree.time);
    assert_eq!(repaired.kind, tree.kind);
    assert_eq!(repaired.tags, ["nightly", cairn_repository::REPAIRED_TAG]);
    assert_eq!(repaired.summary.files, 2);
    let target = d.path().join("target");
    repo.restore_tree(&new, &target).await.unwrap();
    assert!(!target.join("a").exists());
    for name in ["b", "c"] {
        assert_eq!(
            std::fs::read(target.join(name)).unwrap(),
            std::fs::read(src.join(name)).unwrap()
        );
    }
    assert_eq!(
        std::fs::read_link(target.join("sub/link")).unwrap(),
        Path::new("b")
    );
    // Found whole now, it is left alone.
    let again = repo.repair_snapshot(&new, false, true).await.unwrap();
    assert!(
        again.dropped.is_empty() && again.repaired.is_none(),
        "{again:?}"
    );
    // The first snapshot, kept beside its repair when not asked to forget it.
    let r = repo.repair_snapshot(&first.id, false, false).await.unwrap();
    assert!(r.repaired.is_some() && !r.forgotten, "{r:?}");
    // Run again, it finds that repair and writes no second one.
    let count = repo.snapshots(&SnapshotFilter::new()).await.unwrap().len();
    let again = repo.repair_snapshot(&first.id, false, false).await.unwrap();
    assert_eq!(again.repaired, r.repaired);
    assert_eq!(
        repo.snapshots(&SnapshotFilter::new()).await.unwrap().len(),
        count
    );
    repo.forget_ids(std::slice::from_ref(&first.id), false)
        .await
        .unwrap();

    // The stream cannot lose part of itself: refused, and kept.
    let e = repo
        .repair_snapshot(&stream.id, false, true)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("a stream cannot be repaired"), "{e}");
    repo.forget_ids(std::slice::from_ref(&stream.id), false)
        .await
        .unwrap();
    let report = repo.check(false).await.unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    repo.prune(false).await.unwrap();
    let report = repo.check(true).await.unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
}
