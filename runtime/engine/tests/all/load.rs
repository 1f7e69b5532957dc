//! Loading: what is not a blueprint is refused by name; a blueprint is described once.

use std::time::Duration;

use cairn_engine::{Capability, Error, LoadedFrom};

use crate::support::{engine, guest, misbehave};

#[tokio::test]
async fn a_blueprint_is_checked_and_described() {
    let blueprint = misbehave().await;
    assert!(blueprint.digest().starts_with("sha256:") && blueprint.digest().len() == 71);
    assert_eq!(blueprint.wit_version(), "0.1.0");
    let d = blueprint.description();
    assert_eq!(d.name, "misbehave");
    assert!(d.has_action("backup") && d.has_action("spin"));
    assert!(d.capabilities.contains(&Capability::Exec));
    let json = serde_json::to_value(d).expect("serializable");
    assert_eq!(json["capabilities"][0], "exec");
    assert_eq!(json["parameters"][1]["kind"], "integer");
    let again = misbehave().await;
    assert_eq!(again.loaded_from(), LoadedFrom::Memory);
}

#[tokio::test]
async fn garbage_is_not_a_component() {
    let err = engine()
        .load(b"#!/bin/sh\necho hi\n")
        .await
        .expect_err("garbage");
    assert!(matches!(err, Error::NotAComponent { .. }), "{err:?}");
    assert!(err.to_string().contains("WebAssembly magic bytes"), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notes.wasm");
    std::fs::write(&path, b"hello").expect("write");
    let err = engine().load_file(&path).await.expect_err("garbage file");
    assert!(
        err.to_string().starts_with(&format!(
            "{} is not a WebAssembly component",
            path.display()
        )),
        "{err}"
    );
}

#[tokio::test]
async fn a_core_module_is_not_a_component() {
    // The smallest core module: magic and version 1.
    let err = engine()
        .load(b"\0asm\x01\0\0\0")
        .await
        .expect_err("core module");
    assert!(
        err.to_string().contains("is a core WebAssembly module"),
        "{err}"
    );
    assert!(err.to_string().contains("wasm32-wasip2"), "{err}");
}

#[tokio::test]
async fn an_unknown_wit_major_is_refused_by_name() {
    let err = engine()
        .load_file(&guest("future-wit"))
        .await
        .expect_err("future WIT");
    assert!(matches!(err, Error::IncompatibleWit { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("built against cairn:blueprint@9.0.0 but this runtime supports 0.1.0"),
        "{msg}"
    );
    assert!(
        msg.contains("rebuild it against cairn:blueprint@0.1.0"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_component_without_describe_is_not_a_blueprint() {
    let err = engine()
        .load_file(&guest("no-describe"))
        .await
        .expect_err("no describe");
    assert!(matches!(err, Error::NotABlueprint { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("does not export cairn:blueprint/guest@0.1.0 (`describe` and `run`)"),
        "{msg}"
    );
    assert!(msg.contains("it exports hello"), "{msg}");
}

/// `describe()` blocked in a WASI sleep is out of the epoch deadline's reach: loading still
/// ends, a little after the describe deadline, naming the cause.
#[tokio::test]
async fn a_describe_blocked_in_a_host_call_ends_the_load() {
    let started = std::time::Instant::now();
    let err = engine()
        .load_file(&guest("slow-describe"))
        .await
        .expect_err("blocked describe");
    assert!(matches!(err, Error::Describe { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("did not return within 10 s"), "{msg}");
    assert!(msg.contains("blocked in a host call"), "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

/// A blueprint needing a newer runtime is refused to run, but comes with its description (for
/// `cairn blueprint inspect`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blueprint_needing_a_newer_runtime_is_refused_but_described() {
    match engine().load_file(&guest("future-runtime")).await {
        Err(cairn_engine::Error::RuntimeTooOld {
            needed, blueprint, ..
        }) => {
            assert_eq!(needed, "99.0.0");
            assert_eq!(blueprint.description().name, "future-runtime");
        }
        other => panic!("expected RuntimeTooOld, got {other:?}"),
    }
}
