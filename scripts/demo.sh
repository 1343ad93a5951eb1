#!/usr/bin/env bash
# The README's main-job command: installs what is missing, builds, and runs the sqz demo on its built-in
# default input.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/require_packages.sh
require_packages "${SQZ_BUILD_PACKAGES[@]}"
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release
cmake --build build/release -j "$(nproc)" --target sqz-cli
# `sqz demo` (examples/compare_methods.hpp): RTN vs k-means vs Fisher-weighted k-means (SqueezeLLM) vs
# + sensitive vs + dense-and-sparse on a 4096 x 4096 LLaMA-7B-like matrix at 3 and 4 bits, then 4-bit
# timings (4096 x 4096 and 4096 x 14336).
./build/release/tools/sqz demo
