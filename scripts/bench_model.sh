#!/usr/bin/env bash
# The `sqz quantize` goal on a whole model: generates a 32-tensor 4096 x 4096 BF16 model (about 1 GiB)
# and its Fisher checkpoint (scripts/make_model.py, once, into SQZ_BENCH_DIR, default build/bench-model),
# builds the sqz tool, quantizes at 3 bits with the Fisher file under /usr/bin/time -v, and prints the
# wall time and peak resident memory next to the goal: under 60 s and under 2 x the largest tensor's fp32
# size plus the output size. Extra quantize options: SQZ_BENCH_ARGS (default: --outliers 0.40
# --sensitive 0.05, the paper's 0.45% dense-and-sparse); run without nice, on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/require_packages.sh
require_packages "${SQZ_BUILD_PACKAGES[@]}" time python3
python3 -c "import numpy" 2>/dev/null || require_packages python3-numpy
dir=${SQZ_BENCH_DIR:-build/bench-model}
args=${SQZ_BENCH_ARGS:---outliers 0.40 --sensitive 0.05}

[ -f "$dir/model.safetensors" ] && [ -f "$dir/fisher.safetensors" ] || python3 scripts/make_model.py "$dir"
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build/release -j "$(nproc)" --target sqz-cli > /dev/null

out="$dir/model-3bit.safetensors"
# shellcheck disable=SC2086
/usr/bin/time -v -o "$dir/time.txt" build/release/tools/sqz quantize "$dir/model.safetensors" \
    --fisher "$dir/fisher.safetensors" --bits 3 $args -o "$out" | tee "$dir/quantize.txt" | tail -3

wall=$(grep "Elapsed (wall clock)" "$dir/time.txt" | awk '{print $NF}')
seconds=$(echo "$wall" | awk -F: '{ s = 0; for (i = 1; i <= NF; ++i) s = s * 60 + $i; print s }')
rss_kib=$(grep "Maximum resident set size" "$dir/time.txt" | awk '{print $NF}')
cpu=$(grep -E "User time|System time" "$dir/time.txt" | awk '{ s += $NF } END { print s }')
# Largest tensor of the model in fp32, from the safetensors header.
largest=$(python3 - "$dir/model.safetensors" <<'PY'
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
print(max(4 * eval("*".join(map(str, v["shape"])) or "1") for k, v in header.items() if k != "__metadata__"))
PY
)
output=$(stat -c %s "$out")
limit=$((2 * largest + output))
awk -v s="$seconds" -v c="$cpu" -v r="$rss_kib" -v big="$largest" -v o="$output" -v l="$limit" 'BEGIN {
    printf "wall time %.1f s (cpu %.1f s), peak RSS %.1f MiB; limit 2 x %.0f MiB + output %.1f MiB = %.1f MiB\n",
           s, c, r / 1024, big / 1048576, o / 1048576, l / 1048576
    printf "goal: time %s (< 60 s), memory %s\n", (s < 60 ? "met" : "NOT met"), (r * 1024 < l ? "met" : "NOT met") }'
