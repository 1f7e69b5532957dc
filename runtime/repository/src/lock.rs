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
}

/// A held lock; released on [`LockGuard::release`] or, best effort, on drop.
#[derive(Debug)]
pub(crate) struct LockGuard {
    backend: Backend,
    path: String,
    refresher: Option<tokio::task::JoinHandle<()>>,
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
        };
        let body = |l: &LockFile| Bytes::from(serde_json::to_vec(l).unwrap_or_default());
        backend.put_new(&path, body(&mk())).await?;
        let mut guard = Self {
            backend: backend.clone(),
            path: path.clone(),
            refresher: None,
        };
        let now = jiff::Timestamp::now();
        for m in backend.list("locks/").await? {
            let p = m.location.to_string();
            if p == path {
                continue;
            }
            let Some(b) = backend.get(&p).await? else {
                continue;
            };
            let Ok(other) = serde_json::from_slice::<LockFile>(&b) else {
                continue;
            };
            let age = now.duration_since(other.time).unsigned_abs();
            if age > LOCK_STALE_AFTER {
                continue;
            }
            if other.hostname == hostname() && !pid_alive(other.pid) {
                // Left by a process of this host that died (kill -9, crash): remove it now
                // rather than waiting for it to go stale.
                let _ = backend.delete_any(&p).await;
                continue;
            }
            if exclusive || other.exclusive {
                guard.release().await;
                return Err(Error::Locked {
                    holder: format!(
                        "{} (pid {}, {}, since {})",
                        other.hostname, other.pid, other.operation, other.time
                    ),
                    reason: if exclusive {
                        "another operation is using the repository; retry when it has finished"
                            .into()
                    } else {
                        "a prune is running; retry when it has finished".into()
                    },
                });
            }
        }
        let (b2, p2) = (backend.clone(), path.clone());
        let refresher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(LOCK_REFRESH).await;
                let _ = b2.put_replace(&p2, body(&mk())).await;
            }
        });
        guard.refresher = Some(refresher);
        Ok(guard)
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
