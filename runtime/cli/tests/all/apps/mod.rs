//! End-to-end tests of the application blueprints against real servers, and the harness they
//! share. A [`Harness`] is one application under test in its own tempdir: the inventory of a
//! local target whose one [`Workload`] runs the application's tools, and `cairn run` of its
//! blueprint against it. The fault tests every blueprint has (a tool missing from the
//! workload, wrong credentials, a timeout in the middle of a dump) live here too; each app's
//! file keeps only what is its own: starting the server, loading data, comparing it.

mod etcd;
mod mysql;
mod postgres;
mod quiesce;
mod redis;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Cairn, json, stderr, stdout, wasm};

/// A loopback port nothing listens on now, for a test's own server, and one no other test of
/// this process was given. Ports come from below the kernel's ephemeral range (32768 on), so
/// an outgoing connection of a test running beside this one cannot take it between this check
/// and the server's bind; an ephemeral port from `bind(0)` could be, and was.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // Processes started close together begin at different places.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() * 97 % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(FIRST + (start + n) % SPAN).expect("below 32000");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {FIRST} and {}", FIRST + SPAN);
}

/// Fails (never skips) when one of `programs` does not run, naming the Debian `packages` that
/// install them. A program runs with `--version`, or the argument after it (`etcdctl version`).
fn require(app: &str, packages: &str, programs: impl IntoIterator<Item = impl AsRef<str>>) {
    for program in programs {
        let program = program.as_ref();
        let (program, version) = program.split_once(' ').unwrap_or((program, "--version"));
        let found = Command::new(program)
            .arg(version)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{program} is not installed: install the Debian packages {packages} (apt-get \
             install {packages}) to run the {app} blueprint tests"
        );
    }
}

/// Runs a test's own `command` (described as `what`), which must succeed; its trimmed stdout.
fn answer(what: &str, command: &mut Command) -> String {
    let out = command.output().expect("the command runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "{what} failed ({}): {stdout}{stderr}",
        out.status
    );
    stdout
}

/// Writes an executable script.
/// Sends `sig` (`-INT`, `-STOP`) to process `pid`.
fn signal(pid: u32, sig: &str) {
    answer("kill", Command::new("kill").args([sig, &pid.to_string()]));
}

fn script(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Runs `command` with `input` on its stdin; its output.
fn piped(mut command: Command, input: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), input).expect("write stdin");
    child.wait_with_output().expect("the command ends")
}

/// Polls `cond` every 50 ms until it holds, or fails after `secs` seconds with `what` and
/// `why()` (such as the end of a server's log).
fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool, why: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {secs}s: {}",
            why()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The restore was refused before anything ran (exit 2) because the export `name` of its
/// point is gone (the point was deleted).
fn assert_export_gone(out: &Output, name: &str) {
    assert_eq!(out.status.code(), Some(2), "{}", stderr(out));
    let err = stderr(out);
    assert!(
        err.contains(&format!("artifact \"{name}\" cannot be used"))
            && err.contains("nothing ran")
            && err.contains("not found"),
        "{err}"
    );
}

/// The run failed (exit 1) with a JSON report whose one-line error contains every one of
/// `needles`; the report.
fn assert_fails_with(out: &Output, needles: &[&str]) -> Value {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    let v = json(out);
    assert_eq!(v["status"], "failed", "{v}");
    let error = v["error"].as_str().expect("a failed run reports an error");
    for n in needles {
        assert!(error.contains(n), "{error:?} lacks {n:?}");
    }
    assert!(!error.contains('\n'), "not one line: {error:?}");
    v
}

/// The phase `action` of a run's report.
fn phase<'a>(report: &'a Value, action: &str) -> &'a Value {
    report["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .find(|p| p["action"] == action)
        .unwrap_or_else(|| panic!("no phase {action} in {report}"))
}

/// Value `key` of an artifact or outputs (`values` as `[key, value]` pairs).
fn value(outputs: &Value, key: &str) -> String {
    outputs["values"]
        .as_array()
        .expect("values")
        .iter()
        .find(|p| p[0] == key)
        .and_then(|p| p[1].as_str())
        .unwrap_or_else(|| panic!("no value {key} in {outputs}"))
        .to_owned()
}

/// The report records no artifact: no restore point.
fn assert_no_artifacts(v: &Value) {
    assert!(
        v["outputs"]["artifacts"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "a failed backup must not record a restore point: {v}"
    );
}

/// A backup that ran out of time: failed with a one-line error of the backup naming the
/// deadline, no restore point, and (when the blueprint has one) its posthook ran and
/// succeeded. The report.
fn assert_timed_out(out: &Output, posthook: bool) -> Value {
    let v = assert_fails_with(out, &[]);
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("backup") && (error.contains("deadline") || error.contains("timed out")),
        "{error}"
    );
    assert_no_artifacts(&v);
    if posthook {
        assert_eq!(phase(&v, "backupPosthook")["status"], "ok", "{v}");
    }
    v
}

/// The default export repository of `cairn`'s home holds no snapshot: nothing partial was
/// committed.
fn assert_repository_empty(cairn: &Cairn) {
    let found = snapshots(cairn, &[]);
    assert!(found.is_empty(), "{found:?}");
}

/// `cairn repo snapshots --tag …` on the default export repository of `cairn`'s home: the
/// snapshots carrying every one of `tags`, as JSON.
fn snapshots(cairn: &Cairn, tags: &[&str]) -> Vec<Value> {
    // No --repo: the home's default repository, as the blueprints' READMEs show.
    let mut args = vec!["repo", "snapshots", "--output", "json"];
    for t in tags {
        args.extend(["--tag", t]);
    }
    let out = cairn.run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    json(&out)
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("not a list of snapshots: {}", stdout(&out)))
}

/// The ids of the exported restore points in the catalog.
pub(crate) fn exported_points(cairn: &Cairn) -> Vec<String> {
    let out = cairn.run(&[
        "catalog",
        "ls",
        "exported-restore-point",
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    json(&out)
        .as_array()
        .expect("points")
        .iter()
        .filter_map(|p| p["key"].as_str().map(str::to_owned))
        .collect()
}

/// The one workload (of kind statefulset) of a test's local target: its commands run in the
/// tempdir, with `path` as `PATH` when set, and may run only the `allow`ed programs; `start`,
/// `stop` and `ready` (YAML flow sequences) make it scalable; with `volume`, `./data` is its
/// volume `data`.
#[derive(Debug, Clone, Default)]
struct Workload {
    allow: Vec<&'static str>,
    path: Option<String>,
    replicas: Option<u32>,
    start: Option<String>,
    stop: Option<String>,
    ready: Option<String>,
    volume: bool,
}

impl Workload {
    fn allowing(allow: &[&'static str]) -> Self {
        Self {
            allow: allow.to_vec(),
            ..Self::default()
        }
    }

    /// This workload with `path` as its `PATH`.
    fn with_path(&self, path: &Path) -> Self {
        Self {
            path: Some(path.display().to_string()),
            ..self.clone()
        }
    }

    fn yaml(&self, name: &str) -> String {
        let mut y = format!(
            "namespaces:\n  default:\n    workloads:\n      {name}:\n        kind: statefulset\n\
             \x20       workdir: .\n        allow: [{}]\n",
            self.allow.join(", ")
        );
        let optional = [
            (
                "env",
                self.path.as_ref().map(|p| format!("{{PATH: \"{p}\"}}")),
            ),
            ("replicas", self.replicas.map(|r| r.to_string())),
            ("start", self.start.clone()),
            ("stop", self.stop.clone()),
            ("ready", self.ready.clone()),
            ("volumes", self.volume.then(|| "{data: ./data}".to_owned())),
        ];
        for (field, value) in optional {
            if let Some(value) = value {
                y.push_str(&format!("        {field}: {value}\n"));
            }
        }
        y
    }
}

/// One application under test: a tempdir holding its files and `inventory.yaml`, the
/// blueprint that protects it, the workload it is, and the arguments every run passes.
/// `workload` is what [`Harness::set_workload`] wrote last: the base the fault tests vary.
struct Harness {
    dir: tempfile::TempDir,
    blueprint: &'static str,
    name: &'static str,
    args: Vec<String>,
    workload: Workload,
    /// The pid file of the daemon [`Harness::serve`] started.
    pidfile: Option<PathBuf>,
    /// Set by [`Harness::on_kubernetes`]: runs go to a fake Kubernetes cluster.
    kube: Option<Kube>,
}

/// A fake Kubernetes API server (`cairn_kube_fake`) holding the application as a StatefulSet,
/// and the kubeconfig that points at it.
struct Kube {
    /// Serves the runs; it stops when dropped.
    _api: cairn_kube_fake::FakeApi,
    config: PathBuf,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Harness {
    fn new(blueprint: &'static str, workload: &'static str) -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            blueprint,
            name: workload,
            args: Vec::new(),
            workload: Workload::default(),
            pidfile: None,
            kube: None,
        }
    }

    /// From now on, runs `cairn run --target kube` against a fake Kubernetes cluster: the
    /// workload is a StatefulSet of one replica whose container runs in the tempdir with the
    /// workload's `PATH`, and whose exec runs the commands on this machine.
    fn on_kubernetes(&mut self) {
        let api = cairn_kube_fake::FakeApi::start_blocking();
        api.namespace("default");
        let mut container = serde_json::json!({
            "name": self.name,
            "image": self.blueprint,
            "workingDir": self.root(),
        });
        if let Some(path) = &self.workload.path {
            container["env"] = serde_json::json!([{ "name": "PATH", "value": path }]);
        }
        api.put(
            "/apis/apps/v1/namespaces/default/statefulsets",
            cairn_kube_fake::workload(
                self.name,
                1,
                serde_json::json!({ "containers": [container] }),
            ),
        );
        let config = self.root().join("kubeconfig");
        api.kubeconfig(&config);
        self.kube = Some(Kube { _api: api, config });
    }

    /// Starts the workload's daemon: `start`, run in the tempdir, daemonizes and writes its
    /// pid to `pidfile`. `start` becomes the workload's start command, and its stop command
    /// SIGTERMs that pid and waits for the daemon to exit (which saves what a server saves on
    /// shutdown, as in production); a daemon already gone (it exited at startup) is stopped,
    /// as a scale-down of a crashed pod is. Killed on drop.
    fn serve(&mut self, start: &[&str], pidfile: &str) {
        self.set_workload(Workload {
            start: Some(format!("[{}]", start.join(", "))),
            stop: Some(format!(
                "[sh, -c, 'if pid=$(cat {pidfile}) && kill \"$pid\" 2>/dev/null; then while \
                 [ -e /proc/$pid ] && ! grep -q \"^State:.*Z\" /proc/$pid/status; do sleep \
                 0.05; done; fi']"
            )),
            ..self.workload.clone()
        });
        self.pidfile = Some(self.root().join(pidfile));
        let mut command = Command::new(start[0]);
        answer(
            "starting the server",
            command.args(&start[1..]).current_dir(self.root()),
        );
    }

    /// Kills (SIGKILL) the daemon [`Harness::serve`] started.
    fn kill(&self) {
        let pid = self
            .pidfile
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok());
        if let Some(pid) = pid {
            let _ = Command::new("kill")
                .args(["-9", pid.trim()])
                .stderr(Stdio::null())
                .status();
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Passes `--param NAME=VALUE` to every run.
    fn param(&mut self, name: &str, value: impl std::fmt::Display) {
        self.args.push("--param".to_owned());
        self.args.push(format!("{name}={value}"));
    }

    /// Writes `workload` as the inventory and keeps it as the base.
    fn set_workload(&mut self, workload: Workload) {
        self.write_inventory(&workload);
        self.workload = workload;
    }

    /// Writes `workload` as the inventory, keeping the base.
    fn write_inventory(&self, workload: &Workload) {
        std::fs::write(self.root().join("inventory.yaml"), workload.yaml(self.name))
            .expect("write inventory");
    }

    /// `dir` in the tempdir with a link to each of `tools` (name, real path): a `PATH` that
    /// lacks every other program.
    fn tools(&self, dir: &str, tools: &[(&str, &Path)]) -> PathBuf {
        let bin = self.root().join(dir);
        std::fs::create_dir_all(&bin).expect("mkdir");
        for (name, real) in tools {
            std::os::unix::fs::symlink(real, bin.join(name)).expect("symlink");
        }
        bin
    }

    /// `cairn run BLUEPRINT.wasm --action ACTION --target local:… --workload … --output json`
    /// (`--target kube` after [`Harness::on_kubernetes`]),
    /// the harness's arguments, then `extra`.
    fn run(&self, cairn: &Cairn, action: &str, extra: &[&str]) -> Output {
        let args = self.args(action, extra);
        let mut command = cairn.command(&args.iter().map(String::as_str).collect::<Vec<_>>());
        if let Some(kube) = &self.kube {
            command.env("KUBECONFIG", &kube.config);
        }
        command.output().expect("cairn runs")
    }

    /// The arguments of [`Harness::run`].
    fn args(&self, action: &str, extra: &[&str]) -> Vec<String> {
        let target = match &self.kube {
            Some(_) => "kube".to_owned(),
            None => format!("local:{}", self.root().join("inventory.yaml").display()),
        };
        let wasm = wasm(self.blueprint).display().to_string();
        let workload = self.name;
        let run = [
            "run",
            &wasm,
            "--action",
            action,
            "--target",
            &target,
            "--workload",
            workload,
        ];
        let json = ["--output", "json"];
        let mut args: Vec<String> = run.iter().chain(&json).map(|a| (*a).to_owned()).collect();
        args.extend(self.args.iter().cloned());
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args
    }

    /// A run that must succeed; its report.
    fn run_ok(&self, cairn: &Cairn, action: &str, extra: &[&str]) -> Value {
        let out = self.run(cairn, action, extra);
        assert!(out.status.success(), "{action} failed: {}", stderr(&out));
        json(&out)
    }

    /// Saves the report of a backup that must have succeeded as `report.json` in the tempdir;
    /// its path.
    fn save(&self, out: &Output) -> PathBuf {
        assert!(out.status.success(), "backup failed: {}", stderr(out));
        let report = self.root().join("report.json");
        std::fs::write(&report, &out.stdout).expect("save the report");
        report
    }

    /// A backup that must succeed; its report, saved as `report.json` in the tempdir.
    fn backup(&self, cairn: &Cairn, extra: &[&str]) -> (PathBuf, Value) {
        let out = self.run(cairn, "backup", extra);
        (self.save(&out), json(&out))
    }

    /// `delete` of the restore point in `report`, which must succeed, and then is no longer in
    /// the catalog.
    fn delete(&self, cairn: &Cairn, report: &Path) {
        let from = report.to_str().expect("utf-8 path");
        self.run_ok(cairn, "delete", &["--from", from, "--grant", "export"]);
        let text = std::fs::read_to_string(report).expect("the report");
        let id = serde_json::from_str::<Value>(&text).expect("JSON")["action_id"].clone();
        let id = id.as_str().expect("an action id").to_owned();
        let listed = exported_points(cairn);
        assert!(
            !listed.contains(&id),
            "restore point {id} is still listed: {listed:?}"
        );
    }

    /// A backup whose workload lacks `tool`: not in its allow list, then allowed but missing
    /// from its `PATH` (which holds `others`, linked from `/bin`): each a clear error naming
    /// `tool`.
    fn a_missing_tool_is_named(&self, tool: &str, others: &[&str]) {
        let cairn = Cairn::new();
        let mut denied = self.workload.clone();
        denied.allow.retain(|t| *t != tool);
        self.write_inventory(&denied);
        let backup = ["--grant", "exec,export"];
        let out = self.run(&cairn, "backup", &backup);
        assert_fails_with(&out, &["denied", tool, "allow"]);

        let links: Vec<(&str, PathBuf)> = others
            .iter()
            .map(|t| (*t, Path::new("/bin").join(t)))
            .collect();
        let links: Vec<(&str, &Path)> = links.iter().map(|(t, p)| (*t, p.as_path())).collect();
        let bin = self.tools("bin", &links);
        self.write_inventory(&self.workload.with_path(&bin));
        let out = self.run(&cairn, "backup", &backup);
        assert_fails_with(&out, &[tool, "not on PATH"]);
    }

    /// A backup with the `wrong` credentials (`--secret` arguments) fails with an error
    /// containing every one of `refused`; one without the secrets grant, every one of
    /// `missing`.
    fn credentials_are_checked(&self, wrong: &[&str], refused: &[&str], missing: &[&str]) {
        let cairn = Cairn::new();
        let mut args = vec!["--grant", "exec,export,secrets"];
        args.extend_from_slice(wrong);
        assert_fails_with(&self.run(&cairn, "backup", &args), refused);
        let out = self.run(&cairn, "backup", &["--grant", "exec,export"]);
        assert_fails_with(&out, missing);
    }
}

/// A SQL server under test (PostgreSQL, MariaDB) with the database [`DB`] loaded.
trait SqlServer {
    /// The password secret of the blueprint's user, `password=raw:…`.
    const SECRET: &'static str;

    fn harness(&self) -> &Harness;

    /// Per table of `db`: its row count and a checksum.
    fn fingerprint(&self, db: &str) -> Vec<String>;

    /// One value a query answers, in `db`.
    fn query(&self, db: &str, sql: &str) -> String;

    /// Whether database `db` exists.
    fn exists(&self, db: &str) -> bool;

    /// A backup of [`DB`] (unless `extra` names another database) with the password granted.
    fn backup(&self, cairn: &Cairn, extra: &[&str]) -> Output {
        let mut args = vec!["--grant", "exec,export,secrets", "--secret", Self::SECRET];
        if !extra.iter().any(|a| a.starts_with("database=")) {
            args.extend(["--param", "database=shop"]);
        }
        args.extend_from_slice(extra);
        self.harness().run(cairn, "backup", &args)
    }

    /// A restore from `report` with the password granted.
    fn restore(&self, cairn: &Cairn, report: &Path, extra: &[&str]) -> Output {
        let from = report.to_str().expect("utf-8 path");
        let mut args = vec![
            "--grant",
            "exec,import,secrets",
            "--secret",
            Self::SECRET,
            "--from",
            from,
        ];
        args.extend_from_slice(extra);
        self.harness().run(cairn, "restore", &args)
    }

    /// Restores of `report`, a backup of [`DB`] fingerprinted as `before`, over [`DB`] since
    /// mutated: refused without replace=true (leaving `probe`, a query and its answer, as it
    /// is), then replacing it; into a database that does not exist yet; and after `delete`,
    /// a clear error that creates nothing.
    fn restores(&self, cairn: &Cairn, report: &Path, before: &[String], probe: (&str, &str)) {
        let out = self.restore(cairn, report, &[]);
        assert_fails_with(&out, &["already holds", "tables", "replace=true"]);
        assert_eq!(
            self.query(DB, probe.0),
            probe.1,
            "a refused restore changed data"
        );

        let out = self.restore(cairn, report, &["--param", "replace=true"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(self.fingerprint(DB), before);

        // Into a database that does not exist yet: it is created.
        let out = self.restore(cairn, report, &["--param", "database=shop_copy"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(self.fingerprint("shop_copy"), before);

        // Delete retires the restore point: its export is gone, and a restore from it is
        // refused before it creates anything on the server.
        self.harness().delete(cairn, report);
        let out = self.restore(cairn, report, &["--param", "database=shop_gone"]);
        assert_export_gone(&out, "dump");
        assert!(!self.exists("shop_gone"));
    }

    /// A backup that holds the quiesce window open and times out in the middle of the dump:
    /// the posthook still ran, and nothing was recorded or committed. The report.
    fn times_out_mid_dump(&self, cairn: &Cairn) -> Value {
        let quiesced = ["--param", "quiesce=true", "--grant", "volumes"];
        let out = self.backup(cairn, &[&quiesced[..], &["--timeout", "8s"]].concat());
        let v = assert_timed_out(&out, true);
        assert_repository_empty(cairn);
        v
    }
}

/// The database the SQL tests load, back up and restore.
const DB: &str = "shop";
