//! `blueprints/mysql` through the real `cairn` binary against a real MariaDB on loopback: a
//! generated table set backed up, mutated, restored and compared table by table; the global
//! read lock holding writes back until the posthook; and the faults a user can cause.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{DB, Harness, SqlServer, Workload, answer, assert_fails_with, free_port};
use super::{assert_repository_empty, phase, require, script, signal, value, wait_for};
use crate::support::{Cairn, json, stderr};

const USER: &str = "cairn";
const PASSWORD: &str = "my-s3cret";
const TABLES: [&str; 4] = ["customers", "orders", "blobs", "audit"];

/// A `mariadbd` in its own tempdir, with the user `cairn` (password-authenticated over TCP,
/// all privileges); its harness's workload `db` runs the MariaDB client programs. Killed on
/// drop.
struct Maria {
    h: Harness,
    port: u16,
    server: Option<Child>,
}

impl Maria {
    /// The harness of a server on a free port, not started.
    fn new() -> Maria {
        require(
            "MariaDB",
            "mariadb-server mariadb-client",
            [
                "mariadbd",
                "mariadb-install-db",
                "mariadb",
                "mariadb-dump",
                "mariadb-admin",
            ],
        );
        let mut h = Harness::new("mysql", "db");
        let port = free_port();
        h.param("port", port);
        h.param("user", USER);
        h.set_workload(Workload {
            path: Some("/usr/bin:/bin".into()),
            ..Workload::allowing(&["mariadb", "mariadb-dump"])
        });
        Maria {
            h,
            port,
            server: None,
        }
    }

    fn start() -> Maria {
        let mut maria = Maria::new();
        let d = maria.h.root().to_owned();
        // Each server's temporary tables in its own directory: bootstraps running in parallel
        // in a shared /tmp can delete one another's (`Error on delete of '/tmp/#sql-temptable…'`).
        let mut install = Command::new("mariadb-install-db");
        install
            .env("TMPDIR", &d)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ]);
        answer("mariadb-install-db", &mut install);
        let server = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--port={}", maria.port))
            .arg(format!("--socket={}", maria.socket().display()))
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
        maria.server = Some(server);
        let ping = || {
            Command::new("mariadb-admin")
                .arg("--no-defaults")
                .arg(format!("--socket={}", maria.socket().display()))
                .args(["--user=root", "ping"])
                .output()
                .expect("mariadb-admin runs")
                .status
                .success()
        };
        let log = || std::fs::read_to_string(d.join("error.log")).unwrap_or_default();
        wait_for("mariadbd coming up", 60, ping, log);
        maria.root_sql(&format!(
            "CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; \
             GRANT ALL ON *.* TO '{USER}'@'%' WITH GRANT OPTION;"
        ));
        maria
    }

    fn socket(&self) -> PathBuf {
        self.h.root().join("mysqld.sock")
    }

    /// SQL as root over the socket.
    fn root_sql(&self, sql: &str) -> String {
        let mut client = Command::new("mariadb");
        client
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["--user=root", "--batch", "--skip-column-names", "-e", sql]);
        answer(sql, &mut client)
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
        answer(sql, self.client().args(["-e", sql]))
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
}

impl SqlServer for Maria {
    const SECRET: &'static str = "password=raw:my-s3cret";

    fn harness(&self) -> &Harness {
        &self.h
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

    fn query(&self, db: &str, sql: &str) -> String {
        answer(sql, self.client().args(["--database", db, "-e", sql]))
    }

    fn exists(&self, db: &str) -> bool {
        !self.sql(&format!("SHOW DATABASES LIKE '{db}'")).is_empty()
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

    let out = maria.backup(&cairn, &[]);
    let report = maria.h.save(&out);
    let v = json(&out);
    let dump = &v["outputs"]["artifacts"][0];
    assert_eq!(dump["name"], "dump", "{v}");
    let text = dump.to_string();
    assert!(
        text.contains("MariaDB") && text.contains("\"database\",\"shop\""),
        "{text}"
    );

    // Mutate: delete rows, drop a table, change values.
    maria.sql(&format!("DELETE FROM {DB}.orders WHERE id % 3 = 0"));
    maria.sql(&format!("DROP TABLE {DB}.blobs"));
    maria.sql(&format!(
        "UPDATE {DB}.customers SET name = 'changed' WHERE id < 100"
    ));
    maria.restores(
        &cairn,
        &report,
        &before,
        ("SELECT COUNT(*) FROM orders", "40000"),
    );
}

/// Names beyond ASCII reach the server as the names given: commands run without a locale,
/// where the client would otherwise talk latin1 and name other databases.
#[test]
fn database_names_beyond_ascii_are_the_names_given() {
    let maria = Maria::start();
    let utf8 = |sql: &str| {
        answer(
            sql,
            maria
                .client()
                .args(["--default-character-set=utf8mb4", "-e", sql]),
        )
    };
    utf8(
        "CREATE DATABASE `café` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin; \
         CREATE TABLE `café`.t (x int); INSERT INTO `café`.t VALUES (7)",
    );
    let cairn = Cairn::new();
    let out = maria.backup(&cairn, &["--param", "database=café"]);
    let report = maria.h.save(&out);
    let out = maria.restore(&cairn, &report, &["--param", "database=crème"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(utf8("SELECT x FROM `crème`.t"), "7");
    assert_eq!(utf8("SHOW DATABASES LIKE 'cr%'"), "crème");
    // Created with the backed-up database's collation, which a one-database dump does not hold.
    assert_eq!(
        utf8(
            "SELECT DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'crème'"
        ),
        "utf8mb4_bin"
    );
    // One this server does not know (MySQL 8's) falls back to the server's default, said.
    let text = std::fs::read_to_string(&report).expect("report");
    assert!(text.contains("utf8mb4_bin"), "{text}");
    std::fs::write(&report, text.replace("utf8mb4_bin", "utf8mb4_0900_ai_ci")).expect("report");
    let out = maria.restore(&cairn, &report, &["--param", "database=crème2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not know"), "{}", stderr(&out));
    assert_eq!(utf8("SELECT x FROM `crème2`.t"), "7");
}

/// `--single-transaction` dumps transactional tables at one instant and others not: a backup
/// that is not quiesced names those others.
#[test]
fn tables_without_transactions_are_named_unless_quiesced() {
    let maria = Maria::start();
    maria.sql(
        "CREATE DATABASE mixed; CREATE TABLE mixed.plain (x int) ENGINE=InnoDB; \
         CREATE TABLE mixed.old (x int) ENGINE=MyISAM; CREATE TABLE mixed.mem (x int) ENGINE=MEMORY; \
         CREATE VIEW mixed.v AS SELECT x FROM mixed.old; \
         CREATE DATABASE clean; CREATE TABLE clean.t (x int) ENGINE=InnoDB",
    );
    let cairn = Cairn::new();
    let out = maria.backup(&cairn, &["--param", "database=mixed"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("2 table(s) use an engine without transactions")
            && err.contains("mixed.mem (MEMORY), mixed.old (MyISAM);")
            && err.contains("quiesce=true"),
        "{err}"
    );
    let out = maria.backup(&cairn, &["--param", "database=clean"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("without transactions"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_all_databases_dump_round_trips() {
    let maria = Maria::start();
    maria.load();
    maria.sql("CREATE USER 'reader'@'%' IDENTIFIED BY 'r'; GRANT SELECT ON *.* TO 'reader'@'%'");
    let before = maria.fingerprint(DB);
    let cairn = Cairn::new();
    let all = ["--grant", "exec,export,secrets", "--secret", Maria::SECRET];
    let out = maria.h.run(&cairn, "backup", &all);
    let report = maria.h.save(&out);

    maria.sql(&format!("DROP DATABASE {DB}"));
    maria.sql("CREATE DATABASE other");
    maria.sql("DROP USER 'reader'@'%'; CREATE USER 'late'@'%' IDENTIFIED BY 'l'");
    let out = maria.restore(&cairn, &report, &[]);
    assert_fails_with(&out, &["already holds the databases other", "replace=true"]);
    let out = maria.restore(&cairn, &report, &["--param", "replace=true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(maria.fingerprint(DB), before);
    // The restored users and grants are in effect, not only on disk.
    let logs_in = |user: &str, password: &str| {
        Command::new("mariadb")
            .arg("--no-defaults")
            .args(["--host=127.0.0.1", &format!("--port={}", maria.port)])
            .arg(format!("--user={user}"))
            .args(["-e", "SELECT 1"])
            .env("MYSQL_PWD", password)
            .output()
            .expect("mariadb runs")
            .status
            .success()
    };
    assert!(logs_in("reader", "r"), "a restored user cannot log in");
    assert!(
        !logs_in("late", "l"),
        "a user the restore removed still logs in"
    );
}

/// `--param database` on a point of every database was ignored, and with
/// replace=true every database was overwritten where a copy into one was meant. Refused, and
/// the server is left as it was.
#[test]
fn an_all_databases_point_refuses_a_database_parameter() {
    let maria = Maria::start();
    maria.sql(&format!(
        "CREATE DATABASE {DB}; CREATE TABLE {DB}.items (x int); INSERT INTO {DB}.items VALUES (1)"
    ));
    let cairn = Cairn::new();
    let all = ["--grant", "exec,export,secrets", "--secret", Maria::SECRET];
    let out = maria.h.run(&cairn, "backup", &all);
    let report = maria.h.save(&out);
    maria.sql(&format!("UPDATE {DB}.items SET x = 2"));

    let into_foo = ["--param", "database=foo", "--param", "replace=true"];
    let out = maria.restore(&cairn, &report, &into_foo);
    assert_fails_with(
        &out,
        &[
            "every database",
            "--param database=foo does not apply",
            "without --param database",
        ],
    );
    assert_eq!(maria.sql(&format!("SELECT x FROM {DB}.items")), "2");
    assert!(!maria.exists("foo"));
}

/// A restore failing on a statement larger than the server's
/// `max_allowed_packet` reported the statement the client echoed (cut at the host's cap on
/// stderr, so the server's line after it was lost), and left the database it had created.
#[test]
fn a_failed_restore_names_the_servers_reason_and_drops_the_database_it_created() {
    let maria = Maria::start();
    maria.sql(&format!(
        "CREATE DATABASE {DB}; CREATE TABLE {DB}.bigb (id INT PRIMARY KEY, body LONGBLOB); \
         INSERT INTO {DB}.bigb VALUES (1, REPEAT('x', 700000))"
    ));
    let cairn = Cairn::new();
    let out = maria.backup(&cairn, &[]);
    let report = maria.h.save(&out);
    // The dump's INSERT of that row (--hex-blob) is 1.4 MB, its echo longer than the cap.
    maria.root_sql("SET GLOBAL max_allowed_packet = 1048576");
    let out = maria.restore(&cairn, &report, &["--param", "database=copy"]);
    let v = assert_fails_with(
        &out,
        &[
            "max_allowed_packet",
            "database `copy`, which this restore created, is dropped again",
        ],
    );
    // The server's own line: 1153 when the client reads it, 2006 when the server closed the
    // connection first; never the echoed INSERT.
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        ["ERROR 1153", "ERROR 2006", "ERROR 2013"]
            .iter()
            .any(|e| error.contains(e))
            && !error.contains("INSERT INTO"),
        "{error}"
    );
    assert!(
        !maria.exists("copy"),
        "a failed restore left the database it created"
    );
}

/// Sends a signal to a process with `kill`.
#[test]
fn the_read_lock_holds_writes_until_the_posthook() {
    let maria = Maria::start();
    maria.load();
    let cairn = Cairn::new();
    maria.h.write_inventory(&Workload {
        volume: true,
        ..maria.h.workload.clone()
    });
    let a = quiesced_backup(&maria);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let mut child = cairn
        .command(&a)
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

/// The arguments of a quiesced backup of [`DB`] (the global read lock from prehook to
/// posthook).
fn quiesced_backup(maria: &Maria) -> Vec<String> {
    maria.h.args(
        "backup",
        &[
            "--grant",
            "exec,export,secrets,volumes",
            "--secret",
            Maria::SECRET,
            "--param",
            "database=shop",
            "--param",
            "quiesce=true",
        ],
    )
}

/// Puts in the workload's `PATH` a mariadb-dump that streams the whole dump, creates the file
/// this returns, then hangs.
fn hanging_dump(maria: &Maria) -> PathBuf {
    let tools = maria
        .h
        .tools("tools", &[("mariadb", Path::new("/usr/bin/mariadb"))]);
    let dumped = maria.h.root().join("dumped");
    let slow = format!(
        "#!/bin/sh\n/usr/bin/mariadb-dump \"$@\"\ntouch '{}'\nexec sleep 600\n",
        dumped.display()
    );
    script(&tools.join("mariadb-dump"), &slow);
    let path = PathBuf::from(format!("{}:/usr/bin:/bin", tools.display()));
    maria.h.write_inventory(&maria.h.workload.with_path(&path));
    dumped
}

#[test]
fn a_timeout_mid_dump_still_releases_the_lock_and_records_nothing() {
    let maria = Maria::start();
    maria.load();
    let cairn = Cairn::new();
    // The deadline hits mid-dump, before the command has ended.
    hanging_dump(&maria);
    maria.times_out_mid_dump(&cairn);
    assert!(insert_within(&maria, 5), "the lock was not released");
}

/// Runs `command` until the hanging dump has written `dumped` (the read lock held), then sends
/// it SIGINT; what it printed, once it has stopped, at once.
fn interrupted_mid_dump(maria: &Maria, dumped: &Path, mut command: Command) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cairn starts");
    wait_for(
        "the dump to be written",
        60,
        || dumped.exists(),
        String::new,
    );
    assert!(
        !insert_within(maria, 1),
        "the lock is held while the dump runs"
    );
    signal(child.id(), "-INT");
    let started = Instant::now();
    let out = child.wait_with_output().expect("cairn ends");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it stopped at once"
    );
    out
}

/// Ctrl-C in the middle of a quiesced dump: the dump stops, the posthook still releases the
/// global read lock, nothing is recorded as a restore point, and `cairn` exits 130.
#[test]
fn an_interrupt_mid_dump_still_releases_the_lock_and_records_nothing() {
    let maria = Maria::start();
    maria.load();
    let cairn = Cairn::new();
    let dumped = hanging_dump(&maria);
    let args = quiesced_backup(&maria);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = interrupted_mid_dump(&maria, &dumped, cairn.command(&args));
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["status"], "cancelled", "{v}");
    assert_eq!(phase(&v, "backup")["status"], "interrupted", "{v}");
    assert_eq!(phase(&v, "backupPosthook")["status"], "ok", "{v}");
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    assert!(insert_within(&maria, 5), "the lock was not released");
    assert_repository_empty(&cairn);
    let actions = cairn.run(&["catalog", "ls", "action", "--output", "json"]);
    assert!(
        String::from_utf8_lossy(&actions.stdout).contains("cancelled"),
        "recorded as cancelled: {}",
        String::from_utf8_lossy(&actions.stdout)
    );
}

/// `cairn policy run` stops on Ctrl-C as `cairn run` does: the dump stops, the posthook
/// releases the read lock, and it exits 130.
#[test]
fn a_policy_run_stops_on_an_interrupt_and_releases_the_lock() {
    let maria = Maria::start();
    maria.load();
    let cairn = Cairn::new();
    let dumped = hanging_dump(&maria);
    let wasm = crate::support::wasm("mysql");
    crate::support::ok(&cairn.run(&["blueprint", "add", wasm.to_str().expect("utf-8 path")]));
    // The connection's parameters, as the runs of these tests give them.
    let params: Vec<String> = maria
        .h
        .args("backup", &[])
        .windows(2)
        .filter(|w| w[0] == "--param")
        .map(|w| {
            let (k, v) = w[1].split_once('=').expect("NAME=VALUE");
            format!("{k}: '{v}'")
        })
        .collect();
    let policy = maria.h.root().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "name: db\nblueprint: mysql\ntarget: local:{}\nworkloads: [{}]\n\
             frequency: '@daily'\nretention: {{last: 1}}\n\
             grants: [exec, export, secrets, volumes]\n\
             secrets: {{password: 'env:CAIRN_TEST_MARIA_PASSWORD'}}\n\
             params: {{database: shop, quiesce: 'true', {}}}\n",
            maria.h.root().join("inventory.yaml").display(),
            maria.h.name,
            params.join(", ")
        ),
    )
    .expect("write the policy");
    crate::support::ok(&cairn.run(&["policy", "apply", policy.to_str().expect("utf-8 path")]));
    let mut command = cairn.command(&["policy", "run", "db"]);
    command.env("CAIRN_TEST_MARIA_PASSWORD", "my-s3cret");
    let out = interrupted_mid_dump(&maria, &dumped, command);
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    assert!(insert_within(&maria, 5), "the lock was not released");
    assert!(super::exported_points(&cairn).is_empty());
}

#[test]
fn a_prehook_that_times_out_waiting_for_the_lock_has_its_connection_killed() {
    let maria = Maria::start();
    maria.load();
    let cairn = Cairn::new();
    // Another session holds a table write lock, so FLUSH TABLES WITH READ LOCK waits.
    let mut blocker = maria
        .client()
        .arg("--unbuffered")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("mariadb starts");
    let mut stdin = blocker.stdin.take().expect("stdin");
    std::io::Write::write_all(
        &mut stdin,
        format!("LOCK TABLES {DB}.audit WRITE;\nSELECT 'held';\n").as_bytes(),
    )
    .expect("send LOCK TABLES");
    let mut held = String::new();
    BufReader::new(blocker.stdout.take().expect("stdout"))
        .read_line(&mut held)
        .expect("read the blocker's answer");
    assert_eq!(held.trim(), "held");

    let quiesced = ["--param", "quiesce=true", "--grant", "volumes"];
    let out = maria.backup(&cairn, &[&quiesced[..], &["--timeout", "6s"]].concat());
    let v = assert_fails_with(&out, &[]);
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("backupPrehook")
            && (error.contains("deadline") || error.contains("timed out")),
        "{error}"
    );
    let posthook = phase(&v, "backupPosthook");
    assert_eq!(posthook["status"], "ok", "{v}");
    assert_eq!(value(&posthook["outputs"], "unlocked"), "true", "{v}");
    // The pending FLUSH TABLES WITH READ LOCK is gone from the server, not only its client.
    let pending =
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'FLUSH TABLES%'";
    assert_eq!(maria.root_sql(pending), "0");
    assert_repository_empty(&cairn);

    drop(stdin);
    let _ = blocker.kill();
    let _ = blocker.wait();
    assert!(insert_within(&maria, 5), "a read lock outlived the run");
}

#[test]
fn wrong_credentials_are_named() {
    Maria::start().h.credentials_are_checked(
        &["--secret", "password=raw:wrong"],
        &["refused the credentials of user `cairn`", "--secret"],
        &["without a password", "--grant secrets"],
    );
}

#[test]
fn a_server_that_is_down_is_named() {
    let maria = Maria::new();
    let out = maria.backup(&Cairn::new(), &[]);
    let at = format!("cannot connect to the server at 127.0.0.1:{}", maria.port);
    assert_fails_with(&out, &[&at, "is it running"]);
}

#[test]
fn a_database_that_does_not_exist_is_named() {
    let maria = Maria::start();
    let out = maria.backup(&Cairn::new(), &["--param", "database=nope"]);
    assert_fails_with(
        &out,
        &["database `nope` does not exist", "--param database"],
    );
}

#[test]
fn a_dump_tool_missing_from_the_workload_is_named() {
    let maria = Maria::start();
    let tools = maria
        .h
        .tools("tools", &[("mariadb", Path::new("/usr/bin/mariadb"))]);
    maria.h.write_inventory(&maria.h.workload.with_path(&tools));
    let out = maria.backup(&Cairn::new(), &["--param", "database=mysql"]);
    assert_fails_with(
        &out,
        &[
            "`mariadb-dump` is missing from workload db",
            "mariadb-client",
        ],
    );
}
