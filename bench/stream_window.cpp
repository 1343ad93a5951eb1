// How fast does DRAM feed a streaming consumer that does work per line and re-reads a window of
// activations, with and without the cpu back end's code prefetch? A model of the int8 kernels'
// memory behaviour, not a measurement of them (docs/benchmarks.md, "The activation window").
//
//   sqz-bench-stream-window [--threads N] [--rounds N] [--json] [--smoke]
//
// Each thread streams its own part of a buffer of max(512 MiB, 4x the last-level cache) (huge pages where the system allows, as a
// cpu_matrix's codes), 16 MiB per call as one thread's share of a 4096 x 14336 product at 4 bits,
// every call on fresh lines. Per 256 bytes of "codes" (four 64-byte loads) the consumer loads 128
// bytes of a `window` that it cycles through, as the int8 kernels cycle through the quantized
// activations of one row group (14336 bytes for 14336 columns), and issues `work` vpdpbusd per
// 64-byte line (4: about 115 GB/s from the cache on two Zen 4 cores, 6: about 78, 8: about 59; the
// 4-bit int8 kernels run 62-95). prefetch = "kernels" asks for the lines ahead with the back end's
// own code prefetch (sqz::detail::avx2::prefetch_codes: 2 KB into L1, 8 KB into L2 by default),
// all four lines' requests before the step's work; "burst_intel" does the same with the int8 kernels'
// Intel distances (1 KB into L1, 4 KB into L2, sqz::detail::intel_int8_code_prefetch) and
// "spread_intel" makes the same requests one at a time between the step's vpdpbusd
// (sqz::detail::avx2::prefetch_spread, as the AVX-512 kernels do on Intel); "none" leaves it to the
// hardware prefetchers.
//
// gbps: bytes of codes streamed per second from DRAM (best of the rounds); cache_gbps: the same
// consumer over 192 KB per thread that stays in L2 (its speed when DRAM is not the limit);
// dram_gbps: sqz-bench-matvec's probe in the same rounds; bw_fraction = gbps / dram_gbps.
#include <sqz/sqz.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "bench_common.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace sqz_bench;

namespace {

#if SQZ_HAVE_X86_SIMD
SQZ_AVX512_WARNINGS_OFF  // GCC bug 105593 (sqz/detail/cpu_features.hpp)

constexpr std::size_t step_bytes = 256;  // codes per step: four 64-byte lines

enum class prefetch_form { none, kernels, burst_intel, spread_intel };

constexpr const char* prefetch_name(prefetch_form f) {
    switch (f) {
        case prefetch_form::kernels: return "kernels";
        case prefetch_form::burst_intel: return "burst_intel";
        case prefetch_form::spread_intel: return "spread_intel";
        default: return "none";
    }
}

/// Streams [p, p + bytes) in steps of 256 bytes, `Work` vpdpbusd per line against two 64-byte
/// loads per step from `window` (cycled through its first window_bytes, a multiple of 128).
template <int Work, prefetch_form Prefetch>
[[gnu::noinline]] SQZ_AVX512_TARGET long long consume(const std::uint8_t* p, std::size_t bytes, const std::uint8_t* window, std::size_t window_bytes) {
    namespace sd = sqz::detail;
    constexpr std::size_t lines = step_bytes / 64;
    constexpr int spread_steps = Work / 2 * static_cast<int>(lines);  // one per (k, l) below
    __m512i acc[8];
    for (auto& a : acc) a = _mm512_setzero_si512();
    std::size_t w = 0;
    for (std::size_t i = 0; i < bytes; i += step_bytes) {
        if constexpr (Prefetch == prefetch_form::kernels) sd::avx2::prefetch_codes(p + i, step_bytes);
        if constexpr (Prefetch == prefetch_form::burst_intel) sd::avx2::prefetch_codes(p + i, step_bytes, sd::intel_int8_code_prefetch);
        const __m512i x0 = _mm512_load_si512(window + w);
        const __m512i x1 = _mm512_load_si512(window + w + 64);
        w = w + 128 == window_bytes ? 0 : w + 128;
        __m512i v[4];
        for (int l = 0; l < 4; ++l) v[l] = _mm512_load_si512(p + i + 64 * l);
#pragma GCC unroll 8
        for (int k = 0; k < Work; k += 2) {
            for (int l = 0; l < 4; ++l) {
                if constexpr (Prefetch == prefetch_form::spread_intel)
                    sd::avx2::prefetch_spread<lines, spread_steps>(p + i, sd::intel_int8_code_prefetch, k / 2 * 4 + l);
                acc[l] = _mm512_dpbusd_epi32(acc[l], v[l], l < 2 ? x0 : x1);
                acc[4 + l] = _mm512_dpbusd_epi32(acc[4 + l], v[l], l < 2 ? x1 : x0);
            }
        }
    }
    __m512i sum = acc[0];
    for (int l = 1; l < 8; ++l) sum = _mm512_add_epi32(sum, acc[l]);
    return _mm512_reduce_add_epi32(sum);
}

using consumer = long long (*)(const std::uint8_t*, std::size_t, const std::uint8_t*, std::size_t);

struct setting {
    int work;
    prefetch_form prefetch;
    consumer run;
};

template <int Work>
void add_settings(std::vector<setting>& out) {
    out.push_back({Work, prefetch_form::none, consume<Work, prefetch_form::none>});
    out.push_back({Work, prefetch_form::kernels, consume<Work, prefetch_form::kernels>});
    out.push_back({Work, prefetch_form::burst_intel, consume<Work, prefetch_form::burst_intel>});
    out.push_back({Work, prefetch_form::spread_intel, consume<Work, prefetch_form::spread_intel>});
}
SQZ_AVX512_WARNINGS_ON
#endif

}  // namespace

int main(int argc, char** argv) {
    int threads = 0;
    int rounds = 15;
    bool json = false;
    bool smoke = false;
    const int status = parse_arguments(argc, argv, "sqz-bench-stream-window",
                                       "sqz-bench-stream-window [--threads N] [--rounds N] [--json] [--smoke]",
                                       [&](const std::string& arg, auto& next) {
                                           if (arg == "--threads") threads = parse_number<int>(next(), "--threads", 0, 1024);
                                           else if (arg == "--rounds") rounds = parse_number<int>(next(), "--rounds", 1, 1000000);
                                           else if (arg == "--json") json = true;
                                           else if (arg == "--smoke") smoke = true;
                                           else return false;
                                           return true;
                                       });
    if (status >= 0) return status;
#if SQZ_HAVE_X86_SIMD
    if (!sqz::detail::cpu_has_avx512()) {
        std::printf("sqz-bench-stream-window: this CPU lacks the AVX-512 the kernels use; nothing measured\n");
        return 0;
    }
    threads = resolve_threads(threads);
    // Fresh lines every call: the buffer is at least 4x the last-level cache (bench_common.hpp).
    const std::size_t total = smoke ? std::size_t{64} << 20 : dram_probe::for_cache(last_level_cache_bytes()).bytes();
    const std::size_t call_bytes = smoke ? std::size_t{1} << 20 : std::size_t{16} << 20;  // per thread per call
    const std::size_t calls = 4;                                                              // per measurement
    const std::size_t cache_bytes = 192 << 10;
    const int cache_passes = smoke ? 2 : 100;
    if (smoke) rounds = 1;
    const auto slice = total / static_cast<std::size_t>(threads) / step_bytes * step_bytes;
    if (slice < calls * call_bytes + 16384) {
        std::fprintf(stderr, "sqz-bench-stream-window: --threads %d leaves each thread too little of the buffer\n", threads);
        return 2;
    }

    sqz::detail::aligned_vector<std::uint8_t> codes(total);
    for (std::size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<std::uint8_t>((i * 2654435761u) >> 24);
    const std::vector<std::size_t> windows = {2048, 8192, 14336, 28672};
    // One window buffer per thread, 64-byte aligned, as a thread's activation buffers.
    std::vector<sqz::detail::aligned_vector<std::uint8_t>> window_buffers(static_cast<std::size_t>(threads));
    for (auto& w : window_buffers) w.assign(windows.back(), 1);

    std::vector<setting> settings;
    add_settings<4>(settings);
    add_settings<6>(settings);
    add_settings<8>(settings);

    struct result {
        double dram_s = 1e30;
        double cache_s = 1e30;
    };
    std::vector<result> results(settings.size() * windows.size());
    std::vector<std::size_t> position(static_cast<std::size_t>(threads), 0);
    dram_probe probe(total, smoke ? std::size_t{8} << 20 : std::size_t{32} << 20);
    double dram_gbps = 0;
    long long checksum = 0;
    for (int round = 0; round < rounds; ++round) {  // rounds interleave the settings and the probe
        dram_gbps = std::max(dram_gbps, probe.measure(threads));
        for (std::size_t s = 0; s < settings.size(); ++s)
            for (std::size_t w = 0; w < windows.size(); ++w) {
                result& r = results[s * windows.size() + w];
                for (const bool from_dram : {true, false}) {
                    double slowest = 0;
                    long long sum = 0;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads) reduction(max : slowest) reduction(+ : sum)
#endif
                    {
#if defined(_OPENMP)
                        const auto t = static_cast<std::size_t>(omp_get_thread_num());
#else
                        const std::size_t t = 0;
#endif
                        const std::uint8_t* mine = codes.data() + t * slice;
                        const std::uint8_t* window = window_buffers[t].data();
                        const auto start = clock_type::now();
                        if (from_dram) {
                            for (std::size_t c = 0; c < calls; ++c) {  // fresh lines every call
                                if (position[t] + call_bytes + 16384 > slice) position[t] = 0;
                                sum += settings[s].run(mine + position[t], call_bytes, window, windows[w]);
                                position[t] += call_bytes;
                            }
                        } else {
                            for (int pass = 0; pass < cache_passes; ++pass) sum += settings[s].run(mine, cache_bytes, window, windows[w]);
                        }
                        slowest = std::max(slowest, seconds_since(start));
                    }
                    checksum += sum;
                    double& best = from_dram ? r.dram_s : r.cache_s;
                    best = std::min(best, slowest);
                }
            }
    }
    const double dram_bytes = static_cast<double>(threads) * static_cast<double>(calls * call_bytes);
    const double cache_total = static_cast<double>(threads) * static_cast<double>(cache_bytes) * cache_passes;
    const std::string thp = transparent_huge_pages();
    if (!json)
        std::printf("# threads %d, DRAM probe %.2f GB/s, transparent huge pages: %s\n%5s %8s %13s %8s %10s %11s\n", threads,
                    dram_gbps, thp.c_str(), "work", "window", "prefetch", "GB/s", "cache_GB/s", "bw_fraction");
    for (std::size_t s = 0; s < settings.size(); ++s)
        for (std::size_t w = 0; w < windows.size(); ++w) {
            const result& r = results[s * windows.size() + w];
            const double gbps = dram_bytes / r.dram_s / 1e9;
            const double cache_gbps = cache_total / r.cache_s / 1e9;
            const char* prefetch = prefetch_name(settings[s].prefetch);
            if (json)
                std::printf("{\"work\":%d,\"window_bytes\":%zu,\"prefetch\":\"%s\",\"threads\":%d,\"gbps\":%.2f,\"cache_gbps\":%.2f,"
                            "\"dram_gbps\":%.2f,\"bw_fraction\":%.3f,\"rounds\":%d,\"thp\":\"%s\"}\n",
                            settings[s].work, windows[w], prefetch, threads, gbps, cache_gbps, dram_gbps, gbps / dram_gbps, rounds,
                            thp.c_str());
            else
                std::printf("%5d %8zu %13s %8.2f %10.2f %11.3f\n", settings[s].work, windows[w], prefetch, gbps, cache_gbps,
                            gbps / dram_gbps);
        }
    if (checksum == 42) std::printf("\n");  // keeps the sums alive
#else
    (void)threads;
    (void)rounds;
    (void)json;
    (void)smoke;
    std::printf("sqz-bench-stream-window: x86-64 only; nothing measured\n");
#endif
    return 0;
}
