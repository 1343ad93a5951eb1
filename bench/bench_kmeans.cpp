// Weighted 1-D k-means per row: exact (dynamic programming) and Lloyd, single thread, side by side on the
// same LLM-like rows (Student-t(5) weights, scale 0.02, with and without fp16 rounding; Fisher-like
// sensitivities as weights).
//
//   sqz-bench-kmeans [--json] [--rows R] [--repeat R] [--quick]
//       times exact and lloyd for n in {4096, 14336}, k in {4, 8, 16, 256}, fp16 on and off; lloyd lines
//       also give its mean and max gap to the exact optimum on the same rows. Each row is timed --repeat
//       times (default 5, 2 at k = 256) and its fastest run kept; ms_per_row is the mean over rows.
//   sqz-bench-kmeans --dump-rows FILE [--n N] [--rows R] [--no-fp16] [--seed S]
//       writes rows for bench/compare_sklearn.py: "SQZKMRW1", uint32 rows, uint32 cols (little endian),
//       then rows*cols float32 values and rows*cols float32 weights, row-major
//   sqz-bench-kmeans --input FILE --k K [--method exact|lloyd] [--repeat R]
//       clusters every row of FILE on one thread; prints one JSON line per row (objective, centroids) and
//       a summary line with ms_per_row (fastest of R runs per row, mean over rows)
#include <sqz/kmeans.hpp>
#include <sqz/synthetic.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct row_set {
    sqz::row_matrix<float> values;
    sqz::row_matrix<float> weights;
};

row_set make_rows(Eigen::Index rows, Eigen::Index cols, bool fp16, std::uint64_t seed) {
    sqz::synthetic::weights_options options;
    options.round_to_fp16 = fp16;
    return {sqz::synthetic::llm_like_weights(rows, cols, seed, options),
            sqz::synthetic::fisher_like_sensitivity(rows, cols, seed + 1)};
}

const char* method_name(sqz::kmeans_method method) { return method == sqz::kmeans_method::exact ? "exact" : "lloyd"; }

struct timing {
    double ms_per_row = 0;
    std::vector<double> objectives;
    std::vector<std::vector<float>> centroids;
};

// One thread, one weighted_kmeans call per row (as a quantizer running rows on its own threads would call
// it). Every row is timed `repeats` times and its fastest run kept: on a shared machine the minimum is the
// run least disturbed by other processes. The methods alternate row by row, so they see the same load.
std::vector<timing> time_rows(const row_set& rows, int k, const std::vector<sqz::kmeans_options>& methods, int repeats) {
    const auto count = static_cast<std::size_t>(rows.values.rows());
    std::vector<timing> t(methods.size());
    std::vector<std::vector<double>> best(methods.size(), std::vector<double>(count, 1e300));
    for (auto& m : t) {
        m.objectives.resize(count);
        m.centroids.resize(count);
    }
    for (int r = 0; r < repeats; ++r)
        for (std::size_t i = 0; i < count; ++i)
            for (std::size_t m = 0; m < methods.size(); ++m) {
                const auto row = static_cast<Eigen::Index>(i);
                const auto start = std::chrono::steady_clock::now();
                auto result = sqz::weighted_kmeans(rows.values.row(row), rows.weights.row(row), k, methods[m]);
                const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
                best[m][i] = std::min(best[m][i], seconds);
                t[m].objectives[i] = result.objective;
                t[m].centroids[i] = std::move(result.centroids);
            }
    for (std::size_t m = 0; m < methods.size(); ++m) {
        double total = 0;
        for (double seconds : best[m]) total += seconds;
        t[m].ms_per_row = 1e3 * total / static_cast<double>(count);
    }
    return t;
}

double mean(const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += x;
    return s / static_cast<double>(v.size());
}

void write_rows(const std::string& path, const row_set& rows) {
    std::ofstream out(path, std::ios::binary);
    if (!out) throw std::runtime_error("cannot write " + path);
    const auto r = static_cast<std::uint32_t>(rows.values.rows());
    const auto c = static_cast<std::uint32_t>(rows.values.cols());
    out.write("SQZKMRW1", 8);
    out.write(reinterpret_cast<const char*>(&r), 4);
    out.write(reinterpret_cast<const char*>(&c), 4);
    out.write(reinterpret_cast<const char*>(rows.values.data()), static_cast<std::streamsize>(4) * r * c);
    out.write(reinterpret_cast<const char*>(rows.weights.data()), static_cast<std::streamsize>(4) * r * c);
    if (!out) throw std::runtime_error("failed writing " + path);
}

row_set read_rows(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + path);
    char magic[8];
    std::uint32_t r = 0, c = 0;
    in.read(magic, 8);
    in.read(reinterpret_cast<char*>(&r), 4);
    in.read(reinterpret_cast<char*>(&c), 4);
    if (!in || std::memcmp(magic, "SQZKMRW1", 8) != 0) throw std::runtime_error(path + " is not a rows file");
    row_set rows{sqz::row_matrix<float>(r, c), sqz::row_matrix<float>(r, c)};
    in.read(reinterpret_cast<char*>(rows.values.data()), static_cast<std::streamsize>(4) * r * c);
    in.read(reinterpret_cast<char*>(rows.weights.data()), static_cast<std::streamsize>(4) * r * c);
    if (!in) throw std::runtime_error(path + " is truncated");
    return rows;
}

int run_input(const std::string& path, int k, sqz::kmeans_method method, int repeats) {
    const auto rows = read_rows(path);
    const auto t = time_rows(rows, k, {sqz::kmeans_options{.method = method}}, repeats)[0];
    for (std::size_t i = 0; i < t.objectives.size(); ++i) {
        std::printf("{\"row\":%zu,\"objective\":%.17g,\"centroids\":[", i, t.objectives[i]);
        for (std::size_t c = 0; c < t.centroids[i].size(); ++c)
            std::printf("%s%.9g", c == 0 ? "" : ",", static_cast<double>(t.centroids[i][c]));
        std::printf("]}\n");
    }
    std::printf("{\"method\":\"%s\",\"n\":%ld,\"k\":%d,\"rows\":%ld,\"ms_per_row\":%.5f,\"objective_mean\":%.9g}\n",
                method_name(method), static_cast<long>(rows.values.cols()), k, static_cast<long>(rows.values.rows()),
                t.ms_per_row, mean(t.objectives));
    return 0;
}

}  // namespace

int main(int argc, char** argv) try {
    bool json = false, quick = false, fp16 = true;
    long rows_override = 0, n = 4096;
    int k = 16, repeats = 5;
    std::uint64_t seed = 1;
    std::string dump_path, input_path;
    sqz::kmeans_method method = sqz::kmeans_method::exact;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        const auto value = [&]() -> std::string {
            if (i + 1 >= argc) throw std::runtime_error(arg + " needs a value");
            return argv[++i];
        };
        if (arg == "--json") json = true;
        else if (arg == "--quick") quick = true;
        else if (arg == "--no-fp16") fp16 = false;
        else if (arg == "--rows") rows_override = std::stol(value());
        else if (arg == "--n") n = std::stol(value());
        else if (arg == "--k") k = std::stoi(value());
        else if (arg == "--seed") seed = std::stoull(value());
        else if (arg == "--repeat") repeats = std::stoi(value());
        else if (arg == "--dump-rows") dump_path = value();
        else if (arg == "--input") input_path = value();
        else if (arg == "--method") {
            const auto name = value();
            if (name == "exact") method = sqz::kmeans_method::exact;
            else if (name == "lloyd") method = sqz::kmeans_method::lloyd;
            else throw std::runtime_error("unknown method " + name);
        } else throw std::runtime_error("unknown argument " + arg);
    }
    if (!dump_path.empty()) {
        write_rows(dump_path, make_rows(rows_override > 0 ? rows_override : 64, n, fp16, seed));
        return 0;
    }
    if (!input_path.empty()) return run_input(input_path, k, method, repeats);

    if (!json)
        std::printf("%-6s %6s %4s %5s %6s %11s %15s %10s %10s\n", "method", "n", "k", "fp16", "rows", "ms/row",
                    "objective mean", "gap mean", "gap max");
    for (const long cols : {4096L, 14336L})
        for (const bool rounded : {true, false}) {
            const long row_count = rows_override > 0 ? rows_override : (quick ? 8 : (cols > 8192 ? 24 : 64));
            const auto rows = make_rows(row_count, cols, rounded, seed);
            for (const int clusters : {4, 8, 16, 256}) {
                const int reps = clusters == 256 ? std::min(repeats, 2) : repeats;
                const auto both = time_rows(rows, clusters,
                                            {sqz::kmeans_options{.method = sqz::kmeans_method::exact},
                                             sqz::kmeans_options{.method = sqz::kmeans_method::lloyd}},
                                            reps);
                const timing& exact = both[0];
                const timing& lloyd = both[1];
                double gap_sum = 0, gap_max = 0;
                for (std::size_t r = 0; r < exact.objectives.size(); ++r) {
                    const double gap = lloyd.objectives[r] / exact.objectives[r] - 1;
                    gap_sum += gap;
                    gap_max = std::max(gap_max, gap);
                }
                const double gap_mean = gap_sum / static_cast<double>(exact.objectives.size());
                for (const auto* t : {&exact, &lloyd}) {
                    const bool is_exact = t == &exact;
                    const char* name = is_exact ? "exact" : "lloyd";
                    if (json)
                        std::printf("{\"bench\":\"kmeans\",\"method\":\"%s\",\"n\":%ld,\"k\":%d,\"fp16\":%s,\"rows\":%ld,"
                                    "\"ms_per_row\":%.5f,\"objective_mean\":%.9g,\"gap_mean\":%.6f,\"gap_max\":%.6f,"
                                    "\"speedup_vs_exact\":%.3f}\n",
                                    name, cols, clusters, rounded ? "true" : "false", row_count, t->ms_per_row,
                                    mean(t->objectives), is_exact ? 0.0 : gap_mean, is_exact ? 0.0 : gap_max,
                                    exact.ms_per_row / t->ms_per_row);
                    else
                        std::printf("%-6s %6ld %4d %5s %6ld %11.4f %15.6g %9.3f%% %9.3f%%\n", name, cols, clusters,
                                    rounded ? "yes" : "no", row_count, t->ms_per_row, mean(t->objectives),
                                    is_exact ? 0.0 : 100 * gap_mean, is_exact ? 0.0 : 100 * gap_max);
                    std::fflush(stdout);
                }
            }
        }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "sqz-bench-kmeans: %s\n", e.what());
    return 1;
}
