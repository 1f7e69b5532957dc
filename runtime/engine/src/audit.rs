//! The audit log: one JSON line per side effect a blueprint caused (or the runtime made for it,
//! as a policy's retention removing a restore point), hash-chained.
//!
//! Each line carries `prev`, the SHA-256 (hex) of the line before it (64 zeros for the first),
//! so removing or editing a line breaks the chain at that point: [`AuditLog::verify`] finds it.
//! This is the seed of a tamper-evident log; anchoring the head elsewhere comes later.
//!
//! Several processes append to one log (`cairn serve` running policies while an operator runs
//! an action, a DR timer): each append holds an exclusive lock on the file and, when the file
//! has grown since this process last wrote, continues from its actual last line, so the chain
//! stays one chain.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The last non-empty line of `f`, read from its end: reopening a log that has grown for months
/// (every run of a long-lived `cairn serve` does) reads a few KiB, not the whole file.
fn last_line(mut f: File) -> std::io::Result<Option<String>> {
    const STEP: u64 = 64 * 1024;
    let mut start = f.metadata()?.len();
    // The bytes from `start` to the end of the file.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let end = tail.iter().rposition(|b| *b != b'\n').map(|i| i + 1);
        if let Some(end) = end {
            let begin = tail[..end].iter().rposition(|b| *b == b'\n').map(|i| i + 1);
            if let Some(begin) = begin.or((start == 0).then_some(0)) {
                let line = tail[begin..end]
                    .strip_suffix(b"\r")
                    .unwrap_or(&tail[begin..end]);
                return String::from_utf8(line.to_vec())
                    .map(Some)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
            }
        } else if start == 0 {
            return Ok(None);
        }
        let step = STEP.min(start);
        start -= step;
        f.seek(SeekFrom::Start(start))?;
        let mut chunk = vec![0; usize::try_from(step).unwrap_or(usize::MAX)];
        f.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
    }
}

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
    /// `ok`, `denied`, `not-found: …` (a call that found nothing to do, such as deleting an
    /// export already gone), or `error: …`.
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
    /// The hash of the last line, as of `end`.
    prev: String,
    /// The file's length after the last line this process read or wrote.
    end: u64,
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
            Ok(f) => last_line(f)
                .map_err(|e| Error::io("reading the audit log", &path, e))?
                .map_or_else(|| GENESIS.to_string(), |l| hash_line(&l)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => GENESIS.to_string(),
            Err(e) => return Err(Error::io("reading the audit log", &path, e)),
        };
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        // What ran where, and against what: its owner's to read, as the catalog is.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options
            .open(&path)
            .map_err(|e| Error::io("opening the audit log", &path, e))?;
        let end = file
            .metadata()
            .map_err(|e| Error::io("opening the audit log", &path, e))?
            .len();
        Ok(AuditLog {
            path,
            inner: Mutex::new(Inner {
                file: Some(file),
                prev,
                end,
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
                end: 0,
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
        let inner = &mut *inner;
        // Held until the line is written: another process appends before or after, never
        // from the same last line.
        let _locked = inner
            .file
            .as_ref()
            .map(|file| Locked::take(file, &self.path));
        if let Some(file) = &inner.file {
            match self.caught_up(file, inner.end) {
                Ok(Some(prev)) => inner.prev = prev,
                Ok(None) => {}
                Err(e) => tracing::error!(
                    path = %self.path.display(),
                    error = %e,
                    "cannot read what another process appended to the audit log"
                ),
            }
        }
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
        if let Some(mut file) = inner.file.as_ref() {
            if let Err(e) = writeln!(file, "{line}") {
                tracing::error!(path = %self.path.display(), error = %e, "cannot append to the audit log");
            }
            inner.end = file.metadata().map_or(inner.end, |m| m.len());
        }
    }

    /// The hash of the file's last line when another process has appended since this one last
    /// read or wrote it (the file is no longer `end` long); `None` when it has not.
    fn caught_up(&self, file: &File, end: u64) -> std::io::Result<Option<String>> {
        if file.metadata()?.len() == end {
            return Ok(None);
        }
        let last = last_line(File::open(&self.path)?)?;
        Ok(Some(
            last.map_or_else(|| GENESIS.to_string(), |l| hash_line(&l)),
        ))
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

/// An exclusive lock on the audit file while it lives. Failing to take it is logged: the record
/// is still written (the side effect happened), at the risk of a fork in the chain.
struct Locked<'a>(Option<&'a File>);

impl<'a> Locked<'a> {
    fn take(file: &'a File, path: &Path) -> Self {
        match file.lock() {
            Ok(()) => Self(Some(file)),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot lock the audit log");
                Self(None)
            }
        }
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if let Some(file) = self.0 {
            let _ = file.unlock();
        }
    }
}

fn hash_line(line: &str) -> String {
    hex::encode(Sha256::digest(line.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_line_is_found_from_the_end_across_read_windows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let last = |text: &str| {
            std::fs::write(&path, text).expect("write");
            last_line(File::open(&path).expect("open")).expect("read")
        };
        assert_eq!(last(""), None);
        assert_eq!(last("\n\n"), None);
        assert_eq!(last("one"), Some("one".into()));
        assert_eq!(last("one\ntwo\n\n"), Some("two".into()));
        assert_eq!(last("one\r\ntwo\r\n"), Some("two".into()));
        // A last line longer than a read window, after many lines.
        let long = "x".repeat(200_000);
        let text = format!("{}{long}\n", "line\n".repeat(50_000));
        assert_eq!(last(&text), Some(long));
        let text = format!("{}\nend\n", "y".repeat(300_000));
        assert_eq!(last(&text), Some("end".into()));
    }

    #[test]
    fn a_reopened_long_log_continues_its_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        for round in 0..3 {
            let log = AuditLog::open(&path).expect("open");
            for i in 0..1_000 {
                log.record_runtime(
                    "policy:p",
                    "sha256:00",
                    "retention",
                    "retention.remove-point",
                    format!("point {round}-{i}"),
                    "ok".into(),
                );
            }
        }
        let records = AuditLog::verify(&path).expect("the chain holds");
        assert_eq!(records.len(), 3_000);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("log").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the log is its owner's to read");
        }
    }

    #[test]
    fn logs_open_at_once_append_to_one_chain() {
        // As two processes do: each has the file open, and they append in turn.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let (a, b) = (
            AuditLog::open(&path).expect("open"),
            AuditLog::open(&path).expect("open"),
        );
        for i in 0..10 {
            let log = if i % 3 == 0 { &a } else { &b };
            log.record_runtime(
                "run",
                "sha256:00",
                "exec",
                "exec",
                format!("{i}"),
                "ok".into(),
            );
        }
        let records = AuditLog::verify(&path).expect("one chain");
        assert_eq!(records.len(), 10);
    }
}
