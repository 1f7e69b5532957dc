//! Run with
//!
//! ```text
//! cairn blueprint build blueprints/redis
//! cairn run target/wasm32-wasip2/release/redis.wasm --action backup --output json \
//!     --target local:inventory.yaml --workload redis --param port=6379 \
//!     --grant exec,export > backup.json
//! cairn run target/wasm32-wasip2/release/redis.wasm --action restore --from backup.json \
//!     --target local:inventory.yaml --workload redis --param port=6379 \
//!     --grant exec,import,workloads,scale
//! ```
//!
//! A Redis blueprint: `backup` asks the server for a fresh RDB snapshot (`BGSAVE`), waits
//! until `INFO persistence` shows it finished, and streams the RDB file into an export;
//! `restore` puts an exported RDB in place and restarts the server so it loads it; `delete`
//! removes the export. See `README.md` beside this crate for the inventory and every
//! parameter.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_sdk::data::{self, Export, Import};
use cairn_sdk::exec::Command;
use cairn_sdk::lifecycle::{BACKUP, DELETE, RESTORE, RESTORE_POSTHOOK};
use cairn_sdk::params::{refuse_left_aside, refuse_unless_replace};
use cairn_sdk::{Blueprint, Capability, Context, Description, Error, Outputs, Param, checkpoint};
use cairn_sdk::{Progress, Result, info, progress, secrets, sleep, warn, workloads};

/// The artifact a backup records and a restore or delete reads.
const ARTIFACT: &str = "rdb";

/// The granted secret that holds the password (`--secret password=env:VAR`).
const PASSWORD_SECRET: &str = "password";

/// The pause between two looks at `INFO persistence` while a save runs: short enough that a
/// small dataset's backup takes well under a second, long enough not to flood the server.
const POLL: Duration = Duration::from_millis(100);

/// Suffix of the file a restore streams the RDB into before renaming it into place.
const RESTORE_SUFFIX: &str = ".cairn-restore";
/// The server's own RDB while a restore replaces it, until the server has restarted.
const ASIDE_SUFFIX: &str = ".cairn-old";

/// Checkpoints of a restore, for its posthook to undo one that stopped (interrupted, past its
/// deadline) before it could undo itself: how far it got ([`UNDO_STATE`]: `staging`, `saves-off`,
/// `swapping`, `restarting`, `reverting` (putting the server's own RDB back under a workload
/// scaled to 0, after it did not come back on the restored one), then `undone` or `restarted`,
/// which leave the posthook nothing to do), and what undoing needs, each recorded before the
/// change it undoes.
const UNDO_STATE: &str = "restore-state";
/// The server's RDB path.
const UNDO_RDB: &str = "restore-rdb";
/// The server's save points before the restore turned them off.
const UNDO_SAVES: &str = "restore-saves";
/// Whether the server had an RDB file before the restore (`yes`, `no`).
const UNDO_HAD_RDB: &str = "restore-had-rdb";
/// The server's `run_id` before its restart (empty when it gives none).
const UNDO_RUN_ID: &str = "restore-run-id";
/// The server's log file (empty when it logs to its standard output), for the reason it gives
/// when it does not come back on the restored RDB.
const UNDO_LOG: &str = "restore-log";

/// Lines of the server's log read for the reason it did not start: enough to reach back past
/// the lines a failing start writes after its reason, few enough for one exec's output.
const LOG_TAIL_LINES: u32 = 50;
/// The longest reason quoted from the server's log, so one odd line cannot swamp the error.
const MAX_REASON: usize = 300;

/// Error replies `redis-cli` prints on stdout (it exits 0 after them).
const ERROR_REPLIES: &[&str] = &[
    "ERR",
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
    "LOADING",
    "BUSY",
    "MISCONF",
    "READONLY",
    "MASTERDOWN",
    "WRONGTYPE",
    "EXECABORT",
];

struct Redis;

impl Blueprint for Redis {
    fn describe() -> Description {
        Description::new("redis", env!("CARGO_PKG_VERSION"))
            .describe(
                "Backs up a Redis server as an RDB snapshot (BGSAVE) streamed into an export, \
                 and restores it by putting the RDB in place and restarting the server",
            )
            .action(
                BACKUP,
                "BGSAVE, wait until it finished, and stream the RDB file into an export",
            )
            .action(
                RESTORE,
                "Put the exported RDB in the data directory and restart the server to load it",
            )
            .action(
                RESTORE_POSTHOOK,
                "After a restore that stopped before the server restarted (interrupted, past \
                 its deadline): put the server's own RDB back and its save points on again",
            )
            .action(DELETE, "Remove the exported RDB of a restore point")
            .param(
                Param::host("host")
                    .describe("Host redis-cli connects to, from inside the workload"),
            )
            .param(Param::port("port", 6379).describe("Port redis-cli connects to"))
            .param(
                Param::integer("save-timeout")
                    .default(600)
                    .range(1..)
                    .describe("Seconds to wait for BGSAVE to finish"),
            )
            .param(
                Param::integer("ready-timeout")
                    .default(300)
                    .range(1..)
                    .describe("Seconds to wait for the restarted server to be ready (restore)"),
            )
            .param(
                Param::replace()
                    .describe("Restore over a server that already holds keys, replacing them"),
            )
            .capability(Capability::Exec)
            .capability(Capability::Export)
            .capability(Capability::Import)
            .capability(Capability::Workloads)
            .capability(Capability::Scale)
            .capability(Capability::Secrets)
    }

    fn run(action: &str, ctx: &Context) -> Result<Outputs> {
        match action {
            BACKUP => backup(ctx),
            RESTORE => restore(ctx),
            RESTORE_POSTHOOK => restore_posthook(ctx),
            DELETE => delete(ctx),
            other => Err(Error::unknown_action(other)),
        }
    }
}

cairn_sdk::export!(Redis);

/// How to reach the server with `redis-cli` inside the workload.
#[derive(Debug)]
struct Conn {
    host: String,
    port: u16,
    password: Option<String>,
}

impl Conn {
    fn new(ctx: &Context) -> Result<Self> {
        Ok(Self {
            host: ctx.host("host")?.to_owned(),
            port: ctx.port("port")?,
            password: password()?,
        })
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// `redis-cli -h HOST -p PORT args…`, authenticated through `REDISCLI_AUTH` (never argv).
    fn cli(&self, args: &[&str]) -> Command {
        let mut command = Command::new(["redis-cli", "--no-auth-warning", "-h"])
            .arg(&self.host)
            .arg("-p")
            .arg(self.port.to_string())
            .args(args.iter().copied());
        if let Some(password) = &self.password {
            command = command.env("REDISCLI_AUTH", password);
        }
        command
    }

    /// Runs a command and returns its reply, turning every way it can fail into one clear
    /// error: `redis-cli` exits 0 after an error reply, so the reply is checked too.
    fn query(&self, args: &[&str]) -> Result<String> {
        let what = args.join(" ");
        let out = self.cli(args).run()?;
        let stdout = out.stdout_str().replace('\r', "");
        let stderr = out.stderr_str().trim().to_owned();
        if stderr.contains("AUTH failed") {
            return Err(Error::denied(format!(
                "Redis at {} refused the password from secret `{PASSWORD_SECRET}` ({}); fix the \
                 secret given with --secret {PASSWORD_SECRET}=…",
                self.addr(),
                stderr.lines().last().unwrap_or_default()
            )));
        }
        if !out.success() {
            if stderr.contains("Could not connect") || stderr.contains("Connection refused") {
                return Err(Error::failed(format!(
                    "cannot connect to Redis at {}: {}; is the server running, and are the \
                     `host` and `port` parameters right?",
                    self.addr(),
                    stderr.lines().last().unwrap_or_default()
                )));
            }
            return Err(out
                .ok()
                .err()
                .unwrap_or_else(|| Error::failed(format!("redis-cli {what} failed"))));
        }
        let first = stdout.lines().next().unwrap_or_default();
        let code = first.split(' ').next().unwrap_or_default();
        if code == "NOAUTH" {
            return Err(Error::denied(format!(
                "Redis at {} requires a password: grant it with --grant secrets --secret \
                 {PASSWORD_SECRET}=env:VAR",
                self.addr()
            )));
        }
        if ERROR_REPLIES.contains(&code) {
            return Err(Error::failed(format!(
                "Redis at {} answered `{what}` with: {first}",
                self.addr()
            )));
        }
        Ok(stdout)
    }

    /// `INFO section` as key → value.
    fn info(&self, section: &str) -> Result<BTreeMap<String, String>> {
        let text = self.query(&["INFO", section])?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect())
    }

    /// Keys in every database (`INFO keyspace`).
    fn key_count(&self) -> Result<u64> {
        Ok(count_keys(&self.info("keyspace")?))
    }

    /// The RDB file: `CONFIG GET dir` joined with `CONFIG GET dbfilename`.
    fn rdb_path(&self) -> Result<String> {
        let reply = self.query(&["CONFIG", "GET", "dir"])?;
        let dir = config_value(&reply, "dir")?;
        let reply = self.query(&["CONFIG", "GET", "dbfilename"])?;
        let file = config_value(&reply, "dbfilename")?;
        Ok(format!("{}/{file}", dir.trim_end_matches('/')))
    }

    /// The server's log file, absolute (Redis opens a relative one in its `dir`, where `rdb`
    /// is), or empty when it logs to its standard output.
    fn log_path(&self, rdb: &str) -> Result<String> {
        let reply = self.query(&["CONFIG", "GET", "logfile"])?;
        let file = reply.lines().nth(1).unwrap_or_default();
        Ok(match (file, rdb.rsplit_once('/')) {
            ("", _) => String::new(),
            (file, Some((dir, _))) if !file.starts_with('/') => format!("{dir}/{file}"),
            (file, _) => file.to_owned(),
        })
    }
}

/// The password from the granted secret, if any. Without the `secrets` grant there is none:
/// a server that needs one then answers NOAUTH, and [`Conn::query`] says how to grant it.
fn password() -> Result<Option<String>> {
    secrets::get_optional(PASSWORD_SECRET)
}

/// The value of `name` in a `CONFIG GET name` reply (`name\nvalue\n`).
fn config_value(reply: &str, name: &str) -> Result<String> {
    let mut lines = reply.lines();
    match (lines.next(), lines.next()) {
        (Some(key), Some(value)) if key == name && !value.is_empty() => Ok(value.to_owned()),
        _ => Err(Error::failed(format!(
            "CONFIG GET {name} returned no value ({:?}); is CONFIG renamed or denied to this user?",
            reply.trim()
        ))),
    }
}

/// The sum of `keys=` over the `dbN:` lines of `INFO keyspace`.
fn count_keys(keyspace: &BTreeMap<String, String>) -> u64 {
    keyspace
        .iter()
        .filter(|(k, _)| k.starts_with("db"))
        .filter_map(|(_, v)| {
            v.split(',')
                .find_map(|kv| kv.strip_prefix("keys="))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

fn number(info: &BTreeMap<String, String>, key: &str) -> Result<i64> {
    info.get(key).and_then(|v| v.parse().ok()).ok_or_else(|| {
        Error::failed(format!(
            "INFO persistence has no numeric `{key}`; is this a Redis server?"
        ))
    })
}

/// Starts a BGSAVE and waits until it finished; returns `rdb_last_save_time` of the save.
fn bgsave(conn: &Conn, timeout: Duration) -> Result<i64> {
    let deadline = Instant::now() + timeout;
    let before = conn.info("persistence")?;
    if before.get("loading").map(String::as_str) == Some("1") {
        return Err(Error::failed(format!(
            "Redis at {} is still loading its dataset; retry when it finished",
            conn.addr()
        )));
    }
    let before_last = number(&before, "rdb_last_save_time")?;
    // `rdb_saves` (Redis 7) tells two saves within the same second apart.
    let before_saves = number(&before, "rdb_saves").ok();
    let timed_out = || {
        Error::timed_out(format!(
            "BGSAVE on Redis at {} did not finish within {}s; raise --param save-timeout",
            conn.addr(),
            timeout.as_secs()
        ))
    };
    loop {
        match conn.query(&["BGSAVE"]) {
            Ok(_) => break,
            // Someone else's save runs: let it end, then take our own.
            Err(Error::Failed(m)) if m.contains("already in progress") => {
                if Instant::now() > deadline {
                    return Err(timed_out());
                }
                sleep(POLL);
            }
            Err(e) => return Err(e.context("starting BGSAVE")),
        }
    }
    loop {
        let now = conn.info("persistence")?;
        let running = now.get("rdb_bgsave_in_progress").map(String::as_str) != Some("0");
        let last = number(&now, "rdb_last_save_time")?;
        let saves = number(&now, "rdb_saves").ok();
        let advanced =
            last > before_last || matches!((saves, before_saves), (Some(a), Some(b)) if a > b);
        let status = now
            .get("rdb_last_bgsave_status")
            .map_or("unknown", String::as_str);
        if !running && advanced {
            if status != "ok" {
                return Err(Error::failed(format!(
                    "BGSAVE on Redis at {} failed (rdb_last_bgsave_status:{status}); see the \
                     server's log (is its `dir` writable, the disk full?)",
                    conn.addr()
                )));
            }
            return Ok(last);
        }
        if !running && status == "err" {
            return Err(Error::failed(format!(
                "BGSAVE on Redis at {} failed (rdb_last_bgsave_status:err); see the server's log \
                 (is its `dir` writable, the disk full?)",
                conn.addr()
            )));
        }
        if Instant::now() > deadline {
            return Err(timed_out());
        }
        sleep(POLL);
    }
}

fn backup(ctx: &Context) -> Result<Outputs> {
    ctx.target()?;
    let conn = Conn::new(ctx)?;
    let save_timeout = ctx.seconds("save-timeout")?;

    progress(Progress::percent(0.0).message(format!("BGSAVE on {}", conn.addr())));
    let lastsave = bgsave(&conn, save_timeout)?;
    let keys = conn.key_count()?;
    let path = conn.rdb_path()?;
    info!("BGSAVE finished (lastsave {lastsave}, {keys} keys); exporting {path}");

    progress(Progress::percent(50.0).message(format!("exporting {path}")));
    // `cat` of the file BGSAVE just wrote, not `redis-cli --rdb`: see the README. A later save
    // renames a new file over it, which leaves the one `cat` has open intact.
    let export = Export::open_tagged(ARTIFACT, [("app", "redis")])?;
    let transfer = export
        .pipe_from(&Command::new(["cat", path.as_str()]))?
        .ok()
        .map_err(|e| e.context(format_args!("reading the RDB file {path}")))?;
    let artifact = export
        .finish()?
        .value("path", &path)
        .value("lastsave", lastsave)
        .value("keys", keys);
    progress(Progress::bytes(transfer.bytes, Some(transfer.bytes)).message("exported"));
    info!("exported {} bytes of RDB", transfer.bytes);
    Ok(Outputs::new().artifact(artifact))
}

/// Runs `sh -c script sh args…` in the workload and fails on a non-zero exit.
fn shell(script: &str, args: &[&str]) -> Result<String> {
    let out = Command::shell(script)
        .arg("sh")
        .args(args.iter().copied())
        .run()?
        .ok()?;
    Ok(out.stdout_str().into_owned())
}

fn restore(ctx: &Context) -> Result<Outputs> {
    ctx.target()?;
    let conn = Conn::new(ctx)?;
    let ready_timeout = ctx.seconds("ready-timeout")?;
    let save_timeout = ctx.seconds("save-timeout")?;
    let replace = ctx.flag("replace")?;
    let artifact = ctx.artifact(ARTIFACT).map_err(|e| {
        e.context("restore needs the restore point: pass the backup's report with --from")
    })?;

    let keys = conn.key_count()?;
    if keys > 0 {
        refuse_unless_replace(
            &format!("Redis at {} already holds {keys} keys", conn.addr()),
            replace,
        )?;
    }
    // The restart needs grants a run may lack: refused now, while nothing has changed.
    workloads::check_restartable(None)?;
    let persistence = conn.info("persistence")?;
    if persistence.get("aof_enabled").map(String::as_str) == Some("1") {
        return Err(Error::invalid(format!(
            "Redis at {} runs with appendonly yes: it loads its AOF at startup, not an RDB; turn \
             appendonly off for the restore and back on afterwards",
            conn.addr()
        )));
    }
    let path = conn.rdb_path()?;
    let log = conn.log_path(&path)?;
    let staged = format!("{path}{RESTORE_SUFFIX}");
    let aside = format!("{path}{ASIDE_SUFFIX}");
    // Left by a restore that could not put it back, or kept when the server restarted on the
    // restored data: it may be the only copy of what the server held then, and an undo would
    // take it for this restore's, so it is never touched here.
    refuse_left_aside(&aside, "the server")?;
    // Recorded before each change, for the posthook should this phase be stopped where it
    // cannot undo itself.
    checkpoint(UNDO_RDB, &path)?;
    checkpoint(UNDO_STATE, "staging")?;

    progress(Progress::percent(0.0).message(format!("staging the RDB as {staged}")));
    let import = Import::open(artifact).map_err(|e| {
        e.context(format_args!(
            "reading back export `{ARTIFACT}` of the restore point (was it deleted?)"
        ))
    })?;
    let transfer = import
        .pipe_into(&Command::shell(r#"cat > "$1""#).arg("sh").arg(&staged))?
        .ok()
        .map_err(|e| e.context(format_args!("writing {staged}")))?;
    if let Some(expected) = artifact.get("bytes").and_then(|b| b.parse::<u64>().ok())
        && expected != transfer.bytes
    {
        return Err(Error::failed(format!(
            "the export held {expected} bytes but {} reached {staged}",
            transfer.bytes
        )));
    }
    let magic = shell(r#"head -c 5 "$1""#, &[&staged])?;
    if magic != "REDIS" {
        shell(r#"rm -f "$1""#, &[&staged])?;
        return Err(Error::failed(format!(
            "the export `{ARTIFACT}` is not an RDB file (it starts with {magic:?})"
        )));
    }
    let staged_sum = shell(r#"cksum < "$1""#, &[&staged])?;

    // Stopping Redis (SIGTERM or SHUTDOWN) saves the dataset when save points are set, which
    // would write over the restored file; the restart reads `save` from the config again.
    // The server's own file is saved fresh first: should the restart fail after the stop
    // (which, with saves off, saves nothing), the file put back holds what the server held.
    progress(Progress::percent(25.0).message("saving the server's own dataset"));
    let save_timeout = Duration::from_secs(save_timeout.as_secs());
    wait_no_save(&conn, save_timeout)?;
    conn.query(&["BGSAVE"])?;
    wait_no_save(&conn, save_timeout)?;
    let saved = conn.info("persistence")?;
    if saved.get("rdb_last_bgsave_status").map(String::as_str) != Some("ok") {
        return Err(Error::failed(format!(
            "Redis at {} could not save its own dataset before the restore (rdb_last_bgsave_status \
             {:?}; its log says why): nothing was changed",
            conn.addr(),
            saved.get("rdb_last_bgsave_status")
        )));
    }
    progress(Progress::percent(30.0).message("disabling saves before the restart"));
    let saves = conn.query(&["CONFIG", "GET", "save"])?;
    let saves = saves.lines().nth(1).unwrap_or_default().to_owned();
    checkpoint(UNDO_SAVES, &saves)?;
    checkpoint(UNDO_STATE, "saves-off")?;
    conn.query(&["CONFIG", "SET", "save", ""])?;
    // The live file goes aside, not away: until the server has restarted on the restored one,
    // any failure puts it back (and saves on again), so a failed restore changes nothing.
    let put_back = |e: Error, had_rdb: Option<bool>| match undo(&conn, &path, &saves, had_rdb) {
        Ok(()) => e.context(format_args!(
            "restore undone ({path} is the server's own RDB again, and saves are on)"
        )),
        Err(b) => e.context(format_args!(
            "restore failed, and putting the server's own RDB back failed too ({b}): it is at \
             {aside}; move it to {path} before Redis next starts"
        )),
    };
    wait_no_save(&conn, save_timeout).map_err(|e| put_back(e, None))?;
    let had_rdb = shell(r#"if [ -e "$1" ]; then echo yes; fi"#, &[&path])
        .map_err(|e| put_back(e, None))?
        .trim()
        == "yes";
    checkpoint(UNDO_HAD_RDB, if had_rdb { "yes" } else { "no" })?;
    checkpoint(UNDO_STATE, "swapping")?;
    let put_back = |e: Error| put_back(e, Some(had_rdb));
    shell(
        r#"if [ -e "$2" ]; then mv -f "$2" "$3"; fi && mv -f "$1" "$2""#,
        &[&staged, &path, &aside],
    )
    .map_err(&put_back)?;
    let run_id = conn
        .info("server")
        .map_err(&put_back)?
        .get("run_id")
        .cloned();
    checkpoint(UNDO_RUN_ID, run_id.as_deref().unwrap_or_default())?;
    checkpoint(UNDO_LOG, &log)?;
    checkpoint(UNDO_STATE, "restarting")?;

    progress(Progress::percent(50.0).message("restarting the server"));
    let restart = || -> Result<BTreeMap<String, String>> {
        let replicas = workloads::scale(None, 0)?.max(1);
        workloads::scale(None, replicas)?;
        workloads::wait_ready(None, ready_timeout)?;
        wait_loaded(&conn, ready_timeout)
    };
    let loaded = match restart() {
        Ok(loaded) => loaded,
        // Whether the server restarted decides what undoing is: one still running on its own
        // data takes its file back; one that restarted runs on the restored data; one that does
        // not answer never ran on it (it cannot load it, or was not up in time), so its own
        // file goes back under a workload scaled to 0, where nothing loads or saves either.
        Err(e) => {
            return Err(match conn.info("server") {
                Ok(server) if run_id.is_some() && server.get("run_id") == run_id.as_ref() => {
                    put_back(e)
                }
                Ok(_) => {
                    let _ = checkpoint(UNDO_STATE, "restarted");
                    e.context(format_args!(
                        "Redis restarted on the restored data; its own RDB from before the \
                         restore is kept at {aside}"
                    ))
                }
                Err(_) => {
                    let why = load_failure(&log);
                    match put_back_stopped(&conn, &path, had_rdb, ready_timeout) {
                        Ok(()) => e.context(format_args!(
                            "Redis did not come back on the restored RDB ({why}); restore \
                             undone: Redis runs on its own RDB ({path}) again, with the data it \
                             had (if it only needed longer to start, raise --param \
                             ready-timeout)"
                        )),
                        Err(b) => e.context(format_args!(
                            "Redis did not come back on the restored RDB ({why}), {}",
                            b.message()
                        )),
                    }
                }
            });
        }
    };
    if run_id.is_some() && loaded.get("run_id") == run_id.as_ref() {
        // Still the old server, its data in memory: the old file back keeps them together.
        return Err(put_back(Error::failed(format!(
            "Redis at {} did not restart when the workload was scaled to 0 and back: check the \
             workload's stop and start commands",
            conn.addr()
        ))));
    }
    checkpoint(UNDO_STATE, "restarted")?;
    shell(r#"rm -f "$1""#, &[&aside])?;

    // The restored file is what the server loaded unless the stop saved over it: no save has
    // run since the start, so the file on disk is the one the server read.
    let persistence = conn.info("persistence")?;
    if number(&persistence, "rdb_saves").ok() == Some(0) {
        let now_sum = shell(r#"cksum < "$1""#, &[&path])?;
        if now_sum != staged_sum {
            return Err(Error::failed(format!(
                "{path} changed while Redis stopped: the workload's stop command saved the \
                 dataset over the restored RDB; stop Redis with SIGTERM or `SHUTDOWN NOSAVE`"
            )));
        }
    } else {
        warn!("Redis saved since its restart; cannot compare {path} with the restored file");
    }
    let keys = conn.key_count()?;
    info!(
        "restored {} bytes of RDB into {path}; Redis loaded {keys} keys",
        transfer.bytes
    );
    progress(Progress::percent(100.0).message(format!("restored, {keys} keys")));
    Ok(Outputs::new()
        .value("keys", keys)
        .value("bytes", transfer.bytes))
}

/// Undoes a restore the server has not restarted from: its own RDB back at `path` (when the
/// files were being swapped: `had_rdb` says whether there was one to put back, or the
/// restored one is removed), the staged file removed, and its save points `saves` on again.
/// Recorded as done, so the posthook does not undo twice.
fn undo(conn: &Conn, path: &str, saves: &str, had_rdb: Option<bool>) -> Result<()> {
    let aside = format!("{path}{ASIDE_SUFFIX}");
    let staged = format!("{path}{RESTORE_SUFFIX}");
    let files = match had_rdb {
        None => Ok(String::new()),
        Some(true) => shell(
            r#"if [ -e "$2" ]; then mv -f "$2" "$1"; fi"#,
            &[path, &aside],
        ),
        Some(false) => shell(r#"rm -f "$1""#, &[path]),
    };
    let _ = shell(r#"rm -f "$1""#, &[&staged]);
    let saves_on = conn.query(&["CONFIG", "SET", "save", saves]);
    files?;
    saves_on?;
    checkpoint(UNDO_STATE, "undone")
}

/// Puts the server's own RDB back after the server did not come back on the restored one (it
/// cannot load it: more databases than it is configured for, a newer RDB version, a module it
/// lacks; or it was not up within `ready-timeout`). The workload goes to 0 first, so no server
/// is loading the restored file or could save it over the one put back; the files move with a
/// command against the stopped workload; then it starts again and must answer with its data
/// loaded. Idempotent, so the posthook can finish one that was stopped. The error, when it
/// fails, says where each file is, as far as it got.
fn put_back_stopped(conn: &Conn, path: &str, had_rdb: bool, ready_timeout: Duration) -> Result<()> {
    let aside = format!("{path}{ASIDE_SUFFIX}");
    let staged = format!("{path}{RESTORE_SUFFIX}");
    let untouched = |e: Error| {
        e.context(format_args!(
            "and putting its own RDB back failed: the restored RDB is at {path} and its own from \
             before at {aside}; start it on the one you want (move {aside} to {path} for the \
             data it had)"
        ))
    };
    checkpoint(UNDO_STATE, "reverting")?;
    let replicas = workloads::scale(None, 0).map_err(untouched)?.max(1);
    let files = if had_rdb {
        r#"if [ -e "$2" ]; then mv -f "$2" "$1"; fi && rm -f "$3""#
    } else {
        r#"rm -f "$1" "$3""#
    };
    let moved = Command::shell(files)
        .arg("sh")
        .args([path, aside.as_str(), staged.as_str()])
        .stopped()
        .run()
        .and_then(|out| out.ok().map(drop));
    // Started again either way: with the files unmoved it is no worse off than before.
    let started = workloads::scale(None, replicas);
    moved.map_err(untouched)?;
    let own = if had_rdb {
        format!("its own RDB is back at {path}")
    } else {
        format!("the restored RDB is removed from {path} (it had none)")
    };
    started
        .and_then(|_| workloads::wait_ready(None, ready_timeout))
        .and_then(|_| wait_loaded(conn, ready_timeout))
        .map_err(|e| {
            e.context(format_args!(
                "and {own}, but Redis did not come back on it either; see its log"
            ))
        })?;
    checkpoint(UNDO_STATE, "undone")
}

/// Why the server did not start, from the last warning (`#`) or FATAL line its most recent
/// start wrote to `log` (empty: it logs to its standard output); else where to look.
fn load_failure(log: &str) -> String {
    if log.is_empty() {
        return "Redis logs to its standard output (logfile \"\"): see the output the \
                workload's start command or container keeps"
            .to_owned();
    }
    let tail =
        shell(r#"tail -n "$2" "$1""#, &[log, &LOG_TAIL_LINES.to_string()]).unwrap_or_default();
    match last_warning(&tail) {
        Some(line) => format!("its log {log} says: {line}"),
        None => format!("see its log {log}"),
    }
}

/// The last warning or FATAL line of `log` since the server last started (Redis marks
/// warnings `pid:role date time # message`), without its prefix, cut to [`MAX_REASON`].
fn last_warning(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    // The start line is a warning too (`# oO0OoO0OoO0Oo Redis is starting`): after it.
    let since = lines
        .iter()
        .rposition(|l| l.contains("Redis is starting"))
        .map_or(0, |i| i + 1);
    let line = lines[since..]
        .iter()
        .rev()
        .find(|l| l.contains(" # ") || l.contains("FATAL"))?;
    let message = line.split_once(" # ").map_or(*line, |(_, m)| m).trim();
    let mut cut: String = message.chars().take(MAX_REASON).collect();
    if cut.len() < message.len() {
        cut.push('…');
    }
    Some(cut)
}

/// The restore's posthook: a restore stopped (Ctrl-C, past its deadline) while the server's
/// own RDB was aside or its save points off is undone as the restore undoes itself on a
/// failure, unless the server restarted meanwhile (it then runs on the restored data).
fn restore_posthook(ctx: &Context) -> Result<Outputs> {
    let Some((failure, state)) = ctx.unfinished(UNDO_STATE, &["undone", "restarted"]) else {
        return Ok(Outputs::new());
    };
    let path = ctx.value(UNDO_RDB)?;
    if state == "staging" {
        // Nothing of the server's changed yet: only the staged file goes.
        shell(r#"rm -f "$1""#, &[&format!("{path}{RESTORE_SUFFIX}")])?;
        return Ok(Outputs::new());
    }
    let conn = Conn::new(ctx)?;
    let saves = ctx.value(UNDO_SAVES)?;
    let aside = format!("{path}{ASIDE_SUFFIX}");
    let had_rdb = match state {
        "saves-off" => None,
        _ => Some(ctx.value(UNDO_HAD_RDB)? == "yes"),
    };
    // Stopped while it put the server's own RDB back, or while the server, restarting, did
    // not answer: it never ran on the restored RDB, so its own goes back as the restore does it.
    let stopped_down = |why: String| -> Result<Outputs> {
        let ready_timeout = ctx.seconds("ready-timeout")?;
        let had_rdb = had_rdb.unwrap_or(true);
        put_back_stopped(&conn, path, had_rdb, ready_timeout)
            .map_err(|e| e.context(format_args!("the restore stopped ({failure}) {why}")))?;
        warn!(
            "the restore stopped ({failure}) {why}; undone: Redis runs on its own RDB ({path}) \
             again"
        );
        Ok(Outputs::new())
    };
    if state == "reverting" {
        return stopped_down("while it put the server's own RDB back".to_owned());
    }
    if state == "restarting" {
        let before = ctx.value(UNDO_RUN_ID)?;
        match conn.info("server") {
            Ok(server)
                if !before.is_empty()
                    && server.get("run_id").map(String::as_str) == Some(before) => {}
            Ok(_) if !before.is_empty() => {
                warn!(
                    "the restore stopped ({failure}) after Redis restarted on the restored data; \
                     its own RDB from before the restore is kept at {aside}"
                );
                return Ok(Outputs::new());
            }
            Ok(_) => {
                return Err(Error::failed(format!(
                    "the restore stopped ({failure}) while Redis restarted, and whether it runs \
                     on the restored data cannot be told: the restored RDB is at {path} and its \
                     own from before at {aside}; start it on the one you want (move {aside} to \
                     {path} for the data it had)"
                )));
            }
            Err(_) => {
                let why = load_failure(ctx.value(UNDO_LOG).unwrap_or_default());
                return stopped_down(format!(
                    "while Redis restarted, and it did not come back on the restored RDB ({why})"
                ));
            }
        }
    }
    undo(&conn, path, saves, had_rdb).map_err(|e| {
        e.context(format_args!(
            "the restore stopped ({failure}), and undoing it failed: the server's own RDB is at \
             {aside} if not at {path}; move it to {path}, and set its save points back \
             (CONFIG SET save \"{saves}\"), before Redis next starts"
        ))
    })?;
    warn!(
        "the restore stopped ({failure}) before Redis restarted; undone: {path} is the server's \
         own RDB again, and saves are on"
    );
    Ok(Outputs::new())
}

/// Waits until no RDB save runs (a running save would rename its file over ours).
fn wait_no_save(conn: &Conn, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let p = conn.info("persistence")?;
        if p.get("rdb_bgsave_in_progress").map(String::as_str) == Some("0") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::timed_out(format!(
                "a save on Redis at {} still runs after {}s; retry later or raise --param save-timeout",
                conn.addr(),
                timeout.as_secs()
            )));
        }
        sleep(POLL);
    }
}

/// Waits until the restarted server has loaded its dataset; returns `INFO server`.
fn wait_loaded(conn: &Conn, timeout: Duration) -> Result<BTreeMap<String, String>> {
    let deadline = Instant::now() + timeout;
    loop {
        match conn.info("persistence") {
            Ok(p) if p.get("loading").map(String::as_str) == Some("0") => {
                return conn.info("server");
            }
            Ok(_) | Err(Error::Failed(_)) if Instant::now() < deadline => {
                sleep(POLL);
            }
            Ok(_) => {
                return Err(Error::timed_out(format!(
                    "Redis at {} was still loading after {}s; raise --param ready-timeout",
                    conn.addr(),
                    timeout.as_secs()
                )));
            }
            Err(e) => return Err(e.context("waiting for the restarted server")),
        }
    }
}

fn delete(ctx: &Context) -> Result<Outputs> {
    let artifact = ctx.artifact(ARTIFACT).map_err(|e| {
        e.context("delete needs the restore point: pass the backup's report with --from")
    })?;
    data::delete(artifact)?;
    info!("deleted the export `{ARTIFACT}`");
    Ok(Outputs::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_are_validated_before_connecting() {
        for (host, port, bad) in [("db;reboot", 6379, "`host`"), ("db", 0, "`port`")] {
            let ctx = Context::builder(BACKUP, "default").param("host", host);
            let err = Conn::new(&ctx.param("port", port).build()).err();
            assert!(
                matches!(&err, Some(Error::Invalid(m)) if m.contains(bad)),
                "{err:?}"
            );
        }
    }

    #[test]
    fn describes_its_actions_and_params() {
        let d = Redis::describe();
        assert_eq!(d.name(), "redis");
        for action in [BACKUP, RESTORE, DELETE] {
            assert!(d.has_action(action), "{action}");
        }
        let names: Vec<&str> = d.params().iter().map(Param::name).collect();
        assert_eq!(
            names,
            ["host", "port", "save-timeout", "ready-timeout", "replace"]
        );
    }

    #[test]
    fn counts_keys_over_every_database() {
        let keyspace: BTreeMap<String, String> = [
            ("db0", "keys=10,expires=1,avg_ttl=0"),
            ("db3", "keys=5,expires=0,avg_ttl=0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(count_keys(&keyspace), 15);
        assert_eq!(count_keys(&BTreeMap::new()), 0);
    }

    #[test]
    fn reads_config_get_replies() {
        assert_eq!(
            config_value("dir\n/var/lib/redis\n", "dir"),
            Ok("/var/lib/redis".to_owned())
        );
        assert!(config_value("", "dir").is_err());
    }

    #[test]
    fn the_reason_a_restarted_server_gives_is_its_last_warning_since_it_started() {
        let log = "\
1:M 07 Dec 2026 17:30:00.000 # Server initialized (an older run)
2:C 07 Dec 2026 17:40:00.000 # oO0OoO0OoO0Oo Redis is starting oO0OoO0OoO0Oo
2:C 07 Dec 2026 17:40:00.000 # WARNING Memory overcommit must be enabled!
2:M 07 Dec 2026 17:40:00.001 * Server initialized
2:M 07 Dec 2026 17:40:00.002 # FATAL: Data file was created with a Redis server configured \
to handle more than 16 databases. Exiting
";
        assert_eq!(
            last_warning(log).as_deref(),
            Some(
                "FATAL: Data file was created with a Redis server configured to handle more \
                 than 16 databases. Exiting"
            )
        );
        // Nothing since the last start: no older run's warning is taken for its reason.
        let quiet = "1:M 07 Dec 2026 17:30:00.000 # an older warning\n\
                     2:C 07 Dec 2026 17:40:00.000 # oO0OoO0OoO0Oo Redis is starting\n";
        assert_eq!(last_warning(quiet), None);
        let long = format!("3:M 07 Dec 2026 17:40:00.000 # {}", "x".repeat(1000));
        let cut = last_warning(&long).expect("a reason");
        assert_eq!(cut.chars().count(), MAX_REASON + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn refuses_a_bad_port() {
        let ctx = Context::builder(BACKUP, "default")
            .workload("redis")
            .param("host", "127.0.0.1")
            .param("port", 70000)
            .build();
        assert!(matches!(Conn::new(&ctx), Err(Error::Invalid(m)) if m.contains("port")));
    }

    #[test]
    fn delete_needs_the_restore_point() {
        let ctx = Context::builder(DELETE, "default")
            .workload("redis")
            .build();
        assert!(
            matches!(Redis::run(DELETE, &ctx), Err(Error::NotFound(m)) if m.contains("--from"))
        );
    }
}
