#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/) with clang and runs each for a bounded time on the hand-made
# corpus (tests/data) plus what it discovers; fails on any crash, sanitizer report, leak, timeout or
# allocation over the limit. SQZ_FUZZ_SECONDS sets the time per target (default 60).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/require_packages.sh
require_packages "${SQZ_BUILD_PACKAGES[@]}" "${SQZ_FUZZ_PACKAGES[@]}"
seconds=${SQZ_FUZZ_SECONDS:-60}
clangxx=$(command -v clang++-14 || command -v clang++)
mkdir -p build

cmake -S . -B build/fuzz -DCMAKE_CXX_COMPILER="$clangxx" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSQZ_BUILD_FUZZERS=ON \
      -DSQZ_BUILD_TESTS=OFF -DSQZ_BUILD_EXAMPLES=OFF -DSQZ_BUILD_BENCH=OFF -DSQZ_BUILD_TOOLS=OFF -DSQZ_CUDA=OFF \
      -DSQZ_NATIVE=OFF > build/fuzz-configure.log 2>&1 || { cat build/fuzz-configure.log; exit 1; }
cmake --build build/fuzz -j "$(nproc)" --target sqz-fuzz-safetensors sqz-fuzz-quantized

for target in safetensors quantized; do
    corpus=build/fuzz/corpus-$target
    mkdir -p "$corpus"
    echo "== sqz: fuzzing the $target reader for ${seconds}s"
    # Inputs are at most 64 KiB, so no allocation needs more than a few MiB: -malloc_limit_mb turns any
    # allocation sized by a claimed length into a failure.
    log=build/fuzz/fuzz-$target.log
    status=0
    ./build/fuzz/fuzz/sqz-fuzz-$target "$corpus" tests/data/malformed tests/data/malformed_quantized tests/data/valid \
        -dict=fuzz/safetensors.dict -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
        -malloc_limit_mb=64 -artifact_prefix=build/fuzz/crash-$target- -print_final_stats=1 > "$log" 2>&1 || status=$?
    grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb)" "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log"
        echo "sqz: fuzzer $target failed with status $status (input saved as build/fuzz/crash-$target-*)"
        exit 1
    fi
done
echo "== sqz: fuzzing passed"
