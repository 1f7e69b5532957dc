//! Integration tests of the local cluster backend: real processes in real directories.

mod exec;
mod inventory;
mod kubernetes;
mod objects;
mod scale;
mod volumes;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_cluster::{ExecRequest, LocalCluster, Stdin, Stdout, WorkloadRef};

/// Generous bound for anything a test awaits; a hang fails the test instead of the run.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A temporary inventory directory and state directory.
#[derive(Debug)]
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// A directory with `inventory.yaml` holding `yaml`, and the given subdirectories.
    pub fn new(yaml: &str, dirs: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for d in dirs {
            std::fs::create_dir_all(dir.path().join(d)).expect("create a fixture directory");
        }
        std::fs::write(dir.path().join("inventory.yaml"), yaml).expect("write the inventory");
        Fixture { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn inventory(&self) -> PathBuf {
        self.path("inventory.yaml")
    }

    pub fn state(&self) -> PathBuf {
        self.path("state")
    }

    pub fn open(&self) -> LocalCluster {
        LocalCluster::from_inventory(&self.inventory(), &self.state()).expect("the inventory loads")
    }

    pub fn try_open(&self) -> cairn_cluster::Result<LocalCluster> {
        LocalCluster::from_inventory(&self.inventory(), &self.state())
    }
}

/// The usual one-workload inventory: `default/hello` with `data` volume.
pub const HELLO: &str = r#"
namespaces:
  default:
    workloads:
      hello:
        workdir: work
        env: {GREETING: hello}
        allow: [echo, sh, cat, head, pwd, env, "true"]
        pass_env: [EXTRA, MY_*]
        volumes:
          data: ./data
"#;

pub fn hello() -> WorkloadRef {
    WorkloadRef::new("default", "hello")
}

/// An exec request with captured output and a 1 MiB limit.
pub fn request(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        pod: None,
        container: None,
        argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        then: Vec::new(),
        env: Vec::new(),
        stdin: Stdin::Empty,
        stdout: Stdout::Capture,
        output_limit: 1 << 20,
        timeout: Duration::from_secs(30),
        stopped: false,
    }
}

/// Waits for `fut`, failing the test after [`TEST_TIMEOUT`].
pub async fn bounded<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, fut)
        .await
        .expect("the operation finished in time")
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("read a file")
}
