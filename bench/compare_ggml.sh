#!/usr/bin/env bash
# sqz's cpu back end against ggml's (llama.cpp's) CPU quantized mat-vec: a manual comparison tool, not
# part of the CMake build, the tests or CI (see docs/benchmarks.md, "Against ggml (llama.cpp)").
#
# Downloads: the llama-cpp-python 0.3.36 source distribution from PyPI (`pip download`, about 77 MB),
# which vendors llama.cpp at commit 0c1e57098 and with it ggml 0.25.3; cached in build/ggml-cache.
# Builds ggml's CPU back end (static, -march=native, OpenMP, llamafile sgemm on as llama.cpp's own
# build sets it, no CUDA) into build/ggml and compare_ggml into build/compare_ggml, then runs it.
#
#   bash bench/compare_ggml.sh [compare_ggml arguments: --json --rounds N --shapes ... --types ...]
#
# Environment: JOBS (build parallelism, default 2), SQZ_BENCH_LOCK (a file to flock around the timed run,
# default /tmp/sqz-bench.lock; empty: no lock).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version=0.3.36
cache="$root/build/ggml-cache"
src="$cache/llama_cpp_python-$version"
ggml_src="$src/vendor/llama.cpp/ggml"
ggml_build="$root/build/ggml"
jobs="${JOBS:-2}"
lock="${SQZ_BENCH_LOCK-/tmp/sqz-bench.lock}"

mkdir -p "$cache"
archive="$cache/llama_cpp_python-$version.tar.gz"
if [[ ! -f "$archive" ]]; then
    python3 -m pip download "llama-cpp-python==$version" --no-deps --no-binary :all: -d "$cache"
fi
if [[ ! -d "$ggml_src" ]]; then
    tar -xzf "$archive" -C "$cache"
fi
# The sdist leaves out ggml.pc.in, which ggml's CMakeLists configures when built on its own (pkg-config
# file for `install` only); an empty one lets it configure.
[[ -f "$ggml_src/ggml.pc.in" ]] || : > "$ggml_src/ggml.pc.in"

nice -n 19 cmake -S "$ggml_src" -B "$ggml_build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_OPENMP=ON -DGGML_LLAMAFILE=ON -DGGML_BUILD_TESTS=OFF \
    -DGGML_BUILD_EXAMPLES=OFF >/dev/null
nice -n 19 cmake --build "$ggml_build" -j "$jobs" >/dev/null

binary="$root/build/compare_ggml"
nice -n 19 g++ -O3 -march=native -fopenmp -std=c++20 -I"$root/include" -I/usr/include/eigen3 \
    -I"$ggml_src/include" "$root/bench/compare_ggml.cpp" -o "$binary" \
    "$ggml_build/src/libggml.a" "$ggml_build/src/libggml-cpu.a" "$ggml_build/src/libggml-base.a" \
    -lpthread -lm -ldl

run=(env OMP_WAIT_POLICY=active OMP_PROC_BIND=close OMP_PLACES=cores "$binary" "$@")
if [[ -n "$lock" ]]; then
    flock "$lock" "${run[@]}"
else
    "${run[@]}"
fi
