//! End-to-end tests of the application blueprints against real servers.

mod etcd;
mod mysql;
mod postgres;
mod quiesce;
mod redis;

use std::net::TcpListener;
use std::process::Output;

use crate::support::{json, stderr};

/// A loopback port nothing listens on now, for a test's own server.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The one-line reason of a run that failed (exit 1, `--output json`).
fn error_of(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    json(out)["error"]
        .as_str()
        .expect("a failed run reports an error")
        .to_owned()
}
