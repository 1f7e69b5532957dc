//! `blueprints/quiesce` through the real `cairn` binary on a local workload with two replicas
//! whose start and stop commands leave a trace: the volumes are snapshotted while it is at
//! zero, and it is back at its original replicas after a successful and after a failed backup.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{Harness, Workload, assert_fails_with, assert_no_artifacts, signal, value, wait_for};
use crate::support::{Cairn, stderr};

const GRANTS: &str = "workloads,scale,volumes";

/// A workload `app` in a tempdir: `data/` is its volume; `start.sh` marks it running (inside
/// the volume, so a snapshot taken while it runs would show it) and records the replicas it
/// was started with; `stop.sh` undoes that. `events.log` lists every start and stop.
struct App {
    h: Harness,
}

impl App {
    fn new() -> Self {
        let mut h = Harness::new("quiesce", "app");
        let root = h.root();
        std::fs::create_dir_all(root.join("data/nested")).expect("data");
        std::fs::write(
            root.join("start.sh"),
            "echo \"$CAIRN_REPLICAS\" > replicas.txt\ntouch data/RUNNING\necho start >> events.log\n",
        )
        .expect("start.sh");
        std::fs::write(
            root.join("stop.sh"),
            "echo 0 > replicas.txt\nrm -f data/RUNNING\necho stop >> events.log\n",
        )
        .expect("stop.sh");
        for i in 0..50 {
            std::fs::write(
                root.join(format!("data/file-{i:02}.bin")),
                format!("{i}").repeat(1000 + i * 37),
            )
            .expect("file");
        }
        std::fs::write(root.join("data/nested/settings.conf"), "mode = primary\n").expect("conf");
        // The application runs, with the two replicas the inventory gives it.
        let status = Command::new("sh")
            .arg("start.sh")
            .env("CAIRN_REPLICAS", "2")
            .current_dir(root)
            .status()
            .expect("sh");
        assert!(status.success());
        std::fs::remove_file(root.join("events.log")).expect("reset events");
        h.set_workload(Workload {
            replicas: Some(2),
            start: Some("[sh, ./start.sh]".into()),
            stop: Some("[sh, ./stop.sh]".into()),
            ready: Some("[sh, -c, 'test -f data/RUNNING']".into()),
            volume: true,
            ..Workload::allowing(&["sh"])
        });
        Self { h }
    }

    fn root(&self) -> &Path {
        self.h.root()
    }

    fn run(&self, cairn: &Cairn, action: &str, extra: &[&str]) -> Output {
        self.h
            .run(cairn, action, &[&["--grant", GRANTS][..], extra].concat())
    }

    /// Starts a backup in the background, its stdout dropped and its stderr piped.
    fn spawn_backup(&self, cairn: &Cairn) -> std::process::Child {
        let args = self.h.args("backup", &["--grant", GRANTS]);
        cairn
            .command(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cairn runs")
    }

    /// Waits until a backup's prehook has stopped the workload.
    fn until_stopped(&self) {
        wait_for(
            "the workload being stopped",
            60,
            || self.events() == ["stop"],
            || format!("{:?}", self.events()),
        );
    }

    /// The workload went through `events` and is back at its two replicas.
    fn is_back(&self, cairn: &Cairn, events: &[&str]) {
        assert_eq!(self.events(), events);
        assert_eq!(self.replicas(), "2");
        assert_eq!(desired(cairn), 2);
    }

    /// The replicas the workload was last started or stopped with.
    fn replicas(&self) -> String {
        std::fs::read_to_string(self.root().join("replicas.txt"))
            .expect("replicas.txt")
            .trim()
            .to_owned()
    }

    fn events(&self) -> Vec<String> {
        std::fs::read_to_string(self.root().join("events.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Every file of the volume (but the running marker) and its contents.
    fn data(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        tree(&self.root().join("data"))
            .into_iter()
            .filter(|(p, _)| p != Path::new("RUNNING"))
            .collect()
    }
}

/// Each phase of a run's report as (action, status).
fn phases(v: &serde_json::Value) -> Vec<(&str, &str)> {
    v["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| {
            (
                p["action"].as_str().unwrap_or_default(),
                p["status"].as_str().unwrap_or_default(),
            )
        })
        .collect()
}

fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).expect("inside").to_path_buf();
                out.insert(rel, std::fs::read(&path).expect("read"));
            }
        }
    }
    out
}

/// The desired replicas the local target persisted for `default/app` in the home.
fn desired(cairn: &Cairn) -> u64 {
    let text = std::fs::read_to_string(cairn.home.path().join("cluster/replicas.json"))
        .expect("replicas.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v.as_object()
        .and_then(|m| m.iter().find(|(k, _)| k.ends_with("app")))
        .and_then(|(_, n)| n.as_u64())
        .unwrap_or_else(|| panic!("no replicas for app in {text}"))
}

#[test]
fn backup_snapshots_at_zero_replicas_and_restore_puts_the_volume_back() {
    let app = App::new();
    let original = app.data();
    let cairn = Cairn::new();

    let (report_path, report) = app.h.backup(&cairn, &["--grant", GRANTS]);
    app.is_back(&cairn, &["stop", "start"]);
    let snapshot = &report["outputs"]["artifacts"][0];
    assert_eq!(snapshot["name"], "volume-data", "{report}");
    let id = value(snapshot, "snapshot-id");
    // Taken while the application was stopped: its running marker is not in the snapshot.
    let snapshot_dir = cairn.home.path().join("cluster/snapshots").join(&id);
    let copy = tree(&snapshot_dir.join("data"));
    assert!(
        !copy.contains_key(Path::new("RUNNING")),
        "snapshot of a running app"
    );
    assert_eq!(copy, original);
    let from = report_path.to_str().expect("utf-8");

    // Change the volume: modify, delete and add files.
    std::fs::write(app.root().join("data/file-00.bin"), "corrupted").expect("modify");
    std::fs::remove_file(app.root().join("data/nested/settings.conf")).expect("delete");
    std::fs::write(app.root().join("data/new.txt"), "new").expect("add");
    assert_ne!(app.data(), original);

    let out = app.run(&cairn, "restore", &["--from", from]);
    assert!(out.status.success(), "restore failed: {}", stderr(&out));
    assert_eq!(app.data(), original, "the restored volume differs");
    app.is_back(&cairn, &["stop", "start", "stop", "start"]);

    // Delete retires the snapshot; a restore from the same report then fails clearly, and
    // its posthook still brings the workload back.
    let out = app.run(&cairn, "delete", &["--from", from]);
    assert!(out.status.success(), "delete failed: {}", stderr(&out));
    assert!(!snapshot_dir.exists(), "the snapshot is still there");
    let out = app.run(&cairn, "restore", &["--from", from]);
    assert_fails_with(&out, &[&id, "not found"]);
    assert_eq!(app.replicas(), "2");
    assert_eq!(desired(&cairn), 2);
    assert_eq!(
        app.data(),
        original,
        "a failed restore must not touch the volume"
    );
}

#[test]
fn a_failed_backup_still_scales_the_workload_back() {
    let app = App::new();
    let cairn = Cairn::new();
    let out = app.run(&cairn, "backup", &["--param", "volumes=nope"]);
    let v = assert_fails_with(&out, &["nope"]);
    assert!(
        v["error"].as_str().is_some_and(|e| e.starts_with("backup")),
        "{v}"
    );
    assert_no_artifacts(&v);
    let phases = phases(&v);
    assert_eq!(
        phases,
        [
            ("backupPrehook", "ok"),
            ("backup", "failed"),
            ("backupPosthook", "ok")
        ],
        "{v}"
    );
    app.is_back(&cairn, &["stop", "start"]);
}

#[test]
fn a_backup_without_the_scale_grant_never_stops_the_workload() {
    let app = App::new();
    let out = app
        .h
        .run(&Cairn::new(), "backup", &["--grant", "workloads,volumes"]);
    assert_fails_with(&out, &["--grant scale"]);
    assert!(app.events().is_empty(), "{:?}", app.events());
    assert_eq!(app.replicas(), "2");
}

/// Enough files that copying the volume takes seconds even on a fast machine (100,000 empty
/// files: about 2.5 s to copy on a 2-vCPU VM where 20,000 took 0.25 s), while the prehook (one
/// scale) takes a few milliseconds.
fn slow_to_copy(app: &App) {
    let many = app.root().join("data/many");
    std::fs::create_dir(&many).expect("dir");
    for i in 0..100_000 {
        std::fs::File::create(many.join(format!("f{i:06}"))).expect("file");
    }
}

#[test]
fn a_backup_that_times_out_still_scales_the_workload_back() {
    let app = App::new();
    slow_to_copy(&app);
    let cairn = Cairn::new();
    let out = app.run(&cairn, "backup", &["--timeout", "400ms"]);
    let v = assert_fails_with(&out, &[]);
    let phases = phases(&v);
    assert_eq!(phases[0], ("backupPrehook", "ok"), "{v}");
    assert_eq!(phases[2], ("backupPosthook", "ok"), "{v}");
    assert_ne!(
        phases[1].1, "ok",
        "the backup should have run out of time: {v}"
    );
    assert_no_artifacts(&v);
    app.is_back(&cairn, &["stop", "start"]);
}

/// A closed terminal or a dropped SSH session: stderr gone (writes fail) and a SIGHUP in the
/// middle of the backup. The run stops as on Ctrl-C, its posthook brings the workload back.
#[test]
fn a_hangup_with_stderr_closed_still_scales_the_workload_back() {
    let app = App::new();
    slow_to_copy(&app);
    let cairn = Cairn::new();
    let mut child = app.spawn_backup(&cairn);
    drop(child.stderr.take());
    app.until_stopped();
    signal(child.id(), "-HUP");
    let status = child.wait().expect("cairn exits");
    // Stopped as on an interrupt: not killed by the signal, not a panic on the closed stderr.
    assert_eq!(status.code(), Some(130), "{status:?}");
    app.is_back(&cairn, &["stop", "start"]);
}

/// An interrupt while the prehook's stop command runs cuts it short, having stopped the
/// application already: the posthook's ready probe finds it down and starts it again.
#[test]
fn an_interrupt_during_the_stop_command_still_brings_the_workload_back() {
    let app = App::new();
    std::fs::write(
        app.root().join("stop.sh"),
        "rm -f data/RUNNING\necho stop >> events.log\nsleep 5\necho 0 > replicas.txt\n",
    )
    .expect("stop.sh");
    let cairn = Cairn::new();
    let child = app.spawn_backup(&cairn);
    app.until_stopped();
    signal(child.id(), "-INT");
    let out = child.wait_with_output().expect("cairn exits");
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("its ready probe says it is down: starting it again"),
        "{}",
        stderr(&out)
    );
    app.is_back(&cairn, &["stop", "start"]);
}

/// Two runs on one workload at once (a `cairn run` while serve's policy runs, two policies
/// selecting it): the second waits for the first. Before, it found the workload stopped by
/// the first, took 0 for its count, and left it stopped, both saying they succeeded.
#[test]
fn a_second_run_on_a_workload_waits_for_the_first() {
    let app = App::new();
    // The first run holds the workload until `go` is there: its posthook's start waits.
    let start = app.root().join("start.sh");
    let script = std::fs::read_to_string(&start).expect("start.sh");
    std::fs::write(
        &start,
        format!("while [ ! -e go ]; do sleep 0.05; done\n{script}"),
    )
    .expect("start.sh");
    let cairn = Cairn::new();
    let first = app.spawn_backup(&cairn);
    app.until_stopped();
    // One interrupted while it waits runs nothing, not even its posthook, which would meet
    // the workload as the first left it.
    let third = app.spawn_backup(&cairn);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    signal(third.id(), "-INT");
    let third = third.wait_with_output().expect("the third ends");
    assert_eq!(third.status.code(), Some(130), "{}", stderr(&third));
    assert!(
        stderr(&third).contains("not started: interrupted while it waited"),
        "{}",
        stderr(&third)
    );
    let second = app.spawn_backup(&cairn);
    std::thread::sleep(std::time::Duration::from_millis(1000));
    std::fs::write(app.root().join("go"), "").expect("go");
    let first = first.wait_with_output().expect("the first ends");
    assert!(first.status.success(), "{first:?}");
    let second = second.wait_with_output().expect("the second ends");
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("is in another run (backup by process"),
        "{}",
        stderr(&second)
    );
    app.is_back(&cairn, &["stop", "start", "stop", "start"]);
}

#[test]
fn a_policy_deletes_the_volume_snapshots_of_the_points_it_no_longer_keeps() {
    let app = App::new();
    let cairn = Cairn::new();
    let wasm = crate::support::wasm("quiesce");
    crate::support::ok(&cairn.run(&["blueprint", "add", wasm.to_str().expect("utf-8 path")]));
    let policy = app.root().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "name: app\nblueprint: quiesce\ntarget: local:inventory.yaml\nworkloads: [app]\n\
             frequency: '@daily'\nretention: {{last: 1}}\ngrants: [{GRANTS}]\n"
        ),
    )
    .expect("write the policy");
    crate::support::ok(&cairn.run(&["policy", "apply", policy.to_str().expect("utf-8 path")]));
    let snapshots = || -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(cairn.home.path().join("cluster/snapshots"))
            .expect("snapshots dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        ids.sort();
        ids
    };
    crate::support::ok(&cairn.run(&["policy", "run", "app"]));
    let first = snapshots();
    assert_eq!(first.len(), 1, "{first:?}");
    let out = cairn.run(&["policy", "run", "app", "--output", "json"]);
    crate::support::ok(&out);
    let outcome = crate::support::json(&out);
    assert_eq!(
        outcome["retention"]["removed"].as_array().map(Vec::len),
        Some(1),
        "{outcome}"
    );
    // The delete action removed the first point's snapshot; the second point's remains.
    let second = snapshots();
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(first, second);
    app.is_back(&cairn, &["stop", "start", "stop", "start"]);
}
