// How fast can exact mode decode 3-bit codes on this CPU at all? The instruction mix of the AVX-512
// exact kernel (cpu_kernels_avx512.hpp), and the alternatives to its shifts, timed side by side in
// registers and the L1 cache, with no DRAM and no loop overhead of the real kernel: a ceiling for
// exact mode, not a measurement of it (docs/benchmarks.md, "Exact mode: the ceiling of its decoder").
//
//   sqz-bench-exact-ceiling [--threads N] [--json]
//
// Every form decodes 16 weights per step through a row's LUT in a register (vpermps) and multiplies
// them with x (FMA), four rows at a time sharing x as the kernel does. They differ in how each step
// gets its 16 indices into bits 0-3 of 32-bit lanes:
//  - shift:       vpsrld of a 64-byte chunk of codes (the kernel's form; one per step but the first);
//  - load_index:  each step's indices loaded ready-made (an aligned 64-byte load per step, as if every
//                 code took 32 bits): no vector instruction for them, the lower bound of a LUT decoder;
//  - ifma:        vpmadd52huq by 2^(52 - s) instead of a shift by s (runs on the multiply pipes);
//  - mulhi:       vpmulhuw by 2^(16 - s) on 16-bit lanes, one vpsrld by 16 for the upper half;
//  - gfni:        vgf2p8affineqb moves each byte's high nibble to its low one (the odd steps), vpsrld
//                 by 8, 16, 24 for the even ones;
//  - load_offset: 64-byte loads at byte offsets 1-3 for the shifts by 8, 16, 24 (they cross lines);
//  - ymm_load:    256-bit vpermps with 32-byte loads at byte offsets 0-3 that stay inside a line
//                 (needs 8 bits per code: an upper bound, not a layout).
// Every step reads its indices from a different register or address, so that the compiler cannot
// merge two steps' lookups (checked in the disassembly: 32 vpermps per chunk of four rows, 64 at 256 bits).
// Each thread runs the form on its own registers and its own 2 KB of codes; ns_per_step is the
// slowest thread's time per step of 16 weights. ceiling_gbps is what a product of 3-bit codes could
// reach if decoding cost nothing more: threads * 6 bytes per step / ns_per_step. The DRAM probe of
// sqz-bench-matvec runs in the same process, so bw_fraction = ceiling_gbps / dram_gbps is the most
// the exact-mode goal (0.5 of DRAM bandwidth at 3 bits) could see with that form.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <string>
#include <vector>

#include "bench_common.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace sqz_bench;

namespace {

#if defined(__x86_64__)
SQZ_AVX512_WARNINGS_OFF  // GCC bug 105593 (sqz/detail/cpu_features.hpp)
#define SQZ_CEILING_TARGET __attribute__((target("avx512f,avx512bw,avx512ifma,gfni,avx2,fma"), noinline))

enum class form { shift, load_index, ifma, mulhi, gfni, load_offset, ymm_load };
constexpr form all_forms[] = {form::shift, form::load_index, form::ifma, form::mulhi, form::gfni, form::load_offset, form::ymm_load};

const char* name(form f) {
    switch (f) {
        case form::shift: return "shift";
        case form::load_index: return "load_index";
        case form::ifma: return "ifma";
        case form::mulhi: return "mulhi";
        case form::gfni: return "gfni";
        case form::load_offset: return "load_offset";
        case form::ymm_load: return "ymm_load";
    }
    return "?";
}

constexpr int rows = 4;            // rows decoded together, sharing each x load (as the kernel)
constexpr int steps_per_chunk = 8;  // steps of 16 weights per 64-byte chunk of 4-bit index fields
constexpr int chunk_cycle = 8;      // the chunks cycle through 8 places in `codes`
// Bytes of codes a chunk of four rows spans: 64 per row, but 64 per step and row for load_index.
constexpr std::size_t chunk_span = rows * steps_per_chunk * 64;
constexpr std::size_t code_bytes = chunk_cycle * chunk_span + 64;  // 16 KB and the offset loads' overrun: in L1

/// `chunks` chunks of four rows, cycling through `codes` (code_bytes, in L1); returns the sum of all
/// products so that nothing can be optimized away. Steps per call: chunks * steps_per_chunk * rows.
template <form F>
SQZ_CEILING_TARGET float decode_zmm(long chunks, const std::uint8_t* codes, const float* x) {
    __m512 lut[rows];
    __m512 acc[rows][2];
    for (int r = 0; r < rows; ++r) {
        lut[r] = _mm512_set1_ps(0.5f + static_cast<float>(r));
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    }
    for (long c = 0; c < chunks; ++c) {
        const std::uint8_t* chunk = codes + (c % chunk_cycle) * chunk_span;
        __m512i index[rows], upper[rows];
        for (int r = 0; r < rows; ++r) {
            index[r] = _mm512_load_si512(chunk + 64 * r);
            __asm__("" : "+v"(index[r]));  // one load per chunk, as the kernel (no folding into each step)
            if constexpr (F == form::mulhi) upper[r] = _mm512_srli_epi32(index[r], 16);
        }
#pragma GCC unroll 8
        for (int m = 0; m < steps_per_chunk; ++m) {
            __m512 xv = _mm512_load_ps(x + 16 * m);
            __asm__("" : "+v"(xv));
#pragma GCC unroll 4
            for (int r = 0; r < rows; ++r) {
                __m512i i = index[r];
                if constexpr (F == form::shift) {
                    if (m > 0) i = _mm512_srli_epi32(index[r], 4 * m);
                } else if constexpr (F == form::load_index) {
                    i = _mm512_load_si512(chunk + 64 * (steps_per_chunk * r + m));
                } else if constexpr (F == form::ifma) {  // fields 1-4: the product's high bits (low dword's and high dword's)
                    if (m > 0 && m <= 4) i = _mm512_madd52hi_epu64(_mm512_setzero_si512(), index[r], _mm512_set1_epi64(1LL << (52 - 4 * m)));
                    else if (m > 4) i = _mm512_srli_epi32(index[r], 4 * m);
                } else if constexpr (F == form::mulhi) {
                    if (m > 0 && m < 4) i = _mm512_mulhi_epu16(index[r], _mm512_set1_epi16(static_cast<short>(1 << (16 - 4 * m))));
                    else if (m == 4) i = upper[r];
                    else if (m > 4) i = _mm512_mulhi_epu16(upper[r], _mm512_set1_epi16(static_cast<short>(1 << (16 - 4 * (m - 4)))));
                } else if constexpr (F == form::gfni) {
                    // Output bit k of each byte = input bit k + 4 (matrix row k, in byte 7 - k).
                    constexpr long long high_nibble_down = 0x1020408000000000LL;
                    if (m >= 2) i = _mm512_srli_epi32(index[r], 8 * (m / 2));
                    if (m % 2 == 1) i = _mm512_gf2p8affine_epi64_epi8(i, _mm512_set1_epi64(high_nibble_down), 0);
                } else if constexpr (F == form::load_offset) {
                    if (m >= 2) i = _mm512_loadu_si512(chunk + 64 * r + m / 2);
                    if (m % 2 == 1) i = _mm512_srli_epi32(i, 4);
                }
                acc[r][m & 1] = _mm512_fmadd_ps(_mm512_permutexvar_ps(i, lut[r]), xv, acc[r][m & 1]);
            }
        }
    }
    float sum = 0;
    for (int r = 0; r < rows; ++r) sum += _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
    return sum;
}

/// The 256-bit form: 8 weights per vpermps, two of them per step of 16.
SQZ_CEILING_TARGET float decode_ymm_loads(long chunks, const std::uint8_t* codes, const float* x) {
    __m256 lut[rows];
    __m256 acc[rows][2];
    for (int r = 0; r < rows; ++r) {
        lut[r] = _mm256_set1_ps(0.5f + static_cast<float>(r));
        acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    }
    for (long c = 0; c < chunks; ++c) {
        const std::uint8_t* chunk = codes + (c % chunk_cycle) * chunk_span;
#pragma GCC unroll 16
        for (int h = 0; h < 2 * steps_per_chunk; ++h) {  // half steps of 8 weights
            __m256 xv = _mm256_load_ps(x + 8 * h);
            __asm__("" : "+x"(xv));
#pragma GCC unroll 4
            for (int r = 0; r < rows; ++r) {
                // Half step h of row r: line 4r + h / 4, offset h % 4 (never across the line).
                const __m256i i = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(chunk + 64 * (4 * r + h / 4) + h % 4));
                acc[r][h & 1] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(lut[r], i), xv, acc[r][h & 1]);
            }
        }
    }
    float sum = 0;
    for (int r = 0; r < rows; ++r) {
        alignas(32) float lanes[8];
        _mm256_store_ps(lanes, _mm256_add_ps(acc[r][0], acc[r][1]));
        for (const float v : lanes) sum += v;
    }
    return sum;
}

float decode(form f, long chunks, const std::uint8_t* codes, const float* x) {
    switch (f) {
        case form::shift: return decode_zmm<form::shift>(chunks, codes, x);
        case form::load_index: return decode_zmm<form::load_index>(chunks, codes, x);
        case form::ifma: return decode_zmm<form::ifma>(chunks, codes, x);
        case form::mulhi: return decode_zmm<form::mulhi>(chunks, codes, x);
        case form::gfni: return decode_zmm<form::gfni>(chunks, codes, x);
        case form::load_offset: return decode_zmm<form::load_offset>(chunks, codes, x);
        case form::ymm_load: return decode_ymm_loads(chunks, codes, x);
    }
    return 0;
}
SQZ_AVX512_WARNINGS_ON
#endif

}  // namespace

int main(int argc, char** argv) {
    int threads = 0;
    bool json = false;
    const int status = parse_arguments(argc, argv, "sqz-bench-exact-ceiling", "sqz-bench-exact-ceiling [--threads N] [--json]",
                                       [&](const std::string& arg, auto& next) {
                                           if (arg == "--threads") threads = parse_number<int>(next(), "--threads", 0, 1024);
                                           else if (arg == "--json") json = true;
                                           else return false;
                                           return true;
                                       });
    if (status >= 0) return status;
#if defined(__x86_64__)
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") || !__builtin_cpu_supports("avx512ifma") ||
        !__builtin_cpu_supports("gfni")) {
        std::printf("sqz-bench-exact-ceiling: this CPU lacks AVX-512 F/BW/IFMA or GFNI; nothing measured\n");
        return 0;
    }
    threads = resolve_threads(threads);
    alignas(64) static std::uint8_t codes[code_bytes];
    for (std::size_t i = 0; i < sizeof codes; ++i) codes[i] = static_cast<std::uint8_t>((i * 2654435761u) >> 24);
    alignas(64) static float x[16 * steps_per_chunk];
    for (std::size_t i = 0; i < std::size(x); ++i) x[i] = 1e-3f * static_cast<float>(i);

    constexpr long chunks = 4'000'000;  // 128 M steps per thread: ~50 ms per form
    constexpr double steps = static_cast<double>(chunks) * steps_per_chunk * rows;
    constexpr double bytes_per_step = 16 * 3 / 8.0;  // 16 weights of 3 bits
    dram_probe probe = dram_probe::for_cache(last_level_cache_bytes());
    const int rounds = 3;
    std::vector<double> best(std::size(all_forms), 1e30);
    double dram_gbps = 0;
    volatile float sink = 0;
    for (int round = 0; round < rounds; ++round) {  // rounds interleave the forms and the probe
        dram_gbps = std::max(dram_gbps, probe.measure(threads));
        for (std::size_t f = 0; f < std::size(all_forms); ++f) {
            double slowest = 0;
            float sum = 0;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads) reduction(max : slowest) reduction(+ : sum)
#endif
            {
                const auto start = clock_type::now();
                sum += decode(all_forms[f], chunks, codes, x);
                slowest = std::max(slowest, seconds_since(start));
            }
            sink = sink + sum;
            best[f] = std::min(best[f], slowest);
        }
    }
    const double shift_ns = best[0] / steps * 1e9;
    if (!json) std::printf("%-12s %12s %10s %13s %12s\n", "form", "ns_per_step", "vs_shift", "ceiling_GB/s", "bw_fraction");
    for (std::size_t f = 0; f < std::size(all_forms); ++f) {
        const double ns = best[f] / steps * 1e9;
        const double ceiling = threads * bytes_per_step / ns;
        if (json)
            std::printf("{\"form\":\"%s\",\"threads\":%d,\"ns_per_step\":%.4f,\"vs_shift\":%.3f,\"ceiling_gbps\":%.2f,"
                        "\"dram_gbps\":%.2f,\"bw_fraction\":%.3f}\n",
                        name(all_forms[f]), threads, ns, ns / shift_ns, ceiling, dram_gbps, ceiling / dram_gbps);
        else
            std::printf("%-12s %12.4f %10.3f %13.2f %12.3f\n", name(all_forms[f]), ns, ns / shift_ns, ceiling, ceiling / dram_gbps);
    }
    if (!json) std::printf("threads %d, DRAM probe %.2f GB/s, 3-bit codes (6 bytes per step of 16 weights)\n", threads, dram_gbps);
#else
    (void)threads;
    (void)json;
    std::printf("sqz-bench-exact-ceiling: x86-64 only; nothing measured\n");
#endif
    return 0;
}
