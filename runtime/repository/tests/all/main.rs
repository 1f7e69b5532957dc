//! Integration tests: one binary, modules per area. The conformance suite runs on every
//! backend: memory, the local filesystem, an S3-compatible server (`s3s-fs`) and Azure's
//! emulator (Azurite) when they are available (required when `CAIRN_TEST_S3` and
//! `CAIRN_TEST_AZURE` are set).

#![allow(clippy::unwrap_used)] // Test and bench code: a panic is the failure report.

mod azure;
mod conformance;
mod copy;
mod crash;
mod damage;
mod forged;
mod full_disk;
mod keys;
mod maintenance;
mod object_lock;
mod s3;
mod support;
