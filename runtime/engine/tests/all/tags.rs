//! Export tags: a blueprint's tags, then the host's, reach the export store; a bad tag is an
//! `invalid` error naming it, and no export is started.

use cairn_engine::RunRequest;

use crate::support::{Fixture, request};

fn export_labelled(label: &str) -> RunRequest {
    let mut req = request("export");
    req.params = vec![("label".into(), label.into())];
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exports_tags_reach_the_store_beside_the_hosts_own() {
    let fixture = Fixture::new();
    let report = fixture.run(export_labelled("shop floor")).await;
    assert!(report.ok, "{report:?}");
    let artifact = report.outputs.artifacts[0].clone();
    let path = artifact.get("path").expect("path");
    let tags_file = fixture
        .path("exports")
        .join(&report.action_id)
        .join(".dump.tags");
    let tags = std::fs::read_to_string(&tags_file).expect("the tags file");
    let digest = crate::support::misbehave().await.digest().to_string();
    assert_eq!(
        tags,
        format!(
            "label=shop floor\naction=export\nnamespace=default\nworkload=hello\n\
             blueprint=misbehave\nblueprint-digest={digest}\n"
        )
    );

    // Deleting the export deletes its tags, and the action's directory with them.
    fixture
        .host
        .exports
        .delete(&artifact)
        .await
        .expect("deleting the export");
    assert!(!fixture.path("exports").join(path).exists());
    assert!(!tags_file.exists());
    assert!(!fixture.path("exports").join(&report.action_id).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tag_is_refused_before_the_export_starts() {
    let fixture = Fixture::new();
    let mut req = export_labelled("x");
    req.params.push(("mode".into(), "bad-tag".into()));
    let report = fixture.run(req).await;
    assert_eq!(
        report.error.as_deref(),
        Some(
            "export: invalid: export \"dump\": export tag key \"action\" is set by the host on every \
             export; name the blueprint's tag otherwise"
        ),
        "{report:?}"
    );

    let report = fixture.run(export_labelled("a=b")).await;
    assert!(
        report.error.as_deref().is_some_and(|e| e.contains(
            "export tag \"label\" has a value with '='; a value is printable text without '=' or ','"
        )),
        "{report:?}"
    );
    assert!(
        !fixture.path("exports").join(&report.action_id).exists(),
        "nothing was written"
    );
}
