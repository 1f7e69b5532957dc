#!/usr/bin/env bash
# The main job on the embedded default: no cluster, no cloud. Builds the `cairn` binary and the
# `hello` blueprint, then backs up the `hello` workload of the local target in
# examples/hello/inventory.yaml, by hand and then through the backup policy
# examples/policies/hello.yaml. State goes to $CAIRN_HOME (default ~/.local/share/cairn).
#
#   ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_wasm_target
step "cargo build --release"
cargo build --release --locked -p cairn-cli
cairn="${CARGO_TARGET_DIR:-target}/release/cairn"

step "cairn blueprint build examples/hello"
wasm=$("$cairn" blueprint build examples/hello)

step "cairn blueprint inspect $wasm"
"$cairn" blueprint inspect "$wasm"

step "cairn run $wasm --action backup"
"$cairn" run "$wasm" --action backup --target local:examples/hello/inventory.yaml \
  --workload hello --grant exec

step "cairn blueprint add $wasm; cairn policy apply examples/policies/hello.yaml"
"$cairn" blueprint add "$wasm"
"$cairn" policy apply examples/policies/hello.yaml
step "cairn serve --once (runs the policy if it is due)"
"$cairn" serve --once
"$cairn" policy list

step "cairn binding apply examples/policies/hello-binding.yaml; a policy for the whole namespace"
"$cairn" binding apply examples/policies/hello-binding.yaml
"$cairn" policy apply examples/policies/namespace.yaml
"$cairn" policy run default-nightly
