// sqz/sqz.hpp - umbrella header: includes every public header of sqz.
//
// sqz implements the Dense-and-Sparse quantization of SqueezeLLM (Kim et al., 2023): per-row
// sensitivity-weighted non-uniform codebooks, outliers and sensitive values kept exact in CSR, bit-packed
// codes, and matrix-vector products computed directly from the compressed form.
#pragma once

#include <sqz/backend.hpp>
#include <sqz/cpu_backend.hpp>
#include <sqz/error.hpp>
#include <sqz/half.hpp>
#include <sqz/kmeans.hpp>
#include <sqz/outliers.hpp>
#include <sqz/pack.hpp>
#include <sqz/quantize.hpp>
#include <sqz/quantized_matrix.hpp>
#include <sqz/reference_backend.hpp>
#include <sqz/sensitivity.hpp>
#include <sqz/synthetic.hpp>
#include <sqz/types.hpp>
#include <sqz/version.hpp>

// File I/O needs nlohmann-json; the sqz::io CMake target provides it and defines SQZ_WITH_IO.
#if defined(SQZ_WITH_IO)
#include <sqz/io.hpp>
#endif

// The CUDA back end is only visible to nvcc; elsewhere sqz::matvec<sqz::backend::cuda> stops with a
// static_assert that says so.
#if defined(__CUDACC__)
#include <sqz/cuda_backend.cuh>
#endif
