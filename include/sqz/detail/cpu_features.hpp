// sqz/detail/cpu_features.hpp - run-time detection of the SIMD kernels the processor can run.
//
// sqz is header-only and must not require -mavx2 from its users, so the AVX2 kernels are compiled with
// __attribute__((target("avx2,fma,f16c"))) and chosen at run time with __builtin_cpu_supports (F16C
// decodes fp16 sparse values; every processor with AVX2 has it). The AVX-512 kernels likewise, with
// SQZ_AVX512_TARGET, chosen when cpu_has_avx512() says the processor and the operating system run
// them. Compilers or targets without that support (not x86-64 GCC/Clang) get the portable kernels only.
#pragma once

#include <cstring>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define SQZ_HAVE_X86_SIMD 1
#define SQZ_AVX2_TARGET __attribute__((target("avx2,fma,f16c")))
// For the small helpers that a kernel's inner loop is built from: they must be inlined into it.
#define SQZ_AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) inline
// AVX-512 F/VL/BW/DQ (512-bit and masked 256-bit forms), VBMI (vpermb) and VNNI (vpdpwssd); the
// AVX2 set too, since the AVX-512 kernels call AVX2 helpers (GCC and Clang 14 know these names).
#define SQZ_AVX512_TARGET \
    __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq,avx512vbmi,avx512vnni")))
#define SQZ_AVX512_INLINE                                                                                   \
    __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq,avx512vbmi,avx512vnni"), \
                   always_inline)) inline
// For a lambda inside a kernel (after its parameter list): lambdas do not inherit the target.
#define SQZ_AVX512_LAMBDA \
    __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq,avx512vbmi,avx512vnni"), always_inline))
#else
#define SQZ_HAVE_X86_SIMD 0
#define SQZ_AVX2_TARGET
#define SQZ_AVX2_INLINE inline
#define SQZ_AVX512_TARGET
#define SQZ_AVX512_INLINE inline
#define SQZ_AVX512_LAMBDA
#endif

// Fully unrolls a short fixed-count loop of a kernel, so that lane shifts and register indices become
// constants: GCC at -O2 (and Clang) otherwise keep some of them as loops, which made the AVX-512
// exact kernel 3x slower at -O2 than at -O3.
// (nvcc's front end knows neither pragma in host code: nothing there.)
#if defined(__CUDACC__)
#define SQZ_UNROLL
#elif defined(__clang__)
#define SQZ_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define SQZ_UNROLL _Pragma("GCC unroll 16")
#else
#define SQZ_UNROLL
#endif

// GCC 12's AVX-512 headers (GCC bug 105593) initialize the pass-through operand of many unmasked
// intrinsics from itself ("undefined"); -W(maybe-)uninitialized then fires inside them wherever they
// are inlined, and -Werror makes that an error in every program that includes sqz. Code using those
// intrinsics goes between these two (GCC honours them at the inlining site).
#if defined(__GNUC__) && !defined(__clang__)
#define SQZ_AVX512_WARNINGS_OFF \
    _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wuninitialized\"") \
        _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define SQZ_AVX512_WARNINGS_ON _Pragma("GCC diagnostic pop")
#else
#define SQZ_AVX512_WARNINGS_OFF
#define SQZ_AVX512_WARNINGS_ON
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

/// True when the AVX-512 kernels are compiled in, this processor has every extension they use
/// (AVX-512 F, VL, BW, DQ, VBMI, VNNI, besides AVX2+FMA+F16C) and the operating system saves the
/// opmask and zmm registers (XCR0 bits 1, 2, 5, 6, 7). Asked through CPUID and XGETBV directly, so the
/// answer does not depend on which names a compiler's __builtin_cpu_supports knows.
inline bool cpu_has_avx512() noexcept {
#if SQZ_HAVE_X86_SIMD
    static const bool supported = [] {
        if (!cpu_has_avx2_fma()) return false;
        unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
        if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0 || (ecx & bit_OSXSAVE) == 0) return false;
        unsigned xcr0_low = 0;  // XGETBV also writes the high half into EDX: a clobber
        __asm__("xgetbv" : "=a"(xcr0_low) : "c"(0) : "edx");
        constexpr unsigned zmm_state = 0xe6;  // SSE, AVX, opmask, zmm0-15 upper halves, zmm16-31
        if ((xcr0_low & zmm_state) != zmm_state) return false;
        if (__get_cpuid_max(0, nullptr) < 7) return false;
        __cpuid_count(7, 0, eax, ebx, ecx, edx);
        constexpr unsigned f = 1u << 16, dq = 1u << 17, bw = 1u << 30, vl = 1u << 31;  // leaf 7 EBX
        constexpr unsigned vbmi = 1u << 1, vnni = 1u << 11;                            // leaf 7 ECX
        return (ebx & (f | dq | bw | vl)) == (f | dq | bw | vl) && (ecx & (vbmi | vnni)) == (vbmi | vnni);
    }();
    return supported;
#else
    return false;
#endif
}

/// True on an Intel processor (CPUID leaf 0 vendor "GenuineIntel"): the kernels' code prefetch and
/// the 4-bit int8_tile form are chosen per vendor (cpu_kernels.hpp, cpu_matrix_view::intel_tuning).
inline bool cpu_is_intel() noexcept {
#if SQZ_HAVE_X86_SIMD
    static const bool intel = [] {
        unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
        if (__get_cpuid(0, &eax, &ebx, &ecx, &edx) == 0) return false;
        char vendor[12];  // EBX, EDX, ECX
        std::memcpy(vendor, &ebx, 4);
        std::memcpy(vendor + 4, &edx, 4);
        std::memcpy(vendor + 8, &ecx, 4);
        return std::memcmp(vendor, "GenuineIntel", sizeof vendor) == 0;
    }();
    return intel;
#else
    return false;
#endif
}

}  // namespace sqz::detail
