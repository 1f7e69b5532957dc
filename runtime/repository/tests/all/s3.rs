//! Starts `s3s-fs` on loopback for the S3 conformance run.

use cairn_repository::Location;
use std::process::{Child, Command, Stdio};

pub struct S3Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

const KEY: &str = "cairntest";
const SECRET: &str = "cairntestsecret";

impl S3Server {
    /// Starts the server; `None` (test skipped) only when `CAIRN_TEST_S3` is unset and the
    /// binary is not installed. With `CAIRN_TEST_S3` set, failing to start is a test failure.
    pub fn start() -> Option<Self> {
        let required = std::env::var_os("CAIRN_TEST_S3").is_some_and(|v| !v.is_empty() && v != "0");
        let bin = std::env::var("CAIRN_S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
        let found = Command::new(&bin)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            assert!(
                !required,
                "CAIRN_TEST_S3 is set but {bin} cannot be run; install it with `cargo install s3s-fs --version 0.14.1 --features binary`"
            );
            eprintln!(
                "skipping the S3 conformance run: s3s-fs is not installed (set CAIRN_TEST_S3=1 to require it)"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cairn")).unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new(&bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                KEY,
                "--secret-key",
                SECRET,
            ])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let server = Self {
            child,
            port,
            _dir: dir,
        };
        // Wait for the port to accept connections (bounded, not a sleep-and-hope).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "s3s-fs did not start listening on port {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Some(server)
    }

    pub fn location(&self) -> Location {
        Location::new(format!("s3://cairn/repo-{}", uuid::Uuid::new_v4().simple()))
            .option("aws_endpoint", format!("http://127.0.0.1:{}", self.port))
            .option("aws_allow_http", "true")
            .option("aws_region", "us-east-1")
            .option("aws_access_key_id", KEY)
            .option("aws_secret_access_key", SECRET)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
