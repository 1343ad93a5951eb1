#!/usr/bin/env python3
"""Writes the hand-made test corpus of sqz's file readers (pure Python, no sqz code involved).

  tests/data/malformed/*.safetensors   broken safetensors files; MANIFEST lists for each one a phrase
                                       that the reader's error message must contain
  tests/data/malformed_quantized/*     valid safetensors files that break the quantized format
  tests/data/valid/*                   well-formed files: a small model, a small sqz quantized file and
                                       a SqueezeLLM-layout checkpoint packed by a literal port of the
                                       reference's packing loop, with the expected dense matrices and a
                                       matrix-vector product stored next to them

The files are committed; rerun this script (python3 tests/data/make_corpus.py) only to change them.
They also seed the fuzzers (scripts/fuzz.sh).
"""
import json
import math
import os
import random
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def safetensors(header, data=b"", length=None, raw_header=None):
    """A safetensors image: header dict (or raw bytes), optional lying length."""
    text = raw_header if raw_header is not None else json.dumps(header, separators=(",", ":")).encode()
    n = len(text) if length is None else length
    return struct.pack("<Q", n) + text + data


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def f32(values):
    return struct.pack("<%df" % len(values), *values)


def i32(values):
    return struct.pack("<%di" % len(values), *values)


def write(folder, name, image, manifest=None, expect=None):
    os.makedirs(os.path.join(HERE, folder), exist_ok=True)
    with open(os.path.join(HERE, folder, name), "wb") as f:
        f.write(image)
    if manifest is not None:
        manifest.append((name, expect))


def malformed():
    m = []
    ok16 = f32([1, 2, 3, 4])
    w = lambda name, image, expect: write("malformed", name, image, m, expect)
    w("empty.safetensors", b"", "too short for the 8-byte header length")
    w("five_bytes.safetensors", b"\x05\x00\x00\x00\x00", "too short for the 8-byte header length")
    w("lying_header_length.safetensors", safetensors({"a": entry("F32", [4], 0, 16)}, ok16, length=1 << 40),
      "exceeds the")
    w("max_header_length.safetensors", struct.pack("<Q", (1 << 64) - 1) + b"{}", "exceeds the")
    w("header_length_past_end.safetensors", safetensors({"a": entry("F32", [4], 0, 16)}, b"", length=200),
      "exceeds the")
    w("truncated_header.safetensors", safetensors(None, raw_header=b'{"a":{"dtype":"F32","sha'),
      "header is not valid JSON")
    w("truncated_data.safetensors", safetensors({"a": entry("F32", [16], 0, 64)}, ok16),
      "end beyond the 16-byte data section")
    w("overlapping_ranges.safetensors",
      safetensors({"a": entry("F32", [4], 0, 16), "b": entry("F32", [4], 8, 24)}, ok16 + f32([5, 6])),
      "overlap tensor 'a'")
    w("gap_between_tensors.safetensors",
      safetensors({"a": entry("F32", [4], 0, 16), "b": entry("F32", [4], 20, 36)}, ok16 + f32([0]) + ok16),
      "unused")
    w("trailing_bytes.safetensors", safetensors({"a": entry("F32", [4], 0, 16)}, ok16 + b"\0" * 4),
      "after the last tensor")
    w("huge_shape_overflow.safetensors",
      safetensors({"a": entry("F32", [1 << 32, 1 << 32, 16], 0, 16)}, ok16), "overflows 64-bit sizes")
    w("huge_shape_beyond_file.safetensors",
      safetensors({"a": entry("F32", [1000000, 1000000], 0, 4000000000000)}, ok16),
      "end beyond the 16-byte data section")
    w("shape_size_mismatch.safetensors", safetensors({"a": entry("F32", [2, 2], 0, 8)}, ok16[:8]),
      "needs 16 bytes but data_offsets [0, 8] span 8")
    w("unknown_dtype.safetensors", safetensors({"a": entry("F128", [1], 0, 16)}, ok16), 'unknown dtype "F128"')
    w("non_utf8_name.safetensors",
      safetensors(None, ok16, raw_header=b'{"w\xff\xfe":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'),
      "header is not valid JSON")
    w("nul_in_name.safetensors", safetensors({"w\u0000x": entry("F32", [4], 0, 16)}, ok16), "NUL character")
    w("empty_name.safetensors", safetensors({"": entry("F32", [4], 0, 16)}, ok16), "name is empty")
    w("duplicate_name.safetensors",
      safetensors(None, ok16 + ok16, raw_header=b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},'
                                                b'"a":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}}'),
      "appears twice")
    w("header_is_array.safetensors", safetensors([1, 2]), "header is not a JSON object")
    w("header_is_text.safetensors", safetensors(None, raw_header=b"hello"), "header is not valid JSON")
    w("negative_dimension.safetensors", safetensors({"a": entry("F32", [-4], 0, 16)}, ok16), "negative number")
    w("fractional_dimension.safetensors", safetensors({"a": entry("F32", [1.5], 0, 16)}, ok16), "not an integer")
    w("dimension_too_large.safetensors", safetensors({"a": entry("F32", [1 << 63], 0, 16)}, ok16),
      "is too large")
    w("offset_beyond_uint64.safetensors", safetensors({"a": entry("F32", [4], 0, 1 << 64)}, ok16),
      "not an integer in 0..2^64-1")
    w("reversed_offsets.safetensors", safetensors({"a": entry("F32", [4], 16, 0)}, ok16), "are reversed")
    w("missing_offsets.safetensors", safetensors({"a": {"dtype": "F32", "shape": [4]}}, ok16),
      'lacks "data_offsets"')
    w("three_offsets.safetensors",
      safetensors({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16, 16]}}, ok16), "more than 2 entries")
    w("unknown_field.safetensors",
      safetensors({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16], "extra": 1}}, ok16),
      'unknown field "extra"')
    w("too_many_dimensions.safetensors", safetensors({"a": entry("F32", [1] * 65 + [4], 0, 16)}, ok16),
      "more than 64 dimensions")
    w("metadata_not_string.safetensors",
      safetensors({"__metadata__": {"k": 1}, "a": entry("F32", [4], 0, 16)}, ok16), "must be a string")
    w("entry_not_object.safetensors", safetensors({"a": 5}, ok16), "entry must be an object")
    w("deep_nesting.safetensors", safetensors(None, raw_header=b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}"),
      "entry must be an object")
    w("nul_padded_header.safetensors",
      safetensors(None, ok16, raw_header=b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}\0\0\0'),
      "header is not valid JSON")
    with open(os.path.join(HERE, "malformed", "MANIFEST"), "w") as f:
        f.write("# file<TAB>phrase the error message must contain (written by tests/data/make_corpus.py)\n")
        for name, expect in m:
            f.write("%s\t%s\n" % (name, expect))


def quantized_image(entries, tensors, version="1", extra_metadata=None):
    """An sqz quantized file: entries = {name: info dict or raw string}, tensors = [(name, dtype, shape, bytes)]."""
    metadata = {"sqz.format": "sqz-quantized", "sqz.format_version": version}
    for name, info in entries.items():
        metadata["sqz.quantized." + name] = info if isinstance(info, str) else json.dumps(info)
    metadata.update(extra_metadata or {})
    header = {"__metadata__": metadata}
    data = b""
    for name, dtype, shape, raw in tensors:
        header[name] = entry(dtype, shape, len(data), len(data) + len(raw))
        data += raw
    return safetensors(header, data)


def small_quantized_parts(rows=2, cols=5, bits=3, lut=None, row_ptr=(0, 1, 2), col_idx=(4, 0),
                          values=(0.5, -0.25), nnz=None, info_changes=None, drop=None, replace=None):
    """A 2 x 5, 3-bit matrix with two sparse entries, as (entries, tensors)."""
    lut = lut if lut is not None else [float(j) - 3.5 for j in range(8)] + [0.25 * j for j in range(8)]
    codes = [[0, 1, 2, 3, 7], [7, 6, 5, 4, 0]]
    packed = b""
    for row in codes[:rows]:
        stream = 0
        for j, c in enumerate(row):
            stream |= c << (3 * j)
        packed += stream.to_bytes((cols * bits + 7) // 8, "little")
    info = {"bits": bits, "shape": [rows, cols], "lut_dtype": "F32", "values_dtype": "F32",
            "nnz": len(values) if nnz is None else nnz, "method": "hand-made"}
    info.update(info_changes or {})
    tensors = [("w.lut", "F32", [rows, 1 << bits], f32(lut)),
               ("w.qweight", "U8", [rows, (cols * bits + 7) // 8], packed),
               ("w.sparse.row_ptr", "I32", [rows + 1], i32(row_ptr)),
               ("w.sparse.col_idx", "I32", [len(col_idx)], i32(col_idx)),
               ("w.sparse.values", "F32", [len(values)], f32(values))]
    if replace:
        tensors = [replace.get(t[0], t) for t in tensors]
    tensors = [t for t in tensors if t[0] not in (drop or ())]
    return {"w": info}, tensors


def malformed_quantized():
    m = []
    w = lambda name, image, expect: write("malformed_quantized", name, image, m, expect)
    w("plain_safetensors.safetensors", safetensors({"a": entry("F32", [1], 0, 4)}, f32([1])),
      "is not an sqz quantized file")
    e, t = small_quantized_parts()
    w("newer_version.safetensors", quantized_image(e, t, version="2"), "is newer than this sqz reads")
    w("odd_version.safetensors", quantized_image(e, t, version="1.0-beta"), "is not supported")
    e, t = small_quantized_parts(drop={"w.lut"})
    w("missing_lut.safetensors", quantized_image(e, t), "part 'w.lut' is missing")
    e, t = small_quantized_parts(replace={"w.lut": ("w.lut", "F32", [4, 4], f32([0.0] * 16))})
    w("lut_wrong_shape.safetensors", quantized_image(e, t), "expected [2, 8]")
    e, t = small_quantized_parts(info_changes={"bits": 9})
    w("bits_out_of_range.safetensors", quantized_image(e, t), "outside 1..8")
    e, t = small_quantized_parts()
    w("metadata_not_json.safetensors", quantized_image({"w": "{bits:"}, t), "is not a JSON object")
    e, t = small_quantized_parts(col_idx=(5, 0))
    w("sparse_column_out_of_range.safetensors", quantized_image(e, t), "outside 0..4")
    e, t = small_quantized_parts(row_ptr=(0, 3, 2))
    w("sparse_row_ptr_past_nnz.safetensors", quantized_image(e, t), "exceeds the 2 values")
    e, t = small_quantized_parts(row_ptr=(1, 1, 2))
    w("sparse_row_ptr_not_zero.safetensors", quantized_image(e, t), "row_ptr[0] = 1")
    e, t = small_quantized_parts(lut=[float("nan")] + [0.0] * 15)
    w("lut_nan.safetensors", quantized_image(e, t), "is nan")
    e, t = small_quantized_parts(values=(float("inf"), 1.0))
    w("sparse_value_inf.safetensors", quantized_image(e, t), "is inf")
    e, t = small_quantized_parts(nnz=5)
    w("nnz_mismatch.safetensors", quantized_image(e, t), "expected [5]")
    e, t = small_quantized_parts(info_changes={"shape": [1 << 40, 5]})
    w("rows_too_large.safetensors", quantized_image(e, t), "exceeds the int32 index range")
    e, t = small_quantized_parts(info_changes={"shape": [2, 6]})
    w("codes_stride_mismatch.safetensors", quantized_image(e, t), "expected [2, 3]")
    e, t = small_quantized_parts()
    w("plain_and_quantized.safetensors", quantized_image(e, t + [("w", "F32", [1], f32([0]))]),
      "stored both plain and quantized")
    e, t = small_quantized_parts(info_changes={"lut_dtype": "I32"})
    w("lut_dtype_integer.safetensors", quantized_image(e, t), "is not F16, F32 or F64")
    with open(os.path.join(HERE, "malformed_quantized", "MANIFEST"), "w") as f:
        f.write("# file<TAB>phrase the error message must contain (written by tests/data/make_corpus.py)\n")
        for name, expect in m:
            f.write("%s\t%s\n" % (name, expect))


def reference_pack(intweight, bits):
    """Literal port of the reference's packing loop: intweight[j][i] = code of input j, output i."""
    n, m = len(intweight), len(intweight[0])
    qweight = [[0] * m for _ in range(n // 32 * bits)]
    i = 0
    row = 0
    while row < len(qweight):
        if bits in (2, 4, 8):
            for j in range(i, i + 32 // bits):
                for c in range(m):
                    qweight[row][c] |= intweight[j][c] << (bits * (j - i))
            i += 32 // bits
            row += 1
        elif bits == 3:
            for j in range(i, i + 10):
                for c in range(m):
                    qweight[row][c] |= intweight[j][c] << (3 * (j - i))
            i += 10
            for c in range(m):
                qweight[row][c] |= intweight[i][c] << 30
            row += 1
            for c in range(m):
                qweight[row][c] |= (intweight[i][c] >> 2) & 1
            i += 1
            for j in range(i, i + 10):
                for c in range(m):
                    qweight[row][c] |= intweight[j][c] << (3 * (j - i) + 1)
            i += 10
            for c in range(m):
                qweight[row][c] |= intweight[i][c] << 31
            row += 1
            for c in range(m):
                qweight[row][c] |= (intweight[i][c] >> 1) & 0x3
            i += 1
            for j in range(i, i + 10):
                for c in range(m):
                    qweight[row][c] |= intweight[j][c] << (3 * (j - i) + 2)
            i += 10
            row += 1
    # numpy's uint32 -> int32 view: keep the low 32 bits, two's complement
    return [[(v & 0xFFFFFFFF) - (1 << 32) if v & 0x80000000 else v & 0xFFFFFFFF for v in r] for r in qweight]


def valid():
    rng = random.Random(6)
    # A small model: two 2-D weights (BF16 and F16), a 1-D norm (F32) and an I64 scalar.
    def bf16(values):
        out = b""
        for v in values:
            bits = struct.unpack("<I", struct.pack("<f", v))[0]
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            out += struct.pack("<H", bits)
        return out

    def f16(values):
        return struct.pack("<%de" % len(values), *values)

    q = [rng.gauss(0, 0.02) for _ in range(8 * 32)]
    k = [rng.gauss(0, 0.02) for _ in range(8 * 32)]
    norm = [1.0 + 0.01 * j for j in range(32)]
    raw = [("layers.0.q_proj.weight", "BF16", [8, 32], bf16(q)), ("layers.0.k_proj.weight", "F16", [8, 32], f16(k)),
           ("layers.0.norm.weight", "F32", [32], f32(norm)), ("step", "I64", [], struct.pack("<q", 7))]
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, dtype, shape, b in raw:
        header[name] = entry(dtype, shape, len(data), len(data) + len(b))
        data += b
    write("valid", "small_model.safetensors", safetensors(header, data))

    e, t = small_quantized_parts()
    write("valid", "small_quantized.safetensors",
          quantized_image(e, t + [("norm", "F32", [3], f32([1, 2, 3]))], extra_metadata={"note": "hand-made"}))

    # SqueezeLLM-layout checkpoint: 3-bit layer "l3" (m=5, n=64) with a sparse part, 4-bit "l4" (m=3,
    # n=32) without, a bias passed through, plus the expected dense W = LUT[code] + S and y = W x.
    tensors = []
    for prefix, bits, m, n, sparse in (("l3", 3, 5, 64, True), ("l4", 4, 3, 32, False)):
        levels = 1 << bits
        to32 = lambda v: struct.unpack("<f", struct.pack("<f", v))[0]
        lut = [[to32(round(rng.uniform(-1, 1), 3)) for _ in range(levels)] for _ in range(m)]
        codes = [[rng.randrange(levels) for _ in range(n)] for _ in range(m)]
        dense = [[lut[i][codes[i][j]] for j in range(n)] for i in range(m)]
        intweight = [[codes[i][j] for i in range(m)] for j in range(n)]  # transposed, as the reference does
        qweight = reference_pack(intweight, bits)
        tensors.append((prefix + ".qweight", "I32", [n // 32 * bits, m], i32([v for r in qweight for v in r])))
        tensors.append((prefix + ".lookup_table", "F32", [m, levels], f32([v for r in lut for v in r])))
        if sparse:
            rows, cols, vals = [0], [], []
            for i in range(m):
                for j in sorted(rng.sample(range(n), 2)):
                    cols.append(j)
                    vals.append(to32(round(rng.uniform(-2, 2), 3)))
                    dense[i][j] = to32(dense[i][j] + vals[-1])  # one float32 addition, as D + S in float
                rows.append(len(cols))
            tensors += [(prefix + ".rows", "I32", [m + 1], i32(rows)), (prefix + ".cols", "I32", [len(cols)], i32(cols)),
                        (prefix + ".vals", "F32", [len(vals)], f32(vals)),
                        ("sparse_threshold." + prefix, "I64", [], struct.pack("<q", len(vals)))]
        # y = W x summed exactly (math.fsum) and rounded once to float32; tests compare with a tolerance.
        x = [to32(round(rng.uniform(-1, 1), 3)) for _ in range(n)]
        dense32 = dense
        y = [math.fsum(dense32[i][j] * x[j] for j in range(n)) for i in range(m)]
        tensors += [("expected." + prefix + ".dense", "F32", [m, n], f32([v for r in dense32 for v in r])),
                    ("expected." + prefix + ".x", "F32", [n], f32(x)), ("expected." + prefix + ".y", "F32", [m], f32(y))]
    tensors.append(("l3.bias", "F32", [5], f32([0.1, 0.2, 0.3, 0.4, 0.5])))
    header, data = {}, b""
    for name, dtype, shape, b in tensors:
        header[name] = entry(dtype, shape, len(data), len(data) + len(b))
        data += b
    write("valid", "squeezellm_reference.safetensors", safetensors(header, data))


if __name__ == "__main__":
    malformed()
    malformed_quantized()
    valid()
