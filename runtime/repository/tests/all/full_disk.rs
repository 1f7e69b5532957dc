//! A full disk: under the repository during a backup, and under the target of a restore. The
//! failure is a clear "storage full" error naming what was being written; nothing that was
//! saved is damaged; once space is freed, `check` is clean (unreferenced data at most), earlier
//! snapshots restore bit-exact and a rerun of the backup completes, reusing what was uploaded.
//!
//! Each test mounts its own small tmpfs (tests run as root; CI too) and unmounts it on drop.

use crate::support::*;
use cairn_repository::{Error, Repository, SnapshotFilter};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of a given size mounted on a fresh temporary directory; unmounted on drop (also
/// when the test panics), before the directory is removed.
struct Tmpfs {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&mnt)
            .output()
            .expect("running mount(8): this test needs util-linux's mount");
        assert!(
            out.status.success(),
            "mounting a {mib} MiB tmpfs on {} failed ({}): this test needs root (CAP_SYS_ADMIN) \
             to mount a tmpfs; run it as root",
            mnt.display(),
            one_line(&out.stderr)
        );
        Self { mnt, _dir: dir }
    }

    /// Grows (or shrinks) the filesystem in place, keeping its contents.
    fn resize(&self, mib: u64) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.mnt)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "remounting {} with {mib} MiB failed: {}",
            self.mnt.display(),
            one_line(&out.stderr)
        );
    }

    fn path(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a file left open by a failing test): detach it lazily.
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// A command's stderr on one line.
fn one_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Incompressible files totalling `n * mib` MiB.
fn big_tree(root: &Path, n: u64, mib: usize, seed: u64) {
    std::fs::create_dir_all(root).unwrap();
    for i in 0..n {
        std::fs::write(
            root.join(format!("blob{i}.bin")),
            noise(mib << 20, seed + i),
        )
        .unwrap();
    }
}

/// Every file under `root` with its size and content hash, for "nothing changed" checks.
fn fingerprint(root: &Path) -> Vec<(String, u64, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let data = std::fs::read(&p).unwrap();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.push((
                    rel,
                    data.len() as u64,
                    blake3::hash(&data).to_hex().to_string(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// Asserts `e` is a "storage full" error on the expected side and that its message says so.
fn assert_full(e: &Error, repository: Option<&str>, names: &str) {
    let text = e.to_string();
    let Error::StorageFull {
        path,
        repository: repo,
        ..
    } = e
    else {
        panic!("expected a storage-full error, got: {text}");
    };
    assert_eq!(repo.as_deref(), repository, "{text}");
    assert!(path.contains(names), "{text}: should name {names}");
    assert!(text.contains(path.as_str()), "{text}");
    assert!(text.contains("No space left on device"), "{text}");
    assert!(text.contains("is full"), "{text}");
    assert!(text.contains("free space"), "{text}: should say what to do");
    assert!(!text.contains('\n'), "{text}: should be one line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_into_a_full_repository_fails_cleanly_and_resumes() {
    timed(async {
        let fs = Tmpfs::mount(24);
        let url = fs.path().join("repo").display().to_string();
        let repo = init_repo(url.as_str()).await;
        // An earlier snapshot that fits.
        let src = tempfile::tempdir().unwrap();
        let small = src.path().join("small");
        make_tree(&small, 1);
        let s0 = repo.backup_tree(&small, Default::default()).await.unwrap();

        // 36 MiB of incompressible data into a 24 MiB filesystem.
        let big = src.path().join("big");
        big_tree(&big, 3, 12, 100);
        let e = repo
            .backup_tree(&big, Default::default())
            .await
            .expect_err("a 36 MiB backup cannot fit in 24 MiB");
        assert_full(&e, Some(url.as_str()), "data/");
        // A stream's writer, which an export's command writes into, says why it stopped too:
        // the command only sees its write fail.
        let mut w = repo
            .stream_writer("big.sql", Default::default())
            .await
            .unwrap();
        let mut failed = None;
        for i in 0..64 {
            let block = noise(1 << 20, 1000 + i);
            if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut w, &block).await {
                failed = Some(e);
                break;
            }
        }
        let e = failed.expect("64 MiB more cannot fit either");
        assert!(
            e.to_string().contains("No space left on device"),
            "{e}: should say why the backup stopped"
        );
        drop(w);
        let snaps = repo.snapshots(&SnapshotFilter::new()).await.unwrap();
        assert_eq!(snaps.len(), 1, "the failed backup wrote a snapshot");

        // Free space: the repository is consistent, with unreferenced data at most.
        fs.resize(160);
        let repo = Repository::open(url.as_str(), &pass("p")).await.unwrap();
        let report = repo.check(true).await.unwrap();
        assert!(report.is_ok(), "{report:?}");
        for w in &report.warnings {
            assert!(w.contains("prune removes"), "unexpected warning: {w}");
        }
        let out = tempfile::tempdir().unwrap();
        repo.restore_tree(&s0.id, out.path()).await.unwrap();
        assert_same_tree(&small, out.path());

        // The rerun completes and reuses the data uploaded before the disk filled.
        let s1 = repo.backup_tree(&big, Default::default()).await.unwrap();
        assert!(
            s1.summary.new_chunks < s1.summary.chunks,
            "the rerun uploaded all {} chunks again: packs written before the disk filled \
             were not indexed (pipeline.rs packer_loop must index the packs written before an \
             upload failed)",
            s1.summary.chunks
        );
        let out = tempfile::tempdir().unwrap();
        repo.restore_tree(&s1.id, out.path()).await.unwrap();
        assert_same_tree(&big, out.path());
        repo.prune(false).await.unwrap();
        let report = repo.check(true).await.unwrap();
        assert!(report.is_ok() && report.warnings.is_empty(), "{report:?}");
        drop(repo);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_onto_a_full_disk_fails_cleanly_and_changes_nothing() {
    timed(async {
        let d = tempfile::tempdir().unwrap();
        let repo_dir = d.path().join("repo");
        let url = repo_dir.display().to_string();
        let repo = init_repo(url.as_str()).await;
        let src = d.path().join("src");
        // Three files, each written by the writer the file before it did not write: the
        // second does not fit, and the restore names it rather than the third, which its
        // writer could not finish once the restore stopped.
        big_tree(&src, 3, 8, 200);
        let tree = repo.backup_tree(&src, Default::default()).await.unwrap();
        let stream = repo
            .backup_stream("db.dump", &noise(12 << 20, 300)[..], Default::default())
            .await
            .unwrap();
        let before = fingerprint(&repo_dir);

        let fs = Tmpfs::mount(12);
        // A tree: the error names the file that did not fit.
        let target = fs.path().join("restored");
        let e = repo
            .restore_tree(&tree.id, &target)
            .await
            .expect_err("24 MiB cannot be restored into 12 MiB");
        assert_full(&e, None, &target.display().to_string());
        // What is left is whole: the file that did not fit was removed, not left truncated.
        let source = fingerprint(&src);
        let left = fingerprint(&target);
        assert!(
            left.len() < source.len() && left.iter().all(|f| source.contains(f)),
            "left behind: {left:?}"
        );
        // A stream into a file on the full disk.
        let file = tokio::fs::File::create(fs.path().join("db.dump"))
            .await
            .unwrap();
        let e = repo
            .restore_stream(&stream.id, file)
            .await
            .expect_err("a 12 MiB stream cannot be restored into the 4 MiB left");
        assert_full(&e, None, "");

        assert_eq!(before, fingerprint(&repo_dir), "the repository changed");
        let report = repo.check(true).await.unwrap();
        assert!(report.is_ok() && report.warnings.is_empty(), "{report:?}");
    })
    .await;
}
