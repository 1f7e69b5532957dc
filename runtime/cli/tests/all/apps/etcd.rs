//! `blueprints/etcd` through the real `cairn` binary against a real `etcd` on loopback: backup,
//! destroy, restore and compare every key; and the faults a user can cause.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{error_of, free_port};
use crate::support::{Cairn, json, stderr, wasm};

const ROOT_PASSWORD: &str = "r00t-pw";

/// Keys the test loads.
const KEYS: usize = 3000;

/// Fails (never skips) when the server's programs are missing.
fn require_etcd() {
    for (program, version) in [("etcd", "--version"), ("etcdctl", "version")] {
        let found = Command::new(program)
            .arg(version)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{program} is not installed: install the Debian packages etcd-server and \
             etcd-client (apt-get install etcd-server etcd-client) to run the etcd blueprint tests"
        );
    }
}

/// An `etcd` member in its own tempdir, started and stopped by scripts that the inventory
/// uses too, killed on drop.
struct Etcd {
    dir: tempfile::TempDir,
    client: u16,
    peer: u16,
    auth: bool,
}

impl Etcd {
    fn start(auth: bool) -> Self {
        require_etcd();
        let dir = tempfile::tempdir().expect("tempdir");
        let (client, peer) = (free_port(), free_port());
        let root = dir.path();
        std::fs::create_dir(root.join("tmp")).expect("tmp dir");
        // A longer election timeout raises etcd's request timeout (5 s + 2 × election timeout):
        // the tests share two cores and a disk with parallel builds, where the default 7 s flakes.
        let start = format!(
            "etcd --name default --data-dir \"$PWD/data\" \
             --listen-client-urls http://127.0.0.1:{client} --advertise-client-urls http://127.0.0.1:{client} \
             --listen-peer-urls http://127.0.0.1:{peer} --initial-advertise-peer-urls http://127.0.0.1:{peer} \
             --initial-cluster default=http://127.0.0.1:{peer} \
             --heartbeat-interval 250 --election-timeout 2500 >> etcd.log 2>&1 &\necho $! > etcd.pid\n"
        );
        std::fs::write(root.join("start.sh"), start).expect("start.sh");
        std::fs::write(
            root.join("stop.sh"),
            "pid=$(cat etcd.pid) && kill \"$pid\" && \
             while [ -e /proc/$pid ] && ! grep -q '^State:.*Z' /proc/$pid/status; do sleep 0.05; done\n",
        )
        .expect("stop.sh");
        let status = Command::new("sh")
            .arg("start.sh")
            .current_dir(root)
            .status()
            .expect("sh runs");
        assert!(status.success());
        let mut etcd = Self {
            dir,
            client,
            peer,
            auth: false,
        };
        etcd.wait_up();
        etcd.write_inventory(&["etcdctl", "cat", "sh"], None);
        if auth {
            etcd.ctl(&["user", "add", &format!("root:{ROOT_PASSWORD}")]);
            etcd.ctl(&["auth", "enable"]);
            etcd.auth = true;
        }
        etcd
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn data_dir(&self) -> PathBuf {
        self.root().join("data")
    }

    fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .try_ctl(&["get", "/"])
            .is_some_and(|o| o.status.success())
        {
            assert!(
                Instant::now() < deadline,
                "etcd on port {} did not come up: {}",
                self.client,
                std::fs::read_to_string(self.root().join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn write_inventory(&self, allow: &[&str], path_env: Option<&Path>) {
        let mut env = String::new();
        if let Some(p) = path_env {
            env = format!("        env: {{PATH: \"{}\"}}\n", p.display());
        }
        let inventory = format!(
            "namespaces:\n  default:\n    workloads:\n      etcd:\n        kind: statefulset\n\
             \x20       workdir: .\n{env}        allow: [{allow}]\n\
             \x20       start: [sh, ./start.sh]\n\
             \x20       stop: [sh, ./stop.sh]\n\
             \x20       ready: [etcdctl, --endpoints, '127.0.0.1:{client}', endpoint, status]\n",
            allow = allow.join(", "),
            client = self.client,
        );
        std::fs::write(self.root().join("inventory.yaml"), inventory).expect("inventory");
    }

    fn try_ctl(&self, args: &[&str]) -> Option<Output> {
        let mut command = Command::new("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .env("ETCDCTL_ENDPOINTS", format!("127.0.0.1:{}", self.client))
            .env("ETCDCTL_COMMAND_TIMEOUT", "30s")
            .args(args);
        if self.auth {
            command
                .env("ETCDCTL_USER", "root")
                .env("ETCDCTL_PASSWORD", ROOT_PASSWORD);
        }
        command.output().ok()
    }

    fn ctl(&self, args: &[&str]) -> String {
        let out = self.try_ctl(args).expect("etcdctl runs");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Puts `KEYS` keys under a few prefixes, in transactions of 100.
    fn load(&self) {
        for batch in 0..KEYS / 100 {
            let mut txn = String::from("\n");
            for i in batch * 100..(batch + 1) * 100 {
                let prefix = ["config", "registry/pods", "registry/services", "locks"][i % 4];
                txn.push_str(&format!(
                    "put /{prefix}/key-{i:05} value-{i}-{}\n",
                    i * 7919 % 1000
                ));
            }
            txn.push_str("\n\n");
            // A puts-only transaction is idempotent: retry one that timed out on a busy disk.
            let mut tries = 0;
            while !self.txn(&txn) {
                tries += 1;
                assert!(tries < 3, "the transaction of batch {batch} keeps failing");
            }
        }
        assert_eq!(self.dump().len(), KEYS);
    }

    /// Runs one `etcdctl txn`; whether it succeeded.
    fn txn(&self, txn: &str) -> bool {
        let mut command = Command::new("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .env("ETCDCTL_ENDPOINTS", format!("127.0.0.1:{}", self.client))
            .env("ETCDCTL_COMMAND_TIMEOUT", "30s")
            .arg("txn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if self.auth {
            command
                .env("ETCDCTL_USER", "root")
                .env("ETCDCTL_PASSWORD", ROOT_PASSWORD);
        }
        let mut child = command.spawn().expect("etcdctl txn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(txn.as_bytes())
            .expect("write txn");
        let out = child.wait_with_output().expect("etcdctl txn");
        let ok = out.status.success() && String::from_utf8_lossy(&out.stdout).contains("SUCCESS");
        if !ok {
            eprintln!("txn failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        ok
    }

    /// Every key and value.
    fn dump(&self) -> BTreeMap<String, String> {
        let text = self.ctl(&["get", "", "--from-key", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&text).expect("etcdctl json");
        let decode = |v: &serde_json::Value| {
            let b64 = v.as_str().expect("base64 string");
            String::from_utf8(base64_decode(b64)).expect("utf-8")
        };
        v["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| (decode(&kv["key"]), decode(&kv["value"])))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn kill(&self) {
        if let Ok(pid) = std::fs::read_to_string(self.root().join("etcd.pid")) {
            let _ = Command::new("kill")
                .args(["-9", pid.trim()])
                .stderr(Stdio::null())
                .status();
        }
    }

    fn cairn(&self, cairn: &Cairn, action: &str, extra: &[&str]) -> Output {
        let wasm = wasm("etcd");
        let target = format!("local:{}", self.root().join("inventory.yaml").display());
        let endpoints = format!("endpoints=127.0.0.1:{}", self.client);
        let tmp = format!("tmp-dir={}", self.root().join("tmp").display());
        let mut args = vec![
            "run",
            wasm.to_str().expect("utf-8 path"),
            "--action",
            action,
            "--target",
            &target,
            "--workload",
            "etcd",
            "--param",
            &endpoints,
            "--param",
            &tmp,
        ];
        args.extend_from_slice(extra);
        cairn.run(&args)
    }

    fn backup(&self, cairn: &Cairn, extra: &[&str]) -> PathBuf {
        let mut args = vec!["--grant", "exec,export,secrets", "--output", "json"];
        args.extend_from_slice(extra);
        let out = self.cairn(cairn, "backup", &args);
        assert!(out.status.success(), "backup failed: {}", stderr(&out));
        let report = self.root().join("report.json");
        std::fs::write(&report, &out.stdout).expect("save the report");
        report
    }

    fn restore(&self, cairn: &Cairn, report: &Path, extra: &[&str]) -> Output {
        let data_dir = format!("data-dir={}", self.data_dir().display());
        let peer = format!("initial-advertise-peer-urls=http://127.0.0.1:{}", self.peer);
        let mut args = vec![
            "--from",
            report.to_str().expect("utf-8"),
            "--grant",
            "exec,import,workloads,scale,secrets",
            "--param",
            &data_dir,
            "--param",
            &peer,
            "--param",
            "ready-timeout=60",
            "--output",
            "json",
        ];
        args.extend_from_slice(extra);
        self.cairn(cairn, "restore", &args)
    }

    /// Files left in the backup's temporary directory.
    fn tmp_files(&self) -> Vec<String> {
        std::fs::read_dir(self.root().join("tmp"))
            .expect("tmp dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Standard base64 (etcdctl's JSON encodes keys and values so).
fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .expect("base64 character");
        acc = (acc << 6) | u32::try_from(v).expect("small");
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).expect("byte"));
        }
    }
    out
}

fn credentials() -> [String; 4] {
    [
        "--secret".into(),
        "user=raw:root".into(),
        "--secret".into(),
        format!("password=raw:{ROOT_PASSWORD}"),
    ]
}

#[test]
fn backup_destroy_restore_and_compare_every_key() {
    let etcd = Etcd::start(true);
    etcd.load();
    let before = etcd.dump();

    let cairn = Cairn::new();
    let creds = credentials();
    let creds: Vec<&str> = creds.iter().map(String::as_str).collect();
    let report = etcd.backup(&cairn, &creds);
    assert!(etcd.tmp_files().is_empty(), "{:?}", etcd.tmp_files());

    // Destroy: delete everything under one prefix, change and add keys.
    etcd.ctl(&["del", "/config/", "--prefix"]);
    etcd.ctl(&["put", "/locks/key-00003", "changed"]);
    etcd.ctl(&["put", "/intruder", "1"]);
    assert_ne!(etcd.dump(), before);

    let mut extra = creds.clone();
    extra.extend(["--param", "replace=true"]);
    let out = etcd.restore(&cairn, &report, &extra);
    assert!(
        out.status.success(),
        "restore failed: {}\netcd.log ends with: {}\nstart log: {}",
        stderr(&out),
        tail(&etcd.root().join("etcd.log")),
        tail(
            &cairn
                .home
                .path()
                .join("cluster/logs/default.etcd.start.log")
        ),
    );
    let after = etcd.dump();
    assert_eq!(after.len(), KEYS);
    assert!(after == before, "the restored keys differ");
    // Nothing staged is left beside the data directory.
    let leftovers: Vec<_> = std::fs::read_dir(etcd.root())
        .expect("root")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("cairn"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn restore_over_existing_data_is_refused_without_replace() {
    let etcd = Etcd::start(false);
    etcd.load();
    let cairn = Cairn::new();
    let report = etcd.backup(&cairn, &[]);
    etcd.ctl(&["put", "/newer", "data"]);
    let error = error_of(&etcd.restore(&cairn, &report, &[]));
    assert!(
        error.contains("already holds") && error.contains("replace=true"),
        "{error}"
    );
    assert_eq!(etcd.dump().len(), KEYS + 1);
}

#[test]
fn wrong_or_missing_credentials_are_clear_errors() {
    let etcd = Etcd::start(true);
    let cairn = Cairn::new();
    let out = etcd.cairn(
        &cairn,
        "backup",
        &[
            "--grant",
            "exec,export,secrets",
            "--secret",
            "user=raw:root",
            "--secret",
            "password=raw:wrong",
            "--output",
            "json",
        ],
    );
    let error = error_of(&out);
    assert!(
        error.contains("refused the credentials") && error.contains("authentication failed"),
        "{error}"
    );

    let out = etcd.cairn(
        &cairn,
        "backup",
        &["--grant", "exec,export", "--output", "json"],
    );
    let error = error_of(&out);
    assert!(
        error.contains("requires authentication") && error.contains("--secret"),
        "{error}"
    );
}

#[test]
fn a_server_that_is_down_is_a_clear_error() {
    let etcd = Etcd::start(false);
    etcd.kill();
    let cairn = Cairn::new();
    let out = etcd.cairn(
        &cairn,
        "backup",
        &["--grant", "exec,export", "--output", "json"],
    );
    let error = error_of(&out);
    assert!(
        error.contains("cannot reach etcd") && error.contains(&etcd.client.to_string()),
        "{error}"
    );
    assert!(etcd.tmp_files().is_empty(), "{:?}", etcd.tmp_files());
}

#[test]
fn etcdctl_missing_from_the_workload_is_a_clear_error() {
    let etcd = Etcd::start(false);
    let cairn = Cairn::new();

    etcd.write_inventory(&["cat", "sh"], None);
    let out = etcd.cairn(
        &cairn,
        "backup",
        &["--grant", "exec,export", "--output", "json"],
    );
    let error = error_of(&out);
    assert!(
        error.contains("denied") && error.contains("etcdctl") && error.contains("allow"),
        "{error}"
    );

    let bin = etcd.root().join("bin");
    std::fs::create_dir(&bin).expect("bin");
    for tool in ["sh", "cat", "rm"] {
        std::os::unix::fs::symlink(Path::new("/bin").join(tool), bin.join(tool)).expect("link");
    }
    etcd.write_inventory(&["etcdctl", "cat", "sh"], Some(&bin));
    let out = etcd.cairn(
        &cairn,
        "backup",
        &["--grant", "exec,export", "--output", "json"],
    );
    let error = error_of(&out);
    assert!(
        error.contains("etcdctl") && error.contains("not on PATH"),
        "{error}"
    );
}

#[test]
fn a_timeout_in_the_middle_of_the_export_records_nothing_and_cleans_up() {
    let etcd = Etcd::start(false);
    etcd.load();
    // A `cat` that stalls before streaming: the deadline hits in the middle of the export.
    let bin = etcd.root().join("bin");
    std::fs::create_dir(&bin).expect("bin");
    for tool in ["sh", "rm", "etcdctl"] {
        let real = which(tool);
        std::os::unix::fs::symlink(real, bin.join(tool)).expect("link");
    }
    let slow_cat = bin.join("cat");
    std::fs::write(
        &slow_cat,
        "#!/bin/sh\n/bin/sleep 30\nexec /bin/cat \"$@\"\n",
    )
    .expect("cat");
    std::fs::set_permissions(
        &slow_cat,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    etcd.write_inventory(&["etcdctl", "cat", "sh"], Some(&bin));

    let cairn = Cairn::new();
    let out = etcd.cairn(
        &cairn,
        "backup",
        &[
            "--grant",
            "exec,export",
            "--timeout",
            "3s",
            "--output",
            "json",
        ],
    );
    let error = error_of(&out);
    assert!(
        error.starts_with("backup") && (error.contains("deadline") || error.contains("timed out")),
        "{error}"
    );
    let v = json(&out);
    assert!(
        v["outputs"]["artifacts"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "a timed-out backup must not record a restore point: {v}"
    );
    // The posthook ran and removed the temporary snapshot.
    let phases = v["phases"].as_array().expect("phases");
    assert!(
        phases
            .iter()
            .any(|p| p["action"] == "backupPosthook" && p["status"] == "ok"),
        "{v}"
    );
    assert!(etcd.tmp_files().is_empty(), "{:?}", etcd.tmp_files());
}

/// The last lines of a log file, for failure messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn which(tool: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .expect("sh");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
fn delete_removes_the_export_and_a_later_restore_fails_clearly() {
    let etcd = Etcd::start(false);
    etcd.load();
    let cairn = Cairn::new();
    let report = etcd.backup(&cairn, &[]);
    let from = report.to_str().expect("utf-8");
    let out = etcd.cairn(&cairn, "delete", &["--from", from, "--grant", "export"]);
    assert!(out.status.success(), "delete failed: {}", stderr(&out));

    etcd.ctl(&["del", "", "--from-key"]);
    let error = error_of(&etcd.restore(&cairn, &report, &[]));
    assert!(
        error.contains("export `snapshot`") && error.contains("not found"),
        "{error}"
    );
    // The member still runs, untouched.
    assert!(etcd.dump().is_empty());
    assert!(etcd.data_dir().join("member").is_dir());
}
