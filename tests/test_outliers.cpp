#include <sqz/half.hpp>
#include <sqz/outliers.hpp>
#include <sqz/synthetic.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <tuple>
#include <utility>
#include <vector>

namespace {

using matrix = sqz::row_matrix<float>;
using position = std::pair<Eigen::Index, Eigen::Index>;

std::set<position> positions_of(const sqz::sparse_selection& s) {
    std::set<position> out;
    for (Eigen::Index i = 0; i < s.rows; ++i)
        for (auto j : s.row(i)) out.insert({i, j});
    return out;
}

std::set<position> positions_with(const sqz::sparse_selection& s, sqz::extraction_reason why) {
    std::set<position> out;
    for (Eigen::Index i = 0; i < s.rows; ++i)
        for (auto k = s.row_ptr[static_cast<std::size_t>(i)]; k < s.row_ptr[static_cast<std::size_t>(i) + 1]; ++k)
            if (s.reason[static_cast<std::size_t>(k)] == why) out.insert({i, s.col_idx[static_cast<std::size_t>(k)]});
    return out;
}

// Independent reference: sort all candidate entries by the documented order and take the first `count`.
struct entry {
    double primary;
    double secondary;
    Eigen::Index row;
    Eigen::Index col;
};

std::vector<position> brute_force_top(std::vector<entry> entries, std::size_t count) {
    std::sort(entries.begin(), entries.end(), [](const entry& a, const entry& b) {
        if (a.primary != b.primary) return a.primary > b.primary;
        if (a.secondary != b.secondary) return a.secondary > b.secondary;
        return std::tie(a.row, a.col) < std::tie(b.row, b.col);
    });
    std::vector<position> out;
    for (std::size_t k = 0; k < std::min(count, entries.size()); ++k) out.push_back({entries[k].row, entries[k].col});
    return out;
}

std::size_t expected_count(double fraction, std::size_t total) {
    // ceil(fraction * total) for the decimal fractions used in these tests, computed in integers.
    const auto per_million = static_cast<std::size_t>(std::llround(fraction * 1e6));
    return (per_million * total + 999999) / 1000000;
}

// The documented composition, computed by brute force over global (or per-row) candidate lists.
std::set<position> brute_force_split(const matrix& w, const matrix& f, double sensitive, double outliers, bool per_row,
                                     std::set<position>* sensitive_out = nullptr) {
    std::set<position> taken;
    const auto groups = per_row ? w.rows() : 1;
    for (Eigen::Index g = 0; g < groups; ++g) {
        const Eigen::Index row_begin = per_row ? g : 0;
        const Eigen::Index row_end = per_row ? g + 1 : w.rows();
        const std::size_t total = static_cast<std::size_t>((row_end - row_begin) * w.cols());
        std::vector<entry> by_sensitivity;
        for (Eigen::Index i = row_begin; i < row_end; ++i)
            for (Eigen::Index j = 0; j < w.cols(); ++j) by_sensitivity.push_back({f(i, j), std::abs(w(i, j)), i, j});
        const std::size_t k_s = expected_count(sensitive, total);
        for (const auto& p : brute_force_top(by_sensitivity, k_s)) {
            taken.insert(p);
            if (sensitive_out != nullptr) sensitive_out->insert(p);
        }
        const std::size_t k_o = std::min(expected_count(outliers, total), total - k_s);
        const std::size_t k_lower = k_o / 2;
        const std::size_t k_upper = k_o - k_lower;
        for (int tail = 0; tail < 2; ++tail) {
            std::vector<entry> candidates;
            for (Eigen::Index i = row_begin; i < row_end; ++i)
                for (Eigen::Index j = 0; j < w.cols(); ++j)
                    if (!taken.count({i, j})) candidates.push_back({tail == 0 ? w(i, j) : -w(i, j), f(i, j), i, j});
            for (const auto& p : brute_force_top(candidates, tail == 0 ? k_upper : k_lower)) taken.insert(p);
        }
    }
    return taken;
}

matrix random_matrix(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed, int distinct_levels) {
    sqz::synthetic::rng random(seed);
    matrix m(rows, cols);
    for (Eigen::Index k = 0; k < m.size(); ++k)
        m.data()[k] = distinct_levels > 0 ? static_cast<float>(static_cast<int>(random.below(static_cast<std::uint64_t>(distinct_levels))) - distinct_levels / 2)
                                          : sqz::round_to_half(static_cast<float>(random.student_t(3.0)));
    return m;
}

}  // namespace

TEST_CASE("percentile outliers on a hand-computed case", "[outliers]") {
    // 3 x 4 = 12 entries; 25% -> 3 outliers: 1 from the bottom, 2 from the top.
    matrix w(3, 4);
    w << 0.1f, -5.0f, 0.3f, 0.2f,  //
        7.0f, 0.0f, -0.4f, 0.5f,   //
        0.6f, 0.7f, 9.0f, -0.8f;
    const auto s = sqz::select_sparse(w, sqz::split_options{.outlier_fraction = 0.25});
    CHECK(positions_of(s) == std::set<position>{{0, 1}, {1, 0}, {2, 2}});
    CHECK(s.outlier_count == 3);
    CHECK(s.sensitive_count == 0);
    CHECK(s.nonzeros() == 3);
    CHECK(s.fraction() == Approx(0.25));
    CHECK(s.upper_threshold == 7.0);
    CHECK(s.lower_threshold == -5.0);
    CHECK(s.row_ptr == std::vector<std::int32_t>{0, 1, 2, 3});

    // 20% of 12 = 2.4 -> 3 entries (the fraction is met): the same three.
    CHECK(positions_of(sqz::select_sparse(w, sqz::split_options{.outlier_fraction = 0.2})) == positions_of(s));
    // 0.07 of 100 is 7, not 8: the count tolerates the rounding of 0.07 * 100 = 7.000000000000001.
    const matrix big = matrix::Random(10, 10);
    CHECK(sqz::select_sparse(big, sqz::split_options{.outlier_fraction = 0.07}).nonzeros() == 7);
}

TEST_CASE("ties at a percentile boundary: exact count, larger sensitivity first, then position", "[outliers]") {
    // The top value 3 appears four times; 2 upper outliers are requested (25% of 16 = 4 -> 2 lower, 2 upper).
    matrix w = matrix::Zero(4, 4);
    w(0, 3) = 3.0f;
    w(1, 1) = 3.0f;
    w(2, 0) = 3.0f;
    w(3, 2) = 3.0f;
    w(0, 0) = -1.0f;  // the bottom: one -1 and then a tie of -0.5 at three places
    w(1, 2) = -0.5f;
    w(2, 2) = -0.5f;
    w(3, 3) = -0.5f;
    matrix f = matrix::Ones(4, 4);
    f(3, 2) = 2.0f;   // the most sensitive of the 3s goes first
    f(3, 3) = 0.5f;   // the least sensitive -0.5 goes last
    const auto s = sqz::select_sparse(w, f, sqz::split_options{.outlier_fraction = 0.25});
    // Upper: (3,2) by sensitivity, then (0,3) by position. Lower: (0,0) = -1, then the first -0.5 among
    // equal sensitivity, (1,2).
    CHECK(positions_of(s) == std::set<position>{{3, 2}, {0, 3}, {0, 0}, {1, 2}});
    CHECK(s.upper_threshold == 3.0);
    CHECK(s.lower_threshold == -0.5);
    // Without a sensitivity, ties go by position only.
    const auto plain = sqz::select_sparse(w, sqz::split_options{.outlier_fraction = 0.25});
    CHECK(positions_of(plain) == std::set<position>{{0, 3}, {1, 1}, {0, 0}, {1, 2}});
}

TEST_CASE("sensitive values first, then outliers from the rest", "[outliers]") {
    matrix w(2, 5);
    w << 9.0f, 1.0f, 2.0f, -3.0f, 0.5f,  //
        -8.0f, 0.25f, 4.0f, 0.0f, 6.0f;
    matrix f(2, 5);
    f << 5.0f, 0.0f, 1.0f, 2.0f, 2.0f,  //
        0.1f, 7.0f, 0.0f, 2.0f, 3.0f;
    // 20% sensitive of 10 = 2: f = 7 at (1,1), f = 5 at (0,0). 30% outliers = 3: 1 lower, 2 upper from the rest:
    // upper: 6 at (1,4), 4 at (1,2); lower: -8 at (1,0).
    std::set<position> expected_sensitive{{1, 1}, {0, 0}};
    std::set<position> expected_outliers{{1, 4}, {1, 2}, {1, 0}};
    const auto s = sqz::select_sparse(w, f, sqz::split_options{.sensitive_fraction = 0.2, .outlier_fraction = 0.3});
    CHECK(positions_with(s, sqz::extraction_reason::sensitive) == expected_sensitive);
    CHECK(positions_with(s, sqz::extraction_reason::outlier) == expected_outliers);
    CHECK(s.sensitive_count == 2);
    CHECK(s.outlier_count == 3);
    // 30% sensitive = 3 entries: f = 7, 5, 3.
    const auto s3 = sqz::select_sparse(w, f, sqz::split_options{.sensitive_fraction = 0.3});
    CHECK(positions_of(s3) == std::set<position>{{1, 1}, {0, 0}, {1, 4}});
    // 40%: one more from the tie group f = 2 at (0,3), (0,4), (1,3): the largest |W| is |-3| at (0,3).
    const auto s4 = sqz::select_sparse(w, f, sqz::split_options{.sensitive_fraction = 0.4});
    CHECK(positions_of(s4) == std::set<position>{{1, 1}, {0, 0}, {1, 4}, {0, 3}});
}

TEST_CASE("per-row counts and thresholds", "[outliers]") {
    matrix w(2, 4);
    w << 1.0f, 2.0f, 3.0f, 4.0f,  //
        -10.0f, 0.0f, 10.0f, 20.0f;
    // 50% of 4 per row = 2: one from each tail in every row.
    const auto s = sqz::select_sparse(w, sqz::split_options{.outlier_fraction = 0.5, .per_row = true});
    CHECK(positions_of(s) == std::set<position>{{0, 0}, {0, 3}, {1, 0}, {1, 3}});
    CHECK(std::isnan(s.upper_threshold));
    // Per matrix the same fraction takes 4 entries from the global tails instead.
    const auto g = sqz::select_sparse(w, sqz::split_options{.outlier_fraction = 0.5});
    CHECK(positions_of(g) == std::set<position>{{1, 0}, {1, 1}, {1, 2}, {1, 3}});
}

TEST_CASE("selection equals a brute-force sort on random matrices with many ties", "[outliers]") {
    for (std::uint64_t seed = 1; seed <= 12; ++seed) {
        const Eigen::Index rows = 3 + static_cast<Eigen::Index>(seed % 5);
        const Eigen::Index cols = 5 + static_cast<Eigen::Index>(seed * 7 % 13);
        const int levels = seed % 3 == 0 ? 0 : static_cast<int>(2 + seed % 6);  // 0: fp16 Student-t values
        const matrix w = random_matrix(rows, cols, seed, levels);
        const matrix f = random_matrix(rows, cols, seed + 100, 3).cwiseAbs();
        for (const bool per_row : {false, true})
            for (const auto& [sensitive, outliers] : {std::pair{0.0, 0.1}, {0.05, 0.0}, {0.1, 0.2}, {0.3, 0.5}, {0.5, 0.4}}) {
                INFO("seed " << seed << " per_row " << per_row << " sensitive " << sensitive << " outliers " << outliers);
                std::set<position> expected_sensitive;
                const auto expected = brute_force_split(w, f, sensitive, outliers, per_row, &expected_sensitive);
                const sqz::split_options options{.sensitive_fraction = sensitive, .outlier_fraction = outliers, .per_row = per_row};
                const auto s = sqz::select_sparse(w, f, options);
                CHECK(positions_of(s) == expected);
                CHECK(positions_with(s, sqz::extraction_reason::sensitive) == expected_sensitive);
                CHECK(sqz::select_sparse(w, f, options, 2).col_idx == s.col_idx);
            }
    }
}

TEST_CASE("radix selection through several digit levels equals a full sort", "[outliers]") {
    // A tiny candidate limit forces the histogram passes through the primary, secondary and position words.
    for (std::uint64_t seed = 1; seed <= 4; ++seed) {
        const matrix w = random_matrix(7, 9, seed, seed % 2 == 0 ? 3 : 0);
        const matrix f = random_matrix(7, 9, seed + 50, 2).cwiseAbs();
        auto fill = [&](Eigen::Index i, std::span<sqz::detail::rank_key> keys, int) {
            for (std::size_t j = 0; j < keys.size(); ++j) {
                const auto c = static_cast<Eigen::Index>(j);
                keys[j].primary = (i + c) % 5 == 0 ? 0 : sqz::detail::order_key(w(i, c));  // some excluded
                keys[j].secondary = sqz::detail::order_key(f(i, c));
            }
        };
        std::vector<entry> all;
        for (Eigen::Index i = 0; i < 7; ++i)
            for (Eigen::Index j = 0; j < 9; ++j)
                if ((i + j) % 5 != 0) all.push_back({w(i, j), f(i, j), i, j});
        sqz::detail::matrix_ranking ranking(7, 9, fill, 2);
        CHECK(ranking.count_included() == all.size());
        for (const std::uint64_t limit : {0u, 1u, 3u}) {
            for (const std::size_t count : {std::size_t{1}, std::size_t{2}, all.size() / 2, all.size() - 1, all.size()}) {
                const auto boundary = ranking.kth_largest(count, limit);
                const auto selected = ranking.select_at_least(boundary);
                std::set<position> got;
                for (Eigen::Index i = 0; i < 7; ++i)
                    for (auto j : selected[static_cast<std::size_t>(i)]) got.insert({i, j});
                const auto top = brute_force_top(all, count);
                CHECK(got == std::set<position>(top.begin(), top.end()));
            }
        }
    }
}

TEST_CASE("order keys preserve the order of doubles and identify zeros", "[outliers]") {
    const std::vector<double> values{-std::numeric_limits<double>::max(), -1e300, -2.5, -1.0, -1e-310, -0.0,
                                     0.0, 1e-310, 1.0, 2.5, 1e300, std::numeric_limits<double>::max()};
    for (std::size_t a = 0; a < values.size(); ++a) {
        CHECK(sqz::detail::order_key(values[a]) != 0);
        CHECK(sqz::detail::from_order_key(sqz::detail::order_key(values[a])) == values[a]);
        for (std::size_t b = 0; b < values.size(); ++b)
            CHECK((values[a] < values[b]) == (sqz::detail::order_key(values[a]) < sqz::detail::order_key(values[b])));
    }
    CHECK(sqz::detail::order_key(-0.0) == sqz::detail::order_key(0.0));
}

TEST_CASE("the IQR fence rule matches a sort-based quartile computation", "[outliers]") {
    for (std::uint64_t seed = 1; seed <= 6; ++seed) {
        const matrix w = random_matrix(6, 11, seed, seed % 2 == 0 ? 9 : 0);
        const matrix f = random_matrix(6, 11, seed + 9, 4).cwiseAbs();
        for (const bool per_row : {false, true})
            for (const double range : {0.5, 1.5}) {
                for (const double sensitive : {0.0, 0.1}) {
                    const sqz::split_options options{.sensitive_fraction = sensitive, .iqr_range = range, .per_row = per_row};
                    const auto s = sqz::select_sparse(w, f, options);
                    std::set<position> sensitive_positions;
                    brute_force_split(w, f, sensitive, 0.0, per_row, &sensitive_positions);
                    std::set<position> expected = sensitive_positions;
                    for (Eigen::Index g = 0; g < (per_row ? w.rows() : 1); ++g) {
                        std::vector<double> sorted;
                        for (Eigen::Index i = per_row ? g : 0; i < (per_row ? g + 1 : w.rows()); ++i)
                            for (Eigen::Index j = 0; j < w.cols(); ++j) sorted.push_back(w(i, j));
                        std::sort(sorted.begin(), sorted.end());
                        const auto quantile = [&](double p) {  // numpy's default 'linear' method
                            const double h = static_cast<double>(sorted.size() - 1) * p;
                            const auto lo = static_cast<std::size_t>(std::floor(h));
                            const double hi = lo + 1 < sorted.size() ? sorted[lo + 1] : sorted[lo];
                            return sorted[lo] + (h - static_cast<double>(lo)) * (hi - sorted[lo]);
                        };
                        const double q1 = quantile(0.25);
                        const double q3 = quantile(0.75);
                        const double fence = std::max(std::abs(q1 - range * (q3 - q1)), std::abs(q3 + range * (q3 - q1)));
                        if (!per_row) {
                            CHECK(s.upper_threshold == fence);
                            CHECK(s.lower_threshold == -fence);
                        }
                        for (Eigen::Index i = per_row ? g : 0; i < (per_row ? g + 1 : w.rows()); ++i)
                            for (Eigen::Index j = 0; j < w.cols(); ++j)
                                if (std::abs(w(i, j)) > fence) expected.insert({i, j});
                    }
                    INFO("seed " << seed << " per_row " << per_row << " range " << range << " sensitive " << sensitive);
                    CHECK(positions_of(s) == expected);
                    CHECK(positions_with(s, sqz::extraction_reason::sensitive) == sensitive_positions);
                }
            }
    }
}

TEST_CASE("split_dense_sparse reproduces W exactly", "[outliers]") {
    const matrix w = sqz::synthetic::llm_like_weights(16, 40, 3);
    const matrix f = sqz::synthetic::fisher_like_sensitivity(16, 40, 4);
    const auto split = sqz::split_dense_sparse(w, f, sqz::split_options{.sensitive_fraction = 0.02, .outlier_fraction = 0.05});
    CHECK(split.sparse.nonZeros() == split.selection.nonzeros());
    CHECK(split.selection.nonzeros() == 13 + 32);  // ceil(0.02 * 640) + ceil(0.05 * 640)
    const matrix sum = split.dense + matrix(split.sparse);
    CHECK(sum == w);
    for (Eigen::Index i = 0; i < 16; ++i)
        for (auto j : split.selection.row(i)) CHECK(split.dense(i, j) == 0.0f);
}

TEST_CASE("the split works on double matrices and column-major input", "[outliers]") {
    const Eigen::MatrixXd w = sqz::synthetic::llm_like_weights(5, 8, 11).cast<double>();  // column-major
    const Eigen::MatrixXd f = sqz::synthetic::fisher_like_sensitivity(5, 8, 12).cast<double>();
    const auto s = sqz::select_sparse(w, f, sqz::split_options{.sensitive_fraction = 0.1, .outlier_fraction = 0.1});
    const auto expected = brute_force_split(w.cast<float>(), f.cast<float>(), 0.1, 0.1, false);
    CHECK(positions_of(s) == expected);
}

TEST_CASE("bad split input is rejected with a message naming the problem", "[outliers]") {
    matrix w = matrix::Ones(3, 4);
    const matrix f = matrix::Ones(3, 4);
    using opts = sqz::split_options;
    CHECK_THROWS_WITH(sqz::select_sparse(w, f, opts{.sensitive_fraction = -0.1}), Catch::Contains("sensitive_fraction = -0.1"));
    CHECK_THROWS_WITH(sqz::select_sparse(w, f, opts{.outlier_fraction = 1.0}), Catch::Contains("outlier_fraction = 1"));
    CHECK_THROWS_WITH(sqz::select_sparse(w, f, opts{.outlier_fraction = std::nan("")}), Catch::Contains("outside [0, 1)"));
    CHECK_THROWS_WITH(sqz::select_sparse(w, f, opts{.iqr_range = -1.0}), Catch::Contains("iqr_range = -1"));
    CHECK_THROWS_WITH(sqz::select_sparse(w, f, opts{.outlier_fraction = 0.1, .iqr_range = 1.5}), Catch::Contains("choose one"));
    CHECK_THROWS_WITH(sqz::select_sparse(w, matrix(matrix::Ones(3, 5)), opts{}), Catch::Contains("sensitivity is 3 x 5"));
    CHECK_THROWS_WITH(sqz::select_sparse(w, opts{.sensitive_fraction = 0.1}), Catch::Contains("needs a sensitivity"));
    matrix bad_f = f;
    bad_f(2, 1) = -1.0f;
    CHECK_THROWS_WITH(sqz::select_sparse(w, bad_f, opts{}), Catch::Contains("sensitivity(2, 1) = -1 is negative"));
    bad_f(2, 1) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH(sqz::select_sparse(w, bad_f, opts{}), Catch::Contains("sensitivity(2, 1) = inf is not finite"));
    w(1, 3) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(sqz::select_sparse(w, f, opts{}), Catch::Contains("W(1, 3) = nan"));
    CHECK_THROWS_WITH(sqz::select_sparse(w, opts{}, 2), Catch::Contains("W(1, 3)"));
}

TEST_CASE("empty matrices and zero fractions select nothing", "[outliers]") {
    const matrix empty(0, 5);
    CHECK(sqz::select_sparse(empty, sqz::split_options{.outlier_fraction = 0.5}).nonzeros() == 0);
    const matrix w = matrix::Random(4, 4);
    const auto s = sqz::select_sparse(w, sqz::split_options{});
    CHECK(s.nonzeros() == 0);
    CHECK(s.row_ptr == std::vector<std::int32_t>(5, 0));
    CHECK(std::isnan(s.upper_threshold));
}

TEST_CASE("sampled thresholds, radix selection and brute force agree", "[outliers]") {
    // Shrunken tuning makes the sampled path use real thresholds on small matrices; a tiny cap or a
    // misleading sample makes it decline, and the radix path must then give the same answer.
    const std::vector<sqz::detail::selection_tuning> tunings{
        {.collect_all_below = 0, .sample_elements = 24},
        {.collect_all_below = 0, .sample_elements = 1},
        {.collect_all_below = 0, .sample_elements = 24, .candidate_cap = 3},
        {.force_radix = true},
    };
    for (std::uint64_t seed = 1; seed <= 8; ++seed) {
        matrix w = random_matrix(12, 10 + static_cast<Eigen::Index>(seed), seed, seed % 3 == 0 ? 4 : 0);
        if (seed % 2 == 0) w.row(7) *= 50.0f;  // the outliers hide in one row the small sample may miss
        const matrix f = random_matrix(w.rows(), w.cols(), seed + 30, seed % 4 == 0 ? 2 : 0).cwiseAbs();
        const sqz::matrix_sensitivity provider(f);
        for (const auto& [sensitive, outliers, iqr] : {std::tuple{0.02, 0.05, 0.0}, {0.0, 0.1, 0.0}, {0.1, 0.0, 0.0},
                                                       {0.3, 0.4, 0.0}, {0.05, 0.0, 1.5}, {0.0, 0.0, 0.3}}) {
            const sqz::split_options options{.sensitive_fraction = sensitive, .outlier_fraction = outliers, .iqr_range = iqr};
            const auto reference = sqz::select_sparse(w, f, options);
            if (iqr == 0.0) CHECK(positions_of(reference) == brute_force_split(w, f, sensitive, outliers, false));
            for (const auto& tuning : tunings)
                for (const int threads : {1, 2}) {
                    INFO("seed " << seed << " sensitive " << sensitive << " outliers " << outliers << " iqr " << iqr
                                 << " sample " << tuning.sample_elements << " cap " << tuning.candidate_cap);
                    const auto s = sqz::detail::select_sparse_validated<float>(w, &provider, options, threads, tuning);
                    CHECK(s.col_idx == reference.col_idx);
                    CHECK(s.row_ptr == reference.row_ptr);
                    CHECK(s.reason == reference.reason);
                    CHECK((s.upper_threshold == reference.upper_threshold ||
                           (std::isnan(s.upper_threshold) && std::isnan(reference.upper_threshold))));
                    CHECK((s.lower_threshold == reference.lower_threshold ||
                           (std::isnan(s.lower_threshold) && std::isnan(reference.lower_threshold))));
                }
        }
    }
}
