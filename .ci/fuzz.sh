#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a short while, each from a temporary copy of its
# seed corpus in fuzz/corpus/<target>, so that the inputs libFuzzer adds never land in the
# work tree. Prints one line per target with its number of executions, and exits non-zero
# when a target crashes (the input is kept in fuzz/artifacts/<target>/, which git ignores).
#
# cargo-fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them.
#
# Environment:
#   FUZZ_SECONDS    seconds per target (default 20)
#   FUZZ_SANITIZER  none (default) or address
#   FUZZ_TARGETS    space-separated targets to run (default: all)
#   CARGO_TARGET_DIR, CARGO_BUILD_JOBS are honoured as usual.

set -euo pipefail

cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-20}"
sanitizer="${FUZZ_SANITIZER:-none}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

targets="${FUZZ_TARGETS:-$(cd fuzz && cargo fuzz list)}"

# Build every target first, so that build time does not count against the fuzzing time.
(cd fuzz && cargo fuzz build --sanitizer "$sanitizer")

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

summary=()
passed=0
failed=0
for target in $targets; do
    corpus="$scratch/corpus/$target"
    mkdir -p "$corpus"
    if [ -d "fuzz/corpus/$target" ]; then
        cp -R "fuzz/corpus/$target/." "$corpus/"
    fi

    log="$scratch/$target.log"
    echo "fuzz: running $target for ${seconds}s"
    status=0
    (cd fuzz && cargo fuzz run --sanitizer "$sanitizer" "$target" "$corpus" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1) \
        >"$log" 2>&1 || status=$?

    runs="$(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1 |
        awk '{print $2 " executions in " $5 " s"}' || true)"
    if [ "$status" -eq 0 ]; then
        passed=$((passed + 1))
        summary+=("fuzz $target: ok, ${runs:-no execution count found}")
    else
        failed=$((failed + 1))
        summary+=("fuzz $target: FAILED (exit $status), ${runs:-stopped early}")
        echo "fuzz: $target failed:"
        grep -m 1 -A 3 'panicked at' "$log" | cut -c 1-2000 || true
        sed -n '/^Failing input:/,/^Minimize test case with:/p' "$log" | cut -c 1-2000
    fi
done

echo
printf '%s\n' "${summary[@]}"
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
