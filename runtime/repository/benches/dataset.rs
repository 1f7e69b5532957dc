//! End-to-end figures on the reference dataset (`../shared/bench/gen-dataset.py`), through the
//! library, in one process per step so peak RSS is per step.
//!
//! Run with (release build; DIR holds `day1/` and `day2/` = day1 copied then mutated):
//!
//! ```text
//! CAIRN_BENCH_DATA=DIR CAIRN_BENCH_STEP=all cargo bench -p cairn-repository --bench dataset
//! ```
//!
//! Steps: `day1`, `day2`, `restore`, `stream10g`, `frames` (per-chunk vs grouped
//! compression), or `all` (which runs each in a child process). Prints one line per step.

#![allow(clippy::unwrap_used)] // Test and bench code: a panic is the failure report.

use cairn_repository::{BackupOptions, Chunking, KdfParams, Passphrase, Repository};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn cpu_seconds() -> f64 {
    // utime + stime of this process from /proc (Linux); ticks are 1/100 s.
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn du(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            n += if m.is_dir() { du(&e.path()) } else { m.len() };
        }
    }
    n
}

fn pass() -> Passphrase {
    Passphrase::new("bench").with_params(KdfParams::default())
}

async fn run(step: &str, data: &Path, work: &Path) {
    let repo_dir = work.join("repo");
    let url = repo_dir.display().to_string();
    match step {
        "day1" => {
            let _ = std::fs::remove_dir_all(&repo_dir);
            let repo = Repository::init(url.as_str(), &pass(), Default::default())
                .await
                .unwrap();
            let (t, c) = (Instant::now(), cpu_seconds());
            let s = repo
                .backup_tree(data.join("day1"), BackupOptions::new())
                .await
                .unwrap();
            let (secs, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
            let gib = s.summary.bytes as f64 / (1u64 << 30) as f64;
            println!(
                "day1: {:.0} MB/s, {:.2} CPU s/GiB, {:.1} s, input {} B, repository {} B, peak RSS {:.0} MiB",
                s.summary.bytes as f64 / secs / 1e6,
                cpu / gib,
                secs,
                s.summary.bytes,
                du(&repo_dir),
                peak_rss_mib()
            );
        }
        "day2" => {
            let repo = Repository::open(url.as_str(), &pass()).await.unwrap();
            let before = du(&repo_dir);
            let t = Instant::now();
            let s = repo
                .backup_tree(data.join("day2"), BackupOptions::new())
                .await
                .unwrap();
            let added = du(&repo_dir) - before;
            println!(
                "day2: added {:.1} MB ({} new chunks, {:.1} MB new before compression) in {:.1} s, peak RSS {:.0} MiB",
                added as f64 / 1e6,
                s.summary.new_chunks,
                s.summary.new_bytes as f64 / 1e6,
                t.elapsed().as_secs_f64(),
                peak_rss_mib()
            );
        }
        "restore" => {
            let repo = Repository::open(url.as_str(), &pass()).await.unwrap();
            let target = work.join("restore");
            let _ = std::fs::remove_dir_all(&target);
            let (t, c) = (Instant::now(), cpu_seconds());
            let r = repo.restore_tree("latest", &target).await.unwrap();
            let secs = t.elapsed().as_secs_f64();
            println!(
                "restore: {:.0} MB/s, {:.2} CPU s/GiB, {} B in {:.1} s, peak RSS {:.0} MiB",
                r.bytes as f64 / secs / 1e6,
                (cpu_seconds() - c) / (r.bytes as f64 / (1u64 << 30) as f64),
                r.bytes,
                secs,
                peak_rss_mib()
            );
        }
        "stream10g" => {
            let dir = work.join("repo-stream");
            let _ = std::fs::remove_dir_all(&dir);
            let repo = Repository::init(dir.display().to_string(), &pass(), Default::default())
                .await
                .unwrap();
            let mut w = repo
                .stream_writer("big.sql", BackupOptions::new())
                .await
                .unwrap();
            // 10 GiB of day-1 files concatenated, one byte per 4 KiB changed differently in each of
            // the ten rounds so nothing dedups.
            let files: Vec<PathBuf> = walk(&data.join("day1"));
            let mut written = 0u64;
            let t = Instant::now();
            let mut round = 0u64;
            use tokio::io::AsyncWriteExt;
            let mut next_report = 1u64 << 30;
            'outer: loop {
                for f in &files {
                    use std::io::Read;
                    let mut file = std::fs::File::open(f).unwrap();
                    let mut b = vec![0u8; 1 << 20];
                    loop {
                        let n = file.read(&mut b).unwrap();
                        if n == 0 {
                            break;
                        }
                        for x in b[..n].iter_mut().step_by(4096) {
                            *x ^= (round as u8).wrapping_mul(2).wrapping_add(1);
                        }
                        w.write_all(&b[..n]).await.unwrap();
                        written += n as u64;
                        if written >= next_report {
                            eprintln!(
                                "stream10g: {} GiB written, peak RSS so far {:.0} MiB",
                                written >> 30,
                                peak_rss_mib()
                            );
                            next_report += 1 << 30;
                        }
                        if written >= 10 << 30 {
                            break 'outer;
                        }
                    }
                }
                round += 1;
            }
            let s = w.finish().await.unwrap();
            println!(
                "stream10g: {} B at {:.0} MB/s, peak RSS {:.0} MiB",
                s.summary.bytes,
                s.summary.bytes as f64 / t.elapsed().as_secs_f64() / 1e6,
                peak_rss_mib()
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
        "frames" => {
            // Per-chunk vs grouped compression of the day-1 relation files (8 KiB pages) and
            // dumps, through the real backup path into an in-memory repository.
            for (label, frame) in [
                ("per-chunk (8 KiB)", 8 * 1024),
                ("grouped 64 KiB", 64 << 10),
                ("grouped 128 KiB", 128 << 10),
                ("grouped 512 KiB", 512 << 10),
            ] {
                let mem = format!("memory://frames-{frame}");
                let repo = Repository::init(mem.as_str(), &pass(), Default::default())
                    .await
                    .unwrap();
                let t = Instant::now();
                let s = repo
                    .backup_tree(
                        data.join("day1"),
                        BackupOptions::new()
                            .frame_bytes(frame)
                            .chunking(Chunking::PAGES),
                    )
                    .await
                    .unwrap();
                println!(
                    "frames {label}: stored {:.1} MB of {:.1} MB ({:.3}), {:.0} MB/s",
                    s.summary.stored_bytes as f64 / 1e6,
                    s.summary.bytes as f64 / 1e6,
                    s.summary.stored_bytes as f64 / s.summary.bytes as f64,
                    s.summary.bytes as f64 / t.elapsed().as_secs_f64() / 1e6
                );
            }
        }
        "levels" => {
            // (level, level of text-like frames): the default is (1, 3).
            for (level, text) in [(1, 3), (1, 1), (1, 2), (3, 3), (-1, -1), (-3, -3)] {
                let mem = format!("memory://levels-{level}-{text}");
                let repo = Repository::init(mem.as_str(), &pass(), Default::default())
                    .await
                    .unwrap();
                let (t, c) = (Instant::now(), cpu_seconds());
                let s = repo
                    .backup_tree(
                        data.join("day1"),
                        BackupOptions::new().zstd_level(level).text_zstd_level(text),
                    )
                    .await
                    .unwrap();
                let gib = s.summary.bytes as f64 / (1u64 << 30) as f64;
                println!(
                    "zstd level {level}, text {text}: stored {:.1} MB, {:.2} CPU s/GiB, {:.0} MB/s",
                    s.summary.stored_bytes as f64 / 1e6,
                    (cpu_seconds() - c) / gib,
                    s.summary.bytes as f64 / t.elapsed().as_secs_f64() / 1e6
                );
            }
        }
        "cdc" => {
            // Repository size after day 1 and day-2 bytes added, per chunking of the tree's
            // files: picked per file (the default), or one for every file.
            for (label, c) in [
                ("per file", None),
                ("pages 8k", Some(Chunking::PAGES)),
                ("cdc 16k", Some(Chunking::FILES)),
                ("cdc 32k", Some(Chunking::STREAM)),
            ] {
                let dir = work.join("cdc");
                let _ = std::fs::remove_dir_all(&dir);
                let url = dir.display().to_string();
                let repo = Repository::init(url.as_str(), &pass(), Default::default())
                    .await
                    .unwrap();
                let opts = || match c {
                    Some(c) => BackupOptions::new().chunking(c),
                    None => BackupOptions::new(),
                };
                let one = repo.backup_tree(data.join("day1"), opts()).await.unwrap();
                let day1 = du(&dir);
                repo.backup_tree(data.join("day2"), opts()).await.unwrap();
                println!(
                    "chunking {label}: day 1 {} chunks, repository {:.1} MB; day 2 added {:.1} MB",
                    one.summary.new_chunks,
                    day1 as f64 / 1e6,
                    (du(&dir) - day1) as f64 / 1e6,
                );
            }
        }
        other => panic!("unknown step {other}"),
    }
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(p).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            v.extend(walk(&e.path()));
        } else {
            v.push(e.path());
        }
    }
    v.sort();
    v
}

fn main() {
    let Ok(data) = std::env::var("CAIRN_BENCH_DATA") else {
        eprintln!(
            "dataset bench skipped: set CAIRN_BENCH_DATA to a directory holding day1/ and day2/"
        );
        return;
    };
    let data = PathBuf::from(data);
    let work = PathBuf::from(
        std::env::var("CAIRN_BENCH_WORK").unwrap_or_else(|_| "/tmp/cairn-bench".into()),
    );
    std::fs::create_dir_all(&work).unwrap();
    let step = std::env::var("CAIRN_BENCH_STEP").unwrap_or_else(|_| "all".into());
    if step == "all" {
        for s in ["day1", "day2", "restore"] {
            let st = std::process::Command::new(std::env::current_exe().unwrap())
                .env("CAIRN_BENCH_STEP", s)
                .status()
                .unwrap();
            assert!(st.success());
        }
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(&step, &data, &work));
}
