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
