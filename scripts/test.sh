#!/usr/bin/env bash
# The whole test suite, as the README promises it: prepare what the tests
# need, then formatting, lints, docs and every test. CI runs exactly this
# (through .ci/run) with CI=true.
#
# What the suite needs beyond the Rust toolchain is started, or installed
# with apt-get, here, so that a fresh machine passes: Redis (and a local
# three-node Redis Cluster), PostgreSQL, MariaDB and Memcached for the store
# tests; a Python venv with the pinned Flask for the interop tests and
# nx-27017 (a MongoDB-wire server, as Debian has no MongoDB); Debian's
# Chromium and Node.js with playwright-core for the browser test. With
# CI=true a test whose service is still missing fails rather than skips.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s\n' "$*"; }

apt_updated=
apt_install() {
    if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
        echo "cannot install $* (not root, no sudo)" >&2
        return 1
    fi
    local sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
    if [ -z "$apt_updated" ]; then
        $sudo apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Whether something listens on 127.0.0.1:$1.
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# Waits up to 30 s for port $1, then complains.
wait_port() {
    for _ in $(seq 1 150); do port_open "$1" && return 0; sleep 0.2; done
    echo "nothing listens on 127.0.0.1:$1" >&2
    return 1
}

step "prepare: Redis on 6379"
if ! port_open 6379; then
    command -v redis-server >/dev/null || apt_install redis-server
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_port 6379
fi

step "prepare: a three-node Redis Cluster on 7001-7003"
cluster_ok() { redis-cli -p 7001 cluster info 2>/dev/null | grep -q 'cluster_state:ok'; }
if ! cluster_ok; then
    for port in 7001 7002 7003; do
        redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    done
    sleep 0.5
    for port in 7001 7002 7003; do
        dir="${TMPDIR:-/tmp}/session-layer-redis-cluster/$port"
        rm -rf "$dir" && mkdir -p "$dir"
        redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
            --cluster-config-file "$dir/nodes.conf" --dir "$dir" --save "" --appendonly no \
            --logfile "$dir/redis.log"
        wait_port "$port"
    done
    redis-cli --cluster create 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7003 \
        --cluster-replicas 0 --cluster-yes >/dev/null
    for _ in $(seq 1 100); do cluster_ok && break; sleep 0.2; done
    cluster_ok || { echo "the Redis Cluster did not become ready" >&2; exit 1; }
fi

step "prepare: PostgreSQL on 5432 (database test, trust auth)"
if ! port_open 5432; then
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        apt_install postgresql
        hba=$(ls /etc/postgresql/*/main/pg_hba.conf | head -n 1)
        sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    fi
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
    wait_port 5432
fi
if ! psql -h 127.0.0.1 -U postgres -lqt 2>/dev/null | cut -d'|' -f1 | grep -qw test; then
    psql -h 127.0.0.1 -U postgres -c 'CREATE DATABASE test' >/dev/null \
        || su postgres -c "psql -c 'CREATE DATABASE test'" >/dev/null
fi

step "prepare: MariaDB on 3306 (database test, root without password)"
if ! port_open 3306; then
    command -v mariadbd >/dev/null || apt_install mariadb-server
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    wait_port 3306
fi
if ! mariadb -h 127.0.0.1 -u root -e 'SELECT 1' >/dev/null 2>&1; then
    # A fresh install lets root in only through the socket: open TCP too.
    mariadb -u root -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD(''); \
        CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'; GRANT ALL ON *.* TO 'root'@'127.0.0.1'; FLUSH PRIVILEGES;"
fi
mariadb -h 127.0.0.1 -u root -e 'CREATE DATABASE IF NOT EXISTS test'

step "prepare: Memcached on 11211"
if ! port_open 11211; then
    command -v memcached >/dev/null || apt_install memcached
    memcached -d -u "$(id -un)" -l 127.0.0.1 -p 11211 -m 64
    wait_port 11211
fi

step "prepare: Python venv with the pinned Flask (interop tests) and nx-27017 (MongoStore's test server)"
if ! .venv/bin/python -c 'import flask' 2>/dev/null \
    || ! cmp -s tests/flask/requirements.txt .venv/requirements.installed; then
    if ! python3 -m venv --help >/dev/null 2>&1; then
        apt_install python3-venv
    fi
    rm -rf .venv
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r tests/flask/requirements.txt
    cp tests/flask/requirements.txt .venv/requirements.installed
fi
.venv/bin/python -c 'from importlib.metadata import version as v; print("Flask", v("flask"), "itsdangerous", v("itsdangerous"), "nx-27017", v("nx-27017"))'

step "prepare: Chromium and playwright-core for the browser test"
if ! [ -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
    apt_install chromium
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm
fi
if ! [ -d tests/browser/node_modules/playwright-core ]; then
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

step "cargo fmt --check (the crate, fuzz/ and bench/)"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo fmt --manifest-path bench/Cargo.toml -- --check

step "clippy, every target and feature, warnings are errors"
cargo clippy --all-targets --all-features -- -D warnings
# The default build too: an example's code for a feature that is off must
# not leave warnings behind for a user's first `cargo run --example`.
cargo clippy --all-targets --quiet -- -D warnings

step "the library builds and tests without Axum, and each optional feature builds alone"
cargo clippy --no-default-features --lib -- -D warnings
for feature in memory-store file-store caching-store redis-store postgres-store mysql-store \
    sqlite-store memcached-store mongodb-store flask flask-session testing; do
    cargo clippy --no-default-features --features "$feature" --lib --quiet -- -D warnings
done
# Flask-Session's records over each server alone (each has code of its own).
for store in redis-store memcached-store postgres-store mysql-store sqlite-store mongodb-store; do
    cargo clippy --no-default-features --features "flask-session $store" --lib --quiet -- -D warnings
done

step "cargo test with no features and with the default ones (each test gated on what it needs)"
cargo test --no-default-features --quiet
cargo test --quiet

step "the benchmark crate builds, clippy clean (run it as docs/benchmarks.md says)"
cargo clippy --manifest-path bench/Cargo.toml --all-targets --quiet -- -D warnings

step "docs build without warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features --quiet

# 30 s per target in CI, as the fuzzing issue asks; less on a laptop.
if [ "${CI:-}" = "true" ]; then fuzz_seconds="${FUZZ_SECONDS:-30}"; else fuzz_seconds="${FUZZ_SECONDS:-10}"; fi
step "fuzz: every target in fuzz/ for $fuzz_seconds s"
scripts/fuzz.sh "$fuzz_seconds"

step "tests (unit, Router-level, examples over HTTP, doc tests)"
cargo test --all-features
