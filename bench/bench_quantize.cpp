// Whole-matrix quantization time, side by side in one run on the same LLaMA-like matrices
// (sqz/synthetic.hpp weights and Fisher-like sensitivity, fixed seeds):
//   rtn           per-row round-to-nearest (the baseline's cost: validation, codes, packing, errors)
//   kmeans_only   weighted_kmeans_rows on the same rows and weights: the clustering alone
//   squeezellm    sqz::quantize, exact k-means, dense only
//   sparse_0.45   sqz::quantize with 0.05% sensitive + 0.40% outliers (per matrix)
// for each shape, bit width and thread count; the overhead of quantize over the clustering alone and the
// speed-up from threads are reported as ratios measured in the same run. Each line also gives the process
// CPU time of the best run and the 1-minute load average, because the machine is shared: with 2 threads
// on a busy machine the wall time can exceed the CPU time / 2 by far.
//
//   sqz-bench-quantize [--json] [--repeats R] [--threads 1,2] [--bits 3,4] [--shapes 4096x4096,4096x14336]
//                      [--kmeans exact|lloyd]
#include <sqz/kmeans.hpp>
#include <sqz/quantize.hpp>
#include <sqz/synthetic.hpp>

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace {

std::vector<long> parse_list(const std::string& text) {
    std::vector<long> out;
    std::stringstream s(text);
    for (std::string item; std::getline(s, item, ',');) out.push_back(std::stol(item));
    return out;
}

struct measurement {
    double best = 1e300;
    double median = 0;
    double cpu_of_best = 0;  // process CPU seconds (user + system) during the best run
    sqz::quantization_report report;
};

double process_cpu_seconds() {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    const auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + 1e-6 * static_cast<double>(t.tv_usec); };
    return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// The 1-minute load average: the machine is shared, so every line says how busy it was.
double load_average() {
    double load = -1;
    if (std::FILE* f = std::fopen("/proc/loadavg", "r")) {
        if (std::fscanf(f, "%lf", &load) != 1) load = -1;
        std::fclose(f);
    }
    return load;
}

template <class Run>
measurement measure(int repeats, Run&& run) {
    measurement m;
    std::vector<double> times;
    for (int r = 0; r < repeats; ++r) {
        const double cpu_start = process_cpu_seconds();
        const auto start = std::chrono::steady_clock::now();
        m.report = run();
        const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (wall < m.best) {
            m.best = wall;
            m.cpu_of_best = process_cpu_seconds() - cpu_start;
        }
        times.push_back(wall);
    }
    std::sort(times.begin(), times.end());
    m.median = times[times.size() / 2];
    return m;
}

}  // namespace

int main(int argc, char** argv) {
    bool json = false;
    int repeats = 2;
    std::vector<long> threads_list{1, 2};
    std::vector<long> bits_list{3, 4};
    std::vector<std::pair<long, long>> shapes{{4096, 4096}, {4096, 14336}};
    sqz::kmeans_method method = sqz::kmeans_method::exact;
    for (int a = 1; a < argc; ++a) {
        const std::string flag = argv[a];
        const auto value = [&]() -> std::string {
            if (a + 1 >= argc) {
                std::fprintf(stderr, "sqz-bench-quantize: %s needs a value\n", flag.c_str());
                std::exit(1);
            }
            return argv[++a];
        };
        if (flag == "--json") {
            json = true;
        } else if (flag == "--repeats") {
            repeats = std::max(1, std::atoi(value().c_str()));
        } else if (flag == "--threads") {
            threads_list = parse_list(value());
        } else if (flag == "--bits") {
            bits_list = parse_list(value());
        } else if (flag == "--kmeans") {
            method = value() == "lloyd" ? sqz::kmeans_method::lloyd : sqz::kmeans_method::exact;
        } else if (flag == "--shapes") {
            shapes.clear();
            std::stringstream s(value());
            for (std::string item; std::getline(s, item, ',');) {
                const auto x = item.find('x');
                shapes.push_back({std::stol(item.substr(0, x)), std::stol(item.substr(x + 1))});
            }
        } else {
            std::fprintf(stderr,
                         "usage: sqz-bench-quantize [--json] [--repeats R] [--threads 1,2] [--bits 3,4] "
                         "[--shapes 4096x4096,4096x14336] [--kmeans exact|lloyd]\n");
            return flag == "--help" ? 0 : 1;
        }
    }
    if (!json)
        std::printf("%-11s %4s %-12s %7s %9s %9s %8s %11s %9s %12s %6s\n", "shape", "bits", "method", "threads", "best s",
                    "median s", "cpu s", "ms per row", "split s", "Taylor obj.", "load");
    for (const auto& [rows, cols] : shapes) {
        const auto w = sqz::synthetic::llm_like_weights(rows, cols, 7);
        const auto f = sqz::synthetic::fisher_like_sensitivity(rows, cols, 8);
        const std::string shape = std::to_string(rows) + "x" + std::to_string(cols);
        for (const long bits : bits_list)
            for (const long threads : threads_list) {
                sqz::quantize_config base;
                base.bits = static_cast<int>(bits);
                base.threads = static_cast<int>(threads);
                base.kmeans.method = method;
                base.format = sqz::lut_format::fp16;
                std::vector<std::pair<std::string, measurement>> results;
                sqz::quantize_config rtn = base;
                rtn.codebook = sqz::codebook_method::rtn;
                results.push_back({"rtn", measure(repeats, [&] { return sqz::quantize_with_report(w, f, rtn).report; })});
                results.push_back({"kmeans_only", measure(repeats, [&] {
                                       sqz::kmeans_options options;
                                       options.method = method;
                                       const auto clusters = sqz::weighted_kmeans_rows(w, f, 1 << bits, options, static_cast<int>(threads));
                                       sqz::quantization_report r;
                                       for (const auto& c : clusters) r.taylor_objective += 0.5 * c.objective;
                                       return r;
                                   })});
                results.push_back({"squeezellm", measure(repeats, [&] { return sqz::quantize_with_report(w, f, base).report; })});
                sqz::quantize_config sparse = base;
                sparse.split.sensitive_fraction = 0.0005;
                sparse.split.outlier_fraction = 0.004;
                results.push_back({"sparse_0.45", measure(repeats, [&] { return sqz::quantize_with_report(w, f, sparse).report; })});
                const double kmeans_only = results[1].second.best;
                for (const auto& [name, m] : results) {
                    const double per_row = 1e3 * m.best / static_cast<double>(rows);
                    if (json)
                        std::printf("{\"shape\":\"%s\",\"bits\":%ld,\"method\":\"%s\",\"kmeans\":\"%s\",\"threads\":%ld,"
                                    "\"seconds_best\":%.4f,\"seconds_median\":%.4f,\"ms_per_row\":%.4f,"
                                    "\"cpu_seconds\":%.4f,\"split_seconds\":%.4f,\"over_kmeans_only\":%.3f,"
                                    "\"taylor_objective\":%.6e,\"bits_per_weight\":%.4f,\"loadavg\":%.2f}\n",
                                    shape.c_str(), bits, name.c_str(), method == sqz::kmeans_method::exact ? "exact" : "lloyd",
                                    threads, m.best, m.median, per_row, m.cpu_of_best, m.report.split_seconds,
                                    m.best / kmeans_only, m.report.taylor_objective, m.report.bits_per_weight, load_average());
                    else
                        std::printf("%-11s %4ld %-12s %7ld %9.3f %9.3f %8.3f %11.4f %9.3f %12.4e %6.2f\n", shape.c_str(), bits,
                                    name.c_str(), threads, m.best, m.median, m.cpu_of_best, per_row, m.report.split_seconds,
                                    m.report.taylor_objective, load_average());
                    std::fflush(stdout);
                }
            }
    }
    return 0;
}
