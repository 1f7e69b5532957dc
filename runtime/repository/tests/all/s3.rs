//! Starts `s3s-fs` on loopback for the S3 conformance run.

use crate::support::{LocalServer, start_server};
use cairn_repository::Location;

pub struct S3Server(LocalServer);

const KEY: &str = "cairntest";
const SECRET: &str = "cairntestsecret";

impl S3Server {
    /// Starts the server; `None` (test skipped) only when `CAIRN_TEST_S3` is unset and the
    /// binary is not installed. With `CAIRN_TEST_S3` set, failing to start is a test failure.
    pub fn start() -> Option<Self> {
        let bin = std::env::var("CAIRN_S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
        let server = start_server(
            &bin,
            "CAIRN_TEST_S3",
            "cargo install s3s-fs --version 0.14.1 --features binary",
            |port, dir| {
                std::fs::create_dir_all(dir.join("cairn")).unwrap();
                let port = port.to_string();
                let mut args: Vec<std::ffi::OsString> =
                    ["--host", "127.0.0.1", "--port", &port, "--access-key", KEY]
                        .map(Into::into)
                        .into();
                args.extend(["--secret-key".into(), SECRET.into(), dir.into()]);
                args
            },
            std::time::Duration::from_secs(20),
        )?;
        Some(Self(server))
    }

    pub fn location(&self) -> Location {
        Location::new(format!("s3://cairn/repo-{}", uuid::Uuid::new_v4().simple()))
            .option("aws_endpoint", format!("http://127.0.0.1:{}", self.0.port))
            .option("aws_allow_http", "true")
            .option("aws_region", "us-east-1")
            .option("aws_access_key_id", KEY)
            .option("aws_secret_access_key", SECRET)
    }
}
