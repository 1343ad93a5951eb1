// sqz/half.hpp - IEEE binary16 (fp16) and bfloat16 conversions, as raw 16-bit patterns.
//
// Checkpoints store weights as F16 or BF16 and sqz can keep codebooks in fp16. These portable scalar
// conversions round to nearest, ties to even, keep NaN a NaN (quiet), and handle infinities and
// subnormals, so results do not depend on the CPU's F16C support.
#pragma once

#include <bit>
#include <cstdint>

namespace sqz {

/// Converts a float to the nearest binary16 bit pattern (ties to even; overflow gives infinity).
constexpr std::uint16_t float_to_half_bits(float value) noexcept {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
    const std::uint32_t sign = (bits >> 16) & 0x8000u;
    const std::uint32_t magnitude = bits & 0x7fffffffu;
    if (magnitude >= 0x7f800000u) {  // Inf or NaN
        const bool is_nan = magnitude > 0x7f800000u;
        return static_cast<std::uint16_t>(sign | 0x7c00u | (is_nan ? (0x0200u | ((magnitude >> 13) & 0x3ffu)) : 0u));
    }
    if (magnitude >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds to >= 65520
    if (magnitude >= 0x38800000u) {  // normal half: exponent >= -14
        // Re-bias the exponent (127 -> 15) and round the 13 dropped mantissa bits to nearest even.
        const std::uint32_t rebased = magnitude - 0x38000000u;
        const std::uint32_t round = 0xfffu + ((rebased >> 13) & 1u);
        return static_cast<std::uint16_t>(sign | ((rebased + round) >> 13));
    }
    if (magnitude < 0x33000000u) return static_cast<std::uint16_t>(sign);  // below half the smallest subnormal
    // Subnormal half: value = m * 2^-24 with m = round(mantissa_with_implicit_one >> shift).
    const std::uint32_t exponent = magnitude >> 23;
    const std::uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126u - exponent;  // 14..24 for exponents -25..-15
    const std::uint32_t kept = mantissa >> shift;
    const std::uint32_t remainder = mantissa & ((1u << shift) - 1u);
    const std::uint32_t halfway = 1u << (shift - 1u);
    const std::uint32_t rounded = kept + ((remainder > halfway || (remainder == halfway && (kept & 1u))) ? 1u : 0u);
    return static_cast<std::uint16_t>(sign | rounded);
}

/// Converts a binary16 bit pattern to float (exact: every half is a float).
constexpr float half_bits_to_float(std::uint16_t half) noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(half & 0x8000u) << 16;
    const std::uint32_t exponent = (half >> 10) & 0x1fu;
    std::uint32_t mantissa = half & 0x3ffu;
    if (exponent == 0x1fu) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
    if (exponent != 0) return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
    if (mantissa == 0) return std::bit_cast<float>(sign);
    // Subnormal: normalise the mantissa.
    std::uint32_t e = 113u;
    while ((mantissa & 0x400u) == 0) {
        mantissa <<= 1;
        --e;
    }
    return std::bit_cast<float>(sign | (e << 23) | ((mantissa & 0x3ffu) << 13));
}

/// Converts a float to the nearest bfloat16 bit pattern (ties to even; NaN stays NaN).
constexpr std::uint16_t float_to_bfloat16_bits(float value) noexcept {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40u);
    const std::uint32_t round = 0x7fffu + ((bits >> 16) & 1u);
    return static_cast<std::uint16_t>((bits + round) >> 16);
}

/// Converts a bfloat16 bit pattern to float (exact).
constexpr float bfloat16_bits_to_float(std::uint16_t value) noexcept {
    return std::bit_cast<float>(static_cast<std::uint32_t>(value) << 16);
}

/// Rounds a float to the nearest value representable in binary16.
constexpr float round_to_half(float value) noexcept { return half_bits_to_float(float_to_half_bits(value)); }

/// Rounds a float to the nearest value representable in bfloat16.
constexpr float round_to_bfloat16(float value) noexcept {
    return bfloat16_bits_to_float(float_to_bfloat16_bits(value));
}

}  // namespace sqz
