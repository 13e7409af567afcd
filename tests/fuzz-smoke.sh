#!/usr/bin/env bash
# A short run of every cargo-fuzz target (fuzz/fuzz_targets), started from its committed seed
# corpus (fuzz/corpus/<target>/), for CI: FUZZ_SECONDS each (default 30). Fails on any
# finding (crash, panic, leak, timeout). Needs the nightly toolchain; installs cargo-fuzz if
# missing. Longer runs: fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${FUZZ_SECONDS:-30}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

targets=$(cargo +nightly fuzz list)
[ -n "$targets" ] || { echo "no fuzz targets found" >&2; exit 1; }
for target in $targets; do
    mkdir -p "corpus/$target"
    # The committed seeds stay as they are; what the run finds goes to a scratch directory.
    scratch=$(mktemp -d)
    echo "fuzzing $target for ${seconds}s"
    if ! cargo +nightly fuzz run "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
        rm -rf "$scratch"
        echo "fuzz target $target failed: see fuzz/artifacts/$target/" >&2
        exit 1
    fi
    rm -rf "$scratch"
done
echo "all fuzz targets ran ${seconds}s without findings"
