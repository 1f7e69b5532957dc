//! The lifecycle: prehook → main → posthook, outputs flowing forward, and the posthook running
//! after every kind of failure.

use std::time::Duration;

use cairn_engine::{PhaseStatus, RunReport};

use crate::support::{Fixture, request};

fn phases(report: &RunReport) -> Vec<(&str, PhaseStatus)> {
    report
        .phases
        .iter()
        .map(|p| (p.action.as_str(), p.status))
        .collect()
}

fn backup(mode: &str) -> cairn_engine::RunRequest {
    let mut req = request("backup");
    req.params.push(("mode".into(), mode.into()));
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_runs_prehook_backup_posthook_in_order_with_earlier_outputs() {
    let fixture = Fixture::new();
    let report = fixture.run(backup("ok")).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(
        phases(&report),
        [
            ("backupPrehook", PhaseStatus::Ok),
            ("backup", PhaseStatus::Ok),
            ("backupPosthook", PhaseStatus::Ok)
        ]
    );
    assert_eq!(report.phases[0].outputs.get("seen"), Some(""));
    assert_eq!(report.phases[1].outputs.get("seen"), Some("backupPrehook"));
    assert_eq!(
        report.phases[2].outputs.get("post-seen"),
        Some("backupPrehook,backup")
    );
    let earlier = report.phases[2]
        .outputs
        .get("post-earlier")
        .expect("earlier");
    assert!(
        earlier.contains("phase=backupPrehook") && earlier.contains("phase=backup,"),
        "{earlier}"
    );
    assert_eq!(report.phases[2].outputs.get("post-failure"), Some(""));
    assert_eq!(
        report.outputs.get("phase"),
        Some("backup"),
        "the run's outputs are the main phase's"
    );
    assert_eq!(
        report.outputs.get("post-phase"),
        Some("backupPosthook"),
        "and the posthook's, under their own names"
    );
    // A restore sees the point's values in every phase.
    let mut req = request("restore");
    req.point_values = vec![
        ("stop-lsn".into(), "0/3000100".into()),
        ("label".into(), "x".into()),
    ];
    let restore = fixture.run(req).await;
    assert_eq!(
        phases(&restore),
        [
            ("restorePrehook", PhaseStatus::Ok),
            ("restore", PhaseStatus::Ok),
            ("restorePosthook", PhaseStatus::Ok)
        ]
    );
    for (phase, key) in [(1, "point"), (2, "post-point")] {
        assert_eq!(
            restore.phases[phase].outputs.get(key),
            Some("stop-lsn=0/3000100,label=x"),
            "{:?}",
            restore.phases[phase]
        );
    }
    let alone = fixture.run(request("hello")).await;
    assert_eq!(phases(&alone), [("hello", PhaseStatus::Ok)]);
}

/// A backup's outputs may not name what the run deleted: an export deleted by the phase that
/// returns it or by the posthook after the main phase returned it, or a volume snapshot the
/// posthook deleted. The catalog would otherwise record a complete-looking restore point that
/// restores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_may_not_return_an_export_or_snapshot_it_deleted() {
    let fixture = Fixture::new();
    let report = fixture.run(backup("delete-returned")).await;
    assert!(!report.ok, "{report:?}");
    assert_eq!(
        phases(&report),
        [
            ("backupPrehook", PhaseStatus::Ok),
            ("backup", PhaseStatus::Failed),
            ("backupPosthook", PhaseStatus::Ok)
        ]
    );
    let error = report.error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with("backup: artifact `dump` names an export this run deleted"),
        "{error}"
    );

    for (mode, says) in [
        (
            "post-delete",
            "artifact `dump` names an export this run deleted",
        ),
        (
            "snapshot-deleted",
            "artifact `volume-data` names in `snapshot-id` volume snapshot",
        ),
    ] {
        let report = fixture.run(backup(mode)).await;
        assert!(!report.ok, "{report:?}");
        assert_eq!(
            phases(&report),
            [
                ("backupPrehook", PhaseStatus::Ok),
                ("backup", PhaseStatus::Ok),
                ("backupPosthook", PhaseStatus::Failed)
            ]
        );
        let error = report.error.as_deref().unwrap_or_default();
        assert!(
            error.starts_with("backupPosthook failed after backup succeeded: ")
                && error.contains(says),
            "{mode}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_posthook_runs_after_the_main_phase_fails() {
    let fixture = Fixture::new();
    let report = fixture.run(backup("fail")).await;
    assert!(!report.ok);
    assert_eq!(
        phases(&report),
        [
            ("backupPrehook", PhaseStatus::Ok),
            ("backup", PhaseStatus::Failed),
            ("backupPosthook", PhaseStatus::Ok)
        ]
    );
    assert_eq!(
        report.error.as_deref(),
        Some("backup: failed: backup failed on purpose")
    );
    let failure = report.phases[2]
        .outputs
        .get("post-failure")
        .expect("failure");
    assert!(failure.contains("backup failed on purpose"), "{failure}");
    assert_eq!(
        report.phases[2].outputs.get("post-seen"),
        Some("backupPrehook"),
        "a failed phase did not complete"
    );
    assert_eq!(
        report.phases[2].outputs.get("post-stopped"),
        Some("backup"),
        "but the posthook sees it, stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_posthook_runs_after_the_main_phase_times_out_or_traps() {
    let fixture = Fixture::new();
    let mut req = backup("spin");
    req.limits.deadline = Duration::from_millis(300);
    let report = fixture.run(req).await;
    assert_eq!(
        phases(&report),
        [
            ("backupPrehook", PhaseStatus::Ok),
            ("backup", PhaseStatus::TimedOut),
            ("backupPosthook", PhaseStatus::Ok)
        ]
    );
    let failure = report.phases[2]
        .outputs
        .get("post-failure")
        .expect("failure");
    assert!(
        failure.contains("TimedOut") && failure.contains("deadline"),
        "{failure}"
    );

    let report = fixture.run(backup("trap")).await;
    assert_eq!(
        phases(&report),
        [
            ("backupPrehook", PhaseStatus::Ok),
            ("backup", PhaseStatus::Trapped),
            ("backupPosthook", PhaseStatus::Ok)
        ]
    );
    assert!(
        report
            .error
            .as_deref()
            .is_some_and(|e| e.contains("backup trapped on purpose")),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_prehook_skips_the_main_phase_but_not_the_posthook() {
    let fixture = Fixture::new();
    let report = fixture.run(backup("prefail")).await;
    assert_eq!(
        phases(&report),
        [
            ("backupPrehook", PhaseStatus::Failed),
            ("backup", PhaseStatus::Skipped),
            ("backupPosthook", PhaseStatus::Ok)
        ]
    );
    assert!(
        report
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("backupPrehook: failed")),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_one_process_held_from_the_prehook_to_the_posthook() {
    let fixture = Fixture::new();
    let report = fixture.run(backup("session")).await;
    assert!(report.ok, "{report:?}");
    let said: Vec<&str> = report
        .phases
        .iter()
        .map(|p| {
            let said = p.outputs.get("said").or(p.outputs.get("post-said"));
            said.expect("said")
        })
        .collect();
    assert!(!said[0].is_empty(), "{said:?}");
    assert!(
        said.iter().all(|pid| *pid == said[0]),
        "every phase talked to the same shell: {said:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_printing_without_line_ends_is_cut_at_the_output_limit() {
    let fixture = Fixture::new();
    let report = fixture.run(backup("session-flood")).await;
    let error = report.error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with("backupPrehook: invalid: session `flood` printed more than"),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_left_open_is_killed_when_the_run_ends() {
    let fixture = Fixture::new();
    let report = fixture.run(backup("session-leak")).await;
    assert!(report.ok, "{report:?}");
    let logs = fixture.logs().join("\n");
    assert!(
        logs.contains("session `shell` was still open when the run ended; its process was killed"),
        "{logs}"
    );
    assert_gone(&report).await;
}

/// A session's first input is written within the host-call timeout: a program that never
/// reads its stdin held session-open (and the run's sessions) until it exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_never_reads_its_first_input_times_out() {
    let fixture = Fixture::new();
    let mut req = request("session-stdin");
    req.limits.host_call_timeout = Duration::from_millis(500);
    let report = fixture.run(req).await;
    assert!(report.ok, "{report:?}");
    let opened = report.outputs.get("opened").unwrap_or_default();
    assert!(
        opened.starts_with("Error::TimedOut(\"exec.session-open ran past its timeout of 500ms"),
        "{opened}"
    );
    let ms: u64 = report
        .outputs
        .get("ms")
        .and_then(|ms| ms.parse().ok())
        .expect("ms");
    assert!(ms < 5000, "session-open took {ms} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posthook_can_kill_a_session() {
    let fixture = Fixture::new();
    let report = fixture.run(backup("session-kill")).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(
        report.phases[2].outputs.get("post-said"),
        report.phases[0].outputs.get("said"),
        "the posthook talked to the prehook's shell before killing it"
    );
    let logs = fixture.logs().join("\n");
    assert!(!logs.contains("still open when the run ended"), "{logs}");
    assert_gone(&report).await;
}

/// The shell whose pid the prehook reported is gone (the kill is asynchronous: within a
/// moment).
async fn assert_gone(report: &cairn_engine::RunReport) {
    let pid = report.phases[0]
        .outputs
        .get("said")
        .expect("said")
        .to_string();
    let mut alive = true;
    for _ in 0..50 {
        alive = std::process::Command::new("kill")
            .args(["-0", &pid])
            .stderr(std::process::Stdio::null())
            .status()
            .expect("kill runs")
            .success();
        if !alive {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!alive, "the shell {pid} outlived its run");
}
