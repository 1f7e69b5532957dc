//! `kill -9` during backups: every earlier snapshot still restores, `check` finds at most
//! unreferenced data, prune removes it (unfinished uploads too), and a rerun completes reusing
//! what was indexed. And `kill -9` during prunes: every snapshot that was not forgotten still
//! restores bit-exact.

use crate::support::*;
use cairn_repository::{BackupOptions, Repository, SnapshotFilter};
use std::process::Command;

/// Trials of kill -9 at a random point of a backup.
const TRIALS: u64 = 50;
const CHILD_ENV: &str = "CAIRN_CRASH_CHILD_REPO";

fn child_data(seed: u64) -> Vec<u8> {
    let mut d = text(6_000_000, seed);
    d.extend(noise(6_000_000, seed + 1000));
    d
}

/// Runs in the child process only: a backup that the parent kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    let seed: u64 = std::env::var("CAIRN_CRASH_SEED").unwrap().parse().unwrap();
    let repo = Repository::open(url.as_str(), &pass("p")).await.unwrap();
    repo.backup_stream("victim", &child_data(seed)[..], BackupOptions::new())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_backup_keeps_earlier_snapshots() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let url = d.path().join("repo").display().to_string();
    let repo = init_repo(url.as_str()).await;
    let base = noise(3_000_000, 77);
    let s0 = repo
        .backup_stream("base", &base[..], Default::default())
        .await
        .unwrap();
    let exe = std::env::current_exe().unwrap();
    let child = |seed: u64| {
        Command::new(&exe)
            .args([
                "--exact",
                "crash::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &url)
            .env("CAIRN_CRASH_SEED", seed.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // How long a whole child takes here: the kills are spread over that life and a little
    // past it.
    let started = std::time::Instant::now();
    assert!(child(0).wait().unwrap().success());
    let life = started.elapsed();
    let mut completed = 0;
    let mut killed = None;
    for trial in 0..TRIALS {
        // Data of its own, so no child finishes early by deduplicating against one before.
        let mut child = child(trial + 100);
        // Kill at a pseudo-random instant of the child's life (startup, chunking, upload,
        // index, commit); this wait is the fault injection itself, not a synchronisation.
        let share = 0.05 + 1.1 * f64::from(noise(1, trial)[0]) / 256.0;
        std::thread::sleep(life.mul_f64(share));
        child.kill().unwrap(); // SIGKILL on Unix
        if child.wait().unwrap().success() {
            completed += 1;
        } else {
            killed = Some(trial + 100);
        }
        let repo = Repository::open(url.as_str(), &pass("p")).await.unwrap();
        let mut out = Vec::new();
        repo.restore_stream(&s0.id, &mut out).await.unwrap();
        assert!(out == base, "trial {trial}: the earlier snapshot changed");
        let report = repo.check(false).await.unwrap();
        assert!(report.is_ok(), "trial {trial}: {report:?}");
    }
    eprintln!(
        "{completed} of {TRIALS} children finished before the kill (a whole one takes {life:?})"
    );
    let repo = Repository::open(url.as_str(), &pass("p")).await.unwrap();
    // Every snapshot that committed restores bit-exact.
    for s in repo
        .snapshots(&SnapshotFilter::new().source("victim"))
        .await
        .unwrap()
    {
        repo.restore_stream(&s.id, &mut Vec::new()).await.unwrap();
    }
    // A rerun of the last killed backup completes, deduplicating against whatever the killed
    // one indexed before it died (its packs are indexed every 16 packs, more than this holds).
    let rerun = killed.expect("every child finished before its kill");
    let s = repo
        .backup_stream("victim", &child_data(rerun)[..], BackupOptions::new())
        .await
        .unwrap();
    eprintln!(
        "rerun: {} of {} chunks new",
        s.summary.new_chunks, s.summary.chunks
    );
    // Prune removes what the dead backups left (their locks too); check is then clean with
    // data, and the rerun's snapshot restores bit-exact.
    let left = staging_files(d.path());
    let pruned = repo.prune(false).await.unwrap();
    eprintln!(
        "{} unfinished uploads left by the kills, {} removed by prune",
        left.len(),
        pruned.unfinished_removed
    );
    let report = repo.check(true).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    // Nothing the dead backups began writing is left behind, listed or not: of what they
    // wrote, at once; of their locks (written outside the locks), once idle a minute.
    let left = staging_files(d.path());
    assert!(
        left.iter().all(|f| f.contains("/locks/")),
        "left by the kills: {left:?}"
    );
    for f in &left {
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
        let file = std::fs::File::options().write(true).open(f).unwrap();
        file.set_modified(old).unwrap();
    }
    assert_eq!(
        repo.prune(false).await.unwrap().unfinished_removed,
        left.len()
    );
    assert_eq!(staging_files(d.path()), Vec::<String>::new());
    let mut out = Vec::new();
    repo.restore_stream(&s.id, &mut out).await.unwrap();
    assert!(out == child_data(rerun));
}

/// Files under `dir` named as `object_store`'s local uploads stage them: `NAME#DIGITS`.
fn staging_files(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            } else if name
                .rsplit_once('#')
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            {
                found.push(e.path().display().to_string());
            }
        }
    }
    found
}

const PRUNE_CHILD_ENV: &str = "CAIRN_CRASH_PRUNE_REPO";
/// Kills land this many milliseconds or less into a prune: the prunes here take 0.2–1.4 s in
/// a debug build, so most are killed, at every step, and a few finish.
const PRUNE_KILL_WITHIN_MS: u64 = 300;

/// Runs in the child process only: a prune that the parent kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_child() {
    let Ok(url) = std::env::var(PRUNE_CHILD_ENV) else {
        return;
    };
    let repo = Repository::open(url.as_str(), &pass("p")).await.unwrap();
    // The parent times its kill from here, so it lands in the prune, not in the start-up.
    println!("{PRUNE_STARTS}");
    repo.prune(false).await.unwrap();
}

/// What the prune child prints once the repository is open.
const PRUNE_STARTS: &str = "cairn-crash: prune starts";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_prune_keeps_every_kept_snapshot() {
    if std::env::var_os(CHILD_ENV).is_some() || std::env::var_os(PRUNE_CHILD_ENV).is_some() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let url = d.path().join("repo").display().to_string();
    init_repo(url.as_str()).await;
    let exe = std::env::current_exe().unwrap();
    // Every trial adds a snapshot to keep and one to forget, so each prune has work to do:
    // the forgotten one is stored first and holds the kept one's data too, so its pack is
    // left half used and is repacked, besides the pack only it used, which is deleted.
    let mut kept: Vec<(String, Vec<u8>)> = Vec::new();
    let mut completed = 0;
    for trial in 0..TRIALS {
        let repo = Repository::open(url.as_str(), &pass("p")).await.unwrap();
        let keep = noise(100_000, 5000 + trial);
        let doomed = repo
            .backup_stream(
                "doomed",
                &[&keep[..], &noise(100_000, 9000 + trial)].concat()[..],
                Default::default(),
            )
            .await
            .unwrap();
        let gone = repo
            .backup_stream(
                "doomed",
                &noise(100_000, 7000 + trial)[..],
                Default::default(),
            )
            .await
            .unwrap();
        let s = repo
            .backup_stream("keep", &keep[..], Default::default())
            .await
            .unwrap();
        kept.push((s.id, keep));
        repo.forget_snapshot(&doomed.id).await.unwrap();
        repo.forget_snapshot(&gone.id).await.unwrap();
        drop(repo);

        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash::prune_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PRUNE_CHILD_ENV, &url)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut lines =
            std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        assert!(
            lines.any(|l| l.is_ok_and(|l| l.contains(PRUNE_STARTS))),
            "trial {trial}: the prune child did not start"
        );
        // The fault injection: kill at a pseudo-random instant of the prune.
        let delay = (u64::from(noise(1, trial + 500)[0]) * PRUNE_KILL_WITHIN_MS) / 256;
        std::thread::sleep(std::time::Duration::from_millis(delay));
        child.kill().unwrap();
        if child.wait().unwrap().success() {
            completed += 1;
        }

        let repo = Repository::open(url.as_str(), &pass("p")).await.unwrap();
        for (id, data) in &kept {
            let mut out = Vec::new();
            repo.restore_stream(id, &mut out)
                .await
                .unwrap_or_else(|e| panic!("trial {trial}: kept snapshot {id}: {e}"));
            assert!(out == *data, "trial {trial}: kept snapshot {id} changed");
        }
        let report = repo.check(false).await.unwrap();
        assert!(report.is_ok(), "trial {trial}: {report:?}");
    }
    eprintln!("{completed} of {TRIALS} prunes finished before the kill");
    // Two prunes that run to the end (the second deletes the packs the first repacked) leave
    // a repository that checks clean with its data.
    let repo = Repository::open(url.as_str(), &pass("p")).await.unwrap();
    repo.prune(false).await.unwrap();
    repo.prune(false).await.unwrap();
    let r = repo.prune(true).await.unwrap();
    assert_eq!((r.packs_deleted, r.packs_repacked), (0, 0), "{r:?}");
    let report = repo.check(true).await.unwrap();
    assert!(report.is_ok() && report.warnings.is_empty(), "{report:?}");
    assert_eq!(
        repo.snapshots(&SnapshotFilter::new()).await.unwrap().len(),
        kept.len()
    );
}
