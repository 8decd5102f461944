#!/usr/bin/env bash
# Runs the fuzz targets of fuzz_targets/ one after the other, each for a bounded time, and prints
# what each came to: fuzz/run.sh [seconds per target] [target…]
# Seconds default to $FUZZ_SECONDS, else 60; targets to all of them (`cargo +nightly fuzz list`).
# Needs a nightly toolchain and cargo-fuzz (see fuzz/README.md). On a shared machine: nice -n 10.
#
# Each target starts from fuzz/corpus/<target>/ (kept between runs, not in git) and the seeds in
# fuzz/seeds/<target>/, with the dictionary fuzz/dicts/<target>.dict when there is one. A panic, a
# leak, an input taking over 10 s, a single allocation over 64 MiB or 2 GiB of memory in all ends
# that target's run; the input is in fuzz/artifacts/<target>/ and the output in
# fuzz/logs/<target>.log. The other targets still run; the status is non-zero if any failed.
set -uo pipefail

seconds="${1:-${FUZZ_SECONDS:-60}}"
shift || true
cd "$(dirname "$0")"

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
mkdir -p logs
failed=0
summary=()
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    dirs=("corpus/$target")
    [[ -d "seeds/$target" ]] && dirs+=("seeds/$target")
    opts=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=64
        -max_len=131072 -print_final_stats=1)
    [[ -f "dicts/$target.dict" ]] && opts+=(-dict="dicts/$target.dict")
    log="logs/$target.log"
    echo "== $target: ${seconds}s (output in fuzz/$log)"
    cargo +nightly fuzz run "$target" "${dirs[@]}" -- "${opts[@]}" >"$log" 2>&1
    status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    corpus=$(find "corpus/$target" -type f | wc -l)
    if [[ $status -eq 0 ]]; then
        result="ok"
    else
        failed=1
        result=$(grep -o -m 1 -E 'ERROR: libFuzzer: [a-z -]+|panicked at [^ ]+|error(\[E[0-9]+\])?: .*' "$log" ||
            echo "failed (status $status)")
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        [[ -n "$artifact" ]] && result+=" -> $artifact"
    fi
    line=$(printf '%-16s %10s runs %5s s  corpus %5s  %s' "$target" "${runs:-?}" "${secs:-?}" "$corpus" "$result")
    echo "$line"
    summary+=("$line")
done
echo
echo "== summary"
printf '%s\n' "${summary[@]}"
exit $failed
