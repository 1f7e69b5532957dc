#!/usr/bin/env bash
# Side-by-side data-path benchmark: Cairn's export repository against restic and borg (Debian
# packages), and rustic when it is on the PATH (`cargo install rustic-rs --locked`), in one run,
# on the shared database-like dataset (../shared/bench/gen-dataset.py).
#
#   bench/compare.sh [WORKDIR] [SIZE_MIB]        # defaults: /tmp/cairn-bench 1024
#   DATASET=files bench/compare.sh [WORKDIR] [FILES]   # many small files (bench/gen-files.py),
#                                                      # defaults: /tmp/cairn-files 200000
#
# For each tool: init an encrypted repository, day-1 backup, then (after the dataset's day-2
# mutation, applied once for all tools) a day-2 backup, then a restore of day 2 that is checked
# file by file against the source. Wall time, CPU time and peak RSS come from GNU time; bytes
# from `du` of each repository. Medians need repeated runs: RUNS=3 bench/compare.sh (the tools
# take turns going first, one rotation per run).
#
# Put WORKDIR on a journaled filesystem. ext4 without a journal (the root of some VMs) skips
# every inode freed in the last 6 minutes when it creates a file, so a restore of 200,000 files
# made just after another tool's restore was deleted pays for each of its files (measured:
# 7.8-20.4 s for the same restore, half of it in recently_deleted and find_inode_bit). A loop
# mount does: truncate -s 12G /tmp/fs.img && mkfs.ext4 -q -i 4096 /tmp/fs.img &&
# mount -o loop /tmp/fs.img /mnt/fs (-i 4096: the files dataset needs 800,000 inodes).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
dataset=${DATASET:-db}
runs=${RUNS:-1}
gen="$top/../shared/bench/gen-dataset.py"
[ -f "$gen" ] || { echo "compare.sh: $gen not found (the shared/ folder beside the checkout)" >&2; exit 2; }
case $dataset in
  db)
    work=${1:-/tmp/cairn-bench}; size=${2:-1024}
    make_day1() { python3 "$gen" day1 "$1" --size-mib "$size"; }
    make_day2() { python3 "$gen" mutate "$1"; } ;;
  files)
    work=${1:-/tmp/cairn-files}; size=${2:-200000}
    make_day1() { python3 "$here/gen-files.py" day1 "$1" --files "$size"; }
    make_day2() { python3 "$here/gen-files.py" mutate "$1"; } ;;
  *) echo "compare.sh: DATASET is db or files, not $dataset" >&2; exit 2 ;;
esac

need() { command -v "$1" >/dev/null || { echo "compare.sh: $1 missing; install: $2" >&2; exit 2; }; }
need restic "apt-get install restic"
need borg "apt-get install borgbackup"
need /usr/bin/time "apt-get install time"
python3 -c 'import numpy' 2>/dev/null || python3 -m pip install --quiet numpy

step() { printf '==> %s\n' "$*" >&2; }

step "cargo build --release -p cairn-cli"
(cd "$top" && cargo build --release --locked -p cairn-cli >&2)
cairn="${CARGO_TARGET_DIR:-$top/target}/release/cairn"

export CAIRN_PASSPHRASE=bench-passphrase RESTIC_PASSWORD=bench-passphrase BORG_PASSPHRASE=bench-passphrase
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export RUSTIC_PASSWORD=bench-passphrase
export RESTIC_CACHE_DIR="$work/cache/restic" BORG_CACHE_DIR="$work/cache/borg" BORG_BASE_DIR="$work/cache/borg-base"

# measure NAME CMD... : runs CMD under GNU time; appends "NAME wall cpu rss_kib" to $results.
# Each step starts after `sync`, so none pays for writing back what the step before it left
# dirty (the freshly generated dataset, another tool's repository or restore).
#
# WARM_MIB=N writes and deletes N MiB just before each step: on a VM that hands freed memory
# back to its host within seconds, the first write into the page cache after a pause runs at a
# tenth of its speed (measured on a gVisor VM: 1 GiB at 209-245 MB/s, 2.0-2.6 GB/s straight
# after another), which charges whichever tool writes first for the host's page faults.
measure() {
  local name=$1; shift
  local tf; tf=$(mktemp)
  if [ "${WARM_MIB:-0}" -gt 0 ]; then
    dd if=/dev/zero of="$work/.warm" bs=1M count="$WARM_MIB" status=none
    rm -f "$work/.warm"
  fi
  sync
  /usr/bin/time -f '%e %U %S %M' -o "$tf" "$@" >/dev/null
  read -r wall user sys rss <"$tf"; rm -f "$tf"
  echo "$name $wall $(echo "$user + $sys" | bc) $rss" >>"$results"
}

bytes_of() { du -sb "$1" | cut -f1; }

check_restore() { # SRC_MANIFEST DIR
  python3 "$gen" manifest "$2" 2>/dev/null | diff -q "$1" - >/dev/null \
    || { echo "compare.sh: restore into $2 differs from the source" >&2; exit 1; }
}

# One tool's step: day1_TOOL, day2_TOOL, restore_TOOL (restores are checked file by file).
day1_cairn() {
  "$cairn" repo init --repo "file://$work/cairn" >/dev/null
  measure cairn-day1 "$cairn" repo backup "$data" --repo "file://$work/cairn" --tag day1
}
day1_restic() {
  restic init --repo "$work/restic" >/dev/null
  measure restic-day1 restic backup --repo "$work/restic" "$data"
}
day1_borg() {
  borg init --encryption=repokey-blake2 "$work/borg" >/dev/null
  measure borg-day1 sh -c "cd '$data' && borg create --compression lz4 '$work/borg::day1' ."
}
day1_rustic() {
  rustic --repository "$work/rustic" --cache-dir "$work/cache/rustic" init >/dev/null 2>&1
  measure rustic-day1 rustic --repository "$work/rustic" --cache-dir "$work/cache/rustic" backup "$data"
}
day2_cairn() { measure cairn-day2 "$cairn" repo backup "$data" --repo "file://$work/cairn" --tag day2; }
day2_restic() { measure restic-day2 restic backup --repo "$work/restic" "$data"; }
day2_borg() { measure borg-day2 sh -c "cd '$data' && borg create --compression lz4 '$work/borg::day2' ."; }
day2_rustic() {
  measure rustic-day2 rustic --repository "$work/rustic" --cache-dir "$work/cache/rustic" backup "$data"
}
restore_cairn() {
  local id
  id=$("$cairn" repo snapshots --repo "file://$work/cairn" --tag day2 --output json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
  measure cairn-restore "$cairn" repo restore "$id" --repo "file://$work/cairn" --target "$work/r-cairn"
  check_restore "$work/day2.manifest" "$work/r-cairn"
}
restore_restic() {
  measure restic-restore restic restore latest --repo "$work/restic" --target "$work/r-restic"
  check_restore "$work/day2.manifest" "$work/r-restic$data"
}
restore_borg() {
  mkdir -p "$work/r-borg"
  measure borg-restore sh -c "cd '$work/r-borg' && borg extract '$work/borg::day2'"
  check_restore "$work/day2.manifest" "$work/r-borg"
}

restore_rustic() {
  measure rustic-restore rustic --repository "$work/rustic" --cache-dir "$work/cache/rustic" \
    restore "latest:$data" "$work/r-rustic"
  check_restore "$work/day2.manifest" "$work/r-rustic"
}

# Per-run figures live beside the work directory (it is emptied for every run); the summary
# is the median of each figure over the runs.
out="$work.results"; rm -rf "$out"; mkdir -p "$out"
tools=(cairn restic borg)
command -v rustic >/dev/null && tools+=(rustic)
for run in $(seq 1 "$runs"); do
  rm -rf "$work"; mkdir -p "$work"
  results="$out/run-$run.txt"; : >"$results"
  data="$work/data"
  step "run $run/$runs: dataset $dataset day 1 ($size)"
  make_day1 "$data" >&2
  dataset_bytes=$(bytes_of "$data")
  # The tools take turns going first: on a VM, the first step after the dataset is written
  # can pay for memory the host reclaimed (measured here: a Cairn day-1 backup took 2.85 s
  # straight after the generator and 1.94-1.99 s when run again), so a fixed order would
  # charge one tool for it every run.
  k=$(( (run - 1) % ${#tools[@]} ))
  order=("${tools[@]:k}" "${tools[@]:0:k}")
  step "order this run: ${order[*]}"

  step "day 1"
  for t in "${order[@]}"; do "day1_$t"; done
  for t in "${tools[@]}"; do echo "$t-size1 $(bytes_of "$work/$t")" >>"$results"; done

  step "day 2"
  make_day2 "$data" >&2
  python3 "$gen" manifest "$data" >"$work/day2.manifest" 2>/dev/null
  day2_bytes=$(bytes_of "$data")
  for t in "${order[@]}"; do "day2_$t"; done
  for t in "${tools[@]}"; do echo "$t-size2 $(bytes_of "$work/$t")" >>"$results"; done

  step "restore day 2"
  for t in "${order[@]}"; do "restore_$t"; done
  rm -rf "$work"/r-*

  echo "dataset $dataset_bytes $day2_bytes" >>"$results"
done

python3 - "$out"/run-*.txt <<'PY'
import statistics, sys
runs = []
for path in sys.argv[1:]:
    rows = {}
    for line in open(path):
        k, *v = line.split()
        rows[k] = [float(x) for x in v]
    runs.append(rows)
def med(key, i=0):
    return statistics.median(r[key][i] for r in runs)
def span(key, i=0):
    vals = sorted(r[key][i] for r in runs)
    return vals[0], vals[-1]
# Day 1 backs up the generated tree; day 2 backs up, and the restore writes, the mutated one
# (about 4 % larger: appends and a new dump), so their rates are of its size.
ds, ds2 = med("dataset"), med("dataset", 1); gib = ds / 2**30
print(f"\ndataset: {ds/1e6:.0f} MB on day 1, {ds2/1e6:.0f} MB on day 2; medians of {len(runs)} run(s)\n")
print("| tool | day-1 backup | CPU s/GiB | repo after day 1 | day-2 backup | day-2 bytes added | restore | restore CPU s | restore peak RSS |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for t in ("cairn", "restic", "borg", "rustic"):
    if f"{t}-day1" not in runs[0]:
        continue
    added = statistics.median(r[f"{t}-size2"][0] - r[f"{t}-size1"][0] for r in runs)
    print(f"| {t} | {ds/med(t+'-day1')/1e6:.0f} MB/s | {med(t+'-day1',1)/gib:.2f} | {med(t+'-size1')/1e6:.0f} MB "
          f"| {ds2/med(t+'-day2')/1e6:.0f} MB/s | {added/1e6:.1f} MB | {ds2/med(t+'-restore')/1e6:.0f} MB/s "
          f"| {med(t+'-restore',1):.1f} | {med(t+'-restore',2)/1024:.0f} MiB |")
def ratio(a, b, key, i=0):
    return statistics.median(r[f"{b}-{key}"][i] / r[f"{a}-{key}"][i] for r in runs)
print(f"\nday-1 throughput (median of per-run ratios): cairn/restic {ratio('cairn','restic','day1'):.2f}x, cairn/borg {ratio('cairn','borg','day1'):.2f}x")
print(f"repository after day 1: cairn/restic {1/ratio('cairn','restic','size1'):.3f}; "
      f"after day 2: {1/ratio('cairn','restic','size2'):.3f}")
if "rustic-day1" in runs[0]:
    print(f"against rustic: day 1 {ratio('cairn','rustic','day1'):.2f}x, restore {ratio('cairn','rustic','restore'):.2f}x, "
          f"repository after day 1 {1/ratio('cairn','rustic','size1'):.3f}")
print(f"CPU per GiB: cairn {med('cairn-day1',1)/gib:.2f} s, borg {med('borg-day1',1)/gib:.2f} s")
lo, hi = span("cairn-restore")
print(f"cairn restore wall: {lo:.2f}-{hi:.2f} s over the runs ({ds2/hi/1e6:.0f}-{ds2/lo/1e6:.0f} MB/s)")
lo, hi = span("cairn-day1")
print(f"cairn day-1 wall: {lo:.2f}-{hi:.2f} s over the runs")
print("\n| tool | day-1 s | day-1 CPU s | day-1 peak RSS | day-2 s | day-2 CPU s | day-2 peak RSS | restore s | restore peak RSS |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for t in ("cairn", "restic", "borg", "rustic"):
    if f"{t}-day1" in runs[0]:
        print(f"| {t} | " + " | ".join(
            f"{med(t+'-'+k, i)/1024:.0f} MiB" if i == 2 else f"{med(t+'-'+k, i):.2f}"
            for k, i in (("day1", 0), ("day1", 1), ("day1", 2), ("day2", 0), ("day2", 1),
                         ("day2", 2), ("restore", 0), ("restore", 2))) + " |")
PY
