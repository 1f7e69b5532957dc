//! `cairn dr`: the whole story per mode (populate, run DR, lose the instance, review, restore
//! on a fresh one, compare with the protection matrix, refuse maintenance, take ownership,
//! maintain), and the faults.

use std::path::Path;
use std::process::Output;

use crate::support::{Cairn, json, run_hello, stderr, stdout, wasm};

const PASSPHRASE: &str = "raw:correct horse battery staple";

/// Every kind, with whether a recovery in `mode` brings it back (the issue's test table).
fn recovered(kind: &str, mode: &str) -> bool {
    let snapshot_restored = mode == "exported-snapshot";
    match kind {
        "action" | "local-restore-point" => mode == "legacy" || snapshot_restored,
        "exported-restore-point" | "policy" | "profile" | "blueprint" => true,
        "report" | "action-pod-spec" | "audit-config" => false,
        _ => mode != "legacy",
    }
}

/// The kinds stored through `cairn catalog put` (all but the ones `cairn run` records).
const PUT_KINDS: &[&str] = &[
    "exported-restore-point",
    "policy",
    "policy-preset",
    "profile",
    "blueprint",
    "blueprint-binding",
    "transform-set",
    "multi-cluster-primary",
    "multi-cluster-secondary",
    "storage-security-context",
    "storage-security-context-binding",
    "basic-user-policy",
    "report",
    "action-pod-spec",
    "audit-config",
];

fn dr_wasm() -> String {
    wasm("dr").to_str().expect("utf-8 path").to_owned()
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
}

fn backup_hello(cairn: &Cairn) {
    ok(&run_hello(cairn, "backup", &["--grant", "exec"]));
}

fn put(cairn: &Cairn, kind: &str, key: &str) {
    let file = cairn.home.path().join(format!("{kind}-{key}.json"));
    std::fs::write(&file, format!(r#"{{"name": "{key}", "kind": "{kind}"}}"#)).expect("write");
    ok(&cairn.run(&[
        "catalog",
        "put",
        kind,
        key,
        "--json",
        file.to_str().expect("utf-8"),
    ]));
}

fn counts(cairn: &Cairn) -> serde_json::Value {
    let out = cairn.run(&["catalog", "ls", "--output", "json"]);
    ok(&out);
    json(&out)
}

fn count(counts: &serde_json::Value, kind: &str) -> u64 {
    counts
        .as_array()
        .expect("counts")
        .iter()
        .find(|c| c["kind"] == kind)
        .unwrap_or_else(|| panic!("no count for {kind}: {counts}"))["count"]
        .as_u64()
        .expect("a count")
}

fn dr_run(cairn: &Cairn) -> Output {
    cairn.run(&["dr", "run", "--blueprint", &dr_wasm(), "--output", "json"])
}

/// An instance with DR enabled in `mode` to `profile`, populated with every kind, and two DR
/// runs done (so that a restore walks a chain of two points). Returns its cluster id.
fn populated(cairn: &Cairn, profile: &Path, mode: &str) -> String {
    backup_hello(cairn);
    for kind in PUT_KINDS {
        put(cairn, kind, "one");
    }
    let out = cairn.run(&[
        "dr",
        "enable",
        "--profile",
        profile.to_str().expect("utf-8"),
        "--mode",
        mode,
        "--passphrase-from",
        PASSPHRASE,
    ]);
    ok(&out);
    let text = stdout(&out);
    assert!(
        text.contains("cluster id")
            && text.contains("passphrase source")
            && text.contains("profile"),
        "enable names the three things to keep: {text}"
    );
    assert!(
        !text.contains("battery"),
        "the raw passphrase is never printed: {text}"
    );
    let first = dr_run(cairn);
    ok(&first);
    assert_eq!(json(&first)["from"], 0);
    // A second increment: a new restore point and a record of each kind.
    backup_hello(cairn);
    for kind in PUT_KINDS {
        put(cairn, kind, "two");
    }
    let second = dr_run(cairn);
    ok(&second);
    let (first, second) = (json(&first), json(&second));
    if mode == "legacy" {
        assert_eq!(second["from"], 0, "legacy exports a full copy: {second}");
    } else {
        assert_eq!(second["from"], first["to"], "an increment: {second}");
    }
    let out = cairn.run(&["dr", "status", "--output", "json"]);
    ok(&out);
    let status = json(&out);
    assert_eq!(status["mode"], mode);
    assert_eq!(status["last_run"]["to"], second["to"]);
    status["cluster_id"]
        .as_str()
        .expect("cluster id")
        .to_owned()
}

fn source<'a>(profile: &'a str, cluster_id: &'a str) -> Vec<&'a str> {
    vec![
        "--profile",
        profile,
        "--cluster-id",
        cluster_id,
        "--passphrase-from",
        PASSPHRASE,
    ]
}

fn review(cairn: &Cairn, profile: &str, cluster_id: &str, extra: &[&str]) -> Output {
    let mut args = vec!["dr", "review"];
    args.extend(source(profile, cluster_id));
    args.extend_from_slice(extra);
    cairn.run(&args)
}

fn restore(cairn: &Cairn, profile: &str, cluster_id: &str, extra: &[&str]) -> Output {
    let wasm = dr_wasm();
    let mut args = vec!["dr", "restore", "--blueprint", wasm.as_str()];
    args.extend(source(profile, cluster_id));
    args.extend_from_slice(extra);
    cairn.run(&args)
}

/// A backup repository the instance maintains, and `cairn repo forget` on it.
fn forget(cairn: &Cairn) -> Output {
    let repo = cairn.home.path().join("maintained");
    let pass = cairn.home.path().join("maintained.pass");
    std::fs::write(&pass, "maintained").expect("write");
    let (repo, pass) = (repo.to_str().expect("utf-8"), pass.to_str().expect("utf-8"));
    if !Path::new(repo).exists() {
        ok(&cairn.run(&["repo", "init", "--repo", repo, "--passphrase-file", pass]));
    }
    cairn.run(&[
        "repo",
        "forget",
        "--keep-last",
        "1",
        "--repo",
        repo,
        "--passphrase-file",
        pass,
    ])
}

fn story(mode: &str) {
    let profile = tempfile::tempdir().expect("tempdir");
    let profile_url = profile.path().to_str().expect("utf-8").to_owned();
    let cluster_id = {
        let lost = Cairn::new();
        populated(&lost, profile.path(), mode)
        // The instance is lost: its home is deleted here.
    };

    let fresh = Cairn::new();
    let out = review(&fresh, &profile_url, &cluster_id, &["--output", "json"]);
    ok(&out);
    let points = json(&out);
    let points = points.as_array().expect("points");
    assert_eq!(points.len(), 2, "{points:?}");
    assert!(
        points[0]["to"].as_u64() > points[1]["to"].as_u64(),
        "newest first: {points:?}"
    );
    assert!(points.iter().all(|p| p["mode"] == mode), "{points:?}");

    let out = restore(&fresh, &profile_url, &cluster_id, &[]);
    ok(&out);
    assert!(stdout(&out).contains("take-ownership"), "{}", stdout(&out));

    let counts = counts(&fresh);
    for kind in PUT_KINDS.iter().chain(&["action", "local-restore-point"]) {
        let expected = if recovered(kind, mode) { 2 } else { 0 };
        assert_eq!(
            count(&counts, kind),
            expected,
            "mode {mode}: {kind} should {}be recovered: {counts}",
            if expected == 0 { "not " } else { "" }
        );
    }

    // Maintenance is refused until this instance takes ownership.
    let out = forget(&fresh);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cairn dr take-ownership"),
        "{}",
        stderr(&out)
    );
    let out = fresh.run(&["dr", "status", "--output", "json"]);
    ok(&out);
    assert_eq!(json(&out)["maintenance_owner"], false);
    assert_eq!(json(&out)["restored_from"], cluster_id.as_str());
    ok(&fresh.run(&["dr", "take-ownership"]));
    ok(&forget(&fresh));

    // The recovered catalog works: a restore point that came back restores.
    if recovered("local-restore-point", mode) {
        let out = fresh.run(&["catalog", "ls", "local-restore-point", "--output", "json"]);
        let id = json(&out)[0]["key"].as_str().expect("id").to_owned();
        let out = run_hello(&fresh, "restore", &["--grant", "exec", "--from-point", &id]);
        ok(&out);
    }
}

#[test]
fn local_snapshot_story() {
    story("local-snapshot");
}

#[test]
fn exported_snapshot_story() {
    story("exported-snapshot");
}

#[test]
fn no_snapshot_story() {
    story("no-snapshot");
}

#[test]
fn legacy_story() {
    story("legacy");
}

#[test]
fn recovery_faults_are_clear_errors() {
    let profile = tempfile::tempdir().expect("tempdir");
    let profile_url = profile.path().to_str().expect("utf-8").to_owned();
    let lost = Cairn::new();
    let cluster_id = populated(&lost, profile.path(), "no-snapshot");
    let fresh = Cairn::new();

    // A wrong passphrase.
    let out = fresh.run(&[
        "dr",
        "review",
        "--profile",
        &profile_url,
        "--cluster-id",
        &cluster_id,
        "--passphrase-from",
        "raw:wrong",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("wrong DR passphrase"),
        "{}",
        stderr(&out)
    );

    // A wrong cluster id, and one that is not an id at all.
    let other = "6f1d3c2a-5b4e-4f7a-9c8d-0e1f2a3b4c5d";
    let out = review(&fresh, &profile_url, other, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no DR data for cluster"),
        "{}",
        stderr(&out)
    );
    let out = review(&fresh, &profile_url, "prod", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a cluster id"),
        "{}",
        stderr(&out)
    );

    // A profile with no DR data.
    let empty = tempfile::tempdir().expect("tempdir");
    let out = review(
        &fresh,
        empty.path().to_str().expect("utf-8"),
        &cluster_id,
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no DR data for cluster"),
        "{}",
        stderr(&out)
    );

    // `--before` with no points before it.
    let out = review(
        &fresh,
        &profile_url,
        &cluster_id,
        &["--before", "2000-01-01T00:00:00Z"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no DR point before"),
        "{}",
        stderr(&out)
    );
    let out = review(
        &fresh,
        &profile_url,
        &cluster_id,
        &["--before", "2999-01-01T00:00:00Z"],
    );
    ok(&out);

    // A restore into an instance that is not empty.
    let out = restore(&lost, &profile_url, &cluster_id, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));

    // An unknown point.
    let out = restore(&fresh, &profile_url, &cluster_id, &["--point", "ffffffff"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no such DR point"),
        "{}",
        stderr(&out)
    );

    // Nothing above touched the fresh instance: a restore of an older point still works.
    let out = review(&fresh, &profile_url, &cluster_id, &["--output", "json"]);
    let older = json(&out)[1]["id"].as_str().expect("id").to_owned();
    ok(&restore(
        &fresh,
        &profile_url,
        &cluster_id,
        &["--point", &older],
    ));
    let counts = counts(&fresh);
    assert_eq!(
        count(&counts, "policy"),
        1,
        "only the first point's: {counts}"
    );
}

#[test]
fn a_corrupted_dr_artifact_is_refused() {
    let profile = tempfile::tempdir().expect("tempdir");
    let profile_url = profile.path().to_str().expect("utf-8").to_owned();
    let lost = Cairn::new();
    let cluster_id = populated(&lost, profile.path(), "no-snapshot");
    // Flip a byte in the middle of every file under the DR location's data.
    let mut damaged = 0;
    let mut stack = vec![profile.path().join(&cluster_id)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().contains("data") {
                let mut bytes = std::fs::read(&path).expect("read");
                if bytes.len() > 64 {
                    let mid = bytes.len() / 2;
                    bytes[mid] ^= 0xff;
                    std::fs::write(&path, bytes).expect("write");
                    damaged += 1;
                }
            }
        }
    }
    assert!(damaged > 0, "found no data files to damage");
    let fresh = Cairn::new();
    let out = restore(&fresh, &profile_url, &cluster_id, &[]);
    assert!(
        !out.status.success(),
        "a damaged point must not restore: {}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("DR point") || err.contains("corrupt") || err.contains("damaged"),
        "{err}"
    );
    // Nothing half-restored: the fresh catalog has no records.
    let counts = counts(&fresh);
    let total: u64 = counts
        .as_array()
        .expect("counts")
        .iter()
        .filter_map(|c| c["count"].as_u64())
        .sum();
    assert_eq!(total, 0, "{counts}");
}

#[test]
fn two_dr_runs_at_once_never_break_the_chain() {
    let profile = tempfile::tempdir().expect("tempdir");
    let profile_url = profile.path().to_str().expect("utf-8").to_owned();
    let lost = Cairn::new();
    let cluster_id = populated(&lost, profile.path(), "local-snapshot");
    put(&lost, "policy", "three");
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| dr_run(&lost));
        let b = s.spawn(|| dr_run(&lost));
        (a.join().expect("thread"), b.join().expect("thread"))
    });
    let succeeded = [&a, &b].iter().filter(|o| o.status.success()).count();
    assert!(succeeded >= 1, "{}\n{}", stderr(&a), stderr(&b));
    for out in [&a, &b] {
        if !out.status.success() {
            assert!(
                stderr(out).contains("in use by another cairn process"),
                "{}",
                stderr(out)
            );
        }
    }
    let fresh = Cairn::new();
    ok(&restore(&fresh, &profile_url, &cluster_id, &[]));
    assert_eq!(count(&counts(&fresh), "policy"), 3);
}

#[test]
fn the_catalog_capability_is_never_granted_by_hand() {
    let cairn = Cairn::new();
    let out = run_hello(&cairn, "backup", &["--grant", "exec,catalog"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("DR blueprint only"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn dr_needs_enabling_and_a_passphrase() {
    let cairn = Cairn::new();
    let out = dr_run(&cairn);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cairn dr enable"), "{}", stderr(&out));
    let profile = tempfile::tempdir().expect("tempdir");
    let out = cairn.run(&[
        "dr",
        "enable",
        "--profile",
        profile.path().to_str().expect("utf-8"),
        "--passphrase-from",
        "env:CAIRN_TEST_NO_SUCH_VARIABLE",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("CAIRN_TEST_NO_SUCH_VARIABLE"),
        "{}",
        stderr(&out)
    );
    let out = cairn.run(&["dr", "status"]);
    ok(&out);
    assert!(stdout(&out).contains("not enabled"), "{}", stdout(&out));
}

#[test]
fn a_dr_run_killed_midway_leaves_no_half_point_and_the_next_run_completes() {
    let profile = tempfile::tempdir().expect("tempdir");
    let profile_url = profile.path().to_str().expect("utf-8").to_owned();
    let lost = Cairn::new();
    let cluster_id = populated(&lost, profile.path(), "exported-snapshot");
    // Kill DR runs at different moments; whatever each got to, the invariants must hold.
    for (i, delay) in [150u64, 400, 900, 1600].into_iter().enumerate() {
        put(&lost, "policy", &format!("killed-{i}"));
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["dr", "run", "--blueprint", &dr_wasm()])
            .env("CAIRN_HOME", lost.home.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cairn runs");
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
    }
    put(&lost, "policy", "last");
    ok(&dr_run(&lost));
    // Every point review offers restores, and the latest has everything.
    let out = review(&lost, &profile_url, &cluster_id, &["--output", "json"]);
    ok(&out);
    let fresh = Cairn::new();
    ok(&restore(&fresh, &profile_url, &cluster_id, &[]));
    assert_eq!(count(&counts(&fresh), "policy"), 2 + 4 + 1);
    assert_eq!(count(&counts(&fresh), "action"), 2);
}
