#!/usr/bin/env python3
"""Plots `sqz-bench-matvec --json` output: fraction of the measured DRAM bandwidth and speed-up over
Eigen's fp32 GEMV for each shape, width, sparse fraction and mode.

    build/release/bench/sqz-bench-matvec --json > matvec.jsonl
    python3 bench/plot_matvec.py matvec.jsonl docs/img/matvec.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def processor_name():
    """The processor's model name as Linux reports it, or "unknown processor"."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown processor"


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
    rows = [r for r in rows if r.get("bench") == "matvec"]
    shapes = sorted({r["shape"] for r in rows}, key=lambda s: [int(v) for v in s.split("x")])
    configs = sorted({(r["bits"], r["sparse"], r["mode"]) for r in rows}, key=lambda c: (c[0], c[1], c[2]))
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.2))
    width = 0.8 / max(1, len(configs))
    colors = {"exact": "#4c72b0", "int8": "#dd8452", "int8_tile": "#55a868"}
    for k, (bits, sparse, mode) in enumerate(configs):
        label = f"{bits} bit, {mode}" + (f", {100 * sparse:.2f}% sparse" if sparse > 0 else "")
        fractions, speedups = [], []
        for s in shapes:
            match = [r for r in rows if r["shape"] == s and (r["bits"], r["sparse"], r["mode"]) == (bits, sparse, mode)]
            fractions.append(match[0]["bw_fraction"] if match else 0)
            speedups.append(match[0]["speedup_vs_eigen_fp32"] if match else 0)
        xs = [i + (k - (len(configs) - 1) / 2) * width for i in range(len(shapes))]
        style = dict(width=width, color=colors.get(mode, "gray"), alpha=0.45 + 0.18 * (bits - 2),
                     hatch="//" if sparse > 0 else None, edgecolor="black", linewidth=0.3, label=label)
        axes[0].bar(xs, fractions, **style)
        axes[1].bar(xs, speedups, **style)
    axes[0].axhline(0.9, color="black", linestyle="--", linewidth=0.8)
    axes[0].axhline(0.5, color="black", linestyle=":", linewidth=0.8)
    axes[0].set_ylabel("fraction of measured DRAM read bandwidth")
    axes[1].set_ylabel("speed-up over Eigen fp32 GEMV (same threads)")
    for ax in axes:
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels(shapes)
        ax.set_xlabel("matrix shape (rows x cols)")
        ax.grid(axis="y", alpha=0.3)
    # Below both panels, so that no bar is hidden behind it.
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", fontsize=7, ncol=6)
    threads = rows[0]["threads"] if rows else 0
    kernels = ", ".join(sorted({r.get("kernel_used", r.get("kernel", "automatic")) for r in rows}))
    fig.suptitle(f"sqz cpu back end, y = Q x, {threads} threads, kernel {kernels} ({processor_name()}, shared machine)")
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
