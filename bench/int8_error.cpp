// The error of the int8 modes against exact mode, on even activations and on activations with
// outlier channels (as LLM activations have): the numbers behind docs/design.md ("Int8 mode").
//
//   sqz-bench-int8-error [--rows N] [--cols N] [--json]
//
// Per width (2, 3, 4 bits) bench_common.hpp's random matrix without a sparse part (sorted N(0, 0.02)
// codebooks, uniform codes); per activation kind and mode, the largest and the mean over rows of
// |y_mode - y_exact| / sum_j |w_ij x_j| (bench_common.hpp's row_magnitudes and relative_errors),
// y_exact from the reference back end. Not a timing: the cpu back end computes y_mode.
#include <sqz/sqz.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_common.hpp"

namespace {

struct activation_kind {
    const char* name;
    long every;    ///< every `every`-th channel is an outlier (0: none)
    float factor;  ///< its magnitude factor
};

}  // namespace

int main(int argc, char** argv) {
    long rows = 1024;
    long cols = 14336;
    bool json = false;
    const int status = sqz_bench::parse_arguments(
        argc, argv, "sqz-bench-int8-error", "sqz-bench-int8-error [--rows N] [--cols N] [--json]", [&](const std::string& arg, auto& next) {
            if (arg == "--rows") rows = sqz_bench::parse_number<long>(next(), "--rows", 1, 1L << 20);
            else if (arg == "--cols") cols = sqz_bench::parse_number<long>(next(), "--cols", 1, 1L << 24);
            else if (arg == "--json") json = true;
            else return false;
            return true;
        });
    if (status >= 0) return status;
    const activation_kind kinds[] = {{"normal", 0, 1.0f}, {"every_997th_x50", 997, 50.0f}, {"every_101st_x20", 101, 20.0f}};
    for (const int bits : {2, 3, 4}) {
        const auto q = sqz_bench::random_matrix({rows, cols}, bits, 0.0, 7 + static_cast<std::uint64_t>(bits));
        const auto prepared = sqz::prepare<sqz::backend::cpu>(q);
        sqz::synthetic::rng random(17 + static_cast<std::uint64_t>(bits));
        for (const activation_kind& kind : kinds) {
            std::vector<float> x(static_cast<std::size_t>(cols));
            for (long j = 0; j < cols; ++j) {
                x[static_cast<std::size_t>(j)] = static_cast<float>(random.normal());
                if (kind.every > 0 && j % kind.every == 0) x[static_cast<std::size_t>(j)] *= kind.factor;
            }
            std::vector<float> exact(static_cast<std::size_t>(rows)), y(exact.size());
            sqz::matvec<sqz::backend::reference>(q, x, exact);
            const std::vector<double> magnitudes = sqz_bench::row_magnitudes(q, x);
            for (const auto mode : {sqz::numeric_mode::int8, sqz::numeric_mode::int8_tile}) {
                sqz::matvec<sqz::backend::cpu>(prepared, x, y, {.mode = mode});
                double largest = 0.0, mean = 0.0;
                for (const double error : sqz_bench::relative_errors(magnitudes, y, exact)) {
                    largest = std::max(largest, error);
                    mean += error / static_cast<double>(y.size());
                }
                const std::string mode_name(sqz::to_string(mode));
                if (json)
                    std::printf("{\"bench\":\"int8_error\",\"rows\":%ld,\"cols\":%ld,\"bits\":%d,\"activations\":\"%s\",\"mode\":\"%s\","
                                "\"max_rel_err\":%.3e,\"mean_rel_err\":%.3e}\n",
                                rows, cols, bits, kind.name, mode_name.c_str(), largest, mean);
                else
                    std::printf("%d bits  %-16s %-9s  max %.2e  mean %.2e\n", bits, kind.name, mode_name.c_str(), largest, mean);
            }
        }
    }
}
