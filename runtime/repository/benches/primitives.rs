//! In-process figures for the data path's primitives and an in-memory end-to-end round trip.
//!
//! Run with `cargo bench -p cairn-repository --bench primitives`.

use cairn_repository::bench_internals as b;
use cairn_repository::{BackupOptions, Chunking, KdfParams, Passphrase, Repository};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

/// 8 MiB of database-like input: half text, half 8 KiB pages with low-entropy columns.
fn sample() -> Vec<u8> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let words = [
        "alpha ",
        "bravo ",
        "INSERT INTO t VALUES (",
        "42, 'x');\n",
        "pending ",
        "shipped ",
    ];
    let mut out = Vec::with_capacity(8 << 20);
    while out.len() < 4 << 20 {
        out.extend_from_slice(words[(next() % words.len() as u64) as usize].as_bytes());
    }
    out.truncate(4 << 20);
    while out.len() < 8 << 20 {
        let mut page = vec![0u8; 8192];
        for (i, v) in page.iter_mut().enumerate() {
            *v = if i % 128 < 64 {
                (next() & 0x0f) as u8
            } else if i > 6000 {
                0
            } else {
                next() as u8
            };
        }
        out.extend_from_slice(&page);
    }
    out
}

fn primitives(c: &mut Criterion) {
    let data = sample();
    let mut g = c.benchmark_group("primitives");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("chunk fastcdc 32k", |bn| {
        bn.iter(|| black_box(b::chunk_count(Chunking::STREAM, &data)))
    });
    g.bench_function("chunk pages 8k", |bn| {
        bn.iter(|| black_box(b::chunk_count(Chunking::PAGES, &data)))
    });
    g.bench_function("blake3 keyed 8k chunks", |bn| {
        bn.iter(|| black_box(b::hash_chunks(&data, 8192)))
    });
    g.bench_function("zstd-1 per 8k chunk", |bn| {
        bn.iter(|| black_box(b::compressed_size(&data, 8192, 1)))
    });
    g.bench_function("zstd-1 per 128k frame", |bn| {
        bn.iter(|| black_box(b::compressed_size(&data, 128 << 10, 1)))
    });
    g.bench_function("aes-256-gcm 128k frames", |bn| {
        bn.iter(|| black_box(b::seal_size(&data, 128 << 10)))
    });
    g.finish();
    eprintln!(
        "compressed size of the sample: per 8 KiB chunk {} B, per 128 KiB frame {} B, of {} B",
        b::compressed_size(&data, 8192, 1),
        b::compressed_size(&data, 128 << 10, 1),
        data.len()
    );
}

fn index(c: &mut Criterion) {
    let mut g = c.benchmark_group("index");
    g.sample_size(10);
    for n in [136_537u32, 1 << 20] {
        let f = b::IndexFixture::new(n);
        g.throughput(Throughput::Elements(u64::from(n)));
        g.bench_function(format!("build {n}"), |bn| bn.iter(|| black_box(f.build())));
        g.bench_function(format!("look up {n}"), |bn| {
            bn.iter(|| black_box(f.look_up()))
        });
    }
    g.finish();
}

fn end_to_end(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let data = sample();
    let pass = Passphrase::new("bench").with_params(KdfParams::insecure_for_tests());
    let mut g = c.benchmark_group("end-to-end in memory");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("backup stream (new repository each time)", |bn| {
        bn.iter(|| {
            rt.block_on(async {
                let url = format!("memory://bench-{}", uuid::Uuid::new_v4().simple());
                let repo = Repository::init(url.as_str(), &pass, Default::default())
                    .await
                    .expect("init");
                black_box(
                    repo.backup_stream("s", &data[..], BackupOptions::new())
                        .await
                        .expect("backup"),
                )
            })
        })
    });
    let (repo, id) = rt.block_on(async {
        let repo = Repository::init("memory://bench-restore", &pass, Default::default())
            .await
            .expect("init");
        let s = repo
            .backup_stream("s", &data[..], BackupOptions::new())
            .await
            .expect("backup");
        (repo, s.id)
    });
    g.bench_function("restore stream", |bn| {
        bn.iter(|| {
            rt.block_on(async {
                black_box(
                    repo.restore_stream(&id, tokio::io::sink())
                        .await
                        .expect("restore"),
                )
            })
        })
    });
    g.finish();
}

criterion_group!(benches, primitives, index, end_to_end);
criterion_main!(benches);
