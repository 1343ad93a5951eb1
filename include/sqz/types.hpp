// sqz/types.hpp - the Eigen types and constants that the rest of sqz shares.
#pragma once

#include <Eigen/Core>
#include <Eigen/SparseCore>

#include <concepts>
#include <cstdint>

namespace sqz {

/// Dense row-major matrix: quantization works row by row (one codebook per output row), so rows are
/// contiguous.
template <class T>
using row_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// The sparse part of a dense-and-sparse matrix: CSR with 32-bit indices.
template <class T>
using csr_matrix = Eigen::SparseMatrix<T, Eigen::RowMajor, std::int32_t>;

/// Template argument for a code width chosen at run time, e.g. quantized_matrix<float, dynamic_bits>.
inline constexpr int dynamic_bits = 0;

/// Scalar types sqz computes in: codebooks, sparse values and the working precision of W.
template <class T>
concept working_scalar = std::same_as<T, float> || std::same_as<T, double>;

}  // namespace sqz
