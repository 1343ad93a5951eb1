// sqz/sqz.hpp - umbrella header: includes every public header of sqz.
//
// sqz implements the Dense-and-Sparse quantization of SqueezeLLM (Kim et al., 2023): per-row
// sensitivity-weighted non-uniform codebooks, outliers and sensitive values kept exact in CSR, bit-packed
// codes, and matrix-vector products computed directly from the compressed form.
#pragma once

#include <sqz/error.hpp>
#include <sqz/half.hpp>
#include <sqz/kmeans.hpp>
#include <sqz/outliers.hpp>
#include <sqz/pack.hpp>
#include <sqz/quantize.hpp>
#include <sqz/quantized_matrix.hpp>
#include <sqz/sensitivity.hpp>
#include <sqz/synthetic.hpp>
#include <sqz/types.hpp>
#include <sqz/version.hpp>

// File I/O needs nlohmann-json; the sqz::io CMake target provides it and defines SQZ_WITH_IO.
#if defined(SQZ_WITH_IO)
#include <sqz/io.hpp>
#endif
