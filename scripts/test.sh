#!/usr/bin/env bash
# Every check CI runs, on a fresh machine: installs what the tests need, then fmt, clippy, the
# whole test suite (guest components are built by the tests themselves) and the docs.
#
#   ./scripts/test.sh
#
# Needs: a Rust toolchain from rustup (1.95), and root for apt-get/pip/npm when test servers are
# missing. Set CARGO_TARGET_DIR to reuse a build directory.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

target_dir=${CARGO_TARGET_DIR:-target}
# A failed run says how much disk was left: a full disk fails builds and tests far from here.
trap 'rc=$?; if [ $rc -ne 0 ]; then df -h "$target_dir" /tmp >&2; fi' EXIT

step "disk"
report_disk "$target_dir" 6

step "toolchain"
ensure_rust_components
ensure_wasm_target

step "test servers"
ensure_test_servers
ensure_app_servers
# The repository's conformance suite must reach a real S3-compatible server and Azure's
# emulator in CI, not skip.
export CAIRN_TEST_S3=required
export CAIRN_TEST_AZURE=required

# CI builds once from clean: incremental state would only cost time and disk.
export CARGO_INCREMENTAL=0

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked --no-fail-fast

step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "done"
