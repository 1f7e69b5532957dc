//! Repository locks: create-if-absent lock objects, shared for backups, exclusive for prune.
//!
//! Each side writes its own lock first and then lists the others; with a strongly consistent
//! store at least one of two racing processes sees the other and backs off. A lock is refreshed
//! while held and ignored once stale (its holder died).

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::format;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often a held lock is rewritten with a fresh time.
pub const LOCK_REFRESH: Duration = Duration::from_secs(5 * 60);
/// Age after which a lock that was not refreshed is considered left by a dead process. Six
/// refresh periods, so a slow store or a paused process does not lose its lock.
pub const LOCK_STALE_AFTER: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LockFile {
    exclusive: bool,
    hostname: String,
    pid: u32,
    operation: String,
    time: jiff::Timestamp,
    /// The holder's PID namespace (`pid:[…]`): containers of one pod share a host name but
    /// not their process ids, so a pid is looked up only in the namespace it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pidns: Option<String>,
}

/// A lock object as [`Repository::unlock`](crate::Repository::unlock) reports it.
#[derive(Debug, Clone, Serialize)]
pub struct LockInfo {
    /// The lock object's id (`locks/<id>`).
    pub id: String,
    /// Held by a prune (exclusive) rather than a backup (shared).
    pub exclusive: bool,
    /// The holder's host.
    pub hostname: String,
    /// The holder's process id on its host.
    pub pid: u32,
    /// What the holder is doing (`backup`, `prune`, …).
    pub operation: String,
    /// When the holder last wrote the lock; `None` for an object that is not a lock.
    pub time: Option<jiff::Timestamp>,
    /// Why the lock no longer counts, when it does not: its holder is gone. Operations
    /// ignore such locks.
    pub stale: Option<String>,
    /// Whether this call removed it.
    pub removed: bool,
}

/// Why `lock` no longer counts, or `None` while it holds: not refreshed for
/// [`LOCK_STALE_AFTER`] (`age`: seconds since the store last wrote it), or left by a process of
/// this host that is gone (kill -9, crash).
fn stale_reason(lock: &LockFile, age: i64) -> Option<String> {
    if age > LOCK_STALE_AFTER.as_secs() as i64 {
        Some(format!("not refreshed for {} minutes", age / 60))
    } else if lock.hostname == hostname()
        && lock.pidns.is_some()
        && lock.pidns == pid_namespace()
        && !pid_alive(lock.pid)
    {
        Some("its process on this host is gone".into())
    } else {
        None
    }
}

/// Every object under `locks/`, read and judged (`removed` false). A lock's age is judged by
/// the store's clock, never by the time its holder wrote in it: a host whose clock is half an
/// hour off would otherwise write locks that look stale from the start, and a prune elsewhere
/// would delete what its backup deduplicated against. The store's present is the write time
/// of `own`, the id of the lock the caller has just written; without one (`unlock`), this
/// host's clock.
async fn list_locks(backend: &Backend, own: Option<&str>) -> Result<Vec<LockInfo>> {
    let listed = backend.list("locks/").await?;
    let now = own
        .and_then(|own| listed.iter().find(|m| m.location.filename() == Some(own)))
        .map_or_else(
            || jiff::Timestamp::now().as_second(),
            |m| m.last_modified.timestamp(),
        );
    let mut locks = Vec::new();
    for m in listed {
        let age = now.saturating_sub(m.last_modified.timestamp());
        let p = m.location.to_string();
        let id = p.rsplit('/').next().unwrap_or(&p).to_string();
        let Some(b) = backend.get(&p).await? else {
            continue; // Released since the listing.
        };
        locks.push(match serde_json::from_slice::<LockFile>(&b) {
            Ok(l) => LockInfo {
                id,
                exclusive: l.exclusive,
                stale: stale_reason(&l, age),
                hostname: l.hostname,
                pid: l.pid,
                operation: l.operation,
                time: Some(l.time),
                removed: false,
            },
            Err(e) => LockInfo {
                id,
                exclusive: false,
                hostname: String::new(),
                pid: 0,
                operation: String::new(),
                time: None,
                stale: Some(format!("not a lock object ({e})")),
                removed: false,
            },
        });
    }
    Ok(locks)
}

/// Lists the repository's locks and removes the stale ones, or with `all` every one: for a
/// holder that is gone but not yet stale (its host was lost less than
/// [`LOCK_STALE_AFTER`] ago). Removing a lock a running operation holds lets a prune delete
/// what a backup is writing, so `all` is for when nothing runs.
pub(crate) async fn unlock(backend: &Backend, all: bool) -> Result<Vec<LockInfo>> {
    // A probe written now gives the store's present, so a lock's age is judged by the store's
    // clock here too: a host whose clock runs ahead would take live locks for stale.
    let probe = format::new_id();
    let probe_path = format::lock_path(&probe);
    let body = serde_json::to_vec(&serde_json::json!({ "probe": "cairn repo unlock" }))
        .unwrap_or_default();
    let probed = backend
        .put_new(&probe_path, Bytes::from(body))
        .await
        .is_ok();
    let listed = list_locks(backend, probed.then_some(probe.as_str())).await;
    if probed {
        let _ = backend.delete_any(&probe_path).await;
    }
    let mut locks: Vec<LockInfo> = listed?.into_iter().filter(|l| l.id != probe).collect();
    for l in &mut locks {
        if all || l.stale.is_some() {
            backend.delete_any(&format::lock_path(&l.id)).await?;
            l.removed = true;
        }
    }
    Ok(locks)
}

/// A held lock; released on [`LockGuard::release`] or, best effort, on drop.
#[derive(Debug)]
pub(crate) struct LockGuard {
    backend: Backend,
    path: String,
    refresher: Option<tokio::task::JoinHandle<()>>,
    /// Set when the lock is found gone, or could not be refreshed for half the time after
    /// which others take it for stale: another process may have acted as if it were not held.
    lost: Arc<AtomicBool>,
}

pub(crate) fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// This process's PID namespace, where the platform has them.
fn pid_namespace() -> Option<String> {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Whether a process of this host is alive; unknown platforms say yes (the lock then expires
/// by age).
fn pid_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

impl LockGuard {
    pub(crate) async fn acquire(
        backend: &Backend,
        exclusive: bool,
        operation: &str,
    ) -> Result<Self> {
        let id = format::new_id();
        let path = format::lock_path(&id);
        let op = operation.to_string();
        let mk = move || LockFile {
            exclusive,
            hostname: hostname(),
            pid: std::process::id(),
            operation: op.clone(),
            time: jiff::Timestamp::now(),
            pidns: pid_namespace(),
        };
        let body = |l: &LockFile| Bytes::from(serde_json::to_vec(l).unwrap_or_default());
        backend.put_new(&path, body(&mk())).await?;
        let mut guard = Self {
            backend: backend.clone(),
            path: path.clone(),
            refresher: None,
            lost: Arc::new(AtomicBool::new(false)),
        };
        for other in list_locks(backend, Some(&id)).await? {
            if format::lock_path(&other.id) == path {
                continue;
            }
            if other.stale.is_some() {
                if other.time.is_some() {
                    // A lock its holder left (kill -9, a lost host): tidied up by whoever
                    // sees it. Objects that are not locks are only ignored.
                    let _ = backend.delete_any(&format::lock_path(&other.id)).await;
                }
                continue;
            }
            if exclusive || other.exclusive {
                guard.release().await;
                let time = other.time.map(|t| t.to_string()).unwrap_or_default();
                return Err(Error::Locked {
                    holder: format!(
                        "{} (pid {}, {}, since {time})",
                        other.hostname, other.pid, other.operation
                    ),
                    reason: format!(
                        "{}; if it is not running anywhere (its host was lost), `cairn repo unlock \
                         --remove-all` removes its lock, which is otherwise ignored once not \
                         refreshed for {} minutes",
                        if exclusive {
                            "another operation is using the repository; retry when it has finished"
                        } else {
                            "a prune is running; retry when it has finished"
                        },
                        LOCK_STALE_AFTER.as_secs() / 60
                    ),
                });
            }
        }
        let (b2, p2, lost) = (backend.clone(), path.clone(), guard.lost.clone());
        let refresher = tokio::spawn(async move {
            let mut refreshed = std::time::Instant::now();
            loop {
                tokio::time::sleep(LOCK_REFRESH).await;
                // Gone: another process took it for stale (this one was paused, or cut off)
                // and removed it. Writing it again would hide that.
                if let Ok(false) = b2.exists(&p2).await {
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
                match b2.put_replace(&p2, body(&mk())).await {
                    Ok(()) => refreshed = std::time::Instant::now(),
                    Err(_) if refreshed.elapsed() > LOCK_STALE_AFTER / 2 => {
                        lost.store(true, Ordering::SeqCst);
                    }
                    Err(_) => {}
                }
            }
        });
        guard.refresher = Some(refresher);
        Ok(guard)
    }

    /// Fails when the lock is no longer held: removed by another process that took it for
    /// stale, or not refreshed for long. What this process relied on (packs a backup
    /// deduplicated against) may then be gone, so nothing may be committed or deleted.
    pub(crate) async fn held(&self) -> Result<()> {
        let lost = self.lost.load(Ordering::SeqCst) || !self.backend.exists(&self.path).await?;
        if !lost {
            return Ok(());
        }
        self.lost.store(true, Ordering::SeqCst);
        Err(Error::LockLost {
            lock: self.path.clone(),
            minutes: LOCK_STALE_AFTER.as_secs() / 60,
        })
    }

    pub(crate) async fn release(mut self) {
        if let Some(r) = self.refresher.take() {
            r.abort();
        }
        let _ = self.backend.delete_any(&self.path).await;
        self.path.clear();
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(r) = self.refresher.take() {
            r.abort();
        }
        if !self.path.is_empty()
            && let Ok(h) = tokio::runtime::Handle::try_current()
        {
            {
                let (b, p) = (self.backend.clone(), std::mem::take(&mut self.path));
                h.spawn(async move {
                    let _ = b.delete_any(&p).await;
                });
            }
        }
    }
}
