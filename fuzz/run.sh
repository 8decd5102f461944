#!/usr/bin/env bash
# Runs every fuzz target in fuzz_targets/ for a bounded time: ./fuzz/run.sh [seconds per target]
# (default 60). Needs a nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly --profile minimal && cargo install cargo-fuzz
# Inputs worth keeping go to fuzz/corpus/<target>/ (not in git), seeded from fuzz/seeds/<target>/.
# A crash, a leak, a run over 10 s or a single allocation over 64 MiB stops the run with a non-zero
# status and the input in fuzz/artifacts/<target>/: fix it, then keep the input as a regression
# unit test next to the code it broke.
set -euo pipefail

seconds="${1:-60}"
cd "$(dirname "$0")/.."

mapfile -t targets < <(cargo +nightly fuzz list)
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    dirs=("fuzz/corpus/$target")
    if [[ -d "fuzz/seeds/$target" ]]; then
        dirs+=("fuzz/seeds/$target")
    fi
    echo "== $target: ${seconds}s"
    cargo +nightly fuzz run "$target" "${dirs[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=64 \
        -max_len=131072 -print_final_stats=1
done
