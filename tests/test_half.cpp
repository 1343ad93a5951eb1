#include <sqz/half.hpp>

#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

namespace {

// Independent reference: the nearest binary16 value by exhaustive search over all finite halves,
// decoded with the closed form (-1)^s * 2^(e-15) * (1 + m/1024) (or 2^-14 * m/1024 when subnormal).
double decode_closed_form(std::uint16_t h) {
    const int sign = (h >> 15) ? -1 : 1;
    const int e = (h >> 10) & 0x1f;
    const int m = h & 0x3ff;
    if (e == 0) return sign * std::ldexp(m / 1024.0, -14);
    return sign * std::ldexp(1.0 + m / 1024.0, e - 15);
}

}  // namespace

TEST_CASE("every finite half decodes to its closed form and encodes back", "[half]") {
    for (std::uint32_t h = 0; h <= 0xffff; ++h) {
        const auto bits = static_cast<std::uint16_t>(h);
        if (((bits >> 10) & 0x1f) == 0x1f) continue;
        const float value = sqz::half_bits_to_float(bits);
        REQUIRE(static_cast<double>(value) == decode_closed_form(bits));
        REQUIRE(sqz::float_to_half_bits(value) == bits);
    }
}

TEST_CASE("float to half rounds to nearest, ties to even", "[half]") {
    // Midpoints between consecutive halves go to the even mantissa.
    for (std::uint16_t h : {std::uint16_t{0x3c00}, std::uint16_t{0x3c01}, std::uint16_t{0x0001}, std::uint16_t{0x0200},
                            std::uint16_t{0x7bfe}}) {
        const double a = decode_closed_form(h);
        const double b = decode_closed_form(static_cast<std::uint16_t>(h + 1));
        const auto midpoint = static_cast<float>((a + b) / 2);
        const std::uint16_t even = (h & 1) == 0 ? h : static_cast<std::uint16_t>(h + 1);
        CHECK(sqz::float_to_half_bits(midpoint) == even);
        CHECK(sqz::float_to_half_bits(std::nextafter(midpoint, 0.0f)) == h);
        CHECK(sqz::float_to_half_bits(std::nextafter(midpoint, 1e9f)) == static_cast<std::uint16_t>(h + 1));
    }
}

TEST_CASE("half special values", "[half]") {
    const float inf = std::numeric_limits<float>::infinity();
    CHECK(sqz::float_to_half_bits(inf) == 0x7c00);
    CHECK(sqz::float_to_half_bits(-inf) == 0xfc00);
    CHECK(sqz::float_to_half_bits(65504.0f) == 0x7bff);
    CHECK(sqz::float_to_half_bits(65519.0f) == 0x7bff);
    CHECK(sqz::float_to_half_bits(65520.0f) == 0x7c00);
    CHECK(sqz::float_to_half_bits(1e10f) == 0x7c00);
    CHECK(sqz::float_to_half_bits(-0.0f) == 0x8000);
    CHECK(sqz::float_to_half_bits(1e-10f) == 0x0000);
    CHECK(std::isnan(sqz::half_bits_to_float(sqz::float_to_half_bits(std::numeric_limits<float>::quiet_NaN()))));
    CHECK(std::isinf(sqz::half_bits_to_float(0x7c00)));
    CHECK(sqz::half_bits_to_float(0x0001) == std::ldexp(1.0f, -24));
}

TEST_CASE("bfloat16 conversions", "[half]") {
    CHECK(sqz::float_to_bfloat16_bits(1.0f) == 0x3f80);
    CHECK(sqz::bfloat16_bits_to_float(0x3f80) == 1.0f);
    CHECK(sqz::bfloat16_bits_to_float(0xc040) == -3.0f);
    // 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties to even gives 1.0.
    CHECK(sqz::round_to_bfloat16(1.0f + std::ldexp(1.0f, -8)) == 1.0f);
    CHECK(sqz::round_to_bfloat16(1.0f + 3 * std::ldexp(1.0f, -8)) == 1.015625f);
    CHECK(std::isnan(sqz::bfloat16_bits_to_float(sqz::float_to_bfloat16_bits(std::numeric_limits<float>::quiet_NaN()))));
    // Every bf16 pattern that is not NaN round-trips.
    for (std::uint32_t b = 0; b <= 0xffff; ++b) {
        const auto bits = static_cast<std::uint16_t>(b);
        const float value = sqz::bfloat16_bits_to_float(bits);
        if (std::isnan(value)) continue;
        REQUIRE(sqz::float_to_bfloat16_bits(value) == bits);
    }
}
