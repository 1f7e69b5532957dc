//! `blueprints/mysql` through the real `cairn` binary against a real MariaDB on loopback: a
//! generated table set backed up, mutated, restored and compared table by table; the global
//! read lock holding writes back until the posthook; and the faults a user can cause.

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::free_port;
use crate::support::{Cairn, json, stderr, wasm};

const USER: &str = "cairn";
const PASSWORD: &str = "my-s3cret";
const SECRET: &str = "password=raw:my-s3cret";
const DB: &str = "shop";
const TABLES: [&str; 4] = ["customers", "orders", "blobs", "audit"];

/// Fails (never skips) when the server's programs are missing.
fn require_mariadb() {
    for program in [
        "mariadbd",
        "mariadb-install-db",
        "mariadb",
        "mariadb-dump",
        "mariadb-admin",
    ] {
        let found = Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{program} is not installed: install the Debian packages mariadb-server and \
             mariadb-client (apt-get install mariadb-server mariadb-client) to run the MariaDB \
             blueprint tests"
        );
    }
}

fn check(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `mariadbd` in its own tempdir, with the user `cairn` (password-authenticated over TCP,
/// all privileges) and the inventory of a local target whose workload `db` runs the MariaDB
/// client programs. Killed on drop.
struct Maria {
    dir: tempfile::TempDir,
    port: u16,
    server: Option<Child>,
}

impl Maria {
    fn start() -> Maria {
        require_mariadb();
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        // Each server's temporary tables in its own directory: bootstraps running in parallel
        // in a shared /tmp can delete one another's (`Error on delete of '/tmp/#sql-temptable…'`).
        let out = Command::new("mariadb-install-db")
            .env("TMPDIR", dir.path())
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .output()
            .expect("mariadb-install-db runs");
        check("mariadb-install-db", &out);
        let port = free_port();
        let mut maria = Maria {
            dir,
            port,
            server: None,
        };
        maria.launch();
        maria.root_sql(&format!(
            "CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; \
             GRANT ALL ON *.* TO '{USER}'@'%' WITH GRANT OPTION;"
        ));
        maria
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("mysqld.sock")
    }

    fn launch(&mut self) {
        let d = self.dir.path();
        let server = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--pid-file={}", d.join("mariadbd.pid").display()))
            .arg(format!("--log-error={}", d.join("error.log").display()))
            .arg(format!("--tmpdir={}", d.display()))
            .args([
                "--user=root",
                "--bind-address=127.0.0.1",
                "--innodb-buffer-pool-size=64M",
                "--innodb-log-file-size=48M",
                "--skip-log-bin",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd starts");
        self.server = Some(server);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ping = Command::new("mariadb-admin")
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket().display()))
                .args(["--user=root", "ping"])
                .output()
                .expect("mariadb-admin runs");
            if ping.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd did not come up within 60s: {}",
                std::fs::read_to_string(d.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SQL as root over the socket.
    fn root_sql(&self, sql: &str) -> String {
        let out = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["--user=root", "--batch", "--skip-column-names", "-e", sql])
            .output()
            .expect("mariadb runs");
        check(sql, &out);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The client as `cairn` over TCP with the password.
    fn client(&self) -> Command {
        let mut c = Command::new("mariadb");
        c.arg("--no-defaults")
            .args(["--host=127.0.0.1", &format!("--port={}", self.port)])
            .arg(format!("--user={USER}"))
            .args(["--batch", "--skip-column-names"])
            .env("MYSQL_PWD", PASSWORD);
        c
    }

    fn sql(&self, sql: &str) -> String {
        let out = self
            .client()
            .args(["-e", sql])
            .output()
            .expect("mariadb runs");
        check(sql, &out);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `shop`: four tables of generated rows (text, decimals, dates, blobs, NULLs), a view, a
    /// trigger and a stored function.
    fn load(&self) {
        self.sql(&format!(
            "CREATE DATABASE {DB}; USE {DB};
             CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(64), email VARCHAR(128), \
               joined DATE, note TEXT NULL);
             INSERT INTO customers SELECT seq, CONCAT('customer ', seq), \
               CONCAT('c', seq, '@example.com'), DATE('2020-01-01') + INTERVAL (seq % 1500) DAY, \
               IF(seq % 7 = 0, NULL, REPEAT(CHAR(65 + seq % 26), seq % 40)) FROM seq_1_to_20000;
             CREATE TABLE orders (id BIGINT PRIMARY KEY AUTO_INCREMENT, customer INT, \
               amount DECIMAL(12,2), placed DATETIME(6), KEY (customer));
             INSERT INTO orders (customer, amount, placed) SELECT 1 + seq % 20000, \
               (seq * 37 % 100000) / 100, TIMESTAMP('2024-01-01') + INTERVAL seq SECOND \
               FROM seq_1_to_60000;
             CREATE TABLE blobs (id INT PRIMARY KEY, body BLOB);
             INSERT INTO blobs SELECT seq, UNHEX(SHA2(seq, 256)) FROM seq_1_to_5000;
             CREATE TABLE audit (id INT PRIMARY KEY AUTO_INCREMENT, what VARCHAR(64));
             CREATE TRIGGER customers_audit AFTER UPDATE ON customers FOR EACH ROW \
               INSERT INTO audit (what) VALUES (CONCAT('updated ', NEW.id));
             UPDATE customers SET email = UPPER(email) WHERE id <= 50;
             CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 900;
             CREATE FUNCTION double_it (x INT) RETURNS INT DETERMINISTIC RETURN x * 2;"
        ));
    }

    /// Per table: its row count and `CHECKSUM TABLE`; plus the view, trigger and function.
    fn fingerprint(&self, db: &str) -> Vec<String> {
        let mut out: Vec<String> = TABLES
            .iter()
            .map(|t| {
                let count = self.sql(&format!("SELECT COUNT(*) FROM {db}.{t}"));
                let sum = self.sql(&format!("CHECKSUM TABLE {db}.{t} EXTENDED"));
                let sum = sum.split_whitespace().last().unwrap_or_default().to_owned();
                format!("{t} {count} {sum}")
            })
            .collect();
        out.push(self.sql(&format!("SELECT COUNT(*) FROM {db}.big_orders")));
        out.push(self.sql(&format!(
            "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = '{db}'"
        )));
        out.push(self.sql(&format!("SELECT {db}.double_it(21)")));
        out
    }

    /// Writes the inventory: workload `db` whose commands see `path` as PATH, with the data
    /// directory as volume `data` when `volume`.
    fn inventory(&self, path: &str, volume: bool) -> String {
        let inv = self.dir.path().join("inventory.yaml");
        let volumes = if volume {
            "\n        volumes: {data: ./data}"
        } else {
            ""
        };
        std::fs::write(
            &inv,
            format!(
                "namespaces:\n  default:\n    workloads:\n      db:\n        workdir: .\n        \
                 env: {{PATH: \"{path}\"}}\n        allow: [mariadb, mariadb-dump]{volumes}\n"
            ),
        )
        .expect("write inventory");
        format!("local:{}", inv.display())
    }

    fn default_inventory(&self) -> String {
        self.inventory("/usr/bin:/bin", false)
    }
}

impl Drop for Maria {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

/// The arguments of `cairn run` of the mysql blueprint against `maria`.
fn args<'a>(wasm: &'a str, port: &'a str, target: &'a str, action: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        wasm,
        "--action",
        action,
        "--target",
        target,
        "--workload",
        "db",
        "--param",
        port,
        "--param",
        "user=cairn",
        "--output",
        "json",
    ]
}

fn run(cairn: &Cairn, maria: &Maria, target: &str, action: &str, extra: &[&str]) -> Output {
    let wasm = wasm("mysql");
    let port = format!("port={}", maria.port);
    let mut a = args(wasm.to_str().expect("utf-8"), &port, target, action);
    a.extend_from_slice(extra);
    cairn.run(&a)
}

const BACKUP: [&str; 6] = [
    "--grant",
    "exec,export,secrets",
    "--secret",
    SECRET,
    "--param",
    "database=shop",
];

fn backup(cairn: &Cairn, maria: &Maria, target: &str, extra: &[&str]) -> Output {
    let mut a = BACKUP[..4].to_vec();
    if !extra.iter().any(|a| a.starts_with("database=")) {
        a.extend(["--param", "database=shop"]);
    }
    a.extend_from_slice(extra);
    run(cairn, maria, target, "backup", &a)
}

fn restore(cairn: &Cairn, maria: &Maria, target: &str, report: &Path, extra: &[&str]) -> Output {
    let from = report.to_str().expect("utf-8 path");
    let mut a = vec![
        "--grant",
        "exec,import,secrets",
        "--secret",
        SECRET,
        "--from",
        from,
    ];
    a.extend_from_slice(extra);
    run(cairn, maria, target, "restore", &a)
}

/// The run failed (exit 1) with a one-line error containing every one of `needles`.
fn assert_fails_with(out: &Output, needles: &[&str]) -> serde_json::Value {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    let v = json(out);
    assert_eq!(v["status"], "failed", "{v}");
    let error = v["error"].as_str().expect("an error");
    for n in needles {
        assert!(error.contains(n), "{error:?} lacks {n:?}");
    }
    assert!(!error.contains('\n'), "not one line: {error:?}");
    v
}

fn save(cairn: &Cairn, name: &str, out: &Output) -> PathBuf {
    let path = cairn.home.path().join(name);
    std::fs::write(&path, &out.stdout).expect("write report");
    path
}

fn phase<'a>(report: &'a serde_json::Value, action: &str) -> &'a serde_json::Value {
    report["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .find(|p| p["action"] == action)
        .unwrap_or_else(|| panic!("no phase {action} in {report}"))
}

/// Whether an INSERT as `cairn` goes through within `wait` (it waits on the global read lock
/// at most that long).
fn insert_within(maria: &Maria, wait: u32) -> bool {
    maria
        .client()
        .args([
            "-e",
            &format!("SET SESSION lock_wait_timeout = {wait}; INSERT INTO {DB}.audit (what) VALUES ('probe')"),
        ])
        .output()
        .expect("mariadb runs")
        .status
        .success()
}

#[test]
fn a_generated_table_set_round_trips() {
    let maria = Maria::start();
    maria.load();
    let before = maria.fingerprint(DB);
    let cairn = Cairn::new();
    let target = maria.default_inventory();

    let out = backup(&cairn, &maria, &target, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    let dump = &v["outputs"]["artifacts"][0];
    assert_eq!(dump["name"], "dump", "{v}");
    let text = dump.to_string();
    assert!(
        text.contains("MariaDB") && text.contains("\"database\",\"shop\""),
        "{text}"
    );
    let report = save(&cairn, "backup.json", &out);

    // Mutate: delete rows, drop a table, change values.
    maria.sql(&format!("DELETE FROM {DB}.orders WHERE id % 3 = 0"));
    maria.sql(&format!("DROP TABLE {DB}.blobs"));
    maria.sql(&format!(
        "UPDATE {DB}.customers SET name = 'changed' WHERE id < 100"
    ));

    // Refused without replace=true: the database holds tables.
    let out = restore(&cairn, &maria, &target, &report, &[]);
    assert_fails_with(&out, &["already holds", "replace=true"]);

    let out = restore(
        &cairn,
        &maria,
        &target,
        &report,
        &["--param", "replace=true"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(maria.fingerprint(DB), before);

    // Into a database that does not exist yet: it is created.
    let out = restore(
        &cairn,
        &maria,
        &target,
        &report,
        &["--param", "database=shop_copy"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(maria.fingerprint("shop_copy"), before);

    // Delete retires the restore point.
    let from = report.to_str().expect("utf-8 path");
    let out = run(
        &cairn,
        &maria,
        &target,
        "delete",
        &["--grant", "export", "--from", from],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = restore(
        &cairn,
        &maria,
        &target,
        &report,
        &["--param", "database=shop_gone"],
    );
    // The export is gone, and nothing was created on the server.
    assert_fails_with(&out, &["export \"dump\"", "not found"]);
    assert_eq!(maria.sql("SHOW DATABASES LIKE 'shop_gone'"), "");
}

#[test]
fn an_all_databases_dump_round_trips() {
    let maria = Maria::start();
    maria.load();
    let before = maria.fingerprint(DB);
    let cairn = Cairn::new();
    let target = maria.default_inventory();
    let wasm = wasm("mysql");
    let port = format!("port={}", maria.port);
    let mut a = args(wasm.to_str().expect("utf-8"), &port, &target, "backup");
    a.extend_from_slice(&["--grant", "exec,export,secrets", "--secret", SECRET]);
    let out = cairn.run(&a);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = save(&cairn, "all.json", &out);

    maria.sql(&format!("DROP DATABASE {DB}"));
    maria.sql("CREATE DATABASE other");
    let out = restore(&cairn, &maria, &target, &report, &[]);
    assert_fails_with(&out, &["already holds the databases other", "replace=true"]);
    let out = restore(
        &cairn,
        &maria,
        &target,
        &report,
        &["--param", "replace=true"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(maria.fingerprint(DB), before);
}

/// Sends a signal to a process with `kill`.
fn signal(pid: u32, sig: &str) {
    let out = Command::new("kill")
        .args([sig, &pid.to_string()])
        .output()
        .expect("kill runs");
    check("kill", &out);
}

#[test]
fn the_read_lock_holds_writes_until_the_posthook() {
    let maria = Maria::start();
    maria.load();
    let cairn = Cairn::new();
    let target = maria.inventory("/usr/bin:/bin", true);
    let wasm = wasm("mysql");
    let port = format!("port={}", maria.port);
    let mut a = args(wasm.to_str().expect("utf-8"), &port, &target, "backup");
    a.extend_from_slice(&BACKUP);
    a.extend_from_slice(&["--param", "quiesce=true", "--grant", "volumes"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(&a)
        .env("CAIRN_HOME", cairn.home.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cairn starts");
    let pid = child.id();
    let (lines_tx, lines) = mpsc::channel::<String>();
    let err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    // Stop cairn as soon as the prehook says it holds the lock: the session (a process of
    // its own) keeps holding it while cairn is stopped.
    let mut seen = Vec::new();
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the prehook never took the lock: {seen:#?}"));
        let locked = line.contains("[backupPrehook]") && line.contains("read lock held");
        seen.push(line);
        if locked {
            signal(pid, "-STOP");
            break;
        }
    }
    // Inside the window: a write waits on the lock and gives up after its lock_wait_timeout.
    let blocked_since = Instant::now();
    let wrote = insert_within(&maria, 2);
    let waited = blocked_since.elapsed();
    while let Ok(line) = lines.try_recv() {
        seen.push(line);
    }
    signal(pid, "-CONT");
    assert!(
        !seen.iter().any(|l| l.contains("[backupPosthook]")),
        "the window closed before the test could probe it: {seen:#?}"
    );
    assert!(!wrote, "a write went through while the lock was held");
    assert!(
        waited >= Duration::from_secs(2),
        "the write did not wait: {waited:?}"
    );

    let status = child.wait().expect("cairn ends");
    let _ = reader.join();
    seen.extend(lines.try_iter());
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut stdout)
        .expect("read stdout");
    assert!(status.success(), "{stdout}\n{seen:#?}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON report");
    assert_eq!(phase(&v, "backupPosthook")["status"], "ok", "{v}");
    assert!(
        v["outputs"]["artifacts"]
            .to_string()
            .contains("volume-data"),
        "the data directory was snapshotted under the lock: {v}"
    );
    // After the posthook: writes go through at once.
    assert!(insert_within(&maria, 5), "the lock was not released");
}

#[test]
fn a_timeout_mid_dump_still_releases_the_lock_and_records_nothing() {
    let maria = Maria::start();
    maria.load();
    let cairn = Cairn::new();
    // A mariadb-dump that streams the whole dump, then hangs: the deadline hits mid-dump,
    // before the command has ended.
    let tools = maria.dir.path().join("tools");
    std::fs::create_dir(&tools).expect("mkdir");
    let slow = tools.join("mariadb-dump");
    std::fs::write(
        &slow,
        "#!/bin/sh\n/usr/bin/mariadb-dump \"$@\"\nexec sleep 600\n",
    )
    .expect("write");
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::symlink("/usr/bin/mariadb", tools.join("mariadb")).expect("symlink");
    let target = maria.inventory(&format!("{}:/usr/bin:/bin", tools.display()), false);
    let out = backup(
        &cairn,
        &maria,
        &target,
        &[
            "--param",
            "quiesce=true",
            "--grant",
            "volumes",
            "--timeout",
            "8s",
        ],
    );
    let v = assert_fails_with(&out, &["backup"]);
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("deadline") || error.contains("timed out") || error.contains("timeout"),
        "{error}"
    );
    assert!(
        v["outputs"]["artifacts"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "a timed-out backup records no artifact: {v}"
    );
    assert_eq!(phase(&v, "backupPosthook")["status"], "ok", "{v}");
    assert!(insert_within(&maria, 5), "the lock was not released");
    // The partial dump was never committed to the repository.
    let key = cairn.home.path().join("repository.key");
    let repo = cairn.home.path().join("repository");
    let out = cairn.run(&[
        "repo",
        "snapshots",
        "--repo",
        repo.to_str().expect("utf-8"),
        "--key-file",
        key.to_str().expect("utf-8"),
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        json(&out).as_array().map(Vec::len),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn wrong_credentials_are_named() {
    let maria = Maria::start();
    let cairn = Cairn::new();
    let target = maria.default_inventory();
    let out = run(
        &cairn,
        &maria,
        &target,
        "backup",
        &[
            "--grant",
            "exec,export,secrets",
            "--secret",
            "password=raw:wrong",
        ],
    );
    assert_fails_with(
        &out,
        &["refused the credentials of user `cairn`", "--secret"],
    );
    let out = run(
        &cairn,
        &maria,
        &target,
        "backup",
        &["--grant", "exec,export"],
    );
    assert_fails_with(&out, &["without a password", "--grant secrets"]);
}

#[test]
fn a_server_that_is_down_is_named() {
    require_mariadb();
    let cairn = Cairn::new();
    let maria = Maria {
        dir: tempfile::tempdir().expect("tempdir"),
        port: free_port(),
        server: None,
    };
    let target = maria.default_inventory();
    let out = backup(&cairn, &maria, &target, &[]);
    let at = format!("cannot connect to the server at 127.0.0.1:{}", maria.port);
    assert_fails_with(&out, &[&at, "is it running"]);
}

#[test]
fn a_database_that_does_not_exist_is_named() {
    let maria = Maria::start();
    let cairn = Cairn::new();
    let target = maria.default_inventory();
    let out = backup(&cairn, &maria, &target, &["--param", "database=nope"]);
    assert_fails_with(
        &out,
        &["database `nope` does not exist", "--param database"],
    );
}

#[test]
fn a_dump_tool_missing_from_the_workload_is_named() {
    let maria = Maria::start();
    let cairn = Cairn::new();
    let tools = maria.dir.path().join("tools");
    std::fs::create_dir(&tools).expect("mkdir");
    std::os::unix::fs::symlink("/usr/bin/mariadb", tools.join("mariadb")).expect("symlink");
    let target = maria.inventory(tools.to_str().expect("utf-8"), false);
    let out = backup(&cairn, &maria, &target, &["--param", "database=mysql"]);
    assert_fails_with(
        &out,
        &[
            "`mariadb-dump` is missing from workload db",
            "mariadb-client",
        ],
    );
}
