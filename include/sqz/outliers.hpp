// sqz/outliers.hpp - the dense-and-sparse split: which entries of W are kept exactly in a sparse matrix.
//
// SqueezeLLM keeps two kinds of entries out of the dense, codebook-quantized part:
//   sensitive values  the top fraction of entries by sensitivity (their error costs the most);
//   outliers          the entries beyond percentile thresholds T_min, T_max (they would stretch the
//                     codebook's range), or, as the reference implementation does, beyond the IQR fence
//                     max(|q1 - r (q3 - q1)|, |q3 + r (q3 - q1)|) in magnitude.
// Sensitive values are chosen first, outliers from the rest, as in the paper. The quantizer gives the
// extracted entries zero weight in the dense k-means and stores W_ij - LUT_i[code_ij] for them.
//
// Counts are exact. A fraction p of N entries means k = ceil(p * N) entries (with a relative tolerance
// of 1e-12, so 0.07 of 100 is 7), per matrix or, with per_row, ceil(p * cols) in every row. Percentile
// outliers take k_lower = floor(k / 2) entries from the bottom and k_upper = k - k_lower from the top.
// Ties at a boundary are broken so that exactly k entries are taken:
//   sensitive values: equal sensitivity -> larger |W_ij| first -> lower row-major position first;
//   outliers:         equal W_ij        -> larger sensitivity first -> lower row-major position first.
// The IQR rule takes every non-sensitive entry with |W_ij| > fence, so its count follows from the data.
#pragma once

#include <sqz/detail/select.hpp>
#include <sqz/detail/threads.hpp>
#include <sqz/error.hpp>
#include <sqz/sensitivity.hpp>
#include <sqz/types.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

namespace sqz {

/// Which entries go to the sparse part. Fractions lie in [0, 1); iqr_range >= 0 and 0 means off. At most
/// one outlier rule: outlier_fraction > 0 (percentiles) or iqr_range > 0 (IQR fence).
struct split_options {
    double sensitive_fraction = 0.0;  ///< top fraction by sensitivity (paper: 0.05%)
    double outlier_fraction = 0.0;    ///< percentile outliers, half from each tail (paper: 0.40%)
    double iqr_range = 0.0;           ///< r of the reference's IQR fence rule
    bool per_row = false;             ///< counts, percentiles and quartiles per row instead of per matrix
};

/// Why an entry was extracted.
enum class extraction_reason : std::uint8_t { sensitive = 1, outlier = 2 };

/// The extracted positions of an m x n matrix in CSR form (columns increasing in each row), with the
/// reason of each and the thresholds that were applied.
struct sparse_selection {
    Eigen::Index rows = 0;
    Eigen::Index cols = 0;
    std::vector<std::int32_t> row_ptr{0};  ///< rows + 1 offsets into col_idx
    std::vector<std::int32_t> col_idx;
    std::vector<extraction_reason> reason;  ///< parallel to col_idx
    Eigen::Index sensitive_count = 0;
    Eigen::Index outlier_count = 0;
    /// Per-matrix rules: non-sensitive entries below lower_threshold and above upper_threshold were all
    /// extracted (entries equal to a percentile threshold possibly only in part, see the tie rule). The IQR
    /// rule gives -fence and +fence. NaN when no outlier rule applies or thresholds differ per row;
    /// -inf / +inf when a tail takes no entry.
    double lower_threshold = std::numeric_limits<double>::quiet_NaN();
    double upper_threshold = std::numeric_limits<double>::quiet_NaN();

    Eigen::Index nonzeros() const noexcept { return static_cast<Eigen::Index>(col_idx.size()); }
    double fraction() const noexcept {
        const double n = static_cast<double>(rows) * static_cast<double>(cols);
        return n > 0 ? static_cast<double>(nonzeros()) / n : 0.0;
    }
    std::span<const std::int32_t> row(Eigen::Index i) const noexcept {
        const auto begin = static_cast<std::size_t>(row_ptr[static_cast<std::size_t>(i)]);
        const auto end = static_cast<std::size_t>(row_ptr[static_cast<std::size_t>(i) + 1]);
        return std::span<const std::int32_t>(col_idx).subspan(begin, end - begin);
    }
    bool contains(Eigen::Index i, Eigen::Index j) const noexcept {
        const auto r = row(i);
        return std::binary_search(r.begin(), r.end(), static_cast<std::int32_t>(j));
    }
};

/// W = dense + sparse exactly: sparse holds W_ij at the selected positions, dense holds 0 there and W_ij
/// elsewhere.
template <working_scalar T>
struct dense_sparse_split {
    row_matrix<T> dense;
    csr_matrix<T> sparse;
    sparse_selection selection;
};

namespace detail {

/// k = ceil(fraction * total), with a relative tolerance so that products that should be integers are.
inline std::uint64_t fraction_count(double fraction, std::uint64_t total) noexcept {
    const double exact = fraction * static_cast<double>(total);
    const double k = std::ceil(exact - exact * 1e-12);
    return std::min<std::uint64_t>(total, static_cast<std::uint64_t>(std::max(0.0, k)));
}

inline void validate_split_options(const split_options& o, const char* where) {
    const auto check_fraction = [where](double value, const char* name) {
        require(std::isfinite(value) && value >= 0.0 && value < 1.0, where, ": ", name, " = ", value,
                " is outside [0, 1)");
    };
    check_fraction(o.sensitive_fraction, "sensitive_fraction");
    check_fraction(o.outlier_fraction, "outlier_fraction");
    require(std::isfinite(o.iqr_range) && o.iqr_range >= 0.0, where, ": iqr_range = ", o.iqr_range,
            " must be finite and >= 0");
    require(!(o.outlier_fraction > 0.0 && o.iqr_range > 0.0), where, ": outlier_fraction = ", o.outlier_fraction,
            " and iqr_range = ", o.iqr_range, " are both set; choose one outlier rule");
}

/// Linear-interpolation quantile of sorted data given its two neighbours (numpy's and torch's default).
inline double interpolate(double low, double high, double fraction_between) noexcept {
    return low + fraction_between * (high - low);
}

/// The IQR fence max(|q1 - r iqr|, |q3 + r iqr|) from quartiles q1, q3.
inline double iqr_fence(double q1, double q3, double range) noexcept {
    const double iqr = q3 - q1;
    return std::max(std::abs(q1 - range * iqr), std::abs(q3 + range * iqr));
}

/// Quartiles of one row (values copied into scratch and partially sorted).
template <working_scalar T>
std::pair<double, double> row_quartiles(std::span<const T> values, std::vector<double>& scratch) {
    scratch.assign(values.begin(), values.end());
    const auto quantile = [&](double p) {
        const double h = static_cast<double>(scratch.size() - 1) * p;
        const auto lo = static_cast<std::size_t>(std::floor(h));
        std::nth_element(scratch.begin(), scratch.begin() + static_cast<std::ptrdiff_t>(lo), scratch.end());
        const double low = scratch[lo];
        double high = low;
        if (lo + 1 < scratch.size()) high = *std::min_element(scratch.begin() + static_cast<std::ptrdiff_t>(lo) + 1, scratch.end());
        return interpolate(low, high, h - static_cast<double>(lo));
    };
    const double q1 = quantile(0.25);
    const double q3 = quantile(0.75);
    return {q1, q3};
}

/// Merges two increasing column lists of disjoint positions, tagging each with its reason.
inline void merge_tagged(std::vector<std::int32_t>& cols, std::vector<extraction_reason>& reasons,
                         std::span<const std::int32_t> add, extraction_reason why) {
    std::vector<std::int32_t> merged_cols;
    std::vector<extraction_reason> merged_reasons;
    merged_cols.reserve(cols.size() + add.size());
    merged_reasons.reserve(cols.size() + add.size());
    std::size_t a = 0;
    std::size_t b = 0;
    while (a < cols.size() || b < add.size()) {
        if (b == add.size() || (a < cols.size() && cols[a] < add[b])) {
            merged_cols.push_back(cols[a]);
            merged_reasons.push_back(reasons[a++]);
        } else {
            merged_cols.push_back(add[b++]);
            merged_reasons.push_back(why);
        }
    }
    cols.swap(merged_cols);
    reasons.swap(merged_reasons);
}

/// Marks the listed columns in a per-row byte mask.
inline void mark(std::vector<std::uint8_t>& mask, std::span<const std::int32_t> cols) {
    for (auto c : cols) mask[static_cast<std::size_t>(c)] = 1;
}

/// Internal knobs of the per-matrix selection (tests shrink them to exercise every path).
struct selection_tuning {
    std::uint64_t collect_all_below = std::uint64_t{1} << 16;  ///< smaller matrices: every entry is a candidate
    std::uint64_t sample_elements = std::uint64_t{1} << 18;     ///< row sample for thresholds (at most 1/16)
    std::uint64_t candidate_cap = std::uint64_t{1} << 22;       ///< more candidates: radix selection instead
    bool force_radix = false;
};

/// Evenly spread rows holding about `elements` entries (at least one row).
inline std::vector<Eigen::Index> sample_rows(Eigen::Index rows, Eigen::Index cols, std::uint64_t elements) {
    const auto per_row = static_cast<std::uint64_t>(std::max<Eigen::Index>(cols, 1));
    const auto wanted = static_cast<Eigen::Index>(std::min<std::uint64_t>((elements + per_row - 1) / per_row,
                                                                          static_cast<std::uint64_t>(rows)));
    const Eigen::Index count = std::max<Eigen::Index>(wanted, 1);
    std::vector<Eigen::Index> out;
    for (Eigen::Index k = 0; k < count && k < rows; ++k) out.push_back(k * rows / count);
    return out;
}

/// A key threshold that about `reach` of `total` keys reach, estimated from a sample of keys with a wide
/// margin; 1 (every key) when the sample cannot resolve it.
inline std::uint64_t sampled_threshold(std::vector<std::uint64_t>& sample, std::uint64_t reach, std::uint64_t total) {
    const double expected = static_cast<double>(reach) * static_cast<double>(sample.size()) / static_cast<double>(total);
    const auto rank = static_cast<std::size_t>(std::ceil(1.25 * expected + 4.0 * std::sqrt(expected) + 8.0));
    if (rank >= sample.size()) return 1;
    std::nth_element(sample.begin(), sample.begin() + static_cast<std::ptrdiff_t>(rank - 1), sample.end(), std::greater<>());
    return sample[rank - 1];
}

/// The `count` largest of `candidates` whose positions are not in `excluded` (sorted linear indices), or
/// false when fewer remain (the candidates did not reach deep enough). Reorders candidates.
inline bool take_largest(std::vector<rank_key>& candidates, const std::vector<std::uint64_t>& excluded, std::uint64_t count,
                         std::vector<rank_key>& taken) {
    taken.clear();
    if (count == 0) return true;
    std::erase_if(candidates, [&](const rank_key& k) { return std::binary_search(excluded.begin(), excluded.end(), ~k.position); });
    if (candidates.size() < count) return false;
    const auto nth = candidates.begin() + static_cast<std::ptrdiff_t>(count - 1);
    std::nth_element(candidates.begin(), nth, candidates.end(), std::greater<>());
    taken.assign(candidates.begin(), nth + 1);
    return true;
}

/// Per-matrix selection of the sensitive values and both percentile tails in one pass over the matrix:
/// thresholds from a row sample, every entry at or above a threshold collected with its full key, then
/// exact selection among the candidates (sensitive first, each tail without what is already taken).
/// The result equals the radix path's; returns false (nothing written) when the sample misjudged the
/// thresholds or the candidates would exceed the cap, so that the caller falls back to radix selection.
template <working_scalar T, class KeysOfRow, class FullKey>
bool select_by_sampling(Eigen::Index rows, Eigen::Index cols, const std::array<std::uint64_t, 3>& counts,
                        KeysOfRow&& keys_of_row, FullKey&& full_key, int threads, const selection_tuning& tuning,
                        std::array<std::vector<std::vector<std::int32_t>>, 3>& lists, std::array<rank_key, 3>& boundaries) {
    const auto total = static_cast<std::uint64_t>(rows) * static_cast<std::uint64_t>(cols);
    if (counts[0] + counts[1] + counts[2] == 0) {
        for (auto& l : lists) l.assign(static_cast<std::size_t>(rows), {});
        return true;
    }
    const std::array<std::uint64_t, 3> reach{counts[0], counts[1] + counts[0], counts[2] + counts[1] + counts[0]};
    std::array<std::uint64_t, 3> threshold{1, 1, 1};
    const auto team = static_cast<std::size_t>(resolve_threads(threads));
    // keys_of_row(row, thread) -> const std::array<std::vector<std::uint64_t>, 3>&: the primary keys of every
    // column for each kind; full_key(row, col, kind, thread) -> rank_key, valid right after keys_of_row for
    // the same row and thread.
    if (total > tuning.collect_all_below) {
        const auto sampled = sample_rows(rows, cols, std::min(tuning.sample_elements, std::max<std::uint64_t>(total / 16, 1)));
        std::vector<std::array<std::vector<std::uint64_t>, 3>> per_row(sampled.size());
        parallel_for(static_cast<Eigen::Index>(sampled.size()), threads, [&](Eigen::Index k, int thread) {
            const auto& keys = keys_of_row(sampled[static_cast<std::size_t>(k)], thread);
            for (std::size_t kind = 0; kind < 3; ++kind)
                if (counts[kind] > 0)
                    per_row[static_cast<std::size_t>(k)][kind] = keys[kind];
        });
        for (std::size_t kind = 0; kind < 3; ++kind) {
            if (counts[kind] == 0) continue;
            std::vector<std::uint64_t> sample;
            for (const auto& r : per_row) sample.insert(sample.end(), r[kind].begin(), r[kind].end());
            threshold[kind] = sampled_threshold(sample, reach[kind], total);
        }
    }
    std::array<std::vector<std::vector<rank_key>>, 3> found;
    for (auto& f : found) f.resize(static_cast<std::size_t>(rows));
    std::array<std::atomic<std::uint64_t>, 3> found_count{};
    std::atomic<bool> overflow{false};
    // Inactive kinds get a threshold no key reaches.
    for (std::size_t kind = 0; kind < 3; ++kind)
        if (counts[kind] == 0) threshold[kind] = std::numeric_limits<std::uint64_t>::max();
    std::vector<std::vector<std::uint8_t>> hits(team, std::vector<std::uint8_t>(static_cast<std::size_t>(cols)));
    parallel_for(rows, threads, [&](Eigen::Index i, int thread) {
        if (overflow.load(std::memory_order_relaxed)) return;
        const auto& keys = keys_of_row(i, thread);
        // A vectorised pass flags the few candidates; only those are visited.
        // Raw restrict pointers: through the vector, every byte store could alias the vector's own data
        // pointer (a char type aliases anything), so the loop reloaded it per column and did not vectorise.
        std::uint8_t* __restrict hit = hits[static_cast<std::size_t>(thread)].data();
        const std::size_t n = hits[static_cast<std::size_t>(thread)].size();
        std::fill(hit, hit + n, std::uint8_t{0});
        for (std::size_t kind = 0; kind < 3; ++kind) {
            if (counts[kind] == 0) continue;
            const std::uint64_t* __restrict primary = keys[kind].data();
            const std::uint64_t t = threshold[kind];
            const auto bit = static_cast<std::uint8_t>(1u << kind);
            for (std::size_t j = 0; j < n; ++j) hit[j] = static_cast<std::uint8_t>(hit[j] | (primary[j] >= t ? bit : 0));
        }
        for (std::size_t j = 0; j < n; ++j) {
            if (hit[j] == 0) continue;
            for (std::size_t kind = 0; kind < 3; ++kind)
                if (hit[j] & (1u << kind)) found[kind][static_cast<std::size_t>(i)].push_back(full_key(i, j, kind, thread));
        }
        for (std::size_t kind = 0; kind < 3; ++kind) {
            const auto added = found[kind][static_cast<std::size_t>(i)].size();
            if (found_count[kind].fetch_add(added, std::memory_order_relaxed) + added > tuning.candidate_cap)
                overflow.store(true, std::memory_order_relaxed);
        }
    });
    if (overflow.load()) return false;
    std::vector<std::uint64_t> excluded;  // linear indices taken so far, sorted
    std::array<std::vector<rank_key>, 3> taken;
    for (std::size_t kind = 0; kind < 3; ++kind) {
        std::vector<rank_key> candidates;
        for (const auto& r : found[kind]) candidates.insert(candidates.end(), r.begin(), r.end());
        if (!take_largest(candidates, excluded, counts[kind], taken[kind])) return false;
        for (const auto& k : taken[kind]) excluded.push_back(~k.position);
        std::sort(excluded.begin(), excluded.end());
    }
    for (std::size_t kind = 0; kind < 3; ++kind) {
        auto& t = taken[kind];
        if (!t.empty()) boundaries[kind] = *std::min_element(t.begin(), t.end());
        std::sort(t.begin(), t.end(), [](const rank_key& a, const rank_key& b) { return a.position > b.position; });
        lists[kind].assign(static_cast<std::size_t>(rows), {});
        for (const auto& k : t) {
            const std::uint64_t linear = ~k.position;
            lists[kind][static_cast<std::size_t>(linear / static_cast<std::uint64_t>(cols))].push_back(
                static_cast<std::int32_t>(linear % static_cast<std::uint64_t>(cols)));
        }
    }
    return true;
}

/// Values of W at the ascending 0-based ranks r and min(r + 1, N - 1) for each r in `ranks`, in one pass:
/// a bracket around each rank pair from a row sample, entries below a bracket counted and entries inside
/// collected. Empty when a bracket missed its ranks or held too many entries (the caller then uses radix
/// selection).
template <working_scalar T>
std::vector<double> order_statistics_by_sampling(const Eigen::Ref<const row_matrix<T>>& w, const std::vector<std::uint64_t>& ranks,
                                                 int threads, const selection_tuning& tuning) {
    const Eigen::Index rows = w.rows();
    const Eigen::Index cols = w.cols();
    const auto total = static_cast<std::uint64_t>(rows) * static_cast<std::uint64_t>(cols);
    const std::size_t brackets = ranks.size();
    std::vector<std::uint64_t> low(brackets, 0);
    std::vector<std::uint64_t> high(brackets, std::numeric_limits<std::uint64_t>::max());
    if (total > tuning.collect_all_below) {
        std::vector<std::uint64_t> sample;
        for (const auto i : sample_rows(rows, cols, std::min(tuning.sample_elements, std::max<std::uint64_t>(total / 16, 1))))
            for (Eigen::Index j = 0; j < cols; ++j) sample.push_back(order_key(static_cast<double>(w(i, j))));
        std::sort(sample.begin(), sample.end());
        const double margin = 4.0 * std::sqrt(static_cast<double>(sample.size())) + 16.0;
        for (std::size_t b = 0; b < brackets; ++b) {
            const double at = static_cast<double>(ranks[b]) * static_cast<double>(sample.size()) / static_cast<double>(total);
            const double from = at - margin;
            const double to = at + margin + 2.0;
            if (from > 0.0) low[b] = sample[static_cast<std::size_t>(from)];
            if (to < static_cast<double>(sample.size()) - 1.0) high[b] = sample[static_cast<std::size_t>(to)];
        }
    }
    std::vector<std::vector<std::uint64_t>> below(static_cast<std::size_t>(rows), std::vector<std::uint64_t>(brackets, 0));
    std::vector<std::vector<std::vector<std::uint64_t>>> inside(static_cast<std::size_t>(rows));
    std::atomic<std::uint64_t> collected{0};
    std::atomic<bool> overflow{false};
    parallel_for(rows, threads, [&](Eigen::Index i, int) {
        if (overflow.load(std::memory_order_relaxed)) return;
        auto& in = inside[static_cast<std::size_t>(i)];
        in.resize(brackets);
        auto& count_below = below[static_cast<std::size_t>(i)];
        std::uint64_t added = 0;
        for (Eigen::Index j = 0; j < cols; ++j) {
            const std::uint64_t key = order_key(static_cast<double>(w(i, j)));
            for (std::size_t b = 0; b < brackets; ++b) {
                if (key < low[b]) {
                    ++count_below[b];
                } else if (key <= high[b]) {
                    in[b].push_back(key);
                    ++added;
                }
            }
        }
        if (collected.fetch_add(added, std::memory_order_relaxed) + added > tuning.candidate_cap)
            overflow.store(true, std::memory_order_relaxed);
    });
    if (overflow.load()) return {};
    std::vector<double> out;
    for (std::size_t b = 0; b < brackets; ++b) {
        std::uint64_t under = 0;
        std::vector<std::uint64_t> keys;
        for (Eigen::Index i = 0; i < rows; ++i) {
            under += below[static_cast<std::size_t>(i)][b];
            const auto& in = inside[static_cast<std::size_t>(i)][b];
            keys.insert(keys.end(), in.begin(), in.end());
        }
        const std::uint64_t next = std::min(ranks[b] + 1, total - 1);
        if (ranks[b] < under || next - under >= keys.size()) return {};
        const auto nth = keys.begin() + static_cast<std::ptrdiff_t>(ranks[b] - under);
        std::nth_element(keys.begin(), nth, keys.end());
        out.push_back(from_order_key(*nth));
        // The next order statistic is the smallest key after nth (or nth itself at the end).
        out.push_back(next == ranks[b] ? out.back() : from_order_key(*std::min_element(nth + 1, keys.end())));
    }
    return out;
}

struct row_scratch {
    std::vector<double> sensitivity;
    std::vector<rank_key> keys;
    std::vector<rank_key> select;
    std::vector<std::uint8_t> taken;
    std::vector<double> sorted;
};

/// The selection on validated input: W row-major, provider of the same shape with finite, non-negative
/// weights (or null when sensitive_fraction is 0: then ties between outliers fall to position order).
template <working_scalar T, class Provider>
sparse_selection select_sparse_validated(const Eigen::Ref<const row_matrix<T>>& w, const Provider* provider,
                                         const split_options& options, int threads,
                                         const selection_tuning& tuning = {}) {
    const Eigen::Index rows = w.rows();
    const Eigen::Index cols = w.cols();
    const auto team = static_cast<std::size_t>(resolve_threads(threads));
    std::vector<row_scratch> scratch(team);
    for (auto& s : scratch) {
        s.sensitivity.assign(static_cast<std::size_t>(cols), 0.0);
        s.keys.resize(static_cast<std::size_t>(cols));
        s.taken.assign(static_cast<std::size_t>(cols), 0);
    }
    const auto w_row = [&](Eigen::Index i) {
        return std::span<const T>(w.data() + i * w.outerStride(), static_cast<std::size_t>(cols));
    };
    const auto sensitivity_row = [&](Eigen::Index i, row_scratch& s) -> const std::vector<double>& {
        if (provider != nullptr) provider->fill_row(i, std::span<double>(s.sensitivity));
        return s.sensitivity;  // stays all zero without a provider
    };

    sparse_selection result;
    result.rows = rows;
    result.cols = cols;
    std::vector<std::vector<std::int32_t>> sensitive(static_cast<std::size_t>(rows));
    std::vector<std::vector<std::int32_t>> upper(static_cast<std::size_t>(rows));
    std::vector<std::vector<std::int32_t>> lower(static_cast<std::size_t>(rows));
    const bool percentile = options.outlier_fraction > 0.0;
    const bool iqr = options.iqr_range > 0.0;

    // Key makers. excluded(j) says whether column j of the current row is already taken.
    const auto sensitive_keys = [&](Eigen::Index i, std::span<rank_key> keys, row_scratch& s) {
        const auto& f = sensitivity_row(i, s);
        const auto values = w_row(i);
        for (std::size_t j = 0; j < keys.size(); ++j) {
            keys[j].primary = order_key(f[j]);
            keys[j].secondary = order_key(std::abs(static_cast<double>(values[j])));
        }
    };
    const auto tail_keys = [&](Eigen::Index i, std::span<rank_key> keys, row_scratch& s, bool from_top,
                               const std::vector<std::uint8_t>& taken) {
        const auto& f = sensitivity_row(i, s);
        const auto values = w_row(i);
        for (std::size_t j = 0; j < keys.size(); ++j) {
            const std::uint64_t key = order_key(static_cast<double>(values[j]));
            keys[j].primary = taken[j] != 0 ? 0 : (from_top ? key : ~key);
            keys[j].secondary = order_key(f[j]);
        }
    };
    const auto total = static_cast<std::uint64_t>(rows) * static_cast<std::uint64_t>(cols);

    if (options.per_row) {
        const auto n = static_cast<std::uint64_t>(cols);
        const std::uint64_t k_sensitive = fraction_count(options.sensitive_fraction, n);
        const std::uint64_t k_outliers = percentile ? std::min(fraction_count(options.outlier_fraction, n), n - k_sensitive) : 0;
        const std::uint64_t k_lower = k_outliers / 2;
        const std::uint64_t k_upper = k_outliers - k_lower;
        parallel_for(rows, threads, [&](Eigen::Index i, int thread) {
            auto& s = scratch[static_cast<std::size_t>(thread)];
            std::fill(s.taken.begin(), s.taken.end(), std::uint8_t{0});
            const std::span<rank_key> keys(s.keys);
            const auto row = static_cast<std::size_t>(i);
            for (std::size_t j = 0; j < keys.size(); ++j) keys[j].position = position_word(0, cols, static_cast<Eigen::Index>(j));
            if (k_sensitive > 0) {
                sensitive_keys(i, keys, s);
                sensitive[row] = select_largest_in_row(keys, k_sensitive, s.select);
                mark(s.taken, sensitive[row]);
            }
            if (k_upper > 0) {
                tail_keys(i, keys, s, true, s.taken);
                upper[row] = select_largest_in_row(keys, k_upper, s.select);
                mark(s.taken, upper[row]);
            }
            if (k_lower > 0) {
                tail_keys(i, keys, s, false, s.taken);
                lower[row] = select_largest_in_row(keys, k_lower, s.select);
            }
            if (iqr && cols > 0) {
                const auto [q1, q3] = row_quartiles<T>(w_row(i), s.sorted);
                const double fence = iqr_fence(q1, q3, options.iqr_range);
                const auto values = w_row(i);
                for (std::size_t j = 0; j < values.size(); ++j)
                    if (s.taken[j] == 0 && std::abs(static_cast<double>(values[j])) > fence)
                        upper[row].push_back(static_cast<std::int32_t>(j));
            }
        });
    } else {
        const std::uint64_t k_sensitive = fraction_count(options.sensitive_fraction, total);
        const std::uint64_t k_outliers =
            percentile ? std::min(fraction_count(options.outlier_fraction, total), total - k_sensitive) : 0;
        const std::uint64_t k_lower = k_outliers / 2;
        const std::uint64_t k_upper = k_outliers - k_lower;
        // Per-row "taken" masks are rebuilt from the lists inside each key fill.
        const auto taken_mask = [&](Eigen::Index i, row_scratch& s, bool with_upper) -> const std::vector<std::uint8_t>& {
            std::fill(s.taken.begin(), s.taken.end(), std::uint8_t{0});
            mark(s.taken, sensitive[static_cast<std::size_t>(i)]);
            if (with_upper) mark(s.taken, upper[static_cast<std::size_t>(i)]);
            return s.taken;
        };
        // Fast path: one pass with sampled thresholds. Radix selection below if it declines.
        bool selected = false;
        if (!tuning.force_radix) {
            std::vector<std::array<std::vector<std::uint64_t>, 3>> row_keys(team);
            for (auto& k : row_keys)
                for (auto& v : k) v.resize(static_cast<std::size_t>(cols));
            const bool want_sensitivity = provider != nullptr;
            const auto keys_of_row = [&](Eigen::Index i, int thread) -> const std::array<std::vector<std::uint64_t>, 3>& {
                auto& s = scratch[static_cast<std::size_t>(thread)];
                auto& keys = row_keys[static_cast<std::size_t>(thread)];
                const auto values = w_row(i);
                if (want_sensitivity) {
                    const auto& f = sensitivity_row(i, s);
                    if (k_sensitive > 0)
                        for (std::size_t j = 0; j < values.size(); ++j) keys[0][j] = order_key(f[j]);
                }
                if (k_upper + k_lower > 0)
                    for (std::size_t j = 0; j < values.size(); ++j) {
                        const std::uint64_t value_key = order_key(static_cast<double>(values[j]));
                        keys[1][j] = value_key;
                        keys[2][j] = ~value_key;
                    }
                return keys;
            };
            const auto full_key = [&](Eigen::Index i, std::size_t j, std::size_t kind, int thread) {
                const double f = scratch[static_cast<std::size_t>(thread)].sensitivity[j];
                const double value = static_cast<double>(w_row(i)[j]);
                const std::uint64_t position = position_word(i, cols, static_cast<Eigen::Index>(j));
                if (kind == 0) return rank_key{order_key(f), order_key(std::abs(value)), position};
                const std::uint64_t value_key = order_key(value);
                return rank_key{kind == 1 ? value_key : ~value_key, order_key(f), position};
            };
            std::array<std::vector<std::vector<std::int32_t>>, 3> lists;
            std::array<rank_key, 3> boundaries{};
            selected = select_by_sampling<T>(rows, cols, {k_sensitive, k_upper, k_lower}, keys_of_row, full_key, threads,
                                             tuning, lists, boundaries);
            if (selected) {
                sensitive = std::move(lists[0]);
                upper = std::move(lists[1]);
                lower = std::move(lists[2]);
                if (percentile) {
                    result.upper_threshold = k_upper > 0 ? from_order_key(boundaries[1].primary)
                                                         : std::numeric_limits<double>::infinity();
                    result.lower_threshold = k_lower > 0 ? from_order_key(~boundaries[2].primary)
                                                         : -std::numeric_limits<double>::infinity();
                }
            }
        }
        if (!selected && k_sensitive > 0) {
            matrix_ranking ranking(rows, cols, [&](Eigen::Index i, std::span<rank_key> keys, int thread) {
                sensitive_keys(i, keys, scratch[static_cast<std::size_t>(thread)]);
            }, threads);
            sensitive = ranking.select_largest(k_sensitive, total);
        }
        const auto tail = [&](bool from_top, std::uint64_t count, std::uint64_t available, double& threshold) {
            matrix_ranking ranking(rows, cols, [&](Eigen::Index i, std::span<rank_key> keys, int thread) {
                auto& s = scratch[static_cast<std::size_t>(thread)];
                tail_keys(i, keys, s, from_top, taken_mask(i, s, !from_top));
            }, threads);
            if (count == 0) {
                threshold = from_top ? std::numeric_limits<double>::infinity() : -std::numeric_limits<double>::infinity();
                return std::vector<std::vector<std::int32_t>>(static_cast<std::size_t>(rows));
            }
            const rank_key boundary = count >= available ? rank_key{1, 0, 0} : ranking.kth_largest(count);
            auto selected = ranking.select_at_least(boundary);
            // The threshold is the value of the last entry taken from this tail.
            double extreme = from_top ? std::numeric_limits<double>::infinity() : -std::numeric_limits<double>::infinity();
            for (Eigen::Index i = 0; i < rows; ++i)
                for (auto j : selected[static_cast<std::size_t>(i)]) {
                    const double v = static_cast<double>(w(i, j));
                    extreme = from_top ? std::min(extreme, v) : std::max(extreme, v);
                }
            threshold = extreme;
            return selected;
        };
        if (!selected && percentile) {
            upper = tail(true, k_upper, total - k_sensitive, result.upper_threshold);
            lower = tail(false, k_lower, total - k_sensitive - k_upper, result.lower_threshold);
        }
        if (iqr && total > 0) {
            // Quartiles of all of W by exact selection of the order statistics around each quantile.
            matrix_ranking ranking(rows, cols, [&](Eigen::Index i, std::span<rank_key> keys, int) {
                const auto values = w_row(i);
                for (std::size_t j = 0; j < keys.size(); ++j) {
                    keys[j].primary = order_key(static_cast<double>(values[j]));
                    keys[j].secondary = 0;
                }
            }, threads);
            const auto ascending = [&](std::uint64_t rank0) {  // 0-based rank from the smallest
                return from_order_key(ranking.kth_largest(total - rank0).primary);
            };
            // Order statistics around both quartiles: one sampled pass, radix selection if it declines.
            std::vector<std::uint64_t> ranks;
            for (const double p : {0.25, 0.75})
                ranks.push_back(static_cast<std::uint64_t>(std::floor(static_cast<double>(total - 1) * p)));
            std::vector<double> statistics;
            if (!tuning.force_radix) statistics = order_statistics_by_sampling<T>(w, ranks, threads, tuning);
            if (statistics.empty())
                for (const auto rank : ranks) {
                    statistics.push_back(ascending(rank));
                    statistics.push_back(ascending(std::min(rank + 1, total - 1)));
                }
            const auto quantile = [&](double p, std::size_t first) {
                const double h = static_cast<double>(total - 1) * p;
                return interpolate(statistics[first], statistics[first + 1], h - std::floor(h));
            };
            const double fence = iqr_fence(quantile(0.25, 0), quantile(0.75, 2), options.iqr_range);
            result.lower_threshold = -fence;
            result.upper_threshold = fence;
            parallel_for(rows, threads, [&](Eigen::Index i, int thread) {
                auto& s = scratch[static_cast<std::size_t>(thread)];
                const auto& taken = taken_mask(i, s, false);
                const auto values = w_row(i);
                auto& out = upper[static_cast<std::size_t>(i)];
                for (std::size_t j = 0; j < values.size(); ++j)
                    if (taken[j] == 0 && std::abs(static_cast<double>(values[j])) > fence)
                        out.push_back(static_cast<std::int32_t>(j));
            });
        }
    }

    // Assemble the CSR pattern in row order.
    result.row_ptr.assign(static_cast<std::size_t>(rows) + 1, 0);
    std::vector<std::int32_t> cols_row;
    std::vector<extraction_reason> reasons_row;
    for (Eigen::Index i = 0; i < rows; ++i) {
        const auto row = static_cast<std::size_t>(i);
        cols_row.assign(sensitive[row].begin(), sensitive[row].end());
        reasons_row.assign(cols_row.size(), extraction_reason::sensitive);
        merge_tagged(cols_row, reasons_row, upper[row], extraction_reason::outlier);
        merge_tagged(cols_row, reasons_row, lower[row], extraction_reason::outlier);
        result.sensitive_count += static_cast<Eigen::Index>(sensitive[row].size());
        result.outlier_count += static_cast<Eigen::Index>(upper[row].size() + lower[row].size());
        result.col_idx.insert(result.col_idx.end(), cols_row.begin(), cols_row.end());
        result.reason.insert(result.reason.end(), reasons_row.begin(), reasons_row.end());
        detail::require(result.col_idx.size() <= static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()),
                        "sqz::select_sparse: ", result.col_idx.size(), " extracted entries exceed the int32 range of CSR");
        result.row_ptr[row + 1] = static_cast<std::int32_t>(result.col_idx.size());
    }
    if (options.per_row) {
        result.lower_threshold = std::numeric_limits<double>::quiet_NaN();
        result.upper_threshold = std::numeric_limits<double>::quiet_NaN();
    }
    return result;
}

template <class DW>
Eigen::Ref<const row_matrix<typename DW::Scalar>> row_major_ref(const Eigen::MatrixBase<DW>& w) {
    static_assert(working_scalar<typename DW::Scalar>, "sqz: W must be a matrix of float or double");
    return Eigen::Ref<const row_matrix<typename DW::Scalar>>(w.derived());
}

}  // namespace detail

/// Chooses the sparse positions of W (see the header comment for the rules, counts and tie order).
/// sqz::error for a sensitivity of another shape, NaN/Inf in W, NaN/Inf/negative sensitivity, fractions
/// outside [0, 1), a negative iqr_range or both outlier rules at once.
template <class DW, sensitivity_argument S>
sparse_selection select_sparse(const Eigen::MatrixBase<DW>& w_in, const S& sensitivity, const split_options& options,
                               int threads = 0) {
    constexpr const char* where = "sqz::select_sparse";
    detail::validate_split_options(options, where);
    using T = typename DW::Scalar;
    const Eigen::Ref<const row_matrix<T>> w(w_in.derived());
    detail::validate_finite_rows<T>(w, where, "W", threads);
    return detail::with_provider(sensitivity, [&](const auto& provider) {
        detail::validate_sensitivity(provider, w.rows(), w.cols(), where, threads);
        return detail::select_sparse_validated<T>(w, &provider, options, threads);
    });
}

/// Outliers only, without a sensitivity: ties between equal values go to the lower position.
/// sensitive_fraction must be 0.
template <class DW>
sparse_selection select_sparse(const Eigen::MatrixBase<DW>& w_in, const split_options& options, int threads = 0) {
    constexpr const char* where = "sqz::select_sparse";
    detail::validate_split_options(options, where);
    detail::require(options.sensitive_fraction == 0.0, where, ": sensitive_fraction = ", options.sensitive_fraction,
                    " needs a sensitivity");
    using T = typename DW::Scalar;
    const Eigen::Ref<const row_matrix<T>> w(w_in.derived());
    detail::validate_finite_rows<T>(w, where, "W", threads);
    return detail::select_sparse_validated<T, uniform_sensitivity>(w, nullptr, options, threads);
}

/// Splits W into a dense part (zero at the extracted positions) and a CSR part holding W there, so that
/// dense + sparse == W exactly. Same rules and errors as select_sparse.
template <class DW, sensitivity_argument S>
dense_sparse_split<typename DW::Scalar> split_dense_sparse(const Eigen::MatrixBase<DW>& w, const S& sensitivity,
                                                           const split_options& options, int threads = 0) {
    using T = typename DW::Scalar;
    dense_sparse_split<T> out;
    out.selection = select_sparse(w, sensitivity, options, threads);
    out.dense = w;
    std::vector<T> values;
    values.reserve(out.selection.col_idx.size());
    for (Eigen::Index i = 0; i < out.selection.rows; ++i)
        for (auto j : out.selection.row(i)) {
            values.push_back(out.dense(i, j));
            out.dense(i, j) = T(0);
        }
    out.sparse = make_csr<T>(out.selection.rows, out.selection.cols, out.selection.row_ptr, out.selection.col_idx, values);
    return out;
}

}  // namespace sqz
