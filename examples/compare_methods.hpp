// examples/compare_methods.hpp - the comparison demo as a reusable function.
//
// Quantizes one LLaMA-7B-like weight matrix (sqz/synthetic.hpp: Student-t(5) entries, scale 0.02, a few
// outlier columns, fp16-rounded) with a Fisher-like sensitivity, both from a fixed seed, by five methods
// at each bit width and prints one table per width:
//   RTN                       per-row round-to-nearest on the uniform min-max grid
//   k-means (unweighted)      per-row k-means, every entry weighted 1
//   SqueezeLLM (Fisher)       per-row Fisher-weighted k-means, dense only
//   + 0.05% sensitive         the top 0.05% entries by sensitivity kept exact in the sparse part
//   + 0.45% dense-and-sparse  0.05% sensitive + 0.40% percentile outliers (0.20% per tail)
// with bits per weight, sparse fraction, the Fisher-weighted Taylor objective 0.5 * sum f (W - Q)^2, its
// ratio to RTN's, the relative Frobenius error and the quantization time. It then times 4-bit exact
// k-means quantization of the same matrix and of a rows x wide_cols one (LLaMA-7B's MLP shape).
//
// examples/compare_methods.cpp wraps it in a command line; the `sqz demo` tool runs the same function.
#pragma once

#include <sqz/quantize.hpp>
#include <sqz/synthetic.hpp>

#include <chrono>
#include <cstdint>
#include <iomanip>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

namespace sqz::examples {

struct compare_options {
    Eigen::Index rows = 4096;          ///< output rows of the demo matrix (LLaMA-7B attention: 4096 x 4096)
    Eigen::Index cols = 4096;          ///< inputs
    std::vector<int> bits{3, 4};       ///< one table per width
    std::uint64_t seed = 7;            ///< weights use seed, the sensitivity seed + 1
    int threads = 0;                   ///< <= 0: OpenMP's default
    lut_format format = lut_format::fp16;
    kmeans_method method = kmeans_method::exact;
    Eigen::Index wide_cols = 14336;    ///< the extra timing shape rows x wide_cols; 0 skips it
};

/// One row of the table.
struct method_result {
    std::string name;
    quantization_report report;
};

namespace detail {

inline std::string percent(double fraction) {
    std::ostringstream s;
    s << std::fixed << std::setprecision(2) << 100.0 * fraction << "%";
    return s.str();
}

inline double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace detail

/// The five methods at one width on W with sensitivity F.
inline std::vector<method_result> compare_at(const row_matrix<float>& w, const row_matrix<float>& f, int bits,
                                             const compare_options& options) {
    quantize_config base;
    base.bits = bits;
    base.format = options.format;
    base.threads = options.threads;
    base.kmeans.method = options.method;
    std::vector<method_result> out;

    quantize_config rtn = base;
    rtn.codebook = codebook_method::rtn;
    out.push_back({"RTN (uniform grid)", quantize_with_report(w, f, rtn).report});
    // Unweighted k-means: the codebooks ignore F, the objective is still measured with F.
    auto plain = quantize_with_report(w, uniform_sensitivity(w.rows(), w.cols()), base);
    plain.report.taylor_objective = taylor_objective(w, f, plain.matrix, options.threads);
    out.push_back({"k-means (unweighted)", plain.report});
    out.push_back({"SqueezeLLM (Fisher k-means)", quantize_with_report(w, f, base).report});
    quantize_config sensitive = base;
    sensitive.split.sensitive_fraction = 0.0005;
    out.push_back({"  + 0.05% sensitive", quantize_with_report(w, f, sensitive).report});
    quantize_config both = sensitive;
    both.split.outlier_fraction = 0.004;
    out.push_back({"  + 0.45% dense-and-sparse", quantize_with_report(w, f, both).report});
    return out;
}

/// Prints one table.
inline void print_table(std::ostream& out, int bits, const std::vector<method_result>& results) {
    const double rtn = results.front().report.taylor_objective;
    out << bits << " bits\n";
    out << std::left << std::setw(30) << "method" << std::right << std::setw(12) << "bits/weight" << std::setw(9)
        << "sparse" << std::setw(14) << "Taylor obj." << std::setw(11) << "RTN/this" << std::setw(11) << "rel. err"
        << std::setw(10) << "seconds" << "\n";
    for (const auto& r : results) {
        const auto& q = r.report;
        std::ostringstream ratio;
        ratio << std::fixed << std::setprecision(1) << rtn / q.taylor_objective << "x";
        out << std::left << std::setw(30) << r.name << std::right << std::fixed << std::setprecision(3) << std::setw(12)
            << q.bits_per_weight << std::setw(9) << detail::percent(q.sparse_fraction) << std::scientific
            << std::setprecision(3) << std::setw(14) << q.taylor_objective << std::setw(11) << ratio.str() << std::fixed
            << std::setprecision(4) << std::setw(11) << q.relative_error << std::setprecision(2) << std::setw(10)
            << q.seconds << "\n";
    }
    out << "\n";
}

/// Runs the whole demo, printing to `out`. Returns 0 (bad options throw sqz::error).
inline int run_compare_methods(const compare_options& options, std::ostream& out) {
    sqz::detail::require(options.rows > 0 && options.cols > 0, "sqz::examples::run_compare_methods: shape ",
                         options.rows, " x ", options.cols, " must be positive");
    sqz::detail::require(!options.bits.empty(), "sqz::examples::run_compare_methods: no bit widths given");
    for (const int b : options.bits) sqz::detail::check_bits(b, "sqz::examples::run_compare_methods");
    sqz::detail::require(options.wide_cols >= 0, "sqz::examples::run_compare_methods: wide_cols = ",
                         options.wide_cols, " is negative");
    const int threads = sqz::detail::resolve_threads(options.threads);
    out << "sqz compare_methods: " << options.rows << " x " << options.cols
        << " LLaMA-7B-like weights (Student-t(5), scale 0.02, 8 outlier columns x8, fp16-rounded)\n"
        << "with a Fisher-like sensitivity, seed " << options.seed << "; " << threads << " thread"
        << (threads == 1 ? "" : "s") << ", " << to_string(options.format) << " LUT, "
        << (options.method == kmeans_method::exact ? "exact" : "Lloyd") << " k-means.\n"
        << "Taylor obj. = 0.5 * sum F (W - Q)^2 (lower is better); RTN/this = how many times lower than RTN's.\n\n";
    auto start = std::chrono::steady_clock::now();
    const row_matrix<float> w = synthetic::llm_like_weights(options.rows, options.cols, options.seed);
    const row_matrix<float> f = synthetic::fisher_like_sensitivity(options.rows, options.cols, options.seed + 1);
    out << "generated the matrix and its sensitivity in " << std::fixed << std::setprecision(2)
        << detail::seconds_since(start) << " s\n\n";
    out.flush();
    double four_bit_seconds = -1.0;
    for (const int bits : options.bits) {
        const auto results = compare_at(w, f, bits, options);
        print_table(out, bits, results);
        out.flush();
        if (bits == 4 && options.method == kmeans_method::exact) four_bit_seconds = results[2].report.seconds;
    }
    quantize_config timing;
    timing.bits = 4;
    timing.format = options.format;
    timing.threads = options.threads;
    out << "Timing, 4-bit exact k-means (SqueezeLLM dense-only), " << threads << " thread" << (threads == 1 ? "" : "s")
        << ":\n";
    if (four_bit_seconds < 0) four_bit_seconds = quantize_with_report(w, f, timing).report.seconds;
    out << "  " << options.rows << " x " << options.cols << ": " << std::fixed << std::setprecision(2)
        << four_bit_seconds << " s\n";
    out.flush();
    if (options.wide_cols > 0) {
        start = std::chrono::steady_clock::now();
        const row_matrix<float> wide_w = synthetic::llm_like_weights(options.rows, options.wide_cols, options.seed + 2);
        const row_matrix<float> wide_f =
            synthetic::fisher_like_sensitivity(options.rows, options.wide_cols, options.seed + 3);
        const double generated = detail::seconds_since(start);
        const auto report = quantize_with_report(wide_w, wide_f, timing).report;
        out << "  " << options.rows << " x " << options.wide_cols << ": " << std::fixed << std::setprecision(2)
            << report.seconds << " s (matrix generated in " << generated << " s)\n";
    }
    return 0;
}

}  // namespace sqz::examples
