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
    /// The holder's boot (Linux's `boot_id`): two machines of one host name (cloned VMs,
    /// `localhost`) share the initial PID namespace's id, and one must not judge the other's
    /// process gone by its own process table; containers share their host's boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boot: Option<String>,
}

/// The operation of an object under `locks/` that is a probe of the store's clock
/// ([`Backend::probe_clock`]), which its process removes at once.
pub(crate) const CLOCK_PROBE: &str = "clock probe";

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

/// The refusal of an operation (`exclusive`, or a backup) that meets `other`'s lock.
fn locked_by(other: &LockInfo, exclusive: bool) -> Error {
    let time = other.time.map(|t| t.to_string()).unwrap_or_default();
    Error::Locked {
        holder: format!(
            "{} (pid {}, {}, since {time})",
            other.hostname, other.pid, other.operation
        ),
        reason: format!(
            "{}; if it is not running anywhere (its host was lost), `cairn repo unlock \
             --remove-all` removes its lock, which is otherwise ignored once not refreshed for {} \
             minutes",
            if exclusive {
                "another operation is using the repository; retry when it has finished"
            } else {
                "a prune is running; retry when it has finished"
            },
            LOCK_STALE_AFTER.as_secs() / 60
        ),
    }
}

/// Waits up to `wait` while no exclusive lock (a prune's) is held, reading the locks only:
/// [`retry_while_locked`] of a look at them.
pub(crate) async fn wait_unlocked(
    backend: &Backend,
    wait: Duration,
    stopped: &(dyn Fn() -> bool + Sync),
) -> Result<()> {
    retry_while_locked(wait, stopped, || async {
        let locks = list_locks(backend, None).await?;
        match locks.iter().find(|l| l.exclusive && l.stale.is_none()) {
            Some(holder) => Err(locked_by(holder, false)),
            None => Ok(()),
        }
    })
    .await
}

/// `attempt`, tried again while it fails with [`Error::Locked`], for up to `wait`: after 1 s,
/// then twice as long each time, at most 30 s apart, and once more at the end of `wait`.
/// Returns [`Error::Interrupted`] as soon as `stopped` says so.
async fn retry_while_locked<T, F: Future<Output = Result<T>>>(
    wait: Duration,
    stopped: &(dyn Fn() -> bool + Sync),
    mut attempt: impl FnMut() -> F,
) -> Result<T> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_secs(1);
    loop {
        match attempt().await {
            Err(Error::Locked { holder, .. }) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(
                    "the repository is locked by {holder}; waiting for it to finish (up to {} s more)",
                    deadline
                        .saturating_duration_since(tokio::time::Instant::now())
                        .as_secs()
                );
                let until = (tokio::time::Instant::now() + pause).min(deadline);
                while tokio::time::Instant::now() < until {
                    if stopped() {
                        return Err(Error::Interrupted);
                    }
                    let left = until.saturating_duration_since(tokio::time::Instant::now());
                    tokio::time::sleep(left.min(Duration::from_millis(200))).await;
                }
                pause = (pause * 2).min(Duration::from_secs(30));
            }
            done => return done,
        }
    }
}

/// Why `lock` no longer counts, or `None` while it holds: not refreshed for
/// [`LOCK_STALE_AFTER`] (`age`: seconds since the store last wrote it), or left by a process of
/// this host that is gone (kill -9, crash). A process is looked for only where it ran: the
/// same host name, PID namespace and boot (a lock of an older build, without its boot, waits
/// out its age).
fn stale_reason(lock: &LockFile, age: i64) -> Option<String> {
    if age > LOCK_STALE_AFTER.as_secs() as i64 {
        Some(format!("not refreshed for {} minutes", age / 60))
    } else if lock.hostname == hostname()
        && lock.pidns.is_some()
        && lock.pidns == pid_namespace()
        && lock.boot.is_some()
        && lock.boot == boot_id()
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
/// of `own`, the id of the lock the caller has just written; without one (`unlock`), the
/// store's clock as a probe showed it, or this host's.
async fn list_locks(backend: &Backend, own: Option<&str>) -> Result<Vec<LockInfo>> {
    let listed = backend.list("locks/").await?;
    let store_now = own
        .and_then(|own| listed.iter().find(|m| m.location.filename() == Some(own)))
        .map(|m| m.last_modified.timestamp());
    // The protection period is judged by the same clock.
    if let Some(t) = store_now {
        backend.learn_clock(t);
    }
    let now = store_now.unwrap_or_else(|| backend.now());
    let mut locks = Vec::new();
    for m in listed {
        let age = now.saturating_sub(m.last_modified.timestamp());
        let p = m.location.to_string();
        // Locks are `locks/<id>`; what lies deeper is another's, and is not looked at.
        let Some(id) = p.strip_prefix("locks/").filter(|id| !id.contains('/')) else {
            continue;
        };
        let id = id.to_owned();
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
            Err(e) => {
                let probe = b.as_ref() == crate::backend::CLOCK_PROBE_BODY;
                LockInfo {
                    id,
                    exclusive: false,
                    hostname: String::new(),
                    pid: 0,
                    operation: if probe { CLOCK_PROBE } else { "" }.to_owned(),
                    time: None,
                    stale: Some(if probe {
                        "a clock probe a killed process left".to_owned()
                    } else {
                        format!("not a lock object ({e})")
                    }),
                    removed: false,
                }
            }
        });
    }
    Ok(locks)
}

/// Lists the repository's locks and removes the stale ones, or with `all` every one: for a
/// holder that is gone but not yet stale (its host was lost less than
/// [`LOCK_STALE_AFTER`] ago). Removing a lock a running operation holds lets a prune delete
/// what a backup is writing, so `all` is for when nothing runs.
pub(crate) async fn unlock(backend: &Backend, all: bool) -> Result<Vec<LockInfo>> {
    // A probe gives the store's present, so a lock's age is judged by the store's clock here
    // too: a host whose clock runs ahead would take live locks for stale.
    backend.probe_clock().await;
    let mut locks = list_locks(backend, None).await?;
    for l in &mut locks {
        // What is not a lock (nor a probe of the store's clock) is another's: left alone, as
        // every operation leaves foreign objects.
        let ours = l.time.is_some() || l.operation == CLOCK_PROBE;
        if ours && (all || l.stale.is_some()) {
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
    /// Set when the lock is found gone, or was not refreshed for [`UNSURE_AFTER`]: another
    /// process may have acted as if it were not held.
    lost: Arc<AtomicBool>,
    /// When this process last wrote the lock.
    written: Arc<Written>,
}

/// A held lock, as [`LockGuard::check`] hands it out.
#[derive(Clone)]
pub(crate) struct LockCheck {
    backend: Backend,
    path: String,
    lost: Arc<AtomicBool>,
    written: Arc<Written>,
}

impl LockCheck {
    /// As [`LockGuard::held`].
    pub(crate) async fn held(&self) -> Result<()> {
        let lost = self.lost.load(Ordering::SeqCst)
            || self.written.unsure()
            || !self.backend.exists(&self.path).await?;
        if !lost {
            return Ok(());
        }
        self.lost.store(true, Ordering::SeqCst);
        Err(Error::LockLost {
            lock: self.path.clone(),
            minutes: LOCK_STALE_AFTER.as_secs() / 60,
        })
    }
}

/// Half the time after which others take a lock for stale: a holder whose last write is older
/// may have been taken for gone (its lock removed, or about to be), and must not rely on it,
/// nor write it again (which would hide a removal between its check and its write).
const UNSURE_AFTER: Duration = Duration::from_secs(LOCK_STALE_AFTER.as_secs() / 2);

/// When a lock was last written, by both clocks: the monotonic one does not run while the
/// machine sleeps, the wall clock may be set back; the longer of the two counts.
#[derive(Debug)]
struct Written(std::sync::Mutex<(std::time::Instant, std::time::SystemTime)>);

impl Written {
    fn now() -> Self {
        Self(std::sync::Mutex::new((
            std::time::Instant::now(),
            std::time::SystemTime::now(),
        )))
    }

    /// Takes `other`'s times.
    fn set(&self, other: &Written) {
        let times = *other.0.lock().unwrap_or_else(|p| p.into_inner());
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = times;
    }

    fn age(&self) -> Duration {
        let (mono, wall) = *self.0.lock().unwrap_or_else(|p| p.into_inner());
        let by_wall = std::time::SystemTime::now()
            .duration_since(wall)
            .unwrap_or_default();
        mono.elapsed().max(by_wall)
    }

    /// Whether others may take the lock for stale by now.
    fn unsure(&self) -> bool {
        self.age() > UNSURE_AFTER
    }
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

/// This machine's boot, where the platform says it: a random id the kernel draws at each boot.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
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

/// Writes the lock at `path` again, unless it is gone or possibly taken for stale (this
/// process was paused, asleep or cut off): another process may have removed it, and writing it
/// again would hide that. Then sets `lost` and says false; it is never written again.
async fn refresh(
    backend: &Backend,
    path: &str,
    written: &Written,
    lost: &AtomicBool,
    body: Bytes,
) -> bool {
    let there = if written.unsure() {
        Ok(false)
    } else {
        backend.exists(path).await
    };
    match there {
        Ok(true) => {}
        Ok(false) => {
            lost.store(true, Ordering::SeqCst);
            return false;
        }
        // A check that failed (the store unreachable) says nothing of whether the lock is still
        // there, and writing it then could bring back one removed: tried at the next refresh.
        Err(_) => return true,
    }
    // Dated when sent: a write that takes long reaches the store later than its start, and
    // the holder must not take its lock for younger than the store does.
    let sent = Written::now();
    if backend.put_replace(path, body).await.is_ok() {
        written.set(&sent);
    }
    true
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
            boot: boot_id(),
        };
        let body = |l: &LockFile| Bytes::from(serde_json::to_vec(l).unwrap_or_default());
        backend.put_new(&path, body(&mk())).await?;
        let mut guard = Self {
            backend: backend.clone(),
            path: path.clone(),
            refresher: None,
            lost: Arc::new(AtomicBool::new(false)),
            written: Arc::new(Written::now()),
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
                return Err(locked_by(&other, exclusive));
            }
        }
        let (b2, p2) = (backend.clone(), path.clone());
        let (lost, written) = (guard.lost.clone(), guard.written.clone());
        let refresher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(LOCK_REFRESH).await;
                if !refresh(&b2, &p2, &written, &lost, body(&mk())).await {
                    return;
                }
            }
        });
        guard.refresher = Some(refresher);
        Ok(guard)
    }

    /// A shared lock, waiting up to `wait` while an exclusive one (a prune) is held (see
    /// [`retry_while_locked`]).
    pub(crate) async fn acquire_waiting(
        backend: &Backend,
        operation: &str,
        wait: Duration,
        stopped: &(dyn Fn() -> bool + Sync),
    ) -> Result<Self> {
        retry_while_locked(wait, stopped, || Self::acquire(backend, false, operation)).await
    }

    /// Fails when the lock is no longer held: removed by another process that took it for
    /// stale, or not written for so long that another may take it for stale now. What this
    /// process relied on (packs a backup deduplicated against) may then be gone, so nothing
    /// may be committed or deleted.
    pub(crate) async fn held(&self) -> Result<()> {
        self.check().held().await
    }

    /// What asks [`LockGuard::held`] from elsewhere (a backup's packer, before each index
    /// file it writes).
    pub(crate) fn check(&self) -> LockCheck {
        LockCheck {
            backend: self.backend.clone(),
            path: self.path.clone(),
            lost: self.lost.clone(),
            written: self.written.clone(),
        }
    }

    pub(crate) async fn release(mut self) {
        if let Some(r) = self.refresher.take() {
            r.abort();
        }
        if let Err(e) = self.backend.delete_any(&self.path).await {
            // Others then take the lock for held until it is stale (30 minutes).
            tracing::warn!(
                lock = %self.path,
                error = %e,
                "the lock could not be removed; `cairn repo unlock` removes it once it is stale"
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Location;

    /// A backup meeting a prune waits for it when asked to, and fails at once when not.
    #[tokio::test]
    async fn a_shared_lock_waits_for_an_exclusive_one_when_asked() {
        let backend =
            Backend::connect(&Location::new("memory://waiting-lock"), false).expect("a store");
        let prune = LockGuard::acquire(&backend, true, "prune")
            .await
            .expect("the lock");
        let refused =
            LockGuard::acquire_waiting(&backend, "backup", Duration::ZERO, &|| false).await;
        assert!(matches!(refused, Err(Error::Locked { .. })), "{refused:?}");
        // Waiting for the prune without a lock of its own writes nothing.
        let looked = wait_unlocked(&backend, Duration::ZERO, &|| false).await;
        assert!(matches!(looked, Err(Error::Locked { .. })), "{looked:?}");
        assert_eq!(list_locks(&backend, None).await.expect("locks").len(), 1);
        // Stopped (Ctrl-C) while waiting: at once, not at the end of the wait.
        let started = std::time::Instant::now();
        let stopped =
            LockGuard::acquire_waiting(&backend, "backup", Duration::from_secs(60), &|| true).await;
        assert!(matches!(stopped, Err(Error::Interrupted)), "{stopped:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            prune.release().await;
        });
        let started = std::time::Instant::now();
        let backup =
            LockGuard::acquire_waiting(&backend, "backup", Duration::from_secs(20), &|| false)
                .await
                .expect("the lock once the prune is done");
        assert!(started.elapsed() >= Duration::from_millis(1_500));
        release.await.expect("released");
        wait_unlocked(&backend, Duration::ZERO, &|| false)
            .await
            .expect("no prune now");
        backup.release().await;
    }

    /// A holder whose lock was last written long ago (paused, asleep) may have been taken for
    /// gone, even if its lock is still there: it relies on it no more, and never writes it
    /// again.
    #[tokio::test]
    async fn a_lock_not_written_for_long_is_not_relied_on() {
        let backend =
            Backend::connect(&Location::new("memory://unsure-lock"), false).expect("a store");
        let guard = LockGuard::acquire(&backend, false, "backup")
            .await
            .expect("the lock");
        guard.held().await.expect("held");
        let fresh = Bytes::from_static(b"{}");
        assert!(
            refresh(
                &backend,
                &guard.path,
                &guard.written,
                &guard.lost,
                fresh.clone()
            )
            .await
        );
        assert_eq!(backend.get(&guard.path).await.expect("read"), Some(fresh));
        guard.held().await.expect("held");

        let long_ago = std::time::Instant::now() - UNSURE_AFTER - Duration::from_secs(60);
        guard.written.0.lock().expect("lock").0 = long_ago;
        assert!(matches!(guard.held().await, Err(Error::LockLost { .. })));
        let written = backend.get(&guard.path).await.expect("read");
        let again = Bytes::from_static(b"{\"again\":1}");
        assert!(!refresh(&backend, &guard.path, &guard.written, &guard.lost, again).await);
        assert_eq!(
            backend.get(&guard.path).await.expect("read"),
            written,
            "not written again"
        );
        assert!(guard.lost.load(Ordering::SeqCst));
        guard.release().await;
    }

    #[test]
    fn the_longer_clock_counts() {
        let w = Written::now();
        assert!(!w.unsure());
        w.0.lock().expect("lock").1 = std::time::SystemTime::now() - UNSURE_AFTER * 2;
        assert!(w.unsure(), "asleep: the wall clock ran on");
        w.set(&Written::now());
        w.0.lock().expect("lock").1 = std::time::SystemTime::now() + UNSURE_AFTER * 2;
        assert!(!w.unsure(), "a wall clock set back is not a pause");
    }
}
