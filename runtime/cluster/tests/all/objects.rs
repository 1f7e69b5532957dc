//! get_object / list_objects.

use cairn_cluster::{Cluster, Error};
use serde_json::json;

use crate::Fixture;

const OBJECTS: &str = r#"
namespaces:
  default:
    objects:
      ConfigMap:
        settings: {data: {a: "1"}}
        other: {data: {b: [1, 2]}}
    workloads:
      hello:
        containers: [main, sidecar]
        volumes: {data: data}
  empty: {}
"#;

#[tokio::test]
async fn objects_come_from_the_inventory() {
    let fx = Fixture::new(OBJECTS, &["data"]);
    let cluster = fx.open();
    let settings = cluster
        .get_object("default", "configmap", "settings")
        .await
        .expect("found");
    assert_eq!(settings, json!({"data": {"a": "1"}}));
    assert_eq!(
        cluster
            .get_object("default", "configmaps", "other")
            .await
            .expect("plural"),
        json!({"data": {"b": [1, 2]}})
    );
    assert_eq!(
        cluster
            .list_objects("default", "ConfigMap")
            .await
            .expect("list")
            .len(),
        2
    );
    assert!(
        cluster
            .list_objects("default", "secret")
            .await
            .expect("list")
            .is_empty()
    );
    assert!(
        cluster
            .list_objects("empty", "configmap")
            .await
            .expect("list")
            .is_empty()
    );

    let err = cluster
        .get_object("default", "configmap", "nope")
        .await
        .expect_err("missing");
    assert!(
        matches!(&err, Error::NotFound { hint, .. } if hint.contains("other, settings")),
        "{err}"
    );
    let err = cluster
        .get_object("prod", "configmap", "settings")
        .await
        .expect_err("no namespace");
    assert!(
        matches!(
            err,
            Error::NotFound {
                kind: "namespace",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn workloads_are_objects_too() {
    let fx = Fixture::new(OBJECTS, &["data"]);
    let cluster = fx.open();
    let w = cluster
        .get_object("default", "workload", "hello")
        .await
        .expect("found");
    assert_eq!(w["name"], "hello");
    assert_eq!(w["kind"], "deployment");
    assert_eq!(w["replicas"], 1);
    assert_eq!(w["containers"], json!(["main", "sidecar"]));
    assert_eq!(w["volumes"], json!(["data"]));
    assert_eq!(w["pods"], json!(["hello-0"]));
    assert_eq!(
        cluster
            .list_objects("default", "workloads")
            .await
            .expect("list")
            .len(),
        1
    );
}
