//! Bad input: each misbehaviour ends in a clean error naming the cause, while the same engine
//! keeps completing other actions.

use std::time::Duration;

use cairn_engine::{EPOCH_TICK, Limits, PhaseStatus};

use crate::support::{Fixture, misbehave_alongside, request};

fn failure_of(report: &cairn_engine::RunReport) -> String {
    assert!(!report.ok, "the run should have failed: {report:?}");
    report.error.clone().expect("a failed run has an error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_is_stopped_at_its_deadline_within_one_tick() {
    let fixture = Fixture::new();
    let deadline = Duration::from_millis(300);
    let mut req = request("spin");
    req.limits = Limits {
        deadline,
        ..Limits::default()
    };
    let report = misbehave_alongside(&fixture, req).await;
    let error = failure_of(&report);
    assert!(error.contains("ran past its deadline of 300ms"), "{error}");
    let phase = &report.phases[0];
    assert_eq!(phase.status, PhaseStatus::TimedOut);
    let took = Duration::from_millis(phase.duration_ms);
    // One tick past the deadline, plus scheduling noise on a loaded machine (instantiation is
    // inside the measured time too).
    let bound = deadline + EPOCH_TICK + Duration::from_millis(40);
    assert!(
        took >= deadline && took <= bound,
        "stopped after {took:?}, bound {bound:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_allocation_is_stopped_at_the_memory_cap() {
    let fixture = Fixture::new();
    let mut req = request("alloc");
    req.limits.memory = 16 << 20;
    let report = misbehave_alongside(&fixture, req).await;
    let error = failure_of(&report);
    assert!(
        error.contains("exceeded the memory limit of 16 MiB"),
        "{error}"
    );
    assert_eq!(report.phases[0].status, PhaseStatus::Trapped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_recursion_is_a_stack_overflow() {
    let fixture = Fixture::new();
    let report = misbehave_alongside(&fixture, request("recurse")).await;
    let error = failure_of(&report);
    assert!(error.contains("overflowed its stack"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_reported_with_its_message() {
    let fixture = Fixture::new();
    let report = misbehave_alongside(&fixture, request("panic")).await;
    let error = failure_of(&report);
    assert!(
        error.contains("panicked: the blueprint panicked on purpose"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_is_truncated_at_the_cap_and_says_so_once() {
    let fixture = Fixture::new();
    let mut req = request("log-flood");
    req.limits.log_bytes = 64 << 10;
    let report = misbehave_alongside(&fixture, req).await;
    assert!(report.ok, "{report:?}");
    assert!(report.phases[0].log_truncated);
    let logs = fixture.logs();
    let notices = logs
        .iter()
        .filter(|l| l.starts_with("log truncated"))
        .count();
    assert_eq!(notices, 1, "the truncation is said exactly once");
    assert!(logs.iter().any(|l| l.contains("log limit of 64 KiB")));
    let kept: usize = logs
        .iter()
        .filter(|l| l.starts_with('y'))
        .map(|l| l.len())
        .sum();
    assert!(kept <= 64 << 10, "kept {kept} bytes of log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_flood_is_truncated_at_the_cap_and_says_so_once() {
    let fixture = Fixture::new();
    let mut req = request("stdout-flood");
    req.limits.log_bytes = 64 << 10;
    let report = misbehave_alongside(&fixture, req).await;
    assert!(report.ok, "{report:?}");
    assert!(report.phases[0].log_truncated);
    let logs = fixture.logs();
    assert_eq!(
        logs.iter()
            .filter(|l| l.starts_with("log truncated"))
            .count(),
        1
    );
    assert!(
        logs.iter().any(|l| l.starts_with("zzzz")),
        "guest stdout reaches the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_flood_is_refused() {
    let fixture = Fixture::new();
    let mut req = request("output-flood");
    req.limits.memory = 256 << 20;
    let report = misbehave_alongside(&fixture, req).await;
    let error = failure_of(&report);
    assert!(
        error.contains("16 MiB of outputs, over the limit of 1 MiB"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_message_of_megabytes_is_cut_as_a_log_line_is() {
    let fixture = Fixture::new();
    let mut req = request("error-flood");
    req.limits.memory = 256 << 20;
    let report = misbehave_alongside(&fixture, req).await;
    let error = failure_of(&report);
    assert!(error.len() < 17 << 10, "{} bytes", error.len());
    assert!(
        error.ends_with("[message cut at 16 KiB]"),
        "{}",
        &error[error.len() - 60..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_flood_is_cut_said_once_and_its_end_still_shown() {
    let fixture = Fixture::new();
    let mut req = request("progress-flood");
    req.limits.log_bytes = 64 << 10;
    let report = misbehave_alongside(&fixture, req).await;
    assert!(report.ok, "{report:?}");
    let notices = fixture
        .logs()
        .iter()
        .filter(|l| l.starts_with("progress reports dropped"))
        .count();
    assert_eq!(notices, 1, "the cut is said exactly once");
    let events = fixture.events.lock().expect("events lock");
    let percents: Vec<f32> = events
        .iter()
        .filter_map(|e| match &e.kind {
            cairn_engine::EventKind::Progress(p) => p.percent,
            _ => None,
        })
        .collect();
    assert!(percents.len() < 10_000, "{} reports", percents.len());
    assert_eq!(percents.last(), Some(&100.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_or_an_artifact_value_named_twice_is_refused() {
    let fixture = Fixture::new();
    let report = misbehave_alongside(&fixture, request("dup-artifact")).await;
    let error = failure_of(&report);
    assert!(error.contains("returned artifact `a` twice"), "{error}");
    let report = misbehave_alongside(&fixture, request("dup-value")).await;
    let error = failure_of(&report);
    assert!(error.contains("artifact `a`'s value `x` twice"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_an_ungranted_capability_is_denied_by_name() {
    let fixture = Fixture::new();
    let mut req = request("exec");
    req.grants.remove(&cairn_engine::Capability::Exec);
    let report = misbehave_alongside(&fixture, req).await;
    let error = failure_of(&report);
    assert!(
        error.contains("denied: capability `exec` not granted; grant it (`--grant exec`"),
        "{error}"
    );
    assert_eq!(report.phases[0].status, PhaseStatus::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_into_a_workload_outside_the_scope_is_denied() {
    let fixture = Fixture::new();
    let report = misbehave_alongside(&fixture, request("exec-outside")).await;
    let error = failure_of(&report);
    assert!(
        error.contains(
            "denied: workload `default/other` is outside this action's scope `default/hello`"
        ),
        "{error}"
    );
    let report = fixture.run(request("exec-other-namespace")).await;
    let error = failure_of(&report);
    assert!(
        error.contains("workload `elsewhere/db` is outside this action's scope `default/hello`"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_past_its_own_timeout_is_timed_out() {
    let fixture = Fixture::new();
    let report = fixture.run(request("exec-sleep")).await;
    let error = failure_of(&report);
    assert!(error.contains("timed out: "), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn params_that_do_not_match_the_declared_types_are_refused_before_running() {
    let fixture = Fixture::new();
    let blueprint = crate::support::misbehave().await;
    let engine = crate::support::engine();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("label", "x"), ("count", "abc")],
            "--param count=abc: expected an integer",
        ),
        (
            &[("label", "x"), ("ratio", "fast")],
            "--param ratio=fast: expected a number",
        ),
        (
            &[("label", "x"), ("verbose", "yes")],
            "--param verbose=yes: expected true or false",
        ),
        (
            &[("label", "x"), ("mode", "slow")],
            "--param mode=slow: expected one of ok, fail, prefail, spin, trap",
        ),
        (
            &[("label", "x"), ("colour", "red")],
            "the blueprint has no parameter \"colour\"",
        ),
        (&[], "missing --param label=…: the parameter is required"),
        (
            &[("label", "x"), ("count", "-1")],
            "--param count=-1: expected an integer from 0 to 1000000",
        ),
    ];
    for (params, expected) in cases {
        let mut req = request("params");
        req.params = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let err = engine
            .run(&blueprint, &fixture.host, req)
            .await
            .expect_err("bad params are refused");
        assert!(
            matches!(err, cairn_engine::Error::InvalidParam(_)),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(expected),
            "{err} does not contain {expected}"
        );
    }
    let mut req = request("params");
    req.params.push(("count".into(), "7".into()));
    let report = fixture.run(req).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.outputs.get("count"), Some("ParamValue::Integer(7)"));
    assert_eq!(
        report.outputs.get("mode"),
        Some("ParamValue::Text(\"ok\")"),
        "defaults are applied"
    );
    assert_eq!(
        report.outputs.get("ratio"),
        None,
        "optional parameters without default stay absent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blueprint_reaching_for_a_file_is_told_it_has_none() {
    let fixture = crate::support::Fixture::new();
    let report = fixture.run(crate::support::request("read-file")).await;
    let error = report.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("reading /etc/hostname") && error.contains("a blueprint has no filesystem"),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_action_is_refused_before_running() {
    let fixture = Fixture::new();
    let blueprint = crate::support::misbehave().await;
    let err = crate::support::engine()
        .run(&blueprint, &fixture.host, request("fly"))
        .await
        .expect_err("unknown action");
    assert!(err.to_string().contains("has no action \"fly\""), "{err}");
}
