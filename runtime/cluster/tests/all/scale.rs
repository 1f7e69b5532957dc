//! Scale (start/stop commands, persistence) and readiness.

use std::time::Duration;

use cairn_cluster::{Cluster, Error, WorkloadRef};

use crate::{Fixture, bounded, request};

const SERVICE: &str = r#"
namespaces:
  apps:
    workloads:
      db:
        kind: statefulset
        replicas: 1
        workdir: work
        allow: ["true"]
        # A daemon in the background: scale must not wait for it.
        start: [sh, -c, "echo start $CAIRN_REPLICAS >> events; sleep 300 & echo $! > daemon.pid"]
        stop: [sh, -c, "echo stop >> events; if [ -f daemon.pid ]; then kill $(cat daemon.pid); rm daemon.pid; fi"]
        ready: [sh, -c, "test -f ready"]
      broken:
        replicas: 0
        workdir: work
        start: [sh, -c, "echo boom >&2; exit 4"]
"#;

fn db() -> WorkloadRef {
    WorkloadRef::new("apps", "db")
}

#[tokio::test]
async fn scale_runs_start_and_stop_and_persists() {
    let fx = Fixture::new(SERVICE, &["work"]);
    let cluster = fx.open();
    assert_eq!(
        bounded(cluster.scale(&db(), 0)).await.expect("scale down"),
        1
    );
    assert_eq!(crate::read(&fx.path("work/events")), "stop\n");

    // Persisted across a reopen: the inventory says 1, the state says 0.
    drop(cluster);
    let cluster = fx.open();
    let w = bounded(cluster.workload(&db())).await.expect("db");
    assert_eq!(w.replicas, 0);
    assert!(w.pods.is_empty());

    assert_eq!(bounded(cluster.scale(&db(), 3)).await.expect("scale up"), 0);
    assert_eq!(crate::read(&fx.path("work/events")), "stop\nstart 3\n");
    // Scaling between non-zero counts runs neither command.
    assert_eq!(bounded(cluster.scale(&db(), 2)).await.expect("scale"), 3);
    assert_eq!(crate::read(&fx.path("work/events")), "stop\nstart 3\n");
    let w = bounded(cluster.workload(&db())).await.expect("db");
    assert_eq!(
        w.pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["db-0", "db-1"]
    );
    let mut req = request(&["true"]);
    req.pod = Some("db-1".to_owned());
    assert_eq!(
        bounded(cluster.exec(&db(), req))
            .await
            .expect("exec in db-1")
            .pod,
        "db-1"
    );

    drop(cluster);
    let cluster = fx.open();
    assert_eq!(
        bounded(cluster.scale(&db(), 0)).await.expect("scale down"),
        2
    );
    assert!(fx.path("state/logs/apps.db.start.log").exists());
}

#[tokio::test]
async fn a_workload_cairn_stopped_and_never_started_again_answers_its_count() {
    let fx = Fixture::new(SERVICE, &["work"]);
    let cluster = fx.open();
    assert_eq!(
        bounded(cluster.scale(&db(), 0)).await.expect("scale down"),
        1
    );
    // While the process that scaled it down lives, its run is on and scales it back itself:
    // another run is told 0.
    drop(cluster);
    let cluster = fx.open();
    assert_eq!(
        bounded(cluster.scale(&db(), 0)).await.expect("scale down"),
        0
    );
    let left = || async {
        bounded(cluster.workload(&db()))
            .await
            .expect("workload")
            .left_stopped
    };
    assert_eq!(left().await, None, "its run is still on");
    // That process gone before its posthook: the next run is told the count to put back.
    let file = fx.path("state/scaled-from.json");
    let mut entries: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("scaled-from.json")).expect("json");
    let mut gone = std::process::Command::new("true")
        .spawn()
        .expect("true runs");
    entries["apps/db"]["pid"] = gone.id().into();
    gone.wait().expect("true exits");
    std::fs::write(&file, entries.to_string()).expect("write");
    // Listings say so (`cairn workloads`).
    assert_eq!(left().await, Some(1));
    assert_eq!(
        bounded(cluster.scale(&db(), 0)).await.expect("scale down"),
        1
    );
    assert_eq!(crate::read(&fx.path("work/events")), "stop\n");
    assert_eq!(bounded(cluster.scale(&db(), 1)).await.expect("scale up"), 0);
    // Once scaled up, nothing is remembered: a workload at 0 by its own inventory is at 0.
    assert_eq!(
        bounded(cluster.scale(&db(), 0)).await.expect("scale down"),
        1
    );
    assert_eq!(bounded(cluster.scale(&db(), 2)).await.expect("scale up"), 0);
    let broken = WorkloadRef::new("apps", "broken");
    assert_eq!(bounded(cluster.scale(&broken, 0)).await.expect("scale"), 0);
}

/// Two processes on one home (a serve and a `cairn run`): what one scaled the workload to is
/// what the other finds, so its commands do not run twice.
#[tokio::test]
async fn a_scale_by_another_process_is_seen() {
    let fx = Fixture::new(SERVICE, &["work"]);
    let (a, b) = (fx.open(), fx.open());
    assert_eq!(bounded(a.scale(&db(), 0)).await.expect("scale down"), 1);
    assert_eq!(bounded(b.scale(&db(), 0)).await.expect("scale down"), 0);
    assert_eq!(crate::read(&fx.path("work/events")), "stop\n");
    assert_eq!(bounded(b.scale(&db(), 1)).await.expect("scale up"), 0);
    assert_eq!(bounded(a.scale(&db(), 1)).await.expect("scale up"), 1);
    assert_eq!(crate::read(&fx.path("work/events")), "stop\nstart 1\n");
    bounded(a.scale(&db(), 0)).await.expect("scale down");
}

#[tokio::test]
async fn a_failing_start_command_fails_the_scale_with_its_output() {
    let fx = Fixture::new(SERVICE, &["work"]);
    let cluster = fx.open();
    let broken = WorkloadRef::new("apps", "broken");
    let err = bounded(cluster.scale(&broken, 1))
        .await
        .expect_err("start fails");
    let message = err.to_string();
    assert!(
        message.contains("boom") && message.contains("exited with 4"),
        "{message}"
    );
    // Nothing changed.
    assert_eq!(
        bounded(cluster.workload(&broken))
            .await
            .expect("broken")
            .replicas,
        0
    );
}

/// A stop command that fails part way leaves the workload counted as running. Scaling it back
/// starts it again when its ready probe finds it down, and leaves it alone when it is up, or
/// when no probe answers (none, or one that cannot run).
#[tokio::test]
async fn scaling_back_after_a_stop_that_did_not_finish_asks_the_probe() {
    const HALF_STOPS: &str = r#"
namespaces:
  apps:
    workloads:
      down:
        replicas: 1
        workdir: work
        start: [sh, -c, "echo start >> events-down; touch up-down"]
        stop: [sh, -c, "echo stop >> events-down; rm -f up-down; exit 3"]
        ready: [sh, -c, "test -f up-down"]
      up:
        replicas: 1
        workdir: work
        start: [sh, -c, "echo start >> events-up"]
        stop: [sh, -c, "echo stop >> events-up; exit 3"]
        ready: [sh, -c, "true"]
      unknown:
        replicas: 1
        workdir: work
        start: [sh, -c, "echo start >> events-unknown"]
        stop: [sh, -c, "echo stop >> events-unknown; exit 3"]
      mute:
        replicas: 1
        workdir: work
        start: [sh, -c, "echo start >> events-mute"]
        stop: [sh, -c, "echo stop >> events-mute; exit 3"]
        ready: [/nonexistent/probe]
      killed:
        replicas: 1
        workdir: work
        start: [sh, -c, "echo start >> events-killed"]
        stop: [sh, -c, "echo stop >> events-killed; exit 3"]
        ready: [sh, -c, "kill -9 $$"]
"#;
    let fx = Fixture::new(HALF_STOPS, &["work"]);
    std::fs::write(fx.path("work/up-down"), "").expect("up");
    let cluster = fx.open();
    for (name, events) in [
        ("down", "stop\nstart\n"),
        ("up", "stop\n"),
        ("unknown", "stop\n"),
        ("mute", "stop\n"),
        // A probe a signal killed says nothing of the application either.
        ("killed", "stop\n"),
    ] {
        let w = WorkloadRef::new("apps", name);
        bounded(cluster.scale(&w, 0))
            .await
            .expect_err("the stop command fails");
        assert_eq!(bounded(cluster.scale(&w, 1)).await.expect("scale back"), 1);
        assert_eq!(
            crate::read(&fx.path(&format!("work/events-{name}"))),
            events,
            "{name}"
        );
        // Counted: the next scale back runs nothing.
        assert_eq!(bounded(cluster.scale(&w, 1)).await.expect("scale"), 1);
        assert_eq!(
            crate::read(&fx.path(&format!("work/events-{name}"))),
            events,
            "{name}"
        );
    }
}

#[tokio::test]
async fn scale_bounds_and_unknown_workloads() {
    let fx = Fixture::new(SERVICE, &["work"]);
    let cluster = fx.open();
    let err = bounded(cluster.scale(&db(), 100_000))
        .await
        .expect_err("too many");
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    let err = bounded(cluster.scale(&WorkloadRef::new("apps", "nope"), 1))
        .await
        .expect_err("unknown");
    assert!(
        matches!(&err, Error::NotFound { hint, .. } if hint.contains("broken, db")),
        "{err}"
    );
}

#[tokio::test]
async fn wait_ready_polls_the_probe_until_the_timeout() {
    let fx = Fixture::new(SERVICE, &["work"]);
    let cluster = fx.open();
    let err = bounded(cluster.wait_ready(&db(), Duration::from_millis(300)))
        .await
        .expect_err("never ready");
    assert!(matches!(err, Error::TimedOut { .. }), "{err}");
    let w = bounded(cluster.workload(&db())).await.expect("db");
    assert_eq!(w.ready_replicas, 0);
    assert!(!w.pods[0].ready);

    std::fs::write(fx.path("work/ready"), "").expect("mark ready");
    let w = bounded(cluster.wait_ready(&db(), Duration::from_secs(30)))
        .await
        .expect("ready");
    assert_eq!(w.ready_replicas, 1);
    assert!(w.pods[0].ready);
}

#[tokio::test]
async fn wait_ready_without_a_probe_follows_replicas() {
    let fx = Fixture::new(crate::HELLO, &["work", "data"]);
    let cluster = fx.open();
    let w = bounded(cluster.wait_ready(&crate::hello(), Duration::from_secs(5)))
        .await
        .expect("ready");
    assert_eq!((w.replicas, w.ready_replicas), (1, 1));
    bounded(cluster.scale(&crate::hello(), 0))
        .await
        .expect("scale");
    let w = bounded(cluster.wait_ready(&crate::hello(), Duration::from_secs(5)))
        .await
        .expect("nothing to wait for");
    assert_eq!((w.replicas, w.ready_replicas), (0, 0));
}

#[tokio::test]
async fn hook_programs_may_be_scripts_in_the_workdir() {
    let yaml = r#"
namespaces:
  default:
    workloads:
      svc:
        replicas: 0
        workdir: work
        start: [./start.sh, fast]
        ready: [./start.sh, probe]
"#;
    let fx = Fixture::new(yaml, &["work"]);
    let script = fx.path("work/start.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"$1 $CAIRN_NAMESPACE/$CAIRN_WORKLOAD\" >> calls\n",
    )
    .expect("write");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let cluster = fx.open();
    let svc = WorkloadRef::new("default", "svc");
    assert_eq!(bounded(cluster.scale(&svc, 1)).await.expect("scale up"), 0);
    bounded(cluster.wait_ready(&svc, Duration::from_secs(30)))
        .await
        .expect("ready");
    assert_eq!(
        crate::read(&fx.path("work/calls")),
        "fast default/svc\nprobe default/svc\n"
    );
}
