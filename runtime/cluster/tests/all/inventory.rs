//! Inventory parsing and validation.

use cairn_cluster::{Cluster, Error, Inventory, WorkloadRef};

use crate::{Fixture, HELLO, hello};

fn inventory_error(err: Error) -> String {
    match err {
        Error::Inventory { path, reason } => format!("{path}: {reason}"),
        other => panic!("expected an inventory error, got {other:?}"),
    }
}

#[test]
fn parses_the_documented_example() {
    let inv = Inventory::parse(
        r#"
namespaces:
  default:
    objects:
      configmap:
        settings: {data: {a: "1"}}
    workloads:
      hello:
        kind: statefulset
        replicas: 2
        containers: [main, sidecar]
        workdir: .
        env: {GREETING: hello}
        allow: [echo, sh, /bin/cat]
        start: [sh, -c, "true"]
        stop: [sh, -c, "true"]
        ready: [sh, -c, "true"]
        volumes:
          data: ./data
"#,
        "example.yaml",
    )
    .expect("the documented example parses");
    assert_eq!(inv.namespaces().collect::<Vec<_>>(), ["default"]);
    assert_eq!(inv.workloads("default").collect::<Vec<_>>(), ["hello"]);
}

#[test]
fn unknown_field_names_file_line_field_and_valid_fields() {
    let text = "namespaces:\n  default:\n    workloads:\n      hello:\n        replicaz: 3\n";
    let err = inventory_error(
        Inventory::parse(text, "inv.yaml").expect_err("an unknown field is an error"),
    );
    assert!(err.contains("inv.yaml"), "{err}");
    assert!(err.contains("replicaz"), "{err}");
    assert!(err.contains("line 5"), "{err}");
    assert!(err.contains("replicas"), "lists the valid fields: {err}");
}

#[test]
fn unknown_top_level_field_is_an_error() {
    let err = inventory_error(
        Inventory::parse("namespaces: {}\nextra: 1\n", "inv.yaml").expect_err("rejected"),
    );
    assert!(err.contains("extra"), "{err}");
}

#[test]
fn no_namespaces_is_an_error() {
    let err =
        inventory_error(Inventory::parse("namespaces: {}\n", "inv.yaml").expect_err("rejected"));
    assert!(err.contains("at least one namespace"), "{err}");
}

#[test]
fn names_must_be_dns_labels() {
    for bad in ["Hello", "a_b", "-a", "a.b", "\"\""] {
        let text = format!("namespaces:\n  default:\n    workloads:\n      {bad}: {{}}\n");
        let err = inventory_error(Inventory::parse(&text, "inv.yaml").expect_err("rejected"));
        assert!(err.contains("DNS label"), "{bad}: {err}");
    }
    let err = inventory_error(
        Inventory::parse("namespaces:\n  Prod: {}\n", "inv.yaml").expect_err("rejected"),
    );
    assert!(err.contains("DNS label"), "{err}");
}

#[test]
fn allow_entries_are_bare_names_or_absolute() {
    let text = "namespaces:\n  default:\n    workloads:\n      w:\n        allow: [./run.sh]\n";
    let err = inventory_error(Inventory::parse(text, "inv.yaml").expect_err("rejected"));
    assert!(err.contains("./run.sh"), "{err}");
}

#[test]
fn missing_workdir_names_workload_and_path() {
    let fx = Fixture::new(
        "namespaces:\n  default:\n    workloads:\n      hello:\n        workdir: nowhere\n",
        &[],
    );
    let err = inventory_error(fx.try_open().expect_err("a missing workdir is an error"));
    assert!(err.contains("default/hello"), "{err}");
    assert!(err.contains("nowhere"), "{err}");
}

#[test]
fn missing_volume_directory_names_workload_and_path() {
    let fx = Fixture::new(HELLO, &["work"]);
    let err = inventory_error(fx.try_open().expect_err("a missing volume is an error"));
    assert!(err.contains("default/hello"), "{err}");
    assert!(err.contains("data"), "{err}");
}

#[test]
fn volume_path_escaping_the_inventory_directory_is_rejected() {
    for path in ["../x", "/etc", "a/../../x", "."] {
        let text = format!(
            "namespaces:\n  default:\n    workloads:\n      hello:\n        volumes:\n          data: {path}\n"
        );
        let fx = Fixture::new(&text, &["x"]);
        let err = inventory_error(fx.try_open().expect_err("an escaping volume is rejected"));
        assert!(err.contains("data"), "{path}: {err}");
    }
}

#[test]
fn volume_symlink_out_of_the_inventory_directory_is_rejected() {
    let outside = tempfile::tempdir().expect("a temporary directory");
    let fx = Fixture::new(
        "namespaces:\n  default:\n    workloads:\n      hello:\n        volumes:\n          data: link/data\n",
        &[],
    );
    std::fs::create_dir(outside.path().join("data")).expect("mkdir");
    std::os::unix::fs::symlink(outside.path(), fx.path("link")).expect("symlink");
    let err = inventory_error(
        fx.try_open()
            .expect_err("a volume reached through a symlink out is rejected"),
    );
    assert!(err.contains("volume data"), "{err}");
}

#[test]
fn unreadable_file_is_an_inventory_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let err = cairn_cluster::LocalCluster::from_inventory(
        &dir.path().join("absent.yaml"),
        &dir.path().join("state"),
    )
    .expect_err("a missing file is an error");
    assert!(inventory_error(err).contains("absent.yaml"));
}

#[tokio::test]
async fn unknown_workload_lists_the_defined_ones() {
    let fx = Fixture::new(HELLO, &["work", "data"]);
    let cluster = fx.open();
    let err = cluster
        .workload(&WorkloadRef::new("default", "nope"))
        .await
        .expect_err("not found");
    match &err {
        Error::NotFound {
            kind: "workload",
            hint,
            ..
        } => assert!(hint.contains("hello"), "{err}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    let err = cluster
        .workload(&WorkloadRef::new("prod", "hello"))
        .await
        .expect_err("not found");
    match &err {
        Error::NotFound {
            kind: "namespace",
            hint,
            ..
        } => assert!(hint.contains("default"), "{err}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    let w = cluster.workload(&hello()).await.expect("hello exists");
    assert_eq!(w.replicas, 1);
    assert_eq!(w.pods.len(), 1);
    assert_eq!(w.pods[0].name, "hello-0");
    assert_eq!(w.pods[0].containers, ["main"]);
    assert_eq!(cluster.namespaces().await.expect("namespaces"), ["default"]);
}

#[test]
fn pass_env_takes_names_and_prefixes_only() {
    let text = "namespaces:\n  a:\n    workloads:\n      w:\n        pass_env: [\"A-B\"]\n";
    let err = inventory_error(Inventory::parse(text, "inv.yaml").expect_err("malformed"));
    assert!(err.contains("pass_env") && err.contains("A-B"), "{err}");
    let text = "namespaces:\n  a:\n    workloads:\n      w:\n        pass_env: [LD_*]\n";
    let err = inventory_error(Inventory::parse(text, "inv.yaml").expect_err("reserved"));
    assert!(err.contains("no exec may set"), "{err}");
    let text = "namespaces:\n  a:\n    workloads:\n      w:\n        pass_env: [A, B_*]\n";
    Inventory::parse(text, "inv.yaml").expect("names and prefixes");
}

#[test]
fn the_workload_object_kind_is_reserved() {
    let text = "namespaces:\n  default:\n    objects:\n      Workload:\n        x: {}\n";
    let err = inventory_error(Inventory::parse(text, "inv.yaml").expect_err("reserved"));
    assert!(err.contains("reserved"), "{err}");
}

#[test]
fn a_state_directory_inside_a_volume_is_rejected() {
    let fx = Fixture::new(HELLO, &["work", "data"]);
    let err = cairn_cluster::LocalCluster::from_inventory(&fx.inventory(), &fx.path("data/state"))
        .expect_err("the state directory may not be in a volume");
    assert!(inventory_error(err).contains("overlap"));
}
