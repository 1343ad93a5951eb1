#!/usr/bin/env bash
# The README's test command: installs what is missing, then builds and runs the whole test suite four
# times, optimised with -Wall -Wextra -Wpedantic -Werror for this machine (-march=native) and for any
# x86-64 (no AVX2, FMA or BMI2: the portable code paths, which differ in rounding), optimised with Clang
# (users compile sqz with either compiler), and under AddressSanitizer and UndefinedBehaviorSanitizer,
# and finally runs the libFuzzer targets of the file readers for a bounded time (scripts/fuzz.sh,
# SQZ_FUZZ_SECONDS per target, default 60). The optimised runs include the out-of-tree consumer checks
# and the sqz tool's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/require_packages.sh
require_packages "${SQZ_BUILD_PACKAGES[@]}"
jobs=$(nproc)

echo "== sqz: optimised build (-Werror) and tests"
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DSQZ_WERROR=ON
cmake --build build/release -j "$jobs"
ctest --test-dir build/release --output-on-failure -j "$jobs"

echo "== sqz: portable build (no -march=native) and tests"
cmake -S . -B build/portable -DCMAKE_BUILD_TYPE=Release -DSQZ_WERROR=ON -DSQZ_NATIVE=OFF \
      -DSQZ_BUILD_EXAMPLES=OFF -DSQZ_BUILD_BENCH=OFF -DSQZ_CUDA=OFF
cmake --build build/portable -j "$jobs"
ctest --test-dir build/portable --output-on-failure -j "$jobs"

echo "== sqz: Clang build (-Werror) and tests"
require_packages "${SQZ_CLANG_PACKAGES[@]}"
clangxx=$(command -v clang++-14 || command -v clang++)
cmake -S . -B build/clang -DCMAKE_CXX_COMPILER="$clangxx" -DCMAKE_BUILD_TYPE=Release -DSQZ_WERROR=ON \
      -DSQZ_BUILD_EXAMPLES=OFF -DSQZ_BUILD_BENCH=OFF -DSQZ_CUDA=OFF
cmake --build build/clang -j "$jobs"
ctest --test-dir build/clang --output-on-failure -j "$jobs"

echo "== sqz: sanitizer build (address, undefined) and tests"
cmake -S . -B build/sanitize -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" -DSQZ_SANITIZE=ON \
      -DSQZ_WERROR=ON -DSQZ_BUILD_EXAMPLES=OFF -DSQZ_BUILD_BENCH=OFF -DSQZ_BUILD_TOOLS=ON -DSQZ_CUDA=OFF
cmake --build build/sanitize -j "$jobs"
ctest --test-dir build/sanitize --output-on-failure -j "$jobs"

echo "== sqz: fuzzing the file readers (libFuzzer, clang)"
bash scripts/fuzz.sh

echo "== sqz: all tests passed"
