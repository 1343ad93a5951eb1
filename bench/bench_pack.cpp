// Throughput of canonical packing and unpacking for every width, side by side in one run.
//
//   sqz-bench-pack [--json]
#include <sqz/pack.hpp>
#include <sqz/synthetic.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

namespace {

template <class F>
double best_seconds(F&& run, int repeats) {
    double best = 1e30;
    for (int r = 0; r < repeats; ++r) {
        const auto start = std::chrono::steady_clock::now();
        run();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    return best;
}

}  // namespace

int main(int argc, char** argv) {
    const bool json = argc > 1 && std::strcmp(argv[1], "--json") == 0;
    const std::size_t count = std::size_t{1} << 24;  // 16 Mi codes
    sqz::synthetic::rng random(1);
    if (!json) std::printf("%5s %14s %14s\n", "bits", "pack Mcode/s", "unpack Mcode/s");
    for (int bits = 1; bits <= 8; ++bits) {
        std::vector<std::uint8_t> codes(count);
        for (auto& c : codes) c = static_cast<std::uint8_t>(random.below(1u << bits));
        std::vector<std::uint8_t> packed(sqz::packed_size(count, bits));
        std::vector<std::uint8_t> back(count);
        const double pack_s = best_seconds([&] { sqz::pack(codes, bits, packed); }, 5);
        const double unpack_s = best_seconds([&] { sqz::unpack(packed, bits, count, back); }, 5);
        if (back != codes) {
            std::fprintf(stderr, "sqz-bench-pack: round trip failed at %d bits\n", bits);
            return 1;
        }
        const double pack_rate = static_cast<double>(count) / pack_s / 1e6;
        const double unpack_rate = static_cast<double>(count) / unpack_s / 1e6;
        if (json)
            std::printf("{\"bench\":\"pack\",\"bits\":%d,\"codes\":%zu,\"pack_mcodes_per_s\":%.1f,"
                        "\"unpack_mcodes_per_s\":%.1f}\n",
                        bits, count, pack_rate, unpack_rate);
        else
            std::printf("%5d %14.1f %14.1f\n", bits, pack_rate, unpack_rate);
    }
    return 0;
}
