//! Run with
//!
//! ```text
//! cairn blueprint build blueprints/etcd
//! cairn run target/wasm32-wasip2/release/etcd.wasm --action backup --output json \
//!     --target local:inventory.yaml --workload etcd --param endpoints=127.0.0.1:2379 \
//!     --grant exec,export > backup.json
//! cairn run target/wasm32-wasip2/release/etcd.wasm --action restore --from backup.json \
//!     --target local:inventory.yaml --workload etcd --param data-dir=/srv/etcd/data \
//!     --grant exec,import,workloads,scale
//! ```
//!
//! An etcd blueprint: `backup` takes `etcdctl snapshot save` into a temporary file and
//! streams it into an export (the posthook removes the file even when the backup fails or
//! times out); `restore` runs `etcdctl snapshot restore` into a fresh data directory, swaps it
//! in and restarts the member; `delete` removes the export. See `README.md` beside this crate.

use std::time::{Duration, Instant};

use cairn_sdk::data::{self, Export, Import};
use cairn_sdk::exec::Command;
use cairn_sdk::lifecycle::{BACKUP, BACKUP_POSTHOOK, DELETE, RESTORE, RESTORE_POSTHOOK};
use cairn_sdk::params::{refuse_left_aside, refuse_unless_replace};
use cairn_sdk::{Blueprint, Capability, Context, Description, Error, Outputs, Param, checkpoint};
use cairn_sdk::{Progress, Result, info, progress, secrets, sleep, warn, workloads};

/// The artifact a backup records and a restore or delete reads.
const ARTIFACT: &str = "snapshot";

/// The granted secrets with the credentials (`--secret user=… --secret password=…`).
const USER_SECRET: &str = "user";
const PASSWORD_SECRET: &str = "password";

/// How long `etcdctl snapshot save` may stream: the host's default exec deadline (30 min), so
/// the run's own `--timeout` and the exec deadline are what bound a large snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Suffixes of what a restore stages beside the data directory.
const STAGED_FILE: &str = ".cairn-restore.db";
const STAGED_DIR: &str = ".cairn-restore";
const OLD_DIR: &str = ".cairn-old";

/// How far a restore got, checkpointed before each step for its posthook to undo one that
/// stopped (interrupted, past its deadline) before it could undo itself: `staging`, `marked`
/// (the marker key [`UNDO_MARKER`] put), `swapping`, `restarting`, then `undone` or
/// `restarted`, which leave the posthook nothing to do.
const UNDO_STATE: &str = "restore-state";
/// The marker key a restore puts in the running member.
const UNDO_MARKER: &str = "restore-marker";

struct Etcd;

impl Blueprint for Etcd {
    fn describe() -> Description {
        Description::new("etcd", env!("CARGO_PKG_VERSION"))
            .describe(
                "Backs up an etcd member with `etcdctl snapshot save` streamed into an export, \
                 and restores it with `etcdctl snapshot restore` into a fresh data directory",
            )
            .action(
                BACKUP,
                "etcdctl snapshot save into a temporary file, streamed into an export",
            )
            .action(
                BACKUP_POSTHOOK,
                "Remove the temporary snapshot file, also after a failed or timed-out backup",
            )
            .action(
                RESTORE,
                "etcdctl snapshot restore into a fresh data directory, swapped in with a restart",
            )
            .action(
                RESTORE_POSTHOOK,
                "After a restore that stopped before the member restarted (interrupted, past \
                 its deadline): swap the member's own data directory back",
            )
            .action(DELETE, "Remove the exported snapshot of a restore point")
            .param(
                Param::text("endpoints")
                    .default("127.0.0.1:2379")
                    .describe("etcd client endpoints, comma-separated, as seen from the workload"),
            )
            .param(
                Param::integer("command-timeout")
                    .default(15)
                    .range(1..)
                    .describe("Seconds etcdctl waits for one request (not the snapshot stream)"),
            )
            .param(
                Param::text("tmp-dir")
                    .default("/tmp")
                    .describe("Directory in the workload for the temporary snapshot file (backup)"),
            )
            .param(Param::text("data-dir").describe(
                "The member's --data-dir (restore; the fresh directory is built beside it)",
            ))
            .param(
                Param::text("name")
                    .default("default")
                    .describe("The member's --name (restore)"),
            )
            .param(Param::text("initial-advertise-peer-urls").describe(
                "The member's peer URLs (restore; default: those it has now, from member list)",
            ))
            .param(Param::text("initial-cluster").describe(
                "The restored cluster's members, NAME=URL,… (restore; default: this member alone)",
            ))
            .param(
                Param::replace().describe("Restore over a member that holds keys, replacing them"),
            )
            .param(
                Param::integer("ready-timeout")
                    .default(300)
                    .range(1..)
                    .describe("Seconds to wait for the restarted member to be ready (restore)"),
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
            BACKUP_POSTHOOK => backup_posthook(ctx),
            RESTORE => restore(ctx),
            RESTORE_POSTHOOK => restore_posthook(ctx),
            DELETE => delete(ctx),
            other => Err(Error::unknown_action(other)),
        }
    }
}

cairn_sdk::export!(Etcd);

/// How to reach the cluster with `etcdctl` inside the workload.
#[derive(Debug)]
struct Conn {
    endpoints: String,
    command_timeout: u64,
    user: Option<String>,
    password: Option<String>,
}

impl Conn {
    fn new(ctx: &Context) -> Result<Self> {
        let endpoints = ctx.endpoints("endpoints")?.to_owned();
        let command_timeout = ctx.seconds("command-timeout")?.as_secs();
        let user = secrets::get_optional(USER_SECRET)?;
        let password = secrets::get_optional(PASSWORD_SECRET)?;
        if password.is_some() && user.is_none() {
            return Err(Error::invalid(format!(
                "secret `{PASSWORD_SECRET}` is granted but `{USER_SECRET}` is not: grant both \
                 (--secret {USER_SECRET}=… --secret {PASSWORD_SECRET}=…)"
            )));
        }
        Ok(Self {
            endpoints,
            command_timeout,
            user,
            password,
        })
    }

    /// The same endpoints without credentials, for the requests etcd answers without them
    /// (`endpoint status`).
    fn anonymous(&self) -> Self {
        Self {
            endpoints: self.endpoints.clone(),
            command_timeout: self.command_timeout,
            user: None,
            password: None,
        }
    }

    /// `etcdctl args…`; endpoints and credentials go through the environment (never argv), and
    /// as variables they cannot clash with the same variables set in the workload.
    fn etcdctl<I>(&self, args: I) -> Command
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let args: Vec<String> = args.into_iter().map(Into::into).collect();
        // etcdctl 3.4 bounds `snapshot save` by --command-timeout too: give the stream the
        // exec's own deadline instead of the short per-request one.
        let timeout = if args.first().map(String::as_str) == Some("snapshot") {
            SNAPSHOT_TIMEOUT.as_secs()
        } else {
            self.command_timeout
        };
        let mut command = Command::new(["etcdctl"])
            .args(args)
            .env("ETCDCTL_API", "3")
            .env("ETCDCTL_ENDPOINTS", &self.endpoints)
            .env("ETCDCTL_COMMAND_TIMEOUT", format!("{timeout}s"));
        if let Some(user) = &self.user {
            command = command.env("ETCDCTL_USER", user);
        }
        if let Some(password) = &self.password {
            command = command.env("ETCDCTL_PASSWORD", password);
        }
        command
    }

    /// Runs `etcdctl`, turning each way it fails into one clear error.
    fn run<I>(&self, what: &str, args: I) -> Result<String>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let out = self.etcdctl(args).run()?;
        if out.success() {
            return Ok(out.stdout_str().into_owned());
        }
        Err(self.explain(what, out.exit_code, &out.stderr_str()))
    }

    fn explain(&self, what: &str, exit_code: i32, stderr: &str) -> Error {
        let last = stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("Error:"))
            .or_else(|| stderr.lines().last())
            .unwrap_or_default()
            .trim();
        if stderr.contains("authentication failed") {
            return Error::denied(format!(
                "etcd at {} refused the credentials from secrets `{USER_SECRET}`/`{PASSWORD_SECRET}` \
                 ({last}); fix the secrets",
                self.endpoints
            ));
        }
        if stderr.contains("user name is empty") {
            return Error::denied(format!(
                "etcd at {} requires authentication: grant it with --grant secrets --secret \
                 {USER_SECRET}=… --secret {PASSWORD_SECRET}=env:VAR",
                self.endpoints
            ));
        }
        if stderr.contains("permission denied") {
            return Error::denied(format!(
                "etcd at {} denied {what} to user {:?} ({last}); it needs the root role",
                self.endpoints,
                self.user.as_deref().unwrap_or_default()
            ));
        }
        if stderr.contains("context deadline exceeded") || stderr.contains("connection refused") {
            return Error::failed(format!(
                "cannot reach etcd at {} ({last}); is the server running, and is the `endpoints` \
                 parameter right?",
                self.endpoints
            ));
        }
        Error::failed(format!("{what} exited with {exit_code}: {last}"))
    }

    /// Keys in the whole keyspace (`count` of a keys-only range over everything).
    fn key_count(&self) -> Result<u64> {
        let json = self.run(
            "etcdctl get",
            [
                "get",
                "",
                "--from-key",
                "--keys-only",
                "--limit",
                "1",
                "-w",
                "json",
            ],
        )?;
        // `count` is left out of the JSON when it is 0.
        Ok(json_number(&json, "count").unwrap_or(0))
    }
}

/// The first integer value of `"key":` in a JSON document (the outputs read here are flat
/// and small; the blueprint has no JSON parser and needs none).
fn json_number(json: &str, key: &str) -> Option<u64> {
    let pattern = format!("\"{key}\":");
    let rest = &json[json.find(&pattern)? + pattern.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// A path parameter: absolute, without characters a shell script could trip on.
fn path_param(ctx: &Context, name: &str) -> Result<Option<String>> {
    let Some(path) = ctx.param::<Option<String>>(name)? else {
        return Ok(None);
    };
    let path = path.trim_end_matches('/').to_owned();
    if !path.starts_with('/') || path.split('/').any(|c| c == "..") || path.len() < 2 {
        return Err(Error::invalid(format!(
            "parameter `{name}` is {path:?}: give an absolute path (not / and without ..)"
        )));
    }
    Ok(Some(path))
}

/// The temporary snapshot file of this run: the same in every phase, so the posthook finds it.
fn tmp_file(ctx: &Context) -> Result<String> {
    let dir = path_param(ctx, "tmp-dir")?.unwrap_or_else(|| "/tmp".to_owned());
    let id: String = ctx
        .action_id()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    Ok(format!("{dir}/cairn-etcd-{id}.db"))
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

fn backup(ctx: &Context) -> Result<Outputs> {
    ctx.target()?;
    let conn = Conn::new(ctx)?;
    let file = tmp_file(ctx)?;

    // `snapshot save` retries an unreachable endpoint without end; a short request first
    // turns a server that is down, or refused credentials, into a clear error.
    let keys = conn.key_count()?;
    progress(Progress::percent(0.0).message(format!("etcdctl snapshot save {file} ({keys} keys)")));
    conn.run("etcdctl snapshot save", ["snapshot", "save", file.as_str()])?;
    let status = conn.run(
        "etcdctl snapshot status",
        ["snapshot", "status", file.as_str(), "-w", "json"],
    )?;
    let revision = json_number(&status, "revision").unwrap_or(0);
    let total_keys = json_number(&status, "totalKey").unwrap_or(0);
    let hash = json_number(&status, "hash").unwrap_or(0);
    info!("snapshot at revision {revision} ({total_keys} keys with etcd's own); exporting it");

    progress(Progress::percent(50.0).message("exporting the snapshot"));
    let export = Export::open_tagged(ARTIFACT, [("app", "etcd")])?;
    let transfer = export
        .pipe_from(&Command::new(["cat", file.as_str()]))?
        .ok()
        .map_err(|e| e.context(format_args!("reading the snapshot file {file}")))?;
    let artifact = export
        .finish()?
        .value("revision", revision)
        .value("total-keys", total_keys)
        .value("hash", hash);
    shell(r#"rm -f "$1""#, &[&file])?;
    progress(Progress::bytes(transfer.bytes, Some(transfer.bytes)).message("exported"));
    info!("exported {} bytes of snapshot", transfer.bytes);
    Ok(Outputs::new().artifact(artifact))
}

/// Removes the temporary file, whatever happened to the backup.
fn backup_posthook(ctx: &Context) -> Result<Outputs> {
    let file = tmp_file(ctx)?;
    if let Some(failure) = ctx.failure() {
        warn!("the backup failed ({failure}); removing its temporary file {file}");
    }
    shell(r#"rm -f "$1" "$1.part""#, &[&file])
        .map_err(|e| e.context(format_args!("removing the temporary snapshot {file}")))?;
    Ok(Outputs::new())
}

fn restore(ctx: &Context) -> Result<Outputs> {
    ctx.target()?;
    let conn = Conn::new(ctx)?;
    let artifact = ctx.artifact(ARTIFACT).map_err(|e| {
        e.context("restore needs the restore point: pass the backup's report with --from")
    })?;
    let data_dir = path_param(ctx, "data-dir")?.ok_or_else(|| {
        Error::invalid(
            "restore needs the member's data directory: add --param data-dir=/path/to/data",
        )
    })?;
    let name = ctx.text("name")?;
    let given_peer_urls = ctx.param::<Option<String>>("initial-advertise-peer-urls")?;
    let replace = ctx.flag("replace")?;
    let ready_timeout = ctx.seconds("ready-timeout")?;

    let keys = conn.key_count()?;
    check_data_dir(&data_dir)?;
    let peer_urls = peer_urls(&conn, name, given_peer_urls)?;
    let cluster = ctx
        .param::<Option<String>>("initial-cluster")?
        .unwrap_or_else(|| {
            peer_urls
                .split(',')
                .map(|url| format!("{name}={url}"))
                .collect::<Vec<_>>()
                .join(",")
        });
    if keys > 0 {
        refuse_unless_replace(
            &format!("etcd at {} already holds {keys} keys", conn.endpoints),
            replace,
        )?;
    }
    // The restart needs grants a run may lack: refused now, while nothing has changed.
    workloads::check_restartable(None)?;

    let staged = format!("{data_dir}{STAGED_FILE}");
    let fresh = format!("{data_dir}{STAGED_DIR}");
    let old = format!("{data_dir}{OLD_DIR}");
    // Left by a restore that could not put it back: it may be the only copy of what the member
    // held then, so it is never removed here.
    refuse_left_aside(&old, "the member")?;
    checkpoint(UNDO_STATE, "staging")?;
    progress(Progress::percent(0.0).message(format!("staging the snapshot as {staged}")));
    let import = Import::open(artifact).map_err(|e| {
        e.context(format_args!(
            "reading back export `{ARTIFACT}` of the restore point (was it deleted?)"
        ))
    })?;
    let transfer = import
        .pipe_into(
            &Command::shell(r#"rm -rf "$2" && cat > "$1""#)
                .arg("sh")
                .arg(&staged)
                .arg(&fresh),
        )?
        .ok()
        .map_err(|e| e.context(format_args!("writing {staged}")))?;

    // `snapshot restore` checks the snapshot's integrity hash and builds a fresh member; it
    // needs no server, so it runs while the old member still serves.
    progress(Progress::percent(30.0).message(format!("etcdctl snapshot restore into {fresh}")));
    let restored = conn.run(
        "etcdctl snapshot restore",
        [
            "snapshot",
            "restore",
            staged.as_str(),
            "--data-dir",
            fresh.as_str(),
            "--name",
            name,
            "--initial-cluster",
            cluster.as_str(),
            "--initial-advertise-peer-urls",
            peer_urls.as_str(),
        ],
    );
    if let Err(e) = restored {
        shell(r#"rm -rf "$1" "$2""#, &[&staged, &fresh])?;
        return Err(e.context(format_args!("restoring export `{ARTIFACT}`")));
    }

    // A key the running member gets and the snapshot cannot hold: still there after the
    // restart, the member did not start from the restored directory.
    let status = conn.run(
        "etcdctl endpoint status",
        ["endpoint", "status", "-w", "json"],
    )?;
    let marker = format!(
        "/cairn/restore-marker/{}",
        json_number(&status, "revision").unwrap_or(0)
    );
    checkpoint(UNDO_MARKER, &marker)?;
    checkpoint(UNDO_STATE, "marked")?;
    conn.run(
        "etcdctl put",
        ["put", marker.as_str(), "the member before the restore"],
    )?;

    // Swap the directories, then restart: the stopping member keeps writing only to the files
    // it holds open, which moved away with the old directory. Until the member has restarted on
    // the restored one, any failure swaps them back, so a failed restore changes nothing.
    progress(Progress::percent(50.0).message("swapping the data directory and restarting"));
    let swap_back = |e: Error| match undo(&conn, &data_dir, &marker) {
        Ok(()) => e.context(format_args!(
            "restore undone ({data_dir} is the member's own data directory again)"
        )),
        Err(b) => e.context(format_args!(
            "restore failed, and swapping the data directories back failed too ({b}): the \
             member's own is at {old}; move it to {data_dir} before the member next starts"
        )),
    };
    checkpoint(UNDO_STATE, "swapping")?;
    shell(
        r#"mv "$1" "$3" && mv "$2" "$1""#,
        &[&data_dir, &fresh, &old],
    )
    .map_err(&swap_back)?;
    checkpoint(UNDO_STATE, "restarting")?;
    let restart = || -> Result<Answer> {
        let replicas = workloads::scale(None, 0)?.max(1);
        workloads::scale(None, replicas)?;
        workloads::wait_ready(None, ready_timeout)?;
        let marker = wait_serving(&conn, ready_timeout).and_then(|()| {
            conn.run(
                "etcdctl get",
                ["get", marker.as_str(), "--print-value-only"],
            )
        });
        match marker {
            Ok(found) => Ok(Answer::Marker(found)),
            Err(e @ Error::Denied(_)) => Ok(Answer::Refused(e)),
            Err(e) => Err(e),
        }
    };
    let answer =
        match restart() {
            Ok(answer) => answer,
            // Whether the member restarted decides what undoing is: the old member (the marker
            // still there) takes its directory back; a restarted one runs on the restored data
            // (one refusing the credentials the old member took is one), and one that does not
            // answer may be starting on either, so nothing is moved under it.
            Err(e) => {
                return Err(
                match conn.run("etcdctl get", ["get", marker.as_str(), "--print-value-only"]) {
                    Ok(v) if !v.trim().is_empty() => swap_back(e),
                    Ok(_) => {
                        let _ = checkpoint(UNDO_STATE, "restarted");
                        e.context(format_args!(
                            "etcd restarted on the restored data; the member's own directory \
                             from before the restore is kept at {old}"
                        ))
                    }
                    Err(refusal @ Error::Denied(_)) => {
                        let _ = checkpoint(UNDO_STATE, "restarted");
                        e.context(format_args!(
                            "etcd restarted on the restored data and {}: the restored keyspace \
                             holds its own users and passwords, those at backup time, so use \
                             those; the member's own directory from before the restore is kept \
                             at {old}",
                            refusal_of(&refusal)
                        ))
                    }
                    Err(_) => e.context(format_args!(
                        "the member does not answer: the restored data is at {data_dir} and its \
                         own from before at {old}; start it on the one you want (move {old} to \
                         {data_dir} for the data it had)"
                    )),
                },
            );
            }
        };
    if let Answer::Marker(found) = &answer
        && !found.trim().is_empty()
    {
        // Still the old member, on the old files: the directories go back where it keeps them.
        return Err(swap_back(Error::failed(format!(
            "etcd at {} did not restart when the workload was scaled to 0 and back, or restarted \
             on another directory than {data_dir}: check the workload's stop and start commands, \
             and that `data-dir` is the member's --data-dir",
            conn.endpoints
        ))));
    }

    checkpoint(UNDO_STATE, "restarted")?;
    // `endpoint status` needs no credentials: it checks the revision also of a member that
    // refuses those given.
    let status = conn.anonymous().run(
        "etcdctl endpoint status",
        ["endpoint", "status", "-w", "json"],
    )?;
    let revision = json_number(&status, "revision").unwrap_or(0);
    let expected = artifact
        .get("revision")
        .and_then(|r| r.parse::<u64>().ok())
        .unwrap_or(0);
    if revision < expected {
        return Err(Error::failed(format!(
            "after the restart etcd is at revision {revision}, older than the snapshot's \
             {expected}: it did not load the restored data directory {data_dir}; the previous \
             one is kept at {old}"
        )));
    }
    shell(r#"rm -rf "$1" "$2""#, &[&old, &staged])?;
    let outputs = Outputs::new().value("revision", revision);
    if let Answer::Refused(refusal) = answer {
        // Done, not failed: the member runs on the restored keyspace at the snapshot's
        // revision, which is what was asked, and a failure would leave the old directory for
        // the next restore to refuse. The keyspace holds its own users, roles and passwords, so
        // the credentials are the backup's now: said here, for every client using the others.
        warn!(
            "restored {} bytes of snapshot into {data_dir}; etcd is at revision {revision}, but \
             {}: the restored keyspace holds its own users, roles and passwords, those at backup \
             time; use those (or set the new ones again with `etcdctl user passwd`) here and in \
             every client",
            transfer.bytes,
            refusal_of(&refusal)
        );
        progress(Progress::percent(100.0).message("restored; use the backup-time credentials"));
        return Ok(outputs.value("credentials", "backup-time"));
    }
    let keys = conn.key_count()?;
    info!(
        "restored {} bytes of snapshot into {data_dir}; etcd is at revision {revision} with {keys} keys",
        transfer.bytes
    );
    progress(Progress::percent(100.0).message(format!("restored, {keys} keys")));
    Ok(outputs.value("keys", keys))
}

/// How a member refused the credentials given (or their absence), from [`Conn::explain`]'s
/// error.
fn refusal_of(e: &Error) -> &'static str {
    let message = e.message();
    if message.contains("refused the credentials") {
        "refuses the credentials given (authentication failed)"
    } else if message.contains("requires authentication") {
        "has authentication on, and no credentials were given"
    } else {
        "denies the user given a read of the keyspace"
    }
}

/// What the restarted member answered a read of the marker key.
enum Answer {
    /// The marker's value: empty from a member restarted on the restored data.
    Marker(String),
    /// It refused the credentials the member before the restore accepted: it runs on the
    /// restored keyspace, whose users and passwords are those at backup time.
    Refused(Error),
}

/// The peer URLs the restored member advertises: those `given`, else those the member named
/// `name` has now (`member list`), so that a restore does not move it to etcd's default
/// (`http://localhost:2380`), which breaks adding members later. A `given` that differs from
/// them is used with a warning; without either, the restore is refused while nothing changed.
fn peer_urls(conn: &Conn, name: &str, given: Option<String>) -> Result<String> {
    let list = conn.run("etcdctl member list", ["member", "list", "-w", "json"])?;
    let members = members(&list);
    let current = members
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, urls)| urls.join(","));
    match (given, current) {
        (Some(given), Some(current)) => {
            let sorted = |urls: &str| {
                let mut urls: Vec<&str> = urls.split(',').map(str::trim).collect();
                urls.sort_unstable();
                urls.join(",")
            };
            if sorted(&given) != sorted(&current) {
                warn!(
                    "member {name} advertises the peer URLs {current}; the restored member will \
                     advertise {given} (--param initial-advertise-peer-urls)"
                );
            }
            Ok(given)
        }
        (Some(given), None) => {
            warn!(
                "etcd at {} has no member named {name:?}: the restored member will be named so \
                 (--param name)",
                conn.endpoints
            );
            Ok(given)
        }
        (None, Some(current)) if !current.is_empty() => Ok(current),
        (None, _) => {
            let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
            Err(Error::invalid(format!(
                "etcd at {} has no member named {name:?} with peer URLs (its members: {}): pass \
                 the member's --name with --param name=…, or its peer URLs with --param \
                 initial-advertise-peer-urls=…; nothing was changed",
                conn.endpoints,
                names.join(", ")
            )))
        }
    }
}

/// The members of `etcdctl member list -w json`, as (name, peer URLs). A member object holds no
/// nested object, so each ends at the next `}`; a member not started yet has no name.
fn members(json: &str) -> Vec<(String, Vec<String>)> {
    let Some(start) = json.find("\"members\":[") else {
        return Vec::new();
    };
    json[start..]
        .split('}')
        .filter_map(|member| {
            let name = json_string(member, "name")?;
            Some((name, json_strings(member, "peerURLs")))
        })
        .collect()
}

/// The string value of `"key":` in a flat JSON object (names and URLs hold no escapes).
fn json_string(json: &str, key: &str) -> Option<String> {
    let pattern = format!("\"{key}\":\"");
    let rest = &json[json.find(&pattern)? + pattern.len()..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// The strings of the array `"key":[…]` in a flat JSON object (an IPv6 URL holds `]`, so the
/// array ends at the first `]` outside a string).
fn json_strings(json: &str, key: &str) -> Vec<String> {
    let pattern = format!("\"{key}\":[");
    let Some(at) = json.find(&pattern) else {
        return Vec::new();
    };
    let mut rest = &json[at + pattern.len()..];
    let mut strings = Vec::new();
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        let Some(string) = rest.strip_prefix('"') else {
            return strings;
        };
        let Some(end) = string.find('"') else {
            return strings;
        };
        strings.push(string[..end].to_owned());
        rest = &string[end + 1..];
    }
}

/// Refuses a `data-dir` that is not a member's data directory (it does not exist, or holds no
/// `member/`), while nothing has changed: found later, it would show as a swap that fails, or
/// as a member that "did not restart" (it did, on the directory it really runs on).
fn check_data_dir(data_dir: &str) -> Result<()> {
    let found = shell(
        r#"if [ -d "$1/member" ]; then echo member; elif [ -e "$1" ]; then echo other; fi"#,
        &[data_dir],
    )?;
    let what = match found.trim() {
        "member" => return Ok(()),
        "other" => "holds no `member/` directory (where a member keeps its data)",
        _ => "does not exist in the workload",
    };
    Err(Error::invalid(format!(
        "parameter `data-dir` is {data_dir}, which {what}: is `data-dir` the member's --data-dir? \
         (etcd's --data-dir flag, or ETCD_DATA_DIR); nothing was changed"
    )))
}

/// Undoes a restore the member has not restarted from, however far its swap got: the
/// member's own directory back at `data_dir`, the staged snapshot and restored directory
/// removed, the `marker` key deleted (when given). Recorded as done, so the posthook does not
/// undo twice.
fn undo(conn: &Conn, data_dir: &str, marker: &str) -> Result<()> {
    let staged = format!("{data_dir}{STAGED_FILE}");
    let fresh = format!("{data_dir}{STAGED_DIR}");
    let old = format!("{data_dir}{OLD_DIR}");
    let back = shell(
        r#"if [ -e "$3" ]; then rm -rf "$2" && if [ -e "$1" ]; then mv "$1" "$2"; fi && mv "$3" "$1"; fi && rm -rf "$2" "$4""#,
        &[data_dir, &fresh, &old, &staged],
    );
    if !marker.is_empty() {
        let _ = conn.run("etcdctl del", ["del", marker]);
    }
    back?;
    checkpoint(UNDO_STATE, "undone")
}

/// The restore's posthook: a restore stopped (Ctrl-C, past its deadline) before the member
/// restarted on the restored directory is undone as the restore undoes itself on a failure;
/// one the member restarted from is left, with where its old directory is.
fn restore_posthook(ctx: &Context) -> Result<Outputs> {
    let Some((failure, state)) = ctx.unfinished(UNDO_STATE, &["undone", "restarted"]) else {
        return Ok(Outputs::new());
    };
    let conn = Conn::new(ctx)?;
    let data_dir = path_param(ctx, "data-dir")?
        .ok_or_else(|| Error::invalid("the restore's data-dir parameter is gone"))?;
    let old = format!("{data_dir}{OLD_DIR}");
    let marker = ctx.value(UNDO_MARKER).unwrap_or_default();
    if matches!(state, "swapping" | "restarting") {
        // The marker is in the member that ran before the restore, and in no restored one.
        match conn.run("etcdctl get", ["get", marker, "--print-value-only"]) {
            Ok(v) if !v.trim().is_empty() => {}
            // The member before the restore took these credentials: one refusing them runs on
            // the restored keyspace, with the users and passwords of backup time.
            Ok(_) | Err(Error::Denied(_)) if state == "restarting" => {
                warn!(
                    "the restore stopped ({failure}) after etcd restarted on the restored data; \
                     the member's own directory from before the restore is kept at {old}"
                );
                return Ok(Outputs::new());
            }
            _ => {
                return Err(Error::failed(format!(
                    "the restore stopped ({failure}) while the data directories were swapped, \
                     and the member does not answer: the restored data is at {data_dir} if not \
                     at {data_dir}{STAGED_DIR}, and its own from before at {old}; start it on \
                     the one you want (move {old} to {data_dir} for the data it had)"
                )));
            }
        }
    }
    undo(&conn, &data_dir, marker).map_err(|e| {
        e.context(format_args!(
            "the restore stopped ({failure}), and undoing it failed: the member's own data \
             directory is at {old} if not at {data_dir}; move it back before the member next \
             starts"
        ))
    })?;
    warn!(
        "the restore stopped ({failure}) before etcd restarted; undone: {data_dir} is the \
         member's own data directory again"
    );
    Ok(Outputs::new())
}

/// Waits until the restarted member serves reads (it answers `endpoint status` a little
/// before it has a leader).
fn wait_serving(conn: &Conn, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match conn.key_count() {
            Ok(_) => return Ok(()),
            Err(Error::Failed(_)) if Instant::now() < deadline => {
                sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e.context("waiting for the restarted member to serve")),
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
    fn endpoints_are_validated_before_connecting() {
        for bad in [
            "",
            "etcd-0",
            "etcd-0:2379 etcd-1:2379",
            "$(reboot):2379",
            "etcd-0:0",
        ] {
            let ctx = Context::builder(BACKUP, "default")
                .param("endpoints", bad)
                .param("command-timeout", 15)
                .build();
            let err = Conn::new(&ctx).err();
            assert!(
                matches!(&err, Some(Error::Invalid(m)) if m.contains("`endpoints`")),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn describes_its_actions() {
        let d = Etcd::describe();
        assert_eq!(d.name(), "etcd");
        for action in [BACKUP, BACKUP_POSTHOOK, RESTORE, DELETE] {
            assert!(d.has_action(action), "{action}");
        }
    }

    #[test]
    fn reads_numbers_from_etcdctl_json() {
        let status = r#"{"hash":674473618,"revision":2,"totalKey":8,"totalSize":20480}"#;
        assert_eq!(json_number(status, "revision"), Some(2));
        assert_eq!(json_number(status, "totalKey"), Some(8));
        assert_eq!(json_number(r#"{"header":{"revision":5}}"#, "count"), None);
    }

    #[test]
    fn reads_the_members_peer_urls_from_member_list() {
        let list = r#"{"header":{"cluster_id":1,"member_id":2,"raft_term":3},"members":[{"ID":2,"name":"default","peerURLs":["http://127.0.0.1:19241"],"clientURLs":["http://127.0.0.1:19240"]},{"ID":4,"name":"two","peerURLs":["http://10.0.0.2:2380","http://[fd00::2]:2380"]},{"ID":5,"peerURLs":["http://10.0.0.3:2380"],"isLearner":true}]}"#;
        assert_eq!(
            members(list),
            [
                (
                    "default".to_owned(),
                    vec!["http://127.0.0.1:19241".to_owned()]
                ),
                (
                    "two".to_owned(),
                    vec![
                        "http://10.0.0.2:2380".to_owned(),
                        "http://[fd00::2]:2380".to_owned()
                    ]
                ),
            ]
        );
        assert!(members("Error: no JSON").is_empty());
    }

    #[test]
    fn path_params_must_be_absolute() {
        let ctx = Context::builder(RESTORE, "default")
            .param("data-dir", "relative/data")
            .build();
        assert!(matches!(
            path_param(&ctx, "data-dir"),
            Err(Error::Invalid(_))
        ));
        let ctx = Context::builder(RESTORE, "default")
            .param("data-dir", "/srv/etcd/../x")
            .build();
        assert!(path_param(&ctx, "data-dir").is_err());
        let ctx = Context::builder(RESTORE, "default")
            .param("data-dir", "/srv/etcd/data/")
            .build();
        assert_eq!(
            path_param(&ctx, "data-dir"),
            Ok(Some("/srv/etcd/data".to_owned()))
        );
    }

    #[test]
    fn the_tmp_file_depends_only_on_the_run() {
        let ctx = Context::builder(BACKUP, "default")
            .action_id("ab12")
            .param("tmp-dir", "/var/tmp/")
            .build();
        assert_eq!(tmp_file(&ctx), Ok("/var/tmp/cairn-etcd-ab12.db".to_owned()));
    }
}
