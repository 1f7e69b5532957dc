//! The audit log: one hash-chained line per side effect.

use cairn_engine::{AuditLog, Capability};

use crate::support::{Fixture, request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn side_effects_are_audited_in_a_hash_chain() {
    let fixture = Fixture::new();
    let exec = fixture.run(request("exec")).await;
    assert!(exec.ok);
    let mut denied = request("exec");
    denied.grants.remove(&Capability::Exec);
    fixture.run(denied).await;
    let export = fixture.run(request("export")).await;
    assert!(export.ok);
    fixture.run(request("hello")).await;

    let path = fixture.path("audit.jsonl");
    let records = AuditLog::verify(&path).expect("the chain holds");
    let ops: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r.capability.as_str(),
                r.operation.as_str(),
                r.outcome.as_str(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("exec", "exec.run", "ok"),
            ("exec", "exec.run", "denied"),
            ("export", "data.pipe-from", "ok"),
            ("export", "data.finish", "ok"),
        ]
    );
    let first = &records[0];
    assert_eq!(first.action_id, exec.action_id);
    assert_eq!(first.target, "default/hello");
    assert!(first.blueprint.starts_with("sha256:"));
    assert_eq!(first.prev, "0".repeat(64));

    // Reopening continues the chain.
    drop(fixture.host.audit.clone());
    let log = AuditLog::open(&path).expect("reopen");
    drop(log);

    // Tampering with a line breaks the chain after it.
    let text = std::fs::read_to_string(&path).expect("audit");
    std::fs::write(
        &path,
        text.replacen("\"outcome\":\"denied\"", "\"outcome\":\"ok\"", 1),
    )
    .expect("tamper");
    let err = AuditLog::verify(&path).expect_err("tampered");
    assert!(
        err.to_string().contains("line 3: the hash chain is broken"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_looping_over_refused_calls_gets_a_bounded_share_of_the_log() {
    let fixture = Fixture::new();
    let report = fixture.run(request("audit-flood")).await;
    assert!(report.ok, "{report:?}");
    let path = fixture.path("audit.jsonl");
    let records = AuditLog::verify(&path).expect("the chain holds");
    assert_eq!(
        records.len(),
        1000,
        "1,500 refused calls, the first 1,000 recorded"
    );
    assert!(
        records.iter().all(|r| r.target.len() < 1100),
        "targets are cut"
    );
    assert!(
        records[999]
            .outcome
            .ends_with("(the phase's 1000th refused or failed call: later ones are not recorded)"),
        "{:?}",
        records[999]
    );
    assert!(std::fs::metadata(&path).expect("the log").len() < 3 << 20);
}

/// Deleting an export that is already gone is not an error to the guest (a delete action
/// run again), but the log does not say it deleted anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_export_already_gone_is_audited_as_not_found() {
    let fixture = Fixture::new();
    let report = fixture.run(request("export")).await;
    assert!(report.ok, "{report:?}");
    let path = report.outputs.artifacts[0]
        .get("path")
        .expect("path")
        .to_owned();
    for _ in 0..2 {
        let mut req = request("forge");
        req.params = vec![
            ("label".into(), path.clone()),
            ("mode".into(), "delete".into()),
        ];
        let report = fixture.run(req).await;
        assert!(report.ok, "{report:?}");
    }
    let records = AuditLog::verify(fixture.path("audit.jsonl")).expect("the chain holds");
    let deletes: Vec<&str> = records
        .iter()
        .filter(|r| r.operation == "data.delete")
        .map(|r| r.outcome.as_str())
        .collect();
    assert_eq!(deletes.len(), 2, "{deletes:?}");
    assert_eq!(deletes[0], "ok");
    assert!(
        deletes[1].starts_with("not-found: already gone, which counts as deleted"),
        "{}",
        deletes[1]
    );
}
