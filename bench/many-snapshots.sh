#!/usr/bin/env bash
# Maintenance over many snapshots: `prune --dry-run`, `check` and `find` of a repository holding
# SNAPSHOTS backups of a tree of small files (bench/gen-files.py), one new file between
# backups, Cairn against restic (Debian package) in one run.
#
#   bench/many-snapshots.sh [WORKDIR] [FILES] [SNAPSHOTS]   # defaults: /tmp/cairn-many 200000 30
#
# OLD=path/to/cairn also times an older Cairn build on the same Cairn repository. Wall time,
# CPU time and peak RSS come from GNU time.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
work=${1:-/tmp/cairn-many}
files=${2:-200000}
snapshots=${3:-30}

need() { command -v "$1" >/dev/null || { echo "many-snapshots.sh: $1 missing; install: $2" >&2; exit 2; }; }
need restic "apt-get install restic"
need /usr/bin/time "apt-get install time"

echo "==> cargo build --release -p cairn-cli" >&2
(cd "$top" && cargo build --release --locked -p cairn-cli >&2)
cairn="${CARGO_TARGET_DIR:-$top/target}/release/cairn"

export CAIRN_PASSPHRASE=bench-passphrase RESTIC_PASSWORD=bench-passphrase
export RESTIC_CACHE_DIR="$work/cache/restic"
mkdir -p "$work"
data="$work/data"
[ -d "$data" ] || python3 "$here/gen-files.py" day1 "$data" --files "$files" >&2
rm -rf "$work/cairn" "$work/restic" "$work/cache" "$data"/*/added-*.eml
"$cairn" repo init --repo "file://$work/cairn" >/dev/null
restic init --repo "$work/restic" >/dev/null
dirs=("$data"/*/)
for i in $(seq 1 "$snapshots"); do
  echo "==> backup $i of $snapshots" >&2
  echo "mail $i" >"${dirs[$((i % ${#dirs[@]}))]}added-$i.eml"
  "$cairn" repo backup "$data" --repo "file://$work/cairn" >/dev/null
  restic backup --quiet --repo "$work/restic" "$data"
done

measure() { # NAME CMD...
  local name=$1; shift
  local tf; tf=$(mktemp)
  /usr/bin/time -f '%e %U %S %M' -o "$tf" "$@" >/dev/null 2>&1
  read -r wall user sys rss <"$tf"; rm -f "$tf"
  printf '%-22s %7.2f s wall %7.2f s CPU %6d MiB\n' "$name" "$wall" "$(echo "$user + $sys" | bc)" "$((rss / 1024))"
}
echo "$snapshots snapshots of $(find "$data" -type f | wc -l) files"
# One file's name, to find in every snapshot.
name=$(basename "$(find "$data" -type f | sort | head -1)")
measure "cairn prune --dry-run" "$cairn" repo prune --dry-run --repo "file://$work/cairn"
measure "cairn check" "$cairn" repo check --repo "file://$work/cairn"
measure "cairn find" "$cairn" repo find "$name" --repo "file://$work/cairn"
if [ -n "${OLD:-}" ]; then
  measure "old prune --dry-run" "$OLD" repo prune --dry-run --repo "file://$work/cairn"
  measure "old check" "$OLD" repo check --repo "file://$work/cairn"
  measure "old find" "$OLD" repo find "$name" --repo "file://$work/cairn"
fi
measure "restic prune --dry-run" restic prune --dry-run --repo "$work/restic"
measure "restic check" restic check --repo "$work/restic"
measure "restic find" restic find --repo "$work/restic" "$name"
rm -f "$data"/*/added-*.eml
