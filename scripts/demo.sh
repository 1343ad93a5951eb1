#!/usr/bin/env bash
# The README's main-job command: installs what is missing, builds, and runs the sqz demo on its built-in
# default input.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/require_packages.sh
require_packages "${SQZ_BUILD_PACKAGES[@]}"
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release
cmake --build build/release -j "$(nproc)" --target sqz-example-pack
./build/release/examples/sqz-example-pack
