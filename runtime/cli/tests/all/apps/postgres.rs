//! `blueprints/postgres` through the real `cairn` binary against a real PostgreSQL 15 on
//! loopback: pgbench data backed up, mutated, restored and compared table by table; backup
//! mode bracketing a volume snapshot; and the faults a user can cause.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use super::{DB, Harness, SqlServer, Workload, answer, assert_fails_with, free_port};
use super::{exported_points, phase, require, snapshots, value, wait_for};
use crate::support::{Cairn, files_under, json, stderr};

/// `psql` without `.psqlrc`, unaligned tuples only, stopping at the first error.
const PSQL: [&str; 6] = ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"];

/// Where Debian's postgresql-15 package puts the server and its tools.
const BIN: &str = "/usr/lib/postgresql/15/bin";

const USER: &str = "cairn";
const PASSWORD: &str = "pg-s3cret";
const TABLES: [&str; 4] = [
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_history",
    "pgbench_tellers",
];

fn bin(program: &str) -> PathBuf {
    Path::new(BIN).join(program)
}

/// A PostgreSQL server in its own tempdir (owned by the `postgres` user, which the server
/// needs since it refuses root), with the role `cairn` (password-authenticated over TCP); its
/// harness's workload `db` runs the PostgreSQL tools. Stopped on drop.
struct Pg {
    h: Harness,
    port: u16,
}

impl Pg {
    /// The harness of a server on a free port, not started.
    fn new() -> Pg {
        let programs = [
            "initdb",
            "pg_ctl",
            "postgres",
            "psql",
            "pg_dump",
            "pg_restore",
            "pgbench",
            "pg_controldata",
        ];
        let packages = "postgresql-15 postgresql-client-15";
        require(
            "PostgreSQL",
            packages,
            programs.map(|p| format!("{BIN}/{p}")),
        );
        let mut h = Harness::new("postgres", "db");
        let port = free_port();
        h.param("port", port);
        h.param("user", USER);
        h.set_workload(Workload {
            path: Some(format!("{BIN}:/usr/bin:/bin")),
            ..Workload::allowing(&["psql", "pg_dump", "pg_dumpall", "pg_restore"])
        });
        Pg { h, port }
    }

    fn start() -> Pg {
        let pg = Pg::new();
        let dir = pg.h.root();
        chown_postgres(dir);
        let pwfile = dir.join("superuser.pw");
        std::fs::write(&pwfile, "unused-superuser-pw\n").expect("pwfile");
        chown_postgres(&pwfile);
        let mut initdb = as_postgres(&bin("initdb"));
        initdb.arg("-D").arg(pg.data()).args([
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
        ]);
        answer(
            "initdb",
            initdb.arg(format!("--pwfile={}", pwfile.display())),
        );
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            pg.port,
            dir.display()
        );
        let mut pg_ctl = as_postgres(&bin("pg_ctl"));
        pg_ctl
            .arg("-D")
            .arg(pg.data())
            .arg("-l")
            .arg(dir.join("server.log"));
        answer(
            "pg_ctl start",
            pg_ctl.args(["-o", &options, "-w", "-t", "60", "start"]),
        );
        // The superuser over the socket (trust) creates the password-authenticated role.
        pg.superuser_sql(&format!(
            "CREATE ROLE {USER} LOGIN SUPERUSER PASSWORD '{PASSWORD}';"
        ));
        pg
    }

    fn data(&self) -> PathBuf {
        self.h.root().join("data")
    }

    /// SQL as the superuser over the Unix socket.
    fn superuser_sql(&self, sql: &str) -> String {
        let mut psql = Command::new(bin("psql"));
        psql.args(PSQL)
            .args(["-U", "postgres", "-h"])
            .arg(self.h.root())
            .args(["-p", &self.port.to_string(), "-d", "postgres", "-c", sql]);
        answer(sql, &mut psql)
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

    /// `shop`: pgbench at scale 1 (100 000 accounts) and a few hundred transactions, so every
    /// table (history too) holds rows.
    fn load_pgbench(&self) {
        self.query("postgres", &format!("CREATE DATABASE {DB};"));
        answer(
            "pgbench -i",
            self.tool("pgbench").args(["-i", "-q", "-s", "1", DB]),
        );
        answer(
            "pgbench -t",
            self.tool("pgbench").args(["-n", "-t", "300", DB]),
        );
    }

    /// No connection of the blueprint (application_name `cairn`, or a restore's
    /// `cairn/restore/<run>`) is left on the server.
    fn no_blueprint_sessions(&self) -> bool {
        self.query(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = 'cairn' OR application_name LIKE 'cairn/%'",
        ) == "0"
    }

    /// Waits until no connection of the blueprint is left: a backend notices its client went
    /// away only when it next runs.
    fn sessions_end(&self) {
        wait_for(
            "the blueprint's sessions ending",
            10,
            || self.no_blueprint_sessions(),
            String::new,
        );
    }
}

impl SqlServer for Pg {
    const SECRET: &'static str = "password=raw:pg-s3cret";

    fn harness(&self) -> &Harness {
        &self.h
    }

    /// Per table: its row count and an md5 of every row, in a stable order.
    fn fingerprint(&self, db: &str) -> Vec<String> {
        TABLES
            .iter()
            .map(|t| {
                let v = self.query(
                    db,
                    &format!(
                        "SELECT count(*) || ' ' || md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {t} t"
                    ),
                );
                format!("{t} {v}")
            })
            .collect()
    }

    /// SQL in `db` as `cairn`; the trimmed, unaligned output.
    fn query(&self, db: &str, sql: &str) -> String {
        answer(
            sql,
            self.tool("psql").args(PSQL).args(["-d", db, "-c", sql]),
        )
    }

    fn exists(&self, db: &str) -> bool {
        let sql = format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'");
        self.query("postgres", &sql) == "1"
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
    answer(
        "chown",
        Command::new("chown").arg("postgres:postgres").arg(path),
    );
    if path.is_dir() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

/// An LSN `X/Y` as a number.
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.trim().split_once('/').expect("an LSN X/Y");
    (u64::from_str_radix(hi, 16).expect("hex") << 32) | u64::from_str_radix(lo, 16).expect("hex")
}

#[test]
fn pgbench_round_trips_through_backup_and_restore() {
    round_trips(Pg::start(), &[], "plain");
}

#[test]
fn a_custom_dump_round_trips_through_pg_restore() {
    round_trips(Pg::start(), &["--param", "format=custom"], "custom");
}

/// The same round trip with `--target kube`: the dump streams out of a pod's exec and back
/// into one over the exec WebSocket, through a fake API server whose exec runs the tools here.
#[test]
fn pgbench_round_trips_on_kubernetes() {
    let mut pg = Pg::start();
    pg.h.on_kubernetes();
    round_trips(pg, &[], "plain");
}

/// A pgbench database backed up with `extra`, recorded as a dump of `format`, mutated, then
/// put through [`SqlServer::restores`].
fn round_trips(pg: Pg, extra: &[&str], format: &str) {
    pg.load_pgbench();
    let before = pg.fingerprint(DB);
    let cairn = Cairn::new();

    let out = pg.backup(&cairn, extra);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = pg.h.save(&out);
    let v = json(&out);
    let dump = &v["outputs"]["artifacts"][0];
    assert_eq!(dump["name"], "dump", "{v}");
    assert_eq!(value(dump, "database"), DB);
    assert_eq!(value(dump, "mode"), "database");
    assert_eq!(value(dump, "format"), format);
    assert!(value(dump, "server-version").starts_with("15"), "{dump}");
    assert!(
        value(dump, "dump-bytes")
            .parse::<u64>()
            .is_ok_and(|b| b > 1_000_000),
        "an uncompressed dump of 100k accounts is over 1 MB: {dump}"
    );

    // Mutate: delete half the accounts, drop a table, change a branch, add a table.
    pg.query(DB, "DELETE FROM pgbench_accounts WHERE aid % 2 = 0");
    pg.query(DB, "DROP TABLE pgbench_history");
    pg.query(DB, "UPDATE pgbench_branches SET bbalance = bbalance + 1");
    pg.query(DB, "CREATE TABLE extra (x int)");
    let probe = ("SELECT count(*) FROM pgbench_accounts", "50000");
    pg.restores(&cairn, &report, &before, probe);
}

/// On Kubernetes no exec can be killed: a restore cut short by a damaged export closes psql's
/// stdin, which psql reads as the end of the dump, and runs on. It must commit nothing.
///
/// The dump ends in a long comment, and its last frame in the repository is damaged, so the
/// cut falls inside the comment: psql then holds no half statement whose error would roll the
/// transaction back by chance. Only the trailer the host writes after the whole dump commits.
#[test]
fn a_restore_cut_short_on_kubernetes_changes_nothing() {
    let mut pg = Pg::start();
    // pg_dump, then a comment of 4 MB of unique text: several frames of their own.
    let tools = pg.h.root().join("long-dump");
    std::fs::create_dir_all(&tools).expect("mkdir");
    super::script(
        &tools.join("pg_dump"),
        &format!(
            "#!/bin/sh\n{BIN}/pg_dump \"$@\" || exit\n\
             printf -- '-- '; head -c 3000000 /dev/urandom | base64 -w 0; echo\n"
        ),
    );
    let path = format!("{}:{BIN}:/usr/bin:/bin", tools.display());
    pg.h.set_workload(Workload {
        path: Some(path),
        ..pg.h.workload.clone()
    });
    pg.h.on_kubernetes();
    pg.load_pgbench();
    let cairn = Cairn::new();
    let out = pg.backup(&cairn, &[]);
    let report = pg.h.save(&out);
    pg.query(DB, "DELETE FROM pgbench_accounts WHERE aid % 2 = 0");
    let before = pg.fingerprint(DB);

    // The last frame before the pack header, in the largest pack.
    let mut packs: Vec<PathBuf> = files_under(&cairn.home.path().join("repository/data"));
    packs.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    let pack = packs.last().expect("a pack");
    let mut bytes = std::fs::read(pack).expect("read the pack");
    let tail: [u8; 4] = bytes[bytes.len() - 4..].try_into().expect("4 bytes");
    let header = u32::from_le_bytes(tail) as usize;
    let at = bytes.len() - 4 - header - 1000;
    bytes[at] ^= 0xff;
    std::fs::write(pack, bytes).expect("damage the pack");

    let out = pg.restore(&cairn, &report, &["--param", "replace=true"]);
    assert_fails_with(&out, &["damaged"]);
    // psql runs on after its exec closed: wait for it to leave.
    pg.sessions_end();
    assert_eq!(
        pg.fingerprint(DB),
        before,
        "a cut-short restore changed data"
    );
}

#[test]
fn a_replacing_restore_that_fails_drops_nothing() {
    let pg = Pg::start();
    pg.load_pgbench();
    let cairn = Cairn::new();
    let mut reports = Vec::new();
    for format in ["format=plain", "format=custom"] {
        let out = pg.backup(&cairn, &["--param", format]);
        assert!(out.status.success(), "{}", stderr(&out));
        reports.push(pg.h.save(&out));
    }
    // A view the dump does not hold depends on a table it drops and recreates: the restore
    // fails there, after dropping constraints and other tables, and must undo all of it.
    pg.query(DB, "DELETE FROM pgbench_accounts WHERE aid % 2 = 0");
    pg.query(
        DB,
        "CREATE VIEW rich AS SELECT * FROM pgbench_accounts WHERE abalance > 0",
    );
    let before = pg.fingerprint(DB);
    for report in &reports {
        let out = pg.restore(&cairn, report, &["--param", "replace=true"]);
        assert_fails_with(&out, &["cannot drop", "pgbench_accounts", "depend"]);
        assert_eq!(pg.fingerprint(DB), before, "a failed restore changed data");
        let pk = "SELECT count(*) FROM pg_constraint WHERE conname = 'pgbench_accounts_pkey'";
        assert_eq!(
            pg.query(DB, pk),
            "1",
            "a failed restore dropped a constraint"
        );
    }
}

/// A plain dump holds large objects in a transaction of its own, whose COMMIT would end the
/// restore's one transaction half way: such a restore is refused unless asked for without one.
/// And a database named like a connection string is dumped, not the one the string names.
#[test]
fn large_objects_and_names_with_equals_signs_are_not_mistaken() {
    let pg = Pg::start();
    pg.load_pgbench();
    pg.query(DB, "SELECT lo_from_bytea(0, '\\x00ff00ff'::bytea)");
    let cairn = Cairn::new();
    let out = pg.backup(&cairn, &["--param", "format=plain"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("1 large objects"), "{}", stderr(&out));
    let report = pg.h.save(&out);
    assert_eq!(
        value(&json(&out)["outputs"]["artifacts"][0], "large-objects"),
        "1"
    );
    let out = pg.restore(&cairn, &report, &["--param", "replace=true"]);
    assert_fails_with(&out, &["large objects", "single-transaction=false"]);
    let out = pg.restore(
        &cairn,
        &report,
        &[
            "--param",
            "replace=true",
            "--param",
            "single-transaction=false",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        pg.query(DB, "SELECT count(*) FROM pg_largeobject_metadata"),
        "1"
    );

    pg.superuser_sql("CREATE DATABASE \"dbname=shop\" OWNER cairn");
    // psql reads its -d as a connection string too: the name quoted in one.
    pg.query("dbname='dbname=shop'", "CREATE TABLE only_here (x int)");
    let out = pg.backup(&cairn, &["--param", "database=dbname=shop"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = pg.h.save(&out);
    pg.superuser_sql("CREATE DATABASE copied OWNER cairn");
    let out = pg.restore(&cairn, &report, &["--param", "database=copied"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(pg.query("copied", "SELECT count(*) FROM only_here"), "0");
    assert!(
        pg.query(
            "copied",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'pgbench_accounts'"
        ) == "0",
        "the dump held another database's tables"
    );
}

#[test]
fn a_cluster_dump_restores_into_an_empty_cluster() {
    let source = Pg::start();
    source.load_pgbench();
    source.query("postgres", "CREATE ROLE reporting NOLOGIN");
    let before = source.fingerprint(DB);
    let cairn = Cairn::new();
    let cluster = ["--param", "mode=cluster", "--param", "database=postgres"];
    let out = source.backup(&cairn, &cluster);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = source.h.save(&out);

    let target = Pg::start();
    let out = target.restore(&cairn, &report, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(target.fingerprint(DB), before);
    let role = "SELECT count(*) FROM pg_roles WHERE rolname = 'reporting'";
    assert_eq!(target.query("postgres", role), "1");

    // Again, now that the cluster holds `shop`: refused, then replaced.
    let out = target.restore(&cairn, &report, &[]);
    assert_fails_with(&out, &["already holds the databases shop", "replace=true"]);
    let out = target.restore(&cairn, &report, &["--param", "replace=true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(target.fingerprint(DB), before);
}

/// `--param database` on a cluster point was ignored, and with
/// replace=true every database was dropped where a copy into one was meant. Refused, and the
/// server is left as it was.
#[test]
fn a_cluster_point_refuses_a_database_parameter() {
    let pg = Pg::start();
    pg.query("postgres", &format!("CREATE DATABASE {DB}"));
    pg.query(
        DB,
        "CREATE TABLE items (x int); INSERT INTO items VALUES (1)",
    );
    let cairn = Cairn::new();
    let cluster = ["--param", "mode=cluster", "--param", "database=postgres"];
    let out = pg.backup(&cairn, &cluster);
    let report = pg.h.save(&out);
    pg.query("postgres", "CREATE DATABASE precious_other");
    pg.query(DB, "UPDATE items SET x = 2");

    let into_foo = ["--param", "database=foo", "--param", "replace=true"];
    let out = pg.restore(&cairn, &report, &into_foo);
    assert_fails_with(
        &out,
        &[
            "whole cluster",
            "--param database=foo does not apply",
            "without --param database",
        ],
    );
    assert!(pg.exists("precious_other"), "a refused restore dropped it");
    assert!(!pg.exists("foo"));
    assert_eq!(pg.query(DB, "SELECT x FROM items"), "2");
}

/// A restore into a database it created that failed (here on a role the
/// server lacks, which a one-database dump does not carry) left that database behind, empty,
/// and its error gave no way on.
#[test]
fn a_failed_restore_drops_the_database_it_created() {
    let pg = Pg::start();
    pg.query("postgres", &format!("CREATE DATABASE {DB}"));
    pg.query("postgres", "CREATE ROLE app NOLOGIN");
    pg.query(
        DB,
        "CREATE TABLE items (x int); INSERT INTO items VALUES (1); ALTER TABLE items OWNER TO app",
    );
    let cairn = Cairn::new();
    let mut reports = Vec::new();
    for format in ["plain", "custom"] {
        let out = pg.backup(&cairn, &["--param", &format!("format={format}")]);
        let report = pg.h.root().join(format!("{format}.json"));
        std::fs::copy(pg.h.save(&out), &report).expect("keep the report");
        reports.push(report);
    }
    pg.query(DB, "DROP OWNED BY app");
    pg.query("postgres", "DROP ROLE app");
    for report in &reports {
        let out = pg.restore(&cairn, report, &["--param", "database=copy"]);
        assert_fails_with(
            &out,
            &[
                "role \"app\" does not exist",
                "CREATE ROLE",
                "mode=cluster",
                "database `copy`, which this restore created, is dropped again",
            ],
        );
        assert!(
            !pg.exists("copy"),
            "a failed restore left the database it created"
        );
    }
}

/// A replacing restore stopped by its deadline while queued for a lock
/// left its session on the server, still queued, and the application's queries on the table
/// waited behind it until the other transaction ended. The posthook ends it, and says why the
/// restore stood still.
#[test]
fn a_restore_stopped_waiting_for_a_lock_leaves_no_session_behind() {
    let pg = Pg::start();
    pg.query("postgres", &format!("CREATE DATABASE {DB}"));
    pg.query(
        DB,
        "CREATE TABLE items (x int PRIMARY KEY); INSERT INTO items VALUES (1)",
    );
    let cairn = Cairn::new();
    let out = pg.backup(&cairn, &[]);
    let report = pg.h.save(&out);
    // The dump's first DROP waits for this transaction's lock until the deadline.
    let locker = Locker::lock(&pg, "LOCK TABLE items IN ACCESS SHARE MODE;");
    let replace = ["--param", "replace=true", "--timeout", "6s"];
    let out = pg.restore(&cairn, &report, &replace);
    let v = assert_fails_with(&out, &[]);
    assert_eq!(phase(&v, "restorePosthook")["status"], "ok", "{v}");
    let err = stderr(&out);
    assert!(
        err.contains("waiting for a lock held by the session(s)"),
        "{err}"
    );
    // The other transaction still holds its lock: no session of the restore is queued, and
    // the application reads.
    assert!(pg.no_blueprint_sessions(), "a restore session is left");
    assert_eq!(
        pg.query(DB, "SET lock_timeout = '5s'; SELECT count(*) FROM items"),
        "1"
    );
    drop(locker);
}

#[test]
fn backup_mode_brackets_the_volume_snapshot() {
    let pg = Pg::start();
    pg.load_pgbench();
    let cairn = Cairn::new();
    pg.h.write_inventory(&Workload {
        volume: true,
        ..pg.h.workload.clone()
    });
    let out = pg.backup(&cairn, &["--param", "quiesce=true", "--grant", "volumes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    let start = lsn(&value(&v["outputs"], "start-lsn"));
    let mark = lsn(&value(&v["outputs"], "snapshot-lsn"));
    let posthook = phase(&v, "backupPosthook");
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
    let text = answer(
        "pg_controldata",
        Command::new(bin("pg_controldata")).arg(&copy),
    );
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
    pg.sessions_end();

    // A delete granted too little removes the dump, then fails on the volume snapshot: the
    // point is marked partly deleted and refused for restores, until a delete finishes it.
    let point = v["action_id"].as_str().expect("an action id").to_owned();
    let out = pg.h.run(
        &cairn,
        "delete",
        &["--from-point", &point, "--grant", "export"],
    );
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("partly deleted"), "{}", stderr(&out));
    let out = pg.h.run(
        &cairn,
        "restore",
        &["--from-point", &point, "--grant", "exec,import,volumes"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("was partly deleted") && stderr(&out).contains("volumes"),
        "{}",
        stderr(&out)
    );
    pg.h.run_ok(
        &cairn,
        "delete",
        &["--from-point", &point, "--grant", "export,volumes"],
    );
    assert!(!exported_points(&cairn).contains(&point));
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
            .args(PSQL)
            .args(["-d", DB])
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
    // pg_dump waits for this lock until the deadline kills it.
    let locker = Locker::lock(&pg, "LOCK TABLE pgbench_accounts IN ACCESS EXCLUSIVE MODE;");
    let v = pg.times_out_mid_dump(&cairn);
    drop(locker);
    let posthook = phase(&v, "backupPosthook");
    assert!(posthook.to_string().contains("stop-lsn"), "{posthook}");
    // Backup mode ended with its session.
    pg.sessions_end();
}

/// A process stopped with SIGSTOP, continued on drop.
struct Stopped(String);

impl Stopped {
    fn stop(pid: String) -> Stopped {
        answer("kill -STOP", Command::new("kill").args(["-STOP", &pid]));
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

#[test]
fn a_prehook_that_times_out_starting_backup_mode_has_its_backend_terminated() {
    let pg = Pg::start();
    let cairn = Cairn::new();
    // With the checkpointer stopped, pg_backup_start waits for its checkpoint until the
    // prehook's deadline.
    let checkpointer =
        pg.superuser_sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'");
    let stopped = Stopped::stop(checkpointer);
    let quiesced = ["--param", "quiesce=true", "--grant", "volumes"];
    let out = pg.backup(
        &cairn,
        &[
            &quiesced[..],
            &["--param", "database=postgres", "--timeout", "6s"],
        ]
        .concat(),
    );
    let v = assert_fails_with(&out, &[]);
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("backupPrehook")
            && (error.contains("deadline") || error.contains("timed out")),
        "{error}"
    );
    let posthook = phase(&v, "backupPosthook");
    assert_eq!(posthook["status"], "ok", "{v}");
    assert_eq!(
        value(&posthook["outputs"], "backup-mode-ended"),
        "terminated"
    );
    // The backend that was starting backup mode is gone while the checkpointer still waits:
    // killing its psql alone would leave it waiting for the checkpoint.
    pg.sessions_end();
    drop(stopped);
}

#[test]
fn wrong_credentials_are_named() {
    Pg::start().h.credentials_are_checked(
        &["--secret", "password=raw:wrong"],
        &["refused the password of user `cairn`", "--secret"],
        // No password at all: the error says how to grant one.
        &["wants a password", "--grant secrets"],
    );
}

#[test]
fn a_server_that_is_down_is_named() {
    let pg = Pg::new();
    let out = pg.backup(&Cairn::new(), &[]);
    let at = format!("cannot connect to PostgreSQL at 127.0.0.1:{}", pg.port);
    assert_fails_with(&out, &[&at, "is the server running"]);
}

#[test]
fn a_database_that_does_not_exist_is_named() {
    let pg = Pg::start();
    let out = pg.backup(&Cairn::new(), &["--param", "database=nope"]);
    assert_fails_with(
        &out,
        &["database `nope` does not exist", "--param database"],
    );
}

#[test]
fn a_dump_tool_missing_from_the_workload_is_named() {
    let pg = Pg::start();
    // The workload's PATH has psql but no pg_dump.
    let tools = pg.h.tools("tools", &[("psql", &bin("psql"))]);
    pg.h.write_inventory(&pg.h.workload.with_path(&tools));
    let out = pg.backup(&Cairn::new(), &["--param", "database=postgres"]);
    assert_fails_with(
        &out,
        &["`pg_dump` is missing from workload db", "postgresql-client"],
    );
}

#[test]
fn a_dumps_tags_find_its_repository_snapshot() {
    let pg = Pg::start();
    let cairn = Cairn::new();
    let out = pg.backup(&cairn, &["--param", "database=postgres"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    let snapshot = value(&v["outputs"]["artifacts"][0], "snapshot");

    // `cairn repo snapshots --tag …`: the ids it lists.
    let found = |tags: &[&str]| -> Vec<String> {
        snapshots(&cairn, tags)
            .iter()
            .map(|s| s["id"].as_str().expect("an id").to_owned())
            .collect()
    };
    // The blueprint's tags, then the host's.
    let tags = [
        "app=postgres",
        "mode=database",
        "database=postgres",
        "action=backup",
        "namespace=default",
        "workload=db",
    ];
    assert_eq!(found(&tags), [snapshot]);
    assert_eq!(found(&["database=shop"]), Vec::<String>::new());
    assert_eq!(found(&["app=mysql"]), Vec::<String>::new());
}
