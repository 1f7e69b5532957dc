use std::path::Path;

use crate::support::{
    Cairn, HELLO_INVENTORY as INVENTORY, hello_wasm, json, run_hello, stderr, stdout, wasm,
};

fn hello(cairn: &Cairn, extra: &[&str]) -> std::process::Output {
    run_hello(cairn, "backup", extra)
}

#[test]
fn the_readme_command_backs_up_hello() {
    let cairn = Cairn::new();
    let out = hello(&cairn, &["--grant", "exec"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("progress"),
        "logs and progress go to stderr: {}",
        stderr(&out)
    );
    // Every side effect is audited in the home.
    let audit = std::fs::read_to_string(cairn.home.path().join("audit.jsonl")).expect("audit log");
    assert!(audit.lines().any(|l| l.contains("\"exec\"")), "{audit}");
    // A grant the blueprint never uses is said so, and harms nothing.
    let out = hello(&cairn, &["--grant", "exec,scale"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--grant scale: blueprint hello does not declare it"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("--grant exec:"), "{}", stderr(&out));
}

#[test]
fn json_output_has_status_outputs_and_error() {
    let cairn = Cairn::new();
    let out = hello(&cairn, &["--grant", "exec", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["status"], "succeeded");
    assert!(v["error"].is_null());
    assert!(
        !v["outputs"]["artifacts"]
            .as_array()
            .expect("artifacts")
            .is_empty()
    );
    // The restore point it made, by name, as the catalog has it.
    let point = v["restore_point"].as_str().expect("a restore point");
    assert_eq!(v["action_id"], point);
    let out = cairn.run(&["catalog", "ls", "local-restore-point", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(point), "{}", stdout(&out));
    // Other runs make none.
    let out = run_hello(
        &cairn,
        "restore",
        &["--grant", "exec", "--from-point", point, "--output", "json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(json(&out)["restore_point"].is_null(), "{}", stdout(&out));
}

#[test]
fn a_backup_says_the_restore_point_it_recorded() {
    let cairn = Cairn::new();
    let out = hello(&cairn, &["--grant", "exec"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out_text = stdout(&out);
    let id = out_text
        .lines()
        .find_map(|l| l.strip_prefix("restore point ")?.strip_suffix(" recorded"))
        .unwrap_or_else(|| panic!("no restore point said: {out_text}"));
    // The id is the one `--from-point` takes.
    let out = run_hello(&cairn, "restore", &["--grant", "exec", "--from-point", id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("recorded"), "{}", stdout(&out));
}

#[test]
fn an_ungranted_capability_fails_with_denied() {
    let cairn = Cairn::new();
    let out = hello(&cairn, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["status"], "failed");
    let error = v["error"].as_str().expect("error");
    assert!(
        error.contains("denied") && error.contains("exec"),
        "{error}"
    );
}

#[test]
fn an_unknown_grant_is_a_usage_error() {
    let cairn = Cairn::new();
    let out = hello(&cairn, &["--grant", "root"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("root"), "{}", stderr(&out));
}

/// A secret given without its `raw:` is refused without being echoed.
#[test]
fn a_secret_without_its_source_is_refused_unechoed() {
    let cairn = Cairn::new();
    let out = hello(
        &cairn,
        &["--grant", "exec,secrets", "--secret", "pw=hunter2pass"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("NAME=raw:VALUE"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("hunter2"), "{}", stderr(&out));
}

#[test]
fn a_parameter_of_the_wrong_type_is_refused_before_running() {
    let cairn = Cairn::new();
    let out = hello(&cairn, &["--grant", "exec", "--param", "no-such-param=1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no-such-param"), "{}", stderr(&out));
}

#[test]
fn a_missing_workload_names_the_defined_ones() {
    let cairn = Cairn::new();
    let wasm = hello_wasm().to_str().expect("utf-8 path");
    let out = cairn.run(&[
        "run",
        wasm,
        "--action",
        "backup",
        "--target",
        INVENTORY,
        "--workload",
        "nope",
        "--grant",
        "exec",
    ]);
    assert_eq!(out.status.code(), Some(2), "refused before any phase ran");
    let err = stderr(&out);
    assert!(err.contains("nope") && err.contains("hello"), "{err}");
    assert!(!err.contains("[backup]"), "no phase ran: {err}");
}

#[test]
fn an_inventory_with_an_unknown_field_is_refused() {
    let cairn = Cairn::new();
    let inv = cairn.home.path().join("inventory.yaml");
    std::fs::write(&inv, "namespaces:\n  default:\n    workloads:\n      hello:\n        workdir: .\n        colour: blue\n")
        .expect("write");
    let target = format!("local:{}", inv.display());
    let wasm = hello_wasm().to_str().expect("utf-8 path");
    let out = cairn.run(&[
        "run",
        wasm,
        "--action",
        "backup",
        "--target",
        &target,
        "--workload",
        "hello",
        "--grant",
        "exec",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("colour"), "{}", stderr(&out));
}

#[test]
fn an_unsupported_target_scheme_is_refused() {
    let cairn = Cairn::new();
    let wasm = hello_wasm().to_str().expect("utf-8 path");
    let out = cairn.run(&["run", wasm, "--action", "backup", "--target", "k8s:prod"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("local:"), "{}", stderr(&out));
}

#[test]
fn a_secret_without_the_secrets_grant_is_a_usage_error() {
    let cairn = Cairn::new();
    let out = hello(&cairn, &["--grant", "exec", "--secret", "token=raw:x"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--grant secrets"), "{}", stderr(&out));
}

/// A two-replica workload `app` in a tempdir for `blueprints/quiesce`: start and stop leave a
/// trace in `events.log`, and stop, after it stopped the application, lingers until `linger`
/// seconds after the latest readiness probe (a slow shutdown). The prehook probes first thing
/// (`workloads::get`), so that is `linger` seconds after the prehook began, give or take its
/// instantiation.
pub(crate) fn slow_stopping_app(linger: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).expect(name);
    std::fs::create_dir(dir.path().join("data")).expect("data");
    file("running", "");
    file(
        "start.sh",
        "echo \"start $CAIRN_REPLICAS\" >> events.log\ntouch running\n",
    );
    file(
        "stop.sh",
        &format!(
            "rm running\necho stop >> events.log\n\
             sleep \"$(awk -v probed=\"$(cat probed)\" -v now=\"$(date +%s.%N)\" \
             'BEGIN {{ d = probed + {linger} - now; print (d > 0 ? d : 0) }}')\"\n"
        ),
    );
    file("ready.sh", "date +%s.%N > probed\ntest -f running\n");
    file(
        "inventory.yaml",
        "namespaces:\n  default:\n    workloads:\n      app:\n        replicas: 2\n        workdir: .\n\
         \x20       allow: [sh]\n        start: [sh, ./start.sh]\n        stop: [sh, ./stop.sh]\n\
         \x20       ready: [sh, ./ready.sh]\n        volumes:\n          data: ./data\n",
    );
    dir
}

fn quiesce_backup(cairn: &Cairn, app: &Path, extra: &[&str]) -> std::process::Output {
    let wasm = wasm("quiesce");
    let target = format!("local:{}", app.join("inventory.yaml").display());
    let mut args = vec![
        "run",
        wasm.to_str().expect("utf-8 path"),
        "--action",
        "backup",
        "--target",
        &target,
        "--workload",
        "app",
        "--grant",
        "workloads,scale,volumes",
        "--output",
        "json",
    ];
    args.extend_from_slice(extra);
    cairn.run(&args)
}

fn phase_statuses(report: &serde_json::Value) -> Vec<&str> {
    report["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| p["status"].as_str().expect("status"))
        .collect()
}

#[test]
fn a_quiesce_prehook_that_times_out_after_scaling_is_undone() {
    // The stop command outlasts the prehook's 2 s deadline by a little: the scale to zero
    // completes (a host call gets half a second past the deadline), and the prehook is stopped
    // as soon as it resumes.
    let app = slow_stopping_app("2.02");
    let cairn = Cairn::new();
    let out = quiesce_backup(&cairn, app.path(), &["--timeout", "2s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(
        phase_statuses(&report),
        ["timed_out", "skipped", "ok"],
        "{report:#}"
    );
    let error = report["error"].as_str().expect("error");
    assert!(
        error.starts_with("backupPrehook: the blueprint ran past its deadline of 2s"),
        "{error}"
    );
    // The prehook checkpointed the count before it scaled; the posthook scaled back to it.
    assert_eq!(
        report["phases"][0]["outputs"]["values"],
        serde_json::json!([["replicas", "2"]])
    );
    assert_eq!(
        report["phases"][2]["outputs"]["values"],
        serde_json::json!([["replicas", "2"]])
    );
    let events = std::fs::read_to_string(app.path().join("events.log")).expect("events.log");
    assert_eq!(
        events, "stop\nstart 2\n",
        "scaled to zero, then back to two"
    );
    assert!(
        app.path().join("running").exists(),
        "the application runs again"
    );
}

#[test]
fn a_posthooks_values_join_the_report_and_the_restore_point() {
    let app = slow_stopping_app("0");
    let cairn = Cairn::new();
    let out = quiesce_backup(&cairn, app.path(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(phase_statuses(&report), ["ok", "ok", "ok"], "{report:#}");
    // `replicas` is the posthook's value, the volume snapshot the main phase's artifact: the
    // report (what `--from` reads) holds both.
    assert_eq!(
        report["outputs"]["values"],
        serde_json::json!([["replicas", "2"]]),
        "{report:#}"
    );
    let artifacts = report["outputs"]["artifacts"]
        .as_array()
        .expect("artifacts");
    assert_eq!(artifacts.len(), 1, "{report:#}");
    assert_eq!(artifacts[0]["name"], "volume-data");
    // ...and so does the restore point in the catalog.
    let out = cairn.run(&["catalog", "ls", "local-restore-point", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let point = &json(&out)[0]["value"];
    assert_eq!(
        point["values"],
        serde_json::json!([["replicas", "2"]]),
        "{point:#}"
    );
    assert_eq!(point["artifacts"][0]["name"], "volume-data", "{point:#}");
}

#[test]
fn hello_runs_against_a_kubernetes_cluster() {
    let api = cairn_kube_fake::FakeApi::start_blocking();
    api.namespace("default");
    api.put(
        "/apis/apps/v1/namespaces/default/deployments",
        cairn_kube_fake::workload(
            "hello",
            1,
            serde_json::json!({ "containers": [{ "name": "hello", "image": "busybox" }] }),
        ),
    );
    let cairn = Cairn::new();
    let kubeconfig = cairn.home.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig);
    let wasm = hello_wasm().to_str().expect("utf-8 path");
    let args = [
        "run",
        wasm,
        "--action",
        "backup",
        "--target",
        "kube",
        "--workload",
        "hello",
        "--grant",
        "exec",
        "--output",
        "json",
    ];
    let out = cairn
        .command(&args)
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("cairn runs");
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["status"], "succeeded");
    let artifact = &v["outputs"]["artifacts"][0];
    assert_eq!(
        artifact["values"],
        serde_json::json!([
            ["pod", "hello-0"],
            ["exit-code", "0"],
            ["stdout", "hello, world"]
        ]),
        "{v}"
    );

    // `cairn workloads` shows the target as the blueprint sees it.
    let out = cairn
        .command(&["workloads", "--target", "kube", "--output", "json"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("cairn runs");
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = json(&out);
    assert_eq!(listed[0]["name"], "hello", "{listed}");
    assert_eq!(listed[0]["kind"], "deployment", "{listed}");
    assert_eq!(listed[0]["pods"][0]["name"], "hello-0", "{listed}");

    // A context the kubeconfig does not have is refused before anything runs.
    let mut args = args;
    args[5] = "kube:elsewhere";
    let out = cairn
        .command(&args)
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("cairn runs");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("elsewhere"), "{}", stderr(&out));

    // A snapshot class means nothing to a local target.
    let out = run_hello(
        &cairn,
        "backup",
        &["--grant", "exec", "--snapshot-class", "fast"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--snapshot-class"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn workloads_lists_a_targets_namespace_and_names_a_missing_one() {
    let cairn = Cairn::new();
    let out = cairn.run(&["workloads", "--target", INVENTORY]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = crate::support::stdout(&out);
    let mut lines = text.lines();
    assert_eq!(
        lines
            .next()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["NAME", "KIND", "READY", "PODS", "VOLUMES", "LABELS"]),
        "{text}"
    );
    // hello has no volumes, so its labels follow its pods.
    let row: Vec<&str> = lines.next().expect("a row").split_whitespace().collect();
    assert_eq!(
        row,
        ["hello", "deployment", "1/1", "hello-0", "app=hello"],
        "{text}"
    );

    let out = cairn.run(&["workloads", "--target", INVENTORY, "-n", "elsewhere"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("elsewhere"), "{}", stderr(&out));
}

/// A wrong passphrase for the export repository is the user's input: refused (exit 2) before
/// any phase runs.
#[test]
fn a_wrong_repository_passphrase_is_a_usage_error() {
    let cairn = Cairn::new();
    let repo = cairn.home.path().join("exports");
    let repo = repo.to_str().expect("utf-8");
    let init = cairn
        .command(&["repo", "init", "--repo", repo])
        .env("CAIRN_PASSPHRASE", "right")
        .output()
        .expect("cairn runs");
    assert!(init.status.success(), "{}", stderr(&init));
    let wasm = hello_wasm().to_str().expect("utf-8 path").to_owned();
    let out = cairn
        .command(&[
            "run",
            &wasm,
            "--action",
            "backup",
            "--target",
            INVENTORY,
            "--workload",
            "hello",
            "--grant",
            "exec",
            "--repo",
            repo,
        ])
        .env("CAIRN_PASSPHRASE", "wrong")
        .output()
        .expect("cairn runs");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("wrong"), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("[backup]"),
        "no phase ran: {}",
        stderr(&out)
    );
}

/// Exports live and die with their restore points: a failed backup's are discarded, and so is
/// one a backup finished but did not return; `repo forget` rules leave exports alone, and one a
/// point references is forgotten only with its point; an export nothing references is listed.
#[test]
fn exports_live_and_die_with_their_restore_points() {
    let cairn = Cairn::new();
    let wasm = wasm("cairn-engine-guest-misbehave");
    let wasm = wasm.to_str().expect("utf-8 path");
    let backup = |mode: &str| {
        let mode = format!("mode={mode}");
        cairn.run(&[
            "run",
            wasm,
            "--action",
            "backup",
            "--target",
            INVENTORY,
            "--workload",
            "hello",
            "--param",
            &mode,
            "--param",
            "label=x",
            "--grant",
            "export",
        ])
    };
    let exports = || {
        let out = cairn.run(&["repo", "snapshots", "--tag", "export", "--output", "json"]);
        crate::support::ok(&out);
        json(&out)
            .as_array()
            .expect("snapshots")
            .iter()
            .map(|s| s["id"].as_str().expect("an id").to_owned())
            .collect::<Vec<_>>()
    };

    let out = backup("export-fail");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("discarded 1 export(s)"),
        "{}",
        stderr(&out)
    );
    assert!(exports().is_empty());

    let out = backup("export-unreturned");
    crate::support::ok(&out);
    assert!(
        stderr(&out).contains("finished but not returned"),
        "{}",
        stderr(&out)
    );
    let kept = exports();
    assert_eq!(kept.len(), 1, "only the returned export is kept");
    let points = || crate::apps::exported_points(&cairn);
    let point = points()[0].clone();

    // An export no restore point references (its point's record dropped, as after a run
    // killed before it recorded it): listed by rules, removed by its id.
    crate::support::ok(&backup("export-unreturned"));
    let second = points()
        .into_iter()
        .find(|p| *p != point)
        .expect("the second point");
    crate::support::ok(&cairn.run(&["catalog", "forget-point", &second]));
    let out = cairn.run(&["repo", "forget", "--keep-last", "1"]);
    crate::support::ok(&out);
    let said = crate::support::stdout(&out);
    assert!(said.contains("left 2 export snapshot(s)"), "{said}");
    assert!(
        said.contains("1 of them no restore point of this home references"),
        "{said}"
    );
    assert_eq!(exports().len(), 2);
    let out = cairn.run(&["repo", "forget", "--keep-last", "1", "--tag", "export"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = cairn.run(&["repo", "forget", &kept[0]]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("holds restore point {point}'s data")),
        "{}",
        stderr(&out)
    );
    let stray_id = exports()
        .into_iter()
        .find(|id| *id != kept[0])
        .expect("the stray export");
    crate::support::ok(&cairn.run(&["repo", "forget", &stray_id]));
    assert_eq!(exports(), kept);
}

/// A restore point is restored only by the blueprint that made it, and only by an action that
/// takes one; a prehook run alone is warned about.
#[test]
fn a_point_is_used_only_by_its_blueprint_and_by_actions_that_take_one() {
    let cairn = Cairn::new();
    let out = hello(&cairn, &["--grant", "exec", "--output", "json"]);
    crate::support::ok(&out);
    assert_eq!(json(&out)["blueprint"], "hello");
    let report = cairn.home.path().join("report.json");
    std::fs::write(&report, &out.stdout).expect("write the report");
    let report = report.to_str().expect("utf-8 path");
    let point = json(&out)["action_id"].as_str().expect("an id").to_owned();

    let other = wasm("cairn-engine-guest-misbehave");
    let other = other.to_str().expect("utf-8 path");
    for from in [["--from", report], ["--from-point", point.as_str()]] {
        let out = cairn.run(
            &[
                &[
                    "run",
                    other,
                    "--action",
                    "restore",
                    "--target",
                    INVENTORY,
                    "--workload",
                    "hello",
                    "--param",
                    "label=x",
                ][..],
                &from[..],
            ]
            .concat(),
        );
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("made by blueprint hello, not misbehave"),
            "{}",
            stderr(&out)
        );
    }
    let out = hello(&cairn, &["--grant", "exec", "--from", report]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("a backup makes a new one"),
        "{}",
        stderr(&out)
    );
    let out = cairn.run(&[
        "run",
        other,
        "--action",
        "backupPrehook",
        "--target",
        INVENTORY,
        "--workload",
        "hello",
        "--param",
        "label=x",
    ]);
    assert!(
        stderr(&out).contains("runs the prehook alone"),
        "{}",
        stderr(&out)
    );
}

/// Asked for JSON, a command refused before it ran still prints a document on stdout, as
/// `cairn repo` does: the error and the exit code.
#[test]
fn a_refusal_asked_for_json_prints_a_document() {
    let cairn = Cairn::new();
    let out = cairn.run(&[
        "run",
        "/no/such/blueprint.wasm",
        "--action",
        "backup",
        "--target",
        crate::support::HELLO_INVENTORY,
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let doc = json(&out);
    assert_eq!(doc["exit_code"], 2, "{doc}");
    assert!(
        doc["error"]
            .as_str()
            .is_some_and(|e| e.contains("/no/such/blueprint.wasm")),
        "{doc}"
    );
}
