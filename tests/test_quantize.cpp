#include <sqz/quantize.hpp>
#include <sqz/synthetic.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <vector>

namespace {

using matrix = sqz::row_matrix<float>;

matrix llm_weights(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed) {
    return sqz::synthetic::llm_like_weights(rows, cols, seed);
}
matrix fisher(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed) {
    return sqz::synthetic::fisher_like_sensitivity(rows, cols, seed);
}

// Checks the structural promises of a quantization against W independently of how it was made:
// codes of dense entries are nearest LUT entries, D + S == W exactly at every extracted position, the
// LUT is representable in its format, and dequantize() equals a scalar decode.
template <class T, int Bits>
void check_structure(const sqz::row_matrix<T>& w, const sqz::quantized_matrix<T, Bits>& q) {
    REQUIRE(q.rows() == w.rows());
    REQUIRE(q.cols() == w.cols());
    const auto d = q.dequantize();
    const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> s = q.sparse();
    for (Eigen::Index i = 0; i < w.rows(); ++i) {
        for (Eigen::Index k = 0; k < q.levels(); ++k) {
            const T c = q.lut()(i, k);
            if (q.format() == sqz::lut_format::fp16) REQUIRE(static_cast<T>(sqz::round_to_half(static_cast<float>(c))) == c);
            else REQUIRE(static_cast<T>(static_cast<float>(c)) == c);
            if (k > 0) REQUIRE(q.lut()(i, k - 1) <= c);
        }
        for (Eigen::Index j = 0; j < w.cols(); ++j) {
            const T dense = q.lut()(i, q.code(i, j));
            REQUIRE(d(i, j) == static_cast<T>(dense + s(i, j)));
            if (q.sparse().coeff(i, j) != T(0) || d(i, j) == w(i, j)) continue;
            // A dense entry: its code is a nearest LUT entry.
            const double error = std::abs(static_cast<double>(w(i, j)) - static_cast<double>(dense));
            for (Eigen::Index k = 0; k < q.levels(); ++k)
                REQUIRE(error <= std::abs(static_cast<double>(w(i, j)) - static_cast<double>(q.lut()(i, k))));
        }
    }
}

template <class T, int Bits>
sqz::row_matrix<T> extracted_mask(const sqz::quantized_matrix<T, Bits>& q) {
    sqz::row_matrix<T> mask = sqz::row_matrix<T>::Zero(q.rows(), q.cols());
    for (Eigen::Index i = 0; i < q.rows(); ++i)
        for (typename sqz::csr_matrix<T>::InnerIterator it(q.sparse(), i); it; ++it) mask(i, it.col()) = 1;
    return mask;
}

// Whether c + r == w holds exactly in the reals: Dekker's Fast2Sum (an independent formula from the
// library's TwoSum) gives the rounding error of the float sum.
bool exact_real_sum(float c, float r, float w) {
    float a = c;
    float b = r;
    if (std::abs(a) < std::abs(b)) std::swap(a, b);
    const float sum = a + b;
    const float error = b - (sum - a);
    return sum == w && error == 0.0f;
}

// Brute force: the minimum of sum f (x - c(x))^2 over all ways to split the sorted values into at most k
// contiguous groups (each at its weighted mean), for tiny rows.
double optimal_objective(std::vector<std::pair<double, double>> points, int k) {
    std::sort(points.begin(), points.end());
    const std::size_t n = points.size();
    double best = std::numeric_limits<double>::infinity();
    // Each of the n - 1 gaps is a cut or not; at most k - 1 cuts.
    for (std::uint32_t mask = 0; mask < (1u << (n - 1)); ++mask) {
        if (std::popcount(mask) > k - 1) continue;
        double total = 0.0;
        std::size_t begin = 0;
        for (std::size_t end = 1; end <= n; ++end) {
            if (end < n && !(mask & (1u << (end - 1)))) continue;
            double sw = 0.0, swx = 0.0;
            for (std::size_t t = begin; t < end; ++t) {
                sw += points[t].second;
                swx += points[t].second * points[t].first;
            }
            const double centre = sw > 0 ? swx / sw : points[begin].first;
            for (std::size_t t = begin; t < end; ++t)
                total += points[t].second * (points[t].first - centre) * (points[t].first - centre);
            begin = end;
        }
        best = std::min(best, total);
    }
    return best;
}

}  // namespace

TEST_CASE("D + S reproduces W exactly at every extracted position, codes are nearest", "[quantize]") {
    const matrix w = llm_weights(24, 70, 1);
    const matrix f = fisher(24, 70, 2);
    long real_exact = 0;
    for (int bits : {1, 2, 3, 4, 8})
        for (const auto format : {sqz::lut_format::fp32, sqz::lut_format::fp16})
            for (const auto codebook : {sqz::codebook_method::kmeans, sqz::codebook_method::rtn})
                for (const bool per_row : {false, true}) {
                    INFO("bits " << bits << " fp16 " << (format == sqz::lut_format::fp16) << " rtn "
                                 << (codebook == sqz::codebook_method::rtn) << " per_row " << per_row);
                    sqz::quantize_config config;
                    config.bits = bits;
                    config.codebook = codebook;
                    config.format = format;
                    config.split = {.sensitive_fraction = 0.01, .outlier_fraction = 0.03, .per_row = per_row};
                    const auto result = sqz::quantize_with_report(w, f, config);
                    const auto& q = result.matrix;
                    check_structure(w, q);
                    CHECK(q.bits() == bits);
                    CHECK(q.format() == format);
                    const Eigen::Index expected_nnz = per_row ? 24 * (1 + 3) : 17 + 51;  // ceil(.01*70)=1, ceil(.03*70)=3
                    CHECK(q.sparse_nonzeros() == expected_nnz);
                    CHECK(result.report.inexact_sparse == 0);
                    const matrix mask = extracted_mask(q);
                    const matrix d = q.dequantize();
                    for (Eigen::Index i = 0; i < w.rows(); ++i)
                        for (Eigen::Index j = 0; j < w.cols(); ++j)
                            if (mask(i, j) != 0) {
                                REQUIRE(d(i, j) == w(i, j));
                                // Whenever some LUT entry makes D + S exact as a real sum (so also when added
                                // in double), the chosen one does.
                                bool possible = false;
                                for (Eigen::Index k = 0; k < q.levels(); ++k)
                                    possible = possible || exact_real_sum(q.lut()(i, k), static_cast<float>(w(i, j) - q.lut()(i, k)), w(i, j));
                                if (possible)
                                    REQUIRE(static_cast<double>(q.dense_value(i, j)) + static_cast<double>(q.sparse().coeff(i, j)) ==
                                            static_cast<double>(w(i, j)));
                                real_exact += possible ? 1 : 0;
                            }
                }
    CHECK(real_exact > 2000);  // most of the 40 x 68 extracted entries allow it
}

TEST_CASE("extracted entries choose a centroid that reproduces them, nearest first", "[quantize]") {
    // w = 1 + 2^-23. The nearest centroid 3 + 2^-22 cannot reproduce it: w - c = -(2 + 2^-23) lies between
    // floats spaced 2^-22 apart. The farther -1 - 2^-23 can: w - c = 2 + 2^-22 exactly.
    const float w = 1.0f + 0x1p-23f;
    const float near = 3.0f + 0x1p-22f;
    const float far = -1.0f - 0x1p-23f;
    REQUIRE(static_cast<float>(static_cast<float>(w - near) + near) != w);  // the naive residual fails
    const std::vector<float> lut{far, near};
    const auto chosen = sqz::detail::exact_sparse_code<float>(lut, w);
    CHECK(chosen.exact);
    CHECK(chosen.code == 0);
    CHECK(static_cast<float>(far + chosen.residual) == w);

    // End to end: two dense entries become the two centroids (k-means with k = 2 and RTN at 1 bit), the
    // third entry is extracted as the most sensitive one.
    matrix row(1, 3);
    row << far, w, near;
    matrix f(1, 3);
    f << 1.0f, 100.0f, 1.0f;
    for (const auto codebook : {sqz::codebook_method::kmeans, sqz::codebook_method::rtn}) {
        sqz::quantize_config config{.bits = 1, .codebook = codebook, .split = {.sensitive_fraction = 0.3}};
        const auto result = sqz::quantize_with_report(row, f, config);
        REQUIRE(result.matrix.lut()(0, 0) == far);
        REQUIRE(result.matrix.lut()(0, 1) == near);
        CHECK(result.matrix.sparse_nonzeros() == 1);
        CHECK(result.matrix.code(0, 1) == 0);
        CHECK(result.matrix.dequantize() == row);
        CHECK(result.report.inexact_sparse == 0);
        CHECK(result.report.taylor_objective == 0.0);
    }
}

TEST_CASE("an extracted entry no centroid can reproduce is counted and gets the smallest error", "[quantize]") {
    // 1e-30 next to centroids 0.75 and 1.5: every float near -c is a multiple of 2^-24, so c + r is 0 or at
    // least 2^-24 away from 0; the best reconstruction is 0.
    const float tiny = 1e-30f;
    const std::vector<float> lut{0.75f, 1.5f};
    const auto chosen = sqz::detail::exact_sparse_code<float>(lut, tiny);
    CHECK_FALSE(chosen.exact);
    CHECK(static_cast<float>(lut[chosen.code] + chosen.residual) == 0.0f);
    // No float residual at all reproduces it, for either centroid (search a window around -c).
    for (const float c : lut) {
        float r = std::nextafter(-c, -2.0f);
        for (int step = 0; step < 64; ++step, r = std::nextafter(r, 2.0f)) CHECK(static_cast<float>(c + r) != tiny);
    }
    matrix row(1, 3);
    row << 0.75f, tiny, 1.5f;
    matrix f(1, 3);
    f << 1.0f, 100.0f, 1.0f;
    const auto result = sqz::quantize_with_report(row, f, sqz::quantize_config{.bits = 1, .split = {.sensitive_fraction = 0.3}});
    CHECK(result.report.inexact_sparse == 1);
    CHECK(result.matrix.dequantize()(0, 1) == 0.0f);
}

TEST_CASE("exact residuals on adversarial values against a brute-force search", "[quantize]") {
    // Random magnitudes over 60 decades and random LUTs: when exact_sparse_code reports success the
    // reconstruction is exact; when it reports failure, no float residual near any centroid reproduces w.
    sqz::synthetic::rng random(77);
    int exact = 0;
    int exact_in_reals = 0;
    for (int trial = 0; trial < 3000; ++trial) {
        const auto random_float = [&] {
            const double magnitude = std::pow(10.0, -30.0 + 33.0 * random.uniform());
            return static_cast<float>((random.uniform() < 0.5 ? -1.0 : 1.0) * magnitude * (1.0 + random.uniform()));
        };
        std::vector<float> lut(1u << (1 + trial % 3));
        for (auto& c : lut) c = random_float();
        std::sort(lut.begin(), lut.end());
        const float w = random_float();
        const auto chosen = sqz::detail::exact_sparse_code<float>(lut, w);
        const double d = std::abs(static_cast<double>(w) - lut[chosen.code]);
        if (chosen.exact) {
            ++exact;
            REQUIRE(static_cast<float>(lut[chosen.code] + chosen.residual) == w);
            if (exact_real_sum(lut[chosen.code], chosen.residual, w)) {
                ++exact_in_reals;
                // Nearest first among the real-exact ones.
                for (const float c : lut)
                    if (std::abs(static_cast<double>(w) - c) < d) REQUIRE_FALSE(exact_real_sum(c, static_cast<float>(w - c), w));
            } else {
                // No entry at all allows a real-exact sum, and no nearer entry reproduces w in float.
                for (const float c : lut) REQUIRE_FALSE(exact_real_sum(c, static_cast<float>(w - c), w));
                for (const float c : lut)
                    if (std::abs(static_cast<double>(w) - c) < d) {
                        float r = std::nextafter(static_cast<float>(w - c), -std::numeric_limits<float>::infinity());
                        for (int step = 0; step < 3; ++step, r = std::nextafter(r, std::numeric_limits<float>::infinity()))
                            REQUIRE(static_cast<float>(c + r) != w);
                    }
            }
        } else {
            for (const float c : lut) {
                float r = static_cast<float>(w - c);
                for (int step = 0; step < 8; ++step) r = std::nextafter(r, -std::numeric_limits<float>::infinity());
                for (int step = 0; step < 17; ++step, r = std::nextafter(r, std::numeric_limits<float>::infinity()))
                    REQUIRE(static_cast<float>(c + r) != w);
            }
        }
    }
    CHECK(exact > 1000);  // the search succeeds for most of them
    CHECK(exact_in_reals > 200);
    CHECK(exact_in_reals < exact);  // and some need the float-rounding tier
}

TEST_CASE("the report equals independent computations from the public API", "[quantize]") {
    const matrix w = llm_weights(16, 64, 5);
    const matrix f = fisher(16, 64, 6);
    sqz::quantize_config config;
    config.bits = 3;
    config.split = {.sensitive_fraction = 0.005, .outlier_fraction = 0.02};
    const auto [q, report] = sqz::quantize_with_report(w, f, config);
    const matrix d = q.dequantize();
    double weighted = 0.0, squared = 0.0, reference = 0.0;
    for (Eigen::Index i = 0; i < w.rows(); ++i)
        for (Eigen::Index j = 0; j < w.cols(); ++j) {
            const double e = static_cast<double>(w(i, j)) - static_cast<double>(d(i, j));
            weighted += static_cast<double>(f(i, j)) * e * e;
            squared += e * e;
            reference += static_cast<double>(w(i, j)) * static_cast<double>(w(i, j));
        }
    CHECK(report.taylor_objective == Approx(0.5 * weighted).epsilon(1e-12));
    CHECK(report.frobenius_error == Approx(std::sqrt(squared)).epsilon(1e-12));
    CHECK(report.relative_error == Approx(std::sqrt(squared / reference)).epsilon(1e-12));
    CHECK(report.taylor_objective == Approx(sqz::taylor_objective(w, f, q)).epsilon(1e-12));
    CHECK(report.sparse_nonzeros == q.sparse_nonzeros());
    CHECK(report.sparse_nonzeros == 6 + 21);  // ceil(0.005 * 1024), ceil(0.02 * 1024)
    CHECK(report.sensitive_count == 6);
    CHECK(report.outlier_count == 21);
    CHECK(report.sparse_fraction == Approx(27.0 / 1024.0));
    CHECK(report.bits_per_weight == q.bits_per_weight());
    CHECK(report.storage.total() == q.storage_bytes().total());
    CHECK(report.rows == 16);
    CHECK(report.bits == 3);
    CHECK(report.seconds >= report.split_seconds + report.codebook_seconds);
    const auto evaluated = sqz::evaluate(w, f, q);
    CHECK(evaluated.taylor_objective == Approx(report.taylor_objective).epsilon(1e-12));
    CHECK(evaluated.relative_error == Approx(report.relative_error).epsilon(1e-12));
    CHECK(evaluated.bits_per_weight == report.bits_per_weight);
}

TEST_CASE("each row's codebook is the optimal weighted clustering of its dense entries", "[quantize]") {
    // Tiny rows, so that every contiguous partition can be tried; the extracted entries must not count.
    sqz::synthetic::rng random(9);
    for (int trial = 0; trial < 30; ++trial) {
        const Eigen::Index cols = 6 + trial % 5;
        matrix w(2, cols);
        matrix f(2, cols);
        for (Eigen::Index k = 0; k < w.size(); ++k) {
            w.data()[k] = static_cast<float>(random.normal());
            f.data()[k] = static_cast<float>(random.uniform() * random.uniform());
        }
        const int bits = 1 + trial % 2;
        sqz::quantize_config config{.bits = bits, .split = {.outlier_fraction = trial % 3 == 0 ? 0.0 : 0.2, .per_row = true}};
        const auto q = sqz::quantize(w, f, config);
        const matrix mask = extracted_mask(q);
        for (Eigen::Index i = 0; i < 2; ++i) {
            std::vector<std::pair<double, double>> points;
            double achieved = 0.0;
            for (Eigen::Index j = 0; j < cols; ++j) {
                if (mask(i, j) != 0) continue;
                points.push_back({w(i, j), f(i, j)});
                const double e = static_cast<double>(w(i, j)) - static_cast<double>(q.dense_value(i, j));
                achieved += static_cast<double>(f(i, j)) * e * e;
            }
            const double optimum = optimal_objective(points, 1 << bits);
            INFO("trial " << trial << " row " << i);
            CHECK(achieved <= optimum * (1 + 1e-5) + 1e-12);
        }
    }
}

TEST_CASE("Fisher weighting lowers the weighted error against unweighted k-means", "[quantize]") {
    // Row: a cluster near 0 and a spread of values near 1; the two values at 0.9 and 1.1 carry nearly all
    // the sensitivity. Two centroids: plain k-means puts one at the spread's mean, so both sensitive values
    // pay; the weighted codebook serves them well and lets the insensitive ones pay instead.
    matrix w(1, 8);
    w << 0.0f, 0.05f, -0.05f, 0.9f, 1.1f, 2.0f, 2.2f, 2.4f;
    matrix f(1, 8);
    f << 1.0f, 1.0f, 1.0f, 1000.0f, 1000.0f, 1.0f, 1.0f, 1.0f;
    const auto weighted = sqz::quantize(w, f, sqz::quantize_config{.bits = 1});
    const auto plain = sqz::quantize(w, sqz::uniform_sensitivity(1, 8), sqz::quantize_config{.bits = 1});
    const double weighted_objective = sqz::taylor_objective(w, f, weighted);
    const double plain_objective = sqz::taylor_objective(w, f, plain);
    CHECK(weighted_objective < 0.5 * plain_objective);
    CHECK(sqz::frobenius_error(w, weighted) > sqz::frobenius_error(w, plain));  // and pays in unweighted error
    // On LLM-like data at 3 bits the same holds by a wide margin.
    const matrix big_w = llm_weights(32, 256, 11);
    const matrix big_f = fisher(32, 256, 12);
    const auto q_weighted = sqz::quantize(big_w, big_f, sqz::quantize_config{.bits = 3});
    const auto q_plain = sqz::quantize(big_w, sqz::uniform_sensitivity(32, 256), sqz::quantize_config{.bits = 3});
    CHECK(sqz::taylor_objective(big_w, big_f, q_weighted) < sqz::taylor_objective(big_w, big_f, q_plain));
}

TEST_CASE("RTN: the LUT is the uniform grid and the error has the closed form", "[quantize]") {
    // Row 0 spans [0, 7]: at 3 bits the grid is the integers, and each value's error is its distance to the
    // nearest integer. Row 1 spans [-1, 2]: at 3 bits the step is 3/7.
    matrix w(2, 6);
    w << 0.0f, 7.0f, 2.25f, 3.5f, 4.875f, 6.1f,  //
        -1.0f, 2.0f, 0.0f, 0.6f, 1.0f, -0.25f;
    const auto q = sqz::quantize_rtn(w, sqz::quantize_config{.bits = 3});
    for (int k = 0; k < 8; ++k) {
        CHECK(q.lut()(0, k) == static_cast<float>(k));
        CHECK(q.lut()(1, k) == static_cast<float>(-1.0 + k * (3.0 / 7.0)));
    }
    double expected = 0.0;
    for (Eigen::Index i = 0; i < 2; ++i)
        for (Eigen::Index j = 0; j < 6; ++j) {
            const double lo = i == 0 ? 0.0 : -1.0;
            const double step = i == 0 ? 1.0 : 3.0 / 7.0;
            const double t = (static_cast<double>(w(i, j)) - lo) / step;
            const double nearest = static_cast<double>(static_cast<float>(lo + std::round(t) * step));
            expected += (w(i, j) - nearest) * (w(i, j) - nearest);
        }
    // 3.5 sits exactly between 3 and 4: the lower code wins the tie.
    CHECK(q.code(0, 3) == 3);
    CHECK(sqz::frobenius_error(w, q) == Approx(std::sqrt(expected)).epsilon(1e-6));
    CHECK(std::abs(sqz::frobenius_error(w, q) - std::sqrt(0.25 * 0.25 + 0.5 * 0.5 + 0.125 * 0.125 + 0.1 * 0.1 +
                                                         std::pow(0.0 - (-1.0 + 3.0 * 2 / 7.0), 2) +
                                                         std::pow(0.6 - (-1.0 + 3.0 * 4 / 7.0), 2) +
                                                         std::pow(1.0 - (-1.0 + 3.0 * 5 / 7.0), 2) +
                                                         std::pow(-0.25 - (-1.0 + 3.0 * 2 / 7.0), 2))) < 1e-6);
    // A constant row: every grid value equals it, error 0.
    const matrix constant = matrix::Constant(1, 5, 0.5f);
    CHECK(sqz::quantize_rtn(constant, sqz::quantize_config{.bits = 2}).dequantize() == constant);
    CHECK_THROWS_WITH(sqz::quantize_rtn(w, sqz::quantize_config{.split = {.sensitive_fraction = 0.1}}),
                      Catch::Contains("needs a sensitivity"));
}

TEST_CASE("results are identical for 1 and 2 threads", "[quantize]") {
    const matrix w = llm_weights(40, 96, 21);
    const matrix f = fisher(40, 96, 22);
    for (const auto method : {sqz::kmeans_method::exact, sqz::kmeans_method::lloyd})
        for (const bool per_row : {false, true}) {
            sqz::quantize_config config{.bits = 4, .kmeans = {.method = method, .seed = 5},
                                        .split = {.sensitive_fraction = 0.01, .outlier_fraction = 0.02, .per_row = per_row},
                                        .format = sqz::lut_format::fp16};
            config.threads = 1;
            const auto one = sqz::quantize_with_report(w, f, config);
            config.threads = 2;
            const auto two = sqz::quantize_with_report(w, f, config);
            CHECK(one.matrix == two.matrix);
            CHECK(one.report.taylor_objective == two.report.taylor_objective);
            CHECK(one.report.frobenius_error == two.report.frobenius_error);
        }
    sqz::quantize_config iqr{.bits = 2, .split = {.iqr_range = 1.5}};
    iqr.threads = 1;
    const auto a = sqz::quantize(w, f, iqr);
    iqr.threads = 2;
    CHECK(a == sqz::quantize(w, f, iqr));
    CHECK(a.sparse_nonzeros() > 0);
}

TEST_CASE("compile-time widths, double matrices and other sensitivity providers", "[quantize]") {
    const matrix w = llm_weights(8, 40, 31);
    const matrix f = fisher(8, 40, 32);
    const sqz::quantize_config config{.bits = 3, .split = {.outlier_fraction = 0.05}};
    const sqz::quantized_matrix<float, 4> fixed = sqz::quantize<4>(w, f, config);  // Bits wins over config.bits
    CHECK(fixed.bits() == 4);
    sqz::quantize_config four = config;
    four.bits = 4;
    CHECK(sqz::quantized_matrix<float>(fixed) == sqz::quantize(w, f, four));

    // Double: LUT entries are float values (fp32 storage), D + S exact at the extracted positions.
    const sqz::row_matrix<double> wd = w.cast<double>() + sqz::row_matrix<double>::Constant(8, 40, 1e-12);
    const auto qd = sqz::quantize(wd, f.cast<double>().eval(), config);
    check_structure(wd, qd);
    const auto qd16 = sqz::quantize(wd, f, sqz::quantize_config{.bits = 3, .split = {.outlier_fraction = 0.05},
                                                                 .format = sqz::lut_format::fp16});
    check_structure(wd, qd16);

    // Providers: a Fisher accumulator equals the matrix of its mean squared gradient; an activation
    // accumulator.
    sqz::fisher_accumulator<double> acc(8, 40);
    const matrix g1 = llm_weights(8, 40, 34);
    const matrix g2 = llm_weights(8, 40, 35);
    acc.add(g1);
    acc.add(g2);
    const Eigen::MatrixXd mean_square =
        (g1.cast<double>().array().square() + g2.cast<double>().array().square()).matrix() * 0.5;
    CHECK(sqz::quantize(w, acc, config) == sqz::quantize(w, mean_square, config));
    sqz::fisher_accumulator<double> precomputed(8, 40);
    precomputed.add_sum_of_squares(f, 1);
    CHECK(sqz::quantize(w, precomputed, config) == sqz::quantize(w, f, config));
    sqz::activation_accumulator<double> acts(8, 40);
    acts.add(llm_weights(5, 40, 33));
    const auto qa = sqz::quantize(w, acts, config);
    check_structure(w, qa);
    // Column-major input gives the same result as row-major.
    CHECK(sqz::quantize(Eigen::MatrixXf(w), Eigen::MatrixXf(f), config) == sqz::quantize(w, f, config));
}

TEST_CASE("fp16 rounding of doubles is correctly rounded", "[quantize]") {
    std::vector<double> halves;
    for (std::uint32_t bits = 0; bits < 0x7c00u; ++bits) halves.push_back(sqz::half_bits_to_float(static_cast<std::uint16_t>(bits)));
    const auto nearest_half = [&](double v) {  // brute force: nearest magnitude, ties to the even pattern
        const double m = std::abs(v);
        const auto it = std::lower_bound(halves.begin(), halves.end(), m);
        double best = it == halves.end() ? halves.back() : *it;
        if (it != halves.begin()) {
            const double lower = *(it - 1);
            if (it == halves.end() || m - lower < best - m) best = lower;
            else if (m - lower == best - m && ((it - halves.begin() - 1) % 2 == 0)) best = lower;
        }
        return v < 0 ? -best : best;
    };
    sqz::synthetic::rng random(3);
    for (int t = 0; t < 20000; ++t) {
        const auto index = static_cast<std::size_t>(random.below(halves.size() - 1));
        const double a = halves[index];
        const double b = halves[index + 1];
        // Near the midpoint of two neighbours (where double -> float -> half goes wrong) and at random.
        const double mid = 0.5 * (a + b);
        const double offset = (random.uniform() - 0.5) * std::ldexp(b - a, -static_cast<int>(random.below(40)));
        const double v = (t % 2 == 0 ? mid + offset : a + random.uniform() * (b - a)) * (t % 3 == 0 ? -1.0 : 1.0);
        REQUIRE(sqz::detail::round_double_to_half(v) == nearest_half(v));
    }
    CHECK(sqz::detail::round_double_to_half(1.0 + 0x1p-11 + 0x1p-40) == 1.0 + 0x1p-10);  // just above a midpoint
    CHECK(sqz::detail::round_double_to_half(1.0 + 0x1p-11 - 0x1p-40) == 1.0);             // just below
}

TEST_CASE("rows that are entirely sparse, empty matrices", "[quantize]") {
    // Row 2 is far larger than the rest: the IQR fence extracts all of it; its LUT is zero and S holds W.
    matrix w = llm_weights(4, 16, 41);
    w.row(2).setConstant(50.0f);
    w(2, 5) = -60.0f;
    const matrix f = fisher(4, 16, 42);
    const auto [q, report] = sqz::quantize_with_report(w, f, sqz::quantize_config{.bits = 2, .split = {.iqr_range = 3.0}});
    for (Eigen::Index j = 0; j < 16; ++j) CHECK(q.sparse().coeff(2, j) == w(2, j));
    CHECK(q.lut().row(2).isZero());
    CHECK(q.dequantize().row(2) == w.row(2));
    check_structure(w, q);
    CHECK(report.outlier_count >= 16);

    const auto empty = sqz::quantize(matrix(0, 7), matrix(0, 7));
    CHECK(empty.rows() == 0);
    CHECK(empty.cols() == 7);
    const auto no_cols = sqz::quantize_with_report(matrix(3, 0), matrix(3, 0));
    CHECK(no_cols.matrix.rows() == 3);
    CHECK(no_cols.report.taylor_objective == 0.0);
}

TEST_CASE("bad input to quantize is rejected with a message naming the problem", "[quantize]") {
    const matrix w = llm_weights(3, 8, 1);
    const matrix f = fisher(3, 8, 2);
    using cfg = sqz::quantize_config;
    CHECK_THROWS_WITH(sqz::quantize(w, f, cfg{.bits = 0}), Catch::Contains("bits = 0 is outside 1..8"));
    CHECK_THROWS_WITH(sqz::quantize(w, f, cfg{.bits = 9}), Catch::Contains("bits = 9"));
    CHECK_THROWS_WITH(sqz::quantize(w, matrix(matrix::Ones(3, 9)), cfg{}), Catch::Contains("sensitivity is 3 x 9, weights are 3 x 8"));
    CHECK_THROWS_WITH(sqz::quantize(w, f, cfg{.split = {.sensitive_fraction = 1.0}}), Catch::Contains("sensitive_fraction = 1 is outside [0, 1)"));
    CHECK_THROWS_WITH(sqz::quantize(w, f, cfg{.split = {.outlier_fraction = -0.01}}), Catch::Contains("outlier_fraction = -0.01"));
    CHECK_THROWS_WITH(sqz::quantize(w, f, cfg{.split = {.iqr_range = -2.0}}), Catch::Contains("iqr_range = -2"));
    CHECK_THROWS_WITH(sqz::quantize(w, f, cfg{.kmeans = {.restarts = 0}}), Catch::Contains("kmeans.restarts = 0"));
    CHECK_THROWS_WITH(sqz::quantize(w, f, cfg{.kmeans = {.max_iterations = -1}}), Catch::Contains("max_iterations = -1"));
    matrix bad_w = w;
    bad_w(1, 6) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(sqz::quantize(bad_w, f), Catch::Contains("sqz::quantize: W(1, 6) = nan is not finite"));
    bad_w(1, 6) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH(sqz::quantize_rtn(bad_w), Catch::Contains("W(1, 6) = inf"));
    matrix bad_f = f;
    bad_f(2, 0) = -1e-9f;
    CHECK_THROWS_WITH(sqz::quantize(w, bad_f), Catch::Contains("sensitivity(2, 0) = -1e-09 is negative"));
    bad_f(2, 0) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(sqz::quantize(w, bad_f, cfg{.threads = 2}), Catch::Contains("sensitivity(2, 0) = nan is not finite"));
    // Errors in several rows: the lowest row is reported, for any thread count, with or without a split.
    bad_w = w;
    bad_w(2, 1) = std::numeric_limits<float>::quiet_NaN();
    bad_f = f;
    bad_f(1, 7) = -2.0f;
    for (const int threads : {1, 2}) {
        CHECK_THROWS_WITH(sqz::quantize(bad_w, bad_f, cfg{.threads = threads}), Catch::Contains("sensitivity(1, 7) = -2"));
        CHECK_THROWS_WITH(sqz::quantize(bad_w, f, cfg{.threads = threads}), Catch::Contains("W(2, 1) = nan"));
        CHECK_THROWS_WITH(sqz::quantize(bad_w, f, cfg{.split = {.outlier_fraction = 0.1}, .threads = threads}),
                          Catch::Contains("W(2, 1) = nan"));
    }
    // Values beyond fp16's range cannot have an fp16 codebook.
    const matrix huge = matrix::Constant(2, 4, 1e6f);
    CHECK_THROWS_WITH(sqz::quantize(huge, matrix(matrix::Ones(2, 4)), cfg{.format = sqz::lut_format::fp16}),
                      Catch::Contains("overflows the fp16 LUT format"));
    CHECK_NOTHROW(sqz::quantize(huge, matrix(matrix::Ones(2, 4))));
}
