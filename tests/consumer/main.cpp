// Compiled against an installed (find_package) or embedded (add_subdirectory) sqz: proves that the
// exported target carries the include path, C++20 and Eigen, and that the umbrella header compiles.
#include <sqz/sqz.hpp>

#include <cstdio>
#include <vector>

int main() {
    const std::vector<std::uint8_t> codes{5, 0, 7, 3, 1, 6, 2, 4, 7};
    const auto packed = sqz::pack<3>(codes);
    const auto back = sqz::unpack<3>(packed, codes.size());
    if (packed.size() != sqz::packed_size(codes.size(), 3) || back != codes) {
        std::puts("sqz consumer: pack/unpack round trip failed");
        return 1;
    }
    std::printf("sqz %s consumer: %zu codes packed into %zu bytes\n", sqz::version_string, codes.size(),
                packed.size());
    return 0;
}
