//! The catalog's DR figures with 100,000 restore points.
//!
//! Run with `cargo bench -p cairn-catalog`. Prints the sizes first, e.g.
//!
//! ```text
//! catalog: 100000 restore points, file 128.5 MiB, populated in 2.81s
//! export_minimal after 100 new restore points: 100 changes, 88.6 KiB
//! export_full: 100100 records, 86.2 MiB (legacy/incremental ratio 996x)
//! ```
//!
//! then criterion's timings of `export_minimal`, `export_full`, `snapshot_to`,
//! `refresh_snapshot` (a rolling snapshot brought forward by the 100 new points), `open`
//! (verified and not) and `import_full` (decode and import into a fresh catalog).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_catalog::{Artifact, Catalog, Delta, DrMode, Location, RestorePoint, Target};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use jiff::Timestamp;

/// The catalog size of the issue's DR benchmark.
const RESTORE_POINTS: u64 = 100_000;
/// The new restore points of one DR run.
const NEW: u64 = 100;

fn restore_point(i: u64) -> RestorePoint {
    let id = format!("rp-{i:08}-5f0c2d1e-7b3a-4c9e-8d2f-1a6b3c4d5e6f");
    RestorePoint {
        id: id.clone(),
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
        artifacts: vec![
            Artifact {
                name: "dump".to_owned(),
                values: BTreeMap::from([
                    ("snapshot".to_owned(), format!("{i:064x}")),
                    ("lsn".to_owned(), "0/16B3748".to_owned()),
                    ("bytes".to_owned(), "734003200".to_owned()),
                ]),
            },
            Artifact {
                name: "volumes".to_owned(),
                values: BTreeMap::from([(
                    "data-postgres-0".to_owned(),
                    format!("snapcontent-{i:08}"),
                )]),
            },
        ],
        snapshots: vec![format!("{i:064x}")],
        values: Vec::new(),
        policy: Some("hourly-gfs".to_owned()),
        params: None,
        partly_deleted: None,
    }
}

fn populate(catalog: &Catalog, range: std::ops::Range<u64>) {
    catalog
        .write(|tx| {
            for i in range {
                tx.save(&restore_point(i))?;
            }
            Ok(())
        })
        .expect("populate the catalog");
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn dr(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("catalog.redb");
    let catalog = Catalog::open(&path).expect("open the catalog");
    let started = Instant::now();
    populate(&catalog, 0..RESTORE_POINTS);
    println!(
        "catalog: {RESTORE_POINTS} restore points, file {:.1} MiB, populated in {:.2?}",
        mib(file_len(&path) as usize),
        started.elapsed()
    );
    let cursor = catalog.current_seq().expect("current sequence");
    let rolling_base = dir.path().join("rolling-base.redb");
    catalog.snapshot_to(&rolling_base).expect("base snapshot");
    populate(&catalog, RESTORE_POINTS..RESTORE_POINTS + NEW);

    let minimal = catalog
        .export_minimal(cursor, DrMode::NoSnapshot)
        .expect("export_minimal");
    let minimal_bytes = minimal.to_bytes().expect("encode").len();
    let full = catalog.export_full().expect("export_full");
    let full_encoded = full.to_bytes().expect("encode");
    println!(
        "export_minimal after {NEW} new restore points: {} changes, {:.1} KiB",
        minimal.changes().len(),
        minimal_bytes as f64 / 1024.0
    );
    println!(
        "export_full: {} records, {:.1} MiB (legacy/incremental ratio {:.0}x)",
        full.changes().len(),
        mib(full_encoded.len()),
        full_encoded.len() as f64 / minimal_bytes as f64
    );

    let mut group = c.benchmark_group("catalog-100k");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));

    group.bench_function("export_minimal(100 new)+encode", |b| {
        b.iter(|| {
            let delta = catalog
                .export_minimal(black_box(cursor), DrMode::NoSnapshot)
                .expect("export_minimal");
            delta.to_bytes().expect("encode").len()
        })
    });

    group.bench_function("export_full+encode", |b| {
        b.iter(|| {
            catalog
                .export_full()
                .expect("export_full")
                .to_bytes()
                .expect("encode")
                .len()
        })
    });

    let mut n = 0u64;
    group.bench_function("snapshot_to", |b| {
        b.iter_batched(
            || {
                n += 1;
                dir.path().join(format!("snapshot-{n}.redb"))
            },
            |target| {
                catalog.snapshot_to(&target).expect("snapshot_to");
                // Deleted when dropped, after the measurement.
                tempfile::TempPath::try_from_path(target).expect("absolute path")
            },
            BatchSize::PerIteration,
        )
    });

    // The local-snapshot mode's rolling snapshot: cut before the 100 new points, then brought
    // forward by them.
    group.bench_function("refresh_snapshot(100 new)", |b| {
        b.iter_batched(
            || {
                let copy = tempfile::NamedTempFile::new_in(dir.path()).expect("temporary file");
                std::fs::copy(&rolling_base, copy.path()).expect("copy the base snapshot");
                copy
            },
            |copy| {
                catalog
                    .refresh_snapshot(copy.path())
                    .expect("refresh_snapshot");
                copy
            },
            BatchSize::PerIteration,
        )
    });

    drop(catalog);
    group.bench_function("open (verified)", |b| {
        b.iter(|| Catalog::open(&path).expect("open").cluster_id())
    });
    group.bench_function("open (unverified)", |b| {
        b.iter(|| {
            Catalog::options()
                .verify(false)
                .open(&path)
                .expect("open")
                .cluster_id()
        })
    });

    group.bench_function("import_full(decode+import)", |b| {
        b.iter_batched(
            || {
                let file = tempfile::NamedTempFile::new_in(dir.path()).expect("temporary file");
                (Catalog::open(file.path()).expect("fresh catalog"), file)
            },
            |(fresh, file)| {
                let delta = Delta::from_slice(&full_encoded).expect("decode");
                fresh.import_full(&delta).expect("import_full");
                (fresh, file)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, dr);
criterion_main!(benches);
