//! `blueprints/etcd` through the real `cairn` binary against a real `etcd` on loopback: backup,
//! destroy, restore and compare every key; and the faults a user can cause.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{
    Harness, Workload, assert_export_gone, assert_fails_with, assert_repository_empty,
    assert_timed_out, phase, value,
};
use super::{free_port, piped, require, script, wait_for};
use crate::support::{Cairn, stderr};

const ROOT_PASSWORD: &str = "r00t-pw";

/// Keys the test loads.
const KEYS: usize = 3000;

/// An `etcd` member in its own tempdir, started by a script that its harness's workload `etcd`
/// uses too, killed on drop.
struct Etcd {
    h: Harness,
    client: u16,
    peer: u16,
    auth: bool,
}

impl Etcd {
    fn start(auth: bool) -> Self {
        require(
            "etcd",
            "etcd-server etcd-client",
            ["etcd", "etcdctl version"],
        );
        let mut h = Harness::new("etcd", "etcd");
        let (client, peer) = (free_port(), free_port());
        let root = h.root();
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
        let tmp = root.join("tmp");
        h.param("endpoints", format!("127.0.0.1:{client}"));
        h.param("tmp-dir", tmp.display());
        h.workload = Workload {
            ready: Some(format!(
                "[etcdctl, --endpoints, '127.0.0.1:{client}', endpoint, status]"
            )),
            ..Workload::allowing(&["etcdctl", "cat", "sh"])
        };
        h.serve(&["sh", "./start.sh"], "etcd.pid");
        let mut etcd = Self {
            h,
            client,
            peer,
            auth: false,
        };
        wait_for(
            "etcd coming up",
            30,
            || {
                etcd.try_ctl(&["get", "/"])
                    .is_some_and(|o| o.status.success())
            },
            || std::fs::read_to_string(etcd.h.root().join("etcd.log")).unwrap_or_default(),
        );
        if auth {
            etcd.ctl(&["user", "add", &format!("root:{ROOT_PASSWORD}")]);
            etcd.ctl(&["auth", "enable"]);
            etcd.auth = true;
        }
        etcd
    }

    fn data_dir(&self) -> PathBuf {
        self.h.root().join("data")
    }

    fn etcdctl(&self) -> Command {
        let mut command = Command::new("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .env("ETCDCTL_ENDPOINTS", format!("127.0.0.1:{}", self.client))
            .env("ETCDCTL_COMMAND_TIMEOUT", "30s");
        if self.auth {
            command
                .env("ETCDCTL_USER", "root")
                .env("ETCDCTL_PASSWORD", ROOT_PASSWORD);
        }
        command
    }

    fn try_ctl(&self, args: &[&str]) -> Option<Output> {
        self.etcdctl().args(args).output().ok()
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
        let mut command = self.etcdctl();
        command.arg("txn");
        let out = piped(command, txn.as_bytes());
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

    fn restore(&self, cairn: &Cairn, report: &Path, extra: &[&str]) -> Output {
        self.restore_granted(cairn, report, "exec,import,workloads,scale,secrets", extra)
    }

    /// [`Etcd::restore`] with only `grants`.
    fn restore_granted(
        &self,
        cairn: &Cairn,
        report: &Path,
        grants: &str,
        extra: &[&str],
    ) -> Output {
        let data_dir = format!("data-dir={}", self.data_dir().display());
        let peer = format!("initial-advertise-peer-urls=http://127.0.0.1:{}", self.peer);
        let params = ["--param", &data_dir, "--param", &peer];
        self.restore_with(cairn, report, grants, &[&params[..], extra].concat())
    }

    /// A restore from `report` with `grants` and only `params` (no `data-dir` or peer URLs
    /// unless they name them).
    fn restore_with(&self, cairn: &Cairn, report: &Path, grants: &str, params: &[&str]) -> Output {
        let from = report.to_str().expect("utf-8");
        let timeout = ["--param", "ready-timeout=60"];
        let args = [&["--from", from, "--grant", grants][..], &timeout, params].concat();
        self.h.run(cairn, "restore", &args)
    }

    /// What a restore staged or set aside beside the data directory and left there.
    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.h.root())
            .expect("root")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("cairn"))
            .collect()
    }

    /// Files left in the backup's temporary directory.
    fn tmp_files(&self) -> Vec<String> {
        std::fs::read_dir(self.h.root().join("tmp"))
            .expect("tmp dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
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

const BACKUP: [&str; 2] = ["--grant", "exec,export,secrets"];

#[test]
fn backup_destroy_restore_and_compare_every_key() {
    let etcd = Etcd::start(true);
    etcd.load();
    let before = etcd.dump();

    let cairn = Cairn::new();
    let password = format!("password=raw:{ROOT_PASSWORD}");
    let creds = ["--secret", "user=raw:root", "--secret", &password];
    let (report, _) = etcd.h.backup(&cairn, &[&BACKUP[..], &creds].concat());
    assert!(etcd.tmp_files().is_empty(), "{:?}", etcd.tmp_files());

    // Destroy: delete everything under one prefix, change and add keys.
    etcd.ctl(&["del", "/config/", "--prefix"]);
    etcd.ctl(&["put", "/locks/key-00003", "changed"]);
    etcd.ctl(&["put", "/intruder", "1"]);
    assert_ne!(etcd.dump(), before);

    let out = etcd.restore(
        &cairn,
        &report,
        &[&creds[..], &["--param", "replace=true"]].concat(),
    );
    assert!(
        out.status.success(),
        "restore failed: {}\netcd.log ends with: {}\nstart log: {}",
        stderr(&out),
        tail(&etcd.h.root().join("etcd.log")),
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
    assert!(etcd.leftovers().is_empty(), "{:?}", etcd.leftovers());
}

#[test]
fn restore_over_existing_data_is_refused_without_replace() {
    let etcd = Etcd::start(false);
    etcd.load();
    let cairn = Cairn::new();
    let (report, _) = etcd.h.backup(&cairn, &BACKUP);
    etcd.ctl(&["put", "/newer", "data"]);
    let out = etcd.restore(&cairn, &report, &[]);
    assert_fails_with(&out, &["already holds", "replace=true"]);
    assert_eq!(etcd.dump().len(), KEYS + 1);
}

/// A restore that could not restart the member (its `scale` grant left out) is refused before
/// it changes anything: no directory moves, and the member serves what it held.
#[test]
fn a_restore_that_cannot_restart_the_member_changes_nothing() {
    let etcd = Etcd::start(false);
    etcd.load();
    let cairn = Cairn::new();
    let (report, _) = etcd.h.backup(&cairn, &BACKUP);
    etcd.ctl(&["put", "/newer", "data"]);
    let grants = "exec,import,workloads";
    let out = etcd.restore_granted(&cairn, &report, grants, &["--param", "replace=true"]);
    assert_fails_with(&out, &["scale"]);
    assert!(etcd.leftovers().is_empty(), "{:?}", etcd.leftovers());
    assert_eq!(etcd.dump().len(), KEYS + 1);
}

/// A restore stopped at its deadline while the member is being stopped for the restart (its
/// stop command hangs) cannot undo itself: its posthook swaps the member's own directory back,
/// so its next restart keeps its data.
#[test]
fn a_restore_stopped_at_its_deadline_is_undone_by_its_posthook() {
    let mut etcd = Etcd::start(false);
    etcd.load();
    let cairn = Cairn::new();
    let (report, _) = etcd.h.backup(&cairn, &BACKUP);
    etcd.ctl(&["put", "/newer", "data"]);
    let stop = etcd.h.workload.stop.clone().expect("a stop command");
    etcd.h.set_workload(Workload {
        stop: Some(stop.replacen("[sh, -c, '", "[sh, -c, 'sleep 60; ", 1)),
        ..etcd.h.workload.clone()
    });
    let extra = ["--param", "replace=true", "--timeout", "5s"];
    let out = etcd.restore(&cairn, &report, &extra);
    let v = assert_fails_with(&out, &[]);
    assert_eq!(phase(&v, "restorePosthook")["status"], "ok", "{v}");
    assert!(etcd.leftovers().is_empty(), "{:?}", etcd.leftovers());
    // Restarted, the member serves its own data, without the restore's marker.
    etcd.h.kill();
    wait_for(
        "the killed member to stop answering",
        30,
        || {
            etcd.try_ctl(&["get", "/"])
                .is_none_or(|o| !o.status.success())
        },
        String::new,
    );
    let started = Command::new("sh")
        .arg("./start.sh")
        .current_dir(etcd.h.root())
        .status()
        .expect("sh runs");
    assert!(started.success());
    wait_for(
        "etcd coming back",
        30,
        || {
            etcd.try_ctl(&["get", "/"])
                .is_some_and(|o| o.status.success())
        },
        || std::fs::read_to_string(etcd.h.root().join("etcd.log")).unwrap_or_default(),
    );
    let dump = etcd.dump();
    assert_eq!(
        dump.len(),
        KEYS + 1,
        "the member's own data, without the marker"
    );
    assert_eq!(dump.get("/newer").map(String::as_str), Some("data"));
}

/// A `data-dir` that does not exist, or is not the
/// member's (it holds no `member/`), failed late naming another cause ("did not restart").
/// It is refused up front, before anything is staged or moved.
#[test]
fn a_data_dir_that_is_not_the_members_is_refused_before_anything_changes() {
    let etcd = Etcd::start(false);
    etcd.ctl(&["put", "/before", "backup"]);
    let cairn = Cairn::new();
    let (report, _) = etcd.h.backup(&cairn, &BACKUP);
    etcd.ctl(&["put", "/newer", "data"]);
    let grants = "exec,import,workloads,scale";
    for (dir, why) in [
        ("nowhere", "does not exist"),
        ("tmp", "holds no `member/` directory"),
    ] {
        let wrong = etcd.h.root().join(dir);
        let param = format!("data-dir={}", wrong.display());
        let params = ["--param", &param, "--param", "replace=true"];
        let out = etcd.restore_with(&cairn, &report, grants, &params);
        let named = wrong.display().to_string();
        assert_fails_with(
            &out,
            &[
                &named,
                why,
                "is `data-dir` the member's --data-dir?",
                "nothing was changed",
            ],
        );
        assert!(etcd.leftovers().is_empty(), "{:?}", etcd.leftovers());
    }
    assert_eq!(etcd.dump().len(), 2);
}

/// A snapshot holds the users and passwords of backup
/// time. Restored with the root password changed since, the restarted member refused the new
/// one, and the restore failed as "the member does not answer", leaving `data.cairn-old` for
/// the next restore to refuse. The member runs on the restored data: the restore is done, and
/// says to use the backup-time credentials.
#[test]
fn a_restore_whose_snapshot_holds_other_credentials_is_done_and_says_so() {
    let etcd = Etcd::start(true);
    etcd.ctl(&["put", "/before", "backup"]);
    let cairn = Cairn::new();
    let password = format!("password=raw:{ROOT_PASSWORD}");
    let creds = ["--secret", "user=raw:root", "--secret", &password];
    let (report, _) = etcd.h.backup(&cairn, &[&BACKUP[..], &creds].concat());
    let mut passwd = etcd.etcdctl();
    passwd.args(["user", "passwd", "root", "--interactive=false"]);
    let out = piped(passwd, b"n3w-pw\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let new = [
        "--secret",
        "user=raw:root",
        "--secret",
        "password=raw:n3w-pw",
        "--param",
        "replace=true",
    ];
    let out = etcd.restore(&cairn, &report, &new);
    assert!(out.status.success(), "restore failed: {}", stderr(&out));
    let v = crate::support::json(&out);
    assert_eq!(value(&v["outputs"], "credentials"), "backup-time", "{v}");
    assert!(
        stderr(&out).contains("holds its own users, roles and passwords, those at backup time"),
        "{}",
        stderr(&out)
    );
    assert!(etcd.leftovers().is_empty(), "{:?}", etcd.leftovers());
    // The backup-time password is the root's again.
    assert_eq!(
        etcd.dump().get("/before").map(String::as_str),
        Some("backup")
    );
}

/// Without `initial-advertise-peer-urls` a restore gave the
/// member etcd's default peer URL, http://localhost:2380, whatever it had. It keeps the ones
/// the member advertises; a member name the cluster does not have is refused up front.
#[test]
fn a_restore_keeps_the_members_peer_urls() {
    let etcd = Etcd::start(false);
    etcd.ctl(&["put", "/before", "backup"]);
    let cairn = Cairn::new();
    let (report, _) = etcd.h.backup(&cairn, &BACKUP);
    etcd.ctl(&["put", "/newer", "data"]);
    let data_dir = format!("data-dir={}", etcd.data_dir().display());
    let grants = "exec,import,workloads,scale";
    let params = ["--param", &data_dir, "--param", "replace=true"];

    let unknown = [&params[..], &["--param", "name=other"]].concat();
    let out = etcd.restore_with(&cairn, &report, grants, &unknown);
    assert_fails_with(
        &out,
        &[
            "no member named \"other\"",
            "default",
            "--param name=",
            "nothing was changed",
        ],
    );
    assert!(etcd.leftovers().is_empty(), "{:?}", etcd.leftovers());
    assert_eq!(etcd.dump().len(), 2);

    let out = etcd.restore_with(&cairn, &report, grants, &params);
    assert!(out.status.success(), "restore failed: {}", stderr(&out));
    let members = etcd.ctl(&["member", "list"]);
    assert!(
        members.contains(&format!("http://127.0.0.1:{}", etcd.peer))
            && !members.contains("localhost:2380"),
        "{members}"
    );
    assert_eq!(etcd.dump().len(), 1);
}

#[test]
fn wrong_or_missing_credentials_are_clear_errors() {
    Etcd::start(true).h.credentials_are_checked(
        &[
            "--secret",
            "user=raw:root",
            "--secret",
            "password=raw:wrong",
        ],
        &["refused the credentials", "authentication failed"],
        &["requires authentication", "--secret"],
    );
}

#[test]
fn a_server_that_is_down_is_a_clear_error() {
    let etcd = Etcd::start(false);
    etcd.h.kill();
    let out = etcd.h.run(&Cairn::new(), "backup", &BACKUP);
    assert_fails_with(&out, &["cannot reach etcd", &etcd.client.to_string()]);
    assert!(etcd.tmp_files().is_empty(), "{:?}", etcd.tmp_files());
}

#[test]
fn etcdctl_missing_from_the_workload_is_a_clear_error() {
    let etcd = Etcd::start(false);
    etcd.h
        .a_missing_tool_is_named("etcdctl", &["sh", "cat", "rm"]);
}

#[test]
fn a_timeout_in_the_middle_of_the_export_records_nothing_and_cleans_up() {
    let etcd = Etcd::start(false);
    etcd.load();
    // A `cat` that stalls before streaming: the deadline hits in the middle of the export.
    let real: Vec<(&str, PathBuf)> = ["sh", "rm", "etcdctl"]
        .into_iter()
        .map(|t| (t, which(t)))
        .collect();
    let real: Vec<(&str, &Path)> = real.iter().map(|(t, p)| (*t, p.as_path())).collect();
    let bin = etcd.h.tools("bin", &real);
    script(
        &bin.join("cat"),
        "#!/bin/sh\n/bin/sleep 30\nexec /bin/cat \"$@\"\n",
    );
    etcd.h.write_inventory(&etcd.h.workload.with_path(&bin));

    let cairn = Cairn::new();
    let out = etcd.h.run(
        &cairn,
        "backup",
        &[&BACKUP[..], &["--timeout", "3s"]].concat(),
    );
    // The posthook ran and removed the temporary snapshot.
    assert_timed_out(&out, true);
    assert!(etcd.tmp_files().is_empty(), "{:?}", etcd.tmp_files());
    assert_repository_empty(&cairn);
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
    let (report, _) = etcd.h.backup(&cairn, &BACKUP);
    etcd.h.delete(&cairn, &report);

    etcd.ctl(&["del", "", "--from-key"]);
    let out = etcd.restore(&cairn, &report, &[]);
    assert_export_gone(&out, "snapshot");
    // The member still runs, untouched.
    assert!(etcd.dump().is_empty());
    assert!(etcd.data_dir().join("member").is_dir());
}
