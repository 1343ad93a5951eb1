// sqz/backend.hpp - back-end selection for y = Q x: tag types, traits and the generic entry points.
//
//   sqz::matvec<sqz::backend::cpu>(q, x, y);                 // y = (D + S) x, q a quantized_matrix
//   sqz::matmul<sqz::backend::cpu>(q, X, Y);                 // Y = (D + S) X, X with 1..16 columns
//   auto p = sqz::prepare<sqz::backend::cpu>(q);             // convert once into the back end's layout,
//   sqz::matvec<sqz::backend::cpu>(p, x, y, {.mode = sqz::numeric_mode::int8});  // then multiply often
//
// Back ends: `reference` (scalar, the oracle), `cpu` (SIMD + OpenMP, <sqz/cpu_backend.hpp>) and `cuda`
// (<sqz/cuda_backend.cuh>, only in translation units compiled by nvcc). backend_traits<B> says what each
// supports and where its data lives. Using a back end that is not compiled in stops compilation with a
// static_assert that says so, never a link error.
#pragma once

#include <sqz/error.hpp>
#include <sqz/quantized_matrix.hpp>
#include <sqz/types.hpp>

#include <concepts>
#include <cstddef>
#include <span>
#include <string_view>
#include <type_traits>

#if defined(__CUDACC__)
#define SQZ_CUDA_COMPILER 1
#else
#define SQZ_CUDA_COMPILER 0
#endif

namespace sqz {

/// How a back end treats the activations.
///  - exact: x is used as given (float or double); the only differences from the exact product are the
///    rounding of the back end's summation order (agreement with `reference` within 1e-5 relative).
///  - int8: x is quantized to int8 in blocks of 32 (per-block scales, see docs/design.md) and the LUT
///    to 7-bit integers per row, and the dense part is an integer dot product; faster, with the error
///    bound of docs/design.md. A non-finite x falls back to exact for that call.
///  - int8_tile: int8 with one activation scale per 256 columns (as llama.cpp's Q8_K) instead of one
///    per 32: coarser steps where a tile's magnitudes vary (error bound in docs/design.md), but below
///    4 bits the AVX-512 kernel multiplies and accumulates with one instruction per 64 weights
///    (vpdpbusd). The fastest mode below 4 bits, as fast as int8 at 4; otherwise as int8.
enum class numeric_mode { exact, int8, int8_tile };

inline constexpr std::string_view to_string(numeric_mode mode) noexcept {
    switch (mode) {
        case numeric_mode::int8: return "int8";
        case numeric_mode::int8_tile: return "int8_tile";
        default: return "exact";
    }
}

/// True for the modes that quantize the activations to int8 (int8, int8_tile).
inline constexpr bool quantizes_activations(numeric_mode mode) noexcept {
    return mode == numeric_mode::int8 || mode == numeric_mode::int8_tile;
}

/// Which CPU kernels the cpu back end runs: the best one the processor supports (automatic: AVX-512,
/// else AVX2, else portable), the AVX2+FMA(+F16C) kernels, the AVX-512 kernels (F/VL/BW/DQ/VBMI/VNNI;
/// each an error on a processor without them), or the portable C++ kernels that run anywhere.
enum class cpu_kernel { automatic, avx2, portable, avx512 };

inline constexpr std::string_view to_string(cpu_kernel kernel) noexcept {
    switch (kernel) {
        case cpu_kernel::avx2: return "avx2";
        case cpu_kernel::avx512: return "avx512";
        case cpu_kernel::portable: return "portable";
        default: return "automatic";
    }
}

struct matvec_options {
    numeric_mode mode = numeric_mode::exact;
    int threads = 0;  ///< CPU threads; 0 = OpenMP's default. Results do not depend on it.
    cpu_kernel kernel = cpu_kernel::automatic;
};

/// Where a back end's prepared matrix, and the x and y passed with it, live.
enum class memory_space { host, cuda_device };

namespace backend {
struct reference {};  ///< plain scalar C++, obviously correct; the oracle for the others
struct cpu {};        ///< OpenMP over row blocks, AVX-512, AVX2 or portable kernels, a repacked layout
struct cuda {};       ///< CUDA kernels; needs nvcc and <sqz/cuda_backend.cuh>
}  // namespace backend

/// What a back end supports. `available` is false for a back end that this translation unit cannot
/// use (cuda outside nvcc); every other member describes the back end wherever it is compiled.
template <class Backend>
struct backend_traits {
    static constexpr bool available = false;
};

template <>
struct backend_traits<backend::reference> {
    static constexpr std::string_view name = "reference";
    static constexpr bool available = true;
    static constexpr memory_space matrix_space = memory_space::host;
    static constexpr memory_space vector_space = memory_space::host;
    static constexpr bool supports_bits(int bits) noexcept { return bits >= 1 && bits <= 8; }
    static constexpr bool supports_mode(numeric_mode) noexcept { return true; }
    template <class T>
    static constexpr bool supports_scalar = working_scalar<T>;
    static constexpr int max_matmul_columns = 16;
};

template <>
struct backend_traits<backend::cpu> {
    static constexpr std::string_view name = "cpu";
    static constexpr bool available = true;
    static constexpr memory_space matrix_space = memory_space::host;
    static constexpr memory_space vector_space = memory_space::host;
    /// All widths; 1..4 bits use the repacked SIMD layout, 5..8 bits portable kernels on the canonical one.
    static constexpr bool supports_bits(int bits) noexcept { return bits >= 1 && bits <= 8; }
    static constexpr bool supports_mode(numeric_mode) noexcept { return true; }
    template <class T>
    static constexpr bool supports_scalar = working_scalar<T>;
    static constexpr int max_matmul_columns = 16;
};

template <>
struct backend_traits<backend::cuda> {
    static constexpr std::string_view name = "cuda";
    /// True only in translation units compiled by nvcc (which must include <sqz/cuda_backend.cuh>).
    static constexpr bool available = SQZ_CUDA_COMPILER != 0;
    /// A prepared cuda matrix lives on the device, and so do the x and y passed with it; the overloads
    /// that take a quantized_matrix copy x and y between host and device.
    static constexpr memory_space matrix_space = memory_space::cuda_device;
    static constexpr memory_space vector_space = memory_space::cuda_device;
    static constexpr bool supports_bits(int bits) noexcept { return bits >= 2 && bits <= 4; }
    static constexpr bool supports_mode(numeric_mode mode) noexcept { return mode == numeric_mode::exact; }
    template <class T>
    static constexpr bool supports_scalar = std::same_as<T, float>;
    static constexpr int max_matmul_columns = 16;
};

/// Each back end specializes this with static prepare / matvec / matmul functions; the generic entry
/// points below forward to it.
template <class Backend>
struct backend_impl;

namespace detail {

template <class>
inline constexpr bool always_false = false;

template <class Backend>
constexpr void check_backend_available() {
    if constexpr (!backend_traits<Backend>::available) {
        static_assert(always_false<Backend>,
                      "sqz: this back end is not compiled in. backend::cuda needs a translation unit compiled by "
                      "nvcc (a .cu file) that includes <sqz/sqz.hpp> or <sqz/cuda_backend.cuh>; configure with "
                      "SQZ_CUDA=ON or AUTO so CMake enables CUDA.");
    }
}

}  // namespace detail

/// A matrix that back end `Backend` prepared (its own layout): it names the back end as `backend`.
template <class Matrix, class Backend>
concept prepared_for = requires { typename Matrix::backend; } && std::same_as<typename Matrix::backend, Backend>;

/// Converts q once into the back end's layout (and memory space). The result is what the prepared
/// overloads of matvec and matmul take; it does not refer to q.
template <class Backend, working_scalar T, int Bits>
auto prepare(const quantized_matrix<T, Bits>& q) {
    detail::check_backend_available<Backend>();
    if constexpr (backend_traits<Backend>::available) return backend_impl<Backend>::prepare(q);
}

/// y = (D + S) x for a prepared matrix. x has cols() entries, y has rows(); both in the back end's
/// vector_space. Mismatched sizes throw sqz::error.
template <class Backend, class Matrix>
    requires prepared_for<Matrix, Backend>
void matvec(const Matrix& a, std::type_identity_t<std::span<const typename Matrix::scalar>> x,
            std::type_identity_t<std::span<typename Matrix::scalar>> y, const matvec_options& options = {}) {
    detail::check_backend_available<Backend>();
    if constexpr (backend_traits<Backend>::available) backend_impl<Backend>::matvec(a, x, y, options);
}

/// y = (D + S) x straight from a quantized_matrix (x, y on the host). For the reference back end this
/// is the primary form; for the others it prepares the matrix on every call, which is convenient for
/// one product and wasteful for many.
template <class Backend, working_scalar T, int Bits>
void matvec(const quantized_matrix<T, Bits>& q, std::type_identity_t<std::span<const T>> x,
            std::type_identity_t<std::span<T>> y, const matvec_options& options = {}) {
    detail::check_backend_available<Backend>();
    if constexpr (backend_traits<Backend>::available) backend_impl<Backend>::matvec(q, x, y, options);
}

/// Column-major n x k activations (k = 1..16) and the m x k result: Y = (D + S) X.
template <class T>
using matrix_cref = Eigen::Ref<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>>;
template <class T>
using matrix_ref = Eigen::Ref<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>>;

template <class Backend, class Matrix>
    requires prepared_for<Matrix, Backend>
void matmul(const Matrix& a, std::type_identity_t<matrix_cref<typename Matrix::scalar>> x,
            std::type_identity_t<matrix_ref<typename Matrix::scalar>> y, const matvec_options& options = {}) {
    detail::check_backend_available<Backend>();
    if constexpr (backend_traits<Backend>::available) backend_impl<Backend>::matmul(a, x, y, options);
}

template <class Backend, working_scalar T, int Bits>
void matmul(const quantized_matrix<T, Bits>& q, std::type_identity_t<matrix_cref<T>> x,
            std::type_identity_t<matrix_ref<T>> y, const matvec_options& options = {}) {
    detail::check_backend_available<Backend>();
    if constexpr (backend_traits<Backend>::available) backend_impl<Backend>::matmul(q, x, y, options);
}

/// Convenience forms that allocate the result.
template <class Backend, working_scalar T, int Bits>
Eigen::Matrix<T, Eigen::Dynamic, 1> matvec(const quantized_matrix<T, Bits>& q,
                                           const Eigen::Matrix<T, Eigen::Dynamic, 1>& x,
                                           const matvec_options& options = {}) {
    Eigen::Matrix<T, Eigen::Dynamic, 1> y(q.rows());
    matvec<Backend>(q, std::span<const T>(x.data(), static_cast<std::size_t>(x.size())),
                    std::span<T>(y.data(), static_cast<std::size_t>(y.size())), options);
    return y;
}

template <class Backend, working_scalar T, int Bits>
Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> matmul(const quantized_matrix<T, Bits>& q,
                                                        const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& x,
                                                        const matvec_options& options = {}) {
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> y(q.rows(), x.cols());
    matmul<Backend>(q, x, y, options);
    return y;
}

namespace detail {

/// Shared argument checks, so every back end words its errors the same way.
inline void check_matvec_sizes(const char* where, Eigen::Index rows, Eigen::Index cols, std::size_t x_size,
                               std::size_t y_size) {
    require(x_size == static_cast<std::size_t>(cols), where, ": x has ", x_size, " entries, the matrix has ", cols,
            " columns");
    require(y_size == static_cast<std::size_t>(rows), where, ": y has ", y_size, " entries, the matrix has ", rows,
            " rows");
}

inline void check_matmul_sizes(const char* where, Eigen::Index rows, Eigen::Index cols, Eigen::Index x_rows,
                               Eigen::Index x_cols, Eigen::Index y_rows, Eigen::Index y_cols, int max_columns) {
    require(x_cols >= 1 && x_cols <= max_columns, where, ": X has ", x_cols, " columns, 1..", max_columns,
            " are supported");
    require(x_rows == cols, where, ": X has ", x_rows, " rows, the matrix has ", cols, " columns");
    require(y_rows == rows && y_cols == x_cols, where, ": Y is ", y_rows, " x ", y_cols, ", expected ", rows, " x ",
            x_cols);
}

}  // namespace detail
}  // namespace sqz
