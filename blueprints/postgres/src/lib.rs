//! Run with
//!
//! ```text
//! cargo build --release --target wasm32-wasip2 -p postgres
//! cairn run target/wasm32-wasip2/release/postgres.wasm --action backup \
//!     --target local:inventory.yaml --workload db \
//!     --param database=shop --param user=backup \
//!     --grant exec,export,secrets --secret password=env:PGPASSWORD --output json > backup.json
//! cairn run target/wasm32-wasip2/release/postgres.wasm --action restore --from backup.json \
//!     --target local:inventory.yaml --workload db --param user=backup \
//!     --grant exec,import,secrets --secret password=env:PGPASSWORD
//! ```
//!
//! and expect the backup's artifact `dump` (the repository snapshot of the dump, with the
//! database, the mode, the format and the server version) on stdout, and the restore to load
//! it back with `psql`.
//!
//! PostgreSQL, backed up logically: `pg_dump` of one database (`mode=database`; a plain SQL
//! script by default, or `-Fc -Z0` with `format=custom`) or `pg_dumpall` of the whole cluster
//! (`mode=cluster`), streamed on the host side straight into the export repository (which
//! compresses and deduplicates, so the dump's own compression is off). The restore pipes the
//! dump back into `psql` (or `pg_restore` for a custom dump), and refuses a target that
//! already holds tables unless `replace=true`; a database restore runs in one transaction, so
//! one that fails changes nothing.
//!
//! With `quiesce=true` the backup is bracketed by `pg_backup_start` (prehook) and
//! `pg_backup_stop` (posthook) in one `psql` session that the host holds open across the
//! phases, and the backup phase also snapshots the workload's volumes while the server is in
//! backup mode; the start and stop LSNs are recorded. The posthook runs even when the backup
//! fails or times out, and the host kills the session at the end of the run if the posthook
//! could not end it, which ends backup mode too. A prehook that stops inside `pg_backup_start`
//! checkpointed its session's backend pid first, and the posthook terminates that backend.
//!
//! Dumps are tagged `app=postgres`, `mode=…` and `database=…` in the repository.
//!
//! The password comes only from a granted secret (`--secret password=…`, renamed with
//! `password-secret`) and reaches the tools as `PGPASSWORD`; it is never a parameter.

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

/// What a restore is changing, checkpointed before it starts to and set to `done` once
/// finished, for the posthook to say what a restore stopped part way left behind:
/// `atomic:DB` (one transaction), `database:DB` (not), `cluster`.
const RESTORING: &str = "restoring";
/// A database the restore created (it did not exist), checkpointed once created.
const CREATED: &str = "created";
/// The state a failed restore checkpoints once it has dropped the database it created: the
/// server is as it was, and its posthook has nothing to say.
const UNDONE: &str = "undone";

/// Artifacts of volume snapshots are named `volume-<volume>`.
const VOLUME_PREFIX: &str = "volume-";

/// The session that holds backup mode from the prehook to the posthook.
const SESSION: &str = "postgres-backup-mode";

/// The value the prehook checkpoints right before `pg_backup_start`: the backup-mode session's
/// backend pid. When the posthook sees it but the prehook did not complete (it failed or timed
/// out inside `pg_backup_start`), backup mode may be on or starting, and the posthook ends it
/// by terminating that backend.
const BACKUP_MODE: &str = "backup-mode-pid";

/// `application_name` of every connection this blueprint opens, so an operator (or a test) can
/// find them in `pg_stat_activity`.
const APPLICATION_NAME: &str = "cairn";

/// How long a connection attempt may take before the tool gives up (`PGCONNECT_TIMEOUT`).
const CONNECT_TIMEOUT_SECS: u32 = 10;

/// The database tools connect to for cluster-wide statements (`CREATE DATABASE`, listing
/// databases, a `pg_dumpall` restore).
const MAINTENANCE_DB: &str = "postgres";

/// `psql` running a dump read from stdin: no `.psqlrc`, quiet, query results discarded.
const PSQL_SCRIPT: [&str; 6] = ["psql", "--no-password", "-X", "-q", "-o", "/dev/null"];

/// The databases a fresh cluster has; a cluster restore is refused when there are others.
const SYSTEM_DATABASES: [&str; 3] = ["postgres", "template0", "template1"];

/// Lines `psql` prints after a query, so a session read stops at a known place.
const READY_MARK: &str = "cairn-ready";
const MARK: &str = "cairn-mark";
const DONE_MARK: &str = "cairn-done";

/// What the backup dumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One database, `pg_dump`.
    Database,
    /// Every database, role and tablespace, `pg_dumpall` (plain SQL).
    Cluster,
}

impl Mode {
    const ALL: [(&'static str, Self); 2] =
        [("database", Self::Database), ("cluster", Self::Cluster)];

    fn parse(text: &str) -> Result<Self> {
        choose("mode", text, &Self::ALL)
    }

    fn as_str(self) -> &'static str {
        name_of(self, &Self::ALL)
    }
}

/// The format of a one-database dump, recorded in its artifact; a cluster dump is always plain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `pg_dump --format=custom --compress=0`, loaded by `pg_restore`.
    Custom,
    /// `pg_dump --format=plain --clean --if-exists`, an SQL script loaded by `psql`.
    Plain,
}

impl Format {
    const ALL: [(&'static str, Self); 2] = [("plain", Self::Plain), ("custom", Self::Custom)];

    fn parse(text: &str) -> Result<Self> {
        choose("format", text, &Self::ALL)
    }

    fn as_str(self) -> &'static str {
        name_of(self, &Self::ALL)
    }
}

/// `text` as one of `choices`, or an error naming the parameter and what it may be.
fn choose<T: Copy>(param: &str, text: &str, choices: &[(&'static str, T)]) -> Result<T> {
    choices
        .iter()
        .find(|(name, _)| *name == text)
        .map(|&(_, value)| value)
        .ok_or_else(|| {
            Error::invalid(format!(
                "{param} {text:?} is not one of {}",
                names(choices).join(", ")
            ))
        })
}

/// The name of `value` among `choices`.
fn name_of<T: Copy + PartialEq>(value: T, choices: &[(&'static str, T)]) -> &'static str {
    choices
        .iter()
        .find(|(_, v)| *v == value)
        .map_or("", |(name, _)| name)
}

/// The names of `choices`, for `describe()`.
fn names<T>(choices: &[(&'static str, T)]) -> Vec<&'static str> {
    choices.iter().map(|(name, _)| *name).collect()
}

struct Postgres;

impl Blueprint for Postgres {
    fn describe() -> Description {
        Description::new("postgres", env!("CARGO_PKG_VERSION"))
            .describe(
                "PostgreSQL: pg_dump/pg_dumpall streamed into the export repository, restored \
                 with pg_restore/psql; optionally bracketed by pg_backup_start/pg_backup_stop \
                 around a volume snapshot",
            )
            .action(
                BACKUP_PREHOOK,
                "With quiesce=true: open a psql session and start backup mode (pg_backup_start)",
            )
            .action(
                BACKUP,
                "Dump the database (or the cluster) into an export; with quiesce=true also \
                 snapshot the workload's volumes",
            )
            .action(
                BACKUP_POSTHOOK,
                "With quiesce=true: stop backup mode (pg_backup_stop) and close the session",
            )
            .action(
                RESTORE,
                "Load a dump back with pg_restore (or psql for a cluster dump)",
            )
            .action(
                RESTORE_POSTHOOK,
                "After a restore that stopped part way (interrupted, past its deadline): say \
                 what state it left the server in",
            )
            .action(DELETE, "Remove a backup's dump and volume snapshots")
            .param(Param::host("host"))
            .param(Param::port("port", 5432))
            .param(
                Param::text("user")
                    .default("postgres")
                    .describe("Role to connect as"),
            )
            .param(Param::text("database").describe(
                "Database to dump (mode=database) or to restore into; default `postgres` for a \
                 backup and the backed-up database for a restore",
            ))
            .param(
                Param::text("mode")
                    .default("database")
                    .choices(names(&Mode::ALL))
                    .describe(
                        "database: pg_dump of one database; cluster: pg_dumpall of every \
                         database and role",
                    ),
            )
            .param(
                Param::text("format")
                    .default("plain")
                    .choices(names(&Format::ALL))
                    .describe(
                        "With mode=database: plain, an SQL script with DROP IF EXISTS loaded by \
                         psql (the faster restore); custom, pg_dump -Fc loaded by pg_restore \
                         (which can also restore single tables by hand)",
                    ),
            )
            .param(Param::flag("quiesce").default(false).describe(
                "Hold backup mode (pg_backup_start/pg_backup_stop) from the prehook to the \
                 posthook and snapshot the workload's volumes inside it",
            ))
            .param(Param::replace().describe(
                "Restore into a database that already holds tables, dropping what the dump \
                 recreates (DROP IF EXISTS)",
            ))
            .param(Param::flag("single-transaction").default(true).describe(
                "Restore a database in one transaction, so a restore that fails changes \
                 nothing (with replace=true: drops nothing); turn off only for a schema with \
                 more objects than the server's lock table holds (max_locks_per_transaction)",
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

cairn_sdk::export!(Postgres);

/// Where the tools connect, and as whom.
#[derive(Debug, Clone)]
struct Conn {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    /// The workload, for messages.
    workload: String,
    /// `application_name` of the tools' sessions: [`APPLICATION_NAME`], or a restore's own.
    app: String,
}

impl Conn {
    fn from_ctx(ctx: &Context) -> Result<Self> {
        Ok(Self {
            host: ctx.host("host")?.to_owned(),
            port: ctx.port("port")?,
            user: ctx.text("user")?.to_owned(),
            password: password(ctx)?,
            workload: ctx.workload().unwrap_or("the target workload").to_owned(),
            app: APPLICATION_NAME.to_owned(),
        })
    }

    /// The connection of a restore (and of its posthook): its sessions carry the run's own
    /// `application_name`, `cairn/restore/<run>`, so that a restore stopped part way has its
    /// sessions ended, and only those (a backup of the same server running beside it is not
    /// touched).
    fn for_restore(self, ctx: &Context) -> Self {
        Self {
            app: format!("{APPLICATION_NAME}/restore/{}", ctx.action_id()),
            ..self
        }
    }

    /// `host:port`, for messages.
    fn at(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// A command with the connection in its environment (`PGHOST`, `PGPORT`, `PGUSER`,
    /// `PGDATABASE`, `PGPASSWORD`).
    fn command<I>(&self, database: &str, argv: I) -> Command
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let command = Command::new(argv)
            .env("PGHOST", &self.host)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", &self.user)
            .env("PGDATABASE", database)
            .env("PGAPPNAME", &self.app)
            .env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT_SECS.to_string());
        match &self.password {
            Some(p) => command.env("PGPASSWORD", p),
            None => command,
        }
    }

    /// `psql` reading a script from stdin: no `.psqlrc`, unaligned tuples only, stop at the
    /// first error. `vars` become `-v name=value`, quoted in the script as `:"name"` or
    /// `:'name'`, so names from parameters never need escaping here.
    fn psql(&self, database: &str, vars: &[(&str, &str)]) -> Command {
        let mut argv = vec![
            "psql".to_owned(),
            "--no-password".into(),
            "-X".into(),
            "-q".into(),
            "-A".into(),
            "-t".into(),
            "-v".into(),
            "ON_ERROR_STOP=1".into(),
        ];
        for (k, v) in vars {
            argv.push("-v".into());
            argv.push(format!("{k}={v}"));
        }
        self.command(database, argv)
    }

    /// Runs `script` with `psql` in `database` and returns its trimmed stdout.
    fn query(&self, database: &str, vars: &[(&str, &str)], script: &str) -> Result<String> {
        let out = run(&self.psql(database, vars).stdin(script), self)?;
        if !out.success() {
            return Err(diagnose("psql", out.exit_code, &out.stderr, self, database));
        }
        Ok(out.stdout_str().trim().to_owned())
    }
}

/// The password from the granted secret, if any. A run without it connects without one (trust
/// or peer authentication); when the server then asks for one, the error says how to grant it.
fn password(ctx: &Context) -> Result<Option<String>> {
    secrets::get_optional(ctx.text("password-secret")?)
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
            "`{program}` is missing from workload {}: install the PostgreSQL client tools \
             (Debian package postgresql-client) there or put them on its PATH ({m})",
            conn.workload
        )),
        other => other,
    }
}

/// One line saying why a PostgreSQL tool failed, naming the cause and what to do.
fn diagnose(tool: &str, exit_code: i32, stderr: &[u8], conn: &Conn, database: &str) -> Error {
    let text = String::from_utf8_lossy(stderr);
    let at = conn.at();
    let user = &conn.user;
    if text.contains("password authentication failed") {
        return Error::denied(format!(
            "PostgreSQL at {at} refused the password of user `{user}`: check the secret granted \
             as --secret password=…"
        ));
    }
    if text.contains("no password supplied") {
        return Error::denied(format!(
            "PostgreSQL at {at} wants a password for user `{user}` and none was granted: pass \
             it with --secret password=env:VAR --grant secrets"
        ));
    }
    if text.contains(&format!("database \"{database}\" does not exist")) {
        return Error::not_found(format!(
            "database `{database}` does not exist on PostgreSQL at {at}; create it or name \
             another with --param database=NAME"
        ));
    }
    if text.contains(&format!("role \"{user}\" does not exist")) {
        return Error::not_found(format!(
            "role `{user}` does not exist on PostgreSQL at {at}; name another with --param user=NAME"
        ));
    }
    let unreachable = [
        "Connection refused",
        "could not connect",
        "timeout expired",
        "could not translate host name",
        "No route to host",
        "Is the server running",
    ];
    if unreachable.iter().any(|m| text.contains(m)) {
        return Error::failed(format!(
            "cannot connect to PostgreSQL at {at}: {}; is the server running, and are \
             --param host and port right?",
            first_line(&text, &["failed:", "error:"])
        ));
    }
    let why = first_line(&text, &["ERROR:", "FATAL:", "error:"]);
    if why.is_empty() {
        Error::failed(format!(
            "`{tool}` exited with {exit_code} (PostgreSQL at {at})"
        ))
    } else {
        Error::failed(format!(
            "`{tool}` exited with {exit_code} (PostgreSQL at {at}): {why}"
        ))
    }
}

/// The most telling line of a tool's stderr: the first holding one of `markers`, from the
/// last marker on (so `psql: error: connection … failed: FATAL: x` gives `FATAL: x`), else the
/// first non-empty line; one line, trimmed.
fn first_line(text: &str, markers: &[&str]) -> String {
    let line = text
        .lines()
        .find(|l| markers.iter().any(|m| l.contains(m)))
        .or_else(|| text.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("");
    let from = markers
        .iter()
        .filter_map(|m| line.rfind(m).map(|i| i + m.len()))
        .max()
        .unwrap_or(0);
    line[from..].trim().to_owned()
}

/// `transfer` when `tool` succeeded and, restoring, took the whole dump (a tool that exits 0
/// halfway through its input has restored part of it); otherwise the failure diagnosed.
fn check(tool: &str, transfer: Transfer, conn: &Conn, database: &str) -> Result<Transfer> {
    if transfer.success() {
        transfer.ok()
    } else {
        Err(diagnose(
            tool,
            transfer.exit_code,
            &transfer.stderr,
            conn,
            database,
        ))
    }
}

/// The `database` tag of a dump, unless the name cannot be a tag value (it holds `=` or `,`):
/// then the dump goes untagged by database, which a log line says.
fn database_tag(database: &str) -> Option<(&'static str, &str)> {
    if data::is_tag_value(database) {
        Some(("database", database))
    } else {
        warn!("database name {database:?} cannot be a tag value; the dump is not tagged with it");
        None
    }
}

/// The server's version, which also proves the connection, the credentials and the database.
fn server_version(conn: &Conn, database: &str) -> Result<String> {
    conn.query(database, &[], "SHOW server_version;\n")
}

fn backup(ctx: &Context) -> Result<Outputs> {
    let conn = Conn::from_ctx(ctx)?;
    let mode = Mode::parse(ctx.text("mode")?)?;
    let format = match mode {
        Mode::Database => Format::parse(ctx.text("format")?)?,
        Mode::Cluster => Format::Plain,
    };
    let database = ctx
        .param::<Option<String>>("database")?
        .unwrap_or_else(|| MAINTENANCE_DB.to_owned());
    let version = server_version(&conn, &database)?;
    // pg_dump writes a plain dump's large objects inside a transaction of their own, whose
    // COMMIT would end a restore's one transaction half way: counted, before and after the
    // dump, so a restore knows.
    let large_objects = || -> Result<u64> {
        let n = conn.query(
            &database,
            &[],
            "SELECT count(*) FROM pg_catalog.pg_largeobject_metadata;\n",
        )?;
        n.parse()
            .map_err(|_| Error::failed(format!("counting large objects: psql answered {n:?}")))
    };
    let plain_objects = match (mode, format) {
        (Mode::Database, Format::Plain) => large_objects()?,
        _ => 0,
    };
    info!(
        "PostgreSQL {version} at {}: dumping {}",
        conn.at(),
        match mode {
            Mode::Database => format!("database `{database}`"),
            Mode::Cluster => "the whole cluster".to_owned(),
        }
    );
    progress(Progress::percent(0.0).message("dumping"));

    let (tool, command) = match mode {
        Mode::Database => {
            // A plain dump drops what it recreates (if it exists), so it restores into an
            // empty database and, with replace=true, over one that holds tables.
            let options: &[&str] = match format {
                Format::Custom => &["--format=custom", "--compress=0"],
                Format::Plain => &["--format=plain", "--clean", "--if-exists"],
            };
            let argv = ["pg_dump", "--no-password"].iter().chain(options);
            (
                "pg_dump",
                conn.command(&database, argv.copied())
                    .args(["--dbname", &dbname_conninfo(&database)]),
            )
        }
        Mode::Cluster => (
            "pg_dumpall",
            conn.command(&database, ["pg_dumpall", "--no-password", "--database"])
                .arg(dbname_conninfo(&database)),
        ),
    };
    // What a user filters restore points by: `cairn repo snapshots --tag database=shop`.
    let mut tags = vec![("app", "postgres"), ("mode", mode.as_str())];
    if mode == Mode::Database {
        tags.extend(database_tag(&database));
    }
    let export = Export::open_tagged(DUMP, tags)?;
    let transfer = export
        .pipe_from(&command)
        .map_err(|e| missing_tool(e, &command, &conn))?;
    // A failed dump is never finished: dropping the export discards it.
    let transfer = check(tool, transfer, &conn, &database)?;
    if transfer.bytes == 0 {
        return Err(Error::failed(format!(
            "`{tool}` exited with 0 but wrote nothing; the dump is discarded"
        )));
    }
    let plain_objects = match (mode, format) {
        (Mode::Database, Format::Plain) => plain_objects.max(large_objects()?),
        _ => 0,
    };
    if plain_objects > 0 {
        warn!(
            "database `{database}` holds {plain_objects} large objects, which a plain dump keeps \
             in a transaction of their own: this dump cannot be restored in one transaction \
             (back up with --param format=custom for that)"
        );
    }
    let mut artifact = export
        .finish()?
        .value("database", &database)
        .value("mode", mode.as_str())
        .value("format", format.as_str())
        .value("server-version", &version)
        .value("dump-bytes", transfer.bytes);
    if format == Format::Plain && mode == Mode::Database {
        artifact = artifact.value("large-objects", plain_objects);
    }
    progress(Progress::bytes(transfer.bytes, Some(transfer.bytes)).message("dumped"));
    info!("dumped {} bytes with {tool}", transfer.bytes);

    let mut outputs = Outputs::new()
        .artifact(artifact)
        .value("server-version", &version);
    if ctx.flag("quiesce")? {
        outputs = snapshot_in_backup_mode(ctx, outputs)?;
    }
    Ok(outputs)
}

/// Snapshots the workload's volumes while the prehook's session holds backup mode, and
/// records the WAL position right before the snapshot.
fn snapshot_in_backup_mode(ctx: &Context, mut outputs: Outputs) -> Result<Outputs> {
    let start = ctx.value("start-lsn").map_err(|_| {
        Error::failed("quiesce=true but the prehook recorded no start LSN; backup mode is not on")
    })?;
    // The session must still be in backup mode: a send fails if its psql has exited.
    let mark = Session::attach(SESSION)
        .send(
            &format!("SELECT pg_current_wal_lsn();\n\\echo {MARK}\n"),
            MARK,
        )
        .map_err(|e| e.context("checking that backup mode still holds"))?;
    let mark = mark.trim();
    let snapshots = volumes::snapshot(None, &[])?;
    if snapshots.is_empty() {
        info!("the workload has no volumes; backup mode bracketed the dump only");
    }
    for snap in &snapshots {
        info!(
            "snapshotted volume {} ({} bytes) as {}",
            snap.volume, snap.bytes, snap.id
        );
        outputs = outputs.artifact(
            Artifact::new(format!("{VOLUME_PREFIX}{}", snap.volume))
                .value("snapshot", &snap.id)
                .value("volume", &snap.volume)
                .value("bytes", snap.bytes)
                .value("start-lsn", start)
                .value("snapshot-lsn", mark),
        );
    }
    Ok(outputs
        .value("start-lsn", start)
        .value("snapshot-lsn", mark))
}

fn prehook(ctx: &Context) -> Result<Outputs> {
    if !ctx.flag("quiesce")? {
        return Ok(Outputs::new());
    }
    let conn = Conn::from_ctx(ctx)?;
    // Fail with a clear reason (credentials, server down, …) before opening the session.
    server_version(&conn, MAINTENANCE_DB)?;
    let psql = conn.psql(MAINTENANCE_DB, &[]);
    let session = Session::open(SESSION, &psql).map_err(|e| missing_tool(e, &psql, &conn))?;
    let label = format!("cairn-{}", ctx.action_id());
    let pid = session
        .send(&format!("SELECT pg_backend_pid();\n\\echo {MARK}\n"), MARK)
        .map_err(|e| e.context("reading the backup-mode session's backend pid"))?;
    let pid: u32 = pid.trim().parse().map_err(|_| {
        Error::failed(format!(
            "the backup-mode session answered {:?}, not a backend pid",
            pid.trim()
        ))
    })?;
    // Before starting it: a prehook that times out inside pg_backup_start leaves backup mode
    // on, and this tells the posthook which backend holds it.
    checkpoint(BACKUP_MODE, pid)?;
    let start = session
        .send(
            &format!("SELECT pg_backup_start('{label}', true);\n\\echo {READY_MARK}\n"),
            READY_MARK,
        )
        .map_err(|e| e.context("starting backup mode (pg_backup_start)"))?;
    let start = start.trim().to_owned();
    info!("backup mode started at LSN {start}; the session holds it until the posthook");
    Ok(Outputs::new().value("start-lsn", start))
}

fn posthook(ctx: &Context) -> Result<Outputs> {
    if !ctx.flag("quiesce")? {
        return Ok(Outputs::new());
    }
    let Ok(pid) = ctx.value(BACKUP_MODE) else {
        info!("the prehook did not start backup mode; nothing to stop");
        return Ok(Outputs::new());
    };
    if ctx.phase(BACKUP_PREHOOK).is_none() {
        return terminate_backup_session(ctx, pid);
    }
    if let Some(failure) = ctx.failure() {
        warn!("stopping backup mode after the backup failed: {failure}");
    }
    let session = Session::attach(SESSION);
    // pg_backup_stop returns the stop LSN and the backup label; the label is needed to start a
    // server from the snapshot, so it is recorded (hex: psql prints it on one line).
    let stopped = session
        .send(
            &format!(
                "SELECT lsn || ' ' || encode(convert_to(labelfile, 'UTF8'), 'hex') \
                 FROM pg_backup_stop(true);\n\\echo {DONE_MARK}\n"
            ),
            DONE_MARK,
        )
        .map_err(|e| e.context("stopping backup mode (pg_backup_stop)"))?;
    let (stop, label) = stopped.trim().split_once(' ').ok_or_else(|| {
        Error::failed(format!(
            "pg_backup_stop answered {:?}, not an LSN and a backup label",
            stopped.trim()
        ))
    })?;
    let closed = session.close()?;
    if !closed.success() {
        warn!(
            "the backup-mode session exited with {}: {}",
            closed.exit_code,
            closed.stderr_str().trim()
        );
    }
    info!("backup mode stopped at LSN {stop}");
    Ok(Outputs::new()
        .value("stop-lsn", stop)
        .value("backup-label-hex", label))
}

/// Ends the backup mode of a prehook that stopped while starting it: a `pg_backup_stop` sent
/// to its session would queue behind the pending `pg_backup_start`, so the session's backend is
/// terminated from another connection, which aborts its backup.
fn terminate_backup_session(ctx: &Context, pid: &str) -> Result<Outputs> {
    let pid: u32 = pid.parse().map_err(|_| {
        Error::failed(format!(
            "the prehook checkpointed {BACKUP_MODE}={pid:?}, not a backend pid"
        ))
    })?;
    warn!("the prehook stopped while starting backup mode; terminating its backend {pid}");
    let conn = Conn::from_ctx(ctx)?;
    let pid = pid.to_string();
    let ended = conn.query(
        MAINTENANCE_DB,
        &[("pid", &pid)],
        "SELECT pg_terminate_backend(:'pid'::int, 10000);\n",
    )?;
    // `f`: the backend was gone already, and its backup mode with it.
    info!("backend {pid} ended (pg_terminate_backend: {ended}); backup mode is off");
    Ok(Outputs::new().value("backup-mode-ended", "terminated"))
}

fn restore(ctx: &Context) -> Result<Outputs> {
    let dump = ctx.artifact(DUMP)?;
    let mode = Mode::parse(dump.get("mode").unwrap_or("database"))?;
    if mode == Mode::Cluster {
        refuse_database_for_cluster(ctx.param::<Option<String>>("database")?, dump)?;
    }
    let conn = Conn::from_ctx(ctx)?.for_restore(ctx);
    let replace = ctx.flag("replace")?;
    // Opened first, so a restore point whose export is gone changes nothing on the server.
    let import = Import::open(dump)?;
    let transfer = match mode {
        Mode::Database => {
            let database = match ctx.param::<Option<String>>("database")? {
                Some(d) => d,
                None => dump.require("database")?.to_owned(),
            };
            // Restore points from before the format parameter are custom dumps.
            let format = Format::parse(dump.get("format").unwrap_or("custom"))?;
            let atomic = ctx.flag("single-transaction")?;
            let objects = dump
                .get("large-objects")
                .and_then(|n| n.parse::<u64>().ok());
            if atomic && format == Format::Plain && objects.is_some_and(|n| n > 0) {
                return Err(Error::invalid(
                    "this plain dump holds large objects, which pg_dump wrote in a transaction \
                     of their own: its COMMIT would end the restore's one transaction half way, \
                     so a failure after it would leave the database part restored. Restore it \
                     knowingly with --param single-transaction=false, or back up with --param \
                     format=custom, whose restore keeps them in one transaction",
                ));
            }
            restore_database(&conn, &import, &database, format, replace, atomic)?
        }
        Mode::Cluster => restore_cluster(&conn, &import, replace)?,
    };
    checkpoint(RESTORING, "done")?;
    info!("restored {} bytes", transfer.bytes);
    Ok(Outputs::new().value("restored-bytes", transfer.bytes))
}

/// Refuses `--param database` for a cluster dump, unless it names the database the dump was
/// taken through (a policy hands its restores the parameters of its backups). A cluster restore
/// loads every database and role, and with `replace=true` drops the server's databases first:
/// an operator who meant a copy of one database in `given` would otherwise lose the server.
/// `database` has no default, so any value here was given by the run or its policy.
fn refuse_database_for_cluster(given: Option<String>, dump: &Artifact) -> Result<()> {
    match given {
        Some(given) if dump.get("database") != Some(given.as_str()) => {
            Err(Error::invalid(format!(
                "this restore point is a dump of the whole cluster (mode=cluster, pg_dumpall): \
                 it holds every database and role, so --param database={given} does not apply \
                 (the restore would load every database, not one into `{given}`, and with \
                 replace=true drop the server's databases first); run the restore without \
                 --param database to restore the whole cluster, or restore a mode=database \
                 point to have one database in `{given}`"
            )))
        }
        _ => Ok(()),
    }
}

/// The restore's posthook: what a restore stopped where it could not say so itself (Ctrl-C,
/// its deadline) left on the server.
fn restore_posthook(ctx: &Context) -> Result<Outputs> {
    let Some((failure, state)) = ctx.unfinished(RESTORING, &["done", UNDONE]) else {
        return Ok(Outputs::new());
    };
    let conn = Conn::from_ctx(ctx).map(|c| c.for_restore(ctx));
    let at = conn.as_ref().map(Conn::at).unwrap_or_default();
    // A tool the deadline or Ctrl-C stopped leaves its backend running on the server until it
    // next talks to its client, which for one queued for a lock is when the lock comes: ended
    // first, so the application's queries are not held behind it, and the states below hold.
    if let Ok(conn) = &conn {
        say_ended_sessions(conn, end_restore_sessions(conn));
    }
    match state.split_once(':') {
        Some(("atomic", db)) => warn!(
            "the restore into database `{db}` at {at} stopped ({failure}) in its one \
             transaction: unless it had just committed (then it is restored), the server \
             rolled it back and the database is as it was{}",
            match (ctx.value(CREATED), &conn) {
                (Ok(created), Ok(conn)) if created == db => drop_if_empty(conn, db),
                _ => String::new(),
            }
        ),
        Some(("database", db)) => warn!(
            "the restore into database `{db}` at {at} stopped part way ({failure}), not in one \
             transaction: the database is partly restored; run the restore again with \
             replace=true{}",
            match (ctx.value(CREATED), &conn) {
                (Ok(created), Ok(conn)) if created == db => drop_if_empty(conn, db),
                _ => String::new(),
            }
        ),
        _ if state == "cluster" => warn!(
            "the restore of the cluster at {at} stopped part way ({failure}): the databases it \
             replaced are dropped and the dump's partly loaded; run the restore again with \
             replace=true"
        ),
        _ => {}
    }
    Ok(Outputs::new())
}

/// The sessions of this run's restore still on the server, ended: how many, and the sessions
/// (pids) that held a lock one of them was queued for. A tool the deadline or Ctrl-C stopped
/// leaves its backend running until it next talks to its client; one queued for a lock
/// (`DROP TABLE` of a replacing restore waits for every transaction that read the table) holds
/// every later query of the application on that table behind it until the lock comes.
fn end_restore_sessions(conn: &Conn) -> Result<(u64, String)> {
    let app = [("app", conn.app.as_str())];
    let blockers = conn.query(
        MAINTENANCE_DB,
        &app,
        "SELECT coalesce(string_agg(DISTINCT b::text, ', '), '') \
         FROM pg_catalog.pg_stat_activity a, unnest(pg_catalog.pg_blocking_pids(a.pid)) b \
         WHERE a.application_name = :'app' AND a.pid <> pg_catalog.pg_backend_pid();\n",
    )?;
    let ended = conn.query(
        MAINTENANCE_DB,
        &app,
        "SELECT count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(pid, 10000)) \
         FROM pg_catalog.pg_stat_activity \
         WHERE application_name = :'app' AND pid <> pg_catalog.pg_backend_pid();\n",
    )?;
    let ended = ended
        .parse()
        .map_err(|_| Error::failed(format!("ending sessions: psql answered {ended:?}")))?;
    Ok((ended, blockers))
}

/// Says what [`end_restore_sessions`] did: above all that the restore was waiting for a lock,
/// and whose, which the run's own error (a deadline) cannot say.
fn say_ended_sessions(conn: &Conn, ended: Result<(u64, String)>) {
    match ended {
        Ok((0, _)) => {}
        Ok((n, blockers)) if !blockers.is_empty() => warn!(
            "the restore was waiting for a lock held by the session(s) {blockers} at {} (see \
             pg_stat_activity; the application's queries on that table were queued behind \
             it): its {n} session(s) left on the server are ended; end or commit the \
             transactions of those sessions before restoring again",
            conn.at()
        ),
        Ok((n, _)) => info!("ended the restore's {n} session(s) left on the server"),
        Err(e) => warn!(
            "cannot end the restore's sessions left on PostgreSQL at {} ({e}): find them with \
             SELECT pid FROM pg_stat_activity WHERE application_name = '{}', and end them with \
             pg_terminate_backend(pid)",
            conn.at(),
            conn.app
        ),
    }
}

/// Drops database `database`, which this restore created, after it failed: a failed restore
/// changes nothing, and a database left behind would also make a rerun without replace=true
/// find its target there. The restore's own sessions are ended first; another session in it
/// makes the drop fail, which the caller says.
fn drop_created(conn: &Conn, database: &str) -> Result<()> {
    end_restore_sessions(conn)?;
    conn.query(
        MAINTENANCE_DB,
        &[("db", database)],
        "DROP DATABASE IF EXISTS :\"db\";\n",
    )?;
    Ok(())
}

/// For the posthook: drops database `db`, which the stopped restore created, when it holds no
/// tables (its one transaction was rolled back); what became of it, for the message.
fn drop_if_empty(conn: &Conn, db: &str) -> String {
    match count_tables(conn, db) {
        Ok(0) => match drop_created(conn, db) {
            Ok(()) => " (this restore created it, and it is dropped again)".to_owned(),
            Err(e) => format!(" (empty: this restore created it, and dropping it failed: {e})"),
        },
        _ => " (this restore created it)".to_owned(),
    }
}

/// A restore that failed on a role the server lacks (the dump's `ALTER … OWNER TO`, `GRANT`)
/// says how to get the roles: a one-database dump does not hold them.
fn missing_role_hint(error: Error) -> Error {
    let m = error.message();
    if m.contains("role \"") && m.contains("does not exist") {
        error.note(
            "the dump names roles (owners, grantees) this server lacks: create them first \
             (CREATE ROLE), or restore a mode=cluster point, which carries the roles",
        )
    } else {
        error
    }
}

fn restore_database(
    conn: &Conn,
    import: &Import,
    database: &str,
    format: Format,
    replace: bool,
    atomic: bool,
) -> Result<Transfer> {
    let tables = match count_tables(conn, database) {
        Ok(n) => n,
        Err(Error::NotFound(m)) if m.contains("database") => {
            info!("database `{database}` does not exist; creating it");
            conn.query(
                MAINTENANCE_DB,
                &[("db", database)],
                "CREATE DATABASE :\"db\";\n",
            )?;
            checkpoint(CREATED, database)?;
            // Whatever fails from here on, the database goes again: it did not exist.
            return load_database(conn, import, database, format, replace, atomic, 0)
                .map_err(|failure| undo_create(conn, database, failure));
        }
        Err(e) => return Err(e),
    };
    load_database(conn, import, database, format, replace, atomic, tables)
}

/// `failure` of a restore into `database`, which it created, once the database is dropped
/// again (and said so), or saying it is left behind.
fn undo_create(conn: &Conn, database: &str, failure: Error) -> Error {
    match drop_created(conn, database) {
        Ok(()) => {
            // Settled: the posthook has nothing to end, drop or say. Should the checkpoint
            // fail, the posthook finds the database gone and says the restore rolled back.
            checkpoint(RESTORING, UNDONE).ok();
            failure.note(format!(
                "database `{database}`, which this restore created, is dropped again"
            ))
        }
        Err(e) => failure.note(format!(
            "database `{database}`, which this restore created, is left behind: dropping it \
                 failed ({e}); drop it before restoring again"
        )),
    }
}

/// Loads the dump into `database`, which holds `tables` tables.
fn load_database(
    conn: &Conn,
    import: &Import,
    database: &str,
    format: Format,
    replace: bool,
    atomic: bool,
    tables: u64,
) -> Result<Transfer> {
    if tables > 0 {
        refuse_unless_replace(
            &format!(
                "database `{database}` on PostgreSQL at {} already holds {tables} tables",
                conn.at()
            ),
            replace,
        )?;
    }
    let conninfo = dbname_conninfo(database);
    let (tool, mut argv) = match format {
        Format::Custom => {
            let mut argv = vec![
                "pg_restore",
                "--no-password",
                "--exit-on-error",
                "--dbname",
                conninfo.as_str(),
            ];
            if replace {
                argv.extend(["--clean", "--if-exists"]);
            }
            ("pg_restore", argv)
        }
        // The dump drops what it recreates itself (`--clean --if-exists`, at dump time).
        Format::Plain => (
            "psql",
            [&PSQL_SCRIPT[..], &["-v", "ON_ERROR_STOP=1"]].concat(),
        ),
    };
    // pg_restore fails on an archive cut short, and rolls back. psql's own
    // `--single-transaction` commits at the end of its input, wherever that falls: it opens
    // the transaction itself instead, and only the trailer, which the host writes once the
    // whole dump has crossed, commits it. A cut-short input leaves psql at its end inside the
    // transaction, and the server rolls it back when psql leaves.
    let trailer: Option<&[u8]> = match (atomic, format) {
        (false, _) => None,
        (true, Format::Custom) => {
            argv.push("--single-transaction");
            None
        }
        (true, Format::Plain) => {
            argv.extend(["-c", "BEGIN", "-f", "-"]);
            Some(b"\nCOMMIT;\n")
        }
    };
    info!(
        "restoring into database `{database}` at {}{}",
        conn.at(),
        if replace { " (replacing)" } else { "" }
    );
    let kind = if atomic { "atomic" } else { "database" };
    checkpoint(RESTORING, format!("{kind}:{database}"))?;
    progress(Progress::percent(0.0).message("restoring"));
    let command = conn.command(database, argv);
    let transfer = match trailer {
        Some(trailer) => import.pipe_into_with_trailer(&command, trailer),
        None => import.pipe_into(&command),
    }
    .map_err(|e| missing_tool(e, &command, conn))?;
    let transfer = check(tool, transfer, conn, database).map_err(missing_role_hint)?;
    progress(Progress::percent(100.0).message("restored"));
    Ok(transfer)
}

/// Tables in `database` outside the system schemas.
/// `database` as libpq's tools take a database name for certain: a connection string naming it,
/// quoted. Given plainly, a name holding `=` (or starting `postgresql://`) is read as a
/// connection string itself, and names another database.
fn dbname_conninfo(database: &str) -> String {
    format!(
        "dbname='{}'",
        database.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

fn count_tables(conn: &Conn, database: &str) -> Result<u64> {
    let n = conn.query(
        database,
        &[],
        "SELECT count(*) FROM pg_catalog.pg_tables \
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema');\n",
    )?;
    n.parse()
        .map_err(|_| Error::failed(format!("counting tables: psql answered {n:?}")))
}

fn restore_cluster(conn: &Conn, import: &Import, replace: bool) -> Result<Transfer> {
    let listed = conn.query(
        MAINTENANCE_DB,
        &[],
        "SELECT datname FROM pg_catalog.pg_database ORDER BY datname;\n",
    )?;
    let extra: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|d| !d.is_empty() && !SYSTEM_DATABASES.contains(d))
        .collect();
    let tables = count_tables(conn, MAINTENANCE_DB)?;
    if tables > 0 {
        return Err(Error::invalid(format!(
            "the maintenance database `{MAINTENANCE_DB}` on PostgreSQL at {} holds {tables} \
             tables, which a cluster dump would collide with; drop them first",
            conn.at()
        )));
    }
    if !extra.is_empty() {
        refuse_unless_replace(
            &format!(
                "PostgreSQL at {} already holds the databases {} (replace=true drops every one \
                 of them, those the dump does not hold as well, which do not come back)",
                conn.at(),
                extra.join(", ")
            ),
            replace,
        )?;
        checkpoint(RESTORING, "cluster")?;
        for db in &extra {
            info!("dropping database `{db}` (replace=true)");
            conn.query(
                MAINTENANCE_DB,
                &[("db", db)],
                "DROP DATABASE :\"db\" WITH (FORCE);\n",
            )?;
        }
    }
    checkpoint(RESTORING, "cluster")?;
    progress(Progress::percent(0.0).message("restoring the cluster"));
    // Not ON_ERROR_STOP: the dump recreates roles that exist already (at least the one
    // restoring it); those errors are expected, every other one fails the restore.
    let command = conn.command(MAINTENANCE_DB, PSQL_SCRIPT);
    let transfer = import
        .pipe_into(&command)
        .map_err(|e| missing_tool(e, &command, conn))?;
    let transfer = check("psql", transfer, conn, MAINTENANCE_DB)?;
    let stderr = transfer.stderr_str();
    let unexpected = stderr
        .lines()
        .filter(|l| l.contains("ERROR:"))
        .find(|l| !(l.contains("role \"") && l.contains("already exists")));
    if let Some(line) = unexpected {
        let why = first_line(line, &["ERROR:"]);
        return Err(Error::failed(format!(
            "restoring the cluster dump into PostgreSQL at {} failed: {why}",
            conn.at()
        )));
    }
    progress(Progress::percent(100.0).message("restored"));
    Ok(transfer)
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
             the --output json report of a postgres backup with --from",
        ));
    }
    Ok(Outputs::new().value("deleted", deleted))
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_names_reach_libpq_as_names() {
        assert_eq!(dbname_conninfo("shop"), "dbname='shop'");
        assert_eq!(dbname_conninfo("dbname=shop2"), "dbname='dbname=shop2'");
        assert_eq!(dbname_conninfo(r"a'b\c"), r"dbname='a\'b\\c'");
    }

    use super::*;

    fn conn() -> Conn {
        Conn {
            host: "db.example".into(),
            port: 5433,
            user: "backup".into(),
            password: None,
            workload: "db".into(),
            app: APPLICATION_NAME.into(),
        }
    }

    #[test]
    fn describes_typed_validated_parameters() {
        let d = Postgres::describe();
        // Host and port are read through the SDK's validated readers.
        let bad = Context::builder(BACKUP, "default")
            .param("host", "db;reboot")
            .param("port", 1);
        let err = Conn::from_ctx(&bad.build()).err();
        assert!(matches!(err, Some(Error::Invalid(m)) if m.contains("`host`")));
        assert_eq!(d.name(), "postgres");
        for action in [BACKUP_PREHOOK, BACKUP, BACKUP_POSTHOOK, RESTORE, DELETE] {
            assert!(d.has_action(action), "{action}");
        }
        let mode = d.params().iter().find(|p| p.name() == "mode");
        assert_eq!(
            mode.map(Param::allowed_values),
            Some(&["database".to_owned(), "cluster".to_owned()][..])
        );
        assert!(
            d.params()
                .iter()
                .all(|p| !p.name().contains("password") || p.name() == "password-secret"),
            "a password is never a parameter"
        );
    }

    #[test]
    fn choices_round_trip() {
        for (m, _) in Mode::ALL {
            assert_eq!(Mode::parse(m).map(Mode::as_str), Ok(m));
        }
        for (f, _) in Format::ALL {
            assert_eq!(Format::parse(f).map(Format::as_str), Ok(f));
        }
        assert!(matches!(Mode::parse("all"), Err(Error::Invalid(m)) if m.contains("mode \"all\"")));
        assert!(
            matches!(Format::parse("tar"), Err(Error::Invalid(m)) if m.contains("plain, custom"))
        );
    }

    #[test]
    fn diagnoses_common_failures_in_one_line() {
        let c = conn();
        let cases = [
            (
                "pg_dump: error: connection to server at \"db.example\" (10.0.0.1), port 5433 failed: FATAL:  password authentication failed for user \"backup\"\n",
                "refused the password",
            ),
            (
                "psql: error: connection to server at \"db.example\", port 5433 failed: Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?\n",
                "cannot connect to PostgreSQL at db.example:5433: Connection refused",
            ),
            (
                "psql: error: connection to server at \"db.example\", port 5433 failed: FATAL:  database \"shop\" does not exist\n",
                "database `shop` does not exist",
            ),
            (
                "psql: error: connection to server failed: fe_sendauth: no password supplied\n",
                "--secret password=env:VAR",
            ),
            (
                "pg_dump: error: query failed: ERROR:  permission denied for table secrets\n",
                "exited with 1 (PostgreSQL at db.example:5433): permission denied for table secrets",
            ),
        ];
        for (stderr, expected) in cases {
            let e = diagnose("pg_dump", 1, stderr.as_bytes(), &c, "shop");
            assert!(e.message().contains(expected), "{e} lacks {expected:?}");
            assert!(!e.message().contains('\n'), "{e:?} is not one line");
        }
    }

    #[test]
    fn a_missing_program_names_the_package() {
        let e = missing_tool(
            Error::not_found(
                "running `pg_dump`: program \"pg_dump\" not found; it is not on PATH (/bin)",
            ),
            &Command::new(["pg_dump"]),
            &conn(),
        );
        assert!(
            matches!(&e, Error::NotFound(m) if m.contains("postgresql-client") && m.contains("workload db")),
            "{e}"
        );
    }

    #[test]
    fn refuses_unknown_actions() {
        let ctx = Context::builder("frobnicate", "default").build();
        assert!(matches!(
            Postgres::run("frobnicate", &ctx),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn hooks_do_nothing_without_quiesce() {
        let ctx = Context::builder(BACKUP_PREHOOK, "default")
            .param("quiesce", false)
            .build();
        assert_eq!(Postgres::run(BACKUP_PREHOOK, &ctx), Ok(Outputs::new()));
        assert_eq!(Postgres::run(BACKUP_POSTHOOK, &ctx), Ok(Outputs::new()));
    }

    #[test]
    fn a_restore_stopped_part_way_is_said_by_its_posthook() {
        let host = cairn_sdk::testing::FakeHost::new();
        let stopped = |state: &str| {
            Context::builder(RESTORE_POSTHOOK, "default")
                .workload("db")
                .phase(RESTORE, Outputs::new().value(RESTORING, state))
                .failure(Error::timed_out("past its deadline"))
                .build()
        };
        for (state, says) in [
            ("database:shop", "partly restored"),
            ("atomic:shop", "rolled it back"),
            ("cluster", "dropped and the dump's partly loaded"),
        ] {
            host.run::<Postgres>(RESTORE_POSTHOOK, &stopped(state))
                .expect("the posthook");
            let logs = host.logs();
            assert!(
                logs.iter().any(|(_, l)| l.contains(says)),
                "{state}: {logs:?}"
            );
        }
        // Finished, or never started: nothing to say.
        let before = host.logs().len();
        host.run::<Postgres>(RESTORE_POSTHOOK, &stopped("done"))
            .expect("the posthook");
        assert_eq!(host.logs().len(), before);
    }

    #[test]
    fn a_cluster_dump_refuses_a_database_parameter() {
        let dump = Artifact::new(DUMP)
            .value("mode", "cluster")
            .value("database", "postgres");
        let refused = refuse_database_for_cluster(Some("foo".into()), &dump);
        assert!(
            matches!(&refused, Err(Error::Invalid(m))
                if m.contains("whole cluster") && m.contains("database=foo does not apply")),
            "{refused:?}"
        );
        // Absent, or the database the dump was taken through (what its policy passes): fine.
        assert_eq!(refuse_database_for_cluster(None, &dump), Ok(()));
        assert_eq!(
            refuse_database_for_cluster(Some("postgres".into()), &dump),
            Ok(())
        );
        // Through the action: refused before anything opens or connects.
        let ctx = Context::builder(RESTORE, "default")
            .workload("db")
            .param("database", "foo")
            .param("replace", true)
            .restore_artifact(dump)
            .build();
        assert!(matches!(
            Postgres::run(RESTORE, &ctx),
            Err(Error::Invalid(m)) if m.contains("whole cluster")
        ));
    }

    #[test]
    fn restore_needs_the_dump() {
        let ctx = Context::builder(RESTORE, "default").workload("db").build();
        assert!(matches!(
            Postgres::run(RESTORE, &ctx),
            Err(Error::NotFound(_))
        ));
    }
}
