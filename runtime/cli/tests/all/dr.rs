//! `cairn dr`: the whole story per mode (populate, run DR, lose the instance, review, restore
//! on a fresh one, compare with the protection matrix, refuse maintenance, take ownership,
//! maintain), and the faults.

use std::path::Path;
use std::process::Output;

use crate::support::{
    Cairn, HELLO_INVENTORY, hello_wasm, json, ok, run_hello, stderr, stdout, wasm,
};

const PASSPHRASE: &str = "raw:correct horse battery staple";

/// Every kind, with whether a recovery in `mode` brings it back (the test table).
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

/// A usage error (exit 2) whose message names `needle`.
fn refused_with(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(2), "{}", stderr(out));
    assert!(stderr(out).contains(needle), "{}", stderr(out));
}

fn backup_hello(cairn: &Cairn) {
    ok(&run_hello(cairn, "backup", &["--grant", "exec"]));
}

fn put(cairn: &Cairn, kind: &str, key: &str) {
    let mut record = serde_json::json!({ "name": key, "kind": kind });
    // Policies as `serve --operator` keeps them from Kubernetes resources.
    if kind == "policy" {
        record["origin"] = "kube:cairn".into();
    }
    cairn.put_record(kind, key, &record);
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
    let out = enable(cairn, profile, mode, &[]);
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
    // What the mode will never bring back is said, by kind, with its count.
    // (Kinds no mode carries are rebuilt or set up anew, and not named.)
    let never = ["report", "action-pod-spec", "audit-config"];
    for kind in PUT_KINDS
        .iter()
        .filter(|kind| !never.contains(kind) && !recovered(kind, mode))
    {
        assert!(
            stderr(&out).contains(&format!("{kind} (1)")),
            "{kind} not named: {}",
            stderr(&out)
        );
    }
    if mode.ends_with("-snapshot") && mode != "no-snapshot" {
        assert!(!stderr(&out).contains("does not carry"), "{}", stderr(&out));
    }
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

/// `dr review` of a profile without `--cluster-id`: the location's only cluster.
fn review_any(cairn: &Cairn, profile: &str) -> Output {
    cairn.run(&[
        "dr",
        "review",
        "--profile",
        profile,
        "--passphrase-from",
        PASSPHRASE,
    ])
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

    // Policies resources kept are marked restored: no operator here deletes them for want of
    // their resources, and the command line may change them.
    let out = fresh.run(&["catalog", "ls", "policy", "--output", "json"]);
    let origins: Vec<serde_json::Value> = json(&out)
        .as_array()
        .expect("policies")
        .iter()
        .map(|p| p["value"]["origin"].clone())
        .collect();
    assert_eq!(
        origins,
        ["kube:cairn#restored", "kube:cairn#restored"],
        "{origins:?}"
    );
    ok(&fresh.run(&["policy", "delete", "one"]));

    // Maintenance is refused until this instance takes ownership.
    let out = forget(&fresh);
    refused_with(&out, "cairn dr take-ownership");
    let out = fresh.run(&["dr", "status", "--output", "json"]);
    ok(&out);
    assert_eq!(json(&out)["maintenance_owner"], false);
    assert_eq!(json(&out)["restored_from"], cluster_id.as_str());
    ok(&fresh.run(&["dr", "take-ownership"]));
    ok(&forget(&fresh));
    // Its catalog is its own from now on: another restore would mix the two.
    refused_with(
        &restore(&fresh, &profile_url, &cluster_id, &[]),
        "took over from cluster",
    );

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

/// A location two clusters' DR shares: a recovery that does not say which is refused, naming
/// both, and one that does reviews that cluster's points.
#[test]
fn a_recovery_from_a_location_of_two_clusters_names_them() {
    let profile = tempfile::tempdir().expect("tempdir");
    let profile_url = profile.path().to_str().expect("utf-8").to_owned();
    let (one, two) = (Cairn::new(), Cairn::new());
    let mut ids = [
        populated(&one, profile.path(), "no-snapshot"),
        populated(&two, profile.path(), "no-snapshot"),
    ];
    ids.sort();
    let fresh = Cairn::new();
    let out = review_any(&fresh, &profile_url);
    refused_with(
        &out,
        &format!(
            "holds the DR data of 2 clusters: {}, {}; say which with --cluster-id",
            ids[0], ids[1]
        ),
    );
    ok(&review(&fresh, &profile_url, &ids[1], &[]));
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
    refused_with(&out, "wrong DR passphrase");

    // A wrong cluster id, and one that is not an id at all.
    let other = "6f1d3c2a-5b4e-4f7a-9c8d-0e1f2a3b4c5d";
    let out = review(&fresh, &profile_url, other, &[]);
    refused_with(&out, "no DR data for cluster");
    refused_with(&out, &format!("(it holds DR data of: {cluster_id})"));
    let out = review(&fresh, &profile_url, "prod", &[]);
    refused_with(&out, "not a cluster id");
    // No cluster id: the location's only cluster (the lost instance's id went with it).
    let out = review_any(&fresh, &profile_url);
    ok(&out);
    assert!(
        stderr(&out).contains(&format!("cluster {cluster_id}, the only one")),
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
    refused_with(&out, "no DR data for cluster");
    let out = review_any(&fresh, empty.path().to_str().expect("utf-8"));
    refused_with(&out, "no DR data at");
    // A mistyped local profile: nothing there, said as such.
    let missing = empty.path().join("no-such-dir");
    let out = review_any(&fresh, missing.to_str().expect("utf-8"));
    refused_with(&out, "no DR data at");

    // `--before` with no points before it.
    let out = review(
        &fresh,
        &profile_url,
        &cluster_id,
        &["--before", "2000-01-01T00:00:00Z"],
    );
    refused_with(&out, "no DR point before");
    let out = review(
        &fresh,
        &profile_url,
        &cluster_id,
        &["--before", "2999-01-01T00:00:00Z"],
    );
    ok(&out);

    // A restore into an instance that is not empty.
    let out = restore(&lost, &profile_url, &cluster_id, &[]);
    refused_with(&out, "not empty");

    // An unknown point.
    let out = restore(&fresh, &profile_url, &cluster_id, &["--point", "ffffffff"]);
    refused_with(&out, "no such DR point");

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

/// Every file below `dir`, with its modification time.
fn files_below(
    dir: &Path,
) -> std::collections::BTreeMap<std::path::PathBuf, std::time::SystemTime> {
    let mut found = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                found.insert(entry.path(), meta.modified().expect("mtime"));
            }
        }
    }
    found
}

/// A DR run of `cairn` after a new policy record `key`, whose packs but the last (its
/// manifest's, written last) are then damaged: a restore of it fails part way. Returns the
/// damaged packs' bytes as they were, to mend them.
fn damaged_run(
    cairn: &Cairn,
    profile: &Path,
    cluster_id: &str,
    key: &str,
) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let data = profile.join(cluster_id).join("data");
    let before = files_below(&data);
    put_and_run(cairn, key);
    let mut new: Vec<_> = files_below(&data)
        .into_iter()
        .filter(|(p, _)| !before.contains_key(p))
        .collect();
    new.sort_by_key(|(_, mtime)| *mtime);
    new.pop().expect("the manifest's pack");
    assert!(!new.is_empty(), "the run wrote more than its manifest");
    new.into_iter()
        .map(|(path, _)| {
            let bytes = std::fs::read(&path).expect("read");
            let mut damaged = bytes.clone();
            damaged[16] ^= 0xff;
            std::fs::write(&path, damaged).expect("damage");
            (path, bytes)
        })
        .collect()
}

/// A DR location given as a relative path is kept absolute, as `dr enable` keeps it: the
/// restored instance's later commands (`take-ownership`, serve's maintenance under systemd,
/// which starts in /) run from anywhere.
#[test]
fn a_restore_from_a_relative_location_works_from_anywhere_after() {
    let (profile, cairn, _, _) = runs("no-snapshot", &[], 1);
    let cluster_id = cluster_id(&cairn);
    let (parent, name) = (
        profile.path().parent().expect("a parent"),
        profile
            .path()
            .file_name()
            .expect("a name")
            .to_str()
            .expect("utf-8"),
    );
    let fresh = Cairn::new();
    let wasm = dr_wasm();
    let mut args = vec!["dr", "restore", "--blueprint", wasm.as_str()];
    args.extend(source(name, &cluster_id));
    let out = fresh
        .command(&args)
        .current_dir(parent)
        .output()
        .expect("cairn runs");
    ok(&out);
    let out = fresh
        .command(&["dr", "take-ownership"])
        .current_dir("/")
        .output()
        .expect("cairn runs");
    ok(&out);
}

/// A restore that fails part way (the newest point's catalog changes damaged, its manifest
/// intact) leaves the home marked unfinished: no policy runs, and only the same point may
/// finish it.
#[test]
fn a_restore_that_fails_part_way_leaves_the_home_unfinished() {
    let (profile, cairn, older, _) = runs("no-snapshot", &[], 1);
    let profile_url = profile.path().to_str().expect("utf-8").to_owned();
    let cluster_id = cluster_id(&cairn);
    damaged_run(&cairn, profile.path(), &cluster_id, "p2");
    let fresh = Cairn::new();
    let out = restore(&fresh, &profile_url, &cluster_id, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    refused_with(&fresh.run(&["policy", "run", "any"]), "did not finish");
    refused_with(&fresh.run(&["serve", "--once"]), "did not finish");
    refused_with(&fresh.run(&["dr", "take-ownership"]), "did not finish");
    // A DR run would export the half-restored catalog as a point.
    refused_with(&fresh.run(&["dr", "run"]), "did not finish");
    // A change would be kept by the restore's rerun, which applies the rest around it.
    refused_with(&fresh.run(&["policy", "delete", "any"]), "did not finish");
    refused_with(
        &fresh.run(&["policy", "restore", "any", "-w", "hello"]),
        "did not finish",
    );
    refused_with(
        &fresh.run(&["profile", "add", "elsewhere", "--repo", "/nonexistent"]),
        "did not finish",
    );
    // A run would record itself, and the restore's rerun wants nothing recorded in between.
    refused_with(
        &crate::support::run_hello(&fresh, "backup", &["--grant", "exec"]),
        "did not finish",
    );
    for listing in [&["dr", "status"][..], &["policy", "list"]] {
        let out = fresh.run(listing);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stderr(&out).contains("did not finish"), "{}", stderr(&out));
    }
    // Its catalog may not say yet that it does not own maintenance: it does not.
    let out = fresh.run(&["dr", "status", "--output", "json"]);
    assert_eq!(json(&out)["maintenance_owner"], false, "{}", stdout(&out));
    let repo = fresh.home.path().join("elsewhere");
    let repo = repo.to_str().expect("utf-8");
    for maintenance in [
        &["repo", "prune"][..],
        &["repo", "forget", "--keep-last", "1"],
    ] {
        let out = fresh
            .command(&[maintenance, &["--repo", repo]].concat())
            .env("CAIRN_PASSPHRASE", "pw")
            .output()
            .expect("cairn runs");
        refused_with(&out, "did not finish");
    }
    let older = older[0]["point"].as_str().expect("point id").to_owned();
    refused_with(
        &restore(&fresh, &profile_url, &cluster_id, &["--point", &older]),
        "would be applied over part of it",
    );
}

/// A standby moves on to its source's newer points; one try that fails part way is finished by
/// the same command once the damage is mended. A legacy point (a full copy) is refused before
/// anything is marked, so the standby's policies still run.
#[test]
fn a_standby_moves_forward_and_finishes_a_failed_try() {
    let (profile, source, _, _) = runs("no-snapshot", &[], 1);
    let profile_url = profile.path().to_str().expect("utf-8").to_owned();
    let cluster_id = cluster_id(&source);
    let standby = restored(profile.path(), &cluster_id);
    put_and_run(&source, "p2");
    let kept = damaged_run(&source, profile.path(), &cluster_id, "p3");
    let out = restore(&standby, &profile_url, &cluster_id, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    refused_with(&standby.run(&["policy", "run", "p1"]), "did not finish");
    for (path, bytes) in &kept {
        std::fs::write(path, bytes).expect("mend");
    }
    ok(&restore(&standby, &profile_url, &cluster_id, &[]));
    let out = standby.run(&["catalog", "ls", "policy", "--output", "json"]);
    assert_eq!(
        json(&out).as_array().map(Vec::len),
        Some(3),
        "{}",
        stdout(&out)
    );

    let (profile, source, _, _) = runs("legacy", &[], 1);
    let profile_url = profile.path().to_str().expect("utf-8").to_owned();
    let legacy_id = self::cluster_id(&source);
    let standby = restored(profile.path(), &legacy_id);
    put_and_run(&source, "p2");
    refused_with(
        &restore(&standby, &profile_url, &legacy_id, &[]),
        "legacy full copy",
    );
    let out = standby.run(&["policy", "run", "p1"]);
    assert!(!stderr(&out).contains("did not finish"), "{}", stderr(&out));
}

#[test]
fn a_damaged_dr_point_is_left_out_and_the_others_are_still_listed() {
    // The second point's objects lost: its manifest cannot be read.
    newest_point_damaged(
        "content",
        |paths| {
            for path in paths {
                std::fs::remove_file(path).expect("remove");
            }
        },
        "it is left out",
    );
}

#[test]
fn a_damaged_snapshot_object_newer_than_every_point_stops_a_restore_of_the_newest() {
    // The second point's snapshot objects damaged: what they were, and when, is unreadable.
    newest_point_damaged(
        "snapshots",
        |paths| {
            for path in paths {
                let mut bytes = std::fs::read(path).expect("read");
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x55;
                std::fs::write(path, bytes).expect("damage");
            }
        },
        "cannot be read",
    );
}

/// A newest point whose manifest object is gone leaves its data behind, as a DR run cut short
/// does: the listing and a restore of the point before it say so.
#[test]
fn data_newer_than_every_readable_point_is_said() {
    let (profile, cairn, _, _) = runs("no-snapshot", &[], 1);
    let profile_url = profile.path().to_str().expect("utf-8").to_owned();
    let cluster_id = cluster_id(&cairn);
    let dir = profile.path().join(&cluster_id).join("snapshots");
    let listed = || -> std::collections::BTreeSet<std::path::PathBuf> {
        std::fs::read_dir(&dir)
            .expect("snapshots")
            .flatten()
            .map(|e| e.path())
            .collect()
    };
    let before = listed();
    put_and_run(&cairn, "p2");
    // The manifest's snapshot object is saved last.
    let manifest = listed()
        .difference(&before)
        .max_by_key(|p| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .expect("mtime")
        })
        .cloned()
        .expect("new objects");
    std::fs::remove_file(manifest).expect("remove");
    let out = review(&cairn, &profile_url, &cluster_id, &["--output", "json"]);
    ok(&out);
    assert!(stderr(&out).contains("belong to none"), "{}", stderr(&out));
    assert_eq!(json(&out).as_array().map(Vec::len), Some(1));
    let fresh = Cairn::new();
    let out = restore(&fresh, &profile_url, &cluster_id, &[]);
    ok(&out);
    assert!(stderr(&out).contains("belong to none"), "{}", stderr(&out));
}

/// Two DR points, then `damage` done to each object the second added under `dir` of the DR
/// location: `review` lists the first alone with a warning that says `warned`, a restore of
/// the newest is refused rather than fall back to the first unasked, and `--point` restores
/// the first.
fn newest_point_damaged(dir: &str, damage: impl Fn(&[std::path::PathBuf]), warned: &str) {
    let (profile, cairn, _, _) = runs("no-snapshot", &[], 1);
    let profile_url = profile.path().to_str().expect("utf-8").to_owned();
    let cluster_id = cluster_id(&cairn);
    let dir = profile.path().join(&cluster_id).join(dir);
    let listed = |dir: &Path| -> std::collections::BTreeSet<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .expect("a directory of the DR location")
            .flatten()
            .map(|e| e.path())
            .collect()
    };
    let before = listed(&dir);
    put_and_run(&cairn, "p2");
    damage(
        &listed(&dir)
            .difference(&before)
            .cloned()
            .collect::<Vec<_>>(),
    );
    let out = review(&cairn, &profile_url, &cluster_id, &["--output", "json"]);
    ok(&out);
    assert!(stderr(&out).contains(warned), "{}", stderr(&out));
    let points = json(&out);
    assert_eq!(points.as_array().map(Vec::len), Some(1), "{points}");
    let fresh = Cairn::new();
    refused_with(
        &restore(&fresh, &profile_url, &cluster_id, &[]),
        "after its newest readable DR point",
    );
    let older = points[0]["id"].as_str().expect("id");
    ok(&restore(
        &fresh,
        &profile_url,
        &cluster_id,
        &["--point", older],
    ));
}

#[test]
fn two_dr_runs_at_once_never_break_the_chain() {
    let profile = tempfile::tempdir().expect("tempdir");
    let profile_url = profile.path().to_str().expect("utf-8").to_owned();
    let lost = Cairn::new();
    let cluster_id = populated(&lost, profile.path(), "local-snapshot");
    put(&lost, "policy", "three");
    // The second waits for the catalog the first holds, then runs.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| dr_run(&lost));
        let b = s.spawn(|| dr_run(&lost));
        (a.join().expect("thread"), b.join().expect("thread"))
    });
    ok(&a);
    ok(&b);
    let fresh = Cairn::new();
    ok(&restore(&fresh, &profile_url, &cluster_id, &[]));
    assert_eq!(count(&counts(&fresh), "policy"), 3);
}

#[test]
fn catalog_writes_during_a_dr_run_wait_and_are_kept() {
    let profile = tempfile::tempdir().expect("tempdir");
    let profile_url = profile.path().to_str().expect("utf-8").to_owned();
    let lost = Cairn::new();
    let cluster_id = populated(&lost, profile.path(), "local-snapshot");
    // Writers from other processes while a DR run holds the catalog: each waits and lands,
    // and the run exports a cut that holds a write whole or not at all.
    std::thread::scope(|s| {
        let run = s.spawn(|| dr_run(&lost));
        let writers: Vec<_> = (0..4)
            .map(|i| {
                let lost = &lost;
                s.spawn(move || put(lost, "policy", &format!("during-{i}")))
            })
            .collect();
        let action = s.spawn(|| backup_hello(&lost));
        ok(&run.join().expect("thread"));
        for w in writers {
            w.join().expect("writer");
        }
        action.join().expect("action");
    });
    ok(&dr_run(&lost));
    let fresh = Cairn::new();
    ok(&restore(&fresh, &profile_url, &cluster_id, &[]));
    let counts = counts(&fresh);
    assert_eq!(count(&counts, "policy"), 6, "{counts}");
    assert_eq!(count(&counts, "exported-restore-point"), 2, "{counts}");
}

#[test]
fn a_catalog_held_too_long_is_a_clear_error() {
    let cairn = Cairn::new();
    put(&cairn, "policy", "one");
    // Hold the catalog from this process, as a long DR run would.
    let held = cairn_catalog::Catalog::open(cairn.home.path().join("catalog.redb")).expect("open");
    let out = cairn
        .command(&["catalog", "ls"])
        .env("CAIRN_CATALOG_WAIT", "1")
        .output()
        .expect("cairn");
    refused_with(&out, "still in use by another cairn process");
    assert!(
        stderr(&out).contains("CAIRN_CATALOG_WAIT"),
        "{}",
        stderr(&out)
    );
    drop(held);
    ok(&cairn.run(&["catalog", "ls"]));
}

#[test]
fn a_damaged_local_snapshot_is_left_out_of_an_in_place_recovery() {
    let profile = tempfile::tempdir().expect("tempdir");
    let profile_url = profile.path().to_str().expect("utf-8").to_owned();
    let home = Cairn::new();
    let cluster_id = populated(&home, profile.path(), "local-snapshot");
    std::fs::remove_file(home.home.path().join("catalog.redb")).expect("remove");
    // The disk fault that lost the catalog also hit the local snapshot.
    let snapshot = home.home.path().join("dr/snapshots/catalog.redb");
    let mut bytes = std::fs::read(&snapshot).expect("the local snapshot");
    for b in &mut bytes[4096..] {
        *b ^= 0x5a;
    }
    std::fs::write(&snapshot, bytes).expect("write");
    let out = restore(&home, &profile_url, &cluster_id, &["--output", "json"]);
    ok(&out);
    assert_eq!(json(&out)["in_place"], false, "{}", stdout(&out));
    assert!(stderr(&out).contains("cannot be used"), "{}", stderr(&out));
    let counts = counts(&home);
    assert_eq!(count(&counts, "action"), 0, "{counts}");
    assert_eq!(count(&counts, "policy"), 2, "{counts}");
}

#[test]
fn local_snapshot_recovers_in_place_where_its_snapshot_is() {
    let profile = tempfile::tempdir().expect("tempdir");
    let profile_url = profile.path().to_str().expect("utf-8").to_owned();
    let home = Cairn::new();
    let cluster_id = populated(&home, profile.path(), "local-snapshot");
    // The catalog is lost; the rest of the home (its local catalog snapshot) is not.
    std::fs::remove_file(home.home.path().join("catalog.redb")).expect("remove");
    let out = restore(&home, &profile_url, &cluster_id, &["--output", "json"]);
    ok(&out);
    assert_eq!(json(&out)["in_place"], true, "{}", stdout(&out));
    let recovered_here = counts(&home);
    for kind in PUT_KINDS.iter().chain(&["action", "local-restore-point"]) {
        let in_place = *kind == "action" || *kind == "local-restore-point";
        let expected = if in_place || recovered(kind, "local-snapshot") {
            2
        } else {
            0
        };
        assert_eq!(
            count(&recovered_here, kind),
            expected,
            "{kind}: {recovered_here}"
        );
    }
    let out = home.run(&["catalog", "ls", "local-restore-point", "--output", "json"]);
    let id = json(&out)[0]["key"].as_str().expect("id").to_owned();
    ok(&run_hello(
        &home,
        "restore",
        &["--grant", "exec", "--from-point", &id],
    ));

    // Elsewhere, the same point leaves them behind and says so.
    let fresh = Cairn::new();
    let out = restore(&fresh, &profile_url, &cluster_id, &["--output", "json"]);
    ok(&out);
    assert_eq!(json(&out)["in_place"], false, "{}", stdout(&out));
    assert_eq!(count(&counts(&fresh), "action"), 0);
}

#[test]
fn the_catalog_capability_is_never_granted_by_hand() {
    let cairn = Cairn::new();
    let out = run_hello(&cairn, "backup", &["--grant", "exec,catalog"]);
    refused_with(&out, "DR blueprint only");
}

#[test]
fn dr_needs_enabling_and_a_passphrase() {
    let cairn = Cairn::new();
    let out = dr_run(&cairn);
    refused_with(&out, "cairn dr enable");
    let profile = tempfile::tempdir().expect("tempdir");
    let out = cairn.run(&[
        "dr",
        "enable",
        "--profile",
        profile.path().to_str().expect("utf-8"),
        "--passphrase-from",
        "env:CAIRN_TEST_NO_SUCH_VARIABLE",
    ]);
    refused_with(&out, "CAIRN_TEST_NO_SUCH_VARIABLE");
    refused_with(
        &enable_without_gfs(&cairn, profile.path(), "no-snapshot", &["--keep-last", "0"]),
        "keep no DR point",
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
        let mut child = lost
            .command(&["dr", "run", "--blueprint", &dr_wasm()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cairn runs");
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
    }
    // And an export no point will ever reference, as a run killed mid-export leaves.
    let location = format!("{profile_url}/{cluster_id}");
    let stray = lost
        .command(&[
            "repo",
            "backup",
            "-",
            "--stdin-name",
            "minimal",
            "--repo",
            &location,
        ])
        .env("CAIRN_PASSPHRASE", PASSPHRASE.trim_start_matches("raw:"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("cairn runs");
    ok(&stray);
    put(&lost, "policy", "last");
    let last = dr_run(&lost);
    ok(&last);
    let unreferenced = &json(&last)["retention"]["unreferenced"];
    assert!(
        unreferenced["removed"].as_u64() >= Some(1),
        "{unreferenced}"
    );
    assert_eq!(unreferenced["failed"], 0, "{unreferenced}");
    // Every point review offers restores, and the latest has everything.
    let out = review(&lost, &profile_url, &cluster_id, &["--output", "json"]);
    ok(&out);
    // What is left in the location is exactly the points and the exports they reference.
    let referenced: u64 = json(&out)
        .as_array()
        .expect("points")
        .iter()
        .map(|p| 1 + p["exports"].as_u64().expect("exports"))
        .sum();
    let listed = location_snapshots(&lost, profile.path(), &cluster_id);
    assert_eq!(listed.len() as u64, referenced, "{listed:?}");
    let fresh = Cairn::new();
    ok(&restore(&fresh, &profile_url, &cluster_id, &[]));
    assert_eq!(count(&counts(&fresh), "policy"), 2 + 4 + 1);
    assert_eq!(count(&counts(&fresh), "action"), 2);
}

/// `cairn dr enable` in `mode` to `profile` with `extra` flags (retention, frequency...).
fn enable(cairn: &Cairn, profile: &Path, mode: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "dr",
        "enable",
        "--profile",
        profile.to_str().expect("utf-8"),
        "--mode",
        mode,
        "--passphrase-from",
        PASSPHRASE,
    ];
    args.extend_from_slice(extra);
    cairn.run(&args)
}

/// [`enable`] with every GFS rule off, so that a test's `--keep-last` alone decides (DR runs
/// seconds apart all fall in one hour).
fn enable_without_gfs(cairn: &Cairn, profile: &Path, mode: &str, extra: &[&str]) -> Output {
    let gfs = [
        "--keep-hourly",
        "0",
        "--keep-daily",
        "0",
        "--keep-weekly",
        "0",
        "--keep-monthly",
        "0",
    ];
    enable(cairn, profile, mode, &[&gfs[..], extra].concat())
}

/// A new policy record, then a DR run that must succeed; returns its JSON.
fn put_and_run(cairn: &Cairn, key: &str) -> serde_json::Value {
    put(cairn, "policy", key);
    let out = dr_run(cairn);
    ok(&out);
    json(&out)
}

/// Every snapshot in the DR location of `cluster_id` (data exports and manifests).
fn location_snapshots(cairn: &Cairn, profile: &Path, cluster_id: &str) -> Vec<serde_json::Value> {
    let pass = cairn.home.path().join("dr.pass");
    std::fs::write(&pass, PASSPHRASE.trim_start_matches("raw:")).expect("write");
    let repo = profile.join(cluster_id);
    let out = cairn.run(&[
        "repo",
        "snapshots",
        "--repo",
        repo.to_str().expect("utf-8"),
        "--passphrase-file",
        pass.to_str().expect("utf-8"),
        "--output",
        "json",
    ]);
    ok(&out);
    json(&out).as_array().expect("snapshots").clone()
}

/// A new instance with DR enabled in `mode` to a new location with `extra` flags, and `n` DR
/// runs each after a new policy record. Returns the location, the instance, the runs' JSON and
/// each run's `from`.
fn runs(
    mode: &str,
    extra: &[&str],
    n: usize,
) -> (tempfile::TempDir, Cairn, Vec<serde_json::Value>, Vec<u64>) {
    let profile = tempfile::tempdir().expect("tempdir");
    let cairn = Cairn::new();
    ok(&enable_without_gfs(&cairn, profile.path(), mode, extra));
    let runs: Vec<serde_json::Value> = (1..=n)
        .map(|i| put_and_run(&cairn, &format!("p{i}")))
        .collect();
    let from = runs
        .iter()
        .map(|r| r["from"].as_u64().expect("from"))
        .collect();
    (profile, cairn, runs, from)
}

/// The stream names of the snapshots in the DR location of `cluster_id`.
fn streams(cairn: &Cairn, profile: &Path, cluster_id: &str) -> Vec<String> {
    location_snapshots(cairn, profile, cluster_id)
        .iter()
        .filter_map(|s| s["kind"]["name"].as_str().map(str::to_owned))
        .collect()
}

fn cluster_id(cairn: &Cairn) -> String {
    let out = cairn.run(&["dr", "status", "--output", "json"]);
    ok(&out);
    json(&out)["cluster_id"]
        .as_str()
        .expect("cluster id")
        .to_owned()
}

#[test]
fn retention_forgets_points_and_rebases_chains() {
    let (profile, cairn, runs, from) = runs("no-snapshot", &["--keep-last", "2"], 5);
    let id = cluster_id(&cairn);
    // keep-last 2: the third run's base (run 1) would be kept only for its tail, so it starts a
    // new chain; so does the fifth.
    assert_eq!(from[0], 0);
    assert_eq!(from[1], runs[0]["to"].as_u64().expect("to"), "{runs:?}");
    assert_eq!(from[2], 0, "{runs:?}");
    assert!(
        runs[2]["rebased"]
            .as_str()
            .is_some_and(|r| r.contains("base")),
        "{runs:?}"
    );
    assert_eq!(from[3], runs[2]["to"].as_u64().expect("to"), "{runs:?}");
    assert_eq!(from[4], 0, "{runs:?}");
    // Run 3 could remove nothing (runs 1 and 2 hold run 2's chain); run 4 removed that chain.
    assert_eq!(
        runs[2]["retention"]["removed"].as_array().map(Vec::len),
        Some(0)
    );
    assert_eq!(runs[3]["retention"]["status"], "applied");
    let removed = runs[3]["retention"]["removed"].as_array().expect("removed");
    assert_eq!(removed.len(), 2, "{}", runs[3]);
    assert!(removed.contains(&runs[0]["point"]) && removed.contains(&runs[1]["point"]));
    // Left: runs 3, 4 (a chain) and 5 (a base); their exports and nothing else.
    let profile_url = profile.path().to_str().expect("utf-8");
    let out = review(&cairn, profile_url, &id, &["--output", "json"]);
    ok(&out);
    let ids: Vec<serde_json::Value> = json(&out)
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p["id"].clone())
        .collect();
    let expected: Vec<serde_json::Value> = [4, 3, 2]
        .iter()
        .map(|&i| runs[i]["point"].clone())
        .collect();
    assert_eq!(ids, expected);
    assert_eq!(location_snapshots(&cairn, profile.path(), &id).len(), 3 * 2);
    // The newest point restores everything.
    let fresh = Cairn::new();
    ok(&restore(&fresh, profile_url, &id, &[]));
    assert_eq!(count(&counts(&fresh), "policy"), 5);
}

#[test]
fn a_chain_longer_than_the_bound_is_rebased() {
    let (profile, cairn, runs, from) = runs(
        "local-snapshot",
        &["--keep-last", "10", "--max-chain", "3"],
        4,
    );
    assert_eq!(from[0], 0);
    assert!(from[1] > 0 && from[2] > 0, "{runs:?}");
    assert_eq!(from[3], 0, "the fourth run starts a new chain: {runs:?}");
    assert!(
        runs[3]["rebased"]
            .as_str()
            .is_some_and(|r| r.contains("3 points")),
        "{runs:?}"
    );
    // Nothing removed: keep-last 10 keeps all four.
    assert_eq!(runs[3]["retention"]["kept"], 4);
    let out = enable(
        &cairn,
        profile.path(),
        "local-snapshot",
        &["--max-chain", "0"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn points_under_protection_are_kept() {
    let (_profile, cairn, runs, _) = runs(
        "no-snapshot",
        &["--keep-last", "1", "--protection", "1d"],
        3,
    );
    let last = &runs[2]["retention"];
    assert_eq!(last["status"], "applied", "{last}");
    assert_eq!(last["removed"].as_array().map(Vec::len), Some(0), "{last}");
    assert_eq!(last["kept"], 3, "{last}");
    assert_eq!(last["protected"], 2, "kept only for protection: {last}");
    put(&cairn, "policy", "p4");
    let out = cairn.run(&["dr", "run", "--blueprint", &dr_wasm()]);
    ok(&out);
    assert!(
        stdout(&out).contains("3 of them under the location's protection period"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn if_due_runs_only_when_the_newest_point_is_older_than_the_frequency() {
    let profile = tempfile::tempdir().expect("tempdir");
    let cairn = Cairn::new();
    let out = enable(
        &cairn,
        profile.path(),
        "no-snapshot",
        &["--frequency", "sometimes"],
    );
    refused_with(&out, "@hourly, @daily, @weekly");
    ok(&enable(
        &cairn,
        profile.path(),
        "no-snapshot",
        &["--frequency", "6h"],
    ));
    let out = cairn.run(&["dr", "status"]);
    ok(&out);
    assert!(
        stdout(&out).contains("next run due:      now"),
        "{}",
        stdout(&out)
    );
    let due = [
        "dr",
        "run",
        "--if-due",
        "--blueprint",
        &dr_wasm(),
        "--output",
        "json",
    ];
    let first = cairn.run(&due);
    ok(&first);
    assert_eq!(json(&first)["status"], "succeeded");
    let second = cairn.run(&due);
    ok(&second);
    assert_eq!(json(&second)["status"], "not-due", "{}", stdout(&second));
    let next: jiff::Timestamp = json(&second)["next_due"]
        .as_str()
        .expect("next_due")
        .parse()
        .expect("a time");
    let wait = next.duration_since(jiff::Timestamp::now()).as_secs();
    // Six hours less a grace of five minutes.
    assert!((6 * 3600 - 360..=6 * 3600 - 299).contains(&wait), "{wait}");
    let out = cairn.run(&["dr", "status"]);
    assert!(
        stdout(&out).contains(&format!("next run due:      {next}")),
        "{}",
        stdout(&out)
    );
    // Without --if-due it runs anyway.
    ok(&dr_run(&cairn));
}

#[test]
fn serve_runs_dr_when_it_is_due_after_the_policies() {
    let profile = tempfile::tempdir().expect("tempdir");
    let cairn = Cairn::new();
    // With DR off, serve has nothing to do.
    let serve = ["serve", "--once", "--dr-blueprint", &dr_wasm()];
    let out = cairn.run(&serve);
    ok(&out);
    assert_eq!(stdout(&out).trim(), "nothing is due", "{}", stdout(&out));

    ok(&enable(
        &cairn,
        profile.path(),
        "no-snapshot",
        &["--frequency", "6h"],
    ));
    let out = cairn.run(&serve);
    ok(&out);
    let status = cairn.run(&["dr", "status", "--output", "json"]);
    ok(&status);
    assert!(json(&status)["last_run"].is_object(), "{}", stdout(&status));
    // Not due again for six hours.
    nothing_due(&cairn, &serve);
}

/// A DR run serve starts that fails is kept for `dr status`, and tried again after a while,
/// not on every pass.
#[test]
fn serve_keeps_a_failed_dr_run_and_waits_to_try_again() {
    let profile = tempfile::tempdir().expect("tempdir");
    let cairn = Cairn::new();
    let serve = ["serve", "--once", "--dr-blueprint", &dr_wasm()];
    let mut args = vec![
        "dr",
        "enable",
        "--profile",
        profile.path().to_str().expect("utf-8"),
    ];
    args.extend([
        "--mode",
        "no-snapshot",
        "--passphrase-from",
        "env:CAIRN_TEST_DR_PASS",
    ]);
    // Set for enable, and missing from the environment serve runs in.
    ok(&cairn
        .command(&args)
        .env("CAIRN_TEST_DR_PASS", "secret")
        .output()
        .expect("cairn runs"));
    let out = cairn.run(&serve);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let status = cairn.run(&["dr", "status", "--output", "json"]);
    ok(&status);
    // No passphrase here: the key enable cached reads the markers.
    assert!(
        json(&status)["owner_marker"].is_null(),
        "{}",
        stdout(&status)
    );
    // Markers it cannot read (no passphrase, no cache) leave the catalog's word, said.
    std::fs::remove_file(cairn.home.path().join("dr/location.key")).expect("remove the cache");
    let status = cairn.run(&["dr", "status", "--output", "json"]);
    ok(&status);
    assert_eq!(
        json(&status)["maintenance_owner"],
        true,
        "{}",
        stdout(&status)
    );
    assert!(
        json(&status)["owner_marker"]
            .as_str()
            .is_some_and(|m| m.contains("could not be read")),
        "{}",
        stdout(&status)
    );
    let failed = &json(&status)["failed_since"];
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("CAIRN_TEST_DR_PASS")),
        "{}",
        stdout(&status)
    );
    nothing_due(&cairn, &serve);
}

/// `serve` (a `serve --once` command line) finds nothing due in `cairn`.
fn nothing_due(cairn: &Cairn, serve: &[&str]) {
    let out = cairn.run(serve);
    ok(&out);
    assert!(
        stdout(&out).starts_with("nothing is due; the next run is at"),
        "{}",
        stdout(&out)
    );
}

/// Restores `lost`'s latest DR point from `profile` into a new instance.
fn restored(profile: &Path, lost: &str) -> Cairn {
    let fresh = Cairn::new();
    ok(&restore(
        &fresh,
        profile.to_str().expect("utf-8"),
        lost,
        &[],
    ));
    fresh
}

#[test]
fn the_owner_marker_keeps_two_instances_from_both_maintaining() {
    let profile = tempfile::tempdir().expect("tempdir");
    // A is not lost: it keeps running while B is restored from its DR points.
    let a = Cairn::new();
    let a_id = populated(&a, profile.path(), "no-snapshot");
    let b = restored(profile.path(), &a_id);
    let b_id = cluster_id(&b);
    // B may run DR (to its own location) before taking over, but retention is skipped.
    ok(&enable_without_gfs(
        &b,
        profile.path(),
        "no-snapshot",
        &["--keep-last", "1"],
    ));
    ok(&dr_run(&b));
    let out = dr_run(&b);
    ok(&out);
    assert_eq!(
        json(&out)["retention"]["status"],
        "skipped",
        "{}",
        stdout(&out)
    );
    let out = b.run(&["dr", "run", "--blueprint", &dr_wasm()]);
    assert!(
        stdout(&out).contains("retention skipped"),
        "{}",
        stdout(&out)
    );

    let out = b.run(&["dr", "take-ownership"]);
    ok(&out);
    assert!(stdout(&out).contains("owner marker"), "{}", stdout(&out));
    let out = dr_run(&b);
    ok(&out);
    assert_eq!(
        json(&out)["retention"]["status"],
        "applied",
        "{}",
        stdout(&out)
    );
    assert_eq!(json(&out)["retention"]["kept"], 1, "{}", stdout(&out));
    // Retention took the owner marker in B's own location for no export of its runs.
    assert!(
        streams(&b, profile.path(), &b_id).contains(&"owner".to_owned()),
        "B's owner marker survives its retention"
    );

    // A now refuses every maintenance path, naming B.
    let refused = |out: &Output, who: &str| {
        refused_with(out, who);
        refused_with(out, "take-ownership --force");
    };
    refused(&dr_run(&a), &b_id);
    refused(&forget(&a), &b_id);
    let out = a.run(&[
        "repo",
        "prune",
        "--repo",
        profile.path().join("none").to_str().expect("utf-8"),
    ]);
    refused(&out, &b_id);
    ok(&forget(&b));
    // And its status says so, from B's marker.
    let out = a.run(&["dr", "status", "--output", "json"]);
    ok(&out);
    assert_eq!(json(&out)["maintenance_owner"], false, "{}", stdout(&out));
    assert!(
        json(&out)["owner_marker"]
            .as_str()
            .is_some_and(|m| m.contains(&b_id)),
        "{}",
        stdout(&out)
    );

    // A third instance cannot take over by accident; with --force it can, and B then refuses.
    let c = restored(profile.path(), &a_id);
    let out = c.run(&["dr", "take-ownership"]);
    refused(&out, &b_id);
    ok(&c.run(&["dr", "take-ownership", "--force"]));
    let c_id = cluster_id(&c);
    refused(&forget(&b), &c_id);
    ok(&forget(&c));
}

#[test]
fn enabling_again_changes_only_the_settings_given() {
    let profile = tempfile::tempdir().expect("tempdir");
    let cairn = Cairn::new();
    let out = cairn.run(&["dr", "enable", "--passphrase-from", PASSPHRASE]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--profile URL"), "{}", stderr(&out));
    ok(&enable(
        &cairn,
        profile.path(),
        "exported-snapshot",
        &[
            "--frequency",
            "@daily",
            "--keep-last",
            "5",
            "--keep-daily",
            "9",
        ],
    ));
    // Only the newest-points count changes: the mode, the schedule and the other rules stay.
    let out = cairn.run(&["dr", "enable", "--keep-last", "6"]);
    ok(&out);
    assert!(
        stdout(&out).contains("changed: keep-last: 5 → 6"),
        "{}",
        stdout(&out)
    );
    let status = json(&cairn.run(&["dr", "status", "--output", "json"]));
    assert_eq!(status["mode"], "exported-snapshot");
    assert_eq!(status["frequency"], "@daily");
    assert_eq!(
        status["passphrase_from"],
        PASSPHRASE.replace("correct horse battery staple", "****")
    );
    assert_eq!(status["retention"]["last"], 6);
    assert_eq!(status["retention"]["daily"], 9);
    assert_eq!(status["retention"]["hourly"], 24);
    let out = cairn.run(&["dr", "enable"]);
    ok(&out);
    assert!(
        stdout(&out).contains("Settings unchanged."),
        "{}",
        stdout(&out)
    );
}

#[test]
fn dr_settings_travel_with_each_point_and_come_back_disabled() {
    let profile = tempfile::tempdir().expect("tempdir");
    let pass = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(pass.path(), "a passphrase in a file").expect("write");
    let source = format!("file:{}", pass.path().display());
    let lost = Cairn::new();
    ok(&lost.run(&[
        "dr",
        "enable",
        "--profile",
        profile.path().to_str().expect("utf-8"),
        "--mode",
        "exported-snapshot",
        "--passphrase-from",
        &source,
        "--frequency",
        "@daily",
        "--keep-last",
        "5",
        "--keep-daily",
        "9",
        "--max-chain",
        "7",
    ]));
    backup_hello(&lost);
    ok(&dr_run(&lost));
    let lost_id = cluster_id(&lost);

    let fresh = Cairn::new();
    let wasm = dr_wasm();
    let args = [
        "dr",
        "restore",
        "--blueprint",
        wasm.as_str(),
        "--profile",
        profile.path().to_str().expect("utf-8"),
        "--cluster-id",
        &lost_id,
        "--passphrase-from",
        &source,
    ];
    let out = fresh.run(&args);
    ok(&out);
    assert!(
        stdout(&out).contains("DR settings restored but disabled (mode exported-snapshot"),
        "{}",
        stdout(&out)
    );
    let status = fresh.run(&["dr", "status", "--output", "json"]);
    assert_eq!(json(&status)["enabled"], false);
    // Maintenance ownership re-enables them, for this instance's own location.
    let out = fresh.run(&["dr", "take-ownership"]);
    ok(&out);
    assert!(stdout(&out).contains("enabled again"), "{}", stdout(&out));
    let status = json(&fresh.run(&["dr", "status", "--output", "json"]));
    assert_eq!(status["enabled"], true);
    assert_eq!(status["mode"], "exported-snapshot");
    assert_eq!(status["frequency"], "@daily");
    assert_eq!(status["passphrase_from"], source.as_str());
    assert_eq!(status["max_chain"], 7);
    assert_eq!(status["retention"]["last"], 5);
    assert_eq!(status["retention"]["daily"], 9);
    let out = dr_run(&fresh);
    ok(&out);
    assert_eq!(json(&out)["from"], 0);

    // A raw passphrase never travels: a point made with one brings the source back empty.
    let raw_lost = Cairn::new();
    let raw_id = populated(&raw_lost, profile.path(), "no-snapshot");
    let raw_fresh = Cairn::new();
    let out = restore(
        &raw_fresh,
        profile.path().to_str().expect("utf-8"),
        &raw_id,
        &["--output", "json"],
    );
    ok(&out);
    let settings = &json(&out)["dr_settings"];
    assert_eq!(settings["passphrase_from"], "raw:****", "{settings}");
    assert_eq!(settings["enabled"], false, "{settings}");
    // Had the value travelled, take-ownership would enable DR again.
    let out = raw_fresh.run(&["dr", "take-ownership"]);
    ok(&out);
    assert!(stdout(&out).contains("raw passphrase"), "{}", stdout(&out));
    let status = raw_fresh.run(&["dr", "status", "--output", "json"]);
    assert_eq!(json(&status)["enabled"], false);
    // `dr enable` then needs only the passphrase: the rest is the settings restored.
    ok(&raw_fresh.run(&["dr", "enable", "--passphrase-from", PASSPHRASE]));
    let status = json(&raw_fresh.run(&["dr", "status", "--output", "json"]));
    assert_eq!(status["enabled"], true, "{status}");
    assert_eq!(status["mode"], "no-snapshot", "{status}");
}

#[test]
fn the_dr_key_is_cached_for_the_owner_only_and_a_bad_cache_costs_only_time() {
    use std::os::unix::fs::PermissionsExt as _;
    let profile = tempfile::tempdir().expect("tempdir");
    let cairn = Cairn::new();
    ok(&enable(&cairn, profile.path(), "no-snapshot", &[]));
    // Enabling derives the key and caches it, for runs and owner-marker checks alike.
    let cache = cairn.home.path().join("dr/location.key");
    assert!(cache.exists());
    ok(&dr_run(&cairn));
    let mode = std::fs::metadata(&cache)
        .expect("the key is cached")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&cache).expect("read");
    assert!(
        !text.contains("battery"),
        "the passphrase is not in the cache: {text}"
    );
    // A damaged cache is derived again and rewritten.
    std::fs::write(&cache, "{ not json").expect("write");
    ok(&dr_run(&cairn));
    assert_ne!(std::fs::read_to_string(&cache).expect("read"), "{ not json");
    // Enabling again derives it anew, from the passphrase, not from the cache.
    std::fs::write(&cache, "{ not json").expect("write");
    ok(&enable(&cairn, profile.path(), "no-snapshot", &[]));
    assert_ne!(std::fs::read_to_string(&cache).expect("read"), "{ not json");

    // A passphrase changed where it is read from is checked again, not let through by the
    // cache: the runs would go on while the passphrase kept for a disaster opens nothing.
    let source = ["--passphrase-from", "env:CAIRN_TEST_DR_PASS"];
    let env_run = |value: &str| {
        cairn
            .command(&["dr", "run", "--blueprint", &dr_wasm(), "--output", "json"])
            .env("CAIRN_TEST_DR_PASS", value)
            .output()
            .expect("cairn runs")
    };
    let out = cairn
        .command(
            &[
                &[
                    "dr",
                    "enable",
                    "--profile",
                    profile.path().to_str().expect("utf-8"),
                ][..],
                &source[..],
            ]
            .concat(),
        )
        .env("CAIRN_TEST_DR_PASS", "correct horse battery staple")
        .output()
        .expect("cairn runs");
    ok(&out);
    ok(&env_run("correct horse battery staple"));
    assert!(cache.exists());
    let out = env_run("correct horse battery stable");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("wrong DR passphrase"),
        "{}",
        stderr(&out)
    );
    ok(&env_run("correct horse battery staple"));
}

#[test]
fn registered_components_travel_with_dr_and_come_back_on_another_instance() {
    let profile = tempfile::tempdir().expect("tempdir");
    let lost = Cairn::new();
    // A registration whose component is gone from the home is left out, with a warning.
    let redis = wasm("redis");
    ok(&lost.run(&["blueprint", "add", redis.to_str().expect("utf-8 path")]));
    std::fs::remove_dir_all(lost.home.path().join("blueprints")).expect("remove");
    let hello = hello_wasm().to_str().expect("utf-8 path");
    ok(&lost.run(&["blueprint", "add", hello]));
    ok(&enable_without_gfs(
        &lost,
        profile.path(),
        "no-snapshot",
        &["--keep-last", "1"],
    ));
    let first = dr_run(&lost);
    ok(&first);
    assert_eq!(json(&first)["components_exported"], 1, "{}", stdout(&first));
    assert!(stderr(&first).contains("redis"), "{}", stderr(&first));
    // Exported once, and kept by the retention that removes older points.
    for _ in 0..2 {
        let out = dr_run(&lost);
        ok(&out);
        assert_eq!(json(&out)["components_exported"], 0, "{}", stdout(&out));
        assert_eq!(json(&out)["retention"]["kept"], 1, "{}", stdout(&out));
    }
    let lost_id = cluster_id(&lost);
    let components: Vec<String> = streams(&lost, profile.path(), &lost_id)
        .into_iter()
        .filter(|s| s.starts_with("blueprint/sha256-"))
        .collect();
    assert_eq!(components.len(), 1, "{components:?}");

    let fresh = Cairn::new();
    let location = profile.path().to_str().expect("utf-8");
    let out = restore(&fresh, location, &lost_id, &["--output", "json"]);
    ok(&out);
    let restored = &json(&out)["components"];
    assert_eq!(
        restored["restored"],
        serde_json::json!(["hello"]),
        "{restored}"
    );
    assert_eq!(
        restored["missing"],
        serde_json::json!(["redis"]),
        "{restored}"
    );
    // The recovered registration runs by name on the new instance; the one left out says what
    // to do.
    let by_name = |name: &str| {
        fresh.run(&[
            "run",
            name,
            "--action",
            "backup",
            "--target",
            HELLO_INVENTORY,
            "--workload",
            "hello",
            "--grant",
            "exec",
        ])
    };
    ok(&by_name("hello"));
    refused_with(&by_name("redis"), "cairn blueprint add FILE");

    // A second recovery into a home that has the component finds it there.
    let again = Cairn::new();
    let copy = again.home.path().join("blueprints");
    std::fs::create_dir_all(&copy).expect("mkdir");
    let name = components[0].trim_start_matches("blueprint/");
    std::fs::copy(hello, copy.join(name)).expect("copy");
    let out = restore(&again, location, &lost_id, &["--output", "json"]);
    ok(&out);
    assert_eq!(
        json(&out)["components"]["present"],
        serde_json::json!(["hello"]),
        "{}",
        stdout(&out)
    );
    let out = restore(&Cairn::new(), location, &lost_id, &[]);
    ok(&out);
    assert!(
        stdout(&out).contains("restored the components of 1 registered blueprint(s): hello")
            && stdout(&out).contains("register them again with `cairn blueprint add FILE`"),
        "{}",
        stdout(&out)
    );
}

/// Relative paths given to `dr enable` are kept absolute: later runs start elsewhere (`serve`
/// under systemd starts in /).
#[test]
fn dr_enable_keeps_relative_paths_absolute() {
    let cairn = Cairn::new();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("pw.txt"), "dr-passphrase\n").expect("write");
    let out = cairn
        .command(&[
            "dr",
            "enable",
            "--profile",
            "offsite",
            "--passphrase-from",
            "file:pw.txt",
        ])
        .current_dir(dir.path())
        .output()
        .expect("cairn runs");
    ok(&out);
    let status = json(&cairn.run(&["dr", "status", "--output", "json"]));
    let base = std::fs::canonicalize(dir.path()).expect("canonical");
    let under = |v: &serde_json::Value, prefix: &str, name: &str| {
        v.as_str().is_some_and(|s| {
            s.strip_prefix(prefix).is_some_and(|p| {
                std::path::Path::new(p) == dir.path().join(name)
                    || std::path::Path::new(p) == base.join(name)
            })
        })
    };
    assert!(under(&status["profile"], "", "offsite"), "{status}");
    assert!(
        under(&status["passphrase_from"], "file:", "pw.txt"),
        "{status}"
    );
    // A run from anywhere else finds both.
    ok(&dr_run(&cairn));
}

/// DR copies the catalog, not the home's repository: enabling it names the policies whose
/// restore points live there and would be lost with the home; not one whose blueprint may not
/// export, whose points are the catalog's own.
#[test]
fn dr_enable_names_policies_whose_points_stay_in_the_home() {
    let cairn = Cairn::new();
    let hello = crate::support::hello_wasm().to_str().expect("utf-8 path");
    ok(&cairn.run(&["blueprint", "add", hello]));
    let redis = crate::support::wasm("redis");
    ok(&cairn.run(&["blueprint", "add", redis.to_str().expect("utf-8 path")]));
    let inventory = crate::support::root().join("examples/hello/inventory.yaml");
    for (name, blueprint, grants) in [
        ("values-only", "hello", "[exec]\nparams: {greeting: hi}"),
        ("local-only", "redis", "[exec, export]"),
    ] {
        let policy = cairn.home.path().join(format!("{name}.yaml"));
        std::fs::write(
            &policy,
            format!(
                "name: {name}\nblueprint: {blueprint}\ntarget: local:{}\nworkloads: [hello]\n\
                 frequency: '@daily'\nretention: {{last: 1}}\ngrants: {grants}\n",
                inventory.display()
            ),
        )
        .expect("policy");
        ok(&cairn.run(&["policy", "apply", policy.to_str().expect("utf-8")]));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = enable(&cairn, &dir.path().join("dr"), "local-snapshot", &[]);
    ok(&out);
    assert!(
        stderr(&out).contains("policies local-only export into the home's repository"),
        "{}",
        stderr(&out)
    );
}

/// An empty `export: {}` (a template's) is no export: `dr enable` names its policy too.
#[test]
fn dr_enable_names_a_policy_with_an_empty_export() {
    let cairn = Cairn::new();
    let redis = crate::support::wasm("redis");
    ok(&cairn.run(&["blueprint", "add", redis.to_str().expect("utf-8 path")]));
    let inventory = crate::support::root().join("examples/hello/inventory.yaml");
    let policy = cairn.home.path().join("empty.yaml");
    std::fs::write(
        &policy,
        format!(
            "name: empty-export\nblueprint: redis\ntarget: local:{}\nworkloads: [hello]\n\
             frequency: '@daily'\nretention: {{last: 1}}\ngrants: [exec, export]\nexport: {{}}\n",
            inventory.display()
        ),
    )
    .expect("policy");
    ok(&cairn.run(&["policy", "apply", policy.to_str().expect("utf-8")]));
    let dir = tempfile::tempdir().expect("tempdir");
    let out = enable(&cairn, &dir.path().join("dr"), "local-snapshot", &[]);
    ok(&out);
    assert!(
        stderr(&out).contains("policies empty-export export into the home's repository"),
        "{}",
        stderr(&out)
    );
}

/// `dr enable --profile NAME` with a location profile's name is refused, naming its URL: it
/// would have made a local directory of that name and kept the DR points there.
#[test]
fn a_location_profiles_name_is_not_taken_for_a_directory() {
    let cairn = Cairn::new();
    let offsite = cairn.home.path().join("offsite-repo");
    ok(&cairn.run(&[
        "profile",
        "add",
        "offsite",
        "--repo",
        offsite.to_str().expect("utf-8"),
    ]));
    let out = cairn.run(&[
        "dr",
        "enable",
        "--profile",
        "offsite",
        "--passphrase-from",
        PASSPHRASE,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a location profile's name")
            && stderr(&out).contains(offsite.to_str().expect("utf-8")),
        "{}",
        stderr(&out)
    );
}

/// The keys of the policies `cairn catalog ls policy` lists.
fn policy_keys(cairn: &Cairn) -> Vec<String> {
    let out = cairn.run(&["catalog", "ls", "policy", "--output", "json"]);
    ok(&out);
    let mut keys: Vec<String> = json(&out)
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["key"].as_str().expect("a key").to_owned())
        .collect();
    keys.sort();
    keys
}

/// A copy of the whole home of `original`, as a cloned machine has: the same cluster id, the
/// same settings, the same DR location.
fn copy_of(original: &Cairn) -> Cairn {
    let copy = Cairn::new();
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(original.home.path().join("."))
        .arg(copy.home.path())
        .status()
        .expect("cp runs");
    assert!(cp.success());
    copy
}

#[test]
fn a_copied_home_is_refused_before_its_points_mix_with_the_original() {
    let profile = tempfile::tempdir().expect("tempdir");
    let profile_url = profile.path().to_str().expect("utf-8").to_owned();
    let original = Cairn::new();
    let cluster_id = populated(&original, profile.path(), "no-snapshot");
    let copy = copy_of(&original);
    put(&original, "policy", "original-only");
    ok(&dr_run(&original));
    put(&copy, "policy", "copy-only");
    let refused = dr_run(&copy);
    refused_with(&refused, "this home did not write");
    refused_with(&refused, "cairn dr enable --profile");
    // The original goes on; the copy wrote nothing into its chain.
    put(&original, "policy", "original-again");
    ok(&dr_run(&original));
    let fresh = Cairn::new();
    ok(&restore(&fresh, &profile_url, &cluster_id, &[]));
    assert_eq!(
        policy_keys(&fresh),
        ["one", "original-again", "original-only", "two"]
    );
    // Enabling again to change a setting accepts nothing: the copy's runs still
    // refuse, and both say how to accept.
    let out = enable(&copy, profile.path(), "no-snapshot", &["--keep-daily", "3"]);
    ok(&out);
    assert!(!stdout(&out).contains("Accepted"), "{}", stdout(&out));
    assert!(stderr(&out).contains("--accept-points"), "{}", stderr(&out));
    refused_with(&dr_run(&copy), "cairn dr enable --accept-points");
    // The original is retired and the copy kept: `--accept-points` there accepts the points
    // it did not write, and its next run builds on none of them.
    let out = enable(
        &copy,
        profile.path(),
        "no-snapshot",
        &["--keep-daily", "3", "--accept-points"],
    );
    ok(&out);
    assert!(
        stdout(&out).contains("Accepted the DR points"),
        "{}",
        stdout(&out)
    );
    let run = dr_run(&copy);
    ok(&run);
    assert_eq!(json(&run)["from"], 0, "a new chain: {}", stdout(&run));
    let fresh = Cairn::new();
    ok(&restore(&fresh, &profile_url, &cluster_id, &[]));
    assert_eq!(policy_keys(&fresh), ["copy-only", "one", "two"]);
    // The original, still running by mistake, is refused in turn.
    put(&original, "policy", "late");
    refused_with(&dr_run(&original), "this home did not write");
}

/// The ids of the DR points `review` lists, with the change each reaches, newest first.
fn reviewed(cairn: &Cairn, profile: &str, cluster_id: &str) -> Vec<(String, u64)> {
    let out = review(cairn, profile, cluster_id, &["--output", "json"]);
    ok(&out);
    json(&out)
        .as_array()
        .expect("points")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().expect("id").to_owned(),
                p["to"].as_u64().expect("to"),
            )
        })
        .collect()
}

/// A home's catalog put back to an older state, whose points are then accepted,
/// leaves two histories that share change numbers in one location. A point of the retired
/// history restores its own chain, not the new history's point that reaches the same change;
/// a standby that applied the retired history refuses to move onto the new one.
#[test]
fn a_catalog_put_back_keeps_the_two_histories_apart() {
    let profile = tempfile::tempdir().expect("tempdir");
    let profile_url = profile.path().to_str().expect("utf-8").to_owned();
    let home = Cairn::new();
    ok(&enable_without_gfs(
        &home,
        profile.path(),
        "no-snapshot",
        &["--keep-last", "100"],
    ));
    let cluster_id = cluster_id(&home);
    put(&home, "policy", "a1");
    put_and_run(&home, "a2");
    let catalog = home.home.path().join("catalog.redb");
    let kept = std::fs::read(&catalog).expect("read the catalog");
    put(&home, "policy", "b1");
    put_and_run(&home, "b2");
    let standby = restored(profile.path(), &cluster_id);
    let retired = put_and_run(&home, "c1");
    // The catalog is put back; the home goes on with other changes under the same numbers.
    std::fs::write(&catalog, kept).expect("put the catalog back");
    put(&home, "policy", "x1");
    put(&home, "policy", "x2");
    refused_with(&dr_run(&home), "this home did not write");
    ok(&enable(
        &home,
        profile.path(),
        "no-snapshot",
        &["--accept-points"],
    ));
    let run = put_and_run(&home, "x3");
    assert_eq!(run["from"], 0, "a new chain: {run}");
    put_and_run(&home, "y1");
    // The retired history's last point, listed by review, restores as that history had it.
    let point = retired["point"].as_str().expect("point").to_owned();
    assert!(
        reviewed(&home, &profile_url, &cluster_id)
            .iter()
            .any(|(id, _)| *id == point),
        "review lists the retired history's point"
    );
    let fresh = Cairn::new();
    ok(&restore(
        &fresh,
        &profile_url,
        &cluster_id,
        &["--point", &point],
    ));
    assert_eq!(policy_keys(&fresh), ["a1", "a2", "b1", "b2", "c1"]);
    // The latest is the new history's.
    let fresh = Cairn::new();
    ok(&restore(&fresh, &profile_url, &cluster_id, &[]));
    assert_eq!(policy_keys(&fresh), ["a1", "a2", "x1", "x2", "x3", "y1"]);
    // The standby applied b1 b2, changes the new history numbers x1 x2 x3.
    refused_with(
        &restore(&standby, &profile_url, &cluster_id, &[]),
        "is not built on",
    );
    assert_eq!(policy_keys(&standby), ["a1", "a2", "b1", "b2"]);
}

/// A standby still moves forward along its source's history, across a new chain.
#[test]
fn a_standby_moves_forward_across_a_new_chain() {
    let (profile, source, _, _) =
        runs("no-snapshot", &["--max-chain", "2", "--keep-last", "10"], 2);
    let profile_url = profile.path().to_str().expect("utf-8").to_owned();
    let cluster_id = cluster_id(&source);
    let standby = restored(profile.path(), &cluster_id);
    let run = put_and_run(&source, "p3");
    assert_eq!(run["from"], 0, "a new chain: {run}");
    put_and_run(&source, "p4");
    ok(&restore(&standby, &profile_url, &cluster_id, &[]));
    assert_eq!(policy_keys(&standby), ["p1", "p2", "p3", "p4"]);
}

/// A standby still moves forward once retention removed the old chain's tail, which the new
/// chain's first point names: from the tail it applied, silently; from an earlier point, where
/// that the point is built on it cannot be told, with a warning saying so.
#[test]
fn a_standby_moves_forward_after_retention_removed_the_old_chain() {
    let (profile, source, _, _) = runs("no-snapshot", &["--keep-last", "2"], 1);
    let profile_url = profile.path().to_str().expect("utf-8").to_owned();
    let cluster_id = cluster_id(&source);
    let early = restored(profile.path(), &cluster_id);
    let first = put_and_run(&source, "p2");
    let tail = restored(profile.path(), &cluster_id);
    // keep-last 2: the third run starts a new chain, the fourth removes the old one.
    let run = put_and_run(&source, "p3");
    assert_eq!(run["from"], 0, "a new chain: {run}");
    let run = put_and_run(&source, "p4");
    let removed = run["retention"]["removed"].as_array().expect("removed");
    assert!(removed.contains(&first["point"]), "{run}");
    let out = restore(&tail, &profile_url, &cluster_id, &[]);
    ok(&out);
    assert!(!stderr(&out).contains("cannot be told"), "{}", stderr(&out));
    assert_eq!(policy_keys(&tail), ["p1", "p2", "p3", "p4"]);
    let out = restore(&early, &profile_url, &cluster_id, &[]);
    ok(&out);
    assert!(stderr(&out).contains("cannot be told"), "{}", stderr(&out));
    assert_eq!(policy_keys(&early), ["p1", "p2", "p3", "p4"]);
}

/// A point sealed by a run that died before recording it stays this home's, however
/// many runs fail after it (each of which keeps its id among the runs not recorded).
#[test]
fn a_point_sealed_by_a_run_that_died_stays_this_homes() {
    let (profile, home, _, _) = runs("no-snapshot", &["--keep-last", "100"], 1);
    let profile_url = profile.path().to_str().expect("utf-8").to_owned();
    let cluster_id = cluster_id(&home);
    let snapshots = profile.path().join(&cluster_id).join("snapshots");
    let listed = || -> std::collections::BTreeSet<String> {
        std::fs::read_dir(&snapshots)
            .expect("read dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    // Kill runs as soon as their manifest (the second snapshot: `minimal`, then `dr-point`)
    // is there, until one dies before recording it.
    let mut caught = None;
    for i in 0..20 {
        put(&home, "policy", &format!("killed-{i}"));
        let before = listed();
        let mut child = home
            .command(&["dr", "run", "--blueprint", &dr_wasm()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cairn runs");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let new = loop {
            let new: Vec<String> = listed().difference(&before).cloned().collect();
            if new.len() >= 2 || std::time::Instant::now() > deadline {
                break new;
            }
            if child.try_wait().expect("wait").is_some() {
                break listed().difference(&before).cloned().collect();
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        let _ = child.kill();
        let _ = child.wait();
        let out = home.run(&["dr", "status", "--output", "json"]);
        ok(&out);
        let recorded = json(&out)["last_run"]["point"].as_str().map(str::to_owned);
        let sealed = reviewed(&home, &profile_url, &cluster_id)
            .iter()
            .any(|(id, _)| new.contains(id));
        if sealed && recorded.is_none_or(|p| !new.contains(&p)) {
            caught = Some(i);
            break;
        }
    }
    let caught = caught.expect("a run killed after sealing its point, before recording it");
    // More failed runs than the ids kept (a DR blueprint that is not one fails each after its
    // id is kept).
    let hello = hello_wasm();
    for _ in 0..17 {
        let out = home.run(&["dr", "run", "--blueprint", hello.to_str().expect("utf-8")]);
        assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(!stderr(&out).contains("did not write"), "{}", stderr(&out));
    }
    put(&home, "policy", "last");
    ok(&dr_run(&home));
    let fresh = Cairn::new();
    ok(&restore(&fresh, &profile_url, &cluster_id, &[]));
    let keys = policy_keys(&fresh);
    assert!(
        keys.contains(&format!("killed-{caught}")) && keys.contains(&"last".to_owned()),
        "{keys:?}"
    );
}

/// Another home's manifest that cannot be read when a run looks is not recorded as
/// this home's: once it reads again, the next run refuses.
#[test]
fn an_unreadable_manifest_is_not_taken_for_this_homes() {
    let profile = tempfile::tempdir().expect("tempdir");
    let original = Cairn::new();
    let cluster_id = populated(&original, profile.path(), "no-snapshot");
    let copy = copy_of(&original);
    // The copy's point, its manifest's pack (written last) damaged.
    let data = profile.path().join(&cluster_id).join("data");
    let before = files_below(&data);
    put_and_run(&copy, "copy-only");
    let (pack, _) = files_below(&data)
        .into_iter()
        .filter(|(p, _)| !before.contains_key(p))
        .max_by_key(|(_, mtime)| *mtime)
        .expect("the manifest's pack");
    let bytes = std::fs::read(&pack).expect("read");
    let mut damaged = bytes.clone();
    damaged[16] ^= 0xff;
    std::fs::write(&pack, damaged).expect("damage");
    put(&original, "policy", "original-only");
    let out = dr_run(&original);
    ok(&out);
    assert!(stderr(&out).contains("not recorded"), "{}", stderr(&out));
    std::fs::write(&pack, bytes).expect("mend");
    put(&original, "policy", "original-again");
    refused_with(&dr_run(&original), "this home did not write");
}

/// A manifest over the DR blueprint's bound (1 MiB) is not read into memory: `review`
/// says so and lists the other points.
#[test]
fn an_oversized_manifest_is_refused_not_read() {
    let (profile, home, _, _) = runs("no-snapshot", &[], 1);
    let profile_url = profile.path().to_str().expect("utf-8").to_owned();
    let cluster_id = cluster_id(&home);
    let location = format!("{profile_url}/{cluster_id}");
    let mut child = home
        .command(&[
            "repo",
            "backup",
            "-",
            "--stdin-name",
            "dr-point",
            "--repo",
            &location,
        ])
        .env("CAIRN_PASSPHRASE", PASSPHRASE.trim_start_matches("raw:"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("cairn runs");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        let mut big = b"cairn-dr-point 1\n".to_vec();
        big.resize(2 << 20, b'x');
        stdin.write_all(&big).expect("write");
    }
    assert!(child.wait().expect("wait").success());
    let out = review(&home, &profile_url, &cluster_id, &["--output", "json"]);
    ok(&out);
    assert!(
        stderr(&out).contains("over 1048576 bytes"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        json(&out).as_array().map(Vec::len),
        Some(1),
        "{}",
        stdout(&out)
    );
}

#[test]
fn local_snapshot_says_what_a_recovery_elsewhere_leaves_and_the_policy_restore_says_why() {
    let profile = tempfile::tempdir().expect("tempdir");
    let lost = Cairn::new();
    ok(&lost.run(&["blueprint", "add", hello_wasm().to_str().expect("utf-8")]));
    let policy = lost.home.path().join("greet.yaml");
    let inventory = crate::support::root().join("examples/hello/inventory.yaml");
    std::fs::write(
        &policy,
        format!(
            "name: greet\nblueprint: hello\ntarget: local:{}\nworkloads: ['hel*']\n\
             frequency: '@hourly'\nretention: {{last: 2}}\ngrants: [exec]\n\
             params: {{greeting: hi}}\n",
            inventory.display()
        ),
    )
    .expect("write the policy");
    ok(&lost.run(&["policy", "apply", policy.to_str().expect("utf-8")]));
    let out = lost.run(&["policy", "run", "greet", "--output", "json"]);
    ok(&out);
    let point = json(&out)["points"][0]
        .as_str()
        .expect("a point")
        .to_owned();
    // The default mode names what a recovery on another machine would come back without.
    let out = enable(&lost, profile.path(), "local-snapshot", &[]);
    ok(&out);
    let text = stdout(&out);
    assert!(
        text.contains("local-restore-point (1 now)")
            && text.contains("action (1 now)")
            && text.contains("--mode exported-snapshot"),
        "{text}"
    );
    ok(&dr_run(&lost));

    let fresh = Cairn::new();
    let location = profile.path().to_str().expect("utf-8");
    ok(&restore(&fresh, location, &cluster_id(&lost), &[]));
    let shown = json(&fresh.run(&["policy", "show", "greet", "--output", "json"]));
    assert_eq!(shown["policy"]["last_run"]["points"][0], point.as_str());
    // The point was made: "not yet" would send the operator looking for a backup.
    let out = fresh.run(&["policy", "restore", "greet", "-w", "hello"]);
    refused_with(&out, "not carried by the DR recovery");
    assert!(
        stderr(&out).contains(&point) && stderr(&out).contains("exported-snapshot"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("yet"), "{}", stderr(&out));
}
