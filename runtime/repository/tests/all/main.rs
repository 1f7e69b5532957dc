//! Integration tests: one binary, modules per area. The conformance suite runs on every
//! backend: memory, the local filesystem, and an S3-compatible server (`s3s-fs`) when one is
//! available (required when `CAIRN_TEST_S3` is set).

#![allow(clippy::unwrap_used)] // Test and bench code: a panic is the failure report.

mod conformance;
mod crash;
mod damage;
mod full_disk;
mod keys;
mod maintenance;
mod object_lock;
mod s3;
mod support;
