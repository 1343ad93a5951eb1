// sqz/synthetic.hpp - reproducible LLM-like test data for demos, examples, tests and benchmarks.
//
// The generators use their own random number generator and samplers (not <random>'s distributions,
// whose output differs between standard libraries), so a seed gives the same matrix on every platform,
// compiler and thread count.
//
//   llm_like_weights(rows, cols, seed)      Student-t(5) entries, scale 0.02, a few outlier columns,
//                                           rounded to fp16 as real checkpoints are
//   fisher_like_sensitivity(rows, cols, s)  squared heavy-tailed "gradients" with per-row and
//                                           per-column scales, like a Fisher-diagonal estimate
#pragma once

#include <sqz/error.hpp>
#include <sqz/half.hpp>
#include <sqz/types.hpp>

#include <cmath>
#include <cstdint>
#include <numbers>
#include <vector>

namespace sqz::synthetic {

/// xoshiro256** seeded through splitmix64: fast, well distributed and fully specified.
class rng {
public:
    explicit rng(std::uint64_t seed) noexcept {
        for (auto& word : state_) {
            seed += 0x9e3779b97f4a7c15ull;
            std::uint64_t z = seed;
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
            word = z ^ (z >> 31);
        }
    }

    std::uint64_t next() noexcept {
        const std::uint64_t result = rotl(state_[1] * 5, 7) * 9;
        const std::uint64_t t = state_[1] << 17;
        state_[2] ^= state_[0];
        state_[3] ^= state_[1];
        state_[1] ^= state_[2];
        state_[0] ^= state_[3];
        state_[2] ^= t;
        state_[3] = rotl(state_[3], 45);
        return result;
    }

    /// Uniform in [0, 1) with 53 random bits.
    double uniform() noexcept { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

    /// Uniform integer in [0, bound) for 0 < bound <= 2^53.
    std::uint64_t below(std::uint64_t bound) noexcept {
        return static_cast<std::uint64_t>(uniform() * static_cast<double>(bound));
    }

    /// Standard normal by the Box-Muller transform, caching the second value.
    double normal() noexcept {
        if (has_spare_) {
            has_spare_ = false;
            return spare_;
        }
        const double u1 = 1.0 - uniform();  // (0, 1]: log stays finite
        const double u2 = uniform();
        const double radius = std::sqrt(-2.0 * std::log(u1));
        spare_ = radius * std::sin(2.0 * std::numbers::pi * u2);
        has_spare_ = true;
        return radius * std::cos(2.0 * std::numbers::pi * u2);
    }

    /// Gamma(shape, 1) by Marsaglia and Tsang's method (shape > 0).
    double gamma(double shape) noexcept {
        if (shape < 1.0) {  // boost: Gamma(a) = Gamma(a + 1) * U^(1/a)
            const double u = 1.0 - uniform();
            return gamma(shape + 1.0) * std::pow(u, 1.0 / shape);
        }
        const double d = shape - 1.0 / 3.0;
        const double c = 1.0 / std::sqrt(9.0 * d);
        for (;;) {
            double x = 0.0;
            double v = 0.0;
            do {
                x = normal();
                v = 1.0 + c * x;
            } while (v <= 0.0);
            v = v * v * v;
            const double u = 1.0 - uniform();
            if (std::log(u) < 0.5 * x * x + d - d * v + d * std::log(v)) return d * v;
        }
    }

    /// Student-t with `dof` degrees of freedom: Z / sqrt(chi2(dof) / dof).
    double student_t(double dof) noexcept {
        const double chi2 = 2.0 * gamma(0.5 * dof);
        return normal() / std::sqrt(chi2 / dof);
    }

private:
    static std::uint64_t rotl(std::uint64_t x, int k) noexcept { return (x << k) | (x >> (64 - k)); }

    std::uint64_t state_[4]{};
    double spare_ = 0.0;
    bool has_spare_ = false;
};

struct weights_options {
    double scale = 0.02;              ///< scale of the Student-t entries (LLaMA-7B projections: about 0.02)
    double degrees_of_freedom = 5.0;  ///< tail heaviness
    int outlier_columns = 8;          ///< input channels whose weights are `outlier_scale` times larger
    double outlier_scale = 8.0;
    bool round_to_fp16 = true;  ///< real checkpoints are fp16/bf16, so rows have repeated values
};

/// A rows x cols weight matrix drawn like a LLaMA projection: i.i.d. Student-t entries with a few
/// large input columns (the structured outliers that dense-and-sparse decomposition targets).
inline row_matrix<float> llm_like_weights(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed,
                                          const weights_options& options = {}) {
    detail::require(rows >= 0 && cols >= 0, "sqz::synthetic::llm_like_weights: shape ", rows, " x ", cols,
                    " is negative");
    detail::require(options.degrees_of_freedom > 0.0, "sqz::synthetic::llm_like_weights: degrees_of_freedom = ",
                    options.degrees_of_freedom, " must be positive");
    rng random(seed);
    std::vector<double> column_scale(static_cast<std::size_t>(cols), 1.0);
    for (int c = 0; c < options.outlier_columns && cols > 0; ++c)
        column_scale[random.below(static_cast<std::uint64_t>(cols))] = options.outlier_scale;
    row_matrix<float> w(rows, cols);
    for (Eigen::Index i = 0; i < rows; ++i)
        for (Eigen::Index j = 0; j < cols; ++j) {
            const double value =
                options.scale * column_scale[static_cast<std::size_t>(j)] * random.student_t(options.degrees_of_freedom);
            const auto as_float = static_cast<float>(value);
            w(i, j) = options.round_to_fp16 ? round_to_half(as_float) : as_float;
        }
    return w;
}

/// A Fisher-diagonal-like sensitivity: f_ij = (r_i * c_j * g_ij)^2 with heavy-tailed g (Student-t, 3
/// degrees of freedom) and log-normal row and column scales, so a small fraction of entries dominates,
/// as in gradients of real models. All entries are finite and non-negative.
inline row_matrix<float> fisher_like_sensitivity(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed) {
    detail::require(rows >= 0 && cols >= 0, "sqz::synthetic::fisher_like_sensitivity: shape ", rows, " x ", cols,
                    " is negative");
    rng random(seed);
    std::vector<double> row_scale(static_cast<std::size_t>(rows));
    std::vector<double> column_scale(static_cast<std::size_t>(cols));
    for (auto& s : row_scale) s = std::exp(0.5 * random.normal());
    for (auto& s : column_scale) s = std::exp(1.0 * random.normal());
    row_matrix<float> f(rows, cols);
    for (Eigen::Index i = 0; i < rows; ++i)
        for (Eigen::Index j = 0; j < cols; ++j) {
            const double g = 1e-3 * row_scale[static_cast<std::size_t>(i)] * column_scale[static_cast<std::size_t>(j)] *
                             random.student_t(3.0);
            f(i, j) = static_cast<float>(g * g);
        }
    return f;
}

}  // namespace sqz::synthetic
