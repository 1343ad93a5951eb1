// Packs 3-bit codes of a 4096 x 4096 matrix into the canonical format and back, and prints sizes.
//
//   sqz-example-pack [bits]
#include <sqz/sqz.hpp>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

int main(int argc, char** argv) try {
    const int bits = argc > 1 ? std::stoi(argv[1]) : 3;
    const std::size_t rows = 4096, cols = 4096;
    sqz::synthetic::rng random(2023);
    std::vector<std::uint8_t> codes(rows * cols);
    for (auto& c : codes) c = static_cast<std::uint8_t>(random.below(std::uint64_t{1} << bits));

    const auto packed = sqz::pack(codes, bits);
    const auto unpacked = sqz::unpack(packed, bits, codes.size());
    const bool same = unpacked == codes;
    std::printf("sqz %s: %zu x %zu codes of %d bits\n", sqz::version_string, rows, cols, bits);
    std::printf("  one byte per code : %10zu bytes\n", codes.size());
    std::printf("  canonical packing : %10zu bytes (%.2f bits per code)\n", packed.size(),
                8.0 * static_cast<double>(packed.size()) / static_cast<double>(codes.size()));
    std::printf("  fp16 weights      : %10zu bytes (%.2fx larger than the packed codes)\n", codes.size() * 2,
                2.0 * static_cast<double>(codes.size()) / static_cast<double>(packed.size()));
    std::printf("  round trip        : %s\n", same ? "exact" : "MISMATCH");
    return same ? EXIT_SUCCESS : EXIT_FAILURE;
} catch (const std::exception& e) {
    std::fprintf(stderr, "sqz-example-pack: %s\n", e.what());
    return EXIT_FAILURE;
}
