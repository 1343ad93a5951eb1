// sqz/kmeans.hpp - weighted 1-D k-means: the exact optimum by dynamic programming, or Lloyd's heuristic.
//
// SqueezeLLM builds one codebook per output row by minimising sum_i w_i (x_i - c(x_i))^2 over k centroids,
// with x the row's weights and w their sensitivities (Fisher diagonal). In one dimension the optimal
// clusters are contiguous intervals of the sorted values, so the global optimum is a dynamic programme
// over the sorted, merged values (Wang & Song's Ckmeans.1d.dp; Groenlund et al. 2017):
//
//   D[l][j] = min_{a < j} D[l-1][a] + cost(a, j)     (best l clusters of the first j distinct values)
//
// with cost(a, j) = sum w y^2 - (sum w y)^2 / sum w over distinct values a..j-1, O(1) from prefix sums.
// The cost satisfies the quadrangle inequality, so the minimising a is monotone in j and in l; each layer
// is solved by divide and conquer within those bounds. The programme runs half the layers from each end
// and meets in the middle, and skips every cell costlier than an upper bound from a quick Lloyd run
// (docs/design.md has the details).
//
//   weighted_kmeans(values, weights, k, options)        one row: values and weights as std::span,
//                                                       std::vector or Eigen vector expressions
//   weighted_kmeans_rows(values, weights, k, options)   every row of two Eigen matrices, rows in parallel
//
// Semantics (both methods):
// - values may be negative; weights must be >= 0; NaN or infinite values or weights, negative weights,
//   empty input, mismatched sizes and k outside 1..256 throw sqz::error naming the argument and index.
// - Equal values (including -0.0 and +0.0) are merged: they always share a label.
// - Entries of zero weight do not influence the centroids or the objective; like every entry they are
//   labelled with their nearest centroid. If every weight is zero, all weights count as 1 (the row's
//   unweighted k-means), and the objective uses those equal weights.
// - If fewer than k distinct values have positive weight, each of them is a centroid and the last one
//   is repeated to make k (objective 0).
// - centroids are sorted ascending; labels[i] is the index of the centroid nearest to values[i], the
//   lowest such index when two are equally near; objective = sum_i w_i (x_i - centroids[labels[i]])^2
//   computed in double with the returned (value-type) centroids.
// - Results depend only on the input values (not on how they are stored, nor on the thread count).
#pragma once

#include <sqz/detail/threads.hpp>
#include <sqz/error.hpp>
#include <sqz/half.hpp>
#include <sqz/synthetic.hpp>
#include <sqz/types.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <limits>
#include <ranges>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX2__) || defined(__BMI2__)
#include <immintrin.h>
#endif

namespace sqz {

enum class kmeans_method {
    exact,  ///< the global optimum (dynamic programming)
    lloyd   ///< Lloyd's heuristic from greedy weighted k-means++ seeds, with split-and-merge moves; the best
            ///< of `restarts` runs. At k <= 8 on float rows that are not fp16 data it clusters buckets of
            ///< values (8 significant bits, exact sums) instead of sorting them (docs/design.md)
};

struct kmeans_options {
    kmeans_method method = kmeans_method::exact;
    int max_iterations = 50;  ///< lloyd only: iterations per restart (stops earlier when stable)
    int restarts = 3;         ///< lloyd only: k-means++ restarts, the best objective is kept
    std::uint64_t seed = 0;   ///< lloyd only: seed of the k-means++ sampling
};

/// The clustering of one row. T is the value type of the input (float or double).
template <class T>
struct kmeans_result {
    std::vector<T> centroids;          ///< exactly k values, sorted ascending (repeated if too few distinct)
    std::vector<std::uint8_t> labels;  ///< one per input value: index of its centroid
    double objective = 0;              ///< sum_i w_i (x_i - centroids[labels[i]])^2, in double
};

namespace detail::kmeans {

inline constexpr int max_clusters = 256;

template <class C>
concept eigen_dense = std::derived_from<C, Eigen::DenseBase<C>>;

template <class C>
struct element_type {
    using type = std::remove_cv_t<std::ranges::range_value_t<C>>;
};
template <eigen_dense C>
struct element_type<C> {
    using type = typename C::Scalar;
};
template <class C>
using element_t = typename element_type<C>::type;

/// Uniform element access for Eigen vector expressions and sized ranges (spans, vectors).
template <class C>
class reader {
public:
    explicit reader(const C& c) : c_(c) {
        if constexpr (!eigen_dense<C>) first_ = std::ranges::begin(c_);
    }
    std::size_t size() const {
        if constexpr (eigen_dense<C>)
            return static_cast<std::size_t>(c_.size());
        else
            return static_cast<std::size_t>(std::ranges::size(c_));
    }
    auto operator[](std::size_t i) const {
        if constexpr (eigen_dense<C>)
            return c_.coeff(static_cast<Eigen::Index>(i));
        else
            return first_[static_cast<std::ranges::range_difference_t<C>>(i)];
    }

private:
    const C& c_;
    [[no_unique_address]] std::conditional_t<eigen_dense<C>, char, std::ranges::iterator_t<const C>> first_{};
};

/// The elements as a contiguous array when they are stored as one (vectors, spans, Eigen vectors and rows
/// of row-major matrices), else null.
template <class C>
const element_t<C>* contiguous_data(const C& c) {
    if constexpr (eigen_dense<C>) {
        if constexpr ((C::Flags & Eigen::DirectAccessBit) != 0)
            return c.innerStride() == 1 || c.size() <= 1 ? c.data() : nullptr;
        else
            return nullptr;
    } else if constexpr (std::ranges::contiguous_range<const C>) {
        return std::ranges::data(c);
    } else {
        return nullptr;
    }
}

/// Sort key for a float or double whose unsigned order is the numeric order: 2^(b-1) + magnitude for
/// positive values and 2^(b-1) - magnitude for negative ones. Both zeros map to 2^(b-1), so they merge, and
/// trailing zero bits of the input survive (fp16 data in a float leaves 13 of them for the sort to skip).
template <class T>
using key_t = std::conditional_t<std::is_same_v<T, float>, std::uint32_t, std::uint64_t>;

/// The sort key of an IEEE bit pattern of any width (the formula above, in K's width).
template <std::unsigned_integral K>
constexpr K key_of_bits(K bits) noexcept {
    constexpr K sign = K(1) << (sizeof(K) * 8 - 1);
    const auto magnitude = static_cast<K>(bits & (sign - 1));
    return static_cast<K>((bits & sign) != 0 ? sign - magnitude : sign + magnitude);
}

/// The bit pattern whose key is `key` (key_of_bits' inverse; the zero key gives +0.0).
template <std::unsigned_integral K>
constexpr K bits_of_key(K key) noexcept {
    constexpr K sign = K(1) << (sizeof(K) * 8 - 1);
    return static_cast<K>(key >= sign ? key - sign : sign | (sign - key));
}

template <class T>
inline key_t<T> sort_key(T value) noexcept {
    return key_of_bits(std::bit_cast<key_t<T>>(value));
}

/// The value whose sort key is `key`.
template <class T>
inline T value_of_key(key_t<T> key) noexcept {
    return std::bit_cast<T>(bits_of_key(key));
}

/// sort_key for fp16 bit patterns (16-bit keys).
inline std::uint16_t half_sort_key(std::uint16_t half) noexcept { return key_of_bits(half); }

/// The fp16 value (as float) whose half_sort_key is `key`.
inline float value_of_half_key(std::uint16_t key) noexcept { return half_bits_to_float(bits_of_key(key)); }

/// An entry in the radix sort: its reduced key and its index in the row.
template <class T>
struct sort_item {
    key_t<T> key;
    std::uint32_t index;
};

/// First index i in [lo, hi) with y[i] >= c (hi if none), for ascending y. The search halves the range a
/// fixed number of times and picks each half without a branch: the outcome of a comparison is
/// unpredictable, and a mispredicted branch costs more than the whole step.
inline std::size_t lower_bound_index(const double* y, std::size_t lo, std::size_t hi, double c) {
    if (lo >= hi) return lo;
    const double* base = y + lo;
    std::size_t length = hi - lo;
    while (length > 1) {
        const std::size_t half = length / 2;
        base += static_cast<std::size_t>(base[half - 1] < c) * half;  // no branch: a flag times the step
        length -= half;
    }
    return static_cast<std::size_t>(base - y) + (*base < c ? 1 : 0);
}

/// Prefix sums of w, w y and w y^2 over sorted groups; sum(a, b) covers groups [a, b).
struct prefix_sums {
    const double* s0;
    const double* s1;
    const double* s2;

    /// Within-cluster cost of groups [a, b) around their weighted mean (a < b), never negative. The
    /// subtracted term is at most the first, which also covers a weight that vanished in the prefix sums
    /// (weights 2^53 times smaller than the ones before them add nothing to s0; then 0 / 0 or x / 0 here):
    /// such an interval weighs nothing next to the others and costs 0, not NaN.
    double interval_cost(std::size_t a, std::size_t b) const {
        const double w = s0[b] - s0[a];
        const double wy = s1[b] - s1[a];
        const double wyy = s2[b] - s2[a];
        const double explained = wy * wy / w;
        return explained < wyy ? wyy - explained : 0.0;
    }
    /// Cost of groups [a, b) around the centre c (a <= b), never negative.
    double cost_around(std::size_t a, std::size_t b, double c) const {
        const double w = s0[b] - s0[a];
        const double wy = s1[b] - s1[a];
        const double wyy = s2[b] - s2[a];
        return std::max(0.0, wyy - 2.0 * c * wy + c * c * w);
    }
};

/// One layer of the dynamic programme: for j in a range,
///   D[j] = s2[j] + min_a g(a, j),   g(a, j) = reduced[a] - (s1[j] - s1[a])^2 / (s0[j] - s0[a]),
/// with reduced[a] = D_previous[a] - s2[a], over a in [lower(j), min(j - 1, cap)]. The smallest minimiser
/// is non-decreasing in j (the cost satisfies the quadrangle inequality) and at least the previous layer's
/// minimiser at j, so a divide and conquer over j narrows every search to the minimisers of its
/// neighbours. Cells above `bound` cannot lie on an optimal path; once one is found, the cells right of it
/// are skipped (D is non-decreasing in j).
struct layer_solver {
    static constexpr std::size_t sweep_candidates = 8;  // measured: 8 to 16 is fastest
    prefix_sums s;
    const double* reduced;
    double* value;                      // D of this layer, indexed by j
    std::uint32_t* choice;              // minimiser of this layer, indexed by j
    const std::uint32_t* lower;         // previous layer's minimisers, indexed by j; null for layer 2
    double bound;
    mutable std::size_t first_pruned;   // leftmost cell found beyond the bound; every cell left of it is set
    /// Whether some group weighs so little against the total that an interval's weight can vanish in (or
    /// be mostly rounding noise of) a difference of prefix sums; then every cost is clamped at 0 (see g),
    /// which costs about 5% at k = 16. Other rows skip the clamp (see exact_partition).
    bool guarded = true;

    /// The first candidate for cell j: a_begin, or the previous layer's minimiser at j when larger. In exact
    /// arithmetic that never exceeds the last candidate (the minimiser of a cell to the right), but rounding
    /// can break near-ties between neighbouring candidates non-monotonically; callers clamp it to the last
    /// candidate, so that no cell is left without one (which would read past the sums and set a cell
    /// to infinity, pruning the rest of its layer).
    std::size_t lower_bound(std::size_t j, std::size_t a_begin) const {
        return lower != nullptr ? std::max(a_begin, std::size_t{lower[j]}) : a_begin;
    }

    /// Guarded (see `guarded`), as interval_cost: the subtracted term is at most s2[j] - s2[a], so a cost
    /// is never negative, and a weight that vanished in the prefix sums (0 / 0) or kept only rounding noise
    /// gives 0, not NaN or a large negative number. vminpd returns its second operand when the first is
    /// NaN, so the vector forms below compute the same as this one.
    template <bool Guarded>
    double g(std::size_t a, std::size_t j) const {
        const double w = s.s0[j] - s.s0[a];
        const double wy = s.s1[j] - s.s1[a];
        const double explained = wy * wy / w;
        if constexpr (Guarded) {
            const double wyy = s.s2[j] - s.s2[a];
            return reduced[a] - (explained < wyy ? explained : wyy);
        } else {
            return reduced[a] - explained;
        }
    }

    /// min_a g(a, j) over a in [lo, hi] (lo <= hi < j) and its smallest minimiser.
    template <bool Guarded>
    std::pair<double, std::size_t> scan(std::size_t j, std::size_t lo, std::size_t hi) const {
#if defined(__AVX2__)
        if (hi - lo >= 4) {
            const __m256d w_j = _mm256_set1_pd(s.s0[j]);
            const __m256d wy_j = _mm256_set1_pd(s.s1[j]);
            [[maybe_unused]] const __m256d wyy_j = _mm256_set1_pd(s.s2[j]);
            const auto evaluate = [&](std::size_t a) {
                const __m256d w = _mm256_sub_pd(w_j, _mm256_loadu_pd(s.s0 + a));
                const __m256d wy = _mm256_sub_pd(wy_j, _mm256_loadu_pd(s.s1 + a));
                __m256d explained = _mm256_div_pd(_mm256_mul_pd(wy, wy), w);
                if constexpr (Guarded)
                    explained = _mm256_min_pd(explained, _mm256_sub_pd(wyy_j, _mm256_loadu_pd(s.s2 + a)));
                return _mm256_sub_pd(_mm256_loadu_pd(reduced + a), explained);
            };
            const __m256d lanes = _mm256_setr_pd(0, 1, 2, 3);
            const __m256d four = _mm256_set1_pd(4);
            __m256d index0 = _mm256_add_pd(lanes, _mm256_set1_pd(static_cast<double>(lo)));
            __m256d best0 = evaluate(lo);
            __m256d at0 = index0;
            __m256d best1 = _mm256_set1_pd(std::numeric_limits<double>::infinity());
            __m256d at1 = index0;
            std::size_t a = lo + 4;
            index0 = _mm256_add_pd(index0, four);
            // Two independent accumulators hide the latency of compare and blend.
            for (; a + 7 <= hi; a += 8) {
                const __m256d index1 = _mm256_add_pd(index0, four);
                const __m256d v0 = evaluate(a);
                const __m256d v1 = evaluate(a + 4);
                const __m256d better0 = _mm256_cmp_pd(v0, best0, _CMP_LT_OQ);
                const __m256d better1 = _mm256_cmp_pd(v1, best1, _CMP_LT_OQ);
                best0 = _mm256_blendv_pd(best0, v0, better0);
                at0 = _mm256_blendv_pd(at0, index0, better0);
                best1 = _mm256_blendv_pd(best1, v1, better1);
                at1 = _mm256_blendv_pd(at1, index1, better1);
                index0 = _mm256_add_pd(index1, four);
            }
            for (; a <= hi; a += 4) {
                // The last vector may overlap the previous one: repeated candidates change nothing.
                const std::size_t first = a + 3 <= hi ? a : hi - 3;
                const __m256d index = _mm256_add_pd(lanes, _mm256_set1_pd(static_cast<double>(first)));
                const __m256d v = evaluate(first);
                const __m256d better = _mm256_cmp_pd(v, best1, _CMP_LT_OQ);
                best1 = _mm256_blendv_pd(best1, v, better);
                at1 = _mm256_blendv_pd(at1, index, better);
            }
            // Reduce to one lane: the smaller value, and the smaller index on ties.
            const auto merge = [](__m256d& value, __m256d& at, __m256d other_value, __m256d other_at) {
                const __m256d take = _mm256_or_pd(
                    _mm256_cmp_pd(other_value, value, _CMP_LT_OQ),
                    _mm256_and_pd(_mm256_cmp_pd(other_value, value, _CMP_EQ_OQ), _mm256_cmp_pd(other_at, at, _CMP_LT_OQ)));
                value = _mm256_blendv_pd(value, other_value, take);
                at = _mm256_blendv_pd(at, other_at, take);
            };
            merge(best0, at0, best1, at1);
            merge(best0, at0, _mm256_permute2f128_pd(best0, best0, 1), _mm256_permute2f128_pd(at0, at0, 1));
            merge(best0, at0, _mm256_permute_pd(best0, 0b0101), _mm256_permute_pd(at0, 0b0101));
            return {_mm256_cvtsd_f64(best0), static_cast<std::size_t>(_mm256_cvtsd_f64(at0))};
        }
#endif
        double best = g<Guarded>(lo, j);
        std::size_t best_a = lo;
        for (std::size_t a = lo + 1; a <= hi; ++a) {
            const double v = g<Guarded>(a, j);
            if (v < best) {
                best = v;
                best_a = a;
            }
        }
        return {best, best_a};
    }

    /// Every cell j in [j_begin, j_end) by trying each candidate in [a_begin, a_end]: once the candidates
    /// are few, this beats halving further. Vectorised over four consecutive cells, which share the
    /// candidates from the first cell's lower bound (a wider range than the others' own bounds, so the
    /// same minimum) up to j - 1; the last three candidates are masked per cell (a < j).
    template <bool Guarded>
    void sweep(std::size_t j_begin, std::size_t j_end, std::size_t a_begin, std::size_t a_end) const {
#if defined(__AVX2__)
        if (j_end - j_begin >= 4) {
            const __m256d one = _mm256_set1_pd(1);
            const __m256d lane = _mm256_setr_pd(0, 1, 2, 3);
            for (std::size_t block = j_begin; block < j_end; block += 4) {
                const std::size_t j = std::min(block, j_end - 4);  // the last block may overlap the previous one
                const std::size_t last = std::min(a_end, j + 2);
                const std::size_t first = std::min(last, lower_bound(j, a_begin));
                const __m256d w_j = _mm256_loadu_pd(s.s0 + j);
                const __m256d wy_j = _mm256_loadu_pd(s.s1 + j);
                [[maybe_unused]] const __m256d wyy_j = _mm256_loadu_pd(s.s2 + j);
                __m256d best = _mm256_set1_pd(std::numeric_limits<double>::infinity());
                __m256d at = _mm256_setzero_pd();
                __m256d index = _mm256_set1_pd(static_cast<double>(first));
                std::size_t a = first;
                const auto candidate = [&](std::size_t c) {
                    const __m256d w = _mm256_sub_pd(w_j, _mm256_broadcast_sd(s.s0 + c));
                    const __m256d wy = _mm256_sub_pd(wy_j, _mm256_broadcast_sd(s.s1 + c));
                    __m256d explained = _mm256_div_pd(_mm256_mul_pd(wy, wy), w);
                    if constexpr (Guarded)
                        explained = _mm256_min_pd(explained, _mm256_sub_pd(wyy_j, _mm256_broadcast_sd(s.s2 + c)));
                    return _mm256_sub_pd(_mm256_broadcast_sd(reduced + c), explained);
                };
                for (const std::size_t shared = std::min(last, j - 1); a <= shared; ++a) {
                    const __m256d v = candidate(a);
                    const __m256d better = _mm256_cmp_pd(v, best, _CMP_LT_OQ);
                    best = _mm256_blendv_pd(best, v, better);
                    at = _mm256_blendv_pd(at, index, better);
                    index = _mm256_add_pd(index, one);
                }
                for (; a <= last; ++a) {  // a >= j: only cells j + 1 + (a - j) and up may use it
                    const __m256d v = candidate(a);
                    const __m256d allowed = _mm256_cmp_pd(lane, _mm256_set1_pd(static_cast<double>(a - j)), _CMP_GT_OQ);
                    const __m256d better = _mm256_and_pd(allowed, _mm256_cmp_pd(v, best, _CMP_LT_OQ));
                    best = _mm256_blendv_pd(best, v, better);
                    at = _mm256_blendv_pd(at, index, better);
                    index = _mm256_add_pd(index, one);
                }
                const __m256d result = _mm256_add_pd(_mm256_loadu_pd(s.s2 + j), best);
                _mm256_storeu_pd(value + j, result);
                _mm_storeu_si128(reinterpret_cast<__m128i*>(choice + j), _mm256_cvttpd_epi32(at));
                const int beyond = _mm256_movemask_pd(_mm256_cmp_pd(result, _mm256_set1_pd(bound), _CMP_GT_OQ));
                if (beyond != 0) {  // D grows with j: the cells right of this one are beyond the bound too
                    first_pruned = std::min(first_pruned, j + static_cast<std::size_t>(std::countr_zero(static_cast<unsigned>(beyond))));
                    return;
                }
            }
            return;
        }
#endif
        for (std::size_t j = j_begin; j < j_end; ++j) {
            const std::size_t last = std::min(a_end, j - 1);
            const std::size_t first = std::min(last, lower_bound(j, a_begin));
            double best = g<Guarded>(first, j);
            std::size_t best_a = first;
            for (std::size_t a = first + 1; a <= last; ++a) {
                const double v = g<Guarded>(a, j);
                if (v < best) {
                    best = v;
                    best_a = a;
                }
            }
            value[j] = s.s2[j] + best;
            choice[j] = static_cast<std::uint32_t>(best_a);
            if (value[j] > bound) {
                first_pruned = std::min(first_pruned, j);
                return;
            }
        }
    }

    /// A range of cells [j_begin, j_end) whose minimisers lie in [a_begin, a_end].
    struct task {
        std::uint32_t j_begin, j_end, a_begin, a_end;
    };

    /// Fills j in [j_begin, j_end) knowing that their minimisers lie in [a_begin, a_end]: a divide and
    /// conquer (each middle cell's minimiser splits the candidates of the cells left and right of it), one
    /// level of the recursion at a time. The cells of a level are independent, so their searches overlap
    /// in the processor; depth first, each search waited for the one before it to find its minimiser
    /// (level by level is 1-4% faster overall at k = 4..16 and 5-10% at k = 256, with the same results).
    /// The tasks of a level are in order of j: once a cell is beyond the bound, the tasks right of it are
    /// skipped.
    void solve(std::size_t j_begin, std::size_t j_end, std::size_t a_begin, std::size_t a_end,
               std::vector<task>& level, std::vector<task>& next_level) const {
        level.clear();
        if (j_begin < j_end)
            level.push_back({static_cast<std::uint32_t>(j_begin), static_cast<std::uint32_t>(j_end),
                             static_cast<std::uint32_t>(a_begin), static_cast<std::uint32_t>(a_end)});
        while (!level.empty()) {
            next_level.clear();
            for (const task& t : level) {
                if (t.j_begin >= first_pruned) break;  // tasks are in order of j: the rest are beyond too
                if (t.a_end - t.a_begin < sweep_candidates) {
                    if (guarded)
                        sweep<true>(t.j_begin, t.j_end, t.a_begin, t.a_end);
                    else
                        sweep<false>(t.j_begin, t.j_end, t.a_begin, t.a_end);
                    continue;
                }
                const std::uint32_t j = t.j_begin + (t.j_end - t.j_begin) / 2;
                const std::size_t hi = std::min<std::size_t>(t.a_end, j - 1);
                const std::size_t lo = std::min(hi, lower_bound(j, t.a_begin));
                const auto [best, best_a] = guarded ? scan<true>(j, lo, hi) : scan<false>(j, lo, hi);
                value[j] = s.s2[j] + best;
                choice[j] = static_cast<std::uint32_t>(best_a);
                const auto a = static_cast<std::uint32_t>(best_a);
                if (t.j_begin < j) next_level.push_back({t.j_begin, j, t.a_begin, a});
                if (value[j] > bound) {  // j and everything right of it are beyond the bound
                    first_pruned = std::min<std::size_t>(first_pruned, j);
                    break;
                }
                if (j + 1 < t.j_end) next_level.push_back({j + 1, t.j_end, a, t.a_end});
            }
            std::swap(level, next_level);
        }
    }
};

/// The dynamic programme in one direction over the sorted groups (forward, or backward on the mirrored
/// groups), for layers 1..layers of a k-clustering. Layer l only needs prefixes j in [l, m - (k - l)]
/// (the other k - l clusters need a group each), and only those with D_l[j] <= bound: reach[l] is the
/// last such j.
struct dp_direction {
    std::vector<double> s0, s1, s2;  // prefix sums in this direction
    std::vector<double> value, next_value, reduced;
    std::vector<std::uint32_t> choice;  // layer l >= 2 at (l - 2) * (m + 1) + j
    std::vector<std::size_t> reach;
    std::vector<layer_solver::task> level, next_level;  // scratch of layer_solver::solve

    prefix_sums sums() const { return {s0.data(), s1.data(), s2.data()}; }

    /// Runs the layers; false when the bound left no feasible prefix (then retry without a bound). The last
    /// layer is only needed from j = last_from on (when the other direction already bounds the meeting).
    bool run(std::size_t m, std::size_t k, std::size_t layers, double bound, bool guarded, std::size_t last_from = 0) {
        const prefix_sums s = sums();
        const std::size_t stride = m + 1;
        value.resize(stride);
        next_value.resize(stride);
        reduced.resize(stride);
        choice.resize((layers - 1) * stride);
        reach.assign(layers + 1, 0);
        std::size_t last = 0;
        for (std::size_t j = 1; j <= m - (k - 1); ++j) {
            value[j] = s.interval_cost(0, j);
            if (!(value[j] <= bound)) break;
            last = j;
        }
        if (last == 0) return false;
        reach[1] = last;
        for (std::size_t l = 2; l <= layers; ++l) {
            const std::size_t previous_reach = reach[l - 1];
            for (std::size_t a = l - 1; a <= previous_reach; ++a) reduced[a] = value[a] - s.s2[a];
            const std::size_t j_last = m - (k - l);
            std::uint32_t* lower = l >= 3 ? choice.data() + (l - 3) * stride : nullptr;
            if (lower != nullptr)  // beyond its reach, the previous layer's last minimiser is still a lower bound
                std::fill(lower + previous_reach + 1, lower + j_last + 1, lower[previous_reach]);
            layer_solver solver{s,     reduced.data(), next_value.data(), choice.data() + (l - 2) * stride,
                                lower, bound,          j_last + 1,        guarded};
            // Minimisers never exceed the previous layer's reach: a cell within the bound has its
            // (l - 1)-cluster prefix within the bound too.
            const std::size_t j_first = l == layers ? std::max(l, last_from) : l;
            if (j_first > j_last) return false;
            solver.solve(j_first, j_last + 1, lower != nullptr ? std::max<std::size_t>(l - 1, lower[j_first]) : l - 1,
                         previous_reach, level, next_level);
            if (solver.first_pruned <= j_first) return false;
            reach[l] = solver.first_pruned - 1;
            std::swap(value, next_value);
        }
        return true;
    }
};

/// Scratch memory of the Lloyd solver (kept in the per-thread workspace).
struct lloyd_scratch {
    struct move_record {
        double saving;
        std::size_t cell, at;
    };
    std::vector<double> centre, cell, saved_centre, saved_cell;
    std::vector<std::uint32_t> start, moved_start, saved_boundaries;
    std::vector<move_record> splits, merges, pairs, by_cost;
    std::vector<double> seen_centre;           // states known to end where an earlier restart ended,
    std::vector<std::uint32_t> seen_start;     // k centres and k + 1 boundaries each

    /// Best 2-splits already found for the current row. A split depends only on its cell [a, b), and the
    /// restarts and rounds of split-and-merge meet the same cells often (on the benchmark's rows 10% /
    /// 20% / 35% of the splits at k = 4 / 8 / 16). Entries of earlier rows have an older generation.
    struct split_entry {
        std::uint32_t a = 0, b = 0, at = 0, generation = 0;
    };
    static constexpr std::size_t split_cache_size = 512;  // a power of two
    std::vector<split_entry> split_cache;
    std::uint32_t split_generation = 0;

    /// Forgets the splits of the previous row (callers start every row with it; the first call sets the
    /// cache up).
    void new_row() {
        if (split_cache.empty() || ++split_generation == 0) {  // first use, or the generation wrapped
            split_cache.assign(split_cache_size, split_entry{});
            split_generation = 1;
        }
    }
    split_entry& split_slot(std::uint32_t a, std::uint32_t b) {
        const std::uint32_t hash = (a * 0x9E3779B1u) ^ (b * 0x85EBCA77u);
        return split_cache[(hash >> 16) & (split_cache_size - 1)];
    }
};

/// Greedy weighted k-means++ seeding and Lloyd iterations on sorted groups y (ascending, shifted) with
/// prefix sums s. Cells are intervals between midpoints of sorted centres, found by binary search, and
/// their costs come from the prefix sums, so an iteration costs O(k log m).
struct lloyd_solver {
    const double* y;
    prefix_sums s;
    std::size_t m;
    lloyd_scratch& scratch;
    std::vector<double>& centre = scratch.centre;       // sorted
    std::vector<std::uint32_t>& start = scratch.start;  // cell c is groups [start[c], start[c + 1])
    std::vector<double>& cell = scratch.cell;           // cell costs

    /// First group in [lo, hi) with y >= c, or hi.
    std::size_t first_at_least(double c, std::size_t lo, std::size_t hi) const {
#if defined(__AVX2__)
        // Halve without branches down to a short range, then count its groups below c four at a time.
        if (lo >= hi) return lo;
        const double* base = y + lo;
        std::size_t length = hi - lo;
        while (length > 16) {
            const std::size_t half = length / 2;
            base += static_cast<std::size_t>(base[half - 1] < c) * half;
            length -= half;
        }
        const auto from = static_cast<std::size_t>(base - y);  // the answer is in [from, from + length]
        const std::size_t rounded = (length + 3) & ~std::size_t{3};
        if (from + rounded <= m) return from + std::min(count_below(c, from, rounded), length);
        return lower_bound_index(y, from, from + length, c);
#else
        return lower_bound_index(y, lo, hi, c);
#endif
    }
    /// First group in [lo, hi) with y >= c, or hi. Boundaries move little between calls: the eight groups
    /// around `hint` are compared at once; when the answer lies outside them, steps doubling away from them
    /// bracket it before a search of the bracket, so the cost grows with the log of the distance moved, not
    /// of m.
    std::size_t first_at_least_near(double c, std::size_t hint, std::size_t lo, std::size_t hi) const {
#if defined(__AVX2__)
        if (hint >= lo + 4 && hint + 4 <= hi) {
            const __m256d threshold = _mm256_set1_pd(c);
            const int below = _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(y + hint - 4), threshold, _CMP_LT_OQ)) |
                              (_mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(y + hint), threshold, _CMP_LT_OQ)) << 4);
            const int count = std::popcount(static_cast<unsigned>(below));  // y is sorted: the lowest `count` groups
            if (count > 0 && count < 8) return hint - 4 + static_cast<std::size_t>(count);
            // Once bracketed between a group below c and one not below it, a short bracket's groups are
            // counted four at a time (independent loads) rather than halved (each load waiting for the last).
            if (count == 0) {  // y[end] >= c: the answer is at most end
                std::size_t end = hint - 4;
                for (std::size_t step = 8;; step *= 2) {
                    if (end < lo + step) return first_at_least(c, lo, end);
                    if (y[end - step] < c)
                        return step <= scan_limit ? end - step + count_below(c, end - step, step) : first_at_least(c, end - step + 1, end);
                    end -= step;
                }
            }
            std::size_t begin = hint + 4;  // every group before begin is below c
            for (std::size_t step = 8;; step *= 2) {
                if (begin + step >= hi) return first_at_least(c, begin, hi);
                if (y[begin + step - 1] >= c)
                    return step <= scan_limit ? begin + count_below(c, begin, step) : first_at_least(c, begin, begin + step - 1);
                begin += step;
            }
        }
#else
        (void)hint;
#endif
        return first_at_least(c, lo, hi);
    }
#if defined(__AVX2__)
    static constexpr std::size_t scan_limit = 32;
    /// How many of the groups [from, from + count) are below c (count a multiple of 4).
    std::size_t count_below(double c, std::size_t from, std::size_t count) const {
        const __m256d threshold = _mm256_set1_pd(c);
        std::size_t below = 0;
        for (std::size_t g = from; g < from + count; g += 4)
            below += static_cast<std::size_t>(std::popcount(static_cast<unsigned>(
                _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(y + g), threshold, _CMP_LT_OQ)))));
        return below;
    }
#endif
    /// The weighted mean of groups [a, b) (a < b), kept inside their range; their middle when their weight
    /// vanished in the prefix sums (0 / 0 there; see prefix_sums::interval_cost).
    double cell_mean(std::size_t a, std::size_t b) const {
        const double w = s.s0[b] - s.s0[a];
        if (!(w > 0)) return 0.5 * (y[a] + y[b - 1]);
        return std::clamp((s.s1[b] - s.s1[a]) / w, y[a], y[b - 1]);
    }
    std::size_t split(std::size_t c, std::size_t hint) const {
        return first_at_least_near(0.5 * (centre[c] + centre[c + 1]), hint, 0, m);
    }

    /// One weighted D^2 draw in progress: a bisection for the smallest t whose cumulative cost over
    /// [from, t + 1) around the cell's centre `at` exceeds `target`, within [lo, hi).
    struct draw {
        std::size_t from, lo, hi;
        double target, at;
    };
    /// Starts a draw: picks the cell the uniform number falls in, proportionally to the cell costs.
    draw start_draw(synthetic::rng& random, double total) const {
        double target = random.uniform() * total;
        std::size_t c = 0;
        while (c + 1 < centre.size() && target >= cell[c]) {
            target -= cell[c];
            ++c;
        }
        return {start[c], start[c], start[c + 1], target, centre[c]};
    }
    /// Halves a draw's range (call while d.hi > d.lo + 1).
    void probe(draw& d) const {
        const std::size_t mid = d.lo + (d.hi - d.lo) / 2;
        if (s.cost_around(d.from, mid, d.at) > d.target)
            d.hi = mid;
        else
            d.lo = mid;
    }
    /// A finished draw's group; m when its cell was empty.
    std::size_t drawn(const draw& d) const { return d.lo < d.hi ? d.lo : m; }

    /// A group drawn with probability proportional to w (y - nearest centre)^2; m if none can be drawn.
    std::size_t sample(synthetic::rng& random, double total) const {
        draw d = start_draw(random, total);
        while (d.hi > d.lo + 1) probe(d);
        return drawn(d);
    }

    /// Two draws as by sample(), in the same order and with the same probes, side by side: each is a
    /// bisection whose probes wait on each other, so two at once keep the processor busier.
    [[gnu::noinline]] std::array<std::size_t, 2> sample_pair(synthetic::rng& random, double total) const {
        std::array<draw, 2> d{start_draw(random, total), start_draw(random, total)};  // in this order
        while (d[0].hi > d[0].lo + 1 && d[1].hi > d[1].lo + 1) {
            probe(d[0]);
            probe(d[1]);
        }
        for (draw& x : d)
            while (x.hi > x.lo + 1) probe(x);
        return {drawn(d[0]), drawn(d[1])};
    }

    /// Where a new centre v = y[g] (not a centre yet) goes: its sorted position `at` among the centres and
    /// the boundaries of its cell, which lie inside the region of the neighbouring cells.
    struct placement {
        std::size_t at, region_begin, region_end;  // the neighbouring cells' region
        std::size_t left_end, right_begin;         // the new cell
    };
    placement place(double v, std::size_t g, std::size_t at) const {
        const std::size_t count = centre.size();
        const bool has_left = at > 0, has_right = at < count;
        const std::size_t region_begin = has_left ? start[at - 1] : 0;
        const std::size_t region_end = has_right ? start[at + 1] : m;
        // The midpoints of v with its neighbours lie on either side of v and of the neighbours' midpoint,
        // whose boundary is start[at]: the new cell's left end is at most g and start[at], its right
        // begin at least both, so each search covers about one cell instead of two.
        std::size_t left_limit = g, right_limit = g;
        if (has_left && has_right) {
            left_limit = std::min<std::size_t>(g, start[at]);
            right_limit = std::max<std::size_t>(g, start[at]);
        }
        const std::size_t left_end = has_left ? first_at_least(0.5 * (centre[at - 1] + v), region_begin, left_limit) : region_begin;
        const std::size_t right_begin = has_right ? first_at_least(0.5 * (v + centre[at]), right_limit, region_end) : region_end;
        return {at, region_begin, region_end, left_end, right_begin};
    }

    /// Change of the total cost if v were added as placed.
    double insertion_delta(double v, const placement& p) const {
        const std::size_t at = p.at;
        double before = 0, after = s.cost_around(p.left_end, p.right_begin, v);
        if (at > 0) {
            before += cell[at - 1];
            after += s.cost_around(p.region_begin, p.left_end, centre[at - 1]);
        }
        if (at < centre.size()) {
            before += cell[at];
            after += s.cost_around(p.right_begin, p.region_end, centre[at]);
        }
        return after - before;
    }

    /// Cells of the current centres; the previous boundaries (when their count matches) are search hints.
    void recompute_cells() {
        const std::size_t count = centre.size();
        const bool hinted = start.size() == count + 1;
        start.resize(count + 1);
        start[0] = 0;
        start[count] = static_cast<std::uint32_t>(m);
        for (std::size_t c = 0; c + 1 < count; ++c)
            start[c + 1] = static_cast<std::uint32_t>(split(c, hinted ? start[c + 1] : m * (c + 1) / count));
        recompute_costs();
    }
    /// The cell costs of the current centres and boundaries.
    void recompute_costs() {
        cell.resize(centre.size());
        for (std::size_t c = 0; c < centre.size(); ++c) cell[c] = s.cost_around(start[c], start[c + 1], centre[c]);
    }

    /// Inserts centre v as placed (by place(), with the current centres), updating only the cells next to it.
    void insert_centre(double v, const placement& p) {
        const std::size_t at = p.at, count = centre.size();
        centre.insert(centre.begin() + static_cast<std::ptrdiff_t>(at), v);
        start.insert(start.begin() + static_cast<std::ptrdiff_t>(at) + 1, static_cast<std::uint32_t>(at < count ? 0 : m));
        cell.insert(cell.begin() + static_cast<std::ptrdiff_t>(at), 0.0);
        // Now centre[at] = v; boundaries at and at + 1 are new.
        if (at > 0) start[at] = static_cast<std::uint32_t>(p.left_end);
        if (at < count) start[at + 1] = static_cast<std::uint32_t>(p.right_begin);
        for (std::size_t c = at > 0 ? at - 1 : 0; c <= std::min(at + 1, count); ++c)
            cell[c] = s.cost_around(start[c], start[c + 1], centre[c]);
    }

    double total() const {
        double t = 0;
        for (double c : cell) t += c;
        return t;
    }

    /// Greedy weighted k-means++: each new centre is the best of `trials` weighted D^2 samples (the one that
    /// lowers the cost most).
    void seed(synthetic::rng& random, std::size_t k, std::size_t trials) {
        if (trials == 2)
            seed_with<true>(random, k, 2);
        else
            seed_with<false>(random, k, trials);
    }
    /// Two draws per centre are made side by side (Paired); more (k > 16) each in turn: pairs of them
    /// measured 4% slower at k = 33 and 256, and so did a choice between the two inside one loop.
    template <bool Paired>
    void seed_with(synthetic::rng& random, std::size_t k, std::size_t trials) {
        const std::size_t first = std::min<std::size_t>(
            m - 1, static_cast<std::size_t>(std::upper_bound(s.s0 + 1, s.s0 + m + 1, random.uniform() * s.s0[m]) - (s.s0 + 1)));
        centre.assign(1, y[first]);
        recompute_cells();
        while (centre.size() < k) {
            const double current = total();
            double best_delta = std::numeric_limits<double>::infinity();
            double best_value = 0;
            placement best_place{};  // the best sample's cell, found once and reused to insert it
            [[maybe_unused]] std::array<std::size_t, 2> pair{};
            if constexpr (Paired) pair = sample_pair(random, current);
            for (std::size_t t = 0; t < trials; ++t) {
                std::size_t g = 0;
                if constexpr (Paired)
                    g = pair[t];
                else
                    g = sample(random, current);
                if (g >= m) continue;
                const double v = y[g];
                const auto at = static_cast<std::size_t>(std::lower_bound(centre.begin(), centre.end(), v) - centre.begin());
                if (at < centre.size() && centre[at] == v) continue;
                const placement p = place(v, g, at);
                const double delta = insertion_delta(v, p);
                if (delta < best_delta) {
                    best_delta = delta;
                    best_value = v;
                    best_place = p;
                }
            }
            if (!(best_delta < std::numeric_limits<double>::infinity())) {
                // Degenerate sampling (rounding): take the first group that is not a centre yet.
                for (std::size_t g = 0, c = 0; g < m; ++g) {
                    while (c < centre.size() && centre[c] < y[g]) ++c;
                    if (c == centre.size() || centre[c] != y[g]) {
                        best_value = y[g];
                        best_place = place(best_value, g, c);
                        break;
                    }
                }
            }
            insert_centre(best_value, best_place);
        }
    }

    /// Lloyd iterations until no cell boundary moves; returns the final cost.
    double iterate(int max_iterations) {
        if (max_iterations <= 0) {
            recompute_cells();
            return total();
        }
        const std::size_t count = centre.size();
        for (int iteration = 0; iteration < max_iterations; ++iteration) {
            for (std::size_t c = 0; c < count; ++c) {
                const std::size_t a = start[c], b = start[c + 1];
                if (a < b) centre[c] = cell_mean(a, b);
            }
            bool moved = false;
            for (std::size_t c = 0; c + 1 < count; ++c) {
                const auto b = static_cast<std::uint32_t>(split(c, start[c + 1]));
                moved |= b != start[c + 1];
                start[c + 1] = b;
            }
            if (!moved) break;
        }
        recompute_costs();  // the boundaries are those of the centres (every iteration ends by placing them)
        return total();
    }

    /// A good 2-split of groups [a, b) (b - a >= 2): 2-means by Lloyd, from a split at the weighted mean.
    std::size_t two_means_split(std::size_t a, std::size_t b) const {
        const auto clamp_split = [&](std::size_t t) { return std::clamp<std::size_t>(t, a + 1, b - 1); };
        std::size_t t = clamp_split(static_cast<std::size_t>(
            first_at_least(cell_mean(a, b), a, b)));
        for (int iteration = 0; iteration < 16; ++iteration) {
            const double left = cell_mean(a, t);
            const double right = cell_mean(t, b);
            const std::size_t next = clamp_split(first_at_least_near(0.5 * (left + right), t, a, b));  // t moves little
            if (next == t) break;
            t = next;
        }
        return t;
    }

    /// Lloyd stops in local optima where one cell spans two natural clusters while two neighbouring
    /// cells share one. A split-and-merge move fixes that: split a cell at its best 2-split point and merge
    /// an adjacent pair of other cells, then run Lloyd again; the moves are tried in order of estimated
    /// net saving and the first of `tries` that lowers the cost is kept. `cost` is the current total;
    /// returns the improved one. `settled` tells whether the result is a fixed point of the moves (a whole
    /// round found none that helps, or there are too few cells for one), rather than where the rounds ran
    /// out.
    double split_and_merge(int rounds, std::size_t tries, int max_iterations, double cost, bool& settled) {
        const std::size_t k = centre.size();
        settled = true;
        if (k < 3) return cost;
        if (scratch.split_cache.empty()) scratch.new_row();
        using move = lloyd_scratch::move_record;
        auto& splits = scratch.splits;
        auto& merges = scratch.merges;
        auto& pairs = scratch.pairs;
        auto& saved_centre = scratch.saved_centre;
        auto& saved_cell = scratch.saved_cell;
        auto& saved_boundaries = scratch.saved_boundaries;
        auto& moved_start = scratch.moved_start;
        constexpr std::size_t candidates = 2;
        for (int round = 0; round < rounds; ++round) {
            // Only the best `candidates` splits are used, and a split saves at most its cell's cost. So the
            // cells are taken from the costliest down, until one costs less than the second best saving
            // found: the cheaper ones' 2-splits are never computed. The best two and their order are the
            // same as from all cells unless savings tie; then all are computed in cell order.
            static_assert(candidates == 2);
            const auto split_of = [&](std::size_t c, double whole) {
                const std::size_t a = start[c], b = start[c + 1];
                auto& known = scratch.split_slot(static_cast<std::uint32_t>(a), static_cast<std::uint32_t>(b));
                if (known.generation != scratch.split_generation || known.a != a || known.b != b)
                    known = {static_cast<std::uint32_t>(a), static_cast<std::uint32_t>(b),
                             static_cast<std::uint32_t>(two_means_split(a, b)), scratch.split_generation};
                const std::size_t t = known.at;
                splits.push_back({whole - (s.interval_cost(a, t) + s.interval_cost(t, b)), c, t});
                return splits.back().saving;
            };
            auto& by_cost = scratch.by_cost;
            by_cost.clear();
            for (std::size_t c = 0; c < k; ++c)
                if (start[c + 1] - start[c] >= 2) by_cost.push_back({s.interval_cost(start[c], start[c + 1]), c, 0});
            const auto cheaper = [](const move& x, const move& y) { return x.saving < y.saving; };
            std::make_heap(by_cost.begin(), by_cost.end(), cheaper);  // a few are taken: no full sort
            splits.clear();
            double first = -std::numeric_limits<double>::infinity(), second = first;
            for (auto end = by_cost.end(); end != by_cost.begin(); --end) {
                std::pop_heap(by_cost.begin(), end, cheaper);
                const move& cell_cost = end[-1];
                if (cell_cost.saving < second) break;
                const double saving = split_of(cell_cost.cell, cell_cost.saving);
                if (saving > first) {
                    second = first;
                    first = saving;
                } else if (saving > second) {
                    second = saving;
                }
            }
            std::size_t at_least_second = 0;
            for (const move& x : splits) at_least_second += x.saving >= second;
            if (splits.size() >= 2 && !(first > second && at_least_second == 2)) {  // a tie: as from all cells
                splits.clear();
                for (std::size_t c = 0; c < k; ++c)
                    if (start[c + 1] - start[c] >= 2) split_of(c, s.interval_cost(start[c], start[c + 1]));
            }
            merges.clear();
            for (std::size_t c = 0; c + 1 < k; ++c)
                merges.push_back({-(s.interval_cost(start[c], start[c + 2]) - s.interval_cost(start[c], start[c + 1]) -
                                    s.interval_cost(start[c + 1], start[c + 2])),
                                  c, 0});
            const auto larger = [](const move& x, const move& y) { return x.saving > y.saving; };
            const std::size_t split_count = std::min(candidates, splits.size());
            const std::size_t merge_count = std::min(candidates + 2, merges.size());
            std::partial_sort(splits.begin(), splits.begin() + static_cast<std::ptrdiff_t>(split_count), splits.end(), larger);
            std::partial_sort(merges.begin(), merges.begin() + static_cast<std::ptrdiff_t>(merge_count), merges.end(), larger);
            pairs.clear();
            for (std::size_t i = 0; i < split_count; ++i)
                for (std::size_t j = 0; j < merge_count; ++j) {
                    const move& sp = splits[i];
                    const move& me = merges[j];
                    if (me.cell == sp.cell || me.cell + 1 == sp.cell) continue;
                    // Estimated net saving: Lloyd after the move often gains more, so a few moves are tried
                    // even when the estimate is negative.
                    pairs.push_back({sp.saving + me.saving, i, j});
                }
            std::sort(pairs.begin(), pairs.end(), larger);
            // The state before the moves: Lloyd's result, whose cells are those of its centres, so a failed
            // move restores it by copy (recomputing the cells would find the same ones).
            saved_centre = centre;
            saved_boundaries = start;
            saved_cell = cell;
            bool improved = false;
            for (std::size_t p = 0; p < std::min(pairs.size(), tries); ++p) {
                const move& pair = pairs[p];
                const move& sp = splits[pair.cell];
                const move& me = merges[pair.at];
                moved_start.clear();
                for (std::size_t c = 1; c < k; ++c)
                    if (c != me.cell + 1) moved_start.push_back(saved_boundaries[c]);
                moved_start.insert(std::upper_bound(moved_start.begin(), moved_start.end(), static_cast<std::uint32_t>(sp.at)),
                                   static_cast<std::uint32_t>(sp.at));
                for (std::size_t c = 0; c < k; ++c) {
                    const std::size_t a = c == 0 ? 0 : moved_start[c - 1], b = c + 1 == k ? m : moved_start[c];
                    centre[c] = cell_mean(a, b);
                }
                // The cells of these centres (their costs are left to iterate); each boundary lies near the
                // moved one it came from.
                for (std::size_t c = 0; c + 1 < k; ++c) start[c + 1] = static_cast<std::uint32_t>(split(c, moved_start[c]));
                const double moved_cost = iterate(max_iterations);
                if (moved_cost < cost) {
                    cost = moved_cost;
                    improved = true;
                    break;
                }
                centre = saved_centre;
                start = saved_boundaries;
                cell = saved_cell;
            }
            if (!improved) return cost;
        }
        settled = false;
        return cost;
    }

};

/// Ranks, among the values that occur, of small integers (below 2^16) given for n entries: a byte map marks
/// those that occur, and per block of 32 a bit mask and the rank of its first value (one 64-bit entry) make
/// any rank a popcount (tables of a few KB, which stay in L1 while entries look them up in random order).
/// Each build marks with its own byte value, so the map is cleared only once every 255 builds (clearing
/// it for every row cost about 0.4 us of a 24 us row of 4096).
struct occurrence_ranks {
    static constexpr std::size_t block = 32;
    // Whether build can list the values that occur (AVX-512 byte compress), which saves the callers a
    // store per entry.
#if defined(__AVX512BW__) && defined(__AVX512VBMI2__)
    static constexpr bool lists_values = true;
#else
    static constexpr bool lists_values = false;
#endif
    // Whether ranks_of finds 16 ranks at a time (AVX-512 gathers and popcounts); one at a time, a separate
    // pass over the entries costs more than it saves.
#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
    static constexpr bool vector_ranks = true;
#else
    static constexpr bool vector_ranks = false;
#endif
    std::vector<std::uint8_t> present;        // bytes equal to `mark` say the value occurs
    std::uint8_t mark = 0;                     // this build's (earlier builds' marks stay, uncleared)
    std::vector<std::uint64_t> blocks_info;  // per block: rank of its first value << 32 | mask of those that occur

    /// Marks value(i) for i < n (all below `range`); returns how many distinct values occur. With
    /// lists_values and `occurring` not null, also writes those values ascending to `occurring` (room for
    /// the count plus 64).
    template <class Value>
    std::uint32_t build(std::size_t n, std::size_t range, Value value,
                        [[maybe_unused]] std::uint16_t* occurring = nullptr) {
        const std::size_t blocks = range / block + 1;
        const std::size_t padded = (blocks + 1) / 2 * 2;  // whole pairs of blocks (64 marks)
        if (present.size() < padded * block) present.resize(padded * block, 0);
        if (mark == 255) {  // every mark value used: clear the map once every 255 builds
            std::fill(present.begin(), present.end(), std::uint8_t{0});
            mark = 0;
        }
        ++mark;
        const std::uint8_t m = mark;
        std::uint8_t* marks = present.data();
        // Four marks per iteration (one per iteration ran at half the store rate on Zen 4), their values
        // read before any is stored: a byte store may alias anything, which made the compiler reload what
        // `value` reads after each one.
        std::size_t i = 0;
        for (; i + 4 <= n; i += 4) {
            const std::size_t v0 = value(i), v1 = value(i + 1), v2 = value(i + 2), v3 = value(i + 3);
            marks[v0] = m;
            marks[v1] = m;
            marks[v2] = m;
            marks[v3] = m;
        }
        for (; i < n; ++i) marks[value(i)] = m;
        blocks_info.resize(padded);
        std::uint32_t count = 0;
        std::size_t b = 0;
#if defined(__AVX512BW__) && defined(__AVX512VBMI2__)
        if (occurring != nullptr) {
            // Two blocks at a time; the offsets of their marks, packed, are the values that occur there.
            const __m512i offsets = _mm512_set_epi64(0x3f3e3d3c3b3a3938, 0x3736353433323130, 0x2f2e2d2c2b2a2928,
                                                     0x2726252423222120, 0x1f1e1d1c1b1a1918, 0x1716151413121110,
                                                     0x0f0e0d0c0b0a0908, 0x0706050403020100);  // byte j holds j
            for (; b < blocks; b += 2) {
                const __m512i bytes = _mm512_loadu_si512(marks + b * block);
                const std::uint64_t bits = _mm512_cmpeq_epi8_mask(bytes, _mm512_set1_epi8(static_cast<char>(m)));
                const auto low_bits = static_cast<std::uint32_t>(bits);
                const auto high_bits = static_cast<std::uint32_t>(bits >> 32);
                const std::uint32_t middle = count + static_cast<std::uint32_t>(std::popcount(low_bits));
                const std::uint32_t total = middle + static_cast<std::uint32_t>(std::popcount(high_bits));
                blocks_info[b] = std::uint64_t{count} << 32 | low_bits;
                blocks_info[b + 1] = std::uint64_t{middle} << 32 | high_bits;
                const __m512i packed = _mm512_maskz_compress_epi8(bits, offsets);
                const __m512i first = _mm512_set1_epi16(static_cast<short>(b * block));
                _mm512_storeu_si512(occurring + count,
                                    _mm512_add_epi16(first, _mm512_cvtepu8_epi16(_mm512_castsi512_si256(packed))));
                if (total - count > 32)
                    _mm512_storeu_si512(occurring + count + 32,
                                        _mm512_add_epi16(first, _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(packed, 1))));
                count = total;
            }
        }
#endif
        for (; b < blocks; ++b) {
            std::uint32_t bits = 0;
#if defined(__AVX2__)
            const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(marks + b * block));
            bits = static_cast<std::uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(bytes, _mm256_set1_epi8(static_cast<char>(m)))));
#else
            for (std::size_t j = 0; j < block; ++j) bits |= static_cast<std::uint32_t>(marks[b * block + j] == m) << j;
#endif
            blocks_info[b] = std::uint64_t{count} << 32 | bits;
            count += static_cast<std::uint32_t>(std::popcount(bits));
        }
        return count;
    }
    /// The rank of v, a value that occurs: its block's first rank plus the values below v in its block.
    std::uint32_t rank(std::size_t v) const {
        const std::uint64_t info = blocks_info[v / block];
        const auto bits = static_cast<std::uint32_t>(info);
        const auto offset = static_cast<std::uint32_t>(v % block);
#if defined(__BMI2__)
        const std::uint32_t below = _bzhi_u32(bits, offset);
#else
        const std::uint32_t below = bits & ((std::uint32_t{1} << offset) - 1);
#endif
        return static_cast<std::uint32_t>(info >> 32) + static_cast<std::uint32_t>(std::popcount(below));
    }
    /// rank[i] = rank(key[i] - low) for i < n: 16-bit keys whose differences from low were marked.
    void ranks_of(std::size_t n, const std::uint16_t* key, std::uint16_t low, std::uint32_t* rank) const {
        std::size_t i = 0;
#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
        // Sixteen at a time: the gathers, masks and popcounts take fewer cycles than sixteen scalar lookups.
        const std::uint64_t* info = blocks_info.data();
        const __m512i offset = _mm512_set1_epi32(low);
        const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
        for (; i + 16 <= n; i += 16) {
            const __m512i keys = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(key + i)));
            const __m512i v = _mm512_and_si512(_mm512_sub_epi32(keys, offset), _mm512_set1_epi32(0xffff));
            const __m512i b = _mm512_srli_epi32(v, 5);
            const __m512i info_low = _mm512_i32gather_epi64(_mm512_castsi512_si256(b), info, 8);
            const __m512i info_high = _mm512_i32gather_epi64(_mm512_extracti64x4_epi64(b, 1), info, 8);
            const __m512i bits = _mm512_permutex2var_epi32(info_low, even, info_high);
            const __m512i first = _mm512_permutex2var_epi32(info_low, odd, info_high);
            const __m512i at_or_above = _mm512_sllv_epi32(_mm512_set1_epi32(-1), _mm512_and_si512(v, _mm512_set1_epi32(31)));
            _mm512_storeu_si512(rank + i, _mm512_add_epi32(first, _mm512_popcnt_epi32(_mm512_andnot_si512(at_or_above, bits))));
        }
#endif
        for (; i < n; ++i) rank[i] = this->rank(static_cast<std::uint16_t>(key[i] - low));
    }
};

/// Per-thread scratch memory, grown on demand and reused across rows (no allocation per row once warm).
template <class T, class W>
struct workspace {
    std::vector<key_t<T>> key;               // sort key of every entry
    std::vector<std::uint16_t> half_key;     // fp16 sort key of every entry (float rows of fp16 values)
    std::vector<W> weight_in;                // every entry's weight, when the input is not contiguous
    std::vector<std::uint32_t> group_of;     // every entry's distinct value (index into distinct_value)
    occurrence_ranks ranks;                   // of the reduced keys, or of their top bits (buckets)
    std::vector<std::uint16_t> distinct_key;  // reduced key of each distinct value (keys below 2^16)
    std::vector<std::uint32_t> histogram;     // grouping by sort: digit counts of the (up to three) passes
    std::vector<sort_item<T>> items, items_scratch;  // grouping by sort: (reduced key, index)
    std::vector<double> distinct_value, distinct_weight;  // distinct values ascending, summed weights
    std::vector<std::uint8_t> distinct_label;             // label of each distinct value (when labelled by group)
    std::vector<std::uint32_t> run_begin;                  // first distinct value of each centroid's run
    std::vector<std::uint8_t> run_label;                   // and that centroid's index
    std::vector<double> value, weight;       // positive-weight groups ascending, when some distinct value weighs 0
    std::vector<double> shifted;             // of the positive-weight groups: value - pivot
    // The positive-weight groups' values and weights: distinct_value and distinct_weight themselves when
    // no distinct value has zero weight (the common case, which then copies nothing), else value and weight.
    const double* group_value = nullptr;
    const double* group_weight = nullptr;
    dp_direction forward, backward;          // forward.s0..s2 are the prefix sums of the groups
    double min_weight = 0;                   // of the positive-weight groups
    std::vector<std::uint32_t> cluster_end;  // cluster c is groups [cluster_end[c - 1], cluster_end[c])
    lloyd_scratch lloyd;
    std::vector<double> best_centre;
    std::vector<double> bucket_sum;          // lloyd_on_buckets: w, w y, w y^2 of each bucket

    /// Room for `count` groups: their shifted values, and their prefix sums (count + 1 entries each).
    void size_groups(std::size_t count) {
        shifted.resize(count);
        forward.s0.resize(count + 1);
        forward.s1.resize(count + 1);
        forward.s2.resize(count + 1);
    }
};

/// The value of an original key: 16-bit keys are half_sort_keys of fp16 values, wider ones sort_keys of T.
template <class T, class K>
double key_value(K key) noexcept {
    if constexpr (std::is_same_v<K, std::uint16_t>)
        return static_cast<double>(value_of_half_key(key));
    else
        return static_cast<double>(value_of_key<T>(key));
}

/// values[j] = key_value(low + (reduced[j] << shift)) for j < count.
template <class T, class K>
void decode_keys(const std::uint16_t* reduced, std::size_t count, K low, int shift, double* values) {
    std::size_t j = 0;
#if defined(__AVX2__) && defined(__F16C__)
    if constexpr (std::is_same_v<K, std::uint16_t>) {  // fp16 keys (shift 0), sixteen or eight at a time
        const __m128i offset = _mm_set1_epi16(static_cast<short>(low ^ 0x8000u));
        // The fp16 bits of keys at..at + 7: key - 0x8000 as a signed number is +-magnitude, so the bits
        // are |that| with the sign bit.
        const auto half_bits = [&](std::size_t at) {
            const __m128i centred = _mm_add_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(reduced + at)), offset);
            return _mm_or_si128(_mm_abs_epi16(centred), _mm_and_si128(_mm_srai_epi16(centred, 15), _mm_set1_epi16(static_cast<short>(0x8000))));
        };
#if defined(__AVX512F__)
        for (; j + 16 <= count; j += 16) {
            const __m512 v = _mm512_cvtph_ps(_mm256_set_m128i(half_bits(j + 8), half_bits(j)));
            _mm512_storeu_pd(values + j, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
            _mm512_storeu_pd(values + j + 8, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
        }
#endif
        for (; j + 8 <= count; j += 8) {
            const __m256 v = _mm256_cvtph_ps(half_bits(j));
            _mm256_storeu_pd(values + j, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
            _mm256_storeu_pd(values + j + 4, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
        }
    }
#endif
    for (; j < count; ++j) values[j] = key_value<T>(static_cast<K>((static_cast<K>(reduced[j]) << shift) + low));
}

/// Groups the n entries by value: fills ws.distinct_value (ascending, as double), ws.distinct_weight (each
/// value's summed weight, added in entry order; every weight counts 1 when `weights` is null) and, with
/// EntryGroups, ws.group_of (each entry's distinct value); returns the number of distinct values. `key`
/// holds sort keys (16-bit keys: half_sort_keys of fp16 values), from low to high, reduced first to the
/// bits that vary, (key - low) >> (trailing zeros common to all keys, from `ones`; 0 for 16-bit keys).
/// - When the reduced keys span fewer than 2^16 values (fp16 data, bfloat16 data in a float) and not many
///   more than there are entries, their occurrence ranks are the distinct values' indices: no sorting.
/// - Otherwise an LSD radix sort orders (key, index) pairs by their top 33 or fewer key bits (all of a
///   float's), and the few runs that share those bits (double keys) are sorted by full key.
template <bool EntryGroups, class T, class W, class K>
std::size_t group_values(workspace<T, W>& ws, std::size_t n, const K* key, const W* weights, K low, K high, K ones) {
    static_assert(sizeof(K) <= sizeof(key_t<T>));
    using wide = key_t<T>;
    // 16-bit keys are fp16 keys, which are not reduced further (they span at most 2^16 values, and the
    // shift known at compile time keeps it out of the per-entry loops). ones != 0: no finite value has the
    // zero key.
    constexpr bool half_keys = std::is_same_v<K, std::uint16_t>;
    const int shift = half_keys ? 0 : std::countr_zero(ones);
    const K span = static_cast<K>((high - low) >> shift);  // reduced keys lie in [0, span]
    // By value: the occurrence map's byte stores would otherwise make the compiler reload key and low.
    const auto reduced = [=](std::size_t i) {
        if constexpr (half_keys)
            return static_cast<K>(key[i] - low);
        else
            return static_cast<K>((key[i] - low) >> shift);
    };
    if constexpr (EntryGroups) ws.group_of.resize(n);
    std::uint32_t* group_of = ws.group_of.data();
    const auto weight = [&](std::size_t i) { return weights != nullptr ? static_cast<double>(weights[i]) : 1.0; };
    occurrence_ranks& ranks = ws.ranks;
    if (span < 65536 && span / 16 <= n) {
        // Room for the listed values (there are at most min(n, span + 1)) and the last store's overhang.
        ws.distinct_key.resize(std::min(n, static_cast<std::size_t>(span) + 1) + 64);
        std::uint16_t* distinct_key = ws.distinct_key.data();
        constexpr bool listed = occurrence_ranks::lists_values;
        const std::size_t d = ranks.build(n, static_cast<std::size_t>(span), reduced, listed ? distinct_key : nullptr);
        ws.distinct_key.resize(d);
        ws.distinct_weight.assign(d, 0.0);
        double* distinct_weight = ws.distinct_weight.data();
        if constexpr (half_keys && occurrence_ranks::vector_ranks) {
            // Every entry's rank first (in group_of, also when the caller does not keep it), then the
            // keys and weight sums: apart, the ranks vectorise and the scatter runs at its store rate.
            ws.group_of.resize(n);
            group_of = ws.group_of.data();
            ranks.ranks_of(n, key, low, group_of);
            std::size_t i = 0;
            const auto add = [&](std::size_t j, double w) {
                const std::uint32_t rank = group_of[j];
                if constexpr (!listed) distinct_key[rank] = static_cast<std::uint16_t>(key[j] - low);
                distinct_weight[rank] += w;
            };
#if defined(__AVX__)
            if constexpr (std::is_same_v<W, float>) {
                // Four float weights widened by one instruction: 10% off the scatter against one at a time.
                if (weights != nullptr)
                    for (; i + 4 <= n; i += 4) {
                        const __m256d widened = _mm256_cvtps_pd(_mm_loadu_ps(weights + i));
                        const __m128d w01 = _mm256_castpd256_pd128(widened), w23 = _mm256_extractf128_pd(widened, 1);
                        add(i, _mm_cvtsd_f64(w01));
                        add(i + 1, _mm_cvtsd_f64(_mm_unpackhi_pd(w01, w01)));
                        add(i + 2, _mm_cvtsd_f64(w23));
                        add(i + 3, _mm_cvtsd_f64(_mm_unpackhi_pd(w23, w23)));
                    }
            }
#endif
            for (; i + 4 <= n; i += 4) {
                add(i, weight(i));
                add(i + 1, weight(i + 1));
                add(i + 2, weight(i + 2));
                add(i + 3, weight(i + 3));
            }
            for (; i < n; ++i) add(i, weight(i));
        } else {
            for (std::size_t i = 0; i < n; ++i) {
                const std::size_t r = reduced(i);
                const std::uint32_t rank = ranks.rank(r);
                if constexpr (EntryGroups) group_of[i] = rank;
                if constexpr (!listed) distinct_key[rank] = static_cast<std::uint16_t>(r);
                distinct_weight[rank] += weight(i);
            }
        }
        ws.distinct_value.resize(d);
        decode_keys<T>(distinct_key, d, low, shift, ws.distinct_value.data());
        return d;
    }
    // LSD radix sort by the top 33 or fewer bits (all of a float key's), in up to three passes of at most
    // 11-bit digits (their counters stay in L1); entries that share those bits (double keys only) are then
    // sorted by full key. A third pass costs less than sorting the runs that share the top 22 bits did.
    const int width = static_cast<int>(std::bit_width(span));
    const int sort_bits = std::min(width, 33);
    const int low_bits = width - sort_bits;
    const int passes = (sort_bits + 10) / 11;
    const int digit_bits = (sort_bits + passes - 1) / passes;
    const std::size_t radix = std::size_t{1} << digit_bits;
    const wide digit_mask = static_cast<wide>(radix - 1);
    ws.histogram.assign(static_cast<std::size_t>(passes) * radix, 0);
    std::uint32_t* count = ws.histogram.data();
    ws.items.resize(n);
    ws.items_scratch.resize(n);
    sort_item<T>* items = ws.items.data();
    sort_item<T>* scratch = ws.items_scratch.data();
    for (std::size_t i = 0; i < n; ++i) {
        const wide r = reduced(i);
        scratch[i] = {r, static_cast<std::uint32_t>(i)};
        for (int p = 0; p < passes; ++p) ++count[static_cast<std::size_t>(p) * radix + ((r >> (low_bits + p * digit_bits)) & digit_mask)];
    }
    for (int p = 0; p < passes; ++p) {
        std::uint32_t* offset = count + static_cast<std::size_t>(p) * radix;
        std::uint32_t total = 0;
        for (std::size_t digit = 0; digit < radix; ++digit) {
            const std::uint32_t c = offset[digit];
            offset[digit] = total;
            total += c;
        }
        const int digit_shift = low_bits + p * digit_bits;
        // The scatter reads eight items and claims their slots before it stores any of them. One item at a
        // time, the pass ran 5-10% faster or slower with where the heap put its buffers (likely reads held
        // up by earlier stores whose low 12 address bits match); batched, it is faster in every layout tried.
        std::size_t i = 0;
        constexpr std::size_t batch = 8;
        for (; i + batch <= n; i += batch) {
            sort_item<T> loaded[batch];
            std::uint32_t at[batch];
            for (std::size_t j = 0; j < batch; ++j) loaded[j] = scratch[i + j];
            for (std::size_t j = 0; j < batch; ++j) at[j] = offset[(loaded[j].key >> digit_shift) & digit_mask]++;
            for (std::size_t j = 0; j < batch; ++j) items[at[j]] = loaded[j];
        }
        for (; i < n; ++i) items[offset[(scratch[i].key >> digit_shift) & digit_mask]++] = scratch[i];
        std::swap(items, scratch);
    }
    std::swap(items, scratch);  // the sorted order is in `items`
    if (low_bits > 0) {
        // Runs that share the sorted bits, by full key (ties stay in entry order): insertion sort for short
        // runs, std::sort (with the index as the tie-break) for long ones.
        const auto before = [](const sort_item<T>& x, const sort_item<T>& y) { return x.key < y.key || (x.key == y.key && x.index < y.index); };
        for (std::size_t begin = 0; begin < n;) {
            const wide top = items[begin].key >> low_bits;
            std::size_t end = begin + 1;
            while (end < n && (items[end].key >> low_bits) == top) ++end;
            if (end - begin > 32) {
                std::sort(items + begin, items + end, before);
            } else {
                for (std::size_t j = begin + 1; j < end; ++j) {
                    const sort_item<T> item = items[j];
                    std::size_t at = j;
                    for (; at > begin && item.key < items[at - 1].key; --at) items[at] = items[at - 1];
                    items[at] = item;
                }
            }
            begin = end;
        }
    }
    // Runs of equal keys are the distinct values.
    ws.distinct_weight.resize(n);
    ws.distinct_value.resize(n);
    double* distinct_weight = ws.distinct_weight.data();
    double* distinct_value = ws.distinct_value.data();
    std::size_t d = 0;
    for (std::size_t i = 0; i < n;) {
        const wide r = items[i].key;
        double w = 0;
        for (; i < n && items[i].key == r; ++i) {
            w += weight(items[i].index);
            if constexpr (EntryGroups) group_of[items[i].index] = static_cast<std::uint32_t>(d);
        }
        distinct_value[d] = key_value<T>(static_cast<K>((static_cast<K>(r) << shift) + low));
        distinct_weight[d] = w;
        ++d;
    }
    return d;
}

/// How many Lloyd iterations the exact method spends on its upper bound: the bound only has to be
/// reasonably tight, and a few iterations from greedy k-means++ seeds get within a few percent.
inline constexpr int bound_iterations = 8;

/// Exact clustering of the m > k >= 2 positive-weight groups (forward prefix sums in ws.forward, shifted
/// values in ws.shifted); fills ws.cluster_end.
///
/// The optimal k-partition splits into its first k/2 clusters (a prefix) and its last k - k/2 (a
/// suffix), so the programme runs k/2 layers forward and k - k/2 layers backward (on the mirrored groups)
/// and meets in the middle: OPT = min_j F[j] + B[m - j]. Every cell on the optimal path costs at most
/// OPT, so with an upper bound from a quick Lloyd run, each layer stops where its cost exceeds the bound;
/// prefixes and suffixes of at most half the clusters rarely reach far, which removes most cells.
template <class Workspace>
void exact_partition(Workspace& ws, std::size_t m, std::size_t k) {
    dp_direction& forward = ws.forward;
    dp_direction& backward = ws.backward;
    const prefix_sums s = forward.sums();
    backward.s0.resize(m + 1);
    backward.s1.resize(m + 1);
    backward.s2.resize(m + 1);
    // Mirrored groups (-y in reverse order): their prefix sums are suffix sums of the forward ones, as
    // differences of forward prefix sums like every interval sum the forward direction uses.
    // One array at a time through raw pointers, so that the loops vectorise (through the vectors, each
    // store could alias the next loads).
    const auto mirror = [m](const double* forward_sum, double* backward_sum, double sign) {
        const double total = forward_sum[m];
        for (std::size_t i = 0; i <= m; ++i) backward_sum[i] = sign * (total - forward_sum[m - i]);
    };
    mirror(s.s0, backward.s0.data(), 1.0);
    mirror(s.s1, backward.s1.data(), -1.0);
    mirror(s.s2, backward.s2.data(), 1.0);
    const std::size_t left_layers = k / 2, right_layers = k - left_layers;
    // Each rounding in the prefix sums of w is at most 2^-53 of the total weight. group_prefix_sums adds
    // four groups at a time (three roundings per block of four, three more at each end of an interval), so
    // the weight of groups [a, b), a difference of two prefix sums, is off by at most (b - a + 9) 2^-53 of
    // the total, while it is at least (b - a) times the lightest group's. When the lightest group
    // outweighs 2^-47 of the total, every interval's weight is therefore right to within a quarter, and
    // costs stay within rounding. Otherwise the layers clamp every cost at 0 (layer_solver::guarded), so
    // that a weight lost in the prefix sums cannot make a cost NaN or hugely negative (which gave wrong
    // optima, and endless retries, before). Fisher-like rows reach that: 3 of the benchmark's 64 fp16
    // rows of 4096 at 2^-51.
    const bool guarded = !(ws.min_weight > s.s0[m] * 0x1p-47);
    double bound = std::numeric_limits<double>::infinity();
    if (k >= 4) {
        lloyd_solver lloyd{ws.shifted.data(), s, m, ws.lloyd};
        synthetic::rng random(0x9e3779b97f4a7c15ull);
        lloyd.seed(random, k, 2 + static_cast<std::size_t>(std::log(static_cast<double>(k))));  // as scikit-learn
        // Slack for rounding: cell costs come from differences of prefix sums.
        bound = lloyd.iterate(bound_iterations) * (1 + 1e-7) + 1e-12 * s.interval_cost(0, m);
    }
    std::size_t cut = 0;
    for (bool bounded = true;; bounded = false) {
        double best = std::numeric_limits<double>::infinity();
        // Backward first: its reach tells where forward's last layer can meet it.
        if (backward.run(m, k, right_layers, bound, guarded) &&
            forward.run(m, k, left_layers, bound, guarded, m - backward.reach[right_layers])) {
            const std::size_t first = std::max(left_layers, m - backward.reach[right_layers]);
            const std::size_t last = std::min(forward.reach[left_layers], m - right_layers);
            for (std::size_t j = first; j <= last; ++j) {
                const double total = forward.value[j] + backward.value[m - j];
                if (total < best) {
                    best = total;
                    cut = j;
                }
            }
        }
        if (best < std::numeric_limits<double>::infinity()) break;
        // Safety net: rounding pruned every path, so run in full. Without a bound every cell is finite (cell
        // costs are never NaN or negative) and some path always exists; failing twice would be a bug, and
        // is reported rather than retried forever.
        require(bounded, "sqz::weighted_kmeans: internal error: no partition of ", m, " groups into ", k,
                " clusters found");
        bound = std::numeric_limits<double>::infinity();
    }
    const std::size_t stride = m + 1;
    ws.cluster_end.resize(k);
    std::size_t end = cut;
    for (std::size_t l = left_layers; l >= 1; --l) {
        ws.cluster_end[l - 1] = static_cast<std::uint32_t>(end);
        if (l >= 2) end = forward.choice[(l - 2) * stride + end];
    }
    std::size_t length = m - cut;  // the suffix, clustered from its left end
    for (std::size_t r = right_layers, c = left_layers; r >= 2; --r, ++c) {
        length = backward.choice[(r - 2) * stride + length];
        ws.cluster_end[c] = static_cast<std::uint32_t>(m - length);
    }
    ws.cluster_end[k - 1] = static_cast<std::uint32_t>(m);
}

/// Samples per centre of the greedy k-means++ seeding of `lloyd` (scikit-learn takes 2 + ln k, as the exact
/// method's bound does), and rounds of split-and-merge moves after Lloyd converges (each keeps the first of
/// `split_merge_tries` moves that helps). Few clusters need few of either. Measured on the benchmark's
/// fp16 rows at k = 16 (mean gap to the optimum at n = 4096 / 14336): 2 samples and 2 rounds 1.07% /
/// 0.76%; 2 samples and 16 rounds 0.85% / 0.54% in 13% more time; 2 + ln k samples and 16 rounds 0.65% /
/// 0.88% in 29% more time (at k = 4: 0.33% / 0.31% against 0.22% / 0.01%). Many clusters need the full
/// search: at k = 256, 2 and 2 end 17% above the optimum, against 2% for 2 + ln k samples and 16 rounds.
inline std::size_t lloyd_seed_trials(std::size_t k) {
    return k <= 16 ? 2 : 2 + static_cast<std::size_t>(std::log(static_cast<double>(k)));
}
/// At k <= 4 one round of one try: on the benchmark's fp16 rows at k = 4, 2 rounds of 2 tries end 0.33% /
/// 0.313% above the optimum on average (n = 4096 / 14336) against 0.35% / 0.318%, for about 1.6 us more
/// per row (7% of lloyd's time at n = 4096).
inline int split_merge_rounds(std::size_t k) { return static_cast<int>(std::clamp<std::size_t>(k / 8, k <= 4 ? 1 : 2, 16)); }
inline std::size_t split_merge_tries(std::size_t k) { return k <= 4 ? 1 : 2; }

/// Lloyd's method on the m > k >= 2 positive-weight groups: `restarts` runs from greedy k-means++ seeds;
/// fills ws.best_centre with the k sorted centres (shifted) of the cheapest run.
template <class Workspace>
void lloyd_partition(Workspace& ws, std::size_t m, std::size_t k, const kmeans_options& options) {
    lloyd_solver lloyd{ws.shifted.data(), ws.forward.sums(), m, ws.lloyd};
    synthetic::rng random(options.seed);
    double best = std::numeric_limits<double>::infinity();
    // Restarts often converge to the same state (at k = 4, about a quarter of them on the benchmark's
    // rows). The moves after Lloyd depend only on that state, so a state seen before (after Lloyd in an
    // earlier restart, or where an earlier restart's moves settled) leads to a cost already compared:
    // skipping its moves changes nothing.
    std::vector<double>& seen_centre = ws.lloyd.seen_centre;
    std::vector<std::uint32_t>& seen_start = ws.lloyd.seen_start;
    seen_centre.clear();
    seen_start.clear();
    ws.lloyd.new_row();
    const auto seen = [&] {
        for (std::size_t state = 0; state * k < seen_centre.size(); ++state)
            if (std::equal(ws.lloyd.centre.begin(), ws.lloyd.centre.end(), seen_centre.begin() + static_cast<std::ptrdiff_t>(state * k)) &&
                std::equal(ws.lloyd.start.begin(), ws.lloyd.start.end(), seen_start.begin() + static_cast<std::ptrdiff_t>(state * (k + 1))))
                return true;
        return false;
    };
    const auto remember = [&] {
        seen_centre.insert(seen_centre.end(), ws.lloyd.centre.begin(), ws.lloyd.centre.end());
        seen_start.insert(seen_start.end(), ws.lloyd.start.begin(), ws.lloyd.start.end());
    };
    for (int restart = 0; restart < std::max(1, options.restarts); ++restart) {
        lloyd.seed(random, k, lloyd_seed_trials(k));
        const double converged = lloyd.iterate(options.max_iterations);
        if (seen()) continue;
        remember();
        bool settled = false;
        const double cost = lloyd.split_and_merge(split_merge_rounds(k), split_merge_tries(k), options.max_iterations, converged, settled);
        if (settled) remember();
        if (cost < best) {
            best = cost;
            ws.best_centre = ws.lloyd.centre;
        }
    }
}

/// a * b + c, fused where the target has FMA (as the vectorised first pass does), so that both ways of
/// reading a row round alike; plain elsewhere (no slow software fma).
inline double multiply_add(double a, double b, double c) {
#if defined(__FMA__)
    return std::fma(a, b, c);
#else
    return a * b + c;
#endif
}

/// Lanes of the objective's sum: group g adds to lane g % 16, so four independent vector sums keep the
/// FMAs' latency hidden (with one, each waited for the last: 4 cycles per four groups).
inline constexpr std::size_t objective_lanes = 16;

/// Adds w[g] (v[g] - c)^2 to partial[g % objective_lanes] for the groups g in [begin, end).
inline void add_squares(const double* v, const double* w, std::size_t begin, std::size_t end, double c, double* partial) {
    const auto add = [&](std::size_t g) {
        const double e = v[g] - c;
        partial[g % objective_lanes] = multiply_add(w[g] * e, e, partial[g % objective_lanes]);
    };
    std::size_t g = begin;
#if defined(__AVX2__) && defined(__FMA__)
    for (; g < end && g % objective_lanes != 0; ++g) add(g);
    if (g + objective_lanes <= end) {
        const __m256d centre = _mm256_set1_pd(c);
        __m256d sum[4];
        for (std::size_t q = 0; q < 4; ++q) sum[q] = _mm256_loadu_pd(partial + 4 * q);
        for (; g + objective_lanes <= end; g += objective_lanes)
            for (std::size_t q = 0; q < 4; ++q) {
                const __m256d e = _mm256_sub_pd(_mm256_loadu_pd(v + g + 4 * q), centre);
                sum[q] = _mm256_fmadd_pd(_mm256_mul_pd(_mm256_loadu_pd(w + g + 4 * q), e), e, sum[q]);
            }
        for (std::size_t q = 0; q < 4; ++q) _mm256_storeu_pd(partial + 4 * q, sum[q]);
    }
#endif
    for (; g < end; ++g) add(g);
}

/// Labels the d distinct values with their nearest centroid, the lowest index when two are equally near,
/// and returns the objective, sum w (v - c)^2 over the m positive-weight groups. With the distinct centroids
/// u_0 < u_1 < ..., a value v goes past u_p when u_(p+1) - v < v - u_p in double, a test that is monotone in
/// v (and in p), so the values of each centroid form one run of the sorted values, found by binary search
/// (in the distinct values for the labels, in the groups for the objective, whose sum then does not depend
/// on zero-weight entries). The labels are the runs: ws.run_begin and ws.run_label, the non-empty runs in
/// ascending order, which cover the d distinct values from the first.
template <class T, class W>
double label_groups(workspace<T, W>& ws, const std::vector<T>& centroids, std::size_t d, std::size_t m) {
    ws.run_begin.clear();
    ws.run_label.clear();
    const double* distinct = ws.distinct_value.data();
    const double* value = ws.group_value;
    const std::size_t k = centroids.size();
    double partial[objective_lanes] = {};
    std::size_t begin = 0, group_begin = 0;
    for (std::size_t c = 0; c < k;) {
        std::size_t next = c + 1;  // the next distinct centroid
        while (next < k && centroids[next] == centroids[c]) ++next;
        const auto u = static_cast<double>(centroids[c]);
        std::size_t end = d, group_end = m;
        if (next < k) {
            const auto u_next = static_cast<double>(centroids[next]);
            const auto nearer_u = [&](double x) { return !(u_next - x < x - u); };
            end = static_cast<std::size_t>(std::partition_point(distinct + begin, distinct + d, nearer_u) - distinct);
            group_end = static_cast<std::size_t>(std::partition_point(value + group_begin, value + m, nearer_u) - value);
        }
        if (begin < end) {
            ws.run_begin.push_back(static_cast<std::uint32_t>(begin));
            ws.run_label.push_back(static_cast<std::uint8_t>(c));
        }
        add_squares(value, ws.group_weight, group_begin, group_end, u, partial);
        begin = end;
        group_begin = group_end;
        c = next;
    }
    for (std::size_t width = objective_lanes / 2; width >= 1; width /= 2)  // a fixed pairwise fold
        for (std::size_t lane = 0; lane < width; ++lane) partial[lane] += partial[lane + width];
    return partial[0];
}

/// Most centroid runs (ws.run_begin / ws.run_label) that label_by_runs takes; with more, comparing every
/// value with every run's first value costs more than looking each entry's label up through its group.
inline constexpr std::size_t max_label_runs = 8;

/// labels[j] = run_label[r] for the last run r whose first value, distinct[run_begin[r]], is at most
/// values[j] (runs <= max_label_runs, as label_groups leaves them). The values are the distinct values
/// themselves, so this gives every entry its distinct value's label without a per-entry group index.
inline void label_by_runs(const float* values, std::size_t n, const double* distinct, const std::uint32_t* run_begin,
                          const std::uint8_t* run_label, std::size_t runs, std::uint8_t* labels) {
    float first[max_label_runs];  // each is a float value of the row, so exact as float
    for (std::size_t r = 0; r < runs; ++r) first[r] = static_cast<float>(distinct[run_begin[r]]);
    std::size_t j = 0;
#if defined(__AVX2__)
    alignas(16) std::uint8_t table[16] = {};
    std::copy(run_label, run_label + runs, table);
    const __m256i lookup = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(table)));
    for (; j + 32 <= n; j += 32) {
        // Runs below (or at) each value, as 32-bit counts of four vectors of eight values.
        const __m256 v0 = _mm256_loadu_ps(values + j), v1 = _mm256_loadu_ps(values + j + 8);
        const __m256 v2 = _mm256_loadu_ps(values + j + 16), v3 = _mm256_loadu_ps(values + j + 24);
        __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0;
        for (std::size_t r = 1; r < runs; ++r) {
            const __m256 bound = _mm256_broadcast_ss(first + r);
            c0 = _mm256_sub_epi32(c0, _mm256_castps_si256(_mm256_cmp_ps(v0, bound, _CMP_GE_OQ)));
            c1 = _mm256_sub_epi32(c1, _mm256_castps_si256(_mm256_cmp_ps(v1, bound, _CMP_GE_OQ)));
            c2 = _mm256_sub_epi32(c2, _mm256_castps_si256(_mm256_cmp_ps(v2, bound, _CMP_GE_OQ)));
            c3 = _mm256_sub_epi32(c3, _mm256_castps_si256(_mm256_cmp_ps(v3, bound, _CMP_GE_OQ)));
        }
        // Packing works within 128-bit halves: bytes end up as c0[0-3] c1[0-3] c2[0-3] c3[0-3] | c0[4-7] ...,
        // and the dword permutation restores entry order.
        const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(c0, c1), _mm256_packs_epi32(c2, c3));
        const __m256i ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(labels + j), _mm256_shuffle_epi8(lookup, ordered));
    }
#endif
    for (; j < n; ++j) {
        std::size_t r = 0;
        while (r + 1 < runs && first[r + 1] <= values[j]) ++r;
        labels[j] = run_label[r];
    }
}

/// Low bits of the scaled fp16 key that Lloyd's buckets drop: 8 significant bits per bucket. On the
/// benchmark's float rows at k = 4 the mean gap to the optimum stayed within 0.001 percentage points of
/// 11-bit buckets' with 8 bits, and grew by 0.03 (n = 4096) with 7; each bit dropped saved 5-10% of the time.
inline constexpr int lloyd_bucket_bits = 3;

/// Lloyd's buckets of a float row (see lloyd_on_buckets): a value's bucket is its fp16 key after scaling by
/// the power of two that puts the largest magnitude in [2^14, 2^15), relative to the lowest value's and
/// without its `shift` low bits. Monotone in the value, so buckets are intervals of values.
struct value_buckets {
    float scale = 0;          // 0: the scaling would leave the float range (or every value is zero)
    std::uint16_t first = 0;  // the scaled fp16 key of the lowest value
    int shift = lloyd_bucket_bits;

    value_buckets(std::uint32_t low, std::uint32_t high) {
        const float largest = std::max(std::fabs(value_of_key<float>(low)), std::fabs(value_of_key<float>(high)));
        if (!(largest > 0)) return;
        const int exponent = 14 - std::ilogb(largest);
        if (exponent < -126 || exponent > 127) return;
        scale = std::ldexp(1.0f, exponent);
        first = half_key(value_of_key<float>(low));
    }
    bool usable() const { return scale > 0; }
    std::uint16_t half_key(float v) const { return half_sort_key(float_to_half_bits(v * scale)); }
    std::size_t reduced(std::uint16_t key) const { return static_cast<std::size_t>(key - first) >> shift; }
};

#if defined(__AVX512F__)
/// value_of_key<float> of 16 keys at once (bits_of_key's formula in 32-bit lanes).
inline __m512 values_of_keys(__m512i key) {
    const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
    const __mmask16 positive = _mm512_cmpge_epu32_mask(key, sign);
    return _mm512_castsi512_ps(_mm512_mask_sub_epi32(_mm512_or_si512(sign, _mm512_sub_epi32(sign, key)), positive, key, sign));
}
#endif

/// Lloyd's method at k <= max_label_runs on float rows that are not fp16 data: Lloyd only needs the sorted
/// values through prefix sums, so it runs on buckets of nearby values instead of the distinct values, which
/// skips the radix sort (most of a float row's shared time). Buckets are those of value_buckets (8
/// significant bits) and keep the sums of w, w y and w y^2 of their entries (y = value - pivot), so each
/// bucket is a group at its weighted mean and every cost Lloyd computes for a union of buckets is exact;
/// only a bucket cannot be split between clusters. Labels and the objective then come from the entries
/// themselves (each takes its nearest centroid, as in label_groups). Returns false, leaving everything to
/// the sorted path, when the scaling would leave the float range or there are at most k positive-weight
/// buckets.
template <class W>
bool lloyd_on_buckets(const char* where, workspace<float, W>& ws, std::size_t n, const std::uint32_t* keys, const W* weights,
                      std::uint32_t low, std::uint32_t high, double pivot, std::size_t k, const kmeans_options& options,
                      kmeans_result<float>& result) {
    value_buckets buckets(low, high);
    if (!buckets.usable()) return false;
    ws.half_key.resize(n);
    std::uint16_t* bucket = ws.half_key.data();
    std::size_t i = 0;
#if defined(__AVX512F__)
    {
        const __m512 scale_v = _mm512_set1_ps(buckets.scale);
        for (; i + 16 <= n; i += 16) {
            // The values, then the scaled values' fp16 keys (the formula of half_sort_key in 16 bits).
            const __m512 scaled = _mm512_mul_ps(values_of_keys(_mm512_loadu_si512(keys + i)), scale_v);
            const __m256i half = _mm512_cvtps_ph(scaled, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            const __m256i half_negative = _mm256_srai_epi16(half, 15);
            const __m256i half_magnitude = _mm256_and_si256(half, _mm256_set1_epi16(0x7fff));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(bucket + i),
                                _mm256_add_epi16(_mm256_set1_epi16(static_cast<short>(0x8000)),
                                                 _mm256_sub_epi16(_mm256_xor_si256(half_magnitude, half_negative), half_negative)));
        }
    }
#endif
    for (; i < n; ++i) bucket[i] = buckets.half_key(value_of_key<float>(keys[i]));
    // Coarser buckets on short rows, until the occurrence map costs no more than the entries (n >= 480
    // never needs it).
    const std::size_t full_span = static_cast<std::size_t>(buckets.half_key(value_of_key<float>(high)) - buckets.first);
    while ((full_span >> buckets.shift) / 16 > n) ++buckets.shift;
    const auto reduced = [&](std::size_t j) { return buckets.reduced(bucket[j]); };
    occurrence_ranks& ranks = ws.ranks;
    const std::size_t count = ranks.build(n, full_span >> buckets.shift, reduced);
    ws.bucket_sum.assign(3 * count, 0.0);
    double* sum = ws.bucket_sum.data();
    for (std::size_t j = 0; j < n; ++j) {
        const double w = weights != nullptr ? static_cast<double>(weights[j]) : 1.0;
        const double y = static_cast<double>(value_of_key<float>(keys[j])) - pivot;
        double* at = sum + 3 * static_cast<std::size_t>(ranks.rank(reduced(j)));
        const double wy = w * y;
        at[0] += w;
        at[1] += wy;
        at[2] += wy * y;
    }
    // The positive-weight buckets are the groups.
    ws.size_groups(count);
    auto& s0 = ws.forward.s0;
    auto& s1 = ws.forward.s1;
    auto& s2 = ws.forward.s2;
    std::size_t m = 0;
    {
        double* shifted = ws.shifted.data();
        double* p0 = s0.data();
        double* p1 = s1.data();
        double* p2 = s2.data();
        double sum0 = 0, sum1 = 0, sum2 = 0;
        p0[0] = p1[0] = p2[0] = 0;
        for (std::size_t b = 0; b < count; ++b) {
            const double w = sum[3 * b];
            if (!(w > 0)) continue;
            shifted[m] = sum[3 * b + 1] / w;
            sum0 += w;
            sum1 += sum[3 * b + 1];
            sum2 += sum[3 * b + 2];
            ++m;
            p0[m] = sum0;
            p1[m] = sum1;
            p2[m] = sum2;
        }
    }
    if (m <= k) return false;
    require(std::isfinite(s2[m]), where, ": sum of weights * values^2 = ", s2[m], " overflows double");
    lloyd_partition(ws, m, k, options);
    result.centroids.resize(k);
    for (std::size_t c = 0; c < k; ++c) result.centroids[c] = static_cast<float>(pivot + ws.best_centre[c]);
    std::sort(result.centroids.begin(), result.centroids.end());
    // Each entry goes past the distinct centroid u_p when u_(p+1) - x < x - u_p (label_groups' rule); equal
    // centroids give their first index.
    double centre[max_label_runs];
    std::uint8_t label[max_label_runs];
    std::size_t runs = 0;
    for (std::size_t c = 0; c < k; ++c)
        if (c == 0 || result.centroids[c] != result.centroids[c - 1]) {
            centre[runs] = static_cast<double>(result.centroids[c]);
            label[runs] = static_cast<std::uint8_t>(c);
            ++runs;
        }
    result.labels.resize(n);
    std::uint8_t* labels = result.labels.data();
    double partial[objective_lanes] = {};
    const auto label_entry = [&](std::size_t j, std::size_t lane) {
        const auto x = static_cast<double>(value_of_key<float>(keys[j]));
        std::size_t r = 0;
        for (std::size_t p = 0; p + 1 < runs; ++p) r += static_cast<std::size_t>(centre[p + 1] - x < x - centre[p]);
        labels[j] = label[r];
        const double w = weights != nullptr ? static_cast<double>(weights[j]) : 1.0;
        const double d = x - centre[r];
        partial[lane] = multiply_add(w, d * d, partial[lane]);
    };
    std::size_t j = 0;
#if defined(__AVX512F__) && defined(__FMA__)
    if constexpr (objective_lanes == 16) {
        // Sixteen entries at a time, in the same lanes and with the same fused operations as label_entry.
        double centre_table[8] = {};
        std::int64_t label_table[8] = {};
        for (std::size_t r = 0; r < runs; ++r) {
            centre_table[r] = centre[r];
            label_table[r] = label[r];
        }
        const __m512d centres = _mm512_loadu_pd(centre_table);
        const __m512i label_lookup = _mm512_loadu_si512(label_table);
        __m512d sum_low = _mm512_setzero_pd(), sum_high = sum_low;
        const auto eight = [&](__m256 x_float, __m512d w, std::uint8_t* out, __m512d& sum) {
            const __m512d x = _mm512_cvtps_pd(x_float);
            __m512i r = _mm512_setzero_si512();
            for (std::size_t p = 0; p + 1 < runs; ++p) {
                const __mmask8 past = _mm512_cmp_pd_mask(_mm512_sub_pd(_mm512_set1_pd(centre[p + 1]), x),
                                                         _mm512_sub_pd(x, _mm512_set1_pd(centre[p])), _CMP_LT_OQ);
                r = _mm512_mask_add_epi64(r, past, r, _mm512_set1_epi64(1));
            }
            _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm512_cvtepi64_epi8(_mm512_permutexvar_epi64(r, label_lookup)));
            const __m512d d = _mm512_sub_pd(x, _mm512_permutexvar_pd(r, centres));
            sum = _mm512_fmadd_pd(w, _mm512_mul_pd(d, d), sum);
        };
        const auto weights_at = [&](std::size_t at) {
            if (weights == nullptr) return _mm512_set1_pd(1.0);
            if constexpr (std::is_same_v<W, float>)
                return _mm512_cvtps_pd(_mm256_loadu_ps(weights + at));
            else
                return _mm512_loadu_pd(weights + at);
        };
        for (; j + 16 <= n; j += 16) {
            const __m512 x = values_of_keys(_mm512_loadu_si512(keys + j));
            eight(_mm512_castps512_ps256(x), weights_at(j), labels + j, sum_low);
            eight(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)), weights_at(j + 8), labels + j + 8, sum_high);
        }
        _mm512_storeu_pd(partial, sum_low);
        _mm512_storeu_pd(partial + 8, sum_high);
    }
#endif
    for (; j + objective_lanes <= n; j += objective_lanes)
        for (std::size_t lane = 0; lane < objective_lanes; ++lane) label_entry(j + lane, lane);
    for (std::size_t lane = 0; j < n; ++j, ++lane) label_entry(j, lane);
    for (std::size_t width = objective_lanes / 2; width >= 1; width /= 2)  // a fixed pairwise fold
        for (std::size_t lane = 0; lane < width; ++lane) partial[lane] += partial[lane + width];
    result.objective = partial[0];
    return true;
}

/// Whether every value, given by its float sort key, is an fp16 value; if so, half_keys holds their fp16 keys.
[[gnu::noinline]] inline bool fp16_keys(const std::uint32_t* keys, std::size_t n, std::uint16_t* half_keys) {
    for (std::size_t i = 0; i < n; ++i) {
        const float v = value_of_key<float>(keys[i]);
        const std::uint16_t half = float_to_half_bits(v);
        if (std::bit_cast<std::uint32_t>(half_bits_to_float(half)) != std::bit_cast<std::uint32_t>(v)) return false;
        half_keys[i] = half_sort_key(half);
    }
    return true;
}

/// Step 1 for contiguous float values and float or double weights, eight at a time: the same keys, key range
/// and sums as the generic loop, whose sums use the same eight lanes (entry i in lane i % 8, `weight_lane`
/// and `sum_lane`, which start at 0), so that results never depend on how the row is stored. Returns the
/// number of entries done; `suspect` is set if some value or weight may be invalid (the caller then checks
/// them one by one, which also accepts -0.0 weights).
template <class W>
std::size_t read_floats(const float* values, const W* weights, std::size_t n, std::uint32_t* keys,
                        std::uint16_t* half_keys, bool& half_exact, std::uint32_t& low, std::uint32_t& high,
                        std::uint32_t& ones, double* weight_lane, double* sum_lane, bool& suspect) {
    std::size_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
    if (n >= 8) {
        const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
        const __m256i magnitude_mask = _mm256_set1_epi32(0x7fffffff);
        const __m256i infinity = _mm256_set1_epi32(0x7f800000);
        __m256i low_v = _mm256_set1_epi32(-1), high_v = _mm256_setzero_si256(), ones_v = high_v, bad = high_v;
        __m256d weight0 = _mm256_setzero_pd(), weight1 = weight0, sum0 = weight0, sum1 = weight0;
        __m256i inexact = _mm256_setzero_si256();
        for (; i + 8 <= n; i += 8) {
            const __m256 v = _mm256_loadu_ps(values + i);
            const __m256i bits = _mm256_castps_si256(v);
            const __m256i magnitude = _mm256_and_si256(bits, magnitude_mask);
            // Not finite: magnitude >= infinity.
            bad = _mm256_or_si256(bad, _mm256_cmpgt_epi32(magnitude, _mm256_sub_epi32(infinity, _mm256_set1_epi32(1))));
            __m256d w0, w1;  // the weights as double
            if constexpr (std::is_same_v<W, float>) {
                const __m256 w = _mm256_loadu_ps(weights + i);
                // Weight not a finite non-negative: bits >= infinity as signed integers fails for negative
                // (sign bit) and non-finite weights.
                const __m256i weight_bits = _mm256_castps_si256(w);
                bad = _mm256_or_si256(bad, _mm256_or_si256(_mm256_cmpgt_epi32(weight_bits, _mm256_sub_epi32(infinity, _mm256_set1_epi32(1))),
                                                           _mm256_cmpgt_epi32(_mm256_setzero_si256(), weight_bits)));
                w0 = _mm256_cvtps_pd(_mm256_castps256_ps128(w));
                w1 = _mm256_cvtps_pd(_mm256_extractf128_ps(w, 1));
            } else {
                w0 = _mm256_loadu_pd(weights + i);
                w1 = _mm256_loadu_pd(weights + i + 4);
                // Not 0 <= w <= the largest double (NaN fails both ordered comparisons).
                const __m256d largest = _mm256_set1_pd(std::numeric_limits<double>::max());
                const __m256d good0 = _mm256_and_pd(_mm256_cmp_pd(w0, _mm256_setzero_pd(), _CMP_GE_OQ), _mm256_cmp_pd(w0, largest, _CMP_LE_OQ));
                const __m256d good1 = _mm256_and_pd(_mm256_cmp_pd(w1, _mm256_setzero_pd(), _CMP_GE_OQ), _mm256_cmp_pd(w1, largest, _CMP_LE_OQ));
                bad = _mm256_or_si256(bad, _mm256_xor_si256(_mm256_castpd_si256(_mm256_and_pd(good0, good1)), _mm256_set1_epi32(-1)));
            }
            // key = 2^31 + magnitude for positive values, 2^31 - magnitude for negative ones.
            const __m256i negative = _mm256_srai_epi32(bits, 31);
            const __m256i key = _mm256_add_epi32(sign, _mm256_sub_epi32(_mm256_xor_si256(magnitude, negative), negative));
            low_v = _mm256_min_epu32(low_v, key);
            high_v = _mm256_max_epu32(high_v, key);
            ones_v = _mm256_or_si256(ones_v, key);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(keys + i), key);
#if defined(__F16C__)
            // The fp16 key (same formula in 16 bits), and whether the value is exactly an fp16 value.
            const __m128i half = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            inexact = _mm256_or_si256(inexact, _mm256_xor_si256(_mm256_castps_si256(_mm256_cvtph_ps(half)), bits));
            const __m128i half_negative = _mm_srai_epi16(half, 15);
            const __m128i half_magnitude = _mm_and_si128(half, _mm_set1_epi16(0x7fff));
            const __m128i half_key = _mm_add_epi16(_mm_set1_epi16(static_cast<short>(0x8000)),
                                                   _mm_sub_epi16(_mm_xor_si128(half_magnitude, half_negative), half_negative));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(half_keys + i), half_key);
#endif
            weight0 = _mm256_add_pd(weight0, w0);
            weight1 = _mm256_add_pd(weight1, w1);
            sum0 = _mm256_fmadd_pd(w0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)), sum0);
            sum1 = _mm256_fmadd_pd(w1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), sum1);
        }
        alignas(32) std::uint32_t lanes[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), low_v);
        for (const std::uint32_t lane : lanes) low = std::min(low, lane);
        _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), high_v);
        for (const std::uint32_t lane : lanes) high = std::max(high, lane);
        _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), ones_v);
        for (const std::uint32_t lane : lanes) ones |= lane;
        suspect = suspect || !_mm256_testz_si256(bad, bad);
#if defined(__F16C__)
        half_exact = _mm256_testz_si256(inexact, inexact) != 0;
#else
        half_exact = false;  // no fp16 keys were written
#endif
        _mm256_storeu_pd(weight_lane, weight0);
        _mm256_storeu_pd(weight_lane + 4, weight1);
        _mm256_storeu_pd(sum_lane, sum0);
        _mm256_storeu_pd(sum_lane + 4, sum1);
    }
#else
    (void)values, (void)weights, (void)n, (void)keys, (void)half_keys, (void)half_exact, (void)low, (void)high, (void)ones, (void)weight_lane,
        (void)sum_lane, (void)suspect;
#endif
    return i;
}

/// For the m groups (value v, weight w, ascending): shifted[g] = v - pivot = y, and the prefix sums of w,
/// w y and w y^2 (s*[g] covers groups [0, g), so s*[0] = 0); returns the smallest weight.
inline double group_prefix_sums(const double* value, const double* weight, std::size_t m, double pivot, double* shifted,
                                double* s0, double* s1, double* s2) {
    s0[0] = s1[0] = s2[0] = 0;
    double lightest = std::numeric_limits<double>::infinity();
    std::size_t g = 0;
#if defined(__AVX2__)
    // Four groups at a time: their terms are summed within the vector (two shifted additions), and the
    // total before them is added to that. The running total waits on one addition per four groups (its
    // next value, the last lane, is added to it as a broadcast of the four groups' own sum), not on one
    // addition per group (3 cycles each, which bounded the plain loop). A prefix sum then carries a few
    // more roundings than one added term by term: exact_partition's guard allows for them.
    const __m256d zero = _mm256_setzero_pd();
    const __m256d centre = _mm256_set1_pd(pivot);
    const auto within = [zero](__m256d x) {  // one shuffle across the 128-bit halves (they are slower)
        x = _mm256_add_pd(x, _mm256_unpacklo_pd(zero, x));                                   // + [0, x0, 0, x2]
        return _mm256_add_pd(x, _mm256_permute_pd(_mm256_permute2f128_pd(x, x, 0x08), 0xc));  // + [0, 0, x1, x1]
    };
    const auto last = [](__m256d x) { return _mm256_permute4x64_pd(x, 0xff); };
    __m256d total0 = zero, total1 = zero, total2 = zero;
    __m256d light = _mm256_set1_pd(lightest);
    for (; g + 4 <= m; g += 4) {
        const __m256d w = _mm256_loadu_pd(weight + g);
        const __m256d y = _mm256_sub_pd(_mm256_loadu_pd(value + g), centre);
        const __m256d wy = _mm256_mul_pd(w, y);
        _mm256_storeu_pd(shifted + g, y);
        light = _mm256_min_pd(light, w);
        const __m256d part0 = within(w), part1 = within(wy), part2 = within(_mm256_mul_pd(wy, y));
        _mm256_storeu_pd(s0 + g + 1, _mm256_add_pd(total0, part0));
        _mm256_storeu_pd(s1 + g + 1, _mm256_add_pd(total1, part1));
        _mm256_storeu_pd(s2 + g + 1, _mm256_add_pd(total2, part2));
        total0 = _mm256_add_pd(total0, last(part0));  // the stored last lane, without waiting for it
        total1 = _mm256_add_pd(total1, last(part1));
        total2 = _mm256_add_pd(total2, last(part2));
    }
    alignas(32) double lanes[4];
    _mm256_store_pd(lanes, light);
    lightest = std::min(std::min(lanes[0], lanes[1]), std::min(lanes[2], lanes[3]));
#endif
    for (; g < m; ++g) {
        const double w = weight[g], y = value[g] - pivot;
        const double wy = w * y;
        lightest = std::min(lightest, w);
        shifted[g] = y;
        s0[g + 1] = s0[g] + w;
        s1[g + 1] = s1[g] + wy;
        s2[g + 1] = s2[g] + wy * y;
    }
    return lightest;
}

/// Clusters one row, reading it through value_at(i) and weight_at(i), or through the arrays values and
/// weights when not null; with Check, validates each entry (sqz::error naming `where` and the index).
template <bool Check, class T, class W, class ValueAt, class WeightAt>
void cluster(const char* where, ValueAt value_at, WeightAt weight_at, const T* values, const W* weights,
             std::size_t n, std::size_t k, const kmeans_options& options, workspace<T, W>& ws,
             kmeans_result<T>& result) {
    using K = key_t<T>;
    // 1. One pass over the input: checks, sort keys, key range, weight sums (and a copy of the weights
    //    when they are not stored contiguously).
    ws.key.resize(n);
    K* keys = ws.key.data();
    if (weights == nullptr) ws.weight_in.resize(n);
    K low = std::numeric_limits<K>::max(), high = 0, ones = 0;
    // Sums of w and w x in eight lanes, entry i in lane i % 8, folded in a fixed order at the end: entries
    // appended with zero weight then add exact zeros and change no result.
    double weight_lane[8] = {}, sum_lane[8] = {};
    std::size_t i = 0;
    bool half_exact = false;  // every value is an fp16 value, and ws.half_key holds their fp16 keys
    std::size_t fp16_checked = 0;  // entries read_floats read, and checked for fp16 data (half_exact)
    if constexpr (std::is_same_v<T, float> && (std::is_same_v<W, float> || std::is_same_v<W, double>)) {
        if (values != nullptr && weights != nullptr) {
            bool suspect = false;
            ws.half_key.resize(n);
            i = read_floats(values, weights, n, keys, ws.half_key.data(), half_exact, low, high, ones, weight_lane,
                            sum_lane, suspect);
            fp16_checked = i;
            if (Check && suspect)
                for (std::size_t j = 0; j < i; ++j)
                    if (!(std::isfinite(values[j]) && std::isfinite(weights[j]) && weights[j] >= 0)) {
                        require(std::isfinite(values[j]), where, ": values[", j, "] = ", values[j], " is not finite");
                        require(std::isfinite(weights[j]), where, ": weights[", j, "] = ", weights[j], " is not finite");
                        fail(where, ": weights[", j, "] = ", weights[j], " is negative");
                    }
        }
    }
    // The rest one by one, into the same lanes.
    for (; i < n; ++i) {
        const T v = value_at(i);
        const W w = weight_at(i);
        if constexpr (Check) {
            if (!(std::isfinite(v) && std::isfinite(w) && w >= 0)) {
                require(std::isfinite(v), where, ": values[", i, "] = ", v, " is not finite");
                require(std::isfinite(w), where, ": weights[", i, "] = ", w, " is not finite");
                fail(where, ": weights[", i, "] = ", w, " is negative");
            }
        }
        const K key = sort_key<T>(v);
        keys[i] = key;
        if (weights == nullptr) ws.weight_in[i] = w;
        low = std::min(low, key);
        high = std::max(high, key);
        ones |= key;
        weight_lane[i % 8] += static_cast<double>(w);
        sum_lane[i % 8] = multiply_add(static_cast<double>(w), static_cast<double>(v), sum_lane[i % 8]);
    }
    // The entries read_floats did not read (its tail, or the whole row when it is stored with a stride or
    // too short) are checked for fp16 data here, so that how a row is stored never changes which grouping
    // it takes.
    if constexpr (std::is_same_v<T, float>)
        if (fp16_checked == 0 || half_exact) {
            ws.half_key.resize(n);
            half_exact = fp16_keys(keys + fp16_checked, n - fp16_checked, ws.half_key.data() + fp16_checked);
        }
    const auto fold = [](const double (&lane)[8]) {
        return ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
    };
    double weight_total = fold(weight_lane), weighted_sum = fold(sum_lane);
    const bool equal_weights = weight_total == 0;  // every weight zero: count every entry once
    if (equal_weights) {
        weight_total = static_cast<double>(n);
        weighted_sum = 0;
        for (std::size_t j = 0; j < n; ++j) weighted_sum += static_cast<double>(value_at(j));
    }
    // The weighted mean: prefix sums of values shifted by it keep their precision.
    const double pivot = weighted_sum / weight_total;
    // 2. Distinct values with summed weights; those of positive weight, with prefix sums of w, w y and
    //    w y^2 (y = value - pivot), are the groups the methods cluster (the others are only labelled).
    const W* weight_of = equal_weights ? nullptr : (weights != nullptr ? weights : ws.weight_in.data());
    if constexpr (std::is_same_v<T, float>) {
        if (options.method == kmeans_method::lloyd && k >= 2 && k <= max_label_runs && !half_exact &&
            lloyd_on_buckets(where, ws, n, keys, weight_of, low, high, pivot, k, options, result))
            return;
    }
    std::size_t d = 0;
    // Contiguous float values with few clusters are labelled from their runs' first values (step 4), so the
    // grouping need not record every entry's group.
    bool label_by_value = false;
#if defined(__AVX2__)
    if constexpr (std::is_same_v<T, float>) label_by_value = values != nullptr && k <= max_label_runs;
#endif
    const auto group = [&]<bool EntryGroups>() {
        if (half_exact) {  // fp16 data: fp16 keys span at most 2^16 values, with no gap below the subnormals
            const auto half_key = [](K key) { return half_sort_key(float_to_half_bits(value_of_key<T>(key))); };
            return group_values<EntryGroups>(ws, n, ws.half_key.data(), weight_of, half_key(low), half_key(high), std::uint16_t{1});
        }
        return group_values<EntryGroups>(ws, n, keys, weight_of, low, high, ones);
    };
    if (label_by_value)
        d = group.template operator()<false>();
    else
        d = group.template operator()<true>();
    ws.size_groups(d);
    auto& s0 = ws.forward.s0;
    auto& s1 = ws.forward.s1;
    auto& s2 = ws.forward.s2;
    std::size_t m = d;
    {
        // The groups are the distinct values themselves when none weighs 0 (the common case, which then
        // copies nothing), else the positive-weight ones, copied to ws.value and ws.weight.
        const double* distinct_weight = ws.distinct_weight.data();
        const double* distinct_value = ws.distinct_value.data();
        ws.group_value = distinct_value;
        ws.group_weight = distinct_weight;
        ws.min_weight = group_prefix_sums(distinct_value, distinct_weight, d, pivot, ws.shifted.data(), s0.data(), s1.data(), s2.data());
        if (!(ws.min_weight > 0)) {
            ws.value.resize(d);
            ws.weight.resize(d);
            double* value = ws.value.data();
            double* weight = ws.weight.data();
            m = 0;
            for (std::size_t g = 0; g < d; ++g) {
                if (!(distinct_weight[g] > 0)) continue;
                value[m] = distinct_value[g];
                weight[m] = distinct_weight[g];
                ++m;
            }
            ws.group_value = value;
            ws.group_weight = weight;
            ws.min_weight = group_prefix_sums(value, weight, m, pivot, ws.shifted.data(), s0.data(), s1.data(), s2.data());
        }
    }
    require(std::isfinite(s2[m]), where, ": sum of weights * values^2 = ", s2[m], " overflows double");
    // 3. Centroids.
    result.centroids.assign(k, T(0));
    if (m <= k) {  // every distinct value is a centroid, the last one repeated
        for (std::size_t c = 0; c < k; ++c) result.centroids[c] = static_cast<T>(ws.group_value[std::min(c, m - 1)]);
    } else {
        const auto centroid_of = [&](std::size_t a, std::size_t b) {
            // The weighted mean, rounded to T and kept inside the cluster's range so centroids stay sorted.
            // A cluster whose weight vanished in the prefix sums (2^53 times lighter than the groups before
            // it) is summed directly.
            const double cluster_weight = s0[b] - s0[a];
            double mean = 0;
            if (cluster_weight > 0) {
                mean = (s1[b] - s1[a]) / cluster_weight;
            } else {
                double weight = 0, weighted = 0;
                for (std::size_t g = a; g < b; ++g) {
                    weight += ws.group_weight[g];
                    weighted += ws.group_weight[g] * ws.shifted[g];
                }
                mean = weighted / weight;
            }
            const T c = static_cast<T>(pivot + mean);
            return std::clamp(c, static_cast<T>(ws.group_value[a]), static_cast<T>(ws.group_value[b - 1]));
        };
        if (k == 1) {
            result.centroids[0] = centroid_of(0, m);
        } else if (options.method == kmeans_method::exact) {
            exact_partition(ws, m, k);
            std::size_t begin = 0;
            for (std::size_t c = 0; c < k; ++c) {
                const std::size_t end = ws.cluster_end[c];
                result.centroids[c] = centroid_of(begin, end);
                begin = end;
            }
        } else {
            lloyd_partition(ws, m, k, options);
            for (std::size_t c = 0; c < k; ++c) result.centroids[c] = static_cast<T>(pivot + ws.best_centre[c]);
            std::sort(result.centroids.begin(), result.centroids.end());
        }
    }
    // 4. Labels (each centroid's run of distinct values) and the objective; then every entry takes its
    //    value's label, from the runs' first values or through its group.
    result.objective = label_groups(ws, result.centroids, d, m);
    result.labels.resize(n);
    const std::size_t runs = ws.run_begin.size();
    if constexpr (std::is_same_v<T, float>) {
        if (label_by_value) {
            label_by_runs(values, n, ws.distinct_value.data(), ws.run_begin.data(), ws.run_label.data(), runs,
                          result.labels.data());
            return;
        }
    }
    ws.distinct_label.resize(d);
    std::uint8_t* distinct_label = ws.distinct_label.data();
    for (std::size_t r = 0; r < runs; ++r)
        std::fill(distinct_label + ws.run_begin[r], distinct_label + (r + 1 < runs ? ws.run_begin[r + 1] : d), ws.run_label[r]);
    const std::uint32_t* group_of = ws.group_of.data();
    std::uint8_t* labels = result.labels.data();
    for (std::size_t j = 0; j < n; ++j) labels[j] = distinct_label[group_of[j]];
}

template <class T, class W>
workspace<T, W>& thread_workspace() {
    static thread_local workspace<T, W> ws;
    return ws;
}

}  // namespace detail::kmeans

/// Weighted 1-D k-means of one row: minimises sum_i weights[i] (values[i] - c(values[i]))^2 over k
/// centroids. values: float or double; weights: float or double, the same length; both as std::span,
/// std::vector (any sized range) or an Eigen vector expression. Returns kmeans_result<value type>.
template <class Values, class Weights>
auto weighted_kmeans(const Values& values, const Weights& weights, int k, const kmeans_options& options = {}) {
    using T = detail::kmeans::element_t<Values>;
    using W = detail::kmeans::element_t<Weights>;
    static_assert(working_scalar<T>, "sqz::weighted_kmeans: values must hold float or double");
    static_assert(working_scalar<W>, "sqz::weighted_kmeans: weights must hold float or double");
    if constexpr (detail::kmeans::eigen_dense<Values>)
        static_assert(Values::IsVectorAtCompileTime, "sqz::weighted_kmeans: values must be an Eigen vector expression");
    if constexpr (detail::kmeans::eigen_dense<Weights>)
        static_assert(Weights::IsVectorAtCompileTime, "sqz::weighted_kmeans: weights must be an Eigen vector expression");
    constexpr const char* where = "sqz::weighted_kmeans";
    const detail::kmeans::reader<Values> x(values);
    const detail::kmeans::reader<Weights> w(weights);
    const std::size_t n = x.size();
    detail::require(k >= 1 && k <= detail::kmeans::max_clusters, where, ": k = ", k, " is outside 1..",
                    detail::kmeans::max_clusters);
    detail::require(n > 0, where, ": values is empty");
    detail::require(w.size() == n, where, ": weights.size() = ", w.size(), " differs from values.size() = ", n);
    detail::require(n <= std::numeric_limits<std::uint32_t>::max(), where, ": values.size() = ", n, " exceeds 2^32 - 1");
    kmeans_result<T> result;
    detail::kmeans::cluster<true>(
        where, [&](std::size_t i) { return static_cast<T>(x[i]); }, [&](std::size_t i) { return static_cast<W>(w[i]); },
        detail::kmeans::contiguous_data(values), detail::kmeans::contiguous_data(weights), n, static_cast<std::size_t>(k),
        options, detail::kmeans::thread_workspace<T, W>(), result);
    return result;
}

/// Weighted k-means of every row of `values` with the matching row of `weights` (Eigen matrices or
/// matrix expressions of the same shape, float or double), rows in parallel with OpenMP on `threads`
/// threads (<= 0: OpenMP's default). Results are identical for any thread count. A matrix with no rows
/// gives an empty vector; rows with no columns throw.
template <class ValuesMatrix, class WeightsMatrix>
auto weighted_kmeans_rows(const ValuesMatrix& values, const WeightsMatrix& weights, int k,
                          const kmeans_options& options = {}, int threads = 0) {
    static_assert(detail::kmeans::eigen_dense<ValuesMatrix> && detail::kmeans::eigen_dense<WeightsMatrix>,
                  "sqz::weighted_kmeans_rows: values and weights must be Eigen matrices");
    using T = typename ValuesMatrix::Scalar;
    using W = typename WeightsMatrix::Scalar;
    static_assert(working_scalar<T>, "sqz::weighted_kmeans_rows: values must hold float or double");
    static_assert(working_scalar<W>, "sqz::weighted_kmeans_rows: weights must hold float or double");
    constexpr const char* where = "sqz::weighted_kmeans_rows";
    const Eigen::Index rows = values.rows(), cols = values.cols();
    detail::require(weights.rows() == rows && weights.cols() == cols, where, ": weights is ", weights.rows(), " x ",
                    weights.cols(), " but values is ", rows, " x ", cols);
    detail::require(k >= 1 && k <= detail::kmeans::max_clusters, where, ": k = ", k, " is outside 1..",
                    detail::kmeans::max_clusters);
    detail::require(rows == 0 || cols > 0, where, ": values has ", rows, " rows of no columns");
    detail::require(cols <= static_cast<Eigen::Index>(std::numeric_limits<std::uint32_t>::max()), where,
                    ": values has ", cols, " columns, more than 2^32 - 1");
    // Validate serially first, so the error names the first bad entry whatever the thread count.
    for (Eigen::Index r = 0; r < rows; ++r)
        for (Eigen::Index c = 0; c < cols; ++c) {
            const T x = values.coeff(r, c);
            const W w = weights.coeff(r, c);
            if (!(std::isfinite(x) && std::isfinite(w) && w >= 0)) {
                detail::require(std::isfinite(x), where, ": values(", r, ", ", c, ") = ", x, " is not finite");
                detail::require(std::isfinite(w), where, ": weights(", r, ", ", c, ") = ", w, " is not finite");
                detail::fail(where, ": weights(", r, ", ", c, ") = ", w, " is negative");
            }
        }
    std::vector<kmeans_result<T>> results(static_cast<std::size_t>(rows));
    const auto n = static_cast<std::size_t>(cols);
    detail::parallel_for(rows, threads, [&](Eigen::Index r, int) {
        const auto value_row = values.row(r);
        const auto weight_row = weights.row(r);
        detail::kmeans::cluster<false>(
            where, [&](std::size_t c) { return values.coeff(r, static_cast<Eigen::Index>(c)); },
            [&](std::size_t c) { return weights.coeff(r, static_cast<Eigen::Index>(c)); },
            detail::kmeans::contiguous_data(value_row), detail::kmeans::contiguous_data(weight_row), n,
            static_cast<std::size_t>(k), options, detail::kmeans::thread_workspace<T, W>(), results[static_cast<std::size_t>(r)]);
    });
    return results;
}

}  // namespace sqz
