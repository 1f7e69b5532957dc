//! `blueprints/redis` through the real `cairn` binary against a real `redis-server` on
//! loopback: backup, destroy, restore and compare every key; and the faults a user can cause.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output};

use super::{
    Harness, Workload, assert_export_gone, assert_fails_with, assert_repository_empty,
    assert_timed_out, phase,
};
use super::{answer, free_port, piped, require, snapshots, wait_for};
use crate::support::{Cairn, stderr, stdout};

const PASSWORD: &str = "s3cret-pw";

/// Keys the test loads into db 0 (of five types) and db 1.
const STRINGS: usize = 1000;
const HASHES: usize = 400;
const LISTS: usize = 400;
const SETS: usize = 400;
const ZSETS: usize = 400;
const DB1_STRINGS: usize = 300;
const TOTAL_KEYS: usize = STRINGS + HASHES + LISTS + SETS + ZSETS + DB1_STRINGS;

/// Every key of a database as `key|type|value`, sorted, in one string (values of hashes and
/// sets sorted too), so two datasets compare with `==`.
const DUMP_SCRIPT: &str = r"
local out = {}
local keys = redis.call('KEYS', '*')
table.sort(keys)
for _, k in ipairs(keys) do
  local t = redis.call('TYPE', k)['ok']
  local v = ''
  if t == 'string' then v = redis.call('GET', k)
  elseif t == 'hash' then
    local h = redis.call('HGETALL', k)
    local pairs = {}
    for i = 1, #h, 2 do table.insert(pairs, h[i] .. '=' .. h[i + 1]) end
    table.sort(pairs)
    v = table.concat(pairs, ',')
  elseif t == 'list' then v = table.concat(redis.call('LRANGE', k, 0, -1), ',')
  elseif t == 'set' then
    local s = redis.call('SMEMBERS', k)
    table.sort(s)
    v = table.concat(s, ',')
  elseif t == 'zset' then v = table.concat(redis.call('ZRANGE', k, 0, -1, 'WITHSCORES'), ',')
  end
  table.insert(out, k .. '|' .. t .. '|' .. v)
end
return table.concat(out, '\n')
";

/// A `redis-server` in its own tempdir, daemonized, killed on drop: the workload `redis` of
/// its harness, started from its config and stopped with SIGTERM (which saves when save points
/// are set, as in production).
struct Redis {
    h: Harness,
    port: u16,
    password: Option<&'static str>,
}

impl Redis {
    fn start(password: Option<&'static str>) -> Self {
        Self::start_configured(password, "")
    }

    /// [`Redis::start`] with `extra` lines in its `redis.conf`.
    fn start_configured(password: Option<&'static str>, extra: &str) -> Self {
        require(
            "Redis",
            "redis-server redis-tools",
            ["redis-server", "redis-cli"],
        );
        let mut h = Harness::new("redis", "redis");
        let port = free_port();
        let root = h.root();
        std::fs::create_dir(root.join("data")).expect("data dir");
        let mut conf = format!(
            "port {port}\nbind 127.0.0.1\ndir {data}\ndbfilename dump.rdb\ndaemonize yes\n\
             pidfile {root}/redis.pid\nlogfile {root}/redis.log\nsave 3600 1\nappendonly no\n",
            data = root.join("data").display(),
            root = root.display(),
        );
        if let Some(p) = password {
            conf.push_str(&format!("requirepass {p}\n"));
        }
        conf.push_str(extra);
        std::fs::write(root.join("redis.conf"), conf).expect("redis.conf");
        h.param("port", port);
        h.workload = Workload {
            ready: Some(format!(
                "[sh, -c, 'redis-cli -p {port} ping | grep -qE \"PONG|NOAUTH\"']"
            )),
            ..Workload::allowing(&["redis-cli", "cat", "sh"])
        };
        h.serve(&["redis-server", "./redis.conf"], "redis.pid");
        let redis = Self { h, port, password };
        redis.wait_up();
        redis
    }

    fn wait_up(&self) {
        wait_for(
            "redis-server coming up",
            20,
            || self.try_cli(&["PING"]).is_some_and(|o| o.trim() == "PONG"),
            || std::fs::read_to_string(self.h.root().join("redis.log")).unwrap_or_default(),
        );
    }

    /// Kills the server and starts it again with the workload's start command, on its
    /// `redis.conf` as `edit` changes it.
    fn restart_with(&self, edit: impl FnOnce(String) -> String) {
        self.h.kill();
        wait_for(
            "the killed redis-server to stop answering",
            20,
            || self.try_cli(&["PING"]).is_none(),
            String::new,
        );
        let conf = self.h.root().join("redis.conf");
        let text = std::fs::read_to_string(&conf).expect("redis.conf");
        std::fs::write(&conf, edit(text)).expect("redis.conf");
        answer(
            "starting redis-server",
            Command::new("redis-server")
                .arg("./redis.conf")
                .current_dir(self.h.root()),
        );
        self.wait_up();
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let out = self.redis_cli(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn redis_cli(&self, args: &[&str]) -> Command {
        let mut command = Command::new("redis-cli");
        command
            .args(["--no-auth-warning", "-p", &self.port.to_string()])
            .args(args);
        if let Some(p) = self.password {
            command.env("REDISCLI_AUTH", p);
        }
        command
    }

    fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
    }

    /// Loads strings, hashes, lists, sets and sorted sets into db 0, and strings into db 1.
    fn load(&self) {
        let mut commands: Vec<Vec<String>> = Vec::new();
        for i in 0..STRINGS {
            commands.push(vec![
                "SET".into(),
                format!("str:{i}"),
                format!("value {i} ünïcode \u{1F980} {}", "x".repeat(i % 50)),
            ]);
        }
        for i in 0..HASHES {
            let mut c = vec!["HSET".to_owned(), format!("hash:{i}")];
            for f in 0..5 {
                c.push(format!("field{f}"));
                c.push(format!("{}", i * 10 + f));
            }
            commands.push(c);
        }
        for i in 0..LISTS {
            let mut c = vec!["RPUSH".to_owned(), format!("list:{i}")];
            c.extend((0..5).map(|e| format!("item{}", (i + e) % 7)));
            commands.push(c);
        }
        for i in 0..SETS {
            let mut c = vec!["SADD".to_owned(), format!("set:{i}")];
            c.extend((0..4).map(|e| format!("m{}", i * 4 + e)));
            commands.push(c);
        }
        for i in 0..ZSETS {
            let mut c = vec!["ZADD".to_owned(), format!("zset:{i}")];
            for e in 0..3 {
                c.push(format!("{}.5", i + e));
                c.push(format!("z{e}"));
            }
            commands.push(c);
        }
        commands.push(vec!["SELECT".into(), "1".into()]);
        for i in 0..DB1_STRINGS {
            commands.push(vec!["SET".into(), format!("db1:{i}"), format!("{}", i * i)]);
        }
        let mut resp = Vec::new();
        for c in &commands {
            write!(resp, "*{}\r\n", c.len()).expect("write");
            for a in c {
                write!(resp, "${}\r\n{a}\r\n", a.len()).expect("write");
            }
        }
        let out = piped(self.redis_cli(&["--pipe"]), &resp);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("errors: 0"),
            "loading failed: {text}"
        );
        assert_eq!(self.key_count(), TOTAL_KEYS);
    }

    fn key_count(&self) -> usize {
        ["0", "1"]
            .iter()
            .map(|db| {
                self.cli(&["-n", db, "DBSIZE"])
                    .trim()
                    .parse::<usize>()
                    .expect("DBSIZE is a number")
            })
            .sum()
    }

    /// Every key and value of db 0 and db 1.
    fn dump(&self) -> String {
        ["0", "1"]
            .iter()
            .map(|db| self.cli(&["-n", db, "EVAL", DUMP_SCRIPT, "0"]))
            .collect::<Vec<_>>()
            .join("\n--\n")
    }

    /// A restore from `report` with `extra` arguments.
    fn restore(&self, cairn: &Cairn, report: &Path, extra: &[&str]) -> Output {
        self.restore_granted(cairn, report, "exec,import,workloads,scale,secrets", extra)
    }

    /// [`Redis::restore`] with only `grants`.
    fn restore_granted(
        &self,
        cairn: &Cairn,
        report: &Path,
        grants: &str,
        extra: &[&str],
    ) -> Output {
        let from = report.to_str().expect("utf-8 path");
        let args = [&["--from", from, "--grant", grants][..], extra].concat();
        self.h.run(cairn, "restore", &args)
    }
}

const BACKUP: [&str; 2] = ["--grant", "exec,export,secrets"];

fn secret() -> String {
    format!("password=raw:{PASSWORD}")
}

#[test]
fn backup_destroy_restore_and_compare_every_key() {
    let redis = Redis::start(Some(PASSWORD));
    redis.load();
    let before = redis.dump();
    assert_eq!(before.matches('|').count(), TOTAL_KEYS * 2);

    let cairn = Cairn::new();
    let secret = secret();
    let (report, v) = redis
        .h
        .backup(&cairn, &[&BACKUP[..], &["--secret", &secret]].concat());
    assert_eq!(v["outputs"]["artifacts"][0]["name"], "rdb", "{v}");

    // Destroy: flush everything and write something else, which the restore must replace.
    redis.cli(&["FLUSHALL"]);
    redis.cli(&["SET", "intruder", "1"]);
    assert_ne!(redis.dump(), before);

    let extra = ["--secret", &secret, "--param", "replace=true"];
    let out = redis.restore(&cairn, &report, &extra);
    assert!(out.status.success(), "restore failed: {}", stderr(&out));
    assert_eq!(redis.key_count(), TOTAL_KEYS);
    assert_eq!(redis.dump(), before, "the restored dataset differs");
    // The server's own config is back: the restore's `save ""` did not outlive the restart.
    assert!(redis.cli(&["CONFIG", "GET", "save"]).contains("3600 1"));
}

#[test]
fn restore_over_existing_data_is_refused_without_replace() {
    let redis = Redis::start(None);
    redis.load();
    let cairn = Cairn::new();
    let (report, _) = redis.h.backup(&cairn, &BACKUP);
    redis.cli(&["SET", "newer", "data"]);
    let out = redis.restore(&cairn, &report, &[]);
    assert_fails_with(&out, &["already holds", "replace=true"]);
    // Nothing was touched.
    assert_eq!(redis.key_count(), TOTAL_KEYS + 1);
    assert_eq!(redis.cli(&["GET", "newer"]).trim(), "data");
}

/// A restore that could not restart the server (its `scale` grant left out) is refused before
/// it changes anything: the server's own RDB stays, and so do its save points.
#[test]
fn a_restore_that_cannot_restart_the_server_changes_nothing() {
    let redis = Redis::start(None);
    redis.load();
    let cairn = Cairn::new();
    let (report, _) = redis.h.backup(&cairn, &BACKUP);
    redis.cli(&["SET", "newer", "data"]);
    redis.cli(&["SAVE"]);
    let rdb = redis.h.root().join("data/dump.rdb");
    let saved = std::fs::read(&rdb).expect("the server's RDB");
    let grants = "exec,import,workloads";
    let out = redis.restore_granted(&cairn, &report, grants, &["--param", "replace=true"]);
    assert_fails_with(&out, &["scale"]);
    assert_eq!(std::fs::read(&rdb).expect("the server's RDB"), saved);
    assert!(redis.cli(&["CONFIG", "GET", "save"]).contains("3600 1"));
    assert_eq!(redis.cli(&["GET", "newer"]).trim(), "data");
}

/// A restore stopped at its deadline while the server is being stopped for the restart (its
/// stop command hangs) cannot undo itself: its posthook does, so the server's own RDB is back
/// and its save points on, and its next restart keeps its data.
#[test]
fn a_restore_stopped_at_its_deadline_is_undone_by_its_posthook() {
    let mut redis = Redis::start(None);
    redis.load();
    let cairn = Cairn::new();
    let (report, _) = redis.h.backup(&cairn, &BACKUP);
    redis.cli(&["SET", "newer", "data"]);
    let rdb = redis.h.root().join("data/dump.rdb");
    let stop = redis.h.workload.stop.clone().expect("a stop command");
    redis.h.set_workload(Workload {
        stop: Some(stop.replacen("[sh, -c, '", "[sh, -c, 'sleep 60; ", 1)),
        ..redis.h.workload.clone()
    });
    let extra = ["--param", "replace=true", "--timeout", "3s"];
    let out = redis.restore(&cairn, &report, &extra);
    let v = assert_fails_with(&out, &[]);
    assert_eq!(phase(&v, "restorePosthook")["status"], "ok", "{v}");
    assert!(redis.cli(&["CONFIG", "GET", "save"]).contains("3600 1"));
    // The server's own RDB (the restore saved it afresh first), not the backup's.
    let now = std::fs::read(&rdb).expect("the server's RDB");
    assert!(
        now.windows(5).any(|w| w == b"newer"),
        "not the server's own RDB"
    );
    assert!(!redis.h.root().join("data/dump.rdb.cairn-old").exists());
    assert!(!redis.h.root().join("data/dump.rdb.cairn-restore").exists());
    assert_eq!(redis.cli(&["GET", "newer"]).trim(), "data");

    // An RDB left aside by an earlier restore may be the only copy of what the server held
    // then: a restore refuses to start rather than take it for its own.
    let aside = redis.h.root().join("data/dump.rdb.cairn-old");
    std::fs::write(&aside, b"REDIS0011 not really").expect("write");
    let out = redis.restore(&cairn, &report, &["--param", "replace=true"]);
    assert_fails_with(&out, &["is left from an earlier restore"]);
    assert_eq!(
        std::fs::read(&aside).expect("kept"),
        b"REDIS0011 not really"
    );
}

/// An RDB the server cannot load (written by a server with
/// `databases 32` holding a key in db 20, restored onto one with the default 16) left Redis
/// down, its own RDB aside. The server never ran on the restored file, so the restore puts its
/// own back under the workload scaled to 0 and starts it again: it fails saying why, from the
/// server's log, and Redis serves what it held.
#[test]
fn a_restore_whose_rdb_the_server_cannot_load_puts_its_own_back() {
    let redis = Redis::start_configured(None, "databases 32\n");
    redis.cli(&["-n", "20", "SET", "deep", "in db 20"]);
    let cairn = Cairn::new();
    let (report, _) = redis.h.backup(&cairn, &BACKUP);

    // The same workload, restarted with 16 databases on a dataset of its own.
    redis.cli(&["FLUSHALL"]);
    redis.cli(&["SET", "mine", "kept"]);
    redis.cli(&["SAVE"]);
    redis.restart_with(|conf| conf.replace("databases 32\n", ""));
    assert_eq!(
        redis.cli(&["CONFIG", "GET", "databases"]).trim(),
        "databases\n16"
    );

    let extra = ["--param", "replace=true", "--param", "ready-timeout=5"];
    let out = redis.restore(&cairn, &report, &extra);
    assert_fails_with(
        &out,
        &[
            "did not come back on the restored RDB",
            "more than 16 databases",
            "restore undone",
            "with the data it had",
        ],
    );
    assert_eq!(redis.cli(&["GET", "mine"]).trim(), "kept");
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), "1");
    assert!(redis.cli(&["CONFIG", "GET", "save"]).contains("3600 1"));
    for left in ["dump.rdb.cairn-old", "dump.rdb.cairn-restore"] {
        assert!(!redis.h.root().join("data").join(left).exists(), "{left}");
    }
    // The workload is up as far as Cairn knows too: the next restore runs (and is refused
    // for the data the server holds, not for a file left aside).
    let out = redis.restore(&cairn, &report, &[]);
    assert_fails_with(&out, &["already holds 1 keys", "replace=true"]);
}

/// A point whose repository is gone (the home's, deleted; a lost instance's, after DR) is
/// refused saying so, not by creating an empty repository to look in.
#[test]
fn a_point_whose_repository_is_gone_says_so() {
    let redis = Redis::start(None);
    redis.load();
    let cairn = Cairn::new();
    let (_, v) = redis.h.backup(&cairn, &BACKUP);
    let id = v["action_id"].as_str().expect("an action id");
    std::fs::remove_dir_all(cairn.home.path().join("repository")).expect("remove");
    let grants = "exec,import,workloads,scale,secrets";
    let out = redis
        .h
        .run(&cairn, "restore", &["--from-point", id, "--grant", grants]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("which does not exist")
            && stderr(&out).contains(&format!("cairn catalog forget-point {id}")),
        "{}",
        stderr(&out)
    );
    assert!(!cairn.home.path().join("repository").exists());
}

#[test]
fn a_wrong_password_is_a_clear_error() {
    Redis::start(Some(PASSWORD)).h.credentials_are_checked(
        &["--secret", "password=raw:not-the-password"],
        &["refused the password", "WRONGPASS"],
        // No password at all: the error says how to give one.
        &["requires a password", "--secret password="],
    );
}

#[test]
fn a_server_that_is_down_is_a_clear_error() {
    let redis = Redis::start(None);
    redis.h.kill();
    let out = redis.h.run(&Cairn::new(), "backup", &BACKUP);
    let at = format!("127.0.0.1:{}", redis.port);
    assert_fails_with(&out, &["cannot connect to Redis", &at]);
}

#[test]
fn redis_cli_missing_from_the_workload_is_a_clear_error() {
    let redis = Redis::start(None);
    redis.h.a_missing_tool_is_named("redis-cli", &["sh", "cat"]);
}

#[test]
fn a_timeout_in_the_middle_of_the_save_records_no_restore_point() {
    let redis = Redis::start(None);
    redis.load();
    // Make BGSAVE take about 3000 keys × 2 ms = 6 s.
    redis.cli(&["CONFIG", "SET", "rdb-key-save-delay", "2000"]);
    let cairn = Cairn::new();
    let out = redis.h.run(
        &cairn,
        "backup",
        &[&BACKUP[..], &["--timeout", "1s"]].concat(),
    );
    let v = assert_timed_out(&out, false);
    assert!(v["error"].to_string().contains("deadline"), "{v}");
    assert_repository_empty(&cairn);
}

#[test]
fn delete_removes_the_export_and_a_later_restore_fails_clearly() {
    let redis = Redis::start(None);
    redis.load();
    let cairn = Cairn::new();
    let (report, _) = redis.h.backup(&cairn, &BACKUP);
    redis.h.delete(&cairn, &report);

    redis.cli(&["FLUSHALL"]);
    let out = redis.restore(&cairn, &report, &[]);
    assert_export_gone(&out, "rdb");
    // The failed restore left the server running and untouched.
    assert_eq!(redis.key_count(), 0);
    assert_eq!(redis.cli(&["PING"]).trim(), "PONG");
}

/// `cairn policy restore cache` of its newest point of `redis`, with the grants it needs.
const RESTORE_CACHE: [&str; 7] = [
    "policy",
    "restore",
    "cache",
    "--workload",
    "redis",
    "--grant",
    "import,workloads,scale",
];

/// Runs [`RESTORE_CACHE`], which must succeed.
fn restore_cache(cairn: &Cairn) {
    let out = cairn.run(&RESTORE_CACHE);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_policy_keeps_its_newest_exports_and_forgets_the_rest() {
    let redis = Redis::start(None);
    redis.load();
    let cairn = Cairn::new();
    let wasm = crate::support::wasm("redis");
    let out = cairn.run(&["blueprint", "add", wasm.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let policy = redis.h.root().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "name: cache\nblueprint: redis\ntarget: local:inventory.yaml\nworkloads: [redis]\n\
             frequency: '@daily'\nretention: {{last: 2}}\ngrants: [exec, export]\n\
             params: {{port: {}}}\n",
            redis.port
        ),
    )
    .expect("write the policy");
    let out = cairn.run(&["policy", "apply", policy.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", stderr(&out));

    let mut points = Vec::new();
    for i in 0..3 {
        redis.cli(&["SET", "generation", &i.to_string()]);
        let out = cairn.run(&["policy", "run", "cache", "--output", "json"]);
        assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
        let outcome = crate::support::json(&out);
        points.push(outcome["points"][0].as_str().expect("a point").to_owned());
        if i == 2 {
            assert_eq!(
                outcome["retention"]["removed"][0],
                points[0].as_str(),
                "{outcome}"
            );
            // The first removal is followed by a prune of the repository.
            assert_eq!(outcome["retention"]["prune"]["status"], "done", "{outcome}");
        } else {
            assert!(outcome["retention"]["prune"].is_null(), "{outcome}");
        }
    }
    // The first point's export was deleted (by the blueprint's delete action) and its record
    // removed; the other two points keep theirs.
    assert_eq!(snapshots(&cairn, &["export"]).len(), 2);
    let kept = super::exported_points(&cairn);
    assert_eq!(kept.len(), 2);
    assert!(
        kept.contains(&points[1]) && kept.contains(&points[2]),
        "{kept:?}"
    );

    // The removal is in the audit log, after the delete action's own records, and the log's
    // hash chain holds.
    let records = cairn_engine::AuditLog::verify(cairn.home.path().join("audit.jsonl"))
        .expect("an intact audit chain");
    let removal = records
        .iter()
        .position(|r| r.operation == "retention.remove-point")
        .expect("a retention record");
    assert_eq!(records[removal].action_id, "policy:cache");
    assert!(
        records[removal].target.starts_with(&points[0]),
        "{:?}",
        records[removal]
    );
    assert_eq!(records[removal].outcome, "ok");

    // The policy restores its newest point: the dataset as the last run saw it.
    redis.cli(&["FLUSHALL"]);
    restore_cache(&cairn);
    assert_eq!(redis.cli(&["GET", "generation"]).trim(), "2");
    assert_eq!(redis.key_count(), TOTAL_KEYS + 1);

    // The next removal's prune waits for the policy's prune frequency (a day).
    let out = cairn.run(&["policy", "run", "cache"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("prune postponed: the repository was pruned at"),
        "{}",
        stdout(&out)
    );
}

/// Points the repository's protection period keeps are kept by retention without failing the
/// run: they go once it has passed.
#[test]
fn retention_keeps_protected_points_without_failing_the_run() {
    let redis = Redis::start(None);
    redis.load();
    let cairn = Cairn::new();
    let wasm = crate::support::wasm("redis");
    crate::support::ok(&cairn.run(&["blueprint", "add", wasm.to_str().expect("utf-8 path")]));
    let locked = redis.h.root().join("locked");
    let pass = redis.h.root().join("locked.pass");
    std::fs::write(&pass, "locked passphrase\n").expect("write the passphrase");
    crate::support::ok(&cairn.run(&[
        "profile",
        "add",
        "locked",
        "--repo",
        locked.to_str().expect("utf-8 path"),
        "--passphrase",
        &format!("file:{}", pass.display()),
    ]));
    crate::support::ok(&cairn.run(&["repo", "init", "--profile", "locked", "--protection", "1d"]));
    let policy = redis.h.root().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "name: cache\nblueprint: redis\ntarget: local:inventory.yaml\nworkloads: [redis]\n\
             frequency: '@daily'\nretention: {{last: 1}}\ngrants: [exec, export]\n\
             params: {{port: {}}}\nexport: {{profile: locked}}\n",
            redis.port
        ),
    )
    .expect("write the policy");
    crate::support::ok(&cairn.run(&["policy", "apply", policy.to_str().expect("utf-8 path")]));
    for run in 1..=3 {
        let out = cairn.run(&["policy", "run", "cache", "--output", "json"]);
        assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
        let outcome = crate::support::json(&out);
        assert_eq!(outcome["retention"]["kept"], run, "{outcome}");
        assert_eq!(
            outcome["retention"]["protected"],
            run - 1,
            "{outcome}\n{}",
            stderr(&out)
        );
        assert!(
            outcome["errors"].as_array().is_none_or(Vec::is_empty),
            "{outcome}"
        );
    }
    let out = cairn.run(&["policy", "run", "cache"]);
    assert!(
        stdout(&out).contains("kept 4 restore point(s) (3 of them only while"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_policy_exports_to_a_location_profile_by_name() {
    let redis = Redis::start(None);
    redis.load();
    let cairn = Cairn::new();
    let wasm = crate::support::wasm("redis");
    crate::support::ok(&cairn.run(&["blueprint", "add", wasm.to_str().expect("utf-8 path")]));
    let offsite = redis.h.root().join("offsite");
    let offsite = offsite.to_str().expect("utf-8 path");
    let pass = redis.h.root().join("offsite.pass");
    std::fs::write(&pass, "offsite passphrase\n").expect("write the passphrase");
    let from_file = format!("file:{}", pass.display());
    // A credential given as a value is refused: the catalog travels in DR exports.
    let out = cairn.run(&[
        "profile",
        "add",
        "offsite",
        "--repo",
        offsite,
        "--option",
        "aws_secret_access_key=hunter2",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not env:VAR or file:PATH"),
        "{}",
        stderr(&out)
    );
    crate::support::ok(&cairn.run(&[
        "profile",
        "add",
        "offsite",
        "--repo",
        offsite,
        "--passphrase",
        &from_file,
    ]));
    crate::support::ok(&cairn.run(&["repo", "init", "--profile", "offsite"]));
    let out = cairn.run(&["profile", "list"]);
    assert!(
        stdout(&out).contains(&format!("passphrase {from_file}")),
        "{}",
        stdout(&out)
    );

    // A policy naming a profile that does not exist is refused when applied.
    let policy = redis.h.root().join("policy.yaml");
    let write = |profile: &str| {
        std::fs::write(
            &policy,
            format!(
                "name: cache\nblueprint: redis\ntarget: local:inventory.yaml\nworkloads: [redis]\n\
                 frequency: '@daily'\nretention: {{last: 2}}\ngrants: [exec, export]\n\
                 params: {{port: {}}}\nexport: {{profile: {profile}}}\n",
                redis.port
            ),
        )
        .expect("write the policy");
        cairn.run(&["policy", "apply", policy.to_str().expect("utf-8 path")])
    };
    let out = write("elsewhere");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no location profile named \"elsewhere\""),
        "{}",
        stderr(&out)
    );
    crate::support::ok(&write("offsite"));
    let out = cairn.run(&["policy", "run", "cache"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let out = cairn.run(&["profile", "list"]);
    assert!(stdout(&out).contains("policies: cache"), "{}", stdout(&out));

    // The export is in the profile's repository, opened with its passphrase.
    let out = cairn.run(&[
        "repo",
        "snapshots",
        "--profile",
        "offsite",
        "--output",
        "json",
    ]);
    crate::support::ok(&out);
    assert_eq!(crate::support::json(&out).as_array().map(Vec::len), Some(1));
    // Nothing went to the home's default repository.
    assert!(!cairn.home.path().join("repository").exists());
    redis.cli(&["FLUSHALL"]);
    restore_cache(&cairn);
    assert_eq!(redis.key_count(), TOTAL_KEYS);

    // A copy goes to another profile's repository, its passphrase from the variable it names.
    let vault = redis.h.root().join("vault");
    crate::support::ok(&cairn.run(&[
        "profile",
        "add",
        "vault",
        "--repo",
        vault.to_str().expect("utf-8 path"),
        "--passphrase",
        "env:VAULT_PASSPHRASE",
    ]));
    let with_vault = |args: &[&str]| {
        cairn
            .command(args)
            .env("VAULT_PASSPHRASE", "vault passphrase")
            .output()
            .expect("cairn runs")
    };
    crate::support::ok(&with_vault(&["repo", "init", "--profile", "vault"]));
    crate::support::ok(&with_vault(&[
        "repo",
        "copy",
        "--profile",
        "offsite",
        "--to-profile",
        "vault",
    ]));
    let out = with_vault(&[
        "repo",
        "snapshots",
        "--profile",
        "vault",
        "--output",
        "json",
    ]);
    crate::support::ok(&out);
    assert_eq!(crate::support::json(&out).as_array().map(Vec::len), Some(1));

    // A profile a policy exports to is not deleted.
    let out = cairn.run(&["profile", "delete", "offsite"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("policy cache export"),
        "{}",
        stderr(&out)
    );

    // Once the policy exports elsewhere, its earlier point is still restored where it was
    // written: through the profile it was exported through or, that profile gone, a profile
    // of its repository; with neither, the message says to add one.
    crate::support::ok(&write("vault"));
    let first = super::exported_points(&cairn);
    assert_eq!(first.len(), 1, "{first:?}");
    crate::support::ok(&cairn.run(&["profile", "delete", "offsite"]));
    let out = with_vault(&RESTORE_CACHE);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(offsite) && stderr(&out).contains("cairn profile add NAME --repo"),
        "{}",
        stderr(&out)
    );
    crate::support::ok(&cairn.run(&[
        "profile",
        "add",
        "old",
        "--repo",
        offsite,
        "--passphrase",
        &from_file,
    ]));
    redis.cli(&["FLUSHALL"]);
    crate::support::ok(&with_vault(&RESTORE_CACHE));
    assert_eq!(redis.key_count(), TOTAL_KEYS);
    // And by `cairn run --from-point` without --repo.
    redis.cli(&["FLUSHALL"]);
    let out = redis.h.run(
        &cairn,
        "restore",
        &[
            "--from-point",
            &first[0],
            "--grant",
            "exec,import,workloads,scale",
        ],
    );
    crate::support::ok(&out);
    assert_eq!(redis.key_count(), TOTAL_KEYS);

    // Retention removes it there too: its export deleted and forgotten in its repository.
    for _ in 0..2 {
        let out = with_vault(&["policy", "run", "cache", "--output", "json"]);
        crate::support::ok(&out);
    }
    let kept = super::exported_points(&cairn);
    assert!(!kept.contains(&first[0]), "{kept:?}");
    let out = cairn.run(&["repo", "snapshots", "--profile", "old", "--output", "json"]);
    crate::support::ok(&out);
    assert_eq!(crate::support::json(&out).as_array().map(Vec::len), Some(0));
}
