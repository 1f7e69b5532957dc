//! Cairn's own DR end to end, through the real `cairn` binary and the DR blueprint: with a
//! catalog of 100,000 restore points, a `cairn dr run` after 100 new restore points per mode
//! (time, and bytes exported), then per mode `cairn dr review` and `cairn dr restore` of the
//! whole catalog into a fresh home (an incremental mode restores a chain of points).
//!
//! `cargo bench -p cairn-cli --bench dr` (`CAIRN_BENCH_KEEP=1` keeps the homes, to profile a
//! run). Each figure includes a process start and loading the DR blueprint from the compile
//! cache; review and restore also the Argon2id derivation of the DR key (a DR run uses the key
//! cached in the home), which the in-process catalog figures (`cargo bench -p cairn-catalog`)
//! do not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_catalog::{Artifact, Catalog, Location, RestorePoint, Target};
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use jiff::Timestamp;

const RESTORE_POINTS: u64 = 100_000;
const NEW: u64 = 100;
const PASSPHRASE: &str = "raw:benchmark passphrase";

fn restore_point(i: u64) -> RestorePoint {
    RestorePoint {
        id: format!("rp-{i:08}-5f0c2d1e-7b3a-4c9e-8d2f-1a6b3c4d5e6f"),
        location: Location::Exported {
            repository: "s3://cairn-backups/prod-eu-west-1".to_owned(),
            profile: Some("prod".to_owned()),
        },
        blueprint: "postgres".to_owned(),
        blueprint_digest: "sha256:6a1f0e1c1d5b2f7e0c5f1b9d3e2a4c6b8d0f2e4a6c8b0d2f4e6a8c0b2d4f6e8a"
            .to_owned(),
        action: "backup".to_owned(),
        action_id: format!("act-{i:08}-0e9d8c7b-6a5f-4e3d-2c1b-0a9f8e7d6c5b"),
        target: Target {
            namespace: format!("tenant-{}", i % 500),
            workload: Some("statefulset/postgres".to_owned()),
        },
        created: Timestamp::from_second(1_790_000_000 + i as i64).unwrap_or(Timestamp::UNIX_EPOCH),
        artifacts: vec![Artifact {
            name: "dump".to_owned(),
            values: BTreeMap::from([
                ("snapshot".to_owned(), format!("{i:064x}")),
                ("bytes".to_owned(), "734003200".to_owned()),
            ]),
        }],
        snapshots: vec![format!("{i:064x}")],
        values: Vec::new(),
        policy: Some("hourly-gfs".to_owned()),
        params: None,
        partly_deleted: None,
    }
}

fn populate(home: &Path, range: std::ops::Range<u64>) {
    let catalog = Catalog::open(home.join("catalog.redb")).expect("open the catalog");
    catalog
        .write(|tx| {
            for i in range {
                tx.save(&restore_point(i))?;
            }
            Ok(())
        })
        .expect("populate the catalog");
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds the DR blueprint (release) and returns its component.
fn dr_wasm() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("guests");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            "dr",
        ])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(workspace())
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the DR blueprint failed");
    target.join("wasm32-wasip2/release/dr.wasm")
}

fn cairn(home: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env("CAIRN_HOME", home)
        .env_remove("RUST_LOG")
        .output()
        .expect("cairn runs");
    assert!(
        out.status.success(),
        "cairn {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn dr(c: &mut Criterion) {
    let wasm = dr_wasm();
    let wasm = wasm.to_str().expect("utf-8 path");
    let mut group = c.benchmark_group("dr-100k");
    // Every iteration is a process run of a second or more: ten flat samples, one iteration each.
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for mode in [
        "local-snapshot",
        "exported-snapshot",
        "no-snapshot",
        "legacy",
    ] {
        let mut home = tempfile::tempdir().expect("tempdir");
        let mut profile = tempfile::tempdir().expect("tempdir");
        if std::env::var_os("CAIRN_BENCH_KEEP").is_some() {
            // To profile a run afterwards: the homes and DR locations stay.
            println!(
                "{mode}: home {}, DR location {}",
                home.path().display(),
                profile.path().display()
            );
            home.disable_cleanup(true);
            profile.disable_cleanup(true);
        }
        populate(home.path(), 0..RESTORE_POINTS);
        cairn(
            home.path(),
            &[
                "dr",
                "enable",
                "--profile",
                profile.path().to_str().expect("utf-8"),
                "--mode",
                mode,
                "--passphrase-from",
                PASSPHRASE,
                // The bench compresses hourly runs into seconds: keep-last stands in for the
                // hourly rule that keeps each hour's point, so chains stay incremental (a run
                // that starts a new chain costs what the first run does).
                "--keep-last",
                "48",
            ],
        );
        let started = Instant::now();
        let first = cairn(
            home.path(),
            &["dr", "run", "--blueprint", wasm, "--output", "json"],
        );
        println!(
            "{mode}: first DR run of {RESTORE_POINTS} restore points: {:.2?}, {} bytes",
            started.elapsed(),
            first["bytes"]
        );
        let mut next = RESTORE_POINTS;
        let mut bytes = Vec::new();
        group.bench_function(format!("dr run after {NEW} new/{mode}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    populate(home.path(), next..next + NEW);
                    next += NEW;
                    let started = Instant::now();
                    let run = cairn(
                        home.path(),
                        &["dr", "run", "--blueprint", wasm, "--output", "json"],
                    );
                    total += started.elapsed();
                    bytes.push(run["bytes"].as_u64().unwrap_or(0));
                }
                total
            })
        });
        let max = bytes.iter().max().copied().unwrap_or(0);
        println!("{mode}: a DR run after {NEW} new restore points exports at most {max} bytes");
        // Review and restore of what the runs built: for the incremental modes a chain (the
        // first run's whole minimal catalog, then the increments), for legacy one full copy.
        let status = cairn(home.path(), &["dr", "status", "--output", "json"]);
        let cluster_id = status["cluster_id"]
            .as_str()
            .expect("cluster id")
            .to_owned();
        let source = [
            "--profile",
            profile.path().to_str().expect("utf-8"),
            "--cluster-id",
            cluster_id.as_str(),
            "--passphrase-from",
            PASSPHRASE,
        ];
        let review: Vec<&str> = ["dr", "review", "--output", "json"]
            .into_iter()
            .chain(source)
            .collect();
        let points = cairn(home.path(), &review);
        println!(
            "{mode}: {} DR points to restore from",
            points.as_array().map_or(0, Vec::len)
        );
        group.bench_function(format!("review/{mode}"), |b| {
            b.iter(|| cairn(home.path(), &review))
        });
        let restore: Vec<&str> = ["dr", "restore", "--blueprint", wasm, "--output", "json"]
            .into_iter()
            .chain(source)
            .collect();
        group.bench_function(format!("restore whole catalog/{mode}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let fresh = tempfile::tempdir().expect("tempdir");
                    let started = Instant::now();
                    let restored = cairn(fresh.path(), &restore);
                    total += started.elapsed();
                    assert_eq!(restored["status"], "succeeded", "{restored}");
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, dr);
criterion_main!(benches);
