#!/usr/bin/env bash
# Side-by-side PostgreSQL benchmark, run by hand: a pgbench database of about 1 GiB (scale 70),
# backed up with `pg_dump -Fc` to a local file and with `cairn run` of blueprints/postgres into
# the default repository of a fresh Cairn home (the blueprint's plain and custom formats), then
# restored with `pg_restore` from that file and with `cairn run --action restore`, in one run,
# on one PostgreSQL 15 server.
#
#   bench/postgres.sh [WORKDIR] [SCALE]        # defaults: /tmp/cairn-bench-pg 70
#   RUNS=3 bench/postgres.sh                    # backups and restores RUNS times, rotating
#
# Needs the Debian packages postgresql-15 and postgresql-client-15 and GNU time; run as root
# (the server runs as the `postgres` user) or as a user that may run initdb itself. Wall time,
# CPU time (user + sys) and peak RSS come from GNU time (for cairn: the runtime's own process
# and the pg_dump/pg_restore it runs are children, so CPU and RSS cover both); bytes are the
# dump file's size and the growth of Cairn's repository.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
work=${1:-/tmp/cairn-bench-pg}
scale=${2:-70}
bin=/usr/lib/postgresql/15/bin

need() { [ -x "$1" ] || command -v "$1" >/dev/null || { echo "postgres.sh: $1 missing; install: $2" >&2; exit 2; }; }
for p in initdb pg_ctl postgres psql pg_dump pg_restore pgbench; do
  need "$bin/$p" "apt-get install postgresql-15 postgresql-client-15"
done
need /usr/bin/time "apt-get install time"

step() { printf '==> %s\n' "$*" >&2; }

step "cargo build --release -p cairn-cli and the postgres blueprint"
(cd "$top" && cargo build --release --locked -p cairn-cli >&2)
(cd "$top" && cargo build --release --locked --target wasm32-wasip2 -p postgres >&2)
target_dir=${CARGO_TARGET_DIR:-$top/target}
cairn="$target_dir/release/cairn"
wasm="$target_dir/wasm32-wasip2/release/postgres.wasm"

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

rm -rf "$work"
mkdir -p "$work"
[ "$(id -u)" = 0 ] && chown postgres "$work"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
data="$work/data"
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=cairn PGPASSWORD=bench-pw

stop_server() { as_pg "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true; }
trap stop_server EXIT

step "initdb and start PostgreSQL on 127.0.0.1:$port"
as_pg "$bin/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
as_pg "$bin/pg_ctl" -D "$data" -l "$work/server.log" -w \
  -o "-p $port -k $work -c listen_addresses=127.0.0.1 -c shared_buffers=256MB -c max_wal_size=4GB" start >/dev/null
"$bin/psql" -X -q -h "$work" -U postgres -d postgres \
  -c "CREATE ROLE cairn LOGIN SUPERUSER PASSWORD 'bench-pw'" >/dev/null

step "pgbench -i -s $scale"
"$bin/psql" -X -q -d postgres -c "CREATE DATABASE bench" >/dev/null
"$bin/pgbench" -i -q -s "$scale" bench >/dev/null 2>&1
db_bytes=$("$bin/psql" -X -A -t -d postgres -c "SELECT pg_database_size('bench')")

cat >"$work/inventory.yaml" <<EOF
namespaces:
  default:
    workloads:
      db:
        workdir: .
        env: {PATH: "$bin:/usr/bin:/bin"}
        allow: [psql, pg_dump, pg_dumpall, pg_restore]
EOF
export CAIRN_HOME="$work/home"
results="$work/results.txt"
: >"$results"

# measure NAME BYTES_CMD CMD... : runs CMD under GNU time (its stdout to $work/last.out), then
# BYTES_CMD for the bytes column.
measure() {
  local name=$1 bytes_cmd=$2; shift 2
  local tf; tf=$(mktemp)
  sync
  /usr/bin/time -f '%e %U %S %M' -o "$tf" "$@" >"$work/last.out"
  read -r wall user sys rss <"$tf"; rm -f "$tf"
  echo "$name|$wall|$(echo "$user + $sys" | bc)|$((rss / 1024))|$(eval "$bytes_cmd")" >>"$results"
}
repo_bytes() { du -sb "$CAIRN_HOME/repository" 2>/dev/null | cut -f1 || echo 0; }
run_cairn=("$cairn" run "$wasm" --target "local:$work/inventory.yaml" --workload db
  --param port="$port" --param user=cairn --grant exec,export,import,secrets
  --secret password=env:PGPASSWORD)

step "pg_dump -Fc -Z0 to a file"
measure "pg_dump -Fc -Z0 > file" "stat -c %s $work/bench-z0.dump" \
  "$bin/pg_dump" -Fc -Z0 -d bench -f "$work/bench-z0.dump"
rm -f "$work/bench-z0.dump"
step "cairn run postgres backup"
# The first run of a blueprint in a home compiles it (about 0.1 s, once); not a backup's cost.
"$cairn" blueprint inspect "$wasm" >/dev/null
measure "cairn backup (1st)" repo_bytes \
  "${run_cairn[@]}" --action backup --param database=bench --output json
cp "$work/last.out" "$work/backup.json"
before=$(repo_bytes)
measure "cairn backup (2nd, unchanged)" "echo \$((\$(repo_bytes) - $before))" \
  "${run_cairn[@]}" --action backup --param database=bench --output json
step "cairn run postgres backup, format=custom"
before=$(repo_bytes)
measure "cairn backup (custom)" "echo \$((\$(repo_bytes) - $before))" \
  "${run_cairn[@]}" --action backup --param database=bench --param format=custom --output json
cp "$work/last.out" "$work/backup-custom.json"

# Backups RUNS times, order rotating, as the restores below: `pg_dump -Fc` to a file against a
# first `cairn run` backup into a new home's new default repository (the compile cache copied
# in), so every one stores the whole dump.
backup_pg() {
  measure "backup: pg_dump -Fc > file" "stat -c %s $work/bench.dump" \
    "$bin/pg_dump" -Fc -d bench -f "$work/bench.dump"
}
backup_cairn() {
  rm -rf "$work/new-home" && mkdir -p "$work/new-home" && cp -r "$CAIRN_HOME/cache" "$work/new-home/"
  CAIRN_HOME="$work/new-home" measure "backup: cairn (new repository)" \
    "du -sb $work/new-home/repository | cut -f1" \
    "${run_cairn[@]}" --action backup --param database=bench --output json
  rm -rf "$work/new-home"
}
runs=${RUNS:-1}
backups=(pg cairn)
for run in $(seq "$runs"); do
  k=$(( (run - 1) % ${#backups[@]} ))
  for b in "${backups[@]:k}" "${backups[@]:0:k}"; do
    step "backup: $b ($run/$runs)"
    "backup_$b"
  done
done

# Each restore starts from a checkpointed server with no restored database left, so none pays
# for the WAL, or the autovacuum, of the one before; the database is checked, then dropped.
# Every restore gets the same empty database, created before the clock starts: pg_restore
# needs one, and the blueprint would otherwise create it inside its own timing.
restored=restored
empty_database() {
  "$bin/psql" -X -q -d postgres -c "CREATE DATABASE $restored" -c CHECKPOINT >/dev/null
}
restore_pg() {
  empty_database
  measure "pg_restore < file" "echo -" \
    "$bin/pg_restore" --exit-on-error -d "$restored" "$work/bench.dump"
}
# restore_with_cairn NAME REPORT: a `cairn run` restore of the backup REPORT describes.
restore_with_cairn() {
  empty_database
  measure "$1" "echo -" \
    "${run_cairn[@]}" --action restore --from "$2" --param database="$restored"
}
restore_cairn() { restore_with_cairn "cairn restore" "$work/backup.json"; }
restore_custom() { restore_with_cairn "cairn restore (custom)" "$work/backup-custom.json"; }

# RUNS times each; the order rotates every run, and the server's speed varies between runs
# more than the restores differ, so the medians are the figures.
restores=(pg cairn custom)
"$bin/psql" -X -q -d postgres -c "DROP DATABASE IF EXISTS $restored" >/dev/null
for run in $(seq "$runs"); do
  k=$(( (run - 1) % ${#restores[@]} ))
  for r in "${restores[@]:k}" "${restores[@]:0:k}"; do
    step "restore: $r ($run/$runs)"
    "restore_$r"
    n=$("$bin/psql" -X -A -t -d "$restored" -c "SELECT count(*) FROM pgbench_accounts")
    [ "$n" = $((scale * 100000)) ] || { echo "postgres.sh: $r restored $n accounts, not $((scale * 100000))" >&2; exit 1; }
    "$bin/psql" -X -q -d postgres -c "DROP DATABASE $restored" >/dev/null
  done
done

printf '\npgbench scale %s, database %s MiB, PostgreSQL %s, %s\n\n' "$scale" $((db_bytes / 1048576)) \
  "$("$bin/psql" -X -A -t -d postgres -c 'SHOW server_version')" "$(nproc) CPUs"
printf '| step | wall s | CPU s | peak RSS MiB | bytes written |\n| --- | ---: | ---: | ---: | ---: |\n'
while IFS='|' read -r name wall cpu rss bytes; do
  printf '| %s | %s | %s | %s | %s |\n' "$name" "$wall" "$cpu" "$rss" "$bytes"
done <"$results"
if [ "$runs" -gt 1 ]; then
  # Medians, and the median of each run's own ratio to pg_restore: the server's speed drifts
  # between runs, and a ratio within one run cancels that.
  python3 - "$results" "$runs" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("|") for l in open(sys.argv[1])]
runs = int(sys.argv[2])

def report(what, names):
    steps = [r for r in rows if r[0] in names]
    per_run = len(steps) // runs
    print(f"\n{what} wall time over {runs} runs, order rotating (median; median of per-run ratios):")
    for name in names:
        walls = [float(r[1]) for r in steps if r[0] == name]
        ratios = []
        for i in range(runs):
            run = {r[0]: float(r[1]) for r in steps[i * per_run:(i + 1) * per_run]}
            ratios.append(run[name] / run[names[0]])
        print(f"{name}: {statistics.median(walls):.2f} s; {statistics.median(ratios):.3f}x {names[0]}")

report("backup", ("backup: pg_dump -Fc > file", "backup: cairn (new repository)"))
report("restore", ("pg_restore < file", "cairn restore", "cairn restore (custom)"))
PY
fi
