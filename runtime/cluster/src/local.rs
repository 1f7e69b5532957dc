//! The local backend: a cluster of processes and directories on this machine, described by an
//! inventory file.
//!
//! # Inventory format
//!
//! An inventory is a YAML file. Unknown fields are errors (a typo never silently does
//! nothing); an error names the file, the line and column, the field and the valid fields.
//! Names of namespaces, workloads, containers and volumes are DNS labels (lowercase letters,
//! digits and `-`, at most 63 characters), as in Kubernetes.
//!
//! ```yaml
//! namespaces:                  # required, at least one
//!   default:                   # a namespace
//!     objects:                 # optional: what get_object/list_objects return
//!       configmap:             #   by kind (matched case-insensitively; `configmaps` works too)
//!         settings: {data: {a: "1"}}   # then by name; any YAML, returned as JSON
//!     workloads:
//!       hello:
//!         kind: deployment     # deployment | statefulset | other; default deployment
//!         replicas: 1          # initial desired replicas (until a scale is persisted); default 1
//!         containers: [main]   # container names; the first is the default; default [main]
//!         workdir: .           # working directory of every command; default `.`
//!         env: {GREETING: hello}
//!         allow: [echo, sh, cat]
//!         start: [sh, -c, "..."]   # optional: run when scaling from 0 to 1 or more
//!         stop: [sh, -c, "..."]    # optional: run when scaling to 0
//!         ready: [sh, -c, "..."]   # optional readiness probe
//!         volumes:
//!           data: ./data       # volume name -> directory
//!         labels: {app: hello} # optional: what policies' selectors match
//! ```
//!
//! | field | meaning |
//! | --- | --- |
//! | `namespaces.<ns>.objects.<kind>.<name>` | An object returned by `get_object(ns, kind, name)` and listed by `list_objects(ns, kind)`. The kind `workload` (or `workloads`) is reserved: it lists the workloads themselves. |
//! | `kind` | What the workload stands for; reported as is, it changes nothing locally. |
//! | `replicas` | The desired replica count when the state directory has none recorded. A workload with `N` replicas has the pods `<name>-0` … `<name>-(N-1)`; with 0 it has no pods and exec fails with not-found. At most 1024. |
//! | `containers` | Names accepted by exec as the container; each pod has all of them. |
//! | `workdir` | Relative to the inventory file's directory (or absolute); must be an existing directory. |
//! | `env` | Added to the environment of every command. |
//! | `pass_env` | Variables an exec request may set beyond the database clients' (below): names, or prefixes ending in `*`. |
//! | `allow` | The programs exec may run (the first argument must equal one entry): bare names, looked up on `PATH` when the command runs, or absolute paths. Anything else (including `./x`) is denied. `start`, `stop` and `ready` come from the inventory itself and are not checked against it. |
//! | `start` | A command (`[program, args...]`; the program is a bare name looked up on `PATH`, an absolute path, or a path relative to `workdir` such as `./start.sh`) run (in `workdir`, timeout 2 minutes) when the workload is scaled from 0 to 1 or more; a non-zero exit fails the scale with the tail of its output. Its output goes to `<state_dir>/logs/<ns>.<workload>.start.log`, so it may start a daemon in the background. |
//! | `stop` | The same, when scaled to 0 (`<ns>.<workload>.stop.log`). |
//! | `ready` | A readiness probe: the workload's pods are ready while it exits 0 (it gets 10 seconds). Without it, a workload is ready when it has replicas. |
//! | `labels` | The workload's labels, as a Kubernetes workload has them: a policy's `selector` matches them. |
//! | `volumes.<name>` | A directory, relative to the inventory file's directory and inside it (no absolute paths, no `..`, no symlink out of it), that must exist and must not overlap the state directory. |
//!
//! # Processes
//!
//! A command (exec, start, stop, ready) runs as a child of the runtime, in its own process
//! group, with a cleared environment: `PATH` and `HOME` of the runtime, then the workload's
//! `env`, then (exec only) the request's env, then `CAIRN_NAMESPACE`, `CAIRN_WORKLOAD` and, for
//! exec, `CAIRN_POD` and `CAIRN_CONTAINER` (start and stop get `CAIRN_REPLICAS`). A request may
//! not set `PATH`, `LD_*`, `DYLD_*` or `CAIRN_*`: those would change which program an allowed
//! name runs, or lie about where it runs. Beyond that, it may set only the database clients'
//! variables (`PG*`, `MYSQL_*`, `MARIADB_*`, `REDISCLI_*`, `ETCDCTL_*`, `TZ`, `LANG`, `LC_*`)
//! and those the workload's `pass_env` names: an interpreter's hooks (`PERL5OPT`, `BASH_ENV`)
//! would run a blueprint's code, as Cairn's user, through any allowed program written in that
//! language. On timeout (or when the caller gives up on the
//! command) the whole process group is killed. An exec ends when the command has exited and
//! closed its stdout and stderr: a background process that keeps them open keeps the exec
//! running until the timeout. A streamed stdout is shut down when the command has ended (whatever
//! its exit code); when the exec fails instead (timeout, a failing stdin source or stdout sink)
//! the command's group is killed and the sink is left as it is, not shut down, so the caller
//! can abort the export rather than commit a truncated one.
//!
//! # State directory
//!
//! `state_dir` holds `replicas.json` (desired replicas, written atomically on every scale, so
//! they survive a restart), `scaled-from.json` (the count of each workload Cairn scaled to zero
//! and has not scaled up since; see [`SCALED_FROM_FILE`]), `logs/`, and `snapshots/<id>/`
//! (`data/`, a copy of the volume, and `meta.json`). A snapshot is copied into
//! `snapshots/.tmp-<process>-<id>` and renamed into place, so a snapshot id that exists is
//! complete; a delete renames it away (`.deleting-<process>-<id>`) before removing it. Opening
//! the state removes what a process that is gone left of either, never another live one's.
//!
//! # Volumes and confinement
//!
//! Volume directories are reached through `cap-std` directory handles opened once at load
//! (the only use of ambient authority); copies never follow symlinks (a symlink is recreated
//! with its target text, so a link to `/etc` stays a link and `/etc` is never read) and skip
//! sockets, fifos and devices with a warning (hard links are copied as separate files). File data is reflinked where the filesystem
//! supports it. Snapshot ids are `<ns>.<workload>.<volume>.<utc-timestamp>.<random>` and are
//! checked on input, so an id cannot name a path (`/`, `..`).
//!
//! A restore copies the snapshot into a new directory beside the volume, then swaps the two
//! with one atomic `renameat2(RENAME_EXCHANGE)` and removes the old contents: a crash leaves
//! the volume with either its old contents or the snapshot's, never a mix (at worst a stray
//! `.<volume>.cairn-restore-*` directory beside it). On a filesystem without the exchange the
//! swap is two renames, and a crash between them leaves the old contents in
//! `.<volume>.cairn-old-*` beside a missing volume.

mod inventory;
mod process;
mod tree;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use serde::{Deserialize, Serialize};
use tokio::process::Command;

pub use self::inventory::Inventory;
use self::inventory::{KindSpec, MAX_REPLICAS, WorkloadSpec, confined_relative, env_matches};
use crate::is_dns_label;
use crate::{
    Cluster, Error, ExecOutput, ExecRequest, Pod, Result, Volume, VolumeSnapshot, Workload,
    WorkloadRef, failed, list_hint, workload_json,
};

/// How long a `start` or `stop` command may run before the scale fails and it is killed.
pub const START_STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// How long one run of a `ready` probe may take; a probe that takes longer counts as not ready.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// First pause between readiness probes in `wait_ready`; it doubles up to [`PROBE_MAX_BACKOFF`].
const PROBE_FIRST_BACKOFF: Duration = Duration::from_millis(25);

/// Longest pause between readiness probes: a ready workload is noticed within about a second.
const PROBE_MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How much of a failed start/stop command's output is quoted in the error.
const OUTPUT_TAIL: u64 = 2048;

/// `PATH` for commands when the runtime itself has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

const REPLICAS_FILE: &str = "replicas.json";
/// The counts workloads had when Cairn scaled them to zero, until it scales them up again,
/// each with the process that did ([`ScaledFrom`]): should that process be gone (killed, the
/// machine restarted) before its posthook scaled the workload back, the next scale to zero
/// answers this count instead of 0, so the next posthook brings the workload back (as
/// `cairn.dev/scaled-from` does on Kubernetes). While that process lives, its run is still
/// on, and will scale the workload back itself.
const SCALED_FROM_FILE: &str = "scaled-from.json";

/// An entry of [`SCALED_FROM_FILE`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ScaledFrom {
    replicas: u32,
    /// The process that scaled it down.
    #[serde(flatten)]
    owner: Owner,
}

/// A process of this machine, told apart from a later one given the same pid by when it
/// started (clock ticks after boot, `/proc/PID/stat`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Owner {
    pid: u32,
    #[serde(default)]
    started: Option<u64>,
}

impl Owner {
    fn this_process() -> Self {
        let pid = std::process::id();
        Self {
            pid,
            started: process_start(pid),
        }
    }

    /// Whether it still runs (this process included).
    fn lives(&self) -> bool {
        match self.started {
            Some(started) => process_start(self.pid) == Some(started),
            None => Path::new(&format!("/proc/{}", self.pid)).exists(),
        }
    }

    /// As part of a file name: `PID.STARTED`.
    fn token(&self) -> String {
        format!("{}.{}", self.pid, self.started.unwrap_or(0))
    }

    /// [`Owner::token`] read back.
    fn from_token(token: &str) -> Option<Self> {
        let (pid, started) = token.split_once('.')?;
        Some(Self {
            pid: pid.parse().ok()?,
            started: Some(started.parse().ok()?).filter(|&s| s != 0),
        })
    }
}

/// When process `pid` started, in clock ticks after boot; `None` when it does not exist.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which may hold spaces and parentheses, field 3 on: the start
    // time is field 22.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

const SNAPSHOTS_DIR: &str = "snapshots";
const LOGS_DIR: &str = "logs";
const SNAPSHOT_META: &str = "meta.json";
const SNAPSHOT_DATA: &str = "data";

/// The local backend: namespaces and workloads from an inventory file, whose pods are
/// processes on this machine and whose volumes are directories.
///
/// Build it with [`LocalCluster::from_inventory`]; the inventory format is documented in the
/// module docs of `runtime/cluster/src/local.rs` (and the README).
#[derive(Debug)]
pub struct LocalCluster {
    inventory_path: PathBuf,
    namespaces: BTreeMap<String, LocalNamespace>,
    state: Arc<Dir>,
    snapshots: Arc<Dir>,
    logs: Arc<Dir>,
    /// Desired replicas by `ns/name`; the lock is held while the file is rewritten so writes
    /// land in order.
    replicas: tokio::sync::Mutex<BTreeMap<String, u32>>,
}

#[derive(Debug)]
struct LocalNamespace {
    objects: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    workloads: BTreeMap<String, Arc<LocalWorkload>>,
}

#[derive(Debug)]
struct LocalWorkload {
    reference: WorkloadRef,
    kind: KindSpec,
    containers: Vec<String>,
    workdir: PathBuf,
    env: BTreeMap<String, String>,
    allow: Vec<String>,
    pass_env: Vec<String>,
    start: Option<Vec<String>>,
    stop: Option<Vec<String>>,
    ready: Option<Vec<String>>,
    volumes: BTreeMap<String, Arc<LocalVolume>>,
    labels: BTreeMap<String, String>,
    /// Serializes scales of this workload (start/stop commands must not interleave).
    scale_lock: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct LocalVolume {
    /// The directory holding the volume; the volume is swapped in it on restore, so it is
    /// reached by name through this handle, not held open itself.
    parent: Dir,
    /// The volume directory's name in `parent`.
    name: OsString,
    /// For messages only.
    path: PathBuf,
    /// Serializes snapshot, restore and delete on this volume; other volumes run in parallel.
    /// Shared with the blocking work it guards, which holds it to its end even when the
    /// future that started it is dropped.
    lock: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotMeta {
    id: String,
    namespace: String,
    workload: String,
    volume: String,
    created_ms: u64,
    bytes: u64,
}

impl SnapshotMeta {
    fn to_snapshot(&self) -> VolumeSnapshot {
        VolumeSnapshot {
            id: self.id.clone(),
            workload: WorkloadRef::new(&self.namespace, &self.workload),
            volume: self.volume.clone(),
            created_ms: self.created_ms,
            bytes: self.bytes,
        }
    }
}

/// A short random hex string for unique names (no extra dependency: std's hasher keys are
/// random per process and per call).
pub(crate) fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{:08x}", hasher.finish() as u32)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `YYYYMMDDTHHMMSSmmmZ` for a time in milliseconds since the epoch (UTC).
fn utc_stamp(ms: u64) -> String {
    let time = i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .unwrap_or(jiff::Timestamp::MAX);
    format!("{}{:03}Z", time.strftime("%Y%m%dT%H%M%S"), ms % 1000)
}

/// Checks a snapshot id's shape (`<ns>.<workload>.<volume>.<stamp>.<random>`), so that it is
/// one safe path component, and returns its namespace, workload and volume.
fn parse_snapshot_id(id: &str) -> Result<(&str, &str, &str)> {
    let invalid = || {
        Error::Invalid(format!(
            "snapshot id {id:?} is malformed: expected <namespace>.<workload>.<volume>.<timestamp>.<random>"
        ))
    };
    let parts: Vec<&str> = id.split('.').collect();
    let [ns, workload, volume, stamp, random] = parts.as_slice() else {
        return Err(invalid());
    };
    let stamp_ok = !stamp.is_empty()
        && stamp
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'T' || b == b'Z');
    let random_ok = !random.is_empty() && random.bytes().all(|b| b.is_ascii_hexdigit());
    if is_dns_label(ns) && is_dns_label(workload) && is_dns_label(volume) && stamp_ok && random_ok {
        Ok((ns, workload, volume))
    } else {
        Err(invalid())
    }
}

async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(failed(what, e)),
        Err(join) => Err(failed(what, join)),
    }
}

/// [`blocking`] for work that must stop when the future awaiting it is dropped (its run was
/// interrupted or timed out): `f` is given a flag that is set then, and checks it (a volume's
/// copy would otherwise finish and be renamed into place unseen, a snapshot no run records).
async fn stoppable<T: Send + 'static>(
    what: &str,
    f: impl FnOnce(&AtomicBool) -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let _guard = SetOnDrop(Arc::clone(&stop));
    blocking(what, move || f(&stop)).await
}

/// The error of work [`stoppable`] stopped.
fn stopped() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Interrupted,
        "stopped: the run that asked for it has ended",
    )
}

impl LocalCluster {
    /// Loads an inventory file and opens (creating it if missing) the state directory that
    /// holds snapshots and persisted replica counts.
    ///
    /// Fails with [`Error::Inventory`] when the file is malformed, when a workload's `workdir`
    /// or a volume's directory is missing, or when a volume path leaves the inventory's
    /// directory.
    pub fn from_inventory(path: &Path, state_dir: &Path) -> Result<LocalCluster> {
        let inventory = Inventory::load(path)?;
        let origin = path.display().to_string();
        let bad = |reason: String| Error::Inventory {
            path: origin.clone(),
            reason,
        };
        let base = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base = std::path::absolute(&base)
            .map_err(|e| bad(format!("cannot resolve its directory: {e}")))?;
        // The one use of ambient authority for volumes: the inventory's directory.
        let base_dir = Dir::open_ambient_dir(&base, ambient_authority())
            .map_err(|e| bad(format!("cannot open its directory {}: {e}", base.display())))?;

        std::fs::create_dir_all(state_dir).map_err(|e| {
            failed(
                format!("creating the state directory {}", state_dir.display()),
                e,
            )
        })?;
        let state = Dir::open_ambient_dir(state_dir, ambient_authority()).map_err(|e| {
            failed(
                format!("opening the state directory {}", state_dir.display()),
                e,
            )
        })?;
        for sub in [SNAPSHOTS_DIR, LOGS_DIR] {
            state
                .create_dir_all(sub)
                .map_err(|e| failed(format!("creating {}/{sub}", state_dir.display()), e))?;
        }
        let snapshots = state
            .open_dir(SNAPSHOTS_DIR)
            .map_err(|e| failed("opening the snapshots directory", e))?;
        let logs = state
            .open_dir(LOGS_DIR)
            .map_err(|e| failed("opening the logs directory", e))?;
        clean_leftovers(&snapshots);

        let persisted: BTreeMap<String, u32> = read_counts(&state, REPLICAS_FILE)?;
        let mut replicas = BTreeMap::new();
        let mut namespaces = BTreeMap::new();
        for (ns_name, ns) in inventory.namespaces {
            let mut workloads = BTreeMap::new();
            for (name, spec) in ns.workloads {
                let reference = WorkloadRef::new(&ns_name, &name);
                let workload = build_workload(reference.clone(), spec.clone(), &base, &base_dir)
                    .map_err(|reason| bad(format!("workload {reference}: {reason}")))?;
                replicas.insert(
                    reference.to_string(),
                    persisted
                        .get(&reference.to_string())
                        .copied()
                        .unwrap_or(spec.replicas),
                );
                check_apart(&workload, state_dir).map_err(bad)?;
                workloads.insert(name, Arc::new(workload));
            }
            let objects = ns
                .objects
                .into_iter()
                .map(|(kind, objects)| (kind.to_ascii_lowercase(), objects))
                .collect();
            namespaces.insert(ns_name, LocalNamespace { objects, workloads });
        }
        Ok(LocalCluster {
            inventory_path: path.to_path_buf(),
            namespaces,
            state: Arc::new(state),
            snapshots: Arc::new(snapshots),
            logs: Arc::new(logs),
            replicas: tokio::sync::Mutex::new(replicas),
        })
    }

    /// The inventory file this cluster was loaded from.
    pub fn inventory_path(&self) -> &Path {
        &self.inventory_path
    }

    fn namespace(&self, namespace: &str) -> Result<&LocalNamespace> {
        self.namespaces
            .get(namespace)
            .ok_or_else(|| Error::NotFound {
                kind: "namespace",
                name: namespace.to_owned(),
                hint: list_hint(
                    "the inventory defines the namespaces",
                    self.namespaces.keys(),
                ),
            })
    }

    fn lookup(&self, workload: &WorkloadRef) -> Result<&Arc<LocalWorkload>> {
        let ns = self.namespace(&workload.namespace)?;
        ns.workloads
            .get(&workload.name)
            .ok_or_else(|| Error::NotFound {
                kind: "workload",
                name: workload.to_string(),
                hint: list_hint(
                    &format!("namespace {} defines the workloads", workload.namespace),
                    ns.workloads.keys(),
                ),
            })
    }

    /// Writes a map of workloads' counts to `file` in the state directory, atomically.
    async fn save_counts<T: Serialize>(
        &self,
        file: &'static str,
        counts: &BTreeMap<String, T>,
    ) -> Result<()> {
        let bytes =
            serde_json::to_vec_pretty(counts).map_err(|e| failed(format!("encoding {file}"), e))?;
        let state = Arc::clone(&self.state);
        blocking("saving replica counts", move || {
            tree::write_atomic(&state, file, &bytes)
        })
        .await
    }

    async fn desired(&self, workload: &WorkloadRef) -> u32 {
        self.replicas
            .lock()
            .await
            .get(&workload.to_string())
            .copied()
            .unwrap_or(0)
    }

    /// The environment every command of `w` starts from.
    fn base_env(w: &LocalWorkload) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert(
            "PATH".to_owned(),
            std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned()),
        );
        if let Ok(home) = std::env::var("HOME") {
            env.insert("HOME".to_owned(), home);
        }
        env.extend(w.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.insert("CAIRN_NAMESPACE".to_owned(), w.reference.namespace.clone());
        env.insert("CAIRN_WORKLOAD".to_owned(), w.reference.name.clone());
        env
    }

    fn command(
        w: &LocalWorkload,
        program: &Path,
        argv: &[String],
        env: &BTreeMap<String, String>,
    ) -> Command {
        let mut command = Command::new(program);
        if let Some(first) = argv.first() {
            command.arg0(first);
        }
        command
            .args(argv.iter().skip(1))
            .env_clear()
            .envs(env)
            .current_dir(&w.workdir);
        command
    }

    /// Runs the readiness probe (or applies the default rule) for a workload with `replicas`.
    async fn probe(&self, w: &LocalWorkload, replicas: u32, timeout: Duration) -> Result<bool> {
        if replicas == 0 {
            return Ok(false);
        }
        let Some(argv) = &w.ready else {
            return Ok(true);
        };
        match self.run_probe(w, argv, replicas, timeout).await {
            Err(Error::TimedOut { .. }) => Ok(false),
            other => other.map(|ready| ready.unwrap_or(false)),
        }
    }

    /// The ready probe `argv` run once: whether it exits 0, or `None` when a signal killed
    /// it (which says nothing of the application). One that takes longer than `timeout`, or
    /// cannot run, is an error, not an answer.
    async fn run_probe(
        &self,
        w: &LocalWorkload,
        argv: &[String],
        replicas: u32,
        timeout: Duration,
    ) -> Result<Option<bool>> {
        use std::os::unix::process::ExitStatusExt as _;
        let mut env = Self::base_env(w);
        env.insert("CAIRN_REPLICAS".to_owned(), replicas.to_string());
        let program = resolve_hook_program(w, &argv[0], &env)?;
        let mut command = Self::command(w, &program, argv, &env);
        let what = format!("the ready probe of workload {}", w.reference);
        let status = process::run_logged(&mut command, &what, None, timeout).await?;
        Ok(status.signal().is_none().then(|| status.success()))
    }

    async fn describe(&self, w: &LocalWorkload, probe: bool) -> Result<Workload> {
        let replicas = self.desired(&w.reference).await;
        let ready = if probe {
            self.probe(w, replicas, PROBE_TIMEOUT).await?
        } else {
            replicas > 0
        };
        let mut d = describe(w, replicas, ready);
        if replicas == 0 {
            // Only said: a file that cannot be read fails the next scale, not a listing.
            let scaled_from: BTreeMap<String, ScaledFrom> =
                read_counts(&self.state, SCALED_FROM_FILE).unwrap_or_default();
            d.left_stopped = scaled_from
                .get(&w.reference.to_string())
                .filter(|s| !s.owner.lives())
                .map(|s| s.replicas);
        }
        Ok(d)
    }

    async fn run_hook(
        &self,
        w: &LocalWorkload,
        hook: &str,
        argv: &[String],
        replicas: u32,
    ) -> Result<()> {
        let mut env = Self::base_env(w);
        env.insert("CAIRN_REPLICAS".to_owned(), replicas.to_string());
        let program = resolve_hook_program(w, &argv[0], &env)?;
        let mut command = Self::command(w, &program, argv, &env);
        let log_name = format!("{}.{}.{hook}.log", w.reference.namespace, w.reference.name);
        let logs = Arc::clone(&self.logs);
        let log_name2 = log_name.clone();
        let log = blocking("opening the log file", move || {
            let mut options = cap_std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            logs.open_with(&log_name2, &options).map(|f| f.into_std())
        })
        .await?;
        let what = format!("the {hook} command of workload {}", w.reference);
        let status =
            process::run_logged(&mut command, &what, Some(log), START_STOP_TIMEOUT).await?;
        if status.success() {
            return Ok(());
        }
        let code = process::exit_code(status);
        let logs = Arc::clone(&self.logs);
        let tail = blocking("reading the log file", move || read_tail(&logs, &log_name))
            .await
            .unwrap_or_default();
        Err(failed(
            what,
            std::io::Error::other(format!("exited with {code}; output ends with:\n{tail}")),
        ))
    }

    fn volume(&self, workload: &WorkloadRef, volume: &str) -> Result<Arc<LocalVolume>> {
        let w = self.lookup(workload)?;
        w.volumes
            .get(volume)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                kind: "volume",
                name: volume.to_owned(),
                hint: list_hint(&format!("volumes of workload {workload}"), w.volumes.keys()),
            })
    }

    async fn read_meta(&self, id: &str) -> Result<SnapshotMeta> {
        parse_snapshot_id(id)?;
        let snapshots = Arc::clone(&self.snapshots);
        let path = format!("{id}/{SNAPSHOT_META}");
        let bytes = match tokio::task::spawn_blocking(move || snapshots.read(path)).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    kind: "snapshot",
                    name: id.to_owned(),
                    hint: "; it was deleted, or taken by another state directory".to_owned(),
                });
            }
            Ok(Err(e)) => return Err(failed(format!("reading snapshot {id}"), e)),
            Err(e) => return Err(failed(format!("reading snapshot {id}"), e)),
        };
        let meta: SnapshotMeta = serde_json::from_slice(&bytes)
            .map_err(|e| failed(format!("reading the metadata of snapshot {id}"), e))?;
        if meta.id != id {
            return Err(failed(
                format!("reading snapshot {id}"),
                std::io::Error::other(format!("its metadata names another snapshot ({})", meta.id)),
            ));
        }
        Ok(meta)
    }
}

fn describe(w: &LocalWorkload, replicas: u32, ready: bool) -> Workload {
    let pods = (0..replicas)
        .map(|i| Pod {
            name: format!("{}-{i}", w.reference.name),
            ready,
            containers: w.containers.clone(),
        })
        .collect();
    Workload {
        reference: w.reference.clone(),
        kind: w.kind.into(),
        replicas,
        ready_replicas: if ready { replicas } else { 0 },
        pods,
        volumes: w
            .volumes
            .keys()
            .map(|name| Volume {
                name: name.clone(),
                bytes: None,
            })
            .collect(),
        labels: w.labels.clone(),
        left_stopped: None,
    }
}

fn build_workload(
    reference: WorkloadRef,
    spec: WorkloadSpec,
    base: &Path,
    base_dir: &Dir,
) -> std::result::Result<LocalWorkload, String> {
    let workdir = base.join(&spec.workdir);
    if !workdir.is_dir() {
        return Err(format!(
            "workdir {} is not an existing directory",
            workdir.display()
        ));
    }
    let mut volumes = BTreeMap::new();
    for (name, path) in &spec.volumes {
        let relative = confined_relative(path).ok_or_else(|| {
            format!(
                "volume {name}: path {} leaves the inventory's directory",
                path.display()
            )
        })?;
        let (parent_rel, leaf) = match (relative.parent(), relative.file_name()) {
            (Some(parent), Some(leaf)) => (parent.to_path_buf(), leaf.to_os_string()),
            _ => {
                return Err(format!(
                    "volume {name}: path {} names no directory",
                    path.display()
                ));
            }
        };
        let shown = base.join(&relative);
        let parent = if parent_rel.as_os_str().is_empty() {
            base_dir.try_clone()
        } else {
            base_dir.open_dir(&parent_rel)
        }
        .map_err(|e| format!("volume {name}: cannot open {}: {e}", shown.display()))?;
        // cap-std refuses a path that resolves outside the inventory's directory (a symlink
        // out of it); the volume must be a directory.
        match parent.symlink_metadata(&leaf) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.is_symlink() => {
                return Err(format!(
                    "volume {name}: {} is a symlink; name the directory itself",
                    shown.display()
                ));
            }
            Ok(_) => {
                return Err(format!(
                    "volume {name}: {} is not a directory",
                    shown.display()
                ));
            }
            Err(e) => {
                return Err(format!(
                    "volume {name}: directory {} is missing: {e}",
                    shown.display()
                ));
            }
        }
        volumes.insert(
            name.clone(),
            Arc::new(LocalVolume {
                parent,
                name: leaf,
                path: shown,
                lock: Arc::new(tokio::sync::Mutex::new(())),
            }),
        );
    }
    Ok(LocalWorkload {
        reference,
        kind: spec.kind,
        containers: spec.containers,
        workdir,
        env: spec.env,
        labels: spec.labels,
        allow: spec.allow,
        pass_env: spec.pass_env,
        start: spec.start,
        stop: spec.stop,
        ready: spec.ready,
        volumes,
        scale_lock: tokio::sync::Mutex::new(()),
    })
}

/// Refuses a volume that holds the state directory or lies inside it: a snapshot would copy
/// itself, and a restore would replace the state.
fn check_apart(w: &LocalWorkload, state_dir: &Path) -> std::result::Result<(), String> {
    let Ok(state) = std::fs::canonicalize(state_dir) else {
        return Ok(());
    };
    for (name, volume) in &w.volumes {
        let Ok(path) = std::fs::canonicalize(&volume.path) else {
            continue;
        };
        if state.starts_with(&path) || path.starts_with(&state) {
            return Err(format!(
                "workload {}: volume {name} ({}) and the state directory ({}) overlap; keep the \
                 state directory outside every volume",
                w.reference,
                path.display(),
                state.display()
            ));
        }
    }
    Ok(())
}

/// Removes what an interrupted snapshot or delete left behind.
fn clean_leftovers(snapshots: &Dir) {
    let Ok(entries) = snapshots.entries() else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(rest) = name
            .strip_prefix(".tmp-")
            .or_else(|| name.strip_prefix(".deleting-"))
        else {
            continue;
        };
        // Another process's copy or delete in progress (two runs on one home) is its own.
        let owner = rest.split_once('-').and_then(|(t, _)| Owner::from_token(t));
        if owner.is_some_and(|o| o.lives()) {
            continue;
        }
        if let Err(e) = tree::remove_tree(snapshots, Path::new(&*name)) {
            tracing::warn!(entry = %name, error = %e, "cannot remove a leftover snapshot directory");
        }
    }
}

/// A map of workloads' counts kept in the state directory ([`REPLICAS_FILE`],
/// [`SCALED_FROM_FILE`]); empty when there is none yet.
fn read_counts<T: serde::de::DeserializeOwned>(
    state: &Dir,
    file: &str,
) -> Result<BTreeMap<String, T>> {
    match state.read(file) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| failed(format!("reading {file}"), e))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(failed(format!("reading {file}"), e)),
    }
}

fn read_tail(dir: &Dir, name: &str) -> std::io::Result<String> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut file = dir.open(name)?.into_std();
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(OUTPUT_TAIL)))?;
    let mut bytes = Vec::new();
    file.take(OUTPUT_TAIL).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Finds the program to run for an allowed `name`: itself when absolute, else the first
/// executable file of that name on the command's `PATH`.
fn resolve_program(name: &str, env: &BTreeMap<String, String>) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    if name.starts_with('/') {
        return Ok(PathBuf::from(name));
    }
    let path = env.get("PATH").map(String::as_str).unwrap_or(DEFAULT_PATH);
    for dir in path.split(':').filter(|d| d.starts_with('/')) {
        let candidate = Path::new(dir).join(name);
        if let Ok(meta) = std::fs::metadata(&candidate)
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
            return Ok(candidate);
        }
    }
    Err(Error::NotFound {
        kind: "program",
        name: name.to_owned(),
        hint: format!("; it is not on PATH ({path})"),
    })
}

/// Finds the program of a `start`, `stop` or `ready` command: like [`resolve_program`], and a
/// relative path with a `/` (`./start.sh`) is taken from the workload's `workdir`.
fn resolve_hook_program(
    w: &LocalWorkload,
    name: &str,
    env: &BTreeMap<String, String>,
) -> Result<PathBuf> {
    if name.contains('/') && !name.starts_with('/') {
        return Ok(w.workdir.join(name));
    }
    resolve_program(name, env)
}

#[async_trait]
impl Cluster for LocalCluster {
    fn backend(&self) -> &'static str {
        "local"
    }

    async fn namespaces(&self) -> Result<Vec<String>> {
        Ok(self.namespaces.keys().cloned().collect())
    }

    async fn workloads(&self, namespace: &str) -> Result<Vec<Workload>> {
        let ns = self.namespace(namespace)?;
        let mut out = Vec::with_capacity(ns.workloads.len());
        for w in ns.workloads.values() {
            out.push(self.describe(w, true).await?);
        }
        Ok(out)
    }

    async fn workload(&self, workload: &WorkloadRef) -> Result<Workload> {
        let w = self.lookup(workload)?;
        self.describe(w, true).await
    }

    async fn exec(&self, workload: &WorkloadRef, request: ExecRequest) -> Result<ExecOutput> {
        let w = self.lookup(workload)?;
        let replicas = self.desired(workload).await;
        if request.stopped {
            if replicas > 0 {
                return Err(Error::Invalid(format!(
                    "workload {workload} has {replicas} replicas: a command for a stopped \
                     workload runs only while it is scaled to zero (scale it down first, or run \
                     the command in a pod)"
                )));
            }
            if let Some(pod) = &request.pod {
                return Err(Error::Invalid(format!(
                    "a command for a stopped workload runs in no pod of its own; drop the pod \
                     {pod:?}"
                )));
            }
        } else if replicas == 0 {
            return Err(Error::NotFound {
                kind: "pod",
                name: request
                    .pod
                    .clone()
                    .unwrap_or_else(|| format!("{}-0", workload.name)),
                hint: format!(
                    "; workload {workload} has no running pods (replicas 0): scale it up first"
                ),
            });
        }
        let pods: Vec<String> = if request.stopped {
            vec![format!("{}-stopped", workload.name)]
        } else {
            (0..replicas)
                .map(|i| format!("{}-{i}", workload.name))
                .collect()
        };
        let pod = match &request.pod {
            None => pods[0].clone(),
            Some(pod) if pods.contains(pod) => pod.clone(),
            Some(pod) => {
                return Err(Error::NotFound {
                    kind: "pod",
                    name: pod.clone(),
                    hint: list_hint(&format!("workload {workload} has the pods"), pods.iter()),
                });
            }
        };
        let container = request.container_in(&pod, &w.containers)?;
        let stages = request.stages()?;
        for argv in &stages {
            let program = &argv[0];
            if !w.allow.iter().any(|allowed| allowed == program) {
                return Err(Error::Denied(format!(
                    "program {program:?} is not allowed in workload {workload}; its allow list is \
                     [{}] (add it to `allow` in {})",
                    w.allow.join(", "),
                    self.inventory_path.display()
                )));
            }
        }
        let mut env = Self::base_env(w);
        for (name, value) in request.checked_env()? {
            if !env_matches(name, inventory::PASSED_ENV) && !env_matches(name, &w.pass_env) {
                return Err(Error::Denied(format!(
                    "an exec in workload {workload} may not set {name}: the local target passes \
                     only the database clients' variables ({}) and those the workload's \
                     `pass_env` names (add {name} to it in {} if the blueprint is trusted with \
                     what it does: commands run as Cairn's own user)",
                    inventory::PASSED_ENV.join(", "),
                    self.inventory_path.display()
                )));
            }
            env.insert(name.clone(), value.clone());
        }
        env.insert("CAIRN_POD".to_owned(), pod.clone());
        env.insert("CAIRN_CONTAINER".to_owned(), container);
        let mut commands = Vec::with_capacity(stages.len());
        for argv in &stages {
            let resolved = resolve_program(&argv[0], &env)?;
            commands.push(Self::command(w, &resolved, argv, &env));
        }
        let programs: Vec<&str> = stages.iter().map(|a| a[0].as_str()).collect();
        let what = format!(
            "{} in pod {pod} of workload {workload}",
            programs.join(" | ")
        );
        let done = process::run(
            &mut commands,
            &what,
            request.stdin,
            request.stdout,
            request.output_limit,
            request.timeout,
        )
        .await?;
        Ok(done.into_output(pod))
    }

    async fn scale(&self, workload: &WorkloadRef, replicas: u32) -> Result<u32> {
        if replicas > MAX_REPLICAS {
            return Err(Error::Invalid(format!(
                "cannot scale {workload} to {replicas} replicas: the local backend allows at most {MAX_REPLICAS}"
            )));
        }
        let w = self.lookup(workload)?;
        let _serial = w.scale_lock.lock().await;
        let key = workload.to_string();
        // What another process (another run on this home) scaled it to since this one loaded
        // the counts: read again, so its start command does not run twice.
        let persisted: BTreeMap<String, u32> = read_counts(&self.state, REPLICAS_FILE)?;
        {
            let mut map = self.replicas.lock().await;
            for (name, count) in &persisted {
                if let Some(kept) = map.get_mut(name) {
                    *kept = *count;
                }
            }
        }
        let previous = self.desired(workload).await;
        let mut scaled_from: BTreeMap<String, ScaledFrom> =
            read_counts(&self.state, SCALED_FROM_FILE)?;
        let remembered = scaled_from.get(&key).cloned();
        // Remembered before the workload stops, dropped once it runs again.
        if replicas == 0 && previous > 0 {
            scaled_from.insert(
                key.clone(),
                ScaledFrom {
                    replicas: previous,
                    owner: Owner::this_process(),
                },
            );
            self.save_counts(SCALED_FROM_FILE, &scaled_from).await?;
        }
        // A stop command begun and never counted: an interrupt or a crash cut it short, or it
        // failed. Only the ready probe can tell whether it stopped the application.
        let stop_unfinished = previous > 0
            && replicas > 0
            && remembered
                .as_ref()
                .is_some_and(|r| r.owner.pid == std::process::id() || !r.owner.lives());
        if previous == 0
            && replicas > 0
            && let Some(start) = &w.start
        {
            self.run_hook(w, "start", start, replicas).await?;
        } else if previous > 0
            && replicas == 0
            && let Some(stop) = &w.stop
        {
            self.run_hook(w, "stop", stop, replicas).await?;
        } else if stop_unfinished && let Some(start) = &w.start {
            // Started again only on the probe's clear answer: a probe that hangs or cannot run
            // says nothing, and a second start of a running application is worse than a word.
            let unknown = "the stop command of the workload did not finish, and Cairn cannot tell whether it stopped the application";
            match &w.ready {
                None => {
                    tracing::warn!(%workload, "{unknown} (it has no `ready` probe): if it is down, start it")
                }
                Some(argv) => match self.run_probe(w, argv, replicas, PROBE_TIMEOUT).await {
                    Ok(Some(true)) => {}
                    Ok(Some(false)) => {
                        tracing::warn!(
                            %workload,
                            "the stop command of the workload did not finish, and its ready probe says it is down: starting it again"
                        );
                        self.run_hook(w, "start", start, replicas).await?;
                    }
                    Ok(None) => tracing::warn!(
                        %workload,
                        "{unknown} (a signal killed its ready probe): if it is down, start it"
                    ),
                    Err(e) => tracing::warn!(
                        %workload,
                        "{unknown} ({e}): if it is down, start it"
                    ),
                },
            }
        }
        let mut map = self.replicas.lock().await;
        let mut next = map.clone();
        next.insert(key.clone(), replicas);
        self.save_counts(REPLICAS_FILE, &next).await?;
        *map = next;
        drop(map);
        if replicas > 0 && scaled_from.remove(&key).is_some() {
            self.save_counts(SCALED_FROM_FILE, &scaled_from).await?;
        }
        tracing::info!(%workload, previous, replicas, "scaled");
        // Stopped by Cairn, then Cairn stopped before scaling it back: the count it had.
        match remembered {
            Some(from) if replicas == 0 && previous == 0 && !from.owner.lives() => {
                let n = from.replicas;
                tracing::warn!(
                    %workload,
                    replicas = n,
                    "the workload is at 0 replicas since a Cairn process that is gone (pid {}) scaled it down from {n}, before its posthook scaled it back; answering {n}",
                    from.owner.pid
                );
                Ok(n)
            }
            _ => Ok(previous),
        }
    }

    async fn wait_ready(&self, workload: &WorkloadRef, timeout: Duration) -> Result<Workload> {
        let w = self.lookup(workload)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = PROBE_FIRST_BACKOFF;
        loop {
            let replicas = self.desired(workload).await;
            if replicas == 0 {
                // Ready replicas equal desired replicas: nothing to wait for.
                return Ok(describe(w, 0, false));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if self.probe(w, replicas, left.min(PROBE_TIMEOUT)).await? {
                return Ok(describe(w, replicas, true));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(Error::TimedOut {
                    what: format!("waiting for workload {workload} to be ready"),
                    after: timeout,
                });
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(PROBE_MAX_BACKOFF);
        }
    }

    async fn get_object(
        &self,
        namespace: &str,
        kind: &str,
        name: &str,
    ) -> Result<serde_json::Value> {
        let ns = self.namespace(namespace)?;
        let kind_lower = kind.to_ascii_lowercase();
        if kind_lower == "workload" || kind_lower == "workloads" {
            let w = ns.workloads.get(name).ok_or_else(|| Error::NotFound {
                kind: "workload",
                name: format!("{namespace}/{name}"),
                hint: list_hint(
                    &format!("namespace {namespace} defines the workloads"),
                    ns.workloads.keys(),
                ),
            })?;
            let described = self.describe(w, false).await?;
            return Ok(workload_json(&described, &w.containers));
        }
        let objects = objects_of(ns, &kind_lower).ok_or_else(|| Error::NotFound {
            kind: "object",
            name: format!("{kind}/{name}"),
            hint: list_hint(
                &format!("namespace {namespace} has objects of the kinds"),
                ns.objects.keys(),
            ),
        })?;
        objects.get(name).cloned().ok_or_else(|| Error::NotFound {
            kind: "object",
            name: format!("{kind}/{name}"),
            hint: list_hint(
                &format!("namespace {namespace} has the {kind} objects"),
                objects.keys(),
            ),
        })
    }

    async fn list_objects(&self, namespace: &str, kind: &str) -> Result<Vec<serde_json::Value>> {
        let ns = self.namespace(namespace)?;
        let kind_lower = kind.to_ascii_lowercase();
        if kind_lower == "workload" || kind_lower == "workloads" {
            let mut out = Vec::with_capacity(ns.workloads.len());
            for w in ns.workloads.values() {
                out.push(workload_json(
                    &self.describe(w, false).await?,
                    &w.containers,
                ));
            }
            return Ok(out);
        }
        Ok(objects_of(ns, &kind_lower)
            .map(|objects| objects.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn snapshot(&self, workload: &WorkloadRef, volume: &str) -> Result<VolumeSnapshot> {
        let vol = self.volume(workload, volume)?;
        let serial = Arc::clone(&vol.lock).lock_owned().await;
        let created_ms = now_ms();
        let id = format!(
            "{}.{}.{volume}.{}.{}",
            workload.namespace,
            workload.name,
            utc_stamp(created_ms),
            random_suffix()
        );
        let mut meta = SnapshotMeta {
            id: id.clone(),
            namespace: workload.namespace.clone(),
            workload: workload.name.clone(),
            volume: volume.to_owned(),
            created_ms,
            bytes: 0,
        };
        let snapshots = Arc::clone(&self.snapshots);
        let vol2 = Arc::clone(&vol);
        let tmp = format!(".tmp-{}-{id}", Owner::this_process().token());
        let id2 = id.clone();
        let bytes = stoppable(
            &format!("snapshotting volume {volume} ({})", vol.path.display()),
            move |stop| {
                let _serial = serial;
                let result = (|| {
                    let source = vol2.parent.open_dir(&vol2.name)?;
                    snapshots.create_dir(&tmp)?;
                    let staging = snapshots.open_dir(&tmp)?;
                    staging.create_dir(SNAPSHOT_DATA)?;
                    let data = staging.open_dir(SNAPSHOT_DATA)?;
                    let bytes = tree::copy_tree(&source, &data, stop)?;
                    meta.bytes = bytes;
                    let json = serde_json::to_vec_pretty(&meta).map_err(std::io::Error::other)?;
                    tree::write_atomic(&staging, SNAPSHOT_META, &json)?;
                    if stop.load(Ordering::Acquire) {
                        return Err(stopped());
                    }
                    snapshots.rename(&tmp, &snapshots, &id2)?;
                    Ok(bytes)
                })();
                if result.is_err() {
                    let _ = tree::remove_tree(&snapshots, Path::new(&tmp));
                }
                result
            },
        )
        .await?;
        tracing::info!(%workload, volume, id, bytes, "volume snapshotted");
        Ok(VolumeSnapshot {
            id,
            workload: workload.clone(),
            volume: volume.to_owned(),
            created_ms,
            bytes,
        })
    }

    async fn snapshot_info(&self, id: &str) -> Result<VolumeSnapshot> {
        Ok(self.read_meta(id).await?.to_snapshot())
    }

    async fn restore_snapshot(&self, id: &str) -> Result<VolumeSnapshot> {
        let meta = self.read_meta(id).await?;
        let snapshot = meta.to_snapshot();
        let vol = self.volume(&snapshot.workload, &snapshot.volume)?;
        let serial = Arc::clone(&vol.lock).lock_owned().await;
        let snapshots = Arc::clone(&self.snapshots);
        let vol2 = Arc::clone(&vol);
        let data_path = format!("{id}/{SNAPSHOT_DATA}");
        stoppable(
            &format!("restoring snapshot {id} into {}", vol.path.display()),
            move |stop| {
                let _serial = serial;
                restore_into(&snapshots, &data_path, &vol2, stop)
            },
        )
        .await?;
        tracing::info!(workload = %snapshot.workload, volume = snapshot.volume, id, "volume restored");
        Ok(snapshot)
    }

    async fn delete_snapshot(&self, id: &str) -> Result<()> {
        let meta = self.read_meta(id).await?;
        let snapshot = meta.to_snapshot();
        // Not a restore of this snapshot at the same time; the workload may have left the
        // inventory since, which does not stop a delete.
        let vol = self.volume(&snapshot.workload, &snapshot.volume).ok();
        let serial = match &vol {
            Some(vol) => Some(Arc::clone(&vol.lock).lock_owned().await),
            None => None,
        };
        let snapshots = Arc::clone(&self.snapshots);
        let id2 = id.to_owned();
        blocking(&format!("deleting snapshot {id}"), move || {
            let _serial = serial;
            let doomed = format!(".deleting-{}-{id2}", Owner::this_process().token());
            snapshots.rename(&id2, &snapshots, &doomed)?;
            tree::remove_tree(&snapshots, Path::new(&doomed))
        })
        .await?;
        tracing::info!(id, "snapshot deleted");
        Ok(())
    }
}

fn objects_of<'a>(
    ns: &'a LocalNamespace,
    kind: &str,
) -> Option<&'a BTreeMap<String, serde_json::Value>> {
    ns.objects.get(kind).or_else(|| {
        kind.strip_suffix('s')
            .and_then(|singular| ns.objects.get(singular))
    })
}

/// Copies a snapshot's data beside the volume, swaps it in, and removes the old contents.
/// Stops before the swap when `stop` is set, leaving the volume as it was.
fn restore_into(
    snapshots: &Dir,
    data_path: &str,
    vol: &LocalVolume,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let source = snapshots.open_dir(data_path)?;
    let leaf = vol.name.to_string_lossy();
    let staging = format!(".{leaf}.cairn-restore-{}", random_suffix());
    vol.parent.create_dir(&staging)?;
    let copied = vol
        .parent
        .open_dir(&staging)
        .and_then(|target| tree::copy_tree(&source, &target, stop))
        .and_then(|_| {
            if stop.load(Ordering::Acquire) {
                Err(stopped())
            } else {
                Ok(())
            }
        });
    if let Err(e) = copied {
        let _ = tree::remove_tree(&vol.parent, Path::new(&staging));
        return Err(e);
    }
    let swapped = rustix::fs::renameat_with(
        &vol.parent,
        Path::new(&staging),
        &vol.parent,
        Path::new(&vol.name),
        rustix::fs::RenameFlags::EXCHANGE,
    );
    match swapped {
        // The old contents are now under the staging name.
        Ok(()) => tree::remove_tree(&vol.parent, Path::new(&staging)),
        Err(e)
            if e == rustix::io::Errno::INVAL
                || e == rustix::io::Errno::NOSYS
                || e == rustix::io::Errno::NOTSUP =>
        {
            let old = format!(".{leaf}.cairn-old-{}", random_suffix());
            vol.parent.rename(&vol.name, &vol.parent, &old)?;
            vol.parent.rename(&staging, &vol.parent, &vol.name)?;
            tree::remove_tree(&vol.parent, Path::new(&old))
        }
        Err(e) => {
            let _ = tree::remove_tree(&vol.parent, Path::new(&staging));
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn snapshot_stamps_are_utc_to_the_millisecond() {
        assert_eq!(super::utc_stamp(0), "19700101T000000000Z");
        assert_eq!(super::utc_stamp(1_796_187_600_123), "20261202T050000123Z");
        assert_eq!(super::utc_stamp(951_782_399_999), "20000228T235959999Z");
    }
}
