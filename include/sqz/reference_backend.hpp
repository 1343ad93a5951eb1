// sqz/reference_backend.hpp - the `reference` back end: plain scalar C++, the oracle for the others.
//
// Exact mode: y_i = sum_j LUT_i[code_ij] x_j + sum_k S_ik x_k, accumulated in double (long double for
// T = double) in column order and rounded to T once. It reads the codes through packed_code, one at a
// time, straight from the canonical packing.
//
// Int8 mode follows the specification of docs/design.md ("Int8 mode") literally, so that the fast back
// ends can be checked against it tightly, and its error against exact mode checked against the bound:
//   LUT:  lo_i = min_k L_ik, s_i = (max_k L_ik - lo_i) / 127, u_ik = round((L_ik - lo_i) / s_i) in 0..127
//   x:    tiles of 256 columns, slots of 32; e_t = amax_t / (127 * 255) per tile, D_b = ceil(255 amax_b /
//         amax_t) in 1..255 per slot, q_j = round(x_j / (e_t D_b)) in -127..127 (round to nearest even)
//   y_i = s_i * sum_t e_t * sum_{b in t} D_b * sum_{j in b} u_i[code_ij] q_j  +  lo_i * sum_j x^_j  +  S x
// where x^_j = e_t D_b q_j. Int8_tile mode is the same with one step per tile: e_t = amax_t / 127 and
// D_b = 1 in every slot. If x holds a NaN or an infinity, both compute the call exactly.
#pragma once

#include <sqz/backend.hpp>
#include <sqz/error.hpp>
#include <sqz/pack.hpp>
#include <sqz/quantized_matrix.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <type_traits>
#include <vector>

namespace sqz {
namespace reference {

/// Columns per int8 scale tile and per sub-block ("slot") with its own 8-bit scale multiplier.
inline constexpr std::size_t int8_tile = 256;
inline constexpr std::size_t int8_slot = 32;

/// Accumulator for the reference sums: wider than T so that the oracle's own rounding is negligible.
template <class T>
using accumulator = std::conditional_t<std::is_same_v<T, float>, double, long double>;

/// The 7-bit unsigned form of one row's codebook: L_k ~ lo + scale * u_k.
template <class T>
struct int8_lut_row {
    T lo = 0;
    T scale = 0;
    std::vector<std::uint8_t> u;
};

template <class T>
int8_lut_row<T> quantize_lut_row(std::span<const T> lut) {
    int8_lut_row<T> out;
    out.u.assign(lut.size(), 0);
    if (lut.empty()) return out;
    T lo = lut[0];
    T hi = lut[0];
    for (const T v : lut) {
        lo = std::min(lo, v);
        hi = std::max(hi, v);
    }
    out.lo = lo;
    out.scale = (hi - lo) / T(127);
    if (out.scale > T(0))
        for (std::size_t k = 0; k < lut.size(); ++k) {
            const T level = std::nearbyint((lut[k] - lo) / out.scale);
            out.u[k] = static_cast<std::uint8_t>(std::clamp(level, T(0), T(127)));
        }
    return out;
}

/// x quantized per the int8 specification. x^_j = tile_scale[j / 256] * slot_scale[j / 32] * q[j].
template <class T>
struct int8_activations {
    std::vector<std::int8_t> q;
    std::vector<std::uint8_t> slot_scale;  ///< D_b, 0..255 (0 only in an all-zero slot or tile; int8_tile: 1 elsewhere)
    std::vector<T> tile_scale;             ///< e_t
    bool finite = true;                    ///< false: x holds NaN or Inf and nothing else is filled in

    /// x^_j, exactly (e_t has 24 or 53 significant bits, D_b and q_j 8 each: the product fits).
    accumulator<T> dequantized(std::size_t j) const {
        return static_cast<accumulator<T>>(tile_scale[j / int8_tile]) * slot_scale[j / int8_slot] * q[j];
    }
};

/// x quantized per the int8 specification; slot_scales = false: int8_tile's (e_t = amax_t / 127, D_b = 1).
template <class T>
int8_activations<T> quantize_activations(std::span<const T> x, bool slot_scales = true) {
    int8_activations<T> out;
    for (const T v : x)
        if (!std::isfinite(v)) {
            out.finite = false;
            return out;
        }
    const std::size_t n = x.size();
    const std::size_t tiles = (n + int8_tile - 1) / int8_tile;
    out.q.assign(n, 0);
    out.slot_scale.assign((n + int8_slot - 1) / int8_slot, 0);
    out.tile_scale.assign(tiles, T(0));
    for (std::size_t t = 0; t < tiles; ++t) {
        const std::size_t begin = t * int8_tile;
        const std::size_t end = std::min(n, begin + int8_tile);
        T tile_max = 0;
        for (std::size_t j = begin; j < end; ++j) tile_max = std::max(tile_max, std::abs(x[j]));
        // A tile so small that its unit would be subnormal is treated as zero (error <= its max).
        if (!(tile_max >= T(127 * 255) * std::numeric_limits<T>::min())) continue;
        const T unit = slot_scales ? tile_max / T(127 * 255) : tile_max / T(127);
        out.tile_scale[t] = unit;
        for (std::size_t s = begin; s < end; s += int8_slot) {
            const std::size_t slot_end = std::min(end, s + int8_slot);
            T slot_max = 0;
            for (std::size_t j = s; j < slot_end; ++j) slot_max = std::max(slot_max, std::abs(x[j]));
            if (slot_max == T(0) && slot_scales) continue;
            const T multiplier = slot_scales ? std::clamp(std::ceil(T(255) * (slot_max / tile_max)), T(1), T(255)) : T(1);
            out.slot_scale[s / int8_slot] = static_cast<std::uint8_t>(multiplier);
            const T step = unit * multiplier;
            for (std::size_t j = s; j < slot_end; ++j)
                out.q[j] = static_cast<std::int8_t>(std::clamp(std::nearbyint(x[j] / step), T(-127), T(127)));
        }
    }
    return out;
}

namespace detail {

template <class T, int Bits>
void check_matvec_args(const quantized_matrix<T, Bits>& q, std::size_t x_size, std::size_t y_size) {
    sqz::detail::check_matvec_sizes("sqz::matvec<reference>", q.rows(), q.cols(), x_size, y_size);
}

template <class T, int Bits>
accumulator<T> sparse_row_dot(const quantized_matrix<T, Bits>& q, Eigen::Index row, std::span<const T> x) {
    accumulator<T> sum = 0;
    for (typename csr_matrix<T>::InnerIterator it(q.sparse(), row); it; ++it)
        sum += static_cast<accumulator<T>>(it.value()) * static_cast<accumulator<T>>(x[static_cast<std::size_t>(it.col())]);
    return sum;
}

template <class T, int Bits>
void matvec_exact(const quantized_matrix<T, Bits>& q, std::span<const T> x, std::span<T> y) {
    for (Eigen::Index i = 0; i < q.rows(); ++i) {
        const auto lut = q.lut_row(i);
        const auto codes = q.row_codes(i);
        accumulator<T> sum = 0;
        for (Eigen::Index j = 0; j < q.cols(); ++j)
            sum += static_cast<accumulator<T>>(lut[packed_code(codes, q.bits(), static_cast<std::size_t>(j))]) *
                   static_cast<accumulator<T>>(x[static_cast<std::size_t>(j)]);
        sum += sparse_row_dot(q, i, x);
        y[static_cast<std::size_t>(i)] = static_cast<T>(sum);
    }
}

template <class T, int Bits>
void matvec_int8(const quantized_matrix<T, Bits>& q, std::span<const T> x, std::span<T> y, bool slot_scales) {
    const int8_activations<T> xq = quantize_activations(x, slot_scales);
    if (!xq.finite) {
        matvec_exact(q, x, y);
        return;
    }
    accumulator<T> x_sum = 0;  // sum of the dequantized activations
    for (std::size_t j = 0; j < x.size(); ++j) x_sum += static_cast<accumulator<T>>(xq.dequantized(j));
    for (Eigen::Index i = 0; i < q.rows(); ++i) {
        const int8_lut_row<T> lut = quantize_lut_row(q.lut_row(i));
        const auto codes = q.row_codes(i);
        accumulator<T> dense = 0;
        for (std::size_t t = 0; t < xq.tile_scale.size(); ++t) {
            std::int64_t tile_sum = 0;
            for (std::size_t j = t * int8_tile; j < std::min(x.size(), (t + 1) * int8_tile); ++j)
                tile_sum += std::int64_t{xq.slot_scale[j / int8_slot]} * lut.u[packed_code(codes, q.bits(), j)] * xq.q[j];
            dense += static_cast<accumulator<T>>(xq.tile_scale[t]) * static_cast<accumulator<T>>(tile_sum);
        }
        const accumulator<T> sum = static_cast<accumulator<T>>(lut.scale) * dense +
                                   static_cast<accumulator<T>>(lut.lo) * x_sum + sparse_row_dot(q, i, x);
        y[static_cast<std::size_t>(i)] = static_cast<T>(sum);
    }
}

}  // namespace detail

/// The reference product. Every back end is tested against this.
template <class T, int Bits>
void matvec(const quantized_matrix<T, Bits>& q, std::span<const T> x, std::span<T> y,
            numeric_mode mode = numeric_mode::exact) {
    detail::check_matvec_args(q, x.size(), y.size());
    if (quantizes_activations(mode))
        detail::matvec_int8(q, x, y, mode == numeric_mode::int8);
    else
        detail::matvec_exact(q, x, y);
}

}  // namespace reference

template <>
struct backend_impl<backend::reference> {
    template <class T, int Bits>
    static quantized_matrix<T> prepare(const quantized_matrix<T, Bits>& q) {
        if constexpr (Bits == dynamic_bits)
            return q;
        else
            return quantized_matrix<T>(q);
    }

    template <class T, int Bits>
    static void matvec(const quantized_matrix<T, Bits>& q, std::span<const T> x, std::span<T> y,
                       const matvec_options& options) {
        reference::matvec(q, x, y, options.mode);
    }

    /// Column by column through matvec: obviously the same arithmetic as matvec.
    template <class T, int Bits>
    static void matmul(const quantized_matrix<T, Bits>& q, matrix_cref<T> x, matrix_ref<T> y,
                       const matvec_options& options) {
        sqz::detail::check_matmul_sizes("sqz::matmul<reference>", q.rows(), q.cols(), x.rows(), x.cols(), y.rows(),
                                        y.cols(), backend_traits<backend::reference>::max_matmul_columns);
        std::vector<T> column(static_cast<std::size_t>(q.cols()));
        std::vector<T> result(static_cast<std::size_t>(q.rows()));
        for (Eigen::Index c = 0; c < x.cols(); ++c) {
            for (Eigen::Index j = 0; j < q.cols(); ++j) column[static_cast<std::size_t>(j)] = x(j, c);
            reference::matvec(q, std::span<const T>(column), std::span<T>(result), options.mode);
            for (Eigen::Index i = 0; i < q.rows(); ++i) y(i, c) = result[static_cast<std::size_t>(i)];
        }
    }
};

}  // namespace sqz
