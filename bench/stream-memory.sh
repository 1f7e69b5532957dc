#!/usr/bin/env bash
# Memory of a long stream backup: the shared dataset concatenated ROUNDS times (one byte in
# 4 KiB changed differently each round, so nothing deduplicates) piped into
# `cairn repo backup - --stdin-name big.sql`, for each ROUNDS given.
#
#   bench/stream-memory.sh [WORKDIR] [ROUNDS...]     # defaults: /tmp/cairn-stream 1 10
#
# Prints, per size: GiB streamed, chunks, wall seconds, peak RSS (GNU time; includes the
# passphrase's Argon2id at the start) and the highest RSS sampled after the first tenth of the
# run (the backup itself).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
work=${1:-/tmp/cairn-stream}
shift || true
[ $# -gt 0 ] && sizes=("$@") || sizes=(1 10)
gen="$top/../shared/bench/gen-dataset.py"
[ -f "$gen" ] || { echo "stream-memory.sh: $gen not found (the shared/ folder beside the checkout)" >&2; exit 2; }
command -v /usr/bin/time >/dev/null || { echo "stream-memory.sh: apt-get install time" >&2; exit 2; }
python3 -c 'import numpy' 2>/dev/null || python3 -m pip install --quiet numpy

(cd "$top" && cargo build --release --locked -p cairn-cli >&2)
cairn="${CARGO_TARGET_DIR:-$top/target}/release/cairn"
export CAIRN_PASSPHRASE=bench-passphrase

mkdir -p "$work"
if [ ! -d "$work/data" ]; then
  python3 "$gen" day1 "$work/data" --size-mib 1024 >&2
fi

# The generator: every file of the dataset, in name order, ROUNDS times over.
cat >"$work/rounds.py" <<'EOF'
import os, sys
import numpy as np
root, rounds = sys.argv[1], int(sys.argv[2])
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
out = sys.stdout.buffer
for r in range(rounds):
    for path in files:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                b = np.frombuffer(block, dtype=np.uint8).copy()
                b[::4096] ^= np.uint8(r + 1)
                out.write(b.tobytes())
EOF

printf '%-6s %-9s %-8s %-13s %s\n' GiB chunks wall_s peak_RSS_MiB backup_RSS_MiB
for n in "${sizes[@]}"; do
  repo="$work/repo-$n"
  rm -rf "$repo"
  "$cairn" repo init --repo "file://$repo" >/dev/null
  sync
  tf=$(mktemp); sf=$(mktemp)
  python3 "$work/rounds.py" "$work/data" "$n" \
    | /usr/bin/time -f '%e %M' -o "$tf" "$cairn" repo backup - --stdin-name big.sql \
        --repo "file://$repo" --output json >"$work/out-$n.json" &
  # Sample the backup's RSS twice a second.
  sleep 0.2
  pid=$(pgrep -n -f "repo backup - --stdin-name big.sql --repo file://$repo" || true)
  while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; do
    awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null >>"$sf" || true
    sleep 0.5
  done
  wait
  read -r wall rss <"$tf"
  chunks=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["summary"]["chunks"])' "$work/out-$n.json")
  late=$(python3 -c '
import sys
v = [int(x) for x in open(sys.argv[1]) if x.strip()]
print(round(max(v[len(v) // 10:] or [0]) / 1024, 1))' "$sf")
  printf '%-6s %-9s %-8s %-13s %s\n' "$n" "$chunks" "$wall" "$(echo "scale=1; $rss / 1024" | bc)" "$late"
  rm -f "$tf" "$sf"
  rm -rf "$repo"
done
