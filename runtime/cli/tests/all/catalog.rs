//! The catalog in the home: `cairn run` records actions and restore points; `cairn catalog`.

use crate::support::{Cairn, json, run_hello, stderr, stdout};

fn hello(cairn: &Cairn, action: &str, extra: &[&str]) -> std::process::Output {
    run_hello(cairn, action, &[&["--grant", "exec"][..], extra].concat())
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

#[test]
fn a_backup_records_its_action_and_restore_point() {
    let cairn = Cairn::new();
    let out = hello(&cairn, "backup", &["--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = cairn.home.path().join("backup.json");
    std::fs::write(&report, &out.stdout).expect("writing the report");
    let action_id = json(&out)["action_id"]
        .as_str()
        .expect("action id")
        .to_owned();

    let out = cairn.run(&["catalog", "ls", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let counts = json(&out);
    assert_eq!(count(&counts, "action"), 1);
    assert_eq!(count(&counts, "local-restore-point"), 1);
    assert_eq!(count(&counts, "exported-restore-point"), 0);

    let out = cairn.run(&["catalog", "ls", "local-restore-point", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let points = json(&out);
    let point = &points[0]["value"];
    assert_eq!(point["id"], action_id.as_str());
    assert_eq!(point["blueprint"], "hello");
    assert_eq!(point["artifacts"][0]["name"], "greeting");
    assert_eq!(point["artifacts"][0]["values"]["stdout"], "hello, world");

    let out = cairn.run(&["catalog", "ls", "action", "--output", "json"]);
    let actions = json(&out);
    let action = &actions[0]["value"];
    assert_eq!(action["status"], "succeeded");
    assert_eq!(action["restore_point"], action_id.as_str());
    assert_eq!(action["phases"][0]["name"], "backup");
    assert_eq!(action["phases"][0]["status"], "succeeded");

    // Restore from the catalog's restore point: recorded as an action that used it.
    // The restore sees the point's artifacts and its values, from the catalog or the report.
    let from_report = ["--from", report.to_str().expect("a UTF-8 path")];
    for from in [&["--from-point", action_id.as_str()][..], &from_report[..]] {
        let out = hello(&cairn, "restore", from);
        assert!(out.status.success(), "{}", stderr(&out));
        for said in ["says again: hello, world", "greeted with \"hello\""] {
            assert!(stderr(&out).contains(said), "{from:?}: {}", stderr(&out));
        }
    }
    let out = cairn.run(&["catalog", "ls", "--output", "json"]);
    assert_eq!(count(&json(&out), "action"), 3);
    assert_eq!(count(&json(&out), "local-restore-point"), 1);
}

#[test]
fn a_failed_run_is_recorded_as_failed_without_a_restore_point() {
    let cairn = Cairn::new();
    let out = run_hello(&cairn, "backup", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = cairn.run(&["catalog", "ls", "action", "--output", "json"]);
    let actions = json(&out);
    assert_eq!(actions[0]["value"]["status"], "failed");
    assert!(
        actions[0]["value"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("denied")),
        "{actions}"
    );
    let out = cairn.run(&["catalog", "ls", "--output", "json"]);
    assert_eq!(count(&json(&out), "local-restore-point"), 0);

    // Its report is no restore point: a restore from it is refused before anything runs.
    let out = run_hello(&cairn, "backup", &["--output", "json"]);
    let report = cairn.home.path().join("failed.json");
    std::fs::write(&report, &out.stdout).expect("save the report");
    let out = hello(
        &cairn,
        "restore",
        &["--from", report.to_str().expect("utf-8")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is of a run that failed") && stderr(&out).contains("denied"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unknown_restore_point_or_kind_is_a_usage_error() {
    let cairn = Cairn::new();
    let out = hello(&cairn, "restore", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("restore needs the restore point it acts on"),
        "{}",
        stderr(&out)
    );
    let out = hello(&cairn, "restore", &["--from-point", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no such restore point"),
        "{}",
        stderr(&out)
    );

    let out = cairn.run(&["catalog", "ls", "widgets"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("widgets"), "{}", stderr(&out));
}

#[test]
fn put_stores_records_of_any_kind() {
    let cairn = Cairn::new();
    let file = cairn.home.path().join("preset.json");
    std::fs::write(&file, r#"{"frequency": "@daily"}"#).expect("write");
    let out = cairn.run(&[
        "catalog",
        "put",
        "policy-preset",
        "gold",
        "--json",
        file.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cairn.run(&["catalog", "ls", "policy-preset"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("gold"), "{}", stdout(&out));
    assert!(stdout(&out).contains("@daily"), "{}", stdout(&out));

    std::fs::write(&file, "not json").expect("write");
    let out = cairn.run(&[
        "catalog",
        "put",
        "policy-preset",
        "bad",
        "--json",
        file.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not JSON"), "{}", stderr(&out));
}
