#!/usr/bin/env bash
# The whole test suite, as the README promises it: prepare what the tests
# need, then formatting, lints, docs and every test. CI runs exactly this
# (through .ci/run) with CI=true.
#
# Today the suite needs nothing beyond the Rust toolchain: client-side
# sessions talk to no external service. Stores and the Flask interop tests
# add their preparation here as they land, so that a fresh machine passes.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s\n' "$*"; }

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
