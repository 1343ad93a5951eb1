#include <sqz/half.hpp>
#include <sqz/synthetic.hpp>

#include <catch2/catch.hpp>

#include <cmath>

TEST_CASE("the generator is reproducible and seed-dependent", "[synthetic]") {
    sqz::synthetic::rng a(42), b(42), c(43);
    for (int i = 0; i < 100; ++i) {
        const auto x = a.next();
        CHECK(x == b.next());
        CHECK(x != c.next());
    }
    CHECK(sqz::synthetic::llm_like_weights(8, 16, 7) == sqz::synthetic::llm_like_weights(8, 16, 7));
    CHECK(sqz::synthetic::llm_like_weights(8, 16, 7) != sqz::synthetic::llm_like_weights(8, 16, 8));
}

TEST_CASE("samplers have the textbook moments", "[synthetic]") {
    sqz::synthetic::rng random(1);
    const int n = 200000;
    double normal_sum = 0, normal_sq = 0, gamma_sum = 0, uniform_sum = 0, t_sq = 0;
    for (int i = 0; i < n; ++i) {
        const double z = random.normal();
        normal_sum += z;
        normal_sq += z * z;
        gamma_sum += random.gamma(2.5);
        uniform_sum += random.uniform();
        const double t = random.student_t(5.0);
        t_sq += t * t;
    }
    CHECK(normal_sum / n == Approx(0.0).margin(0.01));
    CHECK(normal_sq / n == Approx(1.0).epsilon(0.02));
    CHECK(gamma_sum / n == Approx(2.5).epsilon(0.02));  // E[Gamma(a, 1)] = a
    CHECK(uniform_sum / n == Approx(0.5).epsilon(0.01));
    CHECK(t_sq / n == Approx(5.0 / 3.0).epsilon(0.05));  // Var[t_5] = 5 / 3
}

TEST_CASE("LLM-like weights are fp16 values with the requested scale and outlier columns", "[synthetic]") {
    sqz::synthetic::weights_options options;
    options.outlier_columns = 2;
    const auto w = sqz::synthetic::llm_like_weights(64, 512, 3, options);
    Eigen::VectorXd column_rms = w.cast<double>().colwise().norm().transpose() / std::sqrt(64.0);
    std::vector<double> sorted(column_rms.data(), column_rms.data() + column_rms.size());
    std::sort(sorted.begin(), sorted.end());
    const double median = sorted[sorted.size() / 2];
    CHECK(median == Approx(0.02 * std::sqrt(5.0 / 3.0)).epsilon(0.15));
    CHECK(sorted.back() > 4 * median);  // an outlier column
    for (Eigen::Index i = 0; i < w.size(); ++i) REQUIRE(sqz::round_to_half(w.data()[i]) == w.data()[i]);
    const auto f = sqz::synthetic::fisher_like_sensitivity(64, 512, 3);
    CHECK((f.array() >= 0).all());
    CHECK(f.allFinite());
    CHECK(f.maxCoeff() > 100 * f.mean());  // a few entries dominate
}
