// sqz/detail/cpu_features.hpp - run-time detection of the SIMD kernels the processor can run.
//
// sqz is header-only and must not require -mavx2 from its users, so the AVX2 kernels are compiled with
// __attribute__((target("avx2,fma,f16c"))) and chosen at run time with __builtin_cpu_supports (F16C
// decodes fp16 sparse values; every processor with AVX2 has it). Compilers or
// targets without that support (not x86-64 GCC/Clang) get the portable kernels only.
#pragma once

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define SQZ_HAVE_X86_SIMD 1
#define SQZ_AVX2_TARGET __attribute__((target("avx2,fma,f16c")))
// For the small helpers that a kernel's inner loop is built from: they must be inlined into it.
#define SQZ_AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) inline
#else
#define SQZ_HAVE_X86_SIMD 0
#define SQZ_AVX2_TARGET
#define SQZ_AVX2_INLINE inline
#endif

namespace sqz::detail {

/// True when the AVX2 + FMA (+ F16C) kernels are compiled in and this processor runs them.
inline bool cpu_has_avx2_fma() noexcept {
#if SQZ_HAVE_X86_SIMD
    static const bool supported = [] {
        __builtin_cpu_init();
        // F16C is CPUID leaf 1, ECX bit 29, asked directly: Clang's __builtin_cpu_supports does not know
        // "f16c" (Clang 14 rejects the whole header with it).
        unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
        const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
    }();
    return supported;
#else
    return false;
#endif
}

}  // namespace sqz::detail
