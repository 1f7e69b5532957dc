//! `blueprints/quiesce` through the real `cairn` binary on a local workload with two replicas
//! whose start and stop commands leave a trace: the volumes are snapshotted while it is at
//! zero, and it is back at its original replicas after a successful and after a failed backup.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{Cairn, json, stderr, wasm};

const GRANTS: &str = "workloads,scale,volumes";

/// A workload `app` in a tempdir: `data/` is its volume; `start.sh` marks it running (inside
/// the volume, so a snapshot taken while it runs would show it) and records the replicas it
/// was started with; `stop.sh` undoes that. `events.log` lists every start and stop.
struct App {
    dir: tempfile::TempDir,
}

impl App {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
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
        std::fs::write(
            root.join("inventory.yaml"),
            "namespaces:\n  default:\n    workloads:\n      app:\n        kind: statefulset\n\
             \x20       replicas: 2\n        workdir: .\n        allow: [sh]\n\
             \x20       start: [sh, ./start.sh]\n        stop: [sh, ./stop.sh]\n\
             \x20       ready: [sh, -c, 'test -f data/RUNNING']\n\
             \x20       volumes:\n          data: ./data\n",
        )
        .expect("inventory");
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
        Self { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, cairn: &Cairn, action: &str, extra: &[&str]) -> Output {
        let wasm = wasm("quiesce");
        let target = format!("local:{}", self.root().join("inventory.yaml").display());
        let mut args = vec![
            "run",
            wasm.to_str().expect("utf-8 path"),
            "--action",
            action,
            "--target",
            &target,
            "--workload",
            "app",
            "--grant",
            GRANTS,
            "--output",
            "json",
        ];
        args.extend_from_slice(extra);
        cairn.run(&args)
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

    let out = app.run(&cairn, "backup", &[]);
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    let report = json(&out);
    assert_eq!(app.events(), ["stop", "start"], "quiesced, then back");
    assert_eq!(app.replicas(), "2");
    assert_eq!(desired(&cairn), 2);
    let snapshot = &report["outputs"]["artifacts"][0];
    assert_eq!(snapshot["name"], "volume-data", "{report}");
    let id = snapshot["values"]
        .as_array()
        .and_then(|vs| vs.iter().find(|kv| kv[0] == "snapshot-id"))
        .and_then(|kv| kv[1].as_str())
        .unwrap_or_else(|| panic!("no snapshot-id in {report}"))
        .to_owned();
    // Taken while the application was stopped: its running marker is not in the snapshot.
    let snapshot_dir = cairn.home.path().join("cluster/snapshots").join(&id);
    let copy = tree(&snapshot_dir.join("data"));
    assert!(
        !copy.contains_key(Path::new("RUNNING")),
        "snapshot of a running app"
    );
    assert_eq!(copy, original);
    let report_path = app.root().join("report.json");
    std::fs::write(&report_path, &out.stdout).expect("save report");
    let from = report_path.to_str().expect("utf-8");

    // Change the volume: modify, delete and add files.
    std::fs::write(app.root().join("data/file-00.bin"), "corrupted").expect("modify");
    std::fs::remove_file(app.root().join("data/nested/settings.conf")).expect("delete");
    std::fs::write(app.root().join("data/new.txt"), "new").expect("add");
    assert_ne!(app.data(), original);

    let out = app.run(&cairn, "restore", &["--from", from]);
    assert!(out.status.success(), "restore failed: {}", stderr(&out));
    assert_eq!(app.data(), original, "the restored volume differs");
    assert_eq!(app.events(), ["stop", "start", "stop", "start"]);
    assert_eq!(app.replicas(), "2");
    assert_eq!(desired(&cairn), 2);

    // Delete retires the snapshot; a restore from the same report then fails clearly, and
    // its posthook still brings the workload back.
    let out = app.run(&cairn, "delete", &["--from", from]);
    assert!(out.status.success(), "delete failed: {}", stderr(&out));
    assert!(!snapshot_dir.exists(), "the snapshot is still there");
    let out = app.run(&cairn, "restore", &["--from", from]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let error = json(&out)["error"].as_str().expect("error").to_owned();
    assert!(
        error.contains(&id) && error.contains("not found"),
        "{error}"
    );
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
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = json(&out);
    let error = v["error"].as_str().expect("error");
    assert!(
        error.starts_with("backup") && error.contains("nope"),
        "{error}"
    );
    assert!(
        v["outputs"]["artifacts"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{v}"
    );
    let phases: Vec<(&str, &str)> = v["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| {
            (
                p["action"].as_str().unwrap_or_default(),
                p["status"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        phases,
        [
            ("backupPrehook", "ok"),
            ("backup", "failed"),
            ("backupPosthook", "ok")
        ],
        "{v}"
    );
    assert_eq!(app.events(), ["stop", "start"]);
    assert_eq!(app.replicas(), "2");
    assert_eq!(desired(&cairn), 2);
}

#[test]
fn a_backup_without_the_scale_grant_never_stops_the_workload() {
    let app = App::new();
    let cairn = Cairn::new();
    let wasm = wasm("quiesce");
    let target = format!("local:{}", app.root().join("inventory.yaml").display());
    let out = cairn.run(&[
        "run",
        wasm.to_str().expect("utf-8 path"),
        "--action",
        "backup",
        "--target",
        &target,
        "--workload",
        "app",
        "--grant",
        "workloads,volumes",
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let error = json(&out)["error"].as_str().expect("error").to_owned();
    assert!(error.contains("--grant scale"), "{error}");
    assert!(app.events().is_empty(), "{:?}", app.events());
    assert_eq!(app.replicas(), "2");
}

#[test]
fn a_backup_that_times_out_still_scales_the_workload_back() {
    let app = App::new();
    // Enough small files that copying the volume takes well over the deadline below, while the
    // prehook (one scale) takes a few milliseconds.
    let many = app.root().join("data/many");
    std::fs::create_dir(&many).expect("dir");
    for i in 0..20_000 {
        std::fs::write(many.join(format!("f{i:05}")), [b'x'; 64]).expect("file");
    }
    let cairn = Cairn::new();
    let out = app.run(&cairn, "backup", &["--timeout", "400ms"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = json(&out);
    let phases: Vec<(&str, &str)> = v["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| {
            (
                p["action"].as_str().unwrap_or_default(),
                p["status"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(phases[0], ("backupPrehook", "ok"), "{v}");
    assert_eq!(phases[2], ("backupPosthook", "ok"), "{v}");
    assert_ne!(
        phases[1].1, "ok",
        "the backup should have run out of time: {v}"
    );
    assert!(
        v["outputs"]["artifacts"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{v}"
    );
    assert_eq!(app.events(), ["stop", "start"]);
    assert_eq!(app.replicas(), "2");
    assert_eq!(desired(&cairn), 2);
}
