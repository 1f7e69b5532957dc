//! The compile cache: a second engine deserializes; a corrupted or foreign entry is ignored.

use cairn_engine::{Engine, EngineConfig, LoadedFrom};

use crate::support::guest;

fn entries(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .expect("cache dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_engine_loads_from_the_cache_and_bad_entries_are_recompiled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = std::fs::read(guest("misbehave")).expect("guest");
    let load = || async {
        let engine = Engine::new(EngineConfig::with_cache_dir(dir.path())).expect("engine");
        let blueprint = engine.load(&wasm).await.expect("load");
        assert_eq!(blueprint.description().name, "misbehave");
        blueprint.loaded_from()
    };
    assert_eq!(load().await, LoadedFrom::Compiled);
    let files = entries(dir.path());
    assert_eq!(files.len(), 1, "one entry: {files:?}");
    assert!(dir.path().join("cache.key").exists());
    assert_eq!(load().await, LoadedFrom::DiskCache);

    // Corrupt one byte of the compiled code: the MAC no longer matches.
    let mut bytes = std::fs::read(&files[0]).expect("entry");
    let n = bytes.len() / 2;
    bytes[n] ^= 0xff;
    std::fs::write(&files[0], &bytes).expect("corrupt");
    assert_eq!(load().await, LoadedFrom::Compiled);
    assert_eq!(load().await, LoadedFrom::DiskCache);

    // A foreign entry: wasmtime's own serialization without our header, under the right name.
    let payload = std::fs::read(&files[0]).expect("entry");
    std::fs::write(&files[0], &payload[40..]).expect("foreign");
    assert_eq!(load().await, LoadedFrom::Compiled);

    // A key that changed (another runtime's cache directory): every entry is foreign.
    std::fs::write(dir.path().join("cache.key"), [7u8; 32]).expect("key");
    assert_eq!(load().await, LoadedFrom::Compiled);
    assert_eq!(load().await, LoadedFrom::DiskCache);
}
