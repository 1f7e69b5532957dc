# Shared by scripts/*.sh: install what the build and the tests need, once, idempotently.

step() { printf '\n==> %s\n' "$*" >&2; }

# Free space under the build directory, and a warning below NEED_GIB. A build from clean writes
# about 4.5 GiB there (the tests, clippy, the test guests and a new blueprint's crate).
report_disk() {
  local dir=$1 need_gib=$2 free_gib
  mkdir -p "$dir"
  free_gib=$(df -Pk "$dir" | awk 'NR == 2 { print int($4 / 1048576) }')
  printf 'free under %s: %s GiB\n' "$dir" "$free_gib" >&2
  if [ "$free_gib" -lt "$need_gib" ]; then
    printf 'warning: under %s GiB free: the build or the tests may fail with "No space left on device"\n' \
      "$need_gib" >&2
  fi
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_rust_components() {
  if command -v rustup >/dev/null; then
    rustup component add rustfmt clippy >/dev/null 2>&1 || true
  fi
}

ensure_wasm_target() {
  local sysroot
  sysroot=$(rustc --print sysroot)
  if [ ! -d "$sysroot/lib/rustlib/wasm32-wasip2" ]; then
    step "rustup target add wasm32-wasip2"
    rustup target add wasm32-wasip2
  fi
}

# S3-compatible servers for the repository's conformance suite: s3s-fs (basics) and moto's
# server mode (Object Lock). Installed when missing.
ensure_test_servers() {
  export PATH="$HOME/.cargo/bin:$PATH"
  if ! command -v s3s-fs >/dev/null; then
    step "cargo install s3s-fs 0.14.1"
    # In cargo's own temporary directory, removed after: not in a CARGO_TARGET_DIR the tests use.
    env -u CARGO_TARGET_DIR cargo install --quiet --locked s3s-fs --version 0.14.1 --features binary
  fi
  # Python runs moto, and the repository's tests (a path too long to name whole).
  command -v python3 >/dev/null || apt_install python3
  # Debian's own Python refuses system-wide pip installs (PEP 668): moto then goes to a venv.
  local venv="$HOME/.local/share/cairn-test/moto"
  if [ -x "$venv/bin/moto_server" ]; then export PATH="$venv/bin:$PATH"; fi
  if ! command -v moto_server >/dev/null; then
    step "pip install moto[server]"
    if ! python3 -m pip install --quiet 'moto[server]'; then
      step "python3 -m venv $venv; pip install moto[server] there"
      python3 -m venv "$venv" || { apt_install python3-venv; python3 -m venv "$venv"; }
      "$venv/bin/pip" install --quiet 'moto[server]'
      export PATH="$venv/bin:$PATH"
    fi
  fi
  if ! command -v azurite-blob >/dev/null; then
    command -v npm >/dev/null || apt_install nodejs npm
    step "npm install azurite 3.35.0"
    as_root npm install --global --silent --no-fund --no-audit azurite@3.35.0 >/dev/null
  fi
}

# The application servers the blueprints' end-to-end tests run against (Debian packages),
# installed when missing. Debian starts none of them here: the tests start their own, on
# loopback, in temporary directories.
ensure_app_servers() {
  local missing=()
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql postgresql-contrib)
  command -v mariadbd >/dev/null || missing+=(mariadb-server mariadb-client)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v etcdctl >/dev/null || missing+=(etcd-client)
  if [ ${#missing[@]} -gt 0 ]; then
    step "apt-get install ${missing[*]}"
    apt_install "${missing[@]}"
  fi
}
