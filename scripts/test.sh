#!/usr/bin/env bash
# The whole test suite, as the README promises it: prepare what the tests
# need, then formatting, lints, docs and every test. CI runs exactly this
# (through .ci/run) with CI=true.
#
# What the suite needs beyond the Rust toolchain is installed here if
# missing, so that a fresh machine passes: a Python venv with the pinned
# Flask for the interop tests, and Debian's Chromium and Node.js with
# playwright-core for the browser test. Each later need (database servers)
# adds its preparation here.
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

step "prepare: Python venv with the pinned Flask for the interop tests"
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
.venv/bin/python -c 'from importlib.metadata import version as v; print("Flask", v("flask"), "itsdangerous", v("itsdangerous"))'

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

step "cargo fmt --check"
cargo fmt --all -- --check

step "clippy, every target and feature, warnings are errors"
cargo clippy --all-targets --all-features -- -D warnings

step "the library builds and tests without Axum"
cargo clippy --no-default-features --lib -- -D warnings
cargo test --no-default-features --lib --quiet

step "docs build without warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features --quiet

step "tests (unit, Router-level, examples over HTTP, doc tests)"
cargo test --all-features
