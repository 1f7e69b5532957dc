//! `blueprints/redis` through the real `cairn` binary against a real `redis-server` on
//! loopback: backup, destroy, restore and compare every key; and the faults a user can cause.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{error_of, free_port};
use crate::support::{Cairn, json, stderr, wasm};

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

/// Fails (never skips) when the server's programs are missing.
fn require_redis() {
    for program in ["redis-server", "redis-cli"] {
        let found = Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{program} is not installed: install the Debian packages redis-server and \
             redis-tools (apt-get install redis-server redis-tools) to run the Redis blueprint tests"
        );
    }
}

/// A `redis-server` in its own tempdir, daemonized, killed on drop. The tempdir holds the
/// config, the data dir and the inventory of a local target whose workload `redis` is it.
struct Redis {
    dir: tempfile::TempDir,
    port: u16,
    password: Option<&'static str>,
}

impl Redis {
    fn start(password: Option<&'static str>) -> Self {
        require_redis();
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let root = dir.path();
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
        std::fs::write(root.join("redis.conf"), conf).expect("redis.conf");
        let redis = Self {
            dir,
            port,
            password,
        };
        redis.launch();
        redis.write_inventory(&["redis-cli", "cat", "sh"], None);
        redis
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn launch(&self) {
        let status = Command::new("redis-server")
            .arg(self.root().join("redis.conf"))
            .status()
            .expect("redis-server runs");
        assert!(status.success(), "redis-server failed to start");
        self.wait_up();
    }

    fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.try_cli(&["PING"]).is_none_or(|o| o.trim() != "PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not come up: {}",
                self.port,
                std::fs::read_to_string(self.root().join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes `inventory.yaml`: the workload `redis` runs commands in the tempdir, starts the
    /// server from its config and stops it with SIGTERM (which saves when save points are set,
    /// as in production).
    fn write_inventory(&self, allow: &[&str], path_env: Option<&Path>) {
        let mut env = String::new();
        if let Some(p) = path_env {
            env = format!("        env: {{PATH: \"{}\"}}\n", p.display());
        }
        let inventory = format!(
            "namespaces:\n  default:\n    workloads:\n      redis:\n        kind: statefulset\n\
             \x20       workdir: .\n{env}        allow: [{allow}]\n\
             \x20       start: [redis-server, ./redis.conf]\n\
             \x20       stop: [sh, -c, 'pid=$(cat redis.pid) && kill \"$pid\" && while [ -e /proc/$pid ] && ! grep -q \"^State:.*Z\" /proc/$pid/status; do sleep 0.05; done']\n\
             \x20       ready: [sh, -c, 'redis-cli -p {port} ping | grep -qE \"PONG|NOAUTH\"']\n",
            allow = allow.join(", "),
            port = self.port,
        );
        std::fs::write(self.root().join("inventory.yaml"), inventory).expect("inventory");
    }

    fn target(&self) -> String {
        format!("local:{}", self.root().join("inventory.yaml").display())
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let mut command = Command::new("redis-cli");
        command
            .args(["--no-auth-warning", "-p", &self.port.to_string()])
            .args(args);
        if let Some(p) = self.password {
            command.env("REDISCLI_AUTH", p);
        }
        let out = command.output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
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
        let mut command = Command::new("redis-cli");
        command
            .args(["--no-auth-warning", "-p", &self.port.to_string(), "--pipe"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(p) = self.password {
            command.env("REDISCLI_AUTH", p);
        }
        let mut child = command.spawn().expect("redis-cli --pipe");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&resp)
            .expect("pipe commands");
        let out = child.wait_with_output().expect("redis-cli --pipe");
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

    fn kill(&self) {
        if let Ok(pid) = std::fs::read_to_string(self.root().join("redis.pid")) {
            let _ = Command::new("kill")
                .args(["-9", pid.trim()])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// `cairn run redis.wasm --action ACTION` on this server, with `extra` arguments.
    fn cairn(&self, cairn: &Cairn, action: &str, extra: &[&str]) -> Output {
        let wasm = wasm("redis");
        let target = self.target();
        let port = format!("port={}", self.port);
        let mut args = vec![
            "run",
            wasm.to_str().expect("utf-8 path"),
            "--action",
            action,
            "--target",
            &target,
            "--workload",
            "redis",
            "--param",
            &port,
        ];
        args.extend_from_slice(extra);
        cairn.run(&args)
    }

    /// A backup that must succeed; its JSON report is saved as `report.json` in the tempdir.
    fn backup(&self, cairn: &Cairn, extra: &[&str]) -> PathBuf {
        let mut args = vec!["--grant", "exec,export,secrets", "--output", "json"];
        args.extend_from_slice(extra);
        let out = self.cairn(cairn, "backup", &args);
        assert!(out.status.success(), "backup failed: {}", stderr(&out));
        let report = self.root().join("report.json");
        std::fs::write(&report, &out.stdout).expect("save the report");
        report
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

const RESTORE_GRANTS: &str = "exec,import,workloads,scale,secrets";

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
    let report = redis.backup(&cairn, &["--secret", &secret]);
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("json");
    let rdb = &v["outputs"]["artifacts"][0];
    assert_eq!(rdb["name"], "rdb", "{v}");

    // Destroy: flush everything and write something else, which the restore must replace.
    redis.cli(&["FLUSHALL"]);
    redis.cli(&["SET", "intruder", "1"]);
    assert_ne!(redis.dump(), before);

    let report_path = report.to_str().expect("utf-8");
    let out = redis.cairn(
        &cairn,
        "restore",
        &[
            "--from",
            report_path,
            "--grant",
            RESTORE_GRANTS,
            "--secret",
            &secret,
            "--param",
            "replace=true",
            "--output",
            "json",
        ],
    );
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
    let report = redis.backup(&cairn, &[]);
    redis.cli(&["SET", "newer", "data"]);
    let out = redis.cairn(
        &cairn,
        "restore",
        &[
            "--from",
            report.to_str().expect("utf-8"),
            "--grant",
            RESTORE_GRANTS,
            "--output",
            "json",
        ],
    );
    let error = error_of(&out);
    assert!(
        error.contains("already holds") && error.contains("replace=true"),
        "{error}"
    );
    // Nothing was touched.
    assert_eq!(redis.key_count(), TOTAL_KEYS + 1);
    assert_eq!(redis.cli(&["GET", "newer"]).trim(), "data");
}

#[test]
fn a_wrong_password_is_a_clear_error() {
    let redis = Redis::start(Some(PASSWORD));
    let cairn = Cairn::new();
    let out = redis.cairn(
        &cairn,
        "backup",
        &[
            "--grant",
            "exec,export,secrets",
            "--secret",
            "password=raw:not-the-password",
            "--output",
            "json",
        ],
    );
    let error = error_of(&out);
    assert!(
        error.contains("refused the password") && error.contains("WRONGPASS"),
        "{error}"
    );

    // No password at all: the error says how to give one.
    let out = redis.cairn(
        &cairn,
        "backup",
        &["--grant", "exec,export", "--output", "json"],
    );
    let error = error_of(&out);
    assert!(
        error.contains("requires a password") && error.contains("--secret password="),
        "{error}"
    );
}

#[test]
fn a_server_that_is_down_is_a_clear_error() {
    let redis = Redis::start(None);
    redis.kill();
    let cairn = Cairn::new();
    let out = redis.cairn(
        &cairn,
        "backup",
        &["--grant", "exec,export", "--output", "json"],
    );
    let error = error_of(&out);
    assert!(
        error.contains("cannot connect to Redis")
            && error.contains(&format!("127.0.0.1:{}", redis.port)),
        "{error}"
    );
}

#[test]
fn redis_cli_missing_from_the_workload_is_a_clear_error() {
    let redis = Redis::start(None);
    let cairn = Cairn::new();

    // Not in the allow list.
    redis.write_inventory(&["cat", "sh"], None);
    let out = redis.cairn(
        &cairn,
        "backup",
        &["--grant", "exec,export", "--output", "json"],
    );
    let error = error_of(&out);
    assert!(
        error.contains("denied") && error.contains("redis-cli") && error.contains("allow"),
        "{error}"
    );

    // Allowed but not installed: a PATH without it.
    let bin = redis.root().join("bin");
    std::fs::create_dir(&bin).expect("bin");
    for tool in ["sh", "cat"] {
        std::os::unix::fs::symlink(Path::new("/bin").join(tool), bin.join(tool)).expect("link");
    }
    redis.write_inventory(&["redis-cli", "cat", "sh"], Some(&bin));
    let out = redis.cairn(
        &cairn,
        "backup",
        &["--grant", "exec,export", "--output", "json"],
    );
    let error = error_of(&out);
    assert!(
        error.contains("redis-cli") && error.contains("not on PATH"),
        "{error}"
    );
}

#[test]
fn a_timeout_in_the_middle_of_the_save_records_no_restore_point() {
    let redis = Redis::start(None);
    redis.load();
    // Make BGSAVE take about 3000 keys × 2 ms = 6 s.
    redis.cli(&["CONFIG", "SET", "rdb-key-save-delay", "2000"]);
    let cairn = Cairn::new();
    let out = redis.cairn(
        &cairn,
        "backup",
        &[
            "--grant",
            "exec,export",
            "--timeout",
            "1s",
            "--output",
            "json",
        ],
    );
    let error = error_of(&out);
    assert!(error.contains("deadline"), "{error}");
    let v = json(&out);
    assert_eq!(v["status"], "failed");
    assert!(
        v["outputs"]["artifacts"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "a timed-out backup must not record a restore point: {v}"
    );
}

#[test]
fn delete_removes_the_export_and_a_later_restore_fails_clearly() {
    let redis = Redis::start(None);
    redis.load();
    let cairn = Cairn::new();
    let report = redis.backup(&cairn, &[]);
    let from = report.to_str().expect("utf-8");

    let out = redis.cairn(&cairn, "delete", &["--from", from, "--grant", "export"]);
    assert!(out.status.success(), "delete failed: {}", stderr(&out));

    redis.cli(&["FLUSHALL"]);
    let out = redis.cairn(
        &cairn,
        "restore",
        &[
            "--from",
            from,
            "--grant",
            RESTORE_GRANTS,
            "--output",
            "json",
        ],
    );
    let error = error_of(&out);
    assert!(
        error.contains("export `rdb`") && error.contains("not found"),
        "{error}"
    );
    // The failed restore left the server running and untouched.
    assert_eq!(redis.key_count(), 0);
    assert_eq!(redis.cli(&["PING"]).trim(), "PONG");
}
