#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60), or
# only the TARGETs named, and prints how many inputs each one executed.
#
#   scripts/fuzz.sh            # 60 s per target
#   scripts/fuzz.sh 600 flask_cookie
#
# cargo-fuzz needs nightly (libFuzzer's instrumentation); the machine's
# nightly toolchain is used when rustup has one, else stable with
# RUSTC_BOOTSTRAP=1. A crash stops the script with libFuzzer's report and
# the input under fuzz/artifacts/TARGET/: turn it into a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^session-layer-fuzz$')
fi

if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked --quiet
fi
if rustup run nightly rustc --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi

"${fuzz[@]}" build --release >/dev/null
summary=()
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    log=$(mktemp)
    if ! "${fuzz[@]}" run --release "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -max_len=8192 -print_final_stats=1 >"$log" 2>&1; then
        cat "$log"
        echo "fuzz target $target FAILED: see the report above and fuzz/artifacts/$target/" >&2
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    summary+=("$(printf '%-16s %4s s  %12s executions' "$target" "$seconds" "${runs:-?}")")
    rm -f "$log"
done
printf '%s\n' "${summary[@]}"
