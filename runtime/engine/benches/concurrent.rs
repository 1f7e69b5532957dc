//! 500 concurrent actions on one engine: wall time and peak RSS.
//!
//! Run with `cargo bench -p cairn-engine --bench concurrent [-- ACTION [N]]` (default: `hello`,
//! 500). Prints, for example:
//!
//! ```text
//! 500 concurrent `hello` actions: all ok in 180 ms; peak RSS 120 MiB (pooling allocator: true)
//! ```

use std::time::Instant;

#[allow(dead_code)]
#[path = "../tests/all/support.rs"]
mod support;

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    // `cargo bench` passes `--bench`; ignore flags.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let action = args.first().cloned().unwrap_or_else(|| "hello".into());
    let n: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(500);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let fixture = std::sync::Arc::new(support::Fixture::new());
        let blueprint = support::misbehave().await;
        let engine = support::engine();
        let before = peak_rss_kib();
        let start = Instant::now();
        let runs = (0..n).map(|_| {
            let (fixture, blueprint) = (fixture.clone(), blueprint.clone());
            let action = action.clone();
            tokio::spawn(async move {
                engine.run(&blueprint, &fixture.host, support::request(&action)).await.map(|r| r.ok)
            })
        });
        let results = futures::future::join_all(runs).await;
        let elapsed = start.elapsed();
        let ok = results.iter().filter(|r| matches!(r, Ok(Ok(true)))).count();
        println!(
            "{n} concurrent `{action}` actions: {ok} ok in {} ms; peak RSS {} MiB (before the runs: {} MiB; pooling allocator: {})",
            elapsed.as_millis(),
            peak_rss_kib().unwrap_or(0) / 1024,
            before.unwrap_or(0) / 1024,
            engine.pooling()
        );
        assert_eq!(ok, n, "every action succeeded");
    });
}
