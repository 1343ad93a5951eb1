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
// is solved by divide and conquer within those bounds.
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
//   labelled with their nearest centroid. If every weight is zero, all weights count as 1 (as
//   scikit-learn's KMeans then does), and the objective uses those equal weights.
// - If fewer than k distinct values have positive weight, each of them is a centroid and the last one
//   is repeated to make k (objective 0).
// - centroids are sorted ascending; labels[i] is the index of the centroid nearest to values[i], the
//   lowest such index when two are equally near; objective = sum_i w_i (x_i - centroids[labels[i]])^2
//   computed in double with the returned (value-type) centroids.
#pragma once

#include <sqz/error.hpp>
#include <sqz/synthetic.hpp>
#include <sqz/types.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <iterator>
#include <limits>
#include <ranges>
#include <span>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace sqz {

enum class kmeans_method {
    exact,  ///< the global optimum (dynamic programming)
    lloyd   ///< Lloyd's heuristic from weighted k-means++ seeds, best of `restarts` runs
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

/// Sort key for a float or double whose unsigned order is the numeric order (-0.0 becomes +0.0 first, so
/// that the two zeros merge).
template <class T>
using key_t = std::conditional_t<std::is_same_v<T, float>, std::uint32_t, std::uint64_t>;

template <class T>
inline key_t<T> sort_key(T value) noexcept {
    using K = key_t<T>;
    const K bits = std::bit_cast<K>(static_cast<T>(value + T(0)));
    constexpr K sign = K(1) << (sizeof(K) * 8 - 1);
    return (bits & sign) ? ~bits : (bits | sign);
}

template <class T>
struct keyed_index {
    key_t<T> key;
    std::uint32_t index;
};

/// Per-thread scratch memory, grown on demand and reused across rows.
template <class T>
struct workspace {
    std::vector<keyed_index<T>> items, items_scratch;  // (key, original position), sorted by key
    std::vector<std::uint32_t> histogram;
    std::vector<std::uint32_t> group_end;  // sorted items [group_end[g-1], group_end[g]) share a value
    std::vector<T> group_value;
    std::vector<double> group_weight;
    std::vector<double> value, weight;     // positive-weight groups, ascending
    std::vector<double> p0, p1, p2;        // prefix sums of w, w y, w y^2 with y = value - pivot
    std::vector<double> previous, current; // DP layers
    std::vector<std::uint32_t> choice;     // DP argmins, (k - 1) layers of (m - k + 1)
    std::vector<std::uint32_t> cluster_end;  // clusters as [cluster_end[c-1], cluster_end[c]) of groups
    std::vector<double> centre;              // lloyd scratch
    std::vector<double> best_centre;
    std::vector<std::uint32_t> boundary;
    std::vector<T> distinct_centroid;
    std::vector<std::uint8_t> distinct_first;
};

/// LSD radix sort of (key, index) pairs by key, 11 bits per pass; passes where every key has the same
/// digit are skipped. Stable, so equal keys keep ascending original positions.
template <class T>
void radix_sort(workspace<T>& ws, std::size_t n) {
    constexpr int digit_bits = 11;
    constexpr std::size_t radix = std::size_t{1} << digit_bits;
    constexpr int key_bits = static_cast<int>(sizeof(key_t<T>) * 8);
    constexpr int passes = (key_bits + digit_bits - 1) / digit_bits;
    ws.histogram.assign(radix * passes, 0);
    ws.items_scratch.resize(n);
    auto* source = ws.items.data();
    auto* target = ws.items_scratch.data();
    for (std::size_t i = 0; i < n; ++i) {
        const auto key = source[i].key;
        for (int p = 0; p < passes; ++p)
            ++ws.histogram[static_cast<std::size_t>(p) * radix + ((key >> (p * digit_bits)) & (radix - 1))];
    }
    for (int p = 0; p < passes; ++p) {
        std::uint32_t* count = ws.histogram.data() + static_cast<std::size_t>(p) * radix;
        const auto first_digit = (source[0].key >> (p * digit_bits)) & (radix - 1);
        if (count[first_digit] == n) continue;  // every key has this digit: the pass would not move anything
        std::uint32_t offset = 0;
        for (std::size_t d = 0; d < radix; ++d) {
            const auto c = count[d];
            count[d] = offset;
            offset += c;
        }
        for (std::size_t i = 0; i < n; ++i) {
            const auto digit = (source[i].key >> (p * digit_bits)) & (radix - 1);
            target[count[digit]++] = source[i];
        }
        std::swap(source, target);
    }
    if (source != ws.items.data()) std::copy(source, source + n, ws.items.data());
}

inline double interval_cost(const double* p0, const double* p1, const double* p2, std::size_t a, std::size_t b) {
    const double s0 = p0[b] - p0[a];
    const double s1 = p1[b] - p1[a];
    return (p2[b] - p2[a]) - s1 * s1 / s0;
}

/// One DP layer by divide and conquer over j in [j_begin, j_end): current[j] = min over a in
/// [a_begin, a_end] (a < j) of previous[a] + cost(a, j), choice[j - offset] = the smallest minimiser. The
/// minimiser is non-decreasing in j, and at least lower_bound[j] (the previous layer's choice) when given.
struct layer_solver {
    const double* p0;
    const double* p1;
    const double* p2;
    const double* previous;
    double* current;
    std::uint32_t* choice;              // indexed by j - choice_offset
    std::size_t choice_offset;
    const std::uint32_t* lower_bound;   // indexed by j - lower_offset, valid for j < lower_end; may be null
    std::size_t lower_offset;
    std::size_t lower_end;

    void solve(std::size_t j_begin, std::size_t j_end, std::size_t a_begin, std::size_t a_end) const {
        while (j_begin < j_end) {
            const std::size_t j = j_begin + (j_end - j_begin) / 2;
            std::size_t lo = a_begin;
            if (lower_bound != nullptr && j < lower_end) lo = std::max<std::size_t>(lo, lower_bound[j - lower_offset]);
            const std::size_t hi = std::min(a_end, j - 1);
            double best = std::numeric_limits<double>::infinity();
            std::size_t best_a = lo;
            for (std::size_t a = lo; a <= hi; ++a) {
                const double value = previous[a] + interval_cost(p0, p1, p2, a, j);
                if (value < best) {
                    best = value;
                    best_a = a;
                }
            }
            current[j] = best;
            choice[j - choice_offset] = static_cast<std::uint32_t>(best_a);
            // Recurse on the smaller half, loop on the larger one (bounded stack depth).
            if (j - j_begin < j_end - (j + 1)) {
                solve(j_begin, j, a_begin, best_a);
                j_begin = j + 1;
                a_begin = best_a;
            } else {
                solve(j + 1, j_end, best_a, a_end);
                j_end = j;
                a_end = best_a;
            }
        }
    }
};

/// Exact clustering of the m positive-weight groups into k >= 2 intervals (m > k); fills cluster_end.
template <class T>
void exact_partition(workspace<T>& ws, std::size_t m, std::size_t k) {
    const double* p0 = ws.p0.data();
    const double* p1 = ws.p1.data();
    const double* p2 = ws.p2.data();
    const std::size_t width = m - k + 1;  // layer l (1-based) needs j in [l, m - k + l]
    ws.previous.resize(m + 1);
    ws.current.resize(m + 1);
    ws.choice.resize((k - 1) * width);
    for (std::size_t j = 1; j <= width; ++j) ws.previous[j] = interval_cost(p0, p1, p2, 0, j);
    for (std::size_t l = 2; l < k; ++l) {
        layer_solver solver{p0, p1, p2, ws.previous.data(), ws.current.data(),
                            ws.choice.data() + (l - 2) * width, l, nullptr, 0, 0};
        if (l > 2) {
            solver.lower_bound = ws.choice.data() + (l - 3) * width;
            solver.lower_offset = l - 1;
            solver.lower_end = l - 1 + width;
        }
        solver.solve(l, l + width, l - 1, m - 1);
        std::swap(ws.previous, ws.current);
    }
    // The last layer needs only j = m.
    double best = std::numeric_limits<double>::infinity();
    std::size_t best_a = k - 1;
    for (std::size_t a = k - 1; a < m; ++a) {
        const double value = ws.previous[a] + interval_cost(p0, p1, p2, a, m);
        if (value < best) {
            best = value;
            best_a = a;
        }
    }
    ws.cluster_end.resize(k);
    ws.cluster_end[k - 1] = static_cast<std::uint32_t>(m);
    std::size_t end = best_a;
    for (std::size_t l = k - 1; l >= 1; --l) {
        ws.cluster_end[l - 1] = static_cast<std::uint32_t>(end);
        if (l >= 2) end = ws.choice[(l - 2) * width + (end - l)];
    }
}

/// Sum of w (y - c)^2 over positive groups [a, b) with c in shifted coordinates, from the prefix sums.
inline double cell_cost(const double* p0, const double* p1, const double* p2, std::size_t a, std::size_t b,
                        double c) {
    const double s0 = p0[b] - p0[a];
    const double s1 = p1[b] - p1[a];
    const double s2 = p2[b] - p2[a];
    return std::max(0.0, s2 - 2.0 * c * s1 + c * c * s0);
}

/// Lloyd's algorithm on the m positive-weight groups from greedy weighted k-means++ seeds; fills
/// ws.best_centre with k sorted centres in shifted coordinates.
template <class T>
void lloyd_centres(workspace<T>& ws, std::size_t m, std::size_t k, const kmeans_options& options) {
    const double* p0 = ws.p0.data();
    const double* p1 = ws.p1.data();
    const double* p2 = ws.p2.data();
    const double* y = ws.value.data();  // shifted values (filled by the caller)
    synthetic::rng random(options.seed);
    // First index of groups >= c: Voronoi boundaries are midpoints between sorted centres.
    const auto first_at_least = [&](double c) {
        return static_cast<std::size_t>(std::lower_bound(y, y + m, c) - y);
    };
    // Total cost of the Voronoi cells of sorted centres.
    std::vector<double>& centre = ws.centre;
    std::vector<std::uint32_t>& boundary = ws.boundary;
    const auto total_cost = [&](const double* cs, std::size_t count) {
        double total = 0;
        std::size_t begin = 0;
        for (std::size_t c = 0; c < count; ++c) {
            const std::size_t end = c + 1 < count ? first_at_least(0.5 * (cs[c] + cs[c + 1])) : m;
            total += cell_cost(p0, p1, p2, begin, end, cs[c]);
            begin = end;
        }
        return total;
    };
    // Samples a group with probability proportional to w (y - nearest centre)^2 (or to w without centres).
    std::vector<double> cell(k);
    const auto sample = [&](std::size_t count) -> std::size_t {
        if (count == 0) {
            const double target = random.uniform() * p0[m];
            return std::min<std::size_t>(m - 1, static_cast<std::size_t>(std::upper_bound(p0 + 1, p0 + m + 1, target) - (p0 + 1)));
        }
        double total = 0;
        std::size_t begin = 0;
        std::vector<std::size_t> begins(count + 1);
        for (std::size_t c = 0; c < count; ++c) {
            const std::size_t end = c + 1 < count ? first_at_least(0.5 * (centre[c] + centre[c + 1])) : m;
            begins[c] = begin;
            cell[c] = cell_cost(p0, p1, p2, begin, end, centre[c]);
            total += cell[c];
            begin = end;
        }
        begins[count] = m;
        double target = random.uniform() * total;
        std::size_t c = 0;
        while (c + 1 < count && target >= cell[c]) {
            target -= cell[c];
            ++c;
        }
        // Within the cell: smallest t with cumulative cost over [begins[c], t + 1) > target.
        std::size_t lo = begins[c], hi = begins[c + 1];
        if (lo >= hi) return m;  // empty cell (rounding): no sample
        while (hi - lo > 1) {
            const std::size_t mid = lo + (hi - lo) / 2;
            if (cell_cost(p0, p1, p2, begins[c], mid, centre[c]) > target)
                hi = mid;
            else
                lo = mid;
        }
        return lo;
    };
    const std::size_t trials = 2 + static_cast<std::size_t>(std::log(static_cast<double>(k)));
    double best_objective = std::numeric_limits<double>::infinity();
    ws.best_centre.assign(k, 0.0);
    std::vector<double> candidate_centres;
    for (int restart = 0; restart < std::max(1, options.restarts); ++restart) {
        // Greedy k-means++ (as scikit-learn): of `trials` samples, keep the one that lowers the cost most.
        centre.clear();
        centre.push_back(y[sample(0)]);
        while (centre.size() < k) {
            double best_cost = std::numeric_limits<double>::infinity();
            double best_value = 0;
            bool found = false;
            for (std::size_t t = 0; t < trials; ++t) {
                const std::size_t g = sample(centre.size());
                if (g >= m) continue;
                const double v = y[g];
                if (std::binary_search(centre.begin(), centre.end(), v)) continue;
                candidate_centres = centre;
                candidate_centres.insert(std::upper_bound(candidate_centres.begin(), candidate_centres.end(), v), v);
                const double cost = total_cost(candidate_centres.data(), candidate_centres.size());
                if (cost < best_cost) {
                    best_cost = cost;
                    best_value = v;
                    found = true;
                }
            }
            if (!found) {  // degenerate sampling: take the smallest group that is not a centre yet
                for (std::size_t g = 0; g < m; ++g)
                    if (!std::binary_search(centre.begin(), centre.end(), y[g])) {
                        best_value = y[g];
                        break;
                    }
            }
            centre.insert(std::upper_bound(centre.begin(), centre.end(), best_value), best_value);
        }
        // Lloyd iterations: cells are intervals between midpoints; stop when no boundary moves.
        boundary.assign(k + 1, 0);
        boundary[k] = static_cast<std::uint32_t>(m);
        for (int iteration = 0; iteration < options.max_iterations; ++iteration) {
            bool moved = iteration == 0;
            for (std::size_t c = 0; c + 1 < k; ++c) {
                const auto b = static_cast<std::uint32_t>(first_at_least(0.5 * (centre[c] + centre[c + 1])));
                moved |= b != boundary[c + 1];
                boundary[c + 1] = b;
            }
            if (!moved) break;
            for (std::size_t c = 0; c < k; ++c) {
                const std::size_t a = boundary[c], b = boundary[c + 1];
                if (a < b) centre[c] = std::clamp((p1[b] - p1[a]) / (p0[b] - p0[a]), y[a], y[b - 1]);
            }
        }
        const double objective = total_cost(centre.data(), k);
        if (objective < best_objective) {
            best_objective = objective;
            std::copy(centre.begin(), centre.end(), ws.best_centre.begin());
        }
    }
}

/// Clusters one row given element accessors; `where` prefixes error messages.
template <class T, class ValueAt, class WeightAt>
void cluster(ValueAt value_at, WeightAt weight_at, std::size_t n, int k_signed, const kmeans_options& options,
             workspace<T>& ws, kmeans_result<T>& result) {
    const auto k = static_cast<std::size_t>(k_signed);
    // 1. Keys, sorted; equal values merged into groups with summed weights.
    ws.items.resize(n);
    for (std::size_t i = 0; i < n; ++i) ws.items[i] = {sort_key<T>(value_at(i)), static_cast<std::uint32_t>(i)};
    radix_sort(ws, n);
    ws.group_end.clear();
    ws.group_value.clear();
    ws.group_weight.clear();
    double total_weight = 0;
    for (std::size_t i = 0; i < n;) {
        const auto key = ws.items[i].key;
        double w = 0;
        std::size_t j = i;
        for (; j < n && ws.items[j].key == key; ++j) w += static_cast<double>(weight_at(ws.items[j].index));
        ws.group_end.push_back(static_cast<std::uint32_t>(j));
        ws.group_value.push_back(value_at(ws.items[i].index) + T(0));
        ws.group_weight.push_back(w);
        total_weight += w;
        i = j;
    }
    const std::size_t groups = ws.group_value.size();
    if (total_weight == 0) {  // every weight zero: equal weights
        for (std::size_t g = 0; g < groups; ++g)
            ws.group_weight[g] = static_cast<double>(ws.group_end[g] - (g == 0 ? 0 : ws.group_end[g - 1]));
    }
    // 2. Positive-weight groups with prefix sums, shifted by the weighted mean for accuracy.
    ws.value.clear();
    ws.weight.clear();
    double weighted_sum = 0, weight_sum = 0;
    for (std::size_t g = 0; g < groups; ++g)
        if (ws.group_weight[g] > 0) {
            ws.value.push_back(static_cast<double>(ws.group_value[g]));
            ws.weight.push_back(ws.group_weight[g]);
            weighted_sum += ws.group_weight[g] * static_cast<double>(ws.group_value[g]);
            weight_sum += ws.group_weight[g];
        }
    const std::size_t m = ws.value.size();
    const double pivot = std::clamp(weighted_sum / weight_sum, ws.value.front(), ws.value.back());
    result.centroids.assign(k, T(0));
    if (m <= k) {
        for (std::size_t c = 0; c < k; ++c) result.centroids[c] = static_cast<T>(ws.value[std::min(c, m - 1)]);
    } else {
        ws.p0.resize(m + 1);
        ws.p1.resize(m + 1);
        ws.p2.resize(m + 1);
        ws.p0[0] = ws.p1[0] = ws.p2[0] = 0;
        for (std::size_t g = 0; g < m; ++g) {
            const double y = ws.value[g] - pivot;
            const double w = ws.weight[g];
            ws.p0[g + 1] = ws.p0[g] + w;
            ws.p1[g + 1] = ws.p1[g] + w * y;
            ws.p2[g + 1] = ws.p2[g] + w * y * y;
        }
        require(std::isfinite(ws.p2[m]), "sqz::weighted_kmeans: sum of weights * values^2 = ", ws.p2[m],
                " overflows double");
        const auto centroid_of = [&](double shifted, std::size_t a, std::size_t b) {
            // Rounded to T and kept inside the cluster's range, so centroids stay sorted.
            const T c = static_cast<T>(pivot + shifted);
            return std::clamp(c, static_cast<T>(ws.value[a]), static_cast<T>(ws.value[b - 1]));
        };
        if (k == 1) {
            result.centroids[0] = centroid_of(ws.p1[m] / ws.p0[m], 0, m);
        } else if (options.method == kmeans_method::exact) {
            exact_partition(ws, m, k);
            std::size_t begin = 0;
            for (std::size_t c = 0; c < k; ++c) {
                const std::size_t end = ws.cluster_end[c];
                result.centroids[c] = centroid_of((ws.p1[end] - ws.p1[begin]) / (ws.p0[end] - ws.p0[begin]), begin, end);
                begin = end;
            }
        } else {
            for (std::size_t g = 0; g < m; ++g) ws.value[g] -= pivot;
            lloyd_centres(ws, m, k, options);
            for (std::size_t c = 0; c < k; ++c) result.centroids[c] = static_cast<T>(pivot + ws.best_centre[c]);
            std::sort(result.centroids.begin(), result.centroids.end());
        }
    }
    // 3. Labels: every group goes to its nearest centroid (lowest index on ties), in one merge-like pass.
    ws.distinct_centroid.clear();
    ws.distinct_first.clear();
    for (std::size_t c = 0; c < k; ++c)
        if (c == 0 || result.centroids[c] != result.centroids[c - 1]) {
            ws.distinct_centroid.push_back(result.centroids[c]);
            ws.distinct_first.push_back(static_cast<std::uint8_t>(c));
        }
    result.labels.resize(n);
    result.objective = 0;
    std::size_t nearest = 0;
    const std::size_t distinct = ws.distinct_centroid.size();
    for (std::size_t g = 0; g < groups; ++g) {
        const double v = static_cast<double>(ws.group_value[g]);
        while (nearest + 1 < distinct &&
               static_cast<double>(ws.distinct_centroid[nearest + 1]) - v < v - static_cast<double>(ws.distinct_centroid[nearest]))
            ++nearest;
        const double d = v - static_cast<double>(ws.distinct_centroid[nearest]);
        result.objective += ws.group_weight[g] * d * d;
        const std::uint8_t label = ws.distinct_first[nearest];
        for (std::size_t t = g == 0 ? 0 : ws.group_end[g - 1]; t < ws.group_end[g]; ++t) result.labels[ws.items[t].index] = label;
    }
}

template <class Values, class Weights>
void validate(const char* where, const Values& values, const Weights& weights, std::size_t n, int k) {
    require(k >= 1 && k <= max_clusters, where, ": k = ", k, " is outside 1..", max_clusters);
    require(n > 0, where, ": values is empty");
    for (std::size_t i = 0; i < n; ++i) {
        const auto x = values(i);
        require(std::isfinite(x), where, ": values[", i, "] = ", x, " is not finite");
        const auto w = weights(i);
        require(std::isfinite(w), where, ": weights[", i, "] = ", w, " is not finite");
        require(w >= 0, where, ": weights[", i, "] = ", w, " is negative");
    }
}

template <class T>
workspace<T>& thread_workspace() {
    static thread_local workspace<T> ws;
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
    const detail::kmeans::reader<Values> x(values);
    const detail::kmeans::reader<Weights> w(weights);
    const std::size_t n = x.size();
    detail::require(w.size() == n, "sqz::weighted_kmeans: weights.size() = ", w.size(), " differs from values.size() = ", n);
    detail::require(n <= std::numeric_limits<std::uint32_t>::max(), "sqz::weighted_kmeans: values.size() = ", n,
                    " exceeds 2^32 - 1");
    const auto value_at = [&](std::size_t i) { return static_cast<T>(x[i]); };
    const auto weight_at = [&](std::size_t i) { return static_cast<W>(w[i]); };
    detail::kmeans::validate("sqz::weighted_kmeans", value_at, weight_at, n, k);
    kmeans_result<T> result;
    detail::kmeans::cluster<T>(value_at, weight_at, n, k, options, detail::kmeans::thread_workspace<T>(), result);
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
            detail::require(std::isfinite(x), where, ": values(", r, ", ", c, ") = ", x, " is not finite");
            detail::require(std::isfinite(w), where, ": weights(", r, ", ", c, ") = ", w, " is not finite");
            detail::require(w >= 0, where, ": weights(", r, ", ", c, ") = ", w, " is negative");
        }
    std::vector<kmeans_result<T>> results(static_cast<std::size_t>(rows));
    std::exception_ptr first_error;
    Eigen::Index first_error_row = rows;
    const auto n = static_cast<std::size_t>(cols);
#ifdef _OPENMP
    const int thread_count = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel for schedule(dynamic, 1) num_threads(thread_count)
#endif
    for (Eigen::Index r = 0; r < rows; ++r) {
        try {
            const auto value_at = [&](std::size_t c) { return values.coeff(r, static_cast<Eigen::Index>(c)); };
            const auto weight_at = [&](std::size_t c) { return weights.coeff(r, static_cast<Eigen::Index>(c)); };
            detail::kmeans::cluster<T>(value_at, weight_at, n, k, options, detail::kmeans::thread_workspace<T>(),
                                       results[static_cast<std::size_t>(r)]);
        } catch (...) {
#ifdef _OPENMP
#pragma omp critical(sqz_kmeans_rows_error)
#endif
            if (r < first_error_row) {
                first_error_row = r;
                first_error = std::current_exception();
            }
        }
    }
    (void)threads;
    if (first_error) std::rethrow_exception(first_error);
    return results;
}

}  // namespace sqz
