//! Run with
//!
//! ```text
//! cargo build --release --target wasm32-wasip2 -p mysql
//! cairn run target/wasm32-wasip2/release/mysql.wasm --action backup \
//!     --target local:inventory.yaml --workload db \
//!     --param database=shop --param user=backup \
//!     --grant exec,export,secrets --secret password=env:MYSQL_PWD --output json > backup.json
//! cairn run target/wasm32-wasip2/release/mysql.wasm --action restore --from backup.json \
//!     --target local:inventory.yaml --workload db --param user=backup \
//!     --grant exec,import,secrets --secret password=env:MYSQL_PWD
//! ```
//!
//! and expect the backup's artifact `dump` (the repository snapshot of the dump, with the
//! database, the flavor and the server version) on stdout, and the restore to load it back.
//!
//! MariaDB and MySQL, backed up logically: `mariadb-dump` (or `mysqldump` with
//! `flavor=mysql`) `--single-transaction --routines --events --triggers` of one database or of
//! all of them, streamed on the host side straight into the export repository. The restore
//! pipes the dump back into `mariadb` (or `mysql`) and refuses a target that already holds
//! tables unless `replace=true`.
//!
//! With `quiesce=true` a session opened by the prehook holds `FLUSH TABLES WITH READ LOCK`
//! until the posthook's `UNLOCK TABLES`, and the backup phase also snapshots the workload's
//! volumes under the lock. The posthook runs even when the backup fails or times out, and the
//! host kills the session at the end of the run if the posthook could not end it, which
//! releases a held lock too. A prehook that stops while its lock is still pending (the server
//! keeps waiting even after its client is killed) checkpointed its connection id first, and the
//! posthook `KILL`s that connection.
//!
//! Dumps are tagged `app=mysql`, `flavor=…`, `scope=…` and `database=…` in the repository.
//!
//! The password comes only from a granted secret (`--secret password=…`, renamed with
//! `password-secret`) and reaches the tools as `MYSQL_PWD`; it is never a parameter.

use cairn_sdk::data::{self, Export, Import, Transfer};
use cairn_sdk::exec::{Command, Output, Session};
use cairn_sdk::lifecycle::{
    BACKUP, BACKUP_POSTHOOK, BACKUP_PREHOOK, DELETE, RESTORE, RESTORE_POSTHOOK,
};
use cairn_sdk::params::refuse_unless_replace;
use cairn_sdk::{Artifact, Blueprint, Capability, Context, Description, Error, Outputs, Param};
use cairn_sdk::{Progress, Result, checkpoint, info, progress, secrets, volumes, warn};

/// The artifact holding the dump.
const DUMP: &str = "dump";

/// Artifacts of volume snapshots are named `volume-<volume>`.
const VOLUME_PREFIX: &str = "volume-";

/// The session that holds the global read lock from the prehook to the posthook.
const SESSION: &str = "mysql-read-lock";

/// The value the prehook checkpoints right before `FLUSH TABLES WITH READ LOCK`: the lock
/// session's connection id. When the posthook sees it but the prehook did not complete (it
/// failed or timed out while waiting for the lock), the lock may be held or still pending,
/// and the posthook ends it by killing that connection.
const LOCK_CONNECTION: &str = "lock-connection";

/// How long a connection attempt of the client may take before it gives up.
const CONNECT_TIMEOUT_SECS: u32 = 10;

/// Schemas of the server itself; an "all databases" restore ignores them when it decides
/// whether the target is empty.
const SYSTEM_SCHEMAS: [&str; 4] = ["mysql", "information_schema", "performance_schema", "sys"];

/// Rows the session prints so a read stops at a known place.
const LOCKED_MARK: &str = "cairn-locked";
const MARK: &str = "cairn-mark";
const UNLOCKED_MARK: &str = "cairn-unlocked";

/// Which client programs the workload has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    /// `mariadb`, `mariadb-dump`.
    MariaDb,
    /// `mysql`, `mysqldump`.
    MySql,
}

impl Flavor {
    const CHOICES: [&'static str; 2] = ["mariadb", "mysql"];

    fn parse(text: &str) -> Result<Self> {
        match text {
            "mariadb" => Ok(Self::MariaDb),
            "mysql" => Ok(Self::MySql),
            other => Err(Error::invalid(format!(
                "flavor {other:?} is not one of {}",
                Self::CHOICES.join(", ")
            ))),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::MariaDb => "mariadb",
            Self::MySql => "mysql",
        }
    }

    fn client(self) -> &'static str {
        match self {
            Self::MariaDb => "mariadb",
            Self::MySql => "mysql",
        }
    }

    fn dump(self) -> &'static str {
        match self {
            Self::MariaDb => "mariadb-dump",
            Self::MySql => "mysqldump",
        }
    }

    /// The Debian package with the client programs, for messages.
    fn package(self) -> &'static str {
        match self {
            Self::MariaDb => "mariadb-client",
            Self::MySql => "mysql-client",
        }
    }
}

struct MySql;

impl Blueprint for MySql {
    fn describe() -> Description {
        Description::new("mysql", env!("CARGO_PKG_VERSION"))
            .describe(
                "MariaDB and MySQL: mariadb-dump/mysqldump --single-transaction streamed into \
                 the export repository, restored with mariadb/mysql; optionally a global read \
                 lock held around a volume snapshot",
            )
            .action(
                BACKUP_PREHOOK,
                "With quiesce=true: open a session and take FLUSH TABLES WITH READ LOCK",
            )
            .action(
                BACKUP,
                "Dump one database (or all) into an export; with quiesce=true also snapshot the \
                 workload's volumes under the lock",
            )
            .action(
                BACKUP_POSTHOOK,
                "With quiesce=true: UNLOCK TABLES and close the session",
            )
            .action(RESTORE, "Load a dump back with mariadb/mysql")
            .action(
                RESTORE_POSTHOOK,
                "After a restore that stopped part way (interrupted, past its deadline): say \
                 what state it left the server in",
            )
            .action(DELETE, "Remove a backup's dump and volume snapshots")
            .param(Param::host("host"))
            .param(Param::port("port", 3306))
            .param(
                Param::text("user")
                    .default("root")
                    .describe("User to connect as"),
            )
            .param(Param::text("database").describe(
                "Database to dump or to restore into; without it a backup dumps every database \
                 and a restore uses the backed-up one",
            ))
            .param(
                Param::text("flavor")
                    .default("mariadb")
                    .choices(Flavor::CHOICES)
                    .describe(
                        "mariadb: the mariadb and mariadb-dump programs; mysql: mysql and \
                         mysqldump",
                    ),
            )
            .param(Param::flag("quiesce").default(false).describe(
                "Hold FLUSH TABLES WITH READ LOCK from the prehook to the posthook and \
                 snapshot the workload's volumes under it",
            ))
            .param(Param::replace().describe(
                "Restore into a database that already holds tables, replacing the tables the \
                 dump recreates",
            ))
            .param(
                Param::text("password-secret")
                    .default("password")
                    .describe("Name of the granted secret that holds the password"),
            )
            .capability(Capability::Exec)
            .capability(Capability::Export)
            .capability(Capability::Import)
            .capability(Capability::Secrets)
            .capability(Capability::Volumes)
    }

    fn run(action: &str, ctx: &Context) -> Result<Outputs> {
        match action {
            BACKUP_PREHOOK => prehook(ctx),
            BACKUP => backup(ctx),
            BACKUP_POSTHOOK => posthook(ctx),
            RESTORE => restore(ctx),
            RESTORE_POSTHOOK => restore_posthook(ctx),
            DELETE => delete(ctx),
            other => Err(Error::unknown_action(other)),
        }
    }
}

cairn_sdk::export!(MySql);

/// Where the tools connect, and as whom.
#[derive(Debug, Clone)]
struct Conn {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    flavor: Flavor,
    /// The workload, for messages.
    workload: String,
}

impl Conn {
    fn from_ctx(ctx: &Context) -> Result<Self> {
        Ok(Self {
            host: ctx.host("host")?.to_owned(),
            port: ctx.port("port")?,
            user: ctx.text("user")?.to_owned(),
            password: password(ctx)?,
            flavor: Flavor::parse(ctx.text("flavor")?)?,
            workload: ctx.workload().unwrap_or("the target workload").to_owned(),
        })
    }

    /// `host:port`, for messages.
    fn at(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// `program --no-defaults` with the connection, and the password in `MYSQL_PWD`. Option
    /// files are not read, so what runs is what the parameters say.
    fn command(&self, program: &str) -> Command {
        let command = Command::new([program, "--no-defaults"]).args([
            format!("--host={}", self.host),
            format!("--port={}", self.port),
            format!("--user={}", self.user),
            "--protocol=TCP".to_owned(),
            // Commands run without a locale, where the client talks latin1: a database named
            // `café` would reach the server as other bytes, and name another database.
            "--default-character-set=utf8mb4".to_owned(),
        ]);
        match &self.password {
            Some(p) => command.env("MYSQL_PWD", p),
            None => command,
        }
    }

    /// The client in batch mode: tab-separated rows without headers, flushed after each
    /// statement, stopping at the first error.
    fn client(&self) -> Command {
        self.command(self.flavor.client()).args([
            "--batch".to_owned(),
            "--skip-column-names".to_owned(),
            "--unbuffered".to_owned(),
            // The dump programs have no such option; the client checks the server first.
            format!("--connect-timeout={CONNECT_TIMEOUT_SECS}"),
        ])
    }

    /// Runs `sql` and returns the trimmed rows.
    fn query(&self, sql: &str) -> Result<String> {
        let command = self.client().stdin(sql);
        let out = run(&command, self)?;
        if !out.success() {
            return Err(diagnose(
                self.flavor.client(),
                out.exit_code,
                &out.stderr,
                self,
            ));
        }
        Ok(out.stdout_str().trim().to_owned())
    }
}

/// The password from the granted secret, if any; without one the tools connect without a
/// password, and when the server wants one the error says how to grant it.
fn password(ctx: &Context) -> Result<Option<String>> {
    secrets::get_optional(ctx.text("password-secret")?)
}

/// A database name as a quoted identifier. Names with quotes, backslashes or control
/// characters are refused rather than escaped: they are never worth the risk.
fn identifier(name: &str) -> Result<String> {
    let bad = |c: char| c == '`' || c == '\'' || c == '"' || c == '\\' || c.is_control();
    if name.is_empty() || name.len() > 64 || name.starts_with('-') || name.chars().any(bad) {
        return Err(Error::invalid(format!(
            "database name {name:?} is not supported: use 1 to 64 characters without quotes, \
             backslashes or control characters, not starting with `-`"
        )));
    }
    Ok(format!("`{name}`"))
}

/// The tables of `database` (or of every user database) whose engine has no transactions
/// (MyISAM, Aria, MEMORY, ...), as `db.table (ENGINE)`.
fn non_transactional(conn: &Conn, database: Option<&str>) -> Result<Vec<String>> {
    let scope = match database {
        // `identifier` refuses quotes and backslashes, so the name is a plain literal.
        Some(db) => {
            identifier(db)?;
            format!("table_schema = '{db}'")
        }
        None => "table_schema NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')"
            .to_owned(),
    };
    let rows = conn.query(&format!(
        "SELECT CONCAT(table_schema, '.', table_name, ' (', engine, ')') \
         FROM information_schema.tables \
         WHERE table_type IN ('BASE TABLE', 'SYSTEM VERSIONED') \
         AND UPPER(engine) NOT IN ('INNODB', 'ROCKSDB', 'TOKUDB', 'NDBCLUSTER', 'NDB') AND {scope} \
         ORDER BY table_schema, table_name;\n"
    ))?;
    Ok(rows.lines().map(str::to_owned).collect())
}

/// The first `n` of `items`, and how many more there are.
fn first_few(items: &[String], n: usize) -> String {
    let shown = items[..items.len().min(n)].join(", ");
    match items.len().saturating_sub(n) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// Runs a command, turning a program missing from the workload into an error naming it.
fn run(command: &Command, conn: &Conn) -> Result<Output> {
    command.run().map_err(|e| missing_tool(e, command, conn))
}

/// A clearer error when the host could not find the program in the workload.
fn missing_tool(e: Error, command: &Command, conn: &Conn) -> Error {
    let program = command.argv().first().map_or("", String::as_str);
    match e {
        Error::NotFound(m) if m.contains("program") => Error::not_found(format!(
            "`{program}` is missing from workload {}: install the client programs (Debian \
             package {}) there or put them on its PATH, or pick the other --param flavor ({m})",
            conn.workload,
            conn.flavor.package()
        )),
        other => other,
    }
}

/// One line saying why a client program failed, naming the cause and what to do.
fn diagnose(tool: &str, exit_code: i32, stderr: &[u8], conn: &Conn) -> Error {
    let text = String::from_utf8_lossy(stderr);
    let at = conn.at();
    let user = &conn.user;
    // ERROR 1044/1142/1227: the login worked, a privilege is missing; only 1045's
    // "(using password: …)" says the credentials were refused.
    if (text.contains("Access denied") && !text.contains("(using password:"))
        || text.contains("command denied to user")
    {
        return Error::denied(format!(
            "user `{user}` at {at} lacks a privilege this needs: {} (grant it, or name a user \
             that has it with --param user=)",
            why(&text)
        ));
    }
    if text.contains("Access denied for user") {
        return if conn.password.is_some() {
            Error::denied(format!(
                "the server at {at} refused the credentials of user `{user}`: check the secret \
                 granted as --secret password=… and the user's host"
            ))
        } else {
            Error::denied(format!(
                "the server at {at} refused user `{user}` without a password: pass one with \
                 --secret password=env:VAR --grant secrets"
            ))
        };
    }
    if let Some(db) = text
        .split("Unknown database '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
    {
        return Error::not_found(format!(
            "database `{db}` does not exist on the server at {at}; create it or name another \
             with --param database=NAME"
        ));
    }
    if text.contains("Can't connect") || text.contains("Unknown server host") {
        return Error::failed(format!(
            "cannot connect to the server at {at}: {}; is it running, and are --param host and \
             port right?",
            why(&text)
        ));
    }
    let why = why(&text);
    // The server drops the connection on a statement over its max_allowed_packet (a row of a
    // few megabytes), and the client reports only that it is gone.
    if why.starts_with("ERROR 2006") || why.starts_with("ERROR 2013") {
        return Error::failed(format!(
            "`{tool}` exited with {exit_code} (server at {at}): {why}; the server closed the \
             connection: if it is still up, the usual cause is a statement (a large row) over \
             its max_allowed_packet, so raise that on the server (SET GLOBAL \
             max_allowed_packet, or in its configuration) and run again; else see its error log"
        ));
    }
    if why.is_empty() {
        Error::failed(format!("`{tool}` exited with {exit_code} (server at {at})"))
    } else {
        Error::failed(format!(
            "`{tool}` exited with {exit_code} (server at {at}): {why}"
        ))
    }
}

/// The line of stderr that says what went wrong, trimmed, without the program's name: the
/// server's `ERROR nnnn (…)` line wherever it is (after an echoed statement, at the end of a
/// long stderr), else the first line naming an error, else the first line that is not part of
/// a statement the client echoed (between `--------------` lines), which says nothing of why.
fn why(text: &str) -> String {
    const ECHO_RULE: &str = "--------------";
    let mut echoed = false;
    let said: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            if *l == ECHO_RULE {
                echoed = !echoed;
                return false;
            }
            !echoed && !l.is_empty()
        })
        .collect();
    let line = said
        .iter()
        .rev()
        .find(|l| l.starts_with("ERROR "))
        .or_else(|| {
            said.iter()
                .find(|l| l.contains("ERROR") || l.contains("error") || l.contains("Got error"))
        })
        .or_else(|| said.iter().find(|l| !l.starts_with("Warning:")))
        .copied()
        .unwrap_or("");
    let line = line
        .strip_prefix("mariadb-dump: ")
        .or_else(|| line.strip_prefix("mysqldump: "))
        .unwrap_or(line);
    line.to_owned()
}

/// `transfer` when `tool` succeeded and, restoring, took the whole dump (a client that exits 0
/// halfway through its input has restored part of it); otherwise the failure diagnosed.
fn check(tool: &str, transfer: Transfer, conn: &Conn) -> Result<Transfer> {
    if transfer.success() {
        transfer.ok()
    } else {
        Err(diagnose(tool, transfer.exit_code, &transfer.stderr, conn))
    }
}

fn backup(ctx: &Context) -> Result<Outputs> {
    let conn = Conn::from_ctx(ctx)?;
    let database = ctx.param::<Option<String>>("database")?;
    // Proves the connection, the credentials and the database, with a clear error.
    let version = match &database {
        Some(db) => conn.query(&format!("USE {};\nSELECT VERSION();\n", identifier(db)?))?,
        None => conn.query("SELECT VERSION();\n")?,
    };
    let tool = conn.flavor.dump();
    info!(
        "{version} at {}: dumping {} with {tool}",
        conn.at(),
        database.as_deref().map_or_else(
            || "every database".to_owned(),
            |d| format!("database `{d}`")
        )
    );
    // Under quiesce's read lock every table is dumped at one instant; without it only those
    // of transactional engines are.
    if !ctx.flag("quiesce")? {
        match non_transactional(&conn, database.as_deref()) {
            Ok(tables) if !tables.is_empty() => warn!(
                "{} table(s) use an engine without transactions, which --single-transaction does \
                 not dump at one instant: {}; writes during the dump can leave them out of step \
                 with the rest. Convert them to InnoDB, or back up with quiesce=true (a read lock \
                 for the dump's length)",
                tables.len(),
                first_few(&tables, 5)
            ),
            Ok(_) => {}
            Err(e) => warn!("cannot list the tables' engines: {e}"),
        }
    }
    progress(Progress::percent(0.0).message("dumping"));
    let mut command = conn.command(tool).args([
        "--single-transaction",
        "--routines",
        "--events",
        "--triggers",
        "--hex-blob",
    ]);
    command = match &database {
        // Without --databases: no CREATE DATABASE/USE, so it restores under any name.
        Some(db) => command.arg(db),
        None => command.arg("--all-databases"),
    };
    // What a user filters restore points by: `cairn repo snapshots --tag database=shop`.
    let mut tags = vec![
        ("app", "mysql"),
        ("flavor", conn.flavor.as_str()),
        (
            "scope",
            if database.is_some() {
                "database"
            } else {
                "all"
            },
        ),
    ];
    if let Some(db) = &database {
        // `identifier` already refused quotes and control characters, not `=` or `,`.
        if data::is_tag_value(db) {
            tags.push(("database", db));
        } else {
            warn!("database name {db:?} cannot be a tag value; the dump is not tagged with it");
        }
    }
    let export = Export::open_tagged(DUMP, tags)?;
    let transfer = export
        .pipe_from(&command)
        .map_err(|e| missing_tool(e, &command, &conn))?;
    // A failed dump is never finished: dropping the export discards it.
    let transfer = check(tool, transfer, &conn)?;
    if transfer.bytes == 0 {
        return Err(Error::failed(format!(
            "`{tool}` exited with 0 but wrote nothing; the dump is discarded"
        )));
    }
    let mut artifact = export
        .finish()?
        .value(
            "scope",
            if database.is_some() {
                "database"
            } else {
                "all"
            },
        )
        .value("flavor", conn.flavor.as_str())
        .value("server-version", &version)
        .value("dump-bytes", transfer.bytes);
    if let Some(db) = &database {
        artifact = artifact.value("database", db);
        // A one-database dump holds no CREATE DATABASE: what the restore creates the database
        // with is kept beside it.
        let defaults = conn.query(&format!(
            "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM \
             information_schema.SCHEMATA WHERE SCHEMA_NAME = '{db}';\n"
        ))?;
        if let Some((charset, collation)) = defaults.trim().split_once('\t') {
            artifact = artifact
                .value("charset", charset)
                .value("collation", collation);
        }
    }
    progress(Progress::bytes(transfer.bytes, Some(transfer.bytes)).message("dumped"));
    info!("dumped {} bytes with {tool}", transfer.bytes);

    let mut outputs = Outputs::new()
        .artifact(artifact)
        .value("server-version", &version);
    if ctx.flag("quiesce")? {
        outputs = snapshot_under_lock(outputs)?;
    }
    Ok(outputs)
}

/// Snapshots the workload's volumes while the prehook's session holds the read lock.
fn snapshot_under_lock(mut outputs: Outputs) -> Result<Outputs> {
    // The session must still hold the lock: a send fails if its client has exited.
    Session::attach(SESSION)
        .send(&format!("SELECT '{MARK}';\n"), MARK)
        .map_err(|e| e.context("checking that the read lock still holds"))?;
    let snapshots = volumes::snapshot(None, &[])?;
    if snapshots.is_empty() {
        info!("the workload has no volumes; the lock bracketed the dump only");
    }
    for snap in &snapshots {
        info!(
            "snapshotted volume {} ({} bytes) as {} under the read lock",
            snap.volume, snap.bytes, snap.id
        );
        outputs = outputs.artifact(
            Artifact::new(format!("{VOLUME_PREFIX}{}", snap.volume))
                .value("snapshot", &snap.id)
                .value("volume", &snap.volume)
                .value("bytes", snap.bytes),
        );
    }
    Ok(outputs)
}

fn prehook(ctx: &Context) -> Result<Outputs> {
    if !ctx.flag("quiesce")? {
        return Ok(Outputs::new());
    }
    let conn = Conn::from_ctx(ctx)?;
    // Fail with a clear reason (credentials, server down, …) before opening the session.
    conn.query("SELECT 1;\n")?;
    let client = conn.client();
    let session = Session::open(SESSION, &client).map_err(|e| missing_tool(e, &client, &conn))?;
    let id = session
        .send(
            &format!("SELECT CONNECTION_ID();\nSELECT '{MARK}';\n"),
            MARK,
        )
        .map_err(|e| e.context("reading the lock session's connection id"))?;
    let id: u64 = id.trim().parse().map_err(|_| {
        Error::failed(format!(
            "the lock session answered {:?}, not a connection id",
            id.trim()
        ))
    })?;
    // Before taking it: a prehook that times out waiting for the lock leaves it pending (and
    // then held), and this tells the posthook which connection to end.
    checkpoint(LOCK_CONNECTION, id)?;
    session
        .send(
            &format!("FLUSH TABLES WITH READ LOCK;\nSELECT '{LOCKED_MARK}';\n"),
            LOCKED_MARK,
        )
        .map_err(|e| e.context("taking FLUSH TABLES WITH READ LOCK"))?;
    info!("global read lock held; the session keeps it until the posthook");
    Ok(Outputs::new().value("locked", true))
}

fn posthook(ctx: &Context) -> Result<Outputs> {
    if !ctx.flag("quiesce")? {
        return Ok(Outputs::new());
    }
    let Ok(id) = ctx.value(LOCK_CONNECTION) else {
        info!("the prehook took no lock; nothing to release");
        return Ok(Outputs::new());
    };
    if ctx.phase(BACKUP_PREHOOK).is_none() {
        return kill_lock_session(ctx, id);
    }
    if let Some(failure) = ctx.failure() {
        warn!("releasing the read lock after the backup failed: {failure}");
    }
    info!("releasing the global read lock");
    let session = Session::attach(SESSION);
    session
        .send(
            &format!("UNLOCK TABLES;\nSELECT '{UNLOCKED_MARK}';\n"),
            UNLOCKED_MARK,
        )
        .map_err(|e| e.context("releasing the read lock (UNLOCK TABLES)"))?;
    let closed = session.close()?;
    if !closed.success() {
        warn!(
            "the lock session exited with {}: {}",
            closed.exit_code,
            closed.stderr_str().trim()
        );
    }
    info!("global read lock released");
    Ok(Outputs::new().value("unlocked", true))
}

/// Ends the lock of a prehook that stopped while taking it: an `UNLOCK TABLES` sent to its
/// session would wait behind the pending `FLUSH TABLES WITH READ LOCK`, so the session's
/// connection is killed from another one, which drops the lock held or waited for.
fn kill_lock_session(ctx: &Context, id: &str) -> Result<Outputs> {
    let id: u64 = id.parse().map_err(|_| {
        Error::failed(format!(
            "the prehook checkpointed {LOCK_CONNECTION}={id:?}, not a connection id"
        ))
    })?;
    warn!("the prehook stopped while taking the read lock; killing its connection {id}");
    let conn = Conn::from_ctx(ctx)?;
    match conn.query(&format!("KILL {id};\n")) {
        Ok(_) => info!("connection {id} killed; the read lock is released"),
        Err(e) if e.to_string().contains("Unknown thread id") => {
            info!("connection {id} is already gone, and its read lock with it");
        }
        Err(e) => return Err(e.context(format_args!("killing the lock connection {id}"))),
    }
    Ok(Outputs::new().value("unlocked", true))
}

fn restore(ctx: &Context) -> Result<Outputs> {
    let dump = ctx.artifact(DUMP)?;
    let all = dump.get("scope") == Some("all");
    let given = ctx.param::<Option<String>>("database")?;
    if all {
        refuse_database_for_all(given.as_deref())?;
    }
    let conn = Conn::from_ctx(ctx)?;
    let replace = ctx.flag("replace")?;
    // Opened first, so a restore point whose export is gone changes nothing on the server.
    let import = Import::open(dump)?;
    let target = if all {
        None
    } else {
        Some(match given {
            Some(d) => d,
            None => dump.require("database")?.to_owned(),
        })
    };
    let mut command = conn.command(conn.flavor.client()).arg("--binary-mode");
    if conn.flavor == Flavor::MariaDb {
        // The client echoes a failed statement to stderr before the server's `ERROR nnnn`
        // line: a multi-megabyte INSERT fills the host's cap on stderr, and the reason is cut
        // off. `--loose-`: clients from before the option (2024) only warn about it.
        command = command.arg("--loose-skip-print-query-on-error");
    }
    let mut created = false;
    match &target {
        Some(db) => {
            let quoted = identifier(db)?;
            let exists = conn.query(&format!(
                "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{db}';\n"
            ))?;
            let tables = conn.query(&format!(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{db}';\n"
            ))?;
            let tables: u64 = tables.parse().map_err(|_| {
                Error::failed(format!("counting tables: the server answered {tables:?}"))
            })?;
            if tables > 0 {
                refuse_unless_replace(
                    &format!(
                        "database `{db}` on the server at {} already holds {tables} tables",
                        conn.at()
                    ),
                    replace,
                )?;
            }
            // With the backed-up database's character set and collation (names only: they
            // come from the restore point, and go into SQL).
            let name = |v: &str| v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            let defaults = match (dump.get("charset"), dump.get("collation")) {
                (Some(cs), Some(co))
                    if name(cs) && name(co) && !cs.is_empty() && !co.is_empty() =>
                {
                    format!(" CHARACTER SET {cs} COLLATE {co}")
                }
                _ => String::new(),
            };
            match conn.query(&format!(
                "CREATE DATABASE IF NOT EXISTS {quoted}{defaults};\n"
            )) {
                // One this server does not know (MySQL 8's utf8mb4_0900_ai_ci on MariaDB, say):
                // its own default then, said.
                Err(e) if !defaults.is_empty() && e.to_string().contains("Unknown") => {
                    warn!(
                        "this server does not know the backed-up database's{defaults} ({e}); \
                         `{db}` is created with the server's default"
                    );
                    conn.query(&format!("CREATE DATABASE IF NOT EXISTS {quoted};\n"))?;
                }
                made => {
                    made?;
                }
            }
            if exists == "0" {
                checkpoint(CREATED, db)?;
                created = true;
            }
            info!(
                "restoring into database `{db}` at {}{}",
                conn.at(),
                if replace { " (replacing)" } else { "" }
            );
            command = command.arg("--database").arg(db);
        }
        None => {
            let listed = conn.query("SHOW DATABASES;\n")?;
            let user_dbs: Vec<&str> = listed
                .lines()
                .map(str::trim)
                .filter(|d| !d.is_empty() && !SYSTEM_SCHEMAS.contains(d))
                .collect();
            if !user_dbs.is_empty() {
                refuse_unless_replace(
                    &format!(
                        "the server at {} already holds the databases {}",
                        conn.at(),
                        user_dbs.join(", ")
                    ),
                    replace,
                )?;
            }
            info!("restoring every database at {}", conn.at());
        }
    }
    checkpoint(RESTORING, target.as_deref().unwrap_or(ALL_DATABASES))?;
    progress(Progress::percent(0.0).message("restoring"));
    let loaded = import
        .pipe_into(&command)
        .map_err(|e| missing_tool(e, &command, &conn))
        .and_then(|transfer| check(conn.flavor.client(), transfer, &conn));
    let transfer = match (loaded, &target) {
        // It did not exist: whatever failed, it goes again.
        (Err(failure), Some(db)) if created => return Err(undo_create(&conn, db, failure)),
        (loaded, _) => loaded?,
    };
    if all {
        // The dump restored the `mysql` schema's tables, users and grants among them, which the
        // server reads only at startup or on FLUSH PRIVILEGES.
        match conn.query("FLUSH PRIVILEGES;\n") {
            Ok(_) => info!("users and grants restored and in effect (FLUSH PRIVILEGES)"),
            Err(e) => warn!(
                "users and grants were restored but are not in effect until FLUSH PRIVILEGES \
                 or a restart of the server, and running it failed ({e}): run it as a user \
                 that can"
            ),
        }
    }
    checkpoint(RESTORING, DONE)?;
    progress(Progress::percent(100.0).message("restored"));
    info!("restored {} bytes", transfer.bytes);
    Ok(Outputs::new().value("restored-bytes", transfer.bytes))
}

/// Refuses `--param database` for a dump of every database. Such a restore loads every
/// database (and the users and grants) back under their own names, overwriting them with
/// `replace=true`: an operator who meant a copy of one database in `given` would otherwise
/// overwrite the server. `database` has no default, and a backup given one dumps that database
/// alone, so any value here was given for the restore.
fn refuse_database_for_all(given: Option<&str>) -> Result<()> {
    match given {
        Some(given) => Err(Error::invalid(format!(
            "this restore point is a dump of every database (a backup without --param \
             database): it holds every database, user and grant, so --param database={given} \
             does not apply (the restore would load every database under its own name, not \
             one into `{given}`, and with replace=true overwrite them); run the restore \
             without --param database to restore every database, or restore a point of one \
             database (a backup with --param database=NAME) to have it in `{given}`"
        ))),
        None => Ok(()),
    }
}

/// What a restore is loading into, checkpointed before it starts (a database's name, or
/// [`ALL_DATABASES`]) and set to [`DONE`] once finished, for the posthook to say what a
/// restore stopped part way left behind.
const RESTORING: &str = "restoring";
const ALL_DATABASES: &str = "*all databases*";
const DONE: &str = "*done*";
/// The state a failed restore checkpoints once it has dropped the database it created: the
/// server is as it was, and its posthook has nothing to say.
const UNDONE: &str = "*undone*";
/// A database the restore created (it did not exist), checkpointed once created.
const CREATED: &str = "created";

/// How long dropping a database a failed restore created waits for the metadata locks of
/// sessions still in it (the server's default, `lock_wait_timeout`, is a year): the restore's
/// own statement, which the server finishes even after its client is gone.
const DROP_LOCK_WAIT_SECS: u32 = 20;

/// Drops database `db`, which this restore created, after it failed: a failed restore leaves
/// nothing it made, and a database left behind would also make a rerun without replace=true
/// find its target there.
fn drop_created(conn: &Conn, db: &str) -> Result<()> {
    conn.query(&format!(
        "SET SESSION lock_wait_timeout = {DROP_LOCK_WAIT_SECS};\nDROP DATABASE IF EXISTS {};\n",
        identifier(db)?
    ))?;
    Ok(())
}

/// `failure` of a restore into `db`, which it created, once the database is dropped again
/// (and said so), or saying it is left behind.
fn undo_create(conn: &Conn, db: &str, failure: Error) -> Error {
    match drop_created(conn, db) {
        Ok(()) => {
            // Settled: the posthook has nothing to drop or say. Should the checkpoint fail, the
            // posthook finds the database gone.
            checkpoint(RESTORING, UNDONE).ok();
            failure.note(format!(
                "database `{db}`, which this restore created, is dropped again"
            ))
        }
        Err(e) => failure.note(format!(
            "database `{db}`, which this restore created, is left behind partly restored: \
                 dropping it failed ({e}); drop it before restoring again"
        )),
    }
}

/// The restore's posthook: what a restore stopped where it could not say so itself (Ctrl-C,
/// its deadline) left on the server. Such a restore is not one transaction (see the README).
fn restore_posthook(ctx: &Context) -> Result<Outputs> {
    let Some((failure, target)) = ctx.unfinished(RESTORING, &[DONE, UNDONE]) else {
        return Ok(Outputs::new());
    };
    let conn = Conn::from_ctx(ctx);
    let at = conn.as_ref().map(Conn::at).unwrap_or_default();
    if let (Ok(conn), Ok(created)) = (&conn, ctx.value(CREATED))
        && created == target
    {
        match drop_created(conn, target) {
            Ok(()) => {
                warn!(
                    "the restore into database `{target}` at {at} stopped part way ({failure}); \
                     this restore created the database, and it is dropped again: the server is \
                     as it was"
                );
                return Ok(Outputs::new());
            }
            Err(e) => warn!(
                "database `{target}`, which the stopped restore created, could not be dropped \
                 again ({e}); drop it before restoring again"
            ),
        }
    }
    let what = if target == ALL_DATABASES {
        "the server's databases are".to_owned()
    } else {
        format!("database `{target}` is")
    };
    warn!(
        "the restore at {at} stopped part way ({failure}): {what} partly restored (the tables \
         before the stop replaced, the one it stopped on dropped or partly loaded, the rest as \
         they were); run the restore again with replace=true{}",
        if target == ALL_DATABASES {
            ". Until then, neither restart the server nor FLUSH PRIVILEGES: the users and grants \
             on disk may be the dump's, partly"
        } else {
            ""
        }
    );
    Ok(Outputs::new())
}

fn delete(ctx: &Context) -> Result<Outputs> {
    let mut deleted = 0_u32;
    for artifact in ctx.restore_point() {
        if artifact.name() == DUMP {
            data::delete(artifact)?;
            info!("deleted the dump export");
            deleted += 1;
        } else if artifact.name().starts_with(VOLUME_PREFIX) {
            let id = artifact.require("snapshot")?;
            volumes::delete(id)?;
            info!("deleted volume snapshot {id}");
            deleted += 1;
        }
    }
    if deleted == 0 {
        return Err(Error::not_found(
            "the restore point holds no artifact of this blueprint (`dump` or `volume-*`); pass \
             the --output json report of a mysql backup with --from",
        ));
    }
    Ok(Outputs::new().value("deleted", deleted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(password: Option<&str>) -> Conn {
        Conn {
            host: "db.example".into(),
            port: 3307,
            user: "backup".into(),
            password: password.map(Into::into),
            flavor: Flavor::MariaDb,
            workload: "db".into(),
        }
    }

    #[test]
    fn describes_typed_validated_parameters() {
        let d = MySql::describe();
        // Host and port are read through the SDK's validated readers.
        let bad = Context::builder(BACKUP, "default")
            .param("port", 70000)
            .param("host", "db");
        let err = Conn::from_ctx(&bad.build()).err();
        assert!(matches!(err, Some(Error::Invalid(m)) if m.contains("`port`")));
        assert_eq!(d.name(), "mysql");
        for action in [BACKUP_PREHOOK, BACKUP, BACKUP_POSTHOOK, RESTORE, DELETE] {
            assert!(d.has_action(action), "{action}");
        }
        let flavor = d.params().iter().find(|p| p.name() == "flavor");
        assert_eq!(
            flavor.map(Param::allowed_values),
            Some(&["mariadb".to_owned(), "mysql".to_owned()][..])
        );
        assert!(
            d.params()
                .iter()
                .all(|p| !p.name().contains("password") || p.name() == "password-secret"),
            "a password is never a parameter"
        );
    }

    #[test]
    fn flavors_pick_their_programs() {
        assert_eq!(Flavor::parse("mysql").map(Flavor::dump), Ok("mysqldump"));
        assert_eq!(Flavor::parse("mariadb").map(Flavor::client), Ok("mariadb"));
        assert!(matches!(Flavor::parse("oracle"), Err(Error::Invalid(_))));
    }

    #[test]
    fn the_password_travels_in_the_environment_only() {
        let argv = conn(Some("s3cret")).client();
        assert!(argv.argv().iter().all(|a| !a.contains("s3cret")));
        assert_eq!(argv.argv()[1], "--no-defaults");
    }

    #[test]
    fn a_restore_stopped_part_way_is_said_by_its_posthook() {
        let host = cairn_sdk::testing::FakeHost::new();
        let stopped = |target: &str| {
            Context::builder(RESTORE_POSTHOOK, "default")
                .workload("db")
                .phase(RESTORE, Outputs::new().value(RESTORING, target))
                .failure(Error::timed_out("past its deadline"))
                .build()
        };
        host.run::<MySql>(RESTORE_POSTHOOK, &stopped("shop"))
            .expect("the posthook");
        let logs = host.logs();
        assert!(
            logs.iter()
                .any(|(_, l)| l.contains("database `shop` is partly restored")),
            "{logs:?}"
        );
        host.run::<MySql>(RESTORE_POSTHOOK, &stopped(DONE))
            .expect("the posthook");
        assert_eq!(host.logs().len(), logs.len());
    }

    #[test]
    fn identifiers_with_quotes_are_refused() {
        assert_eq!(identifier("shop_2"), Ok("`shop_2`".to_owned()));
        for bad in ["", "-x", "a`b", "a'b", "a\\b", "a\nb"] {
            assert!(matches!(identifier(bad), Err(Error::Invalid(_))), "{bad:?}");
        }
    }

    #[test]
    fn diagnoses_common_failures_in_one_line() {
        let cases = [
            (
                Some("x"),
                "mariadb-dump: Got error: 1045: \"Access denied for user 'backup'@'localhost' (using password: YES)\" when trying to connect\n",
                "refused the credentials of user `backup`",
            ),
            (
                None,
                "ERROR 1045 (28000): Access denied for user 'backup'@'localhost' (using password: NO)\n",
                "--grant secrets",
            ),
            (
                Some("x"),
                "ERROR 1044 (42000) at line 1: Access denied for user 'lim'@'%' to database 'shop'\n",
                "user `backup` at db.example:3307 lacks a privilege this needs: ERROR 1044",
            ),
            (
                Some("x"),
                "ERROR 2002 (HY000): Can't connect to server on 'db.example' (115)\n",
                "cannot connect to the server at db.example:3307: ERROR 2002 (HY000): Can't connect",
            ),
            (
                Some("x"),
                "mariadb-dump: Got error: 1049: \"Unknown database 'nope'\" when selecting the database\n",
                "database `nope` does not exist",
            ),
            (
                Some("x"),
                "--------------\nDROP TABLE t\n--------------\n\nERROR 1142 (42000) at line 1: DROP command denied\n",
                "exited with 1 (server at db.example:3307): ERROR 1142 (42000) at line 1: DROP command denied",
            ),
            // Restore QA finding 7: the echoed statement (holding `error` in its data) is not
            // the reason; the server's line after it is.
            (
                Some("x"),
                "Warning: mariadb: unknown option '--loose-skip-print-query-on-error'\n\
                 --------------\nINSERT INTO `bigb` VALUES (1,'an error log')\n--------------\n\n\
                 ERROR 1153 (08S01) at line 41: Got a packet bigger than 'max_allowed_packet' bytes\n",
                "(server at db.example:3307): ERROR 1153 (08S01) at line 41: Got a packet bigger",
            ),
            (
                Some("x"),
                "ERROR 2006 (HY000) at line 39: Server has gone away\n",
                "Server has gone away; the server closed the connection: if it is still up, the \
                 usual cause is a statement (a large row) over its max_allowed_packet",
            ),
        ];
        for (password, stderr, expected) in cases {
            let e = diagnose("mariadb", 1, stderr.as_bytes(), &conn(password));
            assert!(e.message().contains(expected), "{e} lacks {expected:?}");
            assert!(!e.message().contains('\n'), "{e:?} is not one line");
        }
    }

    #[test]
    fn a_statement_echo_cut_at_the_cap_is_not_the_reason() {
        // The host keeps the head of stderr: an echo longer than its cap has no end, nor the
        // server's line after it. Then no reason is better than the statement.
        let cut = "--------------\nINSERT INTO `bigb` VALUES (0x0102";
        assert_eq!(why(cut), "");
        assert_eq!(
            why("mariadb-dump: Got error: 2013: \"Lost connection\" when dumping\n"),
            "Got error: 2013: \"Lost connection\" when dumping"
        );
    }

    #[test]
    fn a_missing_program_names_the_package() {
        let e = missing_tool(
            Error::not_found(
                "running `mariadb-dump`: program \"mariadb-dump\" not found; it is not on PATH (/bin)",
            ),
            &Command::new(["mariadb-dump"]),
            &conn(None),
        );
        assert!(
            matches!(&e, Error::NotFound(m) if m.contains("mariadb-client") && m.contains("workload db")),
            "{e}"
        );
    }

    #[test]
    fn hooks_do_nothing_without_quiesce() {
        let ctx = Context::builder(BACKUP_PREHOOK, "default")
            .param("quiesce", false)
            .build();
        assert_eq!(MySql::run(BACKUP_PREHOOK, &ctx), Ok(Outputs::new()));
        assert_eq!(MySql::run(BACKUP_POSTHOOK, &ctx), Ok(Outputs::new()));
    }

    #[test]
    fn a_dump_of_every_database_refuses_a_database_parameter() {
        let refused = refuse_database_for_all(Some("foo"));
        assert!(
            matches!(&refused, Err(Error::Invalid(m))
                if m.contains("every database") && m.contains("database=foo does not apply")),
            "{refused:?}"
        );
        assert_eq!(refuse_database_for_all(None), Ok(()));
        // Through the action: refused before anything opens or connects.
        let ctx = Context::builder(RESTORE, "default")
            .workload("db")
            .param("database", "foo")
            .param("replace", true)
            .restore_artifact(Artifact::new(DUMP).value("scope", "all"))
            .build();
        assert!(matches!(
            MySql::run(RESTORE, &ctx),
            Err(Error::Invalid(m)) if m.contains("every database")
        ));
    }

    #[test]
    fn refuses_unknown_actions_and_restores_without_a_dump() {
        let ctx = Context::builder("frobnicate", "default").build();
        assert!(matches!(
            MySql::run("frobnicate", &ctx),
            Err(Error::Invalid(_))
        ));
        let ctx = Context::builder(RESTORE, "default").workload("db").build();
        assert!(matches!(MySql::run(RESTORE, &ctx), Err(Error::NotFound(_))));
    }
}
