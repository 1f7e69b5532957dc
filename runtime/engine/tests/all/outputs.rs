//! What phases hand on: checkpoints that survive a phase stopping, the posthook's outputs in
//! the run's, export references kept apart from the blueprint's values, and `sleep`.

use std::time::Duration;

use cairn_cluster::WorkloadRef;
use cairn_engine::{Artifact, PhaseStatus, RunReport, RunRequest};

use crate::support::{Fixture, request};

fn with_mode(action: &str, mode: &str) -> RunRequest {
    let mut req = request(action);
    req.params.push(("mode".into(), mode.into()));
    req
}

fn statuses(report: &RunReport) -> Vec<PhaseStatus> {
    report.phases.iter().map(|p| p.status).collect()
}

/// Asserts that the run failed with an error containing `text`.
fn assert_error_has(report: &RunReport, text: &str) {
    assert!(
        report.error.as_deref().is_some_and(|e| e.contains(text)),
        "expected an error with {text:?}: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prehook_that_times_out_after_scaling_leaves_its_checkpoint_to_the_posthook() {
    let fixture = Fixture::new();
    let hello = WorkloadRef::new("default", "hello");
    let before = fixture.host.cluster.workload(&hello).await.expect("hello");
    assert_eq!(before.replicas, 1);
    let mut req = with_mode("backup", "checkpoint");
    req.limits.deadline = Duration::from_millis(500);
    let report = fixture.run(req).await;
    assert_eq!(
        statuses(&report),
        [PhaseStatus::TimedOut, PhaseStatus::Skipped, PhaseStatus::Ok],
        "{report:?}"
    );
    assert_eq!(
        report.phases[0].outputs.get("replicas"),
        Some("1"),
        "the stopped prehook's report keeps its checkpoint"
    );
    let post = &report.phases[2].outputs;
    assert_eq!(post.get("post-stopped"), Some("backupPrehook"), "{post:?}");
    assert_eq!(post.get("post-scaled"), Some("1"), "{post:?}");
    let after = fixture.host.cluster.workload(&hello).await.expect("hello");
    assert_eq!(
        after.replicas, 1,
        "the posthook scaled back to the checkpointed count"
    );
    let audit = std::fs::read_to_string(fixture.path("audit.jsonl")).expect("audit log");
    assert_eq!(
        audit.matches("workloads.scale").count(),
        2,
        "scaled down, then back: {audit}"
    );
}

/// An interrupted run (Ctrl-C) stops the phase that runs, spinning or asleep in a host call, at
/// once; a main phase not yet started is skipped; the posthook still runs, told what stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_stops_its_phase_and_still_runs_its_posthook() {
    let fixture = Fixture::new();
    let interrupted = |req: RunRequest| async {
        let interrupt = req.interrupt.clone();
        let started = std::time::Instant::now();
        let (report, ()) = tokio::join!(fixture.run(req), async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            interrupt.trigger();
        });
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "stopped long before the 20 s deadline: {report:?}"
        );
        report
    };
    for mode in ["spin", "sleep"] {
        let report = interrupted(with_mode("backup", mode)).await;
        assert_eq!(
            statuses(&report),
            [PhaseStatus::Ok, PhaseStatus::Interrupted, PhaseStatus::Ok],
            "{mode}: {report:?}"
        );
        let post = &report.phases[2].outputs;
        assert_eq!(post.get("post-stopped"), Some("backup"), "{mode}: {post:?}");
        assert!(
            post.get("post-failure")
                .is_some_and(|f| f.contains("interrupted")),
            "{mode}: {post:?}"
        );
        assert_error_has(&report, "backup: the run was interrupted");
    }
    let report = interrupted(with_mode("backup", "checkpoint")).await;
    assert_eq!(
        statuses(&report),
        [
            PhaseStatus::Interrupted,
            PhaseStatus::Skipped,
            PhaseStatus::Ok
        ],
        "{report:?}"
    );
    assert!(
        report.phases[1]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("interrupted during backupPrehook")),
        "{report:?}"
    );
    assert_eq!(report.phases[2].outputs.get("post-scaled"), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_outputs_a_returned_value_replaces() {
    let fixture = Fixture::new();
    let report = fixture.run(request("checkpoint")).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(
        report.outputs.values,
        [
            ("a".to_owned(), "returned".to_owned()),
            ("b".to_owned(), "2".to_owned())
        ]
    );
    let report = fixture.run(with_mode("checkpoint", "fail")).await;
    assert_eq!(statuses(&report), [PhaseStatus::Failed]);
    assert_eq!(report.phases[0].outputs.get("a"), Some("replaced"));
    assert_eq!(report.phases[0].outputs.get("b"), Some("2"));
}

/// A checkpoint's name is checked as a returned value's is, when it is recorded: the
/// checkpoints of a phase that stops are its outputs as they are, and a report would show a
/// name holding terminal escapes, or keep one holding a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_named_with_control_characters_or_a_secret_is_refused() {
    let fixture = Fixture::new();
    let mut req = with_mode("checkpoint", "bad-name");
    req.secrets.insert("token".into(), "s3cr3t".into());
    let report = fixture.run(req).await;
    assert_eq!(statuses(&report), [PhaseStatus::Failed], "{report:?}");
    let outputs = &report.phases[0].outputs;
    let names: Vec<&str> = outputs.values.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["control", "secret"], "{report:?}");
    let control = outputs.get("control").unwrap_or_default();
    assert!(
        control.starts_with("Error::Invalid(\"checkpoint `\\\\u{1b}[2Jcairn: backup verified OK` has a name holding control characters"),
        "{control}"
    );
    let secret = outputs.get("secret").unwrap_or_default();
    assert!(
        secret.starts_with("Error::Invalid(\"a checkpoint's name holds secret `token`"),
        "{secret}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_bounded_by_the_output_limit() {
    let fixture = Fixture::new();
    let report = fixture.run(request("checkpoint-flood")).await;
    assert_eq!(statuses(&report), [PhaseStatus::Failed]);
    assert_error_has(&report, "invalid: checkpoint `flood` would bring");
    assert_error_has(&report, "over the output limit");
    assert_eq!(report.phases[0].outputs.get("small"), Some("kept"));
    assert_eq!(report.phases[0].outputs.get("flood"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_pauses_and_is_cut_at_the_deadline() {
    let fixture = Fixture::new();
    let mut req = request("sleep");
    req.params.push(("count".into(), "200".into()));
    let report = fixture.run(req).await;
    assert!(report.ok, "{report:?}");
    let slept: u64 = report
        .outputs
        .get("slept-ms")
        .and_then(|v| v.parse().ok())
        .expect("slept-ms");
    assert!((200..2000).contains(&slept), "slept {slept} ms");

    // A 60 s sleep in a phase with a 300 ms deadline ends with the deadline, not the sleep and
    // not the host's abandon grace.
    let mut req = with_mode("backup", "sleep");
    req.limits.deadline = Duration::from_millis(300);
    let report = fixture.run(req).await;
    assert_eq!(
        statuses(&report),
        [PhaseStatus::Ok, PhaseStatus::TimedOut, PhaseStatus::Ok],
        "{report:?}"
    );
    let backup = &report.phases[1];
    assert!(backup.duration_ms < 3000, "{backup:?}");
    assert!(
        backup
            .error
            .as_deref()
            .is_some_and(|e| e.contains("ran past its deadline of 300ms and was stopped")),
        "{backup:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posthook_output_named_like_the_main_phases_is_refused() {
    let fixture = Fixture::new();
    let report = fixture.run(with_mode("backup", "post-clash")).await;
    assert!(!report.ok);
    assert_eq!(
        statuses(&report),
        [PhaseStatus::Ok, PhaseStatus::Ok, PhaseStatus::Failed]
    );
    assert_eq!(
        report.error.as_deref(),
        Some(
            "backupPosthook failed after backup succeeded: it returned the artifact `state`, which backup \
             already returned; the restore point keeps both phases' outputs, so give the posthook's another name"
        )
    );

    let report = fixture.run(with_mode("backup", "post-value-clash")).await;
    assert_error_has(
        &report,
        "it set the value `phase` to \"backupPosthook\", which backup set to \"backup\"",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_reference_stays_apart_from_the_blueprints_values() {
    let fixture = Fixture::new();
    let report = fixture.run(request("export")).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(
        report.outputs.get("finished"),
        Some("kind,path,bytes,sha256/"),
        "finish() returns the reference, and no values"
    );
    let artifact = report.outputs.artifacts[0].clone();
    assert_eq!(artifact.get("format"), Some("text"));
    assert_eq!(artifact.values[0], ("kind".to_owned(), "file".to_owned()));

    let mut req = request("import");
    req.artifacts = vec![artifact.clone()];
    let report = fixture.run(req).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(
        report.outputs.get("source"),
        Some("kind,path,bytes,sha256/format"),
        "a stored artifact reaches the guest split again"
    );

    // A record in the older, one-map order reads the same.
    let mut legacy = artifact;
    legacy.values.rotate_left(4);
    assert_eq!(legacy.values[0].0, "format");
    let mut req = request("import");
    req.artifacts = vec![legacy];
    let report = fixture.run(req).await;
    assert_eq!(
        report.outputs.get("source"),
        Some("kind,path,bytes,sha256/format")
    );

    // An artifact of no export keeps everything as values.
    let mut req = request("import");
    req.artifacts = vec![Artifact {
        name: "mine".into(),
        values: vec![("path".into(), "x".into())],
    }];
    let report = fixture.run(req).await;
    assert_error_has(&report, "no `kind` value");

    let report = fixture.run(with_mode("export", "shadow")).await;
    assert_eq!(statuses(&report), [PhaseStatus::Failed]);
    assert_eq!(
        report.error.as_deref(),
        Some(
            "export: artifact `dump` has a value `path`, but `path` is a key of its export reference \
             (written by finish()); a value never shadows the reference: give the value another name"
        )
    );
}
