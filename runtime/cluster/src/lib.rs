//! The cluster seam: what Cairn needs from a place where applications run.
//!
//! [`Cluster`] is shaped like Kubernetes — namespaces, workloads with replicas, pods,
//! containers, volumes and volume snapshots. It has two backends: [`KubeCluster`], a
//! Kubernetes cluster through its API server, and [`LocalCluster`], the backend for one
//! machine: an inventory file names namespaces and workloads whose "pods" are local processes
//! and whose volumes are directories.
//!
//! Start with [`KubeCluster::connect`] or [`LocalCluster::from_inventory`] and the [`Cluster`]
//! methods. The engine checks capabilities and scope before it calls any of them; a backend
//! only checks what it must to protect itself (the local backend's program allow-list and
//! directory confinement; on Kubernetes, the cluster's own RBAC).

mod kubernetes;
mod local;
mod pipes;
mod ws_exec;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

pub use kubernetes::{KubeCluster, client as kube_client};
pub use local::{Inventory, LocalCluster};

/// A namespace and a workload in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadRef {
    /// The namespace.
    pub namespace: String,
    /// The workload's name.
    pub name: String,
}

impl WorkloadRef {
    /// A reference to `name` in `namespace`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How a workload keeps its pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    /// Interchangeable replicas.
    Deployment,
    /// Replicas with stable identities.
    StatefulSet,
    /// Anything else (a single local process).
    Other,
}

impl WorkloadKind {
    /// Its name in lower case: `deployment`, `statefulset` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::StatefulSet => "statefulset",
            WorkloadKind::Other => "other",
        }
    }
}

/// One running replica of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// The pod's name.
    pub name: String,
    /// Whether it is ready.
    pub ready: bool,
    /// Its containers; the first is the default for exec.
    pub containers: Vec<String>,
}

/// A volume mounted by a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The volume's name.
    pub name: String,
    /// Bytes in use, when known.
    pub bytes: Option<u64>,
}

/// What a backend knows of a workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Which workload.
    pub reference: WorkloadRef,
    /// Its kind.
    pub kind: WorkloadKind,
    /// Desired replicas.
    pub replicas: u32,
    /// Ready replicas.
    pub ready_replicas: u32,
    /// Its pods.
    pub pods: Vec<Pod>,
    /// Its volumes.
    pub volumes: Vec<Volume>,
    /// Its labels: a Kubernetes workload's own (not its pods'), a local workload's `labels`.
    pub labels: BTreeMap<String, String>,
    /// Scaled to zero by a Cairn run that ended before scaling it back (killed, the machine
    /// restarted): the replicas it had. Its next backup's posthook brings it back. Known on
    /// the local target only: Kubernetes's `cairn.dev/scaled-from` cannot tell a run that
    /// ended from one still running.
    pub left_stopped: Option<u32>,
}

/// A point-in-time copy of one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSnapshot {
    /// The backend's id for it.
    pub id: String,
    /// The workload whose volume it copies.
    pub workload: WorkloadRef,
    /// The volume's name.
    pub volume: String,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Bytes copied.
    pub bytes: u64,
}

/// Where a command's stdin comes from.
pub enum Stdin {
    /// Nothing: stdin is closed at once.
    Empty,
    /// A few bytes held in memory.
    Bytes(Vec<u8>),
    /// A stream copied into stdin until it ends (bulk restore data). Should reading it fail,
    /// the command is killed before its stdin ends where the backend can kill it (a local
    /// process group, a Kubernetes command for a stopped workload); a command in a Kubernetes
    /// application pod sees a clean end of its input (see the Kubernetes backend's docs).
    Stream(Box<dyn AsyncRead + Send + Unpin>),
}

impl std::fmt::Debug for Stdin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stdin::Empty => f.write_str("Empty"),
            Stdin::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Stdin::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// Where a command's stdout goes.
pub enum Stdout {
    /// Captured in memory up to [`ExecRequest::output_limit`]; the rest is drained and counted.
    Capture,
    /// Copied into a stream (bulk export data); flushed and shut down when the command ends.
    Stream(Box<dyn AsyncWrite + Send + Unpin>),
}

impl std::fmt::Debug for Stdout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stdout::Capture => f.write_str("Capture"),
            Stdout::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// A command to run in a workload's container.
#[derive(Debug)]
pub struct ExecRequest {
    /// The pod; `None` picks a ready one.
    pub pod: Option<String>,
    /// The container; `None` is the pod's first.
    pub container: Option<String>,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Further programs of a pipeline (`argv | then[0] | …`), each reading the previous one's
    /// stdout, in the same container and environment. The request's stdin goes to `argv`, its
    /// stdout comes from the last program; stderr is every program's, in order; the exit code
    /// is the last non-zero one (as `set -o pipefail`).
    pub then: Vec<Vec<String>>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Where stdin comes from.
    pub stdin: Stdin,
    /// Where stdout goes.
    pub stdout: Stdout,
    /// Cap on captured stdout and on captured stderr, each.
    pub output_limit: usize,
    /// The command is killed when it runs longer than this.
    pub timeout: Duration,
    /// Run while the workload is scaled to zero, with its volumes (the pod
    /// `<workload>-stopped`); refused while it has replicas.
    pub stopped: bool,
}

impl ExecRequest {
    /// The programs of the pipeline, in order, each checked to name a program.
    pub(crate) fn stages(&self) -> Result<Vec<&Vec<String>>> {
        if self.argv.is_empty() {
            return Err(Error::Invalid(
                "exec needs a command: argv is empty".to_owned(),
            ));
        }
        let mut stages = vec![&self.argv];
        for (i, argv) in self.then.iter().enumerate() {
            if argv.is_empty() {
                return Err(Error::Invalid(format!(
                    "program {} of the pipeline is empty; name a program or drop it",
                    i + 2
                )));
            }
            stages.push(argv);
        }
        // A program named `A=B` would be taken by env(1), which passes the environment on
        // Kubernetes, for one more variable: past `checked_env`'s refusal of PATH and LD_*.
        if let Some(program) = stages.iter().map(|a| &a[0]).find(|p| p.contains('=')) {
            return Err(Error::Invalid(format!(
                "program name {program:?} contains `=`: name a program, and set environment \
                 variables with the command's env"
            )));
        }
        Ok(stages)
    }

    /// The container to run in: the one asked for, if pod `pod` has it, else the pod's first.
    pub(crate) fn container_in(&self, pod: &str, containers: &[String]) -> Result<String> {
        match &self.container {
            None => containers
                .first()
                .cloned()
                .ok_or_else(|| Error::Invalid(format!("pod {pod} has no containers"))),
            Some(c) if containers.contains(c) => Ok(c.clone()),
            Some(c) => Err(Error::NotFound {
                kind: "container",
                name: c.clone(),
                hint: list_hint(&format!("pod {pod} has the containers"), containers.iter()),
            }),
        }
    }

    /// The extra environment, each name checked to be well formed and not reserved.
    pub(crate) fn checked_env(&self) -> Result<&[(String, String)]> {
        for (name, _) in &self.env {
            if !is_env_name(name) {
                return Err(Error::Invalid(format!(
                    "environment variable name {name:?} is malformed"
                )));
            }
            if !env_allowed(name) {
                return Err(Error::Denied(format!(
                    "an exec may not set {name} (PATH, LD_*, DYLD_* and CAIRN_* are reserved)"
                )));
            }
        }
        Ok(&self.env)
    }
}

/// Whether `name` is a DNS label (RFC 1123): lowercase letters, digits and `-`, starting and
/// ending with a letter or digit, at most 63 characters. Such a name is never `.`, `..`, and
/// never holds a `/`, so it is safe as a path component and as a part of a snapshot id.
pub(crate) fn is_dns_label(name: &str) -> bool {
    name.len() <= 63 && is_label_part(name)
}

/// Whether `name` is a DNS subdomain as Kubernetes checks one, the form of most of its object
/// names: dot-separated parts as a label's (of any length), at most 253 characters in all.
/// Like a label, never `.` or `..`, and never holds a `/` or a `%`, so it is safe in an API
/// path.
pub(crate) fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_label_part)
}

fn is_label_part(part: &str) -> bool {
    let bytes = part.as_bytes();
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// Whether `name` can be an environment variable's name.
pub(crate) fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Whether a request may set this environment variable: not the program search path, the
/// dynamic loader's variables, nor the ones Cairn sets itself.
pub(crate) fn env_allowed(name: &str) -> bool {
    name != "PATH"
        && !name.starts_with("LD_")
        && !name.starts_with("DYLD_")
        && !name.starts_with("CAIRN_")
}

/// What a finished command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The pod it ran in.
    pub pod: String,
    /// Its exit status (a signal is reported as 128 + the signal number).
    pub exit_code: i32,
    /// Captured stdout (empty when stdout was streamed).
    pub stdout: Vec<u8>,
    /// Whether stdout was cut at the limit.
    pub stdout_truncated: bool,
    /// Captured stderr.
    pub stderr: Vec<u8>,
    /// Whether stderr was cut at the limit.
    pub stderr_truncated: bool,
    /// Bytes the command wrote to stdout in total (captured or streamed).
    pub stdout_bytes: u64,
    /// Bytes fed to the command's stdin.
    pub stdin_bytes: u64,
}

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The named object does not exist.
    #[error("{kind} {name:?} not found{hint}")]
    NotFound {
        /// What kind of object (namespace, workload, pod, container, volume, snapshot, object).
        kind: &'static str,
        /// Its name.
        name: String,
        /// What to do about it, starting with "; " (or empty).
        hint: String,
    },
    /// The backend refuses the operation (a program not on the allow-list, a path outside a
    /// volume).
    #[error("denied: {0}")]
    Denied(String),
    /// An argument was malformed.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The operation ran past its deadline.
    #[error("{what} timed out after {after:?}")]
    TimedOut {
        /// What was running.
        what: String,
        /// The deadline.
        after: Duration,
    },
    /// The inventory file is unusable.
    #[error("inventory {path}: {reason}")]
    Inventory {
        /// The file.
        path: String,
        /// What is wrong, and where.
        reason: String,
    },
    /// Anything else; the message says what was being done.
    #[error("{what}: {source}")]
    Failed {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// An [`Error::Failed`] of `what`.
pub(crate) fn failed(
    what: impl Into<String>,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> Error {
    Error::Failed {
        what: what.into(),
        source: source.into(),
    }
}

/// "; WHAT: a, b" (or "; there are no WHAT"), the hint of a [`Error::NotFound`].
pub(crate) fn list_hint(what: &str, names: impl Iterator<Item = impl AsRef<str>>) -> String {
    let names: Vec<String> = names.map(|n| n.as_ref().to_owned()).collect();
    if names.is_empty() {
        format!("; there are no {what}")
    } else {
        format!("; {what}: {}", names.join(", "))
    }
}

/// A workload as `get-object` returns it for the kind `workload`, the same on every backend.
pub(crate) fn workload_json(w: &Workload, containers: &[String]) -> serde_json::Value {
    serde_json::json!({
        "namespace": w.reference.namespace,
        "name": w.reference.name,
        "kind": w.kind.as_str(),
        "replicas": w.replicas,
        "pods": w.pods.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
        "containers": containers,
        "volumes": w.volumes.iter().map(|v| v.name.clone()).collect::<Vec<_>>(),
        "labels": w.labels,
    })
}

/// How long the engine lets one call of a [`Cluster`] method run before it drops the call (its
/// default timeout of a host call is this constant). A backend keeps its own waits below it,
/// with room for its API calls, so that a slow call ends with the backend's own error (a
/// timeout naming what it waited for, a restore saying how far it got), not dropped half-way.
pub const HOST_CALL_BUDGET: Duration = Duration::from_secs(600);

/// A `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A place where applications run, shaped like Kubernetes.
///
/// Every method is scoped by the caller (the engine); implementations are shared across
/// concurrent actions and must be `Send + Sync`.
#[async_trait]
pub trait Cluster: Send + Sync + std::fmt::Debug + 'static {
    /// A short name for logs and audit ("local", "kubernetes").
    fn backend(&self) -> &'static str;

    /// The namespaces that exist.
    async fn namespaces(&self) -> Result<Vec<String>>;

    /// The workloads of a namespace.
    async fn workloads(&self, namespace: &str) -> Result<Vec<Workload>>;

    /// One workload.
    async fn workload(&self, workload: &WorkloadRef) -> Result<Workload>;

    /// Runs a command in one pod of a workload.
    async fn exec(&self, workload: &WorkloadRef, request: ExecRequest) -> Result<ExecOutput>;

    /// Sets desired replicas; returns the previous desired count.
    async fn scale(&self, workload: &WorkloadRef, replicas: u32) -> Result<u32>;

    /// Waits until ready replicas equal desired replicas.
    async fn wait_ready(&self, workload: &WorkloadRef, timeout: Duration) -> Result<Workload>;

    /// One object of `kind` in `namespace`, as JSON.
    async fn get_object(
        &self,
        namespace: &str,
        kind: &str,
        name: &str,
    ) -> Result<serde_json::Value>;

    /// Every object of `kind` in `namespace`.
    async fn list_objects(&self, namespace: &str, kind: &str) -> Result<Vec<serde_json::Value>>;

    /// Snapshots one volume of a workload: returns once the snapshot is cut (its point in time
    /// taken), which is when a quiesced application may resume; see [`Cluster::snapshot_ready`].
    async fn snapshot(&self, workload: &WorkloadRef, volume: &str) -> Result<VolumeSnapshot>;

    /// Waits, at most `timeout`, until snapshot `id` is ready to restore from: a cloud may copy
    /// a snapshot's data for a while after it is cut. Backends whose snapshots are ready once
    /// taken answer at once.
    async fn snapshot_ready(&self, id: &str, timeout: Duration) -> Result<VolumeSnapshot> {
        let _ = timeout;
        self.snapshot_info(id).await
    }

    /// Looks a snapshot up by id.
    async fn snapshot_info(&self, id: &str) -> Result<VolumeSnapshot>;

    /// Replaces the snapshotted volume's contents with the snapshot's.
    async fn restore_snapshot(&self, id: &str) -> Result<VolumeSnapshot>;

    /// Deletes a snapshot.
    async fn delete_snapshot(&self, id: &str) -> Result<()>;
}
