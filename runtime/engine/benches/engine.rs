//! Engine benchmarks: warm dispatch, a host call round trip, loading from the compile cache,
//! and compiling. Run with `cargo bench -p cairn-engine --bench engine`.

use std::time::Duration;

use cairn_engine::{Engine, EngineConfig, RunRequest};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[allow(dead_code)]
#[path = "../tests/all/support.rs"]
mod support;

/// Log calls per run in the round-trip benchmark: enough that the run's own overhead is noise.
const CALLS: u64 = 10_000;

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let wasm = std::fs::read(support::guest("misbehave")).expect("guest");
    let fixture = support::Fixture::new();
    let blueprint = rt.block_on(support::misbehave());
    let engine = support::engine();

    c.bench_function("warm_dispatch_instantiate_describe", |b| {
        b.to_async(&rt)
            .iter(|| async { engine.describe(&blueprint).await.expect("describe") })
    });

    c.bench_function("run_noop_action", |b| {
        b.to_async(&rt).iter(|| async {
            let report = engine
                .run(&blueprint, &fixture.host, support::request("noop"))
                .await
                .expect("run");
            assert!(report.ok);
        })
    });

    let mut group = c.benchmark_group("host_call_round_trip");
    group.throughput(Throughput::Elements(CALLS));
    group.bench_function("log", |b| {
        b.to_async(&rt).iter(|| async {
            let mut req: RunRequest = support::request("log-n");
            req.params.push(("count".into(), CALLS.to_string()));
            let report = engine
                .run(&blueprint, &fixture.host, req)
                .await
                .expect("run");
            assert!(report.ok);
        })
    });
    group.finish();

    let cache = tempfile::tempdir().expect("tempdir");
    let cached = Engine::new(EngineConfig::with_cache_dir(cache.path())).expect("engine");
    let digest = rt
        .block_on(cached.load(&wasm))
        .expect("load")
        .digest()
        .to_string();
    c.bench_function("load_from_compile_cache", |b| {
        b.to_async(&rt).iter(|| async {
            cached.evict(&digest);
            let bp = cached.load(&wasm).await.expect("load");
            assert_eq!(bp.loaded_from(), cairn_engine::LoadedFrom::DiskCache);
        })
    });

    let uncached = Engine::new(EngineConfig::default()).expect("engine");
    let mut group = c.benchmark_group("compile");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("compile_new_component", |b| {
        b.to_async(&rt).iter(|| async {
            uncached.evict(&digest);
            let bp = uncached.load(&wasm).await.expect("load");
            assert_eq!(bp.loaded_from(), cairn_engine::LoadedFrom::Compiled);
        })
    });
    group.finish();
}

criterion_group!(engine_benches, benches);
criterion_main!(engine_benches);
