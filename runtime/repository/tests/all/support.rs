use cairn_repository::{KdfParams, Location, Passphrase, Repository};
use std::path::{Path, PathBuf};

/// A new repository in a directory `r` of a new temporary directory (kept while the first
/// value lives), and that directory's path.
pub async fn local_repo() -> (tempfile::TempDir, PathBuf, Repository) {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("r");
    let repo = init_repo(dir.display().to_string()).await;
    (d, dir, repo)
}

/// A passphrase with cheap Argon2 parameters, so tests stay fast.
pub fn pass(s: &str) -> Passphrase {
    Passphrase::new(s).with_params(KdfParams::insecure_for_tests())
}

/// A new repository at `location`, passphrase "p", default options.
pub async fn init_repo(location: impl Into<Location>) -> Repository {
    Repository::init(location, &pass("p"), Default::default())
        .await
        .unwrap()
}

pub fn memory_url() -> String {
    format!("memory://test-{}", uuid::Uuid::new_v4().simple())
}

/// Deterministic pseudo-random bytes.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Compressible, text-like bytes.
pub fn text(n: usize, seed: u64) -> Vec<u8> {
    let words = [
        "alpha ",
        "bravo ",
        "charlie ",
        "delta ",
        "echo\n",
        "INSERT INTO t VALUES (1, 'x');\n",
    ];
    let r = noise(n / 4 + 1, seed);
    let mut out = Vec::with_capacity(n + 64);
    let mut i = 0;
    while out.len() < n {
        out.extend_from_slice(words[r[i % r.len()] as usize % words.len()].as_bytes());
        i += 1;
    }
    out.truncate(n);
    out
}

/// A small tree: nested dirs, text and binary files, an empty file, a symlink.
pub fn make_tree(root: &Path, seed: u64) {
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::fs::write(root.join("a/dump.sql"), text(3_000_000, seed)).unwrap();
    std::fs::write(root.join("a/b/pages.bin"), noise(8192 * 300, seed + 1)).unwrap();
    std::fs::write(root.join("small.conf"), b"key = value\n").unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink("a/dump.sql", root.join("link")).unwrap();
}

/// Asserts two trees are equal: names, types, owners, contents, link targets, file modes.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let la = list(a);
    let lb = list(b);
    assert_eq!(
        la.iter().map(|x| &x.0).collect::<Vec<_>>(),
        lb.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    for ((name, ka), (_, kb)) in la.iter().zip(lb.iter()) {
        assert_eq!(ka, kb, "{name}");
    }
}

fn list(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            #[cfg(unix)]
            let owner = {
                use std::os::unix::fs::MetadataExt;
                format!("{}:{} ", m.uid(), m.gid())
            };
            #[cfg(not(unix))]
            let owner = String::new();
            let desc = if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if m.file_type().is_symlink() {
                // Debug, not display: a target's bytes that are not UTF-8 are compared too.
                format!("link {:?}", std::fs::read_link(&p).unwrap())
            } else {
                #[cfg(unix)]
                let mode = std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777;
                #[cfg(not(unix))]
                let mode = 0;
                format!(
                    "file {mode:o} {}",
                    blake3::hash(&std::fs::read(&p).unwrap())
                )
            };
            out.push((rel, owner + &desc + &xattrs_of(&p)));
        }
    }
    out.sort();
    out
}

/// A node's extended attributes, ` name=hex` each (Linux).
#[cfg(target_os = "linux")]
pub fn xattrs_of(p: &Path) -> String {
    let mut names = vec![0u8; rustix::fs::llistxattr_query(p).unwrap()];
    let n = rustix::fs::llistxattr(p, &mut names[..]).unwrap();
    let mut out = String::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut v = vec![0u8; rustix::fs::lgetxattr_query(p, name).unwrap()];
        let k = rustix::fs::lgetxattr(p, name, &mut v[..]).unwrap();
        out += &format!(
            " {}={}",
            String::from_utf8_lossy(name),
            hex::encode(&v[..k])
        );
    }
    out
}
#[cfg(not(target_os = "linux"))]
pub fn xattrs_of(_: &Path) -> String {
    String::new()
}

/// The files under `sub` of a local repository (`data` holds its packs in subdirectories),
/// sorted.
pub fn files(repo: &Path, sub: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let mut dirs = vec![repo.join(sub)];
    while let Some(d) = dirs.pop() {
        for f in std::fs::read_dir(d).unwrap() {
            let p = f.unwrap().path();
            if p.is_dir() { dirs.push(p) } else { v.push(p) }
        }
    }
    v.sort();
    v
}

/// Runs `f` with a timeout so a hung test fails instead of hanging CI.
pub async fn timed<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(std::time::Duration::from_secs(300), f)
        .await
        .expect("test timed out")
}

/// A test server on loopback, started by [`start_server`]; killed when dropped.
pub struct LocalServer {
    child: std::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

/// Starts `program` on a free loopback port (`args` gets the port and a fresh directory) and
/// waits, at most `wait`, for it to accept connections. `None` (the test skips) only when the
/// program cannot be run and `require` (an environment variable) is unset; with it set, that is
/// a failure naming `install`.
pub fn start_server(
    program: &str,
    require: &str,
    install: &str,
    args: impl FnOnce(u16, &Path) -> Vec<std::ffi::OsString>,
    wait: std::time::Duration,
) -> Option<LocalServer> {
    let required = std::env::var_os(require).is_some_and(|v| !v.is_empty() && v != "0");
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = match std::process::Command::new(program)
        .args(args(port, dir.path()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            assert!(
                !required,
                "{require} is set but {program} cannot be run ({e}); install it with `{install}`"
            );
            eprintln!("skipping: {program} is not installed (set {require}=1 to require it)");
            return None;
        }
    };
    let server = LocalServer {
        child,
        port,
        _dir: dir,
    };
    // Bounded, not a sleep-and-hope.
    let deadline = std::time::Instant::now() + wait;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{program} did not start listening on port {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Some(server)
}

/// One raw HTTP/1.1 request to `server` with an empty body: the status and the whole response.
pub fn http(
    server: &LocalServer,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n",
        server.port
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, resp)
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `forget --keep-last N` over every snapshot.
pub async fn keep_last(repo: &Repository, n: u32) -> cairn_repository::ForgetReport {
    repo.forget(
        &cairn_repository::Retention::new().last(n),
        &cairn_repository::SnapshotFilter::new(),
        &jiff::tz::TimeZone::UTC,
        false,
    )
    .await
    .unwrap()
}
