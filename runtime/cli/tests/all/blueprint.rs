use std::path::PathBuf;

use crate::support::{Cairn, hello_wasm, json, stderr};

#[test]
fn inspect_json_has_the_documented_keys() {
    let cairn = Cairn::new();
    let wasm = hello_wasm().to_str().expect("utf-8 path");
    let out = cairn.run(&["blueprint", "inspect", wasm, "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["name"], "hello");
    assert_eq!(v["wit"], "0.1.0");
    assert!(
        v["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:") && d.len() == 71)
    );
    assert!(
        v["actions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["name"] == "backup"))
    );
    assert!(
        v["capabilities"]
            .as_array()
            .is_some_and(|c| c.contains(&"exec".into()))
    );
    assert!(v["version"].is_string());
}

#[test]
fn inspect_text_names_the_digest() {
    let cairn = Cairn::new();
    let out = cairn.run(&[
        "blueprint",
        "inspect",
        hello_wasm().to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("sha256:") && text.contains("backup") && text.contains("exec"),
        "{text}"
    );
}

#[test]
fn inspect_refuses_a_file_that_is_not_a_component() {
    let cairn = Cairn::new();
    let bogus = cairn.home.path().join("bogus.wasm");
    std::fs::write(&bogus, b"definitely not wasm").expect("write");
    let out = cairn.run(&["blueprint", "inspect", bogus.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("bogus.wasm"), "{}", stderr(&out));
}

#[test]
fn inspect_names_a_missing_file() {
    let cairn = Cairn::new();
    let out = cairn.run(&["blueprint", "inspect", "no/such/blueprint.wasm"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}

#[test]
fn build_refuses_a_directory_without_a_crate() {
    let cairn = Cairn::new();
    let dir = cairn.home.path().to_str().expect("utf-8").to_string();
    let out = cairn.run(&["blueprint", "build", &dir]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no Cargo.toml"), "{}", stderr(&out));
}

/// A registered blueprint is found by name even beside a directory of that name (its crate),
/// and a directory given as a component says how to build it.
#[test]
fn a_name_beside_a_directory_of_that_name_is_the_registered_blueprint() {
    let cairn = Cairn::new();
    let wasm = hello_wasm().to_str().expect("utf-8").to_owned();
    let add = cairn.run(&["blueprint", "add", &wasm]);
    assert!(add.status.success(), "{}", stderr(&add));
    let crate_dir = cairn.home.path().join("hello");
    std::fs::create_dir_all(&crate_dir).expect("mkdir");
    let out = cairn
        .command(&["blueprint", "inspect", "hello", "--output", "json"])
        .current_dir(cairn.home.path())
        .output()
        .expect("cairn runs");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["name"], "hello");
    let out = cairn.run(&["blueprint", "inspect", crate_dir.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is a directory; build its component with `cairn blueprint build"),
        "{}",
        stderr(&out)
    );
}

/// `blueprint new` makes a crate whose tests pass as made, which builds into a blueprint that
/// backs up, restores and deletes on its own local inventory; it refuses what it cannot make.
#[test]
fn a_new_blueprint_builds_tests_and_runs_as_made() {
    let cairn = Cairn::new();
    let dir = cairn.home.path().join("crates/my-app");
    let sdk = crate::support::root().join("sdk");
    let new = |args: &[&str]| {
        let mut all = vec!["blueprint", "new"];
        all.extend_from_slice(args);
        cairn.run(&all)
    };
    let path = dir.to_str().expect("utf-8");
    let out = new(&[path, "--sdk", sdk.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cargo test"));
    for (args, says) in [
        (
            vec![path, "--sdk", sdk.to_str().expect("utf-8")],
            "is not empty",
        ),
        (vec!["Bad_Name"], "cannot name a blueprint crate"),
        (vec!["fresh", "--sdk", path], "not Cairn's SDK"),
    ] {
        let out = new(&args);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
    }

    // The workspace's lock, so the crate builds with the versions Cairn is tested with, and
    // in the test guests' build directory, whose dependencies it shares.
    std::fs::copy(
        crate::support::root().join("Cargo.lock"),
        dir.join("Cargo.lock"),
    )
    .expect("the lock");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::support::root().join("target"))
        .join("guests");
    let tested = std::process::Command::new(env!("CARGO"))
        .args(["test", "--quiet", "--target-dir"])
        .arg(&target)
        .current_dir(&dir)
        .output()
        .expect("cargo runs");
    assert!(tested.status.success(), "{}", stderr(&tested));

    let built = cairn
        .command(&["blueprint", "build", path])
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("cairn runs");
    assert!(built.status.success(), "{}", stderr(&built));
    let wasm = String::from_utf8_lossy(&built.stdout).trim().to_owned();
    let inventory = format!("local:{}", dir.join("inventory.yaml").display());
    let run = |action: &str, grants: &str, from: Option<&std::path::Path>| {
        let mut args = vec![
            "run",
            &wasm,
            "--action",
            action,
            "--target",
            &inventory,
            "--workload",
            "app",
            "--grant",
            grants,
            "--output",
            "json",
        ];
        let from = from.map(|f| f.to_str().expect("utf-8").to_owned());
        if let Some(f) = &from {
            args.extend(["--from", f]);
        }
        cairn.run(&args)
    };
    let out = run("backup", "exec,export", None);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = cairn.home.path().join("backup.json");
    std::fs::write(&report, &out.stdout).expect("the report");
    let file = dir.join("data/hello.txt");
    let before = std::fs::read(&file).expect("the data");
    std::fs::remove_file(&file).expect("lose the data");
    let out = run("restore", "exec,import", Some(&report));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&file).expect("restored"), before);
    let out = run("delete", "export", Some(&report));
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `hello.wasm` with a custom section appended: another build (digest) of the same version.
fn patched_hello(cairn: &Cairn) -> PathBuf {
    let mut bytes = std::fs::read(hello_wasm()).expect("hello.wasm");
    // Section 0 (custom) of 7 bytes: the name `patch` (5 bytes, length-prefixed), then `x`.
    bytes.extend_from_slice(&[0, 7, 5, b'p', b'a', b't', b'c', b'h', b'x']);
    let patched = cairn.home.path().join("hello-patched.wasm");
    std::fs::write(&patched, bytes).expect("write");
    patched
}

/// The digest `blueprint list --output json` shows for `hello`.
fn registered_digest(cairn: &Cairn) -> String {
    let out = cairn.run(&["blueprint", "list", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    let rows = v.as_array().expect("a list");
    let hello = rows.iter().find(|r| r["name"] == "hello").expect("hello");
    hello["digest"].as_str().expect("a digest").to_owned()
}

/// The Kubernetes install adds its bundled builds with --keep-newer at every
/// start; an operator's other build of the same version, added by hand (a hotfix), must
/// survive it.
#[test]
fn keep_newer_keeps_another_build_of_the_same_version() {
    let cairn = Cairn::new();
    let patched = patched_hello(&cairn);
    let patched = patched.to_str().expect("utf-8 path");
    let stock = hello_wasm().to_str().expect("utf-8 path");
    let add = cairn.run(&["blueprint", "add", patched]);
    assert!(add.status.success(), "{}", stderr(&add));
    let hotfix = registered_digest(&cairn);

    let again = cairn.run(&["blueprint", "add", "--keep-newer", stock]);
    assert!(again.status.success(), "{}", stderr(&again));
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(
        said.contains("is another build of the same version as the registered 0.1.0")
            && said.contains(&hotfix)
            && said.contains("which was added without --keep-newer")
            && said.contains("the registered one is kept (--keep-newer)"),
        "{said}"
    );
    assert_eq!(registered_digest(&cairn), hotfix, "the hotfix stays");

    // Without --keep-newer it replaces it, with a warning, as before.
    let replace = cairn.run(&["blueprint", "add", stock]);
    assert!(replace.status.success(), "{}", stderr(&replace));
    assert!(
        stderr(&replace).contains("cairn: warning: blueprint hello 0.1.0")
            && stderr(&replace).contains("which it replaces"),
        "{}",
        stderr(&replace)
    );
    assert_ne!(registered_digest(&cairn), hotfix, "replaced");
}

/// An upgraded image's bundled build, of the same version as the previous image's (every
/// bundled blueprint has the workspace's version), replaces the one an earlier --keep-newer add
/// registered: otherwise no image upgrade would bring its blueprints' fixes. (Its record holds
/// no `by_hand`, as every record written before the field does.)
#[test]
fn keep_newer_replaces_another_build_that_keep_newer_added() {
    let cairn = Cairn::new();
    let stock = hello_wasm().to_str().expect("utf-8 path");
    let patched = patched_hello(&cairn);
    let patched = patched.to_str().expect("utf-8 path");
    let add = cairn.run(&["blueprint", "add", "--keep-newer", stock]);
    assert!(add.status.success(), "{}", stderr(&add));
    let bundled = registered_digest(&cairn);
    // Registered again by hand, the very same build is still the bundled one, not a hotfix.
    let again = cairn.run(&["blueprint", "add", stock]);
    assert!(again.status.success(), "{}", stderr(&again));

    let upgraded = cairn.run(&["blueprint", "add", "--keep-newer", patched]);
    assert!(upgraded.status.success(), "{}", stderr(&upgraded));
    let said = String::from_utf8_lossy(&upgraded.stdout);
    assert!(
        said.contains("is another build of the same version as the registered 0.1.0")
            && said.contains("which was not added by hand (a bundled build)")
            && said.contains("it is replaced"),
        "{said}"
    );
    let upgraded = registered_digest(&cairn);
    assert_ne!(upgraded, bundled, "replaced");

    // The next start adds the same build again: it stays.
    let restart = cairn.run(&["blueprint", "add", "--keep-newer", patched]);
    assert!(restart.status.success(), "{}", stderr(&restart));
    assert_eq!(registered_digest(&cairn), upgraded);
}

/// `all` with other capabilities says that `all` is given alone, not that it is
/// unknown.
#[test]
fn allow_all_with_other_capabilities_says_all_is_given_alone() {
    let cairn = Cairn::new();
    let stock = hello_wasm().to_str().expect("utf-8 path");
    let out = cairn.run(&["blueprint", "add", stock, "--allow", "all,exec"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "--allow all,exec: `all` (every capability the blueprint declares) is given alone"
        ),
        "{}",
        stderr(&out)
    );
}
