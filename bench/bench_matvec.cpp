// Matrix-vector products: the cpu back end against this machine's DRAM read bandwidth and against
// Eigen's fp32 GEMV, measured side by side in one run.
//
//   sqz-bench-matvec [--json] [--threads N] [--rounds N] [--shapes 4096x14336,...] [--bits 2,3,4]
//                    [--sparse 0,0.0045] [--modes exact,int8,int8_tile] [--kernels automatic|avx2,avx512,portable]
//                    [--l3-mib N] [--smoke]
//
// How it measures (docs/benchmarks.md, "Matrix-vector products"):
//  - The last-level cache to defeat: its size as Linux reports it (bench_common.hpp's
//    last_level_cache_bytes; JSON `l3_mib`), or --l3-mib N. The quantized matrix is prepared once and
//    copied until the copies hold at least 4x that cache; each repetition multiplies the next copy, so
//    the matrix comes from DRAM, not from the cache.
//  - DRAM read bandwidth: all threads stream (AVX2 loads, 4 accumulators) through one 32 MiB piece of a
//    buffer of max(512 MiB, 4x the cache), a different piece each time, so every piece comes from DRAM. The buffer, like the
//    matrices' codes, is on transparent huge pages where the system allows (JSON `thp`: the system's
//    setting; "madvise" and "always" give them): on 4 KB pages the same read was 13-22% slower here,
//    which the fractions would have counted as the kernels' merit. Each round also streams the same way
//    through the codes of the matrix copy halfway round the pool (JSON `pool_gbps`; `probe_gbps`: the
//    probe's buffer alone): on a shared Xeon host the probe's buffer read 20-25% slower than the
//    matrix copies for seconds at a time. dram_gbps is the higher of the two.
//  - Eigen fp32 GEMV: y = W x with the dense row-major float matrix (4 bytes per weight, on huge pages
//    as the codes are, copied like the quantized one until the copies hold 4x the cache, each
//    repetition on the next copy), split into row blocks over the same threads (Eigen's own GEMV is
//    single-threaded).
//  - --kernels times each listed cpu kernel (sqz::cpu_kernel) side by side: every mode with every kernel.
//    JSON `kernel` is the one asked for, `kernel_used` what ran (sqz::cpu_kernel_used: automatic resolved).
//  - Rounds interleave one bandwidth piece, one Eigen GEMV and one product per mode and kernel; every figure is
//    the best (shortest) of its rounds, so all of them see the machine in its quietest moments.
//  - Sparse part (--sparse): uniformly random positions, values N(0, 0.1) rounded to fp16, as real
//    fp16 checkpoints give (SqueezeLLM keeps the original weights there), so the cpu back end stores
//    them as 16-bit values with 16-bit column indices: 4 bytes per nonzero, its common case.
//  - gbps = bytes the product reads (packed codes + the mode's LUT form + sparse part as stored) / time;
//    bw_fraction = gbps / measured DRAM bandwidth; speedup_vs_eigen_fp32 = Eigen time / time.
//  - Each configuration is checked once against the reference back end (max_rel_err: the largest
//    |y - y_ref| / sum_j |w_ij x_j| over rows), so the timed code is known to compute the product.
//  - cache_gbps (from cache, not DRAM): the same product on a matrix with the same columns but fewer
//    rows (cache_rows, about 8 MB or a quarter of the cache, which stays in it), multiplied 3 times in a row
//    after a first product that brings it into the cache, best of all: the speed of the kernel when
//    DRAM is not the limit. When gbps is close to
//    cache_gbps the mode is bound by its own instructions, not by DRAM.
#include <sqz/sqz.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "bench_common.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif
using namespace sqz_bench;

namespace {

struct settings {
    bool json = false;
    int threads = 0;
    int rounds = 25;
    std::vector<shape> shapes{{4096, 4096}, {4096, 14336}, {14336, 4096}};
    std::vector<int> bits{2, 3, 4};
    std::vector<double> sparse{0.0, 0.0045};
    std::vector<sqz::numeric_mode> modes{sqz::numeric_mode::exact, sqz::numeric_mode::int8, sqz::numeric_mode::int8_tile};
    std::vector<sqz::cpu_kernel> kernels{sqz::cpu_kernel::automatic};
    std::size_t cache_bytes = last_level_cache_bytes();  // the cache to defeat (--l3-mib)
};

constexpr const char* usage =
    "sqz-bench-matvec [--json] [--threads N] [--rounds N] [--shapes RxC,...] [--bits 2,3,4]\n"
    "                 [--sparse 0,0.0045] [--modes exact,int8,int8_tile] [--kernels automatic|avx2,avx512,portable]\n"
    "                 [--l3-mib N] [--smoke]";

}  // namespace

int main(int argc, char** argv) {
    settings cfg;
    const int status = parse_arguments(argc, argv, "sqz-bench-matvec", usage, [&](const std::string& arg, auto& next) {
        if (take_shared_option(arg, next, cfg, 0)) return true;  // --threads 0: OpenMP's default
        if (arg == "--sparse") {
            cfg.sparse =
                parse_list<double>(next(), "--sparse", [](const std::string& item) { return parse_number<double>(item, "--sparse", 0.0, 1.0); });
        } else if (arg == "--modes") {
            cfg.modes = parse_names(next(), "--modes", std::array{sqz::numeric_mode::exact, sqz::numeric_mode::int8, sqz::numeric_mode::int8_tile});
        } else if (arg == "--kernels") {
            cfg.kernels = parse_names(next(), "--kernels",
                                      std::array{sqz::cpu_kernel::automatic, sqz::cpu_kernel::avx2, sqz::cpu_kernel::avx512, sqz::cpu_kernel::portable});
        } else if (arg == "--smoke") {  // a seconds-long run for the test suite: small shapes, few rounds
            cfg.shapes = {{300, 1000}, {64, 4096}};
            cfg.rounds = 2;
            cfg.cache_bytes = std::size_t{1} << 20;
        } else {
            return false;
        }
        return true;
    });
    if (status >= 0) return status;
    const int threads = resolve_threads(cfg.threads);
    // Every mode with every kernel, timed side by side.
    std::vector<std::pair<sqz::numeric_mode, sqz::cpu_kernel>> runs;
    for (const auto mode : cfg.modes)
        for (const auto kernel : cfg.kernels) runs.emplace_back(mode, kernel);
    dram_probe probe = dram_probe::for_cache(cfg.cache_bytes);
    const std::string thp = transparent_huge_pages();
    const double l3_mib = static_cast<double>(cfg.cache_bytes) / (1 << 20);
    if (!cfg.json) {
        std::printf("# transparent huge pages: %s; cache to defeat: %.0f MiB; probe buffer %zu MiB\n", thp.c_str(), l3_mib,
                    probe.bytes() >> 20);
        std::printf("%-11s %4s %7s %5s %-9s %9s %7s %7s %6s %9s %7s %9s %8s\n", "shape", "bits", "sparse", "mode", "kernel", "us", "GB/s",
                    "DRAM", "frac", "eigen_us", "speedup", "rel_err", "cacheGB/s");
    }
    bool all_correct = true;
    for (const shape s : cfg.shapes) {
        // Eigen's fp32 GEMV on the same shape, split into row blocks over the same threads; its matrix
        // in sqz's allocator, so on huge pages as sqz's codes and the probe's buffer are, and copied
        // like the quantized ones so that each GEMV reads its matrix from DRAM.
        const Eigen::MatrixXf dense_columns = Eigen::MatrixXf::Random(s.rows, s.cols);
        const std::size_t dense_elements = static_cast<std::size_t>(s.rows) * static_cast<std::size_t>(s.cols);
        const std::size_t dense_copies = copies_for(dense_elements * sizeof(float), cfg.cache_bytes);
        sqz::detail::aligned_vector<float> dense_storage(dense_elements * dense_copies);
        for (std::size_t c = 0; c < dense_copies; ++c)
            Eigen::Map<sqz::row_matrix<float>, Eigen::Aligned64>(dense_storage.data() + c * dense_elements, s.rows, s.cols) = dense_columns;
        std::size_t dense_next = 0;
        Eigen::VectorXf ex = Eigen::VectorXf::Random(s.cols);
        Eigen::VectorXf ey(s.rows);
        const auto eigen_gemv = [&] {
            const Eigen::Map<const sqz::row_matrix<float>> dense(dense_storage.data() + dense_next++ % dense_copies * dense_elements,
                                                                 s.rows, s.cols);
            const Eigen::Index block = 64;
            const Eigen::Index blocks = (s.rows + block - 1) / block;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
#endif
            for (Eigen::Index b = 0; b < blocks; ++b) {
                const Eigen::Index first = b * block;
                const Eigen::Index count = std::min(block, s.rows - first);
                ey.segment(first, count).noalias() = dense.middleRows(first, count) * ex;
            }
        };

        sqz::synthetic::rng xr(99);
        std::vector<float> x(static_cast<std::size_t>(s.cols));
        for (auto& v : x) v = static_cast<float>(xr.normal());
        std::vector<float> y(static_cast<std::size_t>(s.rows));
        std::vector<float> ref(static_cast<std::size_t>(s.rows));

        for (const int bits : cfg.bits)
            for (const double fraction : cfg.sparse) {
                const auto q = random_matrix(s, bits, fraction, 1000u * static_cast<unsigned>(bits) + 7);
                const sqz::cpu_matrix<float> prepared(q);
                const std::size_t copy_bytes = prepared.bytes_read(sqz::numeric_mode::exact);
                const std::size_t copies = copies_for(copy_bytes, cfg.cache_bytes);
                std::vector<sqz::cpu_matrix<float>> pool(copies, prepared);

                // The from-cache matrix: about 8 MB, multiplied repeatedly (see the top).
                const std::size_t row_bytes = std::max<std::size_t>(1, copy_bytes / static_cast<std::size_t>(std::max<Eigen::Index>(s.rows, 1)));
                const auto cache_rows = static_cast<Eigen::Index>(std::clamp<std::size_t>(
                    std::min(cfg.cache_bytes / 4, std::size_t{8} << 20) / row_bytes / 4 * 4, 1, static_cast<std::size_t>(s.rows)));
                const auto cache_q = random_matrix({cache_rows, s.cols}, bits, fraction, 1000u * static_cast<unsigned>(bits) + 8);
                const sqz::cpu_matrix<float> cached(cache_q);
                std::vector<float> cache_y(static_cast<std::size_t>(cache_rows));
                constexpr int cache_repeats = 3;
                std::vector<double> best_cache(runs.size(), 1e30);

                double best_probe = 0;
                double best_pool = 0;
                double best_eigen = 1e30;
                std::vector<double> best(runs.size(), 1e30);
                std::size_t next = 0;
                for (int round = 0; round < cfg.rounds; ++round) {
                    best_probe = std::max(best_probe, probe.measure(threads));
                    // The same read over the codes of the copy halfway round the pool: read by a product
                    // copies / 2 products ago and again copies / 2 products on, so from DRAM both times.
                    const auto halfway = pool[(next + copies / 2) % copies].view();
                    best_pool = std::max(best_pool, probe.measure_at(reinterpret_cast<const char*>(halfway.codes),
                                                                     halfway.code_bytes, threads));
                    auto start = clock_type::now();
                    eigen_gemv();
                    best_eigen = std::min(best_eigen, seconds_since(start));
                    for (std::size_t m = 0; m < runs.size(); ++m) {
                        const sqz::matvec_options options{.mode = runs[m].first, .threads = threads, .kernel = runs[m].second};
                        const auto& a = pool[next++ % copies];
                        start = clock_type::now();
                        sqz::matvec<sqz::backend::cpu>(a, x, y, options);
                        best[m] = std::min(best[m], seconds_since(start));
                        sqz::matvec<sqz::backend::cpu>(cached, x, cache_y, options);  // brings it into the caches
                        for (int r = 0; r < cache_repeats; ++r) {
                            start = clock_type::now();
                            sqz::matvec<sqz::backend::cpu>(cached, x, cache_y, options);
                            best_cache[m] = std::min(best_cache[m], seconds_since(start));
                        }
                    }
                }
                const double best_bw = std::max(best_probe, best_pool);
                sqz::matvec<sqz::backend::reference>(q, x, ref);
                const std::vector<double> magnitudes = row_magnitudes(q, x);
                for (std::size_t m = 0; m < runs.size(); ++m) {
                    const sqz::numeric_mode mode = runs[m].first;
                    const sqz::matvec_options options{.mode = mode, .threads = threads, .kernel = runs[m].second};
                    sqz::matvec<sqz::backend::cpu>(prepared, x, y, options);
                    const double rel_err = max_relative_error(magnitudes, y, ref);
                    // exact: 1e-5 relative; int8: far inside its bound for these N(0,1) activations.
                    const double limit = mode == sqz::numeric_mode::exact ? 1e-5 : 0.05;
                    all_correct &= rel_err <= limit;
                    const double bytes = static_cast<double>(prepared.bytes_read(mode));
                    const double gbps = bytes / best[m] / 1e9;
                    const double cache_gbps = static_cast<double>(cached.bytes_read(mode)) / best_cache[m] / 1e9;
                    const std::string shape_name = std::to_string(s.rows) + "x" + std::to_string(s.cols);
                    const auto mode_name = sqz::to_string(mode);
                    const auto kernel_name = sqz::to_string(runs[m].second);
                    const auto used_name = sqz::to_string(sqz::cpu_kernel_used(prepared, options));  // automatic resolved
                    if (cfg.json)
                        std::printf(
                            "{\"bench\":\"matvec\",\"shape\":\"%s\",\"rows\":%ld,\"cols\":%ld,\"bits\":%d,\"sparse\":%g,"
                            "\"nnz\":%ld,\"mode\":\"%.*s\",\"kernel\":\"%.*s\",\"kernel_used\":\"%.*s\",\"threads\":%d,\"us\":%.1f,\"bytes\":%.0f,\"gbps\":%.2f,"
                            "\"dram_gbps\":%.2f,\"bw_fraction\":%.3f,\"eigen_fp32_us\":%.1f,\"speedup_vs_eigen_fp32\":%.2f,"
                            "\"copies\":%zu,\"rounds\":%d,\"max_rel_err\":%.2e,\"cache_rows\":%ld,\"cache_gbps\":%.2f,\"thp\":\"%s\","
                            "\"l3_mib\":%.0f,\"probe_mib\":%zu,\"probe_gbps\":%.2f,\"pool_gbps\":%.2f}\n",
                            shape_name.c_str(), static_cast<long>(s.rows), static_cast<long>(s.cols), bits, fraction,
                            static_cast<long>(q.sparse_nonzeros()), static_cast<int>(mode_name.size()), mode_name.data(),
                            static_cast<int>(kernel_name.size()), kernel_name.data(), static_cast<int>(used_name.size()),
                            used_name.data(), threads, best[m] * 1e6, bytes, gbps, best_bw, gbps / best_bw, best_eigen * 1e6,
                            best_eigen / best[m], copies, cfg.rounds, rel_err, static_cast<long>(cache_rows), cache_gbps,
                            thp.c_str(), l3_mib, probe.bytes() >> 20, best_probe, best_pool);
                    else
                        std::printf("%-11s %4d %7.4f %5.*s %-9.*s %9.1f %7.2f %7.2f %6.3f %9.1f %7.2f %9.2e %8.2f\n", shape_name.c_str(),
                                    bits, fraction, static_cast<int>(mode_name.size()), mode_name.data(),
                                    static_cast<int>(used_name.size()), used_name.data(), best[m] * 1e6,
                                    gbps, best_bw, gbps / best_bw, best_eigen * 1e6, best_eigen / best[m], rel_err, cache_gbps);
                    std::fflush(stdout);
                }
            }
        if (ey.size() > 0 && !std::isfinite(ey.sum())) std::printf("# eigen result not finite\n");
    }
    if (probe.sink() == 42) std::printf("#\n");  // keeps the bandwidth loads alive
    if (!all_correct) {
        std::fprintf(stderr, "sqz-bench-matvec: a product disagreed with the reference back end\n");
        return 1;
    }
    return 0;
}
