// sqz/detail/select.hpp - exact top-k selection over a whole matrix without sorting it.
//
// Elements are ranked by a composite key (primary, secondary, position): larger keys rank first, and the
// position word is the complement of the row-major index, so among complete ties the earlier element ranks
// first. Because positions are unique, "the k elements with the largest keys" is always exactly k elements.
//
// kth_largest_key finds the k-th largest key by radix selection: each pass histograms the next 16-bit digit
// of the keys that share the digits fixed so far, until the bucket holding the k-th key has at most
// `candidate_limit` members; those are collected and finished with nth_element. Memory stays at a few
// histograms plus the small candidate set, however large the matrix, and each pass runs rows in parallel
// with per-thread histograms (integer counts, so the result does not depend on the thread count).
#pragma once

#include <sqz/detail/threads.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <bit>
#include <compare>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

namespace sqz::detail {

/// Maps a double to an unsigned integer with the same order (-0.0 and +0.0 map to the same key). Every
/// finite double maps into [2^52, 2^64 - 2^52), so 0 is free to mark excluded elements and the complement
/// of a key is again a valid, non-zero key of the reversed order.
inline std::uint64_t order_key(double value) noexcept {
    const auto bits = std::bit_cast<std::uint64_t>(value + 0.0);
    return (bits >> 63) != 0 ? ~bits : (bits | (std::uint64_t{1} << 63));
}

/// Inverse of order_key.
inline double from_order_key(std::uint64_t key) noexcept {
    const std::uint64_t bits = (key >> 63) != 0 ? (key & ~(std::uint64_t{1} << 63)) : ~key;
    return std::bit_cast<double>(bits);
}

struct rank_key {
    std::uint64_t primary = 0;    ///< 0 marks an excluded element
    std::uint64_t secondary = 0;  ///< breaks ties of primary
    std::uint64_t position = 0;   ///< ~(row * cols + col): breaks the remaining ties, earlier first

    friend constexpr auto operator<=>(const rank_key&, const rank_key&) = default;
};

inline std::uint64_t position_word(Eigen::Index row, Eigen::Index cols, Eigen::Index col) noexcept {
    return ~(static_cast<std::uint64_t>(row) * static_cast<std::uint64_t>(cols) + static_cast<std::uint64_t>(col));
}

inline constexpr int radix_digits = 12;  // 3 words of 4 digits of 16 bits

inline unsigned key_digit(const rank_key& key, int level) noexcept {
    const std::uint64_t word = level < 4 ? key.primary : level < 8 ? key.secondary : key.position;
    return static_cast<unsigned>((word >> (48 - 16 * (level % 4))) & 0xffffu);
}

/// Whether the first `levels` digits of key and prefix agree.
inline bool matches_prefix(const rank_key& key, const rank_key& prefix, int levels) noexcept {
    const auto word_matches = [](std::uint64_t a, std::uint64_t b, int digits) {
        if (digits <= 0) return true;
        if (digits >= 4) return a == b;
        const int shift = 64 - 16 * digits;
        return (a >> shift) == (b >> shift);
    };
    return word_matches(key.primary, prefix.primary, levels) && word_matches(key.secondary, prefix.secondary, levels - 4) &&
           word_matches(key.position, prefix.position, levels - 8);
}

/// FillKeys: fill(row, std::span<rank_key> keys, int thread) writes primary and secondary of every column
/// of `row` (primary 0 excludes an element); position is set here. Must be callable concurrently for
/// different threads.
template <class FillKeys>
class matrix_ranking {
public:
    matrix_ranking(Eigen::Index rows, Eigen::Index cols, FillKeys fill, int threads)
        : rows_(rows), cols_(cols), fill_(std::move(fill)), threads_(resolve_threads(threads)),
          scratch_(static_cast<std::size_t>(threads_), std::vector<rank_key>(static_cast<std::size_t>(cols))) {}

    /// Number of elements that are not excluded.
    std::uint64_t count_included() {
        std::vector<std::uint64_t> per_row(static_cast<std::size_t>(rows_), 0);
        for_each_row([&](Eigen::Index row, std::span<const rank_key> keys, int) {
            std::uint64_t n = 0;
            for (const auto& k : keys) n += k.primary != 0 ? 1 : 0;
            per_row[static_cast<std::size_t>(row)] = n;
        });
        std::uint64_t total = 0;
        for (auto n : per_row) total += n;
        return total;
    }

    /// The rank-th largest key (1 <= rank <= count_included()).
    rank_key kth_largest(std::uint64_t rank, std::uint64_t candidate_limit = std::uint64_t{1} << 16) {
        rank_key prefix;
        int levels = 0;
        constexpr std::size_t buckets = std::size_t{1} << 16;
        histograms_.resize(static_cast<std::size_t>(threads_));
        // A matrix no larger than the candidate limit is collected at once, without histograms.
        const auto elements = static_cast<std::uint64_t>(rows_) * static_cast<std::uint64_t>(cols_);
        while (levels < radix_digits && elements > candidate_limit) {
            for (auto& h : histograms_) h.assign(buckets, 0);
            for_each_row([&](Eigen::Index, std::span<const rank_key> keys, int thread) {
                auto& h = histograms_[static_cast<std::size_t>(thread)];
                for (const auto& k : keys)
                    if (k.primary != 0 && matches_prefix(k, prefix, levels)) ++h[key_digit(k, levels)];
            });
            std::vector<std::uint64_t> total(buckets, 0);
            for (const auto& h : histograms_)
                for (std::size_t b = 0; b < buckets; ++b) total[b] += h[b];
            std::size_t bucket = buckets;
            std::uint64_t above = 0;
            while (bucket > 0) {
                --bucket;
                if (above + total[bucket] >= rank) break;
                above += total[bucket];
            }
            rank -= above;
            set_digit(prefix, levels, static_cast<unsigned>(bucket));
            ++levels;
            if (total[bucket] <= candidate_limit) break;
        }
        if (levels == radix_digits) return prefix;  // every digit fixed: the key itself
        // Collect the members of the final bucket, in row order, and finish with nth_element.
        std::vector<std::vector<rank_key>> per_row(static_cast<std::size_t>(rows_));
        for_each_row([&](Eigen::Index row, std::span<const rank_key> keys, int) {
            for (const auto& k : keys)
                if (k.primary != 0 && matches_prefix(k, prefix, levels)) per_row[static_cast<std::size_t>(row)].push_back(k);
        });
        std::vector<rank_key> candidates;
        for (const auto& r : per_row) candidates.insert(candidates.end(), r.begin(), r.end());
        const auto nth = candidates.begin() + static_cast<std::ptrdiff_t>(rank - 1);
        std::nth_element(candidates.begin(), nth, candidates.end(), std::greater<>());
        return *nth;
    }

    /// Columns (increasing) of every row whose included elements have keys >= boundary.
    std::vector<std::vector<std::int32_t>> select_at_least(const rank_key& boundary) {
        std::vector<std::vector<std::int32_t>> selected(static_cast<std::size_t>(rows_));
        for_each_row([&](Eigen::Index row, std::span<const rank_key> keys, int) {
            auto& out = selected[static_cast<std::size_t>(row)];
            for (std::size_t j = 0; j < keys.size(); ++j)
                if (keys[j].primary != 0 && keys[j] >= boundary) out.push_back(static_cast<std::int32_t>(j));
        });
        return selected;
    }

    /// Columns of the `count` largest included elements per row, given that `included` elements are
    /// included; count >= included selects all of them.
    std::vector<std::vector<std::int32_t>> select_largest(std::uint64_t count, std::uint64_t included) {
        if (count == 0) return std::vector<std::vector<std::int32_t>>(static_cast<std::size_t>(rows_));
        if (count >= included) return select_at_least(rank_key{1, 0, 0});
        return select_at_least(kth_largest(count));
    }

private:
    static void set_digit(rank_key& key, int level, unsigned digit) noexcept {
        std::uint64_t& word = level < 4 ? key.primary : level < 8 ? key.secondary : key.position;
        const int shift = 48 - 16 * (level % 4);
        word = (word & ~(std::uint64_t{0xffff} << shift)) | (static_cast<std::uint64_t>(digit) << shift);
    }

    template <class Visit>
    void for_each_row(Visit&& visit) {
        parallel_for(rows_, threads_, [&](Eigen::Index row, int thread) {
            auto& keys = scratch_[static_cast<std::size_t>(thread)];
            fill_(row, std::span<rank_key>(keys), thread);
            for (Eigen::Index j = 0; j < cols_; ++j) keys[static_cast<std::size_t>(j)].position = position_word(row, cols_, j);
            visit(row, std::span<const rank_key>(keys), thread);
        });
    }

    Eigen::Index rows_;
    Eigen::Index cols_;
    FillKeys fill_;
    int threads_;
    std::vector<std::vector<rank_key>> scratch_;
    std::vector<std::vector<std::uint64_t>> histograms_;  // per thread, reused between passes
};

/// Indices (increasing) of the `count` largest included keys of one row; count must not exceed the number
/// of included keys. Linear time (nth_element).
inline std::vector<std::int32_t> select_largest_in_row(std::span<const rank_key> keys, std::size_t count,
                                                       std::vector<rank_key>& scratch) {
    std::vector<std::int32_t> out;
    if (count == 0) return out;
    scratch.clear();
    for (const auto& k : keys)
        if (k.primary != 0) scratch.push_back(k);
    const auto nth = scratch.begin() + static_cast<std::ptrdiff_t>(count - 1);
    std::nth_element(scratch.begin(), nth, scratch.end(), std::greater<>());
    const rank_key boundary = *nth;
    out.reserve(count);
    for (std::size_t j = 0; j < keys.size(); ++j)
        if (keys[j].primary != 0 && keys[j] >= boundary) out.push_back(static_cast<std::int32_t>(j));
    return out;
}

}  // namespace sqz::detail
