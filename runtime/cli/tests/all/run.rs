use crate::support::{Cairn, HELLO_INVENTORY as INVENTORY, hello_wasm, json, run_hello, stderr};

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
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(err.contains("nope") && err.contains("hello"), "{err}");
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
