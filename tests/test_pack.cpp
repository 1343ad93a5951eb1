#include <sqz/pack.hpp>
#include <sqz/synthetic.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

namespace {

// Independent reference: writes the stream one bit at a time, exactly as the format is specified.
std::vector<std::uint8_t> pack_bit_by_bit(const std::vector<std::uint8_t>& codes, int bits) {
    std::vector<std::uint8_t> out((codes.size() * static_cast<std::size_t>(bits) + 7) / 8, 0);
    std::size_t stream_bit = 0;
    for (const auto code : codes)
        for (int b = 0; b < bits; ++b, ++stream_bit)
            if ((code >> b) & 1) out[stream_bit / 8] |= static_cast<std::uint8_t>(1u << (stream_bit % 8));
    return out;
}

std::vector<std::uint8_t> random_codes(std::size_t count, int bits, std::uint64_t seed) {
    sqz::synthetic::rng random(seed);
    std::vector<std::uint8_t> codes(count);
    for (auto& c : codes) c = static_cast<std::uint8_t>(random.below(1u << bits));
    return codes;
}

template <int Bits>
void check_compile_time_width() {
    for (std::size_t count = 0; count <= 300; ++count) {
        const auto codes = random_codes(count, Bits, 1000 * Bits + count);
        const auto packed = sqz::pack<Bits>(codes);
        REQUIRE(packed == pack_bit_by_bit(codes, Bits));
        REQUIRE(sqz::unpack<Bits>(packed, count) == codes);
    }
}

}  // namespace

TEST_CASE("packed_size is ceil(n * bits / 8)", "[pack]") {
    CHECK(sqz::packed_size(0, 3) == 0);
    CHECK(sqz::packed_size(1, 1) == 1);
    CHECK(sqz::packed_size(8, 1) == 1);
    CHECK(sqz::packed_size(9, 1) == 2);
    CHECK(sqz::packed_size(8, 3) == 3);
    CHECK(sqz::packed_size(11, 3) == 5);
    CHECK(sqz::packed_size(4096, 3) == 1536);
    CHECK(sqz::packed_size(7, 8) == 7);
    CHECK_THROWS_AS(sqz::packed_size(4, 0), sqz::error);
    CHECK_THROWS_AS(sqz::packed_size(4, 9), sqz::error);
}

TEST_CASE("a hand-packed 3-bit stream", "[pack]") {
    // 5 = 101b, 0, 7 = 111b, 3 = 011b, LSB first: byte 0 = 1100 0101b, byte 1 = 0000 0111b.
    const std::vector<std::uint8_t> codes{5, 0, 7, 3};
    const std::vector<std::uint8_t> expected{0xC5, 0x07};
    CHECK(sqz::pack<3>(codes) == expected);
    CHECK(sqz::pack(codes, 3) == expected);
    CHECK(sqz::unpack<3>(expected, 4) == codes);
    for (std::size_t i = 0; i < codes.size(); ++i) CHECK(sqz::packed_code(expected, 3, i) == codes[i]);
}

TEST_CASE("round trip for every width 1..8 and lengths 0..600 (run-time width)", "[pack]") {
    for (int bits = 1; bits <= 8; ++bits) {
        for (std::size_t count = 0; count <= 600; ++count) {
            const auto codes = random_codes(count, bits, 77 * static_cast<std::uint64_t>(bits) + count);
            const auto packed = sqz::pack(codes, bits);
            INFO("bits = " << bits << ", count = " << count);
            REQUIRE(packed.size() == sqz::packed_size(count, bits));
            REQUIRE(packed == pack_bit_by_bit(codes, bits));
            REQUIRE(sqz::unpack(packed, bits, count) == codes);
            for (std::size_t i = 0; i < count; i += 7) REQUIRE(sqz::packed_code(packed, bits, i) == codes[i]);
        }
    }
}

TEST_CASE("round trip for every width 1..8 (compile-time width)", "[pack]") {
    check_compile_time_width<1>();
    check_compile_time_width<2>();
    check_compile_time_width<3>();
    check_compile_time_width<4>();
    check_compile_time_width<5>();
    check_compile_time_width<6>();
    check_compile_time_width<7>();
    check_compile_time_width<8>();
}

TEST_CASE("the largest code of each width survives", "[pack]") {
    for (int bits = 1; bits <= 8; ++bits) {
        const std::vector<std::uint8_t> codes(67, static_cast<std::uint8_t>((1u << bits) - 1));
        CHECK(sqz::unpack(sqz::pack(codes, bits), bits, codes.size()) == codes);
    }
}

TEST_CASE("trailing bits are zero and ignored when reading", "[pack]") {
    const std::vector<std::uint8_t> codes{1, 1, 1};  // 3 bits of 8 used
    auto packed = sqz::pack<1>(codes);
    REQUIRE(packed == std::vector<std::uint8_t>{0x07});
    packed[0] |= 0xF0;  // garbage after the last code
    CHECK(sqz::unpack<1>(packed, 3) == codes);
}

TEST_CASE("codes out of range for the width are rejected", "[pack]") {
    CHECK_THROWS_WITH(sqz::pack<3>(std::vector<std::uint8_t>{1, 2, 8}),
                      Catch::Contains("code 8 at index 2") && Catch::Contains("3 bits"));
    CHECK_THROWS_AS(sqz::pack(std::vector<std::uint8_t>{2}, 1), sqz::error);
    CHECK_THROWS_AS(sqz::pack(std::vector<std::uint8_t>{255}, 7), sqz::error);
    CHECK_NOTHROW(sqz::pack(std::vector<std::uint8_t>{255}, 8));
}

TEST_CASE("invalid widths and buffer sizes are rejected", "[pack]") {
    const std::vector<std::uint8_t> codes{1, 2, 3};
    CHECK_THROWS_WITH(sqz::pack(codes, 0), Catch::Contains("bits = 0"));
    CHECK_THROWS_WITH(sqz::pack(codes, 9), Catch::Contains("bits = 9"));
    std::vector<std::uint8_t> wrong_size(5);
    CHECK_THROWS_WITH(sqz::pack(codes, 2, wrong_size), Catch::Contains("5 bytes"));
    const auto packed = sqz::pack(codes, 4);  // 2 bytes
    CHECK_THROWS_WITH(sqz::unpack(packed, 4, 5), Catch::Contains("packed buffer has 2 bytes, 3 are needed"));
    CHECK_THROWS_AS(sqz::unpack<4>(std::vector<std::uint8_t>{}, 1), sqz::error);
    std::vector<std::uint8_t> small_out(2);
    CHECK_THROWS_AS(sqz::unpack(packed, 4, 3, small_out), sqz::error);
    CHECK_THROWS_AS(sqz::unpack(packed, 0, 1), sqz::error);
}
