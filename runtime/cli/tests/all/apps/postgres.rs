//! `blueprints/postgres` through the real `cairn` binary against a real PostgreSQL 15 on
//! loopback: pgbench data backed up, mutated, restored and compared table by table; backup
//! mode bracketing a volume snapshot; and the faults a user can cause.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::free_port;
use crate::support::{Cairn, json, stderr, wasm};

/// Where Debian's postgresql-15 package puts the server and its tools.
const BIN: &str = "/usr/lib/postgresql/15/bin";

const USER: &str = "cairn";
const PASSWORD: &str = "pg-s3cret";
const DB: &str = "shop";
const TABLES: [&str; 4] = [
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_history",
    "pgbench_tellers",
];

fn bin(program: &str) -> PathBuf {
    Path::new(BIN).join(program)
}

/// Fails (never skips) when the server's programs are missing.
fn require_postgres() {
    for program in [
        "initdb",
        "pg_ctl",
        "postgres",
        "psql",
        "pg_dump",
        "pg_restore",
        "pgbench",
    ] {
        assert!(
            bin(program).is_file(),
            "{} is missing: install the Debian package postgresql-15 (apt-get install \
             postgresql-15 postgresql-client-15) to run the PostgreSQL blueprint tests",
            bin(program).display()
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

/// A PostgreSQL server in its own tempdir (owned by the `postgres` user, which the server
/// needs since it refuses root), with the role `cairn` (password-authenticated over TCP) and
/// the inventory of a local target whose workload `db` runs the PostgreSQL tools. Stopped on
/// drop.
struct Pg {
    dir: tempfile::TempDir,
    port: u16,
}

impl Pg {
    fn start() -> Pg {
        require_postgres();
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        chown_postgres(dir.path());
        let data = dir.path().join("data");
        let pwfile = dir.path().join("superuser.pw");
        std::fs::write(&pwfile, "unused-superuser-pw\n").expect("pwfile");
        chown_postgres(&pwfile);
        let out = as_postgres(&bin("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("initdb runs");
        check("initdb", &out);
        let pg = Pg { dir, port };
        pg.ctl_start();
        // The superuser over the socket (trust) creates the password-authenticated role.
        pg.superuser_sql(&format!(
            "CREATE ROLE {USER} LOGIN SUPERUSER PASSWORD '{PASSWORD}';"
        ));
        pg
    }

    fn ctl_start(&self) {
        let out = as_postgres(&bin("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.path().display()
            ))
            .args(["-w", "-t", "60", "start"])
            .output()
            .expect("pg_ctl runs");
        check("pg_ctl start", &out);
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// SQL as the superuser over the Unix socket.
    fn superuser_sql(&self, sql: &str) -> String {
        let out = Command::new(bin("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
            ])
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-d", "postgres", "-c", sql])
            .output()
            .expect("psql runs");
        check(sql, &out);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A PostgreSQL tool connecting as `cairn` over TCP with its password.
    fn tool(&self, program: &str) -> Command {
        let mut c = Command::new(bin(program));
        c.env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", USER)
            .env("PGPASSWORD", PASSWORD)
            .env("PGAPPNAME", "cairn-test");
        c
    }

    /// SQL in `db` as `cairn`; the trimmed, unaligned output.
    fn sql(&self, db: &str, sql: &str) -> String {
        let out = self
            .tool("psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .expect("psql runs");
        check(sql, &out);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `shop`: pgbench at scale 1 (100 000 accounts) and a few hundred transactions, so every
    /// table (history too) holds rows.
    fn load_pgbench(&self) {
        self.sql("postgres", &format!("CREATE DATABASE {DB};"));
        let out = self
            .tool("pgbench")
            .args(["-i", "-q", "-s", "1", DB])
            .output()
            .expect("pgbench runs");
        check("pgbench -i", &out);
        let out = self
            .tool("pgbench")
            .args(["-n", "-t", "300", DB])
            .output()
            .expect("pgbench runs");
        check("pgbench -t", &out);
    }

    /// Per table: its row count and an md5 of every row, in a stable order.
    fn fingerprint(&self, db: &str) -> Vec<String> {
        TABLES
            .iter()
            .map(|t| {
                let v = self.sql(
                    db,
                    &format!(
                        "SELECT count(*) || ' ' || md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {t} t"
                    ),
                );
                format!("{t} {v}")
            })
            .collect()
    }

    /// Writes the inventory of the local target: workload `db` whose commands find the
    /// PostgreSQL 15 tools first on PATH (`path`), with the data directory as volume `data`
    /// when `volume`.
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
                 env: {{PATH: \"{path}\"}}\n        allow: [psql, pg_dump, pg_dumpall, pg_restore]{volumes}\n"
            ),
        )
        .expect("write inventory");
        format!("local:{}", inv.display())
    }

    fn default_inventory(&self) -> String {
        self.inventory(&format!("{BIN}:/usr/bin:/bin"), false)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = as_postgres(&bin("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn as_postgres(program: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(program);
    c
}

fn chown_postgres(path: &Path) {
    let out = Command::new("chown")
        .arg("postgres:postgres")
        .arg(path)
        .output()
        .expect("chown runs");
    check("chown postgres", &out);
    if path.is_dir() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

/// `cairn run` of the postgres blueprint with the connection of `pg` and `extra` arguments.
fn run(cairn: &Cairn, pg: &Pg, target: &str, action: &str, extra: &[&str]) -> Output {
    let wasm = wasm("postgres");
    let port = format!("port={}", pg.port);
    let mut args = vec![
        "run",
        wasm.to_str().expect("utf-8 path"),
        "--action",
        action,
        "--target",
        target,
        "--workload",
        "db",
        "--param",
        &port,
        "--param",
        "user=cairn",
        "--output",
        "json",
    ];
    args.extend_from_slice(extra);
    cairn.run(&args)
}

const SECRET: &str = "password=raw:pg-s3cret";

fn backup(cairn: &Cairn, pg: &Pg, target: &str, extra: &[&str]) -> Output {
    let mut args = vec!["--grant", "exec,export,secrets", "--secret", SECRET];
    if !extra.iter().any(|a| a.starts_with("database=")) {
        args.extend(["--param", "database=shop"]);
    }
    args.extend_from_slice(extra);
    run(cairn, pg, target, "backup", &args)
}

fn restore(cairn: &Cairn, pg: &Pg, target: &str, report: &Path, extra: &[&str]) -> Output {
    let from = report.to_str().expect("utf-8 path");
    let mut args = vec![
        "--grant",
        "exec,import,secrets",
        "--secret",
        SECRET,
        "--from",
        from,
    ];
    args.extend_from_slice(extra);
    run(cairn, pg, target, "restore", &args)
}

/// The run failed (exit 1) with a JSON report whose error contains every one of `needles`.
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

/// Polls `cond` until it holds or ten seconds pass; a backend notices its client went away
/// only when it next runs.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 10s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// No connection of the blueprint (application_name `cairn`) is left on the server.
fn no_blueprint_sessions(pg: &Pg) -> bool {
    pg.sql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'cairn'",
    ) == "0"
}

/// An LSN `X/Y` as a number.
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.trim().split_once('/').expect("an LSN X/Y");
    (u64::from_str_radix(hi, 16).expect("hex") << 32) | u64::from_str_radix(lo, 16).expect("hex")
}

#[test]
fn pgbench_round_trips_through_backup_and_restore() {
    let pg = Pg::start();
    pg.load_pgbench();
    let before = pg.fingerprint(DB);
    let cairn = Cairn::new();
    let target = pg.default_inventory();

    let out = backup(&cairn, &pg, &target, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    let dump = &v["outputs"]["artifacts"][0];
    assert_eq!(dump["name"], "dump", "{v}");
    let values: std::collections::BTreeMap<String, String> = dump["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap_or_default().to_owned(),
                p[1].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(values.get("database").map(String::as_str), Some(DB));
    assert_eq!(values.get("mode").map(String::as_str), Some("database"));
    assert!(
        values
            .get("server-version")
            .is_some_and(|s| s.starts_with("15")),
        "{values:?}"
    );
    assert!(
        values
            .get("dump-bytes")
            .and_then(|b| b.parse::<u64>().ok())
            .is_some_and(|b| b > 1_000_000),
        "an uncompressed dump of 100k accounts is over 1 MB: {values:?}"
    );
    let report = save(&cairn, "backup.json", &out);

    // Mutate: delete half the accounts, drop a table, change a branch.
    pg.sql(DB, "DELETE FROM pgbench_accounts WHERE aid % 2 = 0");
    pg.sql(DB, "DROP TABLE pgbench_history");
    pg.sql(DB, "UPDATE pgbench_branches SET bbalance = bbalance + 1");

    // A restore into a database that holds tables is refused without replace=true.
    let out = restore(&cairn, &pg, &target, &report, &[]);
    assert_fails_with(&out, &["already holds", "tables", "replace=true"]);
    assert_eq!(pg.sql(DB, "SELECT count(*) FROM pgbench_accounts"), "50000");

    let out = restore(&cairn, &pg, &target, &report, &["--param", "replace=true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(pg.fingerprint(DB), before);

    // Into a database that does not exist yet: it is created.
    let out = restore(
        &cairn,
        &pg,
        &target,
        &report,
        &["--param", "database=shop_copy"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(pg.fingerprint("shop_copy"), before);

    // Delete retires the restore point: its export is gone.
    let from = report.to_str().expect("utf-8 path");
    let out = run(
        &cairn,
        &pg,
        &target,
        "delete",
        &["--grant", "export", "--from", from],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = restore(
        &cairn,
        &pg,
        &target,
        &report,
        &["--param", "database=shop_gone"],
    );
    // The export is gone, and nothing was created on the server.
    assert_fails_with(&out, &["export \"dump\"", "not found"]);
    assert_eq!(
        pg.sql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'shop_gone'"
        ),
        "0"
    );
}

#[test]
fn a_cluster_dump_restores_into_an_empty_cluster() {
    let source = Pg::start();
    source.load_pgbench();
    source.sql("postgres", "CREATE ROLE reporting NOLOGIN");
    let before = source.fingerprint(DB);
    let cairn = Cairn::new();
    let out = backup(
        &cairn,
        &source,
        &source.default_inventory(),
        &["--param", "mode=cluster", "--param", "database=postgres"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = save(&cairn, "cluster.json", &out);

    let target = Pg::start();
    let inventory = target.default_inventory();
    let out = restore(&cairn, &target, &inventory, &report, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(target.fingerprint(DB), before);
    assert_eq!(
        target.sql(
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname = 'reporting'"
        ),
        "1"
    );

    // Again, now that the cluster holds `shop`: refused, then replaced.
    let out = restore(&cairn, &target, &inventory, &report, &[]);
    assert_fails_with(&out, &["already holds the databases shop", "replace=true"]);
    let out = restore(
        &cairn,
        &target,
        &inventory,
        &report,
        &["--param", "replace=true"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(target.fingerprint(DB), before);
}

#[test]
fn backup_mode_brackets_the_volume_snapshot() {
    let pg = Pg::start();
    pg.load_pgbench();
    let cairn = Cairn::new();
    let target = pg.inventory(&format!("{BIN}:/usr/bin:/bin"), true);
    let out = backup(
        &cairn,
        &pg,
        &target,
        &["--param", "quiesce=true", "--grant", "volumes"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    let value = |phase: &serde_json::Value, key: &str| -> String {
        phase["values"]
            .as_array()
            .expect("values")
            .iter()
            .find(|p| p[0] == key)
            .and_then(|p| p[1].as_str())
            .unwrap_or_else(|| panic!("no value {key} in {phase}"))
            .to_owned()
    };
    let start = lsn(&value(&v["outputs"], "start-lsn"));
    let mark = lsn(&value(&v["outputs"], "snapshot-lsn"));
    let posthook = v["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .find(|p| p["action"] == "backupPosthook")
        .expect("the posthook ran");
    assert_eq!(posthook["status"], "ok", "{posthook}");
    let stop = lsn(&value(&posthook["outputs"], "stop-lsn"));
    assert!(
        start <= mark && mark <= stop && start < stop,
        "{start:x} {mark:x} {stop:x}"
    );

    // The snapshot was taken inside the window: its control file's redo point (the
    // checkpoint pg_backup_start forced, or a later one) lies between start and stop.
    let snap = v["outputs"]["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .find(|a| a["name"] == "volume-data")
        .expect("a snapshot of volume data");
    let id = value(snap, "snapshot");
    let copy = cairn
        .home
        .path()
        .join("cluster/snapshots")
        .join(&id)
        .join("data");
    let out = Command::new(bin("pg_controldata"))
        .arg(&copy)
        .output()
        .expect("pg_controldata runs");
    check("pg_controldata", &out);
    let text = String::from_utf8_lossy(&out.stdout);
    let redo = text
        .lines()
        .find_map(|l| l.strip_prefix("Latest checkpoint's REDO location:"))
        .map(lsn)
        .expect("a REDO location");
    assert!(
        start <= redo && redo <= stop,
        "{start:x} <= {redo:x} <= {stop:x}"
    );
    // The session ended: no connection of the blueprint is left.
    eventually("the blueprint's sessions ending", || {
        no_blueprint_sessions(&pg)
    });
}

/// A `psql` session of the test holding a lock until dropped.
struct Locker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Locker {
    fn lock(pg: &Pg, sql: &str) -> Locker {
        let mut child = pg
            .tool("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", DB])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("psql starts");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut locker = Locker {
            child,
            stdin,
            stdout,
        };
        writeln!(locker.stdin, "BEGIN;\n{sql}\n\\echo locked").expect("write");
        let mut line = String::new();
        locker.stdout.read_line(&mut line).expect("read");
        assert_eq!(line.trim(), "locked");
        locker
    }
}

impl Drop for Locker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_timeout_mid_dump_still_stops_backup_mode_and_records_nothing() {
    let pg = Pg::start();
    pg.load_pgbench();
    let cairn = Cairn::new();
    let target = pg.default_inventory();
    // pg_dump waits for this lock until the deadline kills it.
    let locker = Locker::lock(&pg, "LOCK TABLE pgbench_accounts IN ACCESS EXCLUSIVE MODE;");
    let out = backup(
        &cairn,
        &pg,
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
    drop(locker);
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
    let phases = v["phases"].as_array().expect("phases");
    let posthook = phases
        .iter()
        .find(|p| p["action"] == "backupPosthook")
        .expect("the posthook ran");
    assert_eq!(posthook["status"], "ok", "{posthook}");
    assert!(posthook.to_string().contains("stop-lsn"), "{posthook}");
    // Backup mode ended with its session, and the partial dump was never committed.
    eventually("the blueprint's sessions ending", || {
        no_blueprint_sessions(&pg)
    });
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
    let pg = Pg::start();
    let cairn = Cairn::new();
    let target = pg.default_inventory();
    let out = run(
        &cairn,
        &pg,
        &target,
        "backup",
        &[
            "--grant",
            "exec,export,secrets",
            "--secret",
            "password=raw:wrong",
        ],
    );
    assert_fails_with(&out, &["refused the password of user `cairn`", "--secret"]);
    // No password at all: the error says how to grant one.
    let out = run(&cairn, &pg, &target, "backup", &["--grant", "exec,export"]);
    assert_fails_with(&out, &["wants a password", "--grant secrets"]);
}

#[test]
fn a_server_that_is_down_is_named() {
    require_postgres();
    let cairn = Cairn::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = Pg {
        port: free_port(),
        dir,
    };
    let target = pg.default_inventory();
    let out = backup(&cairn, &pg, &target, &[]);
    let at = format!("cannot connect to PostgreSQL at 127.0.0.1:{}", pg.port);
    assert_fails_with(&out, &[&at, "is the server running"]);
}

#[test]
fn a_database_that_does_not_exist_is_named() {
    let pg = Pg::start();
    let cairn = Cairn::new();
    let target = pg.default_inventory();
    let out = backup(&cairn, &pg, &target, &["--param", "database=nope"]);
    assert_fails_with(
        &out,
        &["database `nope` does not exist", "--param database"],
    );
}

#[test]
fn a_dump_tool_missing_from_the_workload_is_named() {
    let pg = Pg::start();
    let cairn = Cairn::new();
    // The workload's PATH has psql but no pg_dump.
    let tools = pg.dir.path().join("tools");
    std::fs::create_dir(&tools).expect("mkdir");
    std::os::unix::fs::symlink(bin("psql"), tools.join("psql")).expect("symlink");
    let target = pg.inventory(tools.to_str().expect("utf-8"), false);
    let out = backup(&cairn, &pg, &target, &["--param", "database=postgres"]);
    assert_fails_with(
        &out,
        &["`pg_dump` is missing from workload db", "postgresql-client"],
    );
}
