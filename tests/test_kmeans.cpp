#include <sqz/kmeans.hpp>
#include <sqz/half.hpp>
#include <sqz/synthetic.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <thread>
#include <vector>

namespace {

// ---- Independent references ------------------------------------------------------------------------------

struct point {
    double x;
    double w;
};

std::vector<point> sorted_points(const std::vector<double>& x, const std::vector<double>& w) {
    std::vector<point> points;
    for (std::size_t i = 0; i < x.size(); ++i) points.push_back({x[i], w[i]});
    std::sort(points.begin(), points.end(), [](const point& a, const point& b) { return a.x < b.x; });
    // All weights zero: equal weights, as documented.
    if (std::all_of(points.begin(), points.end(), [](const point& p) { return p.w == 0; }))
        for (auto& p : points) p.w = 1;
    return points;
}

// Cost of one cluster around its weighted mean, two-pass (no prefix sums); zero total weight costs 0.
double direct_cluster_cost(const std::vector<point>& p, std::size_t begin, std::size_t end) {
    double sw = 0, swx = 0;
    for (std::size_t i = begin; i < end; ++i) {
        sw += p[i].w;
        swx += p[i].w * p[i].x;
    }
    if (sw == 0) return 0;
    const double mean = swx / sw;
    double cost = 0;
    for (std::size_t i = begin; i < end; ++i) cost += p[i].w * (p[i].x - mean) * (p[i].x - mean);
    return cost;
}

// Minimum over every split of the sorted points into at most k contiguous runs (all 2^(n-1) cut sets).
double brute_force_optimum(const std::vector<double>& x, const std::vector<double>& w, int k) {
    const auto p = sorted_points(x, w);
    const std::size_t n = p.size();
    double best = std::numeric_limits<double>::infinity();
    for (std::uint32_t cuts = 0; cuts < (1u << (n - 1)); ++cuts) {
        if (std::popcount(cuts) > k - 1) continue;
        double cost = 0;
        std::size_t begin = 0;
        for (std::size_t gap = 0; gap < n; ++gap) {
            const bool cut_here = gap + 1 == n || ((cuts >> gap) & 1u);
            if (!cut_here) continue;
            cost += direct_cluster_cost(p, begin, gap + 1);
            begin = gap + 1;
        }
        best = std::min(best, cost);
    }
    return best;
}

// The textbook O(k n^2) dynamic programme on unmerged sorted points, long-double prefix sums of
// mean-centred values.
double slow_dp_optimum(const std::vector<double>& x, const std::vector<double>& w, int k) {
    const auto p = sorted_points(x, w);
    const std::size_t n = p.size();
    long double sw = 0, swx = 0;
    for (const auto& q : p) {
        sw += q.w;
        swx += static_cast<long double>(q.w) * q.x;
    }
    const long double mean = swx / sw;
    std::vector<long double> s0(n + 1, 0), s1(n + 1, 0), s2(n + 1, 0);
    for (std::size_t i = 0; i < n; ++i) {
        const long double y = p[i].x - mean;
        s0[i + 1] = s0[i] + p[i].w;
        s1[i + 1] = s1[i] + p[i].w * y;
        s2[i + 1] = s2[i] + p[i].w * y * y;
    }
    const auto cost = [&](std::size_t a, std::size_t b) -> long double {
        const long double c0 = s0[b] - s0[a];
        if (c0 == 0) return 0;
        const long double c1 = s1[b] - s1[a];
        return std::max<long double>(0, (s2[b] - s2[a]) - c1 * c1 / c0);
    };
    const long double inf = std::numeric_limits<long double>::infinity();
    std::vector<long double> previous(n + 1, inf), current(n + 1, inf);
    for (std::size_t j = 0; j <= n; ++j) previous[j] = cost(0, j);
    for (int l = 2; l <= k; ++l) {
        for (std::size_t j = 0; j <= n; ++j) {
            long double best = previous[j];  // fewer clusters (an empty one) is allowed
            for (std::size_t a = 0; a < j; ++a) best = std::min(best, previous[a] + cost(a, j));
            current[j] = best;
        }
        std::swap(previous, current);
    }
    return static_cast<double>(previous[n]);
}

// Checks the documented invariants of a result and returns its objective recomputed from scratch.
template <class T>
double check_result(const sqz::kmeans_result<T>& r, const std::vector<double>& x, const std::vector<double>& w,
                    int k) {
    REQUIRE(r.centroids.size() == static_cast<std::size_t>(k));
    REQUIRE(r.labels.size() == x.size());
    REQUIRE(std::is_sorted(r.centroids.begin(), r.centroids.end()));
    const bool all_zero = std::all_of(w.begin(), w.end(), [](double v) { return v == 0; });
    double objective = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
        REQUIRE(r.labels[i] < k);
        const double xi = static_cast<double>(static_cast<T>(x[i]));
        const double d = xi - static_cast<double>(r.centroids[r.labels[i]]);
        // Nearest centroid, lowest index on ties.
        for (int c = 0; c < k; ++c) {
            const double e = std::abs(xi - static_cast<double>(r.centroids[static_cast<std::size_t>(c)]));
            if (c < r.labels[i]) REQUIRE(e > std::abs(d));
            else REQUIRE(e >= std::abs(d));
        }
        objective += (all_zero ? 1.0 : w[i]) * d * d;
    }
    CHECK(r.objective == Approx(objective).epsilon(1e-12).margin(1e-300));
    // Equal values share a label.
    for (std::size_t i = 0; i < x.size(); ++i)
        for (std::size_t j = i + 1; j < x.size(); ++j)
            if (static_cast<T>(x[i]) == static_cast<T>(x[j])) REQUIRE(r.labels[i] == r.labels[j]);
    return objective;
}

std::vector<double> random_values(sqz::synthetic::rng& random, std::size_t n, bool repeats) {
    std::vector<double> x(n);
    for (auto& v : x)
        v = repeats ? 0.25 * static_cast<double>(static_cast<int>(random.below(9)) - 4) : 2.0 * random.normal();
    return x;
}

std::vector<double> random_weights(sqz::synthetic::rng& random, std::size_t n) {
    std::vector<double> w(n);
    const int style = static_cast<int>(random.below(4));
    for (auto& v : w) {
        if (style == 0) v = 0;                                // all zero: equal-weight fallback
        else if (random.uniform() < 0.3) v = 0;               // some zeros
        else v = style == 1 ? 1.0 : std::exp(2.0 * random.normal());  // equal or heavy-tailed
    }
    return w;
}

}  // namespace

TEST_CASE("exact k-means equals brute force over all contiguous partitions", "[kmeans]") {
    sqz::synthetic::rng random(2024);
    for (int trial = 0; trial < 600; ++trial) {
        const auto n = static_cast<std::size_t>(1 + random.below(12));
        const int k = 1 + static_cast<int>(random.below(4));
        const auto x = random_values(random, n, trial % 2 == 0);
        const auto w = random_weights(random, n);
        INFO("trial " << trial << " n = " << n << " k = " << k);
        const auto result = sqz::weighted_kmeans(x, w, k);
        const double recomputed = check_result(result, x, w, k);
        const double optimum = brute_force_optimum(x, w, k);
        REQUIRE(recomputed == Approx(optimum).epsilon(1e-9).margin(1e-12));
        const auto lloyd = sqz::weighted_kmeans(x, w, k, {.method = sqz::kmeans_method::lloyd, .seed = 7});
        check_result(lloyd, x, w, k);
        REQUIRE(result.objective <= lloyd.objective * (1 + 1e-12) + 1e-12);
    }
}

TEST_CASE("exact k-means matches a slow O(k n^2) dynamic programme on larger rows", "[kmeans]") {
    sqz::synthetic::rng random(77);
    for (int trial = 0; trial < 40; ++trial) {
        const auto n = static_cast<std::size_t>(20 + random.below(180));
        const int k = std::vector<int>{2, 3, 4, 8, 16}[trial % 5];
        auto x = random_values(random, n, trial % 3 == 0);
        if (trial % 3 == 1)  // heavy tails and fp16-like repeats
            for (auto& v : x) v = sqz::round_to_half(static_cast<float>(0.02 * random.student_t(5.0)));
        const auto w = random_weights(random, n);
        INFO("trial " << trial << " n = " << n << " k = " << k);
        const auto result = sqz::weighted_kmeans(x, w, k);
        const double recomputed = check_result(result, x, w, k);
        REQUIRE(recomputed == Approx(slow_dp_optimum(x, w, k)).epsilon(1e-9).margin(1e-15));
        const auto lloyd = sqz::weighted_kmeans(x, w, k, {.method = sqz::kmeans_method::lloyd, .seed = 3});
        check_result(lloyd, x, w, k);
        REQUIRE(result.objective <= lloyd.objective * (1 + 1e-12) + 1e-15);
    }
}

TEST_CASE("exact k-means on LLM-like fp16 rows matches the slow DP, in float and double", "[kmeans]") {
    const auto weights = sqz::synthetic::llm_like_weights(3, 400, 5);
    const auto fisher = sqz::synthetic::fisher_like_sensitivity(3, 400, 6);
    for (Eigen::Index r = 0; r < 3; ++r) {
        std::vector<float> xf(weights.row(r).begin(), weights.row(r).end());
        std::vector<float> wf(fisher.row(r).begin(), fisher.row(r).end());
        const std::vector<double> x(xf.begin(), xf.end()), w(wf.begin(), wf.end());
        for (int k : {4, 16, 64}) {
            INFO("row " << r << " k = " << k);
            const double optimum = slow_dp_optimum(x, w, k);
            const auto as_double = sqz::weighted_kmeans(x, w, k);
            CHECK(check_result(as_double, x, w, k) == Approx(optimum).epsilon(1e-9));
            // Float centroids are rounded, so the objective may exceed the optimum by a rounding margin.
            const auto as_float = sqz::weighted_kmeans(xf, wf, k);
            CHECK(check_result(as_float, x, w, k) == Approx(optimum).epsilon(1e-5));
        }
    }
}

TEST_CASE("exact k-means with many clusters matches the slow DP", "[kmeans]") {
    sqz::synthetic::rng random(404);
    for (const int k : {24, 64, 100}) {
        std::vector<double> x(260), w(260);
        for (std::size_t i = 0; i < x.size(); ++i) {
            x[i] = sqz::round_to_half(static_cast<float>(0.02 * random.student_t(5.0)));
            w[i] = random.uniform() < 0.1 ? 0.0 : std::exp(2.0 * random.normal());
        }
        INFO("k = " << k);
        const auto result = sqz::weighted_kmeans(x, w, k);
        CHECK(check_result(result, x, w, k) == Approx(slow_dp_optimum(x, w, k)).epsilon(1e-9).margin(1e-18));
    }
}

TEST_CASE("occurrence ranks count, rank and list the values that occur, over more builds than marks", "[kmeans]") {
    // Each build marks with its own byte value and the map is cleared when the 255 values run out; a mark
    // left from an earlier build would count a value that does not occur. Dense and sparse sets alternate
    // (64-key blocks with more than 32 values, and empty ones), with lengths that leave tails.
    namespace km = sqz::detail::kmeans;
    sqz::synthetic::rng random(717);
    km::occurrence_ranks ranks;
    std::vector<std::uint16_t> values, keys, distinct, listed;
    std::vector<std::uint32_t> rank;
    std::size_t wrong_counts = 0, wrong_lists = 0, wrong_ranks = 0;
    for (int build = 0; build < 600; ++build) {
        const std::size_t range = build % 2 == 0 ? 300 : 20000;
        const std::size_t n = 1 + random.below(build % 3 == 0 ? 40 : 1500);
        const auto low = static_cast<std::uint16_t>(random.below(65536));
        values.resize(n);
        keys.resize(n);
        for (std::size_t i = 0; i < n; ++i) {
            values[i] = static_cast<std::uint16_t>(random.below(range));
            keys[i] = static_cast<std::uint16_t>(values[i] + low);  // ranks_of takes keys and their minimum
        }
        distinct = values;
        std::sort(distinct.begin(), distinct.end());
        distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
        listed.assign(n + 64, 0);
        const std::size_t count = ranks.build(n, range - 1, [&](std::size_t i) { return values[i]; }, listed.data());
        if (count != distinct.size()) {
            ++wrong_counts;
            continue;
        }
        if (km::occurrence_ranks::lists_values && !std::equal(distinct.begin(), distinct.end(), listed.begin())) ++wrong_lists;
        rank.assign(n, 0);
        ranks.ranks_of(n, keys.data(), low, rank.data());
        for (std::size_t i = 0; i < n; ++i) {
            const auto expected = static_cast<std::uint32_t>(std::lower_bound(distinct.begin(), distinct.end(), values[i]) - distinct.begin());
            if (rank[i] != expected || ranks.rank(values[i]) != expected) ++wrong_ranks;
        }
    }
    CHECK(wrong_counts == 0);
    CHECK(wrong_lists == 0);
    CHECK(wrong_ranks == 0);
}

TEST_CASE("exact k-means on fp16 rows whose values fill whole blocks of keys matches the slow DP", "[kmeans]") {
    // Runs of consecutive fp16 values (every key of many 32- and 64-key blocks occurs, which the listing of
    // the values that occur packs 64 at a time), of both signs, some repeated, in random order; row lengths
    // that leave tails for the 16-at-a-time rank pass.
    sqz::synthetic::rng random(616);
    for (const std::size_t runs : {std::size_t{1}, std::size_t{3}}) {
        std::vector<float> xf;
        for (std::size_t run = 0; run < runs; ++run) {
            // Small values (from 2^-14), so that the keys of both signs span few enough to be mapped.
            const auto first = static_cast<std::uint16_t>(0x0400 + 0x100 * run);
            for (std::uint16_t j = 0; j < 150 + 37 * run; ++j) {
                xf.push_back(sqz::half_bits_to_float(static_cast<std::uint16_t>(first + j)));
                xf.push_back(-sqz::half_bits_to_float(static_cast<std::uint16_t>(first + 2 * j)));
                if (random.uniform() < 0.3) xf.push_back(xf[random.below(xf.size())]);
            }
        }
        for (std::size_t i = xf.size(); i > 1; --i) std::swap(xf[i - 1], xf[random.below(i)]);
        std::vector<float> wf(xf.size());
        for (auto& v : wf) v = static_cast<float>(std::exp(random.normal()));
        const std::vector<double> x(xf.begin(), xf.end()), w(wf.begin(), wf.end());
        for (const int k : {4, 7}) {
            INFO("runs " << runs << ", n = " << xf.size() << ", k = " << k);
            const double optimum = slow_dp_optimum(x, w, k);
            CHECK(check_result(sqz::weighted_kmeans(xf, wf, k), x, w, k) == Approx(optimum).epsilon(1e-5));
            CHECK(check_result(sqz::weighted_kmeans(x, w, k), x, w, k) == Approx(optimum).epsilon(1e-9));
        }
    }
}

TEST_CASE("exact k-means groups equal values the same way on every path", "[kmeans]") {
    // Rows of fp16 values with many repeats take the key-map grouping (fp16 keys for contiguous floats,
    // float or double keys otherwise); a row with one value that is not an fp16 value, placed past the last
    // block of eight, takes float keys. Every form must match the slow DP on the unmerged values.
    sqz::synthetic::rng random(515);
    for (const std::size_t n : {std::size_t{1029}, std::size_t{2000}}) {
        std::vector<float> palette(180);
        for (auto& v : palette) v = sqz::round_to_half(static_cast<float>(0.02 * random.student_t(5.0)));
        std::vector<float> xf(n), wf(n);
        for (std::size_t i = 0; i < n; ++i) {
            xf[i] = palette[random.below(palette.size())];
            wf[i] = random.uniform() < 0.05 ? 0.0f : static_cast<float>(std::exp(random.normal()));
        }
        if (n % 8 != 0) xf[n - 1] = 0.0123456789f;  // not an fp16 value, in the tail
        const std::vector<double> x(xf.begin(), xf.end()), w(wf.begin(), wf.end());
        const int k = 8;
        INFO("n = " << n);
        const double optimum = slow_dp_optimum(x, w, k);
        const auto contiguous = sqz::weighted_kmeans(xf, wf, k);
        CHECK(check_result(contiguous, x, w, k) == Approx(optimum).epsilon(1e-5));
        const Eigen::MatrixXf strided_values = Eigen::Map<const Eigen::VectorXf>(xf.data(), static_cast<Eigen::Index>(n)).transpose().replicate(2, 1);
        const Eigen::MatrixXf strided_weights = Eigen::Map<const Eigen::VectorXf>(wf.data(), static_cast<Eigen::Index>(n)).transpose().replicate(2, 1);
        const auto strided = sqz::weighted_kmeans(strided_values.row(1), strided_weights.row(1), k);
        CHECK(strided.centroids == contiguous.centroids);
        CHECK(strided.labels == contiguous.labels);
        CHECK(strided.objective == contiguous.objective);
        // Double weights (as sqz::quantize passes them): the same weights, so the same result, contiguous
        // (vectorised pass) or strided (one by one).
        const auto double_weights = sqz::weighted_kmeans(xf, w, k);
        CHECK(double_weights.centroids == contiguous.centroids);
        CHECK(double_weights.labels == contiguous.labels);
        CHECK(double_weights.objective == contiguous.objective);
        const Eigen::MatrixXd strided_double_weights = strided_weights.cast<double>();
        const auto strided_double = sqz::weighted_kmeans(strided_values.row(1), strided_double_weights.row(1), k);
        CHECK(strided_double.centroids == contiguous.centroids);
        CHECK(strided_double.labels == contiguous.labels);
        CHECK(strided_double.objective == contiguous.objective);
        const auto as_double = sqz::weighted_kmeans(x, w, k);
        CHECK(check_result(as_double, x, w, k) == Approx(optimum).epsilon(1e-9));
    }
    // bfloat16 values in a float, too small for fp16: float keys with 16 trailing zero bits, grouped by the
    // key map too.
    {
        const std::size_t n = 2500;
        std::vector<float> xf(n), wf(n);
        for (std::size_t i = 0; i < n; ++i) {
            xf[i] = sqz::round_to_bfloat16(static_cast<float>(2e-8 * random.student_t(5.0)));
            wf[i] = static_cast<float>(std::exp(random.normal()));
        }
        const std::vector<double> x(xf.begin(), xf.end()), w(wf.begin(), wf.end());
        const auto result = sqz::weighted_kmeans(xf, wf, 6);
        CHECK(check_result(result, x, w, 6) == Approx(slow_dp_optimum(x, w, 6)).epsilon(1e-5));
    }
    // Doubles whose keys share their top bits in long runs: a tight cluster of distinct values next to
    // values spread over many orders of magnitude.
    std::vector<double> x, w;
    for (int i = 0; i < 150; ++i) {
        x.push_back(1.0 + 1e-13 * random.uniform());
        w.push_back(std::exp(random.normal()));
    }
    for (int i = 0; i < 150; ++i) {
        x.push_back((random.uniform() < 0.5 ? -1 : 1) * std::pow(10.0, 6 * random.normal()));
        w.push_back(std::exp(random.normal()));
    }
    for (int i = 0; i < 20; ++i) {  // repeats inside the cluster
        x.push_back(x[random.below(150)]);
        w.push_back(1.0);
    }
    for (const int k : {2, 5}) {
        INFO("wide keys, k = " << k);
        const auto result = sqz::weighted_kmeans(x, w, k);
        CHECK(check_result(result, x, w, k) == Approx(slow_dp_optimum(x, w, k)).epsilon(1e-9));
    }
}

TEST_CASE("a DP layer whose lower bounds cross its upper bounds still gives every cell a valid candidate", "[kmeans]") {
    // Rounding at near-ties can leave the previous layer's minimiser at a cell j above the last candidate
    // the divide and conquer gives j (a right neighbour's minimiser; seen on LLM-like rows at k = 256).
    // Such a cell must still take a candidate, not be left at infinity (which prunes the rest of the
    // layer) or read past the sums. Layer 3 of a real 3-clustering is solved with the true layer-2
    // minimisers as lower bounds, some raised as far as they can go; every cell's value must then be
    // finite, come from a candidate in [2, j - 1], equal that candidate's cost (recomputed here), and
    // never beat the optimum.
    sqz::synthetic::rng random(4242);
    constexpr std::size_t m = 300;
    std::vector<double> y(m), w(m);
    for (std::size_t i = 0; i < m; ++i) {
        y[i] = (i == 0 ? 0.0 : y[i - 1]) + 0.01 + random.uniform();
        w[i] = 0.1 + random.uniform();
    }
    std::vector<double> s0(m + 1, 0.0), s1(m + 1, 0.0), s2(m + 1, 0.0);
    for (std::size_t i = 0; i < m; ++i) {
        s0[i + 1] = s0[i] + w[i];
        s1[i + 1] = s1[i] + w[i] * y[i];
        s2[i + 1] = s2[i] + w[i] * y[i] * y[i];
    }
    const auto cost = [&](std::size_t a, std::size_t b) {  // groups [a, b), directly from the points
        double sw = 0, swy = 0;
        for (std::size_t i = a; i < b; ++i) {
            sw += w[i];
            swy += w[i] * y[i];
        }
        double c = 0;
        for (std::size_t i = a; i < b; ++i) c += w[i] * (y[i] - swy / sw) * (y[i] - swy / sw);
        return c;
    };
    const double infinity = std::numeric_limits<double>::infinity();
    std::vector<double> d1(m + 1, infinity), d2(m + 1, infinity), d3(m + 1, infinity);
    std::vector<std::uint32_t> lower(m + 1, 0);
    for (std::size_t j = 1; j <= m; ++j) d1[j] = cost(0, j);
    for (std::size_t j = 2; j <= m; ++j)
        for (std::size_t a = 1; a < j; ++a) {
            const double through_a = d1[a] + cost(a, j);
            if (through_a < d2[j]) {
                d2[j] = through_a;
                lower[j] = static_cast<std::uint32_t>(a);
            }
        }
    for (std::size_t j = 3; j <= m; ++j)
        for (std::size_t a = 2; a < j; ++a) d3[j] = std::min(d3[j], d2[a] + cost(a, j));
    // A minimiser is below its cell (lower[j] <= j - 1), but may pass the minimiser of a cell to its right,
    // which is the last candidate the divide and conquer gives j.
    const std::vector<std::uint32_t> true_lower = lower;
    for (std::size_t j = 5; j <= m; j += 7) lower[j] = static_cast<std::uint32_t>(j - 1);

    std::vector<double> reduced(m + 1, 0.0), value(m + 1, -1.0);
    std::vector<std::uint32_t> choice(m + 1, 0);
    for (std::size_t a = 2; a <= m; ++a) reduced[a] = d2[a] - s2[a];
    sqz::detail::kmeans::layer_solver solver{{s0.data(), s1.data(), s2.data()}, reduced.data(), value.data(),
                                             choice.data(), lower.data(), infinity, m + 1};
    std::vector<sqz::detail::kmeans::layer_solver::task> level, next_level;
    solver.solve(3, m + 1, 2, m, level, next_level);
    CHECK(solver.first_pruned == m + 1);
    const auto check_cells = [&](std::size_t end) {
        for (std::size_t j = 3; j < end; ++j) {
            INFO("cell " << j);
            REQUIRE(std::isfinite(value[j]));
            REQUIRE(choice[j] >= 2);
            REQUIRE(choice[j] <= j - 1);
            const double from_choice = d2[choice[j]] + cost(choice[j], j);
            CHECK(value[j] == Approx(from_choice).epsilon(1e-9).margin(1e-9));
            CHECK(value[j] >= d3[j] - 1e-9 * (1 + d3[j]));
        }
    };
    check_cells(m + 1);

    // With a bound (and the true lower bounds, so that D grows with j), the layer ends at the first cell
    // beyond it, however the divide and conquer reaches it; the cells left of it are filled as without it.
    solver.lower = true_lower.data();
    for (const std::size_t cut : {4u, 77u, 150u, 299u}) {
        INFO("bound between cells " << cut - 1 << " and " << cut);
        REQUIRE(d3[cut - 1] < d3[cut]);
        std::fill(value.begin(), value.end(), -1.0);
        solver.bound = 0.5 * (d3[cut - 1] + d3[cut]);
        solver.first_pruned = m + 1;
        solver.solve(3, m + 1, 2, m, level, next_level);
        CHECK(solver.first_pruned == cut);
        check_cells(cut);
    }
}

TEST_CASE("weights pull centroids toward heavy values", "[kmeans]") {
    const std::vector<double> x{0, 1, 2, 10, 11, 12};
    std::vector<double> w{1, 1, 1, 1, 1, 1};
    auto r = sqz::weighted_kmeans(x, w, 2);
    CHECK(r.centroids[0] == Approx(1.0));
    CHECK(r.centroids[1] == Approx(11.0));
    CHECK(r.objective == Approx(4.0));
    // Weight 4 on 12: the upper centroid moves to (10 + 11 + 4 * 12) / 6 = 11.5.
    w[5] = 4;
    r = sqz::weighted_kmeans(x, w, 2);
    CHECK(r.centroids[0] == Approx(1.0));
    CHECK(r.centroids[1] == Approx(11.5));
    CHECK(r.objective == Approx(2.0 + 2.25 + 0.25 + 4 * 0.25));
    // k = 1: the weighted mean (0 * 3 + 1 + 2 * 2) / 6.
    const auto one = sqz::weighted_kmeans(std::vector<double>{0, 1, 2}, std::vector<double>{3, 1, 2}, 1);
    CHECK(one.centroids[0] == Approx(5.0 / 6.0));
    // {0, 1, 2, 3} with weight 100 on 3, k = 2: the best split is {0, 1} {2, 3} (cost 0.5 + 100/101 against
    // 2 for {0, 1, 2} {3}), and the upper centroid sits at (2 + 300) / 101, next to the heavy value.
    const auto heavy = sqz::weighted_kmeans(std::vector<double>{0, 1, 2, 3}, std::vector<double>{1, 1, 1, 100}, 2);
    CHECK(heavy.centroids[0] == Approx(0.5));
    CHECK(heavy.centroids[1] == Approx(302.0 / 101.0));
    CHECK(heavy.objective == Approx(0.5 + 100.0 / 101.0));
}

TEST_CASE("k-means rejects bad input with the argument and index", "[kmeans]") {
    const std::vector<float> x{0.5f, -1.0f, 2.0f};
    const std::vector<float> w{1.0f, 2.0f, 0.0f};
    const auto message = [](auto&& call) {
        try {
            call();
        } catch (const sqz::error& e) {
            return std::string(e.what());
        }
        return std::string("no exception");
    };
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const float inf = std::numeric_limits<float>::infinity();
    CHECK_THAT(message([&] { sqz::weighted_kmeans(x, w, 0); }), Catch::Contains("k = 0"));
    CHECK_THAT(message([&] { sqz::weighted_kmeans(x, w, 257); }), Catch::Contains("k = 257"));
    CHECK_THAT(message([&] { sqz::weighted_kmeans(std::vector<float>{}, std::vector<float>{}, 2); }),
               Catch::Contains("empty"));
    CHECK_THAT(message([&] { sqz::weighted_kmeans(x, std::vector<float>{1, 2}, 2); }),
               Catch::Contains("weights.size() = 2"));
    CHECK_THAT(message([&] { sqz::weighted_kmeans(std::vector<float>{1, nan, 2}, w, 2); }),
               Catch::Contains("values[1]"));
    CHECK_THAT(message([&] { sqz::weighted_kmeans(std::vector<float>{1, 2, -inf}, w, 2); }),
               Catch::Contains("values[2]"));
    CHECK_THAT(message([&] { sqz::weighted_kmeans(x, std::vector<float>{1, 2, inf}, 2); }),
               Catch::Contains("weights[2]"));
    CHECK_THAT(message([&] { sqz::weighted_kmeans(x, std::vector<float>{nan, 2, 1}, 2); }),
               Catch::Contains("weights[0]"));
    CHECK_THAT(message([&] { sqz::weighted_kmeans(x, std::vector<float>{1, -0.5f, 1}, 2); }),
               Catch::Contains("weights[1] = -0.5 is negative"));
    // Longer contiguous float rows go through the vectorised first pass: same messages, -0.0 weights accepted.
    std::vector<float> long_x(20), long_w(20, 1.0f);
    for (std::size_t i = 0; i < long_x.size(); ++i) long_x[i] = 0.1f * static_cast<float>(i);
    auto bad_x = long_x;
    bad_x[11] = nan;
    CHECK_THAT(message([&] { sqz::weighted_kmeans(bad_x, long_w, 2); }), Catch::Contains("values[11] = nan"));
    auto bad_w = long_w;
    bad_w[13] = -1;
    CHECK_THAT(message([&] { sqz::weighted_kmeans(long_x, bad_w, 2); }), Catch::Contains("weights[13] = -1 is negative"));
    bad_w[13] = 1;
    bad_w[9] = inf;
    CHECK_THAT(message([&] { sqz::weighted_kmeans(long_x, bad_w, 2); }), Catch::Contains("weights[9] = inf"));
    bad_w[9] = -0.0f;
    CHECK_NOTHROW(sqz::weighted_kmeans(long_x, bad_w, 2));
    // Double weights with float values (sqz::quantize's sensitivities) take the vectorised pass too.
    std::vector<double> bad_wd(long_w.begin(), long_w.end());
    bad_wd[13] = -1;
    CHECK_THAT(message([&] { sqz::weighted_kmeans(long_x, bad_wd, 2); }), Catch::Contains("weights[13] = -1 is negative"));
    bad_wd[13] = 1;
    bad_wd[9] = std::numeric_limits<double>::infinity();
    CHECK_THAT(message([&] { sqz::weighted_kmeans(long_x, bad_wd, 2); }), Catch::Contains("weights[9] = inf"));
    bad_wd[9] = std::numeric_limits<double>::quiet_NaN();
    CHECK_THAT(message([&] { sqz::weighted_kmeans(long_x, bad_wd, 2); }), Catch::Contains("weights[9] = nan"));
    bad_wd[9] = -0.0;
    CHECK_NOTHROW(sqz::weighted_kmeans(long_x, bad_wd, 2));
    bad_wd[9] = std::numeric_limits<double>::max();  // finite: accepted
    CHECK_NOTHROW(sqz::weighted_kmeans(long_x, bad_wd, 2));
    // Same checks in the row-batched entry, naming row and column.
    sqz::row_matrix<float> values(2, 3), weights(2, 3);
    values << 1, 2, 3, 4, 5, 6;
    weights << 1, 1, 1, 1, 1, 1;
    values(1, 2) = nan;
    CHECK_THAT(message([&] { sqz::weighted_kmeans_rows(values, weights, 2); }), Catch::Contains("values(1, 2)"));
    values(1, 2) = 6;
    weights(0, 1) = -1;
    CHECK_THAT(message([&] { sqz::weighted_kmeans_rows(values, weights, 2); }), Catch::Contains("weights(0, 1)"));
    CHECK_THAT(message([&] { sqz::weighted_kmeans_rows(values, sqz::row_matrix<float>(2, 2), 2); }),
               Catch::Contains("weights is 2 x 2"));
    CHECK_THAT(message([&] { sqz::weighted_kmeans_rows(values, weights, 300); }), Catch::Contains("k = 300"));
    CHECK(sqz::weighted_kmeans_rows(sqz::row_matrix<float>(0, 3), sqz::row_matrix<float>(0, 3), 4).empty());
    CHECK_THROWS_AS(sqz::weighted_kmeans_rows(sqz::row_matrix<float>(2, 0), sqz::row_matrix<float>(2, 0), 4),
                    sqz::error);
}

TEST_CASE("k-means edge cases: few distinct values, zero weights, ties, signed zeros", "[kmeans]") {
    SECTION("fewer distinct positive-weight values than k: k sorted centroids, the last repeated") {
        const std::vector<double> x{2, 1, 1, 3, 2, 7};
        const std::vector<double> w{1, 1, 1, 1, 1, 0};  // 7 has zero weight
        for (auto method : {sqz::kmeans_method::exact, sqz::kmeans_method::lloyd}) {
            const auto r = sqz::weighted_kmeans(x, w, 8, {.method = method});
            CHECK(r.centroids == std::vector<double>{1, 2, 3, 3, 3, 3, 3, 3});
            CHECK(r.labels == std::vector<std::uint8_t>{1, 0, 0, 2, 1, 2});  // 7 goes to the first 3
            CHECK(r.objective == 0);
        }
        const auto single = sqz::weighted_kmeans(std::vector<float>(5, 0.25f), std::vector<float>(5, 1.0f), 4);
        CHECK(single.centroids == std::vector<float>(4, 0.25f));
        CHECK(single.labels == std::vector<std::uint8_t>(5, 0));
    }
    SECTION("all weights zero: equal weights") {
        const std::vector<double> x{0, 1, 2, 10, 11, 12, 30};
        const auto zero = sqz::weighted_kmeans(x, std::vector<double>(7, 0.0), 3);
        const auto ones = sqz::weighted_kmeans(x, std::vector<double>(7, 1.0), 3);
        CHECK(zero.centroids == ones.centroids);
        CHECK(zero.labels == ones.labels);
        CHECK(zero.objective == ones.objective);
        CHECK(zero.objective == Approx(4.0));
    }
    SECTION("zero-weight entries do not move centroids and get their nearest centroid") {
        sqz::synthetic::rng random(9);
        std::vector<double> x(300), w(300);
        for (std::size_t i = 0; i < x.size(); ++i) {
            x[i] = random.normal();
            w[i] = random.uniform() + 0.1;
        }
        // b clusters a's entries and more: the results must be a's bit for bit, on a's entries.
        const auto check_same = [](const auto& a, const auto& b) {
            CHECK(a.centroids == b.centroids);
            CHECK(a.objective == b.objective);
            CHECK(std::equal(a.labels.begin(), a.labels.end(), b.labels.begin()));
        };
        auto x2 = x, w2 = w;
        for (double extra : {-50.0, 0.123, 3.5, 40.0}) {
            x2.push_back(extra);
            w2.push_back(0.0);
        }
        for (auto method : {sqz::kmeans_method::exact, sqz::kmeans_method::lloyd}) {
            const auto a = sqz::weighted_kmeans(x, w, 8, {.method = method});
            const auto b = sqz::weighted_kmeans(x2, w2, 8, {.method = method});
            check_same(a, b);
            check_result(b, x2, w2, 8);  // nearest-centroid labels for the extra entries
            CHECK(b.labels[300] == 0);
            CHECK(b.labels[303] == 7);
        }
        // Appended zero-weight entries move the last entries into other blocks of the eight-lane sums (and,
        // for float rows, of the eight-at-a-time reader); results must stay bit for bit the same. Rows of
        // 297..300 entries, with 1..11 appended.
        const auto same_with_appended_zeros = [&]<class T>(std::size_t n, std::size_t extra) {
            std::vector<T> xs(x.begin(), x.begin() + static_cast<std::ptrdiff_t>(n)), ws(w.begin(), w.begin() + static_cast<std::ptrdiff_t>(n));
            auto xs2 = xs, ws2 = ws;
            for (std::size_t e = 0; e < extra; ++e) {
                xs2.push_back(static_cast<T>(random.normal()));
                ws2.push_back(T(0));
            }
            for (auto method : {sqz::kmeans_method::exact, sqz::kmeans_method::lloyd})
                check_same(sqz::weighted_kmeans(xs, ws, 8, {.method = method}), sqz::weighted_kmeans(xs2, ws2, 8, {.method = method}));
        };
        for (std::size_t n = 297; n <= 300; ++n)
            for (std::size_t extra = 1; extra <= 11; ++extra) {
                same_with_appended_zeros.template operator()<double>(n, extra);
                same_with_appended_zeros.template operator()<float>(n, extra);
            }
    }
    SECTION("a value exactly between two centroids goes with its equals, to the lower centroid") {
        const std::vector<double> x{0, 0, 1, 1, 2, 2};
        const std::vector<double> w{1, 1, 0, 0, 1, 1};
        const auto r = sqz::weighted_kmeans(x, w, 2);
        CHECK(r.centroids == std::vector<double>{0, 2});
        CHECK(r.labels == std::vector<std::uint8_t>{0, 0, 0, 0, 1, 1});
    }
    SECTION("-0.0 and +0.0 are one value") {
        const std::vector<float> x{-0.0f, 0.0f, 1.0f, -0.0f, 1.0f, 0.0f};
        const std::vector<float> w{1, 1, 1, 1, 1, 1};
        const auto r = sqz::weighted_kmeans(x, w, 3);
        CHECK(r.labels[0] == r.labels[1]);
        CHECK(r.labels[3] == r.labels[5]);
        CHECK(r.centroids[0] == 0.0f);
        CHECK(r.objective == 0);
    }
    SECTION("negative values and k = 256 on 256 distinct values reproduce the values") {
        std::vector<double> x(256), w(256, 1.0);
        for (std::size_t i = 0; i < x.size(); ++i) x[i] = -1.0 + static_cast<double>((i * 37) % 256) / 128.0;
        const auto r = sqz::weighted_kmeans(x, w, 256);
        CHECK(r.objective == 0);
        for (std::size_t i = 0; i < x.size(); ++i) CHECK(r.centroids[r.labels[i]] == x[i]);
    }
}

TEST_CASE("k-means rejects values whose weighted squares overflow double", "[kmeans]") {
    const std::vector<double> x{-1e200, 0.0, 1e200, 2e200};
    const std::vector<double> w{1, 1, 1, 1};
    CHECK_THROWS_WITH(sqz::weighted_kmeans(x, w, 2), Catch::Contains("overflows double"));
    // A zero weight is accepted with either sign of zero.
    const auto r = sqz::weighted_kmeans(std::vector<double>{1, 2, 3}, std::vector<double>{1, -0.0, 1}, 2);
    CHECK(r.centroids == std::vector<double>{1, 3});
}

TEST_CASE("per-thread scratch memory does not leak between rows of different sizes", "[kmeans]") {
    const auto values = sqz::synthetic::llm_like_weights(3, 3000, 41);
    const auto fisher = sqz::synthetic::fisher_like_sensitivity(3, 3000, 42);
    const auto small_values = sqz::synthetic::llm_like_weights(1, 200, 43);
    const auto small_fisher = sqz::synthetic::fisher_like_sensitivity(1, 200, 44);
    for (auto method : {sqz::kmeans_method::exact, sqz::kmeans_method::lloyd}) {
        const sqz::kmeans_options options{.method = method};
        // In this thread after larger rows, and in a fresh thread with fresh scratch memory.
        for (Eigen::Index r = 0; r < 3; ++r) sqz::weighted_kmeans(values.row(r), fisher.row(r), 32, options);
        const auto warm = sqz::weighted_kmeans(small_values.row(0), small_fisher.row(0), 16, options);
        sqz::kmeans_result<float> fresh;
        std::thread([&] { fresh = sqz::weighted_kmeans(small_values.row(0), small_fisher.row(0), 16, options); }).join();
        CHECK(warm.centroids == fresh.centroids);
        CHECK(warm.labels == fresh.labels);
        CHECK(warm.objective == fresh.objective);
    }
}

TEST_CASE("k-means accepts spans, vectors and Eigen expressions of float or double", "[kmeans]") {
    const auto values = sqz::synthetic::llm_like_weights(2, 256, 11);
    const auto fisher = sqz::synthetic::fisher_like_sensitivity(2, 256, 12);
    const std::vector<float> x(values.row(1).begin(), values.row(1).end());
    const std::vector<float> w(fisher.row(1).begin(), fisher.row(1).end());
    const auto reference = sqz::weighted_kmeans(x, w, 8);
    const auto from_span = sqz::weighted_kmeans(std::span<const float>(x), std::span<const float>(w), 8);
    const auto from_eigen = sqz::weighted_kmeans(values.row(1), fisher.row(1), 8);
    const Eigen::VectorXf column = values.row(1).transpose();
    const auto from_column = sqz::weighted_kmeans(column, w, 8);
    const std::vector<double> wd(w.begin(), w.end());
    const auto double_weights = sqz::weighted_kmeans(x, wd, 8);
    static_assert(std::is_same_v<decltype(from_eigen), const sqz::kmeans_result<float>>);
    for (const auto* r : {&from_span, &from_eigen, &from_column, &double_weights}) {
        CHECK(r->centroids == reference.centroids);
        CHECK(r->labels == reference.labels);
        CHECK(r->objective == reference.objective);
    }
    // Strided storage (a row of a column-major matrix) takes the element-by-element path: same bits.
    const Eigen::MatrixXf column_major_values = values, column_major_fisher = fisher;
    const auto strided = sqz::weighted_kmeans(column_major_values.row(1), column_major_fisher.row(1), 8);
    CHECK(strided.centroids == reference.centroids);
    CHECK(strided.labels == reference.labels);
    CHECK(strided.objective == reference.objective);
    const std::vector<double> xd(x.begin(), x.end());
    const auto as_double = sqz::weighted_kmeans(xd, w, 8);
    static_assert(std::is_same_v<decltype(as_double), const sqz::kmeans_result<double>>);
    CHECK(as_double.objective == Approx(reference.objective).epsilon(1e-5));
}

TEST_CASE("row-batched k-means: same as row by row, identical for 1 and 2 threads", "[kmeans]") {
    const auto values = sqz::synthetic::llm_like_weights(12, 300, 21);
    auto fisher = sqz::synthetic::fisher_like_sensitivity(12, 300, 22);
    fisher(3, 7) = 0;
    fisher.row(5).setZero();
    for (auto method : {sqz::kmeans_method::exact, sqz::kmeans_method::lloyd}) {
        const sqz::kmeans_options options{.method = method, .seed = 5};
        const auto one = sqz::weighted_kmeans_rows(values, fisher, 16, options, 1);
        const auto two = sqz::weighted_kmeans_rows(values, fisher, 16, options, 2);
        REQUIRE(one.size() == 12);
        REQUIRE(two.size() == 12);
        for (std::size_t r = 0; r < one.size(); ++r) {
            const auto single = sqz::weighted_kmeans(values.row(static_cast<Eigen::Index>(r)),
                                                     fisher.row(static_cast<Eigen::Index>(r)), 16, options);
            CHECK(one[r].centroids == two[r].centroids);
            CHECK(one[r].labels == two[r].labels);
            CHECK(one[r].objective == two[r].objective);
            CHECK(one[r].centroids == single.centroids);
            CHECK(one[r].labels == single.labels);
        }
    }
    // A column-major double matrix with float weights works too.
    const Eigen::MatrixXd values_d = values.cast<double>();
    const auto d = sqz::weighted_kmeans_rows(values_d, fisher, 4);
    CHECK(d.size() == 12);
    CHECK(d[2].objective == Approx(sqz::weighted_kmeans_rows(values, fisher, 4)[2].objective).epsilon(1e-5));
}

TEST_CASE("lloyd is deterministic, seed-dependent only through sampling, and near the optimum", "[kmeans]") {
    const auto values = sqz::synthetic::llm_like_weights(6, 1024, 31);
    const auto fisher = sqz::synthetic::fisher_like_sensitivity(6, 1024, 32);
    double gap = 0;
    for (Eigen::Index r = 0; r < 6; ++r) {
        const sqz::kmeans_options options{.method = sqz::kmeans_method::lloyd, .seed = 99};
        const auto a = sqz::weighted_kmeans(values.row(r), fisher.row(r), 16, options);
        const auto b = sqz::weighted_kmeans(values.row(r), fisher.row(r), 16, options);
        CHECK(a.centroids == b.centroids);
        CHECK(a.labels == b.labels);
        const auto exact = sqz::weighted_kmeans(values.row(r), fisher.row(r), 16);
        CHECK(exact.objective <= a.objective * (1 + 1e-9));
        gap += a.objective / exact.objective - 1;
    }
    CHECK(gap / 6 < 0.1);  // a loose sanity bound; the benchmark measures the real gap
}

TEST_CASE("lloyd's hinted search finds the first value at least c from any hint, as std::lower_bound does", "[kmeans]") {
    // first_at_least_near compares the eight values around the hint, then gallops away from them: check
    // every kind of target (inside the window, just outside, far away, beyond either end, equal runs)
    // from hints across the row.
    sqz::synthetic::rng random(77);
    std::vector<double> y(600);
    for (std::size_t i = 0; i < y.size(); ++i) y[i] = (i == 0 ? 0.0 : y[i - 1]) + (random.uniform() < 0.2 ? 0.0 : random.uniform());
    const std::size_t m = y.size();
    std::vector<double> zeros(m + 1, 0.0);
    sqz::detail::kmeans::lloyd_scratch scratch;
    const sqz::detail::kmeans::lloyd_solver solver{y.data(), {zeros.data(), zeros.data(), zeros.data()}, m, scratch};
    for (int trial = 0; trial < 4000; ++trial) {
        const std::size_t hint = static_cast<std::size_t>(random.uniform() * static_cast<double>(m + 1)) % (m + 1);
        const std::size_t lo = trial % 3 == 0 ? static_cast<std::size_t>(random.uniform() * static_cast<double>(hint + 1)) % (hint + 1) : 0;
        const std::size_t hi = trial % 5 == 0 ? hint + static_cast<std::size_t>(random.uniform() * static_cast<double>(m - hint)) : m;
        // Targets: an existing value (possibly in a run of equals), a value between two, or outside the range.
        const std::size_t at = static_cast<std::size_t>(random.uniform() * static_cast<double>(m)) % m;
        const double c = trial % 7 == 0 ? y[m - 1] + 1 : (trial % 11 == 0 ? -1.0 : (trial % 2 == 0 ? y[at] : y[at] + 0.5 * random.uniform()));
        const auto expected = static_cast<std::size_t>(std::lower_bound(y.begin() + static_cast<std::ptrdiff_t>(lo),
                                                                        y.begin() + static_cast<std::ptrdiff_t>(hi), c) - y.begin());
        INFO("hint " << hint << " lo " << lo << " hi " << hi << " c " << c);
        REQUIRE(solver.first_at_least_near(c, hint, lo, hi) == expected);
    }
}

namespace {

/// Row r's positive-weight distinct values (equal values merged, weights summed), ascending, with their
/// prefix sums, in a workspace as cluster() leaves it for lloyd_partition (the values are not shifted).
template <class Matrix>
sqz::detail::kmeans::workspace<double, double> lloyd_workspace(const Matrix& values, const Matrix& fisher, Eigen::Index r) {
    std::vector<double> y, w;
    std::vector<std::pair<double, double>> points;
    for (Eigen::Index c = 0; c < values.cols(); ++c) points.emplace_back(values(r, c), fisher(r, c));
    std::sort(points.begin(), points.end());
    for (const auto& [v, weight] : points) {
        if (!y.empty() && y.back() == v) {
            w.back() += weight;
        } else if (weight > 0) {
            y.push_back(v);
            w.push_back(weight);
        }
    }
    const std::size_t m = y.size();
    sqz::detail::kmeans::workspace<double, double> ws;
    ws.shifted = y;
    ws.forward.s0.assign(m + 1, 0.0);
    ws.forward.s1.assign(m + 1, 0.0);
    ws.forward.s2.assign(m + 1, 0.0);
    for (std::size_t g = 0; g < m; ++g) {
        ws.forward.s0[g + 1] = ws.forward.s0[g] + w[g];
        ws.forward.s1[g + 1] = ws.forward.s1[g] + w[g] * y[g];
        ws.forward.s2[g + 1] = ws.forward.s2[g] + w[g] * y[g] * y[g];
    }
    return ws;
}

}  // namespace

TEST_CASE("lloyd's restarts that reach a state seen before skip their moves without changing the result", "[kmeans]") {
    // Reference: every restart runs its split-and-merge moves (no skipping), with its own scratch memory.
    // lloyd_partition must pick the same centres, and on these rows some restarts must have been skipped.
    namespace km = sqz::detail::kmeans;
    const auto values = sqz::synthetic::llm_like_weights(12, 700, 5);
    const auto fisher = sqz::synthetic::fisher_like_sensitivity(12, 700, 6);
    std::size_t skipped = 0;
    for (Eigen::Index r = 0; r < values.rows(); ++r)
        for (const std::size_t k : {3u, 4u, 8u}) {
            km::workspace<double, double> ws = lloyd_workspace(values, fisher, r);
            const std::vector<double>& y = ws.shifted;
            const std::size_t m = y.size();
            const sqz::kmeans_options options{.method = sqz::kmeans_method::lloyd, .restarts = 5, .seed = static_cast<std::uint64_t>(r)};
            km::lloyd_partition(ws, m, k, options);

            km::lloyd_scratch scratch;
            km::lloyd_solver lloyd{y.data(), ws.forward.sums(), m, scratch};
            sqz::synthetic::rng random(options.seed);
            double best = std::numeric_limits<double>::infinity();
            std::vector<double> best_centre;
            for (int restart = 0; restart < options.restarts; ++restart) {
                lloyd.seed(random, k, km::lloyd_seed_trials(k));
                bool settled = false;
                const double cost = lloyd.split_and_merge(km::split_merge_rounds(k), km::split_merge_tries(k),
                                                          options.max_iterations, lloyd.iterate(options.max_iterations), settled);
                if (cost < best) {
                    best = cost;
                    best_centre = scratch.centre;
                }
            }
            INFO("row " << r << " k " << k);
            CHECK(ws.best_centre == best_centre);
            // States remembered: one per restart that ran its moves, plus one per settled run.
            skipped += static_cast<std::size_t>(options.restarts) - std::min<std::size_t>(options.restarts, ws.lloyd.seen_centre.size() / k);
        }
    CHECK(skipped > 0);
}

TEST_CASE("lloyd's cache of best 2-splits does not carry over from one row to the next", "[kmeans]") {
    // lloyd_partition twice on the same row with the same workspace, the cache poisoned in between (every
    // entry kept but pointing at another split): the second run must start afresh and equal the first.
    // Then the same through the public entry: the rows of one thread give what a fresh thread gives.
    namespace km = sqz::detail::kmeans;
    const auto values = sqz::synthetic::llm_like_weights(4, 600, 11);
    const auto fisher = sqz::synthetic::fisher_like_sensitivity(4, 600, 12);
    for (const std::size_t k : {4u, 8u, 16u}) {
        km::workspace<double, double> ws = lloyd_workspace(values, fisher, 0);
        const std::size_t m = ws.shifted.size();
        const sqz::kmeans_options options{.method = sqz::kmeans_method::lloyd, .seed = 5};
        km::lloyd_partition(ws, m, k, options);
        const std::vector<double> first = ws.best_centre;
        std::size_t poisoned = 0;
        for (auto& entry : ws.lloyd.split_cache)
            if (entry.generation == ws.lloyd.split_generation && entry.b - entry.a >= 3) {
                entry.at = entry.at == entry.a + 1 ? entry.b - 1 : entry.a + 1;
                ++poisoned;
            }
        INFO("k " << k);
        REQUIRE(poisoned > 0);
        km::lloyd_partition(ws, m, k, options);
        CHECK(ws.best_centre == first);

        std::vector<sqz::kmeans_result<float>> fresh(4);
        for (Eigen::Index r = 0; r < 4; ++r)
            std::thread([&] { fresh[static_cast<std::size_t>(r)] = sqz::weighted_kmeans(values.row(r), fisher.row(r), static_cast<int>(k), options); }).join();
        for (const Eigen::Index r : {0, 1, 2, 3, 0, 2, 1, 3}) {
            INFO("row " << r);
            const auto again = sqz::weighted_kmeans(values.row(r), fisher.row(r), static_cast<int>(k), options);
            CHECK(again.centroids == fresh[static_cast<std::size_t>(r)].centroids);
            CHECK(again.objective == fresh[static_cast<std::size_t>(r)].objective);
        }
    }
}

TEST_CASE("exact k-means stays optimal when the weights span more than double's precision", "[kmeans]") {
    // Weights from 2^-45 to 9e6 in one row: in the prefix sums of the weights a light group that comes
    // after heavy ones adds nothing, so an interval of light groups has weight 0 there (0 / 0 in its cost).
    // That once gave optima 12 times too large and, on other rows, a retry loop that never ended. Every
    // row must now match the slow DP (long double, interval weights of 0 costing 0) to rounding of the
    // total, return finite centroids, and lloyd must return finite ones too.
    sqz::synthetic::rng random(61);
    int light_rows = 0;
    for (int t = 0; t < 300; ++t) {
        const std::size_t n = 2 + random.below(60);
        std::vector<double> x(n), w(n);
        const bool few_values = random.below(3) == 0;
        for (std::size_t i = 0; i < n; ++i) {
            x[i] = few_values ? static_cast<double>(random.below(7))
                              : std::ldexp(static_cast<double>(random.below(2001)) - 1000.0, -static_cast<int>(random.below(20)));
            const auto style = random.below(5);
            w[i] = style == 0 ? 0.0
                 : style == 1 ? std::ldexp(1.0, -static_cast<int>(random.below(46)))
                 : style == 2 ? 1e6 * static_cast<double>(1 + random.below(9))
                              : static_cast<double>(random.below(1000)) / 7.0;
        }
        double total = 0, lightest = std::numeric_limits<double>::infinity();
        for (double v : w)
            if (v > 0) {
                total += v;
                lightest = std::min(lightest, v);
            }
        if (!(total > 0)) continue;
        light_rows += lightest < 0x1p-51 * total;  // guarded (exact_partition guards below 2^-47)
        const int k = 1 + static_cast<int>(random.below(std::min<std::size_t>(n, 20)));
        INFO("row " << t << ", n = " << n << ", k = " << k);
        const auto exact = sqz::weighted_kmeans(x, w, k);
        const double objective = check_result(exact, x, w, k);
        for (double c : exact.centroids) REQUIRE(std::isfinite(c));
        // The one-cluster cost bounds what rounding of the prefix sums can move.
        double mean = 0;
        for (std::size_t i = 0; i < n; ++i) mean += w[i] * x[i];
        mean /= total;
        double spread = 0;
        for (std::size_t i = 0; i < n; ++i) spread += w[i] * (x[i] - mean) * (x[i] - mean);
        const double optimum = slow_dp_optimum(x, w, k);
        CHECK(objective <= optimum * (1 + 1e-9) + 1e-12 * spread);
        const auto lloyd = sqz::weighted_kmeans(x, w, k, {.method = sqz::kmeans_method::lloyd, .seed = 1});
        check_result(lloyd, x, w, k);
        for (double c : lloyd.centroids) REQUIRE(std::isfinite(c));
        CHECK(objective <= lloyd.objective * (1 + 1e-9) + 1e-12 * spread);
    }
    CHECK(light_rows > 50);  // most rows exercise the guarded programme
}

TEST_CASE("group prefix sums: every interval within the rounding the exact method's guard allows for", "[kmeans]") {
    // group_prefix_sums adds four groups at a time. exact_partition relies on every interval sum, a
    // difference of two prefix sums, being off by at most (b - a + 9) 2^-53 of the sum of the terms'
    // magnitudes. Checked against long-double sums (11 more bits) for every interval of short runs and
    // random ones of long runs, with weights spanning 2^-45 to 9e6 and lengths around multiples of 4.
    namespace km = sqz::detail::kmeans;
    sqz::synthetic::rng random(515);
    for (const std::size_t m : {1u, 2u, 3u, 4u, 5u, 7u, 8u, 9u, 31u, 64u, 67u, 1001u, 4099u}) {
        std::vector<double> value(m), weight(m);
        for (std::size_t g = 0; g < m; ++g) {
            value[g] = (g == 0 ? -1.0 : value[g - 1]) + std::ldexp(1.0 + static_cast<double>(random.below(1000)), -12);
            const auto style = random.below(3);
            weight[g] = style == 0 ? std::ldexp(1.0, -static_cast<int>(random.below(46)))
                      : style == 1 ? 1e6 * static_cast<double>(1 + random.below(9))
                                   : static_cast<double>(1 + random.below(1000)) / 7.0;
        }
        const double pivot = 0.25;
        std::vector<double> shifted(m), s0(m + 1), s1(m + 1), s2(m + 1);
        const double lightest = km::group_prefix_sums(value.data(), weight.data(), m, pivot, shifted.data(), s0.data(), s1.data(), s2.data());
        CHECK(lightest == *std::min_element(weight.begin(), weight.end()));
        // Long-double terms (exact products: 53-bit factors need up to 106 bits, so round them the same way
        // the code does, in double) and their prefix sums and magnitudes.
        std::vector<long double> e0(m + 1, 0), e1(m + 1, 0), e2(m + 1, 0);
        long double magnitude[3] = {0, 0, 0};
        for (std::size_t g = 0; g < m; ++g) {
            const double y = value[g] - pivot;
            REQUIRE(shifted[g] == y);
            const double t0 = weight[g], t1 = weight[g] * y, t2 = t1 * y;
            e0[g + 1] = e0[g] + t0;
            e1[g + 1] = e1[g] + t1;
            e2[g + 1] = e2[g] + t2;
            magnitude[0] += std::fabs(t0);
            magnitude[1] += std::fabs(t1);
            magnitude[2] += std::fabs(t2);
        }
        REQUIRE(s0[0] == 0);
        REQUIRE(s1[0] == 0);
        REQUIRE(s2[0] == 0);
        const auto check_interval = [&](std::size_t a, std::size_t b) {
            const long double allowed = static_cast<long double>(b - a + 9) * 0x1p-53L;
            INFO("m = " << m << ", interval [" << a << ", " << b << ")");
            CHECK(std::fabs(static_cast<long double>(s0[b] - s0[a]) - (e0[b] - e0[a])) <= allowed * magnitude[0]);
            CHECK(std::fabs(static_cast<long double>(s1[b] - s1[a]) - (e1[b] - e1[a])) <= allowed * magnitude[1]);
            CHECK(std::fabs(static_cast<long double>(s2[b] - s2[a]) - (e2[b] - e2[a])) <= allowed * magnitude[2]);
        };
        if (m <= 67) {
            for (std::size_t a = 0; a <= m; ++a)
                for (std::size_t b = a; b <= m; ++b) check_interval(a, b);
        } else {
            for (int t = 0; t < 3000; ++t) {
                const std::size_t a = random.below(m + 1), b = random.below(m + 1);
                check_interval(std::min(a, b), std::max(a, b));
            }
        }
    }
}

TEST_CASE("lloyd on float rows at few clusters (value buckets): nearest centroids, exact objective, any storage", "[kmeans]") {
    // Float rows that are not fp16 data run Lloyd on buckets of values at k <= 8: every entry must still
    // take its nearest centroid, the objective must be that of the labels, the result must stay near the
    // optimum (slow DP) and must not depend on how the row is stored. Scales cover LLM-like weights,
    // values past the fp16 range (the buckets scale them), tiny ones, and subnormal floats (the scaling
    // would leave the float range: the sorted path); n = 300 coarsens the buckets further.
    sqz::synthetic::rng random(2024);
    const sqz::kmeans_options lloyd{.method = sqz::kmeans_method::lloyd, .seed = 3};
    for (const double scale : {0.02, 3e4, 1e-30, 1e-41})
        for (const std::size_t n : {std::size_t{300}, std::size_t{1500}})
            for (const int k : {2, 4, 8}) {
                std::vector<float> xf(n), wf(n);
                for (auto& v : xf) v = static_cast<float>(scale * random.student_t(5.0));
                const std::vector<double> w = random_weights(random, n);
                for (std::size_t i = 0; i < n; ++i) wf[i] = static_cast<float>(w[i]);
                const std::vector<double> x(xf.begin(), xf.end()), wd(wf.begin(), wf.end());
                INFO("scale " << scale << " n " << n << " k " << k);
                const auto result = sqz::weighted_kmeans(xf, wf, k, lloyd);
                const double objective = check_result(result, x, wd, k);
                const bool all_zero = std::all_of(wd.begin(), wd.end(), [](double v) { return v == 0; });
                const double optimum = slow_dp_optimum(x, all_zero ? std::vector<double>(n, 1.0) : wd, k);
                CHECK(objective >= optimum * (1 - 1e-9));
                CHECK(objective <= optimum * 1.1 + 1e-300);  // loose: the benchmark measures the real gap
                const Eigen::MatrixXf strided_values = Eigen::Map<const Eigen::VectorXf>(xf.data(), static_cast<Eigen::Index>(n)).transpose().replicate(2, 1);
                const Eigen::MatrixXf strided_weights = Eigen::Map<const Eigen::VectorXf>(wf.data(), static_cast<Eigen::Index>(n)).transpose().replicate(2, 1);
                const auto strided = sqz::weighted_kmeans(strided_values.row(1), strided_weights.row(1), k, lloyd);
                CHECK(strided.centroids == result.centroids);
                CHECK(strided.labels == result.labels);
                CHECK(strided.objective == result.objective);
                const auto double_weights = sqz::weighted_kmeans(xf, wd, k, lloyd);
                CHECK(double_weights.centroids == result.centroids);
                CHECK(double_weights.labels == result.labels);
                CHECK(double_weights.objective == result.objective);
            }
    // At most k distinct values (so at most k buckets): the sorted path gives every value a centroid.
    const std::vector<float> few{0.1f, 0.2f, 0.3f, 0.1f, 0.2f, 0.30000001f};
    const std::vector<float> ones(few.size(), 1.0f);
    const auto small = sqz::weighted_kmeans(few, ones, 4, lloyd);
    CHECK(check_result(small, std::vector<double>(few.begin(), few.end()), std::vector<double>(ones.begin(), ones.end()), 4) == Approx(0).margin(1e-30));
    // fp16 rows take the fp16 grouping however they are stored (so Lloyd sees the same groups).
    const auto values = sqz::synthetic::llm_like_weights(1, 1000, 8);
    const auto fisher = sqz::synthetic::fisher_like_sensitivity(1, 1000, 9);
    const Eigen::MatrixXf column_major_values = values, column_major_fisher = fisher;
    for (const int k : {4, 16}) {
        const auto contiguous = sqz::weighted_kmeans(values.row(0), fisher.row(0), k, lloyd);
        const auto strided = sqz::weighted_kmeans(column_major_values.row(0), column_major_fisher.row(0), k, lloyd);
        CHECK(strided.centroids == contiguous.centroids);
        CHECK(strided.labels == contiguous.labels);
        CHECK(strided.objective == contiguous.objective);
    }
}
