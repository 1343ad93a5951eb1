// sqz/quantize.hpp - the SqueezeLLM quantizer: W and a sensitivity in, Q = D + S out.
//
//   quantize(W, sensitivity, config)              -> quantized_matrix<T, Bits>
//   quantize_with_report(W, sensitivity, config)  -> {matrix, report}: errors, sizes, counts, seconds
//   quantize_rtn(W, config)                       per-row round-to-nearest on a uniform grid (baseline)
//   evaluate(W, sensitivity, Q)                   the report's error and size figures for any Q
//
// Per output row i (rows in parallel with OpenMP; the result is bit-identical for any thread count):
//  1. the sparse positions are chosen for the whole matrix first (sqz/outliers.hpp: sensitive values,
//     then percentile or IQR outliers);
//  2. the codebook LUT_i: weighted k-means (sqz/kmeans.hpp) of the row's remaining (dense) entries with
//     their sensitivities as weights (the extracted entries are left out, i.e. have zero weight), or with
//     codebook_method::rtn the uniform grid from the dense entries' minimum to their maximum. A row with no
//     dense entry gets an all-zero LUT. Centroids are rounded to the LUT's storage format (fp16, or fp32
//     also for double matrices), so the stored LUT is exactly the one codes and residuals were made with;
//  3. codes: every dense entry gets its nearest LUT entry (the lowest index among equally near ones);
//  4. every extracted entry w gets, nearest first, a LUT entry c with residual r such that D + S
//     reproduces w: preferably c + r == w exactly as real numbers (r = w - c is a float, so the sum is
//     exact in any precision), otherwise fl(c + r) == w in T, with r = fl(w - c) or an adjacent float. Such
//     a c exists unless w is far smaller in magnitude than every LUT entry of its row and has more
//     significant bits than fit beside them (e.g. w = 1e-30 with centroids near 1); there the entry with
//     the smallest reconstruction error is used and the report counts it in inexact_sparse;
//  5. S_ij = r at the extracted positions (CSR), codes packed canonically.
#pragma once

#include <sqz/detail/threads.hpp>
#include <sqz/error.hpp>
#include <sqz/half.hpp>
#include <sqz/kmeans.hpp>
#include <sqz/outliers.hpp>
#include <sqz/pack.hpp>
#include <sqz/quantized_matrix.hpp>
#include <sqz/sensitivity.hpp>
#include <sqz/types.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

namespace sqz {

/// How each row's codebook is made.
enum class codebook_method {
    kmeans,  ///< sensitivity-weighted k-means (SqueezeLLM); with uniform sensitivity plain k-means
    rtn      ///< round-to-nearest baseline: 2^bits evenly spaced values from the row's min to its max
};

struct quantize_config {
    int bits = 3;                                      ///< 1..8 (2^bits LUT entries per row)
    codebook_method codebook = codebook_method::kmeans;
    kmeans_options kmeans{};                           ///< method (exact by default), Lloyd's settings
    split_options split{};                             ///< sensitive / outlier fractions, IQR range, per row
    lut_format format = lut_format::fp32;              ///< storage precision of the LUT
    int threads = 0;                                   ///< OpenMP threads; <= 0: OpenMP's default
};

/// What a quantization achieved: errors against W, sizes, sparse counts and times.
struct quantization_report {
    Eigen::Index rows = 0;
    Eigen::Index cols = 0;
    int bits = 0;
    lut_format format = lut_format::fp32;
    double taylor_objective = 0.0;   ///< 0.5 * sum f (W - Q)^2 with the given sensitivity
    double frobenius_error = 0.0;    ///< ||W - Q||_F
    double relative_error = 0.0;     ///< ||W - Q||_F / ||W||_F (0 if both are 0)
    Eigen::Index sparse_nonzeros = 0;
    double sparse_fraction = 0.0;    ///< sparse_nonzeros / (rows * cols)
    Eigen::Index sensitive_count = 0;  ///< extracted as sensitive (quantize only)
    Eigen::Index outlier_count = 0;    ///< extracted as outliers (quantize only)
    Eigen::Index inexact_sparse = 0;   ///< extracted entries D + S cannot reproduce exactly (quantize only)
    storage_breakdown storage;
    double bits_per_weight = 0.0;
    double seconds = 0.0;            ///< wall time of the whole quantize call (quantize only)
    double split_seconds = 0.0;      ///< of which choosing the sparse positions
    double codebook_seconds = 0.0;   ///< of which codebooks, codes, residuals and packing (the rest of
                                     ///< `seconds` is input validation and assembling the result)
};

template <working_scalar T, int Bits = dynamic_bits>
struct quantization_result {
    quantized_matrix<T, Bits> matrix;
    quantization_report report;
};

namespace detail {

/// Rounds a double to the nearest binary16 value (ties to even) without the double rounding of
/// double -> float -> half: only when the float lands exactly halfway between two halves can that go
/// the wrong way, and then the side of the double decides.
inline double round_double_to_half(double value) noexcept {
    const auto f = static_cast<float>(value);
    const float h = round_to_half(f);
    if (h == f || static_cast<double>(f) == value || !std::isfinite(h)) return h;
    const float other = 2.0f * f - h;  // the other neighbour if f is a midpoint
    if (other != h && round_to_half(other) == other) {
        if (value > static_cast<double>(f)) return std::max(h, other);
        if (value < static_cast<double>(f)) return std::min(h, other);
    }
    return h;
}

/// A centroid rounded to what the LUT format stores: fp16, or fp32 (a no-op for float matrices).
template <working_scalar T>
T round_to_format(T value, lut_format format) noexcept {
    if (format == lut_format::fp16) {
        if constexpr (std::is_same_v<T, float>)
            return round_to_half(value);
        else
            return round_double_to_half(value);
    }
    return static_cast<T>(static_cast<float>(value));
}

/// Index of the LUT entry nearest to w (ascending LUT; the lowest index among equally near entries).
template <working_scalar T>
unsigned nearest_code(std::span<const T> lut, T w) noexcept {
    const auto upper = std::upper_bound(lut.begin(), lut.end(), w);
    auto best = upper;
    if (upper == lut.end()) {
        best = upper - 1;
    } else if (upper != lut.begin()) {
        const double below = static_cast<double>(w) - static_cast<double>(*(upper - 1));
        const double above = static_cast<double>(*upper) - static_cast<double>(w);
        best = below <= above ? upper - 1 : upper;
    }
    // The first of a run of equal entries.
    return static_cast<unsigned>(std::lower_bound(lut.begin(), best, *best) - lut.begin());
}

template <working_scalar T>
struct sparse_code {
    unsigned code = 0;
    T residual = 0;
    bool exact = false;
};

/// Whether c + r == w holds exactly as a real sum (so in any precision at least T's), by Knuth's
/// error-free TwoSum in T.
template <working_scalar T>
bool sums_exactly(T c, T r, T w) noexcept {
    const T sum = c + r;
    if (sum != w) return false;
    const T r_part = sum - c;
    const T c_part = sum - r_part;
    return (c - c_part) + (r - r_part) == T(0);
}

/// The code and residual for an extracted entry w, trying LUT entries nearest first (ties: lower index):
///  1. the first c with c + fl(w - c) == w exactly as real numbers (then D + S == W in any precision);
///  2. else the first c for which fl(c + r) == w in T, with r = fl(w - c) or one of its neighbouring floats;
///  3. else the candidate with the smallest |fl(c + r) - w| (exact = false).
template <working_scalar T>
sparse_code<T> exact_sparse_code(std::span<const T> lut, T w) noexcept {
    const auto levels = static_cast<std::ptrdiff_t>(lut.size());
    // The LUT indices in order of distance from w.
    std::array<std::uint8_t, 256> order{};
    {
        std::ptrdiff_t below = static_cast<std::ptrdiff_t>(nearest_code(lut, w));
        std::ptrdiff_t above = below + 1;
        order[0] = static_cast<std::uint8_t>(below--);
        for (std::ptrdiff_t k = 1; k < levels; ++k) {
            if (below < 0) {
                order[static_cast<std::size_t>(k)] = static_cast<std::uint8_t>(above++);
            } else if (above >= levels) {
                order[static_cast<std::size_t>(k)] = static_cast<std::uint8_t>(below--);
            } else {
                const double d_below = std::abs(static_cast<double>(w) - static_cast<double>(lut[static_cast<std::size_t>(below)]));
                const double d_above = std::abs(static_cast<double>(lut[static_cast<std::size_t>(above)]) - static_cast<double>(w));
                order[static_cast<std::size_t>(k)] = static_cast<std::uint8_t>(d_below <= d_above ? below-- : above++);
            }
        }
    }
    for (std::ptrdiff_t k = 0; k < levels; ++k) {
        const unsigned code = order[static_cast<std::size_t>(k)];
        const T c = lut[code];
        const T r = w - c;
        if (sums_exactly(c, r, w)) return {code, r, true};
    }
    sparse_code<T> best;
    double best_error = std::numeric_limits<double>::infinity();
    constexpr T infinity = std::numeric_limits<T>::infinity();
    for (std::ptrdiff_t k = 0; k < levels; ++k) {
        const unsigned code = order[static_cast<std::size_t>(k)];
        const T c = lut[code];
        const T r = w - c;
        for (const T candidate : {r, std::nextafter(r, -infinity), std::nextafter(r, infinity)}) {
            if (!std::isfinite(candidate)) continue;
            const T back = c + candidate;
            if (back == w) return {code, candidate, true};
            const double error = std::abs(static_cast<double>(back) - static_cast<double>(w));
            if (error < best_error) {
                best_error = error;
                best = {code, candidate, false};
            }
        }
    }
    return best;
}

inline void validate_config(const quantize_config& config, const char* where) {
    check_bits(config.bits, where);
    require(config.codebook == codebook_method::kmeans || config.codebook == codebook_method::rtn, where,
            ": codebook = ", static_cast<int>(config.codebook), " is not a codebook_method");
    require(config.format == lut_format::fp32 || config.format == lut_format::fp16, where, ": format = ",
            static_cast<int>(config.format), " is not a lut_format");
    require(config.kmeans.method == kmeans_method::exact || config.kmeans.method == kmeans_method::lloyd, where,
            ": kmeans.method = ", static_cast<int>(config.kmeans.method), " is not a kmeans_method");
    require(config.kmeans.max_iterations >= 0, where, ": kmeans.max_iterations = ", config.kmeans.max_iterations,
            " is negative");
    require(config.kmeans.restarts >= 1, where, ": kmeans.restarts = ", config.kmeans.restarts, " must be >= 1");
    validate_split_options(config.split, where);
}

/// A per-row seed for Lloyd's k-means++ sampling, so rows do not share one random sequence.
inline std::uint64_t row_seed(std::uint64_t seed, Eigen::Index row) noexcept {
    std::uint64_t z = seed + 0x9e3779b97f4a7c15ull * (static_cast<std::uint64_t>(row) + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

struct row_outcome {
    double weighted = 0.0;
    double squared = 0.0;
    double reference = 0.0;
    Eigen::Index inexact = 0;
};

/// Assigns nearest-LUT-entry codes to a whole row. For float rows the LUT's distinct values are
/// separated by thresholds: the largest float not above each midpoint (computed exactly in double), so
/// v > threshold exactly when v lies beyond the midpoint and a value on a midpoint keeps the lower entry;
/// the code is then the number of thresholds below v (a vectorisable count for up to 32 distinct values,
/// a branch-free binary search above), mapped to the first LUT index of that value. Double rows use
/// nearest_code per entry.
template <working_scalar T>
struct nearest_coder {
    std::vector<T> thresholds;
    std::vector<std::uint8_t> first_index;
    std::vector<std::int32_t> counts;
};

template <working_scalar T>
void nearest_codes(std::span<const T> lut, std::span<const T> values, std::span<std::uint8_t> codes,
                   nearest_coder<T>& coder) {
    if constexpr (std::is_same_v<T, double>) {
        for (std::size_t j = 0; j < values.size(); ++j) codes[j] = static_cast<std::uint8_t>(nearest_code(lut, values[j]));
    } else {
        coder.thresholds.clear();
        coder.first_index.clear();
        for (std::size_t k = 0; k < lut.size(); ++k) {
            if (k > 0 && lut[k] == lut[k - 1]) continue;
            if (k > 0) {
                const double midpoint = 0.5 * (static_cast<double>(lut[k - 1]) + static_cast<double>(lut[k]));
                float below = static_cast<float>(midpoint);
                if (static_cast<double>(below) > midpoint) below = std::nextafter(below, -std::numeric_limits<float>::infinity());
                coder.thresholds.push_back(below);
            }
            coder.first_index.push_back(static_cast<std::uint8_t>(k));
        }
        const std::size_t n = values.size();
        const std::size_t steps = coder.thresholds.size();
        coder.counts.assign(n, 0);
        std::int32_t* count = coder.counts.data();
        const float* v = values.data();
        if (steps <= 32) {
            for (std::size_t t = 0; t < steps; ++t) {
                const float threshold = coder.thresholds[t];
                for (std::size_t j = 0; j < n; ++j) count[j] += v[j] > threshold ? 1 : 0;
            }
        } else {
            std::size_t span = 1;
            while (span < steps + 1) span <<= 1;
            coder.thresholds.resize(span - 1, std::numeric_limits<float>::infinity());
            const float* t = coder.thresholds.data();
            for (std::size_t j = 0; j < n; ++j) {
                std::size_t position = 0;
                for (std::size_t step = span >> 1; step > 0; step >>= 1)
                    position += t[position + step - 1] < v[j] ? step : 0;
                count[j] = static_cast<std::int32_t>(position);
            }
        }
        for (std::size_t j = 0; j < n; ++j) codes[j] = coder.first_index[static_cast<std::size_t>(count[j])];
    }
}

/// Canonical packing with the width as a compile-time constant for the common widths (the compiler then
/// folds the shifts), the run-time form otherwise.
inline void pack_row(std::span<const std::uint8_t> codes, int bits, std::span<std::uint8_t> out) {
    switch (bits) {
        case 2: return pack<2>(codes, out);
        case 3: return pack<3>(codes, out);
        case 4: return pack<4>(codes, out);
        case 8: return pack<8>(codes, out);
        default: return pack(codes, bits, out);
    }
}

template <working_scalar T>
struct quantize_scratch {
    std::vector<double> sensitivity;
    std::vector<T> dense_values;
    std::vector<double> dense_weights;
    std::vector<std::uint8_t> codes;
    std::vector<T> reconstructed;
    std::vector<T> lut;
    nearest_coder<T> coder;
};

inline double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

/// The quantizer on a validated config and shape. With check_rows, W and the sensitivity are checked row
/// by row inside the row loop (the dense-only case, where nothing reads them before); otherwise the caller
/// has checked them.
template <int Bits, working_scalar T, class Provider>
quantization_result<T, Bits> quantize_validated(const Eigen::Ref<const row_matrix<T>>& w, const Provider& provider,
                                                const quantize_config& config, bool check_rows,
                                                std::chrono::steady_clock::time_point start) {
    const Eigen::Index rows = w.rows();
    const Eigen::Index cols = w.cols();
    const int bits = config.bits;
    const auto levels = static_cast<std::size_t>(1u << bits);
    const int threads = config.threads;

    const auto split_start = std::chrono::steady_clock::now();
    const split_options& split = config.split;
    const bool any_split = split.sensitive_fraction > 0.0 || split.outlier_fraction > 0.0 || split.iqr_range > 0.0;
    sparse_selection selection;
    selection.rows = rows;
    selection.cols = cols;
    selection.row_ptr.assign(static_cast<std::size_t>(rows) + 1, 0);
    if (any_split) selection = select_sparse_validated<T>(w, &provider, split, threads);
    const double split_seconds = seconds_since(split_start);
    const auto codebook_start = std::chrono::steady_clock::now();

    const auto stride = packed_size(static_cast<std::size_t>(cols), bits);
    row_matrix<T> lut(rows, static_cast<Eigen::Index>(levels));
    std::vector<std::uint8_t> packed(stride * static_cast<std::size_t>(rows));
    std::vector<T> sparse_values(selection.col_idx.size());
    std::vector<row_outcome> outcomes(static_cast<std::size_t>(rows));
    const int team = resolve_threads(threads);
    std::vector<quantize_scratch<T>> scratch(static_cast<std::size_t>(team));
    for (auto& s : scratch) {
        s.sensitivity.resize(static_cast<std::size_t>(cols));
        s.codes.resize(static_cast<std::size_t>(cols));
        s.reconstructed.resize(static_cast<std::size_t>(cols));
        s.lut.resize(levels);
    }

    parallel_for(rows, threads, [&](Eigen::Index i, int thread) {
        auto& s = scratch[static_cast<std::size_t>(thread)];
        const auto row = static_cast<std::size_t>(i);
        const auto n = static_cast<std::size_t>(cols);
        const std::span<const T> values(w.data() + i * w.outerStride(), n);
        provider.fill_row(i, std::span<double>(s.sensitivity));
        if (check_rows) {
            check_finite_row(values, i, "sqz::quantize", "W");
            check_sensitivity_row(s.sensitivity, i, "sqz::quantize");
        }
        const auto positions = selection.row(i);

        // The dense entries (the row itself when nothing is extracted).
        std::span<const T> dense_values = values;
        std::span<const double> dense_weights(s.sensitivity);
        if (!positions.empty()) {
            s.dense_values.clear();
            s.dense_weights.clear();
            std::size_t next = 0;
            for (std::size_t j = 0; j < n; ++j) {
                if (next < positions.size() && static_cast<std::size_t>(positions[next]) == j) {
                    ++next;
                    continue;
                }
                s.dense_values.push_back(values[j]);
                s.dense_weights.push_back(s.sensitivity[j]);
            }
            dense_values = s.dense_values;
            dense_weights = s.dense_weights;
        }

        // Codebook, rounded to the storage format (rounding keeps the order, so the LUT stays sorted).
        std::fill(s.lut.begin(), s.lut.end(), T(0));
        if (!dense_values.empty()) {
            if (config.codebook == codebook_method::kmeans) {
                kmeans_options options = config.kmeans;
                options.seed = row_seed(config.kmeans.seed, i);
                const auto clustered = weighted_kmeans(dense_values, dense_weights, static_cast<int>(levels), options);
                std::copy(clustered.centroids.begin(), clustered.centroids.end(), s.lut.begin());
            } else {
                T low = dense_values[0];
                T high = dense_values[0];
                for (const T v : dense_values) {  // values are finite
                    low = v < low ? v : low;
                    high = v > high ? v : high;
                }
                const double step = (static_cast<double>(high) - static_cast<double>(low)) / static_cast<double>(levels - 1);
                for (std::size_t k = 0; k < levels; ++k)
                    s.lut[k] = static_cast<T>(static_cast<double>(low) + static_cast<double>(k) * step);
            }
        }
        for (std::size_t k = 0; k < levels; ++k) {
            const T rounded = round_to_format(s.lut[k], config.format);
            require(std::isfinite(rounded), "sqz::quantize: centroid ", s.lut[k], " of row ", i,
                    " overflows the ", to_string(config.format), " LUT format");
            s.lut[k] = rounded;
        }
        std::copy(s.lut.begin(), s.lut.end(), lut.data() + i * static_cast<Eigen::Index>(levels));
        const std::span<const T> table(s.lut);

        // Codes: nearest LUT entry for every entry; then the extracted ones get an exact residual.
        nearest_codes(table, values, std::span<std::uint8_t>(s.codes), s.coder);
        for (std::size_t j = 0; j < n; ++j) s.reconstructed[j] = table[s.codes[j]];
        row_outcome outcome;
        const auto first = static_cast<std::size_t>(selection.row_ptr[row]);
        for (std::size_t k = 0; k < positions.size(); ++k) {
            const auto j = static_cast<std::size_t>(positions[k]);
            const auto chosen = exact_sparse_code(table, values[j]);
            s.codes[j] = static_cast<std::uint8_t>(chosen.code);
            sparse_values[first + k] = chosen.residual;
            s.reconstructed[j] = static_cast<T>(table[chosen.code] + chosen.residual);
            if (!chosen.exact) ++outcome.inexact;
        }
        // Error sums in four fixed lanes (the same order for any thread count). GCC 12 does not vectorise
        // this loop (float values against double lanes), nor RTN's min/max scan above.
        double weighted[4] = {0, 0, 0, 0};
        double squared[4] = {0, 0, 0, 0};
        double reference[4] = {0, 0, 0, 0};
        std::size_t j = 0;
        for (; j + 4 <= n; j += 4)
            for (std::size_t lane = 0; lane < 4; ++lane) {
                const double v = static_cast<double>(values[j + lane]);
                const double d = v - static_cast<double>(s.reconstructed[j + lane]);
                squared[lane] += d * d;
                weighted[lane] += s.sensitivity[j + lane] * d * d;
                reference[lane] += v * v;
            }
        for (; j < n; ++j) {
            const double v = static_cast<double>(values[j]);
            const double d = v - static_cast<double>(s.reconstructed[j]);
            squared[0] += d * d;
            weighted[0] += s.sensitivity[j] * d * d;
            reference[0] += v * v;
        }
        outcome.weighted = (weighted[0] + weighted[1]) + (weighted[2] + weighted[3]);
        outcome.squared = (squared[0] + squared[1]) + (squared[2] + squared[3]);
        outcome.reference = (reference[0] + reference[1]) + (reference[2] + reference[3]);
        pack_row(std::span<const std::uint8_t>(s.codes), bits, std::span<std::uint8_t>(packed).subspan(row * stride, stride));
        outcomes[row] = outcome;
    });

    const auto codebook_end = std::chrono::steady_clock::now();
    auto sparse = make_csr<T>(rows, cols, selection.row_ptr, selection.col_idx, sparse_values);
    quantization_result<T, Bits> result{
        quantized_matrix<T, Bits>(rows, cols, bits, std::move(lut), std::move(packed), std::move(sparse), config.format),
        {}};
    row_outcome total;
    for (const auto& o : outcomes) {
        total.weighted += o.weighted;
        total.squared += o.squared;
        total.reference += o.reference;
        total.inexact += o.inexact;
    }
    auto& report = result.report;
    report.rows = rows;
    report.cols = cols;
    report.bits = bits;
    report.format = config.format;
    report.taylor_objective = 0.5 * total.weighted;
    report.frobenius_error = std::sqrt(total.squared);
    report.relative_error = total.reference > 0 ? std::sqrt(total.squared / total.reference) : (total.squared > 0 ? std::numeric_limits<double>::infinity() : 0.0);
    report.sparse_nonzeros = result.matrix.sparse_nonzeros();
    report.sparse_fraction = selection.fraction();
    report.sensitive_count = selection.sensitive_count;
    report.outlier_count = selection.outlier_count;
    report.inexact_sparse = total.inexact;
    report.storage = result.matrix.storage_bytes();
    report.bits_per_weight = result.matrix.bits_per_weight();
    report.split_seconds = split_seconds;
    report.codebook_seconds = std::chrono::duration<double>(codebook_end - codebook_start).count();
    report.seconds = seconds_since(start);
    return result;
}

}  // namespace detail

/// Quantizes W (m x n, float or double, any Eigen layout) with per-row sensitivity-weighted codebooks
/// and the dense-and-sparse split the config asks for, and reports errors, sizes and times. Bits fixes
/// the width at compile time (config.bits is then ignored) or is dynamic_bits (config.bits is used).
/// sqz::error for: config.bits outside 1..8, fractions outside [0, 1), a negative iqr_range or both
/// outlier rules, bad k-means settings, a sensitivity of another shape, NaN/Inf in W, NaN/Inf or negative
/// sensitivities, centroids that overflow the LUT format.
template <int Bits = dynamic_bits, class DW, sensitivity_argument S>
quantization_result<typename DW::Scalar, Bits> quantize_with_report(const Eigen::MatrixBase<DW>& w_in, const S& sensitivity,
                                                                    quantize_config config = {}) {
    static_assert(Bits == dynamic_bits || (Bits >= min_bits && Bits <= max_bits),
                  "sqz::quantize: Bits must be 1..8 or sqz::dynamic_bits");
    using T = typename DW::Scalar;
    static_assert(working_scalar<T>, "sqz::quantize: W must be a matrix of float or double");
    constexpr const char* where = "sqz::quantize";
    const auto start = std::chrono::steady_clock::now();
    if constexpr (Bits != dynamic_bits) config.bits = Bits;
    detail::validate_config(config, where);
    const Eigen::Ref<const row_matrix<T>> w(w_in.derived());
    detail::require(w.cols() <= Eigen::Index{std::numeric_limits<std::int32_t>::max()}, where, ": cols = ", w.cols(),
                    " exceeds the int32 column index range");
    // The split reads all of W and the sensitivity first, so they are checked up front; dense-only
    // quantization checks each row as it reaches it (the lowest failing row is reported either way).
    const split_options& split = config.split;
    const bool check_first = split.sensitive_fraction > 0.0 || split.outlier_fraction > 0.0 || split.iqr_range > 0.0;
    if (check_first) detail::validate_finite_rows<T>(w, where, "W", config.threads);
    return detail::with_provider(sensitivity, [&](const auto& provider) {
        detail::require_sensitivity_shape(provider, w.rows(), w.cols(), where);
        if (check_first) detail::validate_sensitivity(provider, w.rows(), w.cols(), where, config.threads);
        return detail::quantize_validated<Bits, T>(w, provider, config, !check_first, start);
    });
}

/// quantize_with_report without the report.
template <int Bits = dynamic_bits, class DW, sensitivity_argument S>
quantized_matrix<typename DW::Scalar, Bits> quantize(const Eigen::MatrixBase<DW>& w, const S& sensitivity,
                                                     const quantize_config& config = {}) {
    return quantize_with_report<Bits>(w, sensitivity, config).matrix;
}

/// The round-to-nearest baseline: config with codebook = rtn and uniform sensitivity (which then only
/// matters for ties between outliers; sensitive_fraction must be 0). Same output type as quantize.
template <int Bits = dynamic_bits, class DW>
quantized_matrix<typename DW::Scalar, Bits> quantize_rtn(const Eigen::MatrixBase<DW>& w, quantize_config config = {}) {
    detail::require(config.split.sensitive_fraction == 0.0, "sqz::quantize_rtn: sensitive_fraction = ",
                    config.split.sensitive_fraction, " needs a sensitivity; use quantize with codebook_method::rtn");
    config.codebook = codebook_method::rtn;
    return quantize_with_report<Bits>(w, uniform_sensitivity(w.rows(), w.cols(), 0.0), config).matrix;
}

/// The error and size figures of a quantization_report for any quantized matrix Q of W's shape
/// (counts of sensitive values and outliers, inexact_sparse and times stay 0).
template <class DW, sensitivity_argument S, working_scalar T, int Bits>
quantization_report evaluate(const Eigen::MatrixBase<DW>& w, const S& sensitivity, const quantized_matrix<T, Bits>& q,
                             int threads = 0) {
    const auto sums = detail::error_sums_of(w, q, &sensitivity, "sqz::evaluate", threads);
    quantization_report report;
    report.rows = q.rows();
    report.cols = q.cols();
    report.bits = q.bits();
    report.format = q.format();
    report.taylor_objective = 0.5 * sums.weighted;
    report.frobenius_error = std::sqrt(sums.squared);
    report.relative_error = sums.reference > 0 ? std::sqrt(sums.squared / sums.reference)
                                               : (sums.squared > 0 ? std::numeric_limits<double>::infinity() : 0.0);
    report.sparse_nonzeros = q.sparse_nonzeros();
    const double n = static_cast<double>(q.rows()) * static_cast<double>(q.cols());
    report.sparse_fraction = n > 0 ? static_cast<double>(q.sparse_nonzeros()) / n : 0.0;
    report.storage = q.storage_bytes();
    report.bits_per_weight = q.bits_per_weight();
    return report;
}

}  // namespace sqz
