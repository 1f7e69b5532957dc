//! The audit log: one JSON line per side effect a blueprint caused (or the runtime made for it,
//! as a policy's retention removing a restore point), hash-chained.
//!
//! Each line carries `prev`, the SHA-256 (hex) of the line before it (64 zeros for the first),
//! so removing or editing a line breaks the chain at that point: [`AuditLog::verify`] finds it.
//! This is the seed of a tamper-evident log; anchoring the head elsewhere comes later.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The `prev` of the first line of a log.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct AuditRecord {
    /// When (RFC 3339, UTC).
    pub time: String,
    /// The run's action id.
    pub action_id: String,
    /// The blueprint's digest (`sha256:…`).
    pub blueprint: String,
    /// The capability the call used.
    pub capability: String,
    /// What it acted on (`namespace/workload`, a snapshot id, an artifact).
    pub target: String,
    /// The host call (`exec.run`, `workloads.scale`, `data.finish`, …).
    pub operation: String,
    /// `ok`, `denied`, or `error: …`.
    pub outcome: String,
    /// SHA-256 (hex) of the previous line.
    pub prev: String,
}

/// An append-only, hash-chained JSON-lines audit file, shared by all concurrent actions.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    file: Option<File>,
    prev: String,
}

/// What a record says, before the log adds time and chain.
#[derive(Debug, Clone)]
pub(crate) struct Entry<'a> {
    pub action_id: &'a str,
    pub blueprint: &'a str,
    pub capability: &'a str,
    pub target: String,
    pub operation: &'a str,
    pub outcome: String,
}

impl AuditLog {
    /// Opens (or creates) the audit file at `path` and continues its chain.
    pub fn open(path: impl AsRef<Path>) -> Result<AuditLog> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io("creating the audit directory", parent, e))?;
        }
        let prev = match File::open(&path) {
            Ok(f) => {
                let mut last = None;
                for line in BufReader::new(f).lines() {
                    let line = line.map_err(|e| Error::io("reading the audit log", &path, e))?;
                    if !line.is_empty() {
                        last = Some(line);
                    }
                }
                last.map_or_else(|| GENESIS.to_string(), |l| hash_line(&l))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => GENESIS.to_string(),
            Err(e) => return Err(Error::io("reading the audit log", &path, e)),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io("opening the audit log", &path, e))?;
        Ok(AuditLog {
            path,
            inner: Mutex::new(Inner {
                file: Some(file),
                prev,
            }),
        })
    }

    /// A log that keeps the chain in memory and writes nothing (for `inspect` and benchmarks).
    pub fn disabled() -> AuditLog {
        AuditLog {
            path: PathBuf::new(),
            inner: Mutex::new(Inner {
                file: None,
                prev: GENESIS.to_string(),
            }),
        }
    }

    /// The audit file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a record of a side effect the runtime made itself, not through a blueprint's
    /// host call: a policy's retention forgetting a restore point's snapshots. `actor` stands
    /// where a run's action id does (`policy:NAME`), and `kind` where its capability does.
    pub fn record_runtime(
        &self,
        actor: &str,
        blueprint: &str,
        kind: &str,
        operation: &str,
        target: String,
        outcome: String,
    ) {
        self.append(Entry {
            action_id: actor,
            blueprint,
            capability: kind,
            target,
            operation,
            outcome,
        });
    }

    /// Appends one record. A failure to write is logged, not raised: the side effect already
    /// happened and the action's own result must not change because of it.
    pub(crate) fn append(&self, entry: Entry<'_>) {
        let mut inner = match self.inner.lock() {
            Ok(inner) => inner,
            Err(poisoned) => poisoned.into_inner(),
        };
        let record = AuditRecord {
            time: jiff::Timestamp::now().to_string(),
            action_id: entry.action_id.to_string(),
            blueprint: entry.blueprint.to_string(),
            capability: entry.capability.to_string(),
            target: entry.target,
            operation: entry.operation.to_string(),
            outcome: entry.outcome,
            prev: inner.prev.clone(),
        };
        let line = match serde_json::to_string(&record) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialize an audit record");
                return;
            }
        };
        inner.prev = hash_line(&line);
        tracing::debug!(target: "cairn::audit", %line);
        if let Some(file) = inner.file.as_mut()
            && let Err(e) = writeln!(file, "{line}")
        {
            tracing::error!(path = %self.path.display(), error = %e, "cannot append to the audit log");
        }
    }

    /// Reads the audit file at `path` and checks its hash chain; returns the records, or says
    /// which line breaks the chain.
    pub fn verify(path: impl AsRef<Path>) -> Result<Vec<AuditRecord>> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io("reading the audit log", path, e))?;
        let mut prev = GENESIS.to_string();
        let mut records = Vec::new();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
            let record: AuditRecord = serde_json::from_str(line).map_err(|e| {
                Error::Host(format!(
                    "audit log {} line {}: not an audit record: {e}",
                    path.display(),
                    n + 1
                ))
            })?;
            if record.prev != prev {
                return Err(Error::Host(format!(
                    "audit log {} line {}: the hash chain is broken (a line before it was changed or removed)",
                    path.display(),
                    n + 1
                )));
            }
            prev = hash_line(line);
            records.push(record);
        }
        Ok(records)
    }
}

fn hash_line(line: &str) -> String {
    hex::encode(Sha256::digest(line.as_bytes()))
}
