#!/usr/bin/env python3
"""sqz's weighted k-means against scikit-learn's KMeans, the call SqueezeLLM's reference code makes per row:

    KMeans(n_clusters=2**bits, random_state=0, n_init="auto", max_iter=50).fit(row.reshape(-1, 1),
                                                                             sample_weight=fisher_row)

Both run on the same rows in the same run: sqz-bench-kmeans writes LLM-like fp16 rows with Fisher-like
weights to a file (--dump-rows), this script reads them, times scikit-learn on each row, then runs
sqz-bench-kmeans on the same file (--input, one thread) for the exact and the lloyd method. Every objective
is recomputed here the same way, in double: sum_i w_i (x_i - c(x_i))^2 with c(x) the centre nearest to x.

Prints a table and, last, one JSON line with the figures at n=4096, k=16 (time_ratio = scikit-learn time /
sqz exact time per row, objective_ratio_max/mean = sqz exact objective / scikit-learn objective over rows)
and every case under "cases". With --plot it draws the objective gap and the time against k.

Usage: python3 bench/compare_sklearn.py [--bench PATH] [--rows 32] [--n 4096 14336] [--k 4 8 16 256]
                                        [--repeat 3] [--plot docs/img/kmeans_vs_sklearn.png]
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

# One thread for scikit-learn's OpenMP and BLAS, as for sqz; must be set before they load.
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = "1"

import numpy as np  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402

try:
    from threadpoolctl import threadpool_limits  # installed with scikit-learn
except ImportError:  # pragma: no cover
    threadpool_limits = None


def read_rows(path):
    with open(path, "rb") as f:
        magic = f.read(8)
        if magic != b"SQZKMRW1":
            raise SystemExit(f"{path} is not a rows file")
        rows, cols = struct.unpack("<II", f.read(8))
        values = np.frombuffer(f.read(4 * rows * cols), dtype="<f4").reshape(rows, cols)
        weights = np.frombuffer(f.read(4 * rows * cols), dtype="<f4").reshape(rows, cols)
    return values, weights


def objective(x, w, centres):
    """sum w (x - nearest centre)^2 in double."""
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    c = np.sort(np.asarray(centres, dtype=np.float64).ravel())
    # Nearest centre: the boundaries between sorted centres are their midpoints.
    index = np.searchsorted((c[:-1] + c[1:]) / 2, x, side="left")
    d = x - c[index]
    return float(np.sum(w * d * d))


def run_sklearn(values, weights, k, repeat):
    times, objectives = [], []
    for x, w in zip(values, weights):
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            km = KMeans(n_clusters=k, random_state=0, n_init="auto", max_iter=50).fit(x.reshape(-1, 1), sample_weight=w)
            best = min(best, time.perf_counter() - start)
        times.append(best)
        objectives.append(objective(x, w, km.cluster_centers_))
    return 1e3 * float(np.mean(times)), np.array(objectives)


def run_sqz(bench, path, k, method, values, weights, repeat):
    out = subprocess.run([bench, "--input", path, "--k", str(k), "--method", method, "--repeat", str(repeat)],
                         check=True, capture_output=True, text=True).stdout.strip().splitlines()
    lines = [json.loads(line) for line in out]
    per_row, summary = lines[:-1], lines[-1]
    objectives = []
    for record, x, w in zip(per_row, values, weights):
        value = objective(x, w, record["centroids"])
        # The binary's own objective must agree with the recomputation.
        if abs(value - record["objective"]) > 1e-9 * max(value, 1e-300):
            raise SystemExit(f"sqz objective mismatch on row {record['row']}: {record['objective']} vs {value}")
        objectives.append(value)
    return summary["ms_per_row"], np.array(objectives)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", default=os.path.join(root, "build", "release", "bench", "sqz-bench-kmeans"))
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--n", type=int, nargs="+", default=[4096, 14336])
    parser.add_argument("--k", type=int, nargs="+", default=[4, 8, 16, 256])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per row (best kept), both libraries")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--plot", help="write the plot (PNG) here")
    args = parser.parse_args()
    if not os.path.exists(args.bench):
        raise SystemExit(f"{args.bench} not found: build sqz first (cmake --build build/release)")

    cases = []
    header = (f"{'n':>6} {'k':>4} {'rows':>5} {'sklearn ms':>10} {'exact ms':>9} {'lloyd ms':>9} {'time ratio':>10} "
              f"{'exact/skl mean':>14} {'max':>7} {'skl gap':>8} {'lloyd gap':>9}")
    print(header)
    with tempfile.TemporaryDirectory() as scratch:
        for n in args.n:
            path = os.path.join(scratch, f"rows_{n}.bin")
            subprocess.run([args.bench, "--dump-rows", path, "--n", str(n), "--rows", str(args.rows),
                            "--seed", str(args.seed)], check=True)
            values, weights = read_rows(path)
            for k in args.k:
                if threadpool_limits is not None:
                    with threadpool_limits(limits=1):
                        sklearn_ms, sklearn_obj = run_sklearn(values, weights, k, args.repeat)
                else:
                    sklearn_ms, sklearn_obj = run_sklearn(values, weights, k, args.repeat)
                exact_ms, exact_obj = run_sqz(args.bench, path, k, "exact", values, weights, args.repeat)
                lloyd_ms, lloyd_obj = run_sqz(args.bench, path, k, "lloyd", values, weights, args.repeat)
                ratio = exact_obj / sklearn_obj
                case = {
                    "n": n, "k": k, "rows": int(values.shape[0]),
                    "sklearn_ms_per_row": sklearn_ms, "exact_ms_per_row": exact_ms, "lloyd_ms_per_row": lloyd_ms,
                    "time_ratio": sklearn_ms / exact_ms,
                    "objective_ratio_mean": float(ratio.mean()), "objective_ratio_max": float(ratio.max()),
                    "objective_ratio_min": float(ratio.min()),
                    "sklearn_gap_mean": float((sklearn_obj / exact_obj - 1).mean()),
                    "lloyd_gap_mean": float((lloyd_obj / exact_obj - 1).mean()),
                    "lloyd_objective_ratio_mean": float((lloyd_obj / sklearn_obj).mean()),
                }
                cases.append(case)
                print(f"{n:>6} {k:>4} {case['rows']:>5} {sklearn_ms:>10.3f} {exact_ms:>9.4f} {lloyd_ms:>9.4f} "
                      f"{case['time_ratio']:>10.1f} {case['objective_ratio_mean']:>14.4f} "
                      f"{case['objective_ratio_max']:>7.4f} {100 * case['sklearn_gap_mean']:>7.2f}% "
                      f"{100 * case['lloyd_gap_mean']:>8.2f}%", flush=True)

    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, (gap_ax, time_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
        colour = {"scikit-learn": "tab:blue", "sqz exact": "tab:orange", "sqz lloyd": "tab:green"}
        for n, style, marker in zip(args.n, ["-", "--", ":", "-."], "os^v"):
            sel = [c for c in cases if c["n"] == n]
            ks = [c["k"] for c in sel]
            gap_ax.plot(ks, [100 * c["sklearn_gap_mean"] for c in sel], style, marker=marker,
                        color=colour["scikit-learn"], label=f"scikit-learn, n={n}")
            gap_ax.plot(ks, [100 * c["lloyd_gap_mean"] for c in sel], style, marker=marker, color=colour["sqz lloyd"],
                        label=f"sqz lloyd, n={n}")
            for name, key in (("scikit-learn", "sklearn_ms_per_row"), ("sqz exact", "exact_ms_per_row"),
                              ("sqz lloyd", "lloyd_ms_per_row")):
                time_ax.plot(ks, [c[key] for c in sel], style, marker=marker, color=colour[name], label=f"{name}, n={n}")
        gap_ax.set(xscale="log", xlabel="k (clusters)", ylabel="mean objective above the optimum (%)",
                   title="Objective gap to the exact optimum (sqz exact: 0)")
        time_ax.set(xscale="log", yscale="log", xlabel="k (clusters)", ylabel="ms per row, one thread",
                    title="Time per row")
        for ax in (gap_ax, time_ax):
            ax.set_xticks(args.k, [str(k) for k in args.k])
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
        fig.savefig(args.plot, dpi=110)

    headline = next((c for c in cases if c["n"] == 4096 and c["k"] == 16), cases[0])
    summary = {
        "n": headline["n"], "k": headline["k"],
        "time_ratio": headline["time_ratio"],
        "objective_ratio_max": headline["objective_ratio_max"],
        "objective_ratio_mean": headline["objective_ratio_mean"],
        "objective_ratio_max_all_cases": max(c["objective_ratio_max"] for c in cases),
        "cases": cases,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
