//! Builds the example blueprint once and runs the real `cairn` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every guest the CLI tests run: `examples/hello`, the blueprints under `blueprints/` and the
/// engine's test blueprint (`misbehave`).
/// Built together, once per test binary, so the tests never wait on one another's builds.
pub const GUESTS: &[&str] = &[
    "hello",
    "redis",
    "etcd",
    "quiesce",
    "postgres",
    "mysql",
    "dr",
    "cairn-engine-guest-misbehave",
];

/// The component of `package` (one of [`GUESTS`]), built for wasm32-wasip2 in its own target
/// dir so it never waits on the lock of the build that is running these tests.
pub fn wasm(package: &str) -> PathBuf {
    assert!(
        GUESTS.contains(&package),
        "add {package} to support::GUESTS"
    );
    static TARGET: OnceLock<PathBuf> = OnceLock::new();
    let target = TARGET.get_or_init(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join("target"))
            .join("guests");
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "--quiet", "--target", "wasm32-wasip2"]);
        for guest in GUESTS {
            cargo.args(["-p", guest]);
        }
        let status = cargo
            .arg("--target-dir")
            .arg(&target)
            .current_dir(root())
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building the guests {GUESTS:?} for wasm32-wasip2 failed"
        );
        target.join("wasm32-wasip2/debug")
    });
    target.join(format!("{}.wasm", package.replace('-', "_")))
}

/// `examples/hello`, built.
pub fn hello_wasm() -> &'static Path {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| wasm("hello"))
}

/// The local target of `examples/hello`.
pub const HELLO_INVENTORY: &str = "local:examples/hello/inventory.yaml";

/// `cairn run hello.wasm --action ACTION` on the `hello` workload of the local target, then
/// `extra` (grants, parameters, flags).
pub fn run_hello(cairn: &Cairn, action: &str, extra: &[&str]) -> Output {
    let wasm = hello_wasm().to_str().expect("utf-8 path");
    let mut args = vec![
        "run",
        wasm,
        "--action",
        action,
        "--target",
        HELLO_INVENTORY,
        "--workload",
        "hello",
    ];
    args.extend_from_slice(extra);
    cairn.run(&args)
}

/// A fresh home and a handle to run `cairn` in it.
pub struct Cairn {
    pub home: tempfile::TempDir,
}

impl Cairn {
    pub fn new() -> Self {
        Self {
            home: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// `cairn ARGS` on this home, to adjust before running.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cairn"));
        command
            .args(args)
            .env("CAIRN_HOME", self.home.path())
            // Times are shown and read in the local zone: the same on every machine.
            .env("TZ", "UTC")
            .env_remove("RUST_LOG")
            .current_dir(root());
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("cairn runs")
    }

    /// Stores `value` as the catalog record `key` of `kind` with `cairn catalog put`, as an
    /// administrator (or another cluster's DR) would, and asserts it was stored.
    pub fn put_record(&self, kind: &str, key: &str, value: &serde_json::Value) {
        let file = self.home.path().join(format!("{kind}-{key}.json"));
        std::fs::write(&file, value.to_string()).expect("write the record");
        let path = file.to_str().expect("utf-8 path");
        ok(&self.run(&["catalog", "put", kind, key, "--json", path]));
    }
}

/// Asserts that `out` succeeded, showing its exit code and output when not.
pub fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            stdout(o),
            stderr(o)
        )
    })
}

/// Every file under `dir`, at any depth.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// `n` deterministic bytes that do not compress (xorshift from `seed`).
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
