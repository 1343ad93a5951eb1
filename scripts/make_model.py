#!/usr/bin/env python3
"""Writes a synthetic LLaMA-like safetensors model and a matching Fisher-diagonal checkpoint.

    python3 scripts/make_model.py OUT_DIR [--layers 8] [--rows 4096] [--cols 4096] [--dtype BF16] [--seed 0]

OUT_DIR/model.safetensors holds, per layer i, the four attention projections
model.layers.{i}.self_attn.{q,k,v,o}_proj.weight (rows x cols, Student-t(5) entries with scale 0.02 and a
few 8x larger input columns, like LLaMA weights) and a 1-D input_layernorm.weight; with the defaults that
is 32 matrices of 4096 x 4096 in BF16, about 1 GiB. OUT_DIR/fisher.safetensors has the same matrices'
names and shapes holding squared heavy-tailed "gradients" with per-row and per-column scales (what the
SqueezeLLM gradient tool writes). Tensors are generated and written one at a time, so memory stays small.
Needs numpy. The files follow the safetensors format and are written without any sqz code.
"""
import argparse
import json
import os
import struct

import numpy as np


def to_dtype(values, dtype):
    """float32 array -> little-endian bytes in F32, F16 or BF16 (round to nearest even)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "F32":
        return values.astype("<f4").tobytes()
    if dtype == "F16":
        return values.astype("<f2").tobytes()
    bits = values.view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16
    return rounded.astype("<u2").tobytes()


def write_safetensors(path, entries, metadata):
    """entries: list of (name, dtype, shape, producer) where producer() returns the tensor's bytes."""
    size = {"F32": 4, "F16": 2, "BF16": 2}
    header = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape, _ in entries:
        n = size[dtype] * int(np.prod(shape))
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name, dtype, shape, producer in entries:
            data = producer()
            assert len(data) == size[dtype] * int(np.prod(shape)), name
            f.write(data)
    os.replace(tmp, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--dtype", choices=["BF16", "F16", "F32"], default="BF16")
    parser.add_argument("--fisher-dtype", choices=["BF16", "F16", "F32"], default="BF16")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    rows, cols = args.rows, args.cols

    def weight(seed):
        def make():
            rng = np.random.default_rng([args.seed, seed])
            w = rng.standard_t(5, size=(rows, cols)).astype(np.float32) * np.float32(0.02)
            w[:, rng.choice(cols, size=min(8, cols), replace=False)] *= np.float32(8.0)
            return to_dtype(w, args.dtype)
        return make

    def fisher(seed):
        def make():
            rng = np.random.default_rng([args.seed, seed, 1])
            row_scale = np.exp(0.5 * rng.standard_normal(rows)).astype(np.float32)
            col_scale = np.exp(1.0 * rng.standard_normal(cols)).astype(np.float32)
            g = rng.standard_t(3, size=(rows, cols)).astype(np.float32)
            g *= np.float32(1e-3) * row_scale[:, None] * col_scale[None, :]
            return to_dtype(g * g, args.fisher_dtype)
        return make

    def norm(seed):
        def make():
            rng = np.random.default_rng([args.seed, seed, 2])
            return to_dtype(1.0 + 0.05 * rng.standard_normal(cols).astype(np.float32), args.dtype)
        return make

    model, grads = [], []
    for layer in range(args.layers):
        for k, proj in enumerate(("q_proj", "k_proj", "v_proj", "o_proj")):
            name = "model.layers.%d.self_attn.%s.weight" % (layer, proj)
            seed = layer * 16 + k
            model.append((name, args.dtype, (rows, cols), weight(seed)))
            grads.append((name, args.fisher_dtype, (rows, cols), fisher(seed)))
        model.append(("model.layers.%d.input_layernorm.weight" % layer, args.dtype, (cols,), norm(layer)))
    write_safetensors(os.path.join(args.out_dir, "model.safetensors"), model, {"format": "pt", "generator": "sqz make_model.py"})
    write_safetensors(os.path.join(args.out_dir, "fisher.safetensors"), grads, {"format": "pt", "generator": "sqz make_model.py"})
    print("wrote %s/model.safetensors and fisher.safetensors: %d matrices of %d x %d %s" %
          (args.out_dir, len(grads), rows, cols, args.dtype))


if __name__ == "__main__":
    main()
