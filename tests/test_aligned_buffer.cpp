// The allocator behind the cpu back end's repacked codes: cache-line alignment, and from
// huge_page_bytes up the huge-page advice (Linux), checked in the kernel's own record of the mapping.
#include <sqz/detail/aligned_buffer.hpp>

#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace {

using sqz::detail::aligned_vector;
using sqz::detail::huge_page_bytes;

bool aligned_to(const void* p, std::size_t alignment) { return reinterpret_cast<std::uintptr_t>(p) % alignment == 0; }

template <class T>
void fill_pattern(std::vector<T, sqz::detail::aligned_allocator<T>>& v, std::size_t from) {
    for (std::size_t i = from; i < v.size(); ++i) v[i] = static_cast<T>(i * 2654435761u);
}

template <class T>
bool holds_pattern(const std::vector<T, sqz::detail::aligned_allocator<T>>& v, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i)
        if (v[i] != static_cast<T>(i * 2654435761u)) return false;
    return true;
}

/// The VmFlags of the mapping that holds `address`, from /proc/self/smaps (Linux); nullopt where there
/// is no such file. "hg" among them: madvise(MADV_HUGEPAGE) was given for it.
std::optional<std::string> mapping_flags(const void* address) {
    std::ifstream smaps("/proc/self/smaps");
    if (!smaps) return std::nullopt;
    const auto a = reinterpret_cast<std::uintptr_t>(address);
    bool inside = false;
    for (std::string line; std::getline(smaps, line);) {
        const auto dash = line.find('-');
        const auto space = line.find(' ');
        if (dash != std::string::npos && space != std::string::npos && dash < space &&
            line.find_first_not_of("0123456789abcdef") == dash) {  // "start-end perms ..." opens a mapping
            const std::uintptr_t start = std::stoull(line.substr(0, dash), nullptr, 16);
            const std::uintptr_t end = std::stoull(line.substr(dash + 1, space - dash - 1), nullptr, 16);
            inside = start <= a && a < end;
        } else if (inside && line.rfind("VmFlags:", 0) == 0) {
            return line.substr(8);
        }
    }
    return std::string{};
}

bool has_flag(const std::string& flags, const std::string& flag) {
    std::istringstream words(flags);
    for (std::string w; words >> w;)
        if (w == flag) return true;
    return false;
}

/// A huge_page_bytes-aligned address inside [p, p + bytes), if there is one.
const void* aligned_extent_inside(const void* p, std::size_t bytes) {
    const auto begin = reinterpret_cast<std::uintptr_t>(p);
    const std::uintptr_t first = (begin + huge_page_bytes - 1) / huge_page_bytes * huge_page_bytes;
    return first + huge_page_bytes <= begin + bytes ? reinterpret_cast<const void*>(first) : nullptr;
}

bool kernel_has_transparent_huge_pages() { return static_cast<bool>(std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled")); }

}  // namespace

TEST_CASE("aligned buffers: a cache line, contents kept, huge-page advice from 2 MiB", "[aligned_buffer]") {
    REQUIRE(huge_page_bytes == std::size_t{2} << 20);
    for (const std::size_t bytes : {std::size_t{1}, std::size_t{1000}, huge_page_bytes - 1, huge_page_bytes, 5 * huge_page_bytes + 12345}) {
        INFO("bytes " << bytes);
        aligned_vector<std::uint8_t> v(bytes);
        REQUIRE(aligned_to(v.data(), 64));
        fill_pattern(v, 0);
        REQUIRE(holds_pattern(v, v.size()));
        const aligned_vector<std::uint8_t> copy = v;
        REQUIRE(aligned_to(copy.data(), 64));
        REQUIRE(copy == v);
        // The whole 2 MiB extents inside a large buffer carry the advice; a 5 MiB buffer has at least one.
        if (bytes > 4 * huge_page_bytes && kernel_has_transparent_huge_pages()) {
            const void* extent = aligned_extent_inside(v.data(), bytes);
            REQUIRE(extent != nullptr);
            const auto flags = mapping_flags(extent);
            REQUIRE(flags.has_value());
            INFO("VmFlags:" << *flags);
            REQUIRE(has_flag(*flags, "hg"));
        }
    }
    // Growing across the threshold moves the contents; shrinking back frees each buffer with its
    // alignment (AddressSanitizer checks the pairing of new and delete).
    aligned_vector<std::int32_t> grown(1000);
    fill_pattern(grown, 0);
    grown.resize(huge_page_bytes);  // 8 MiB
    REQUIRE(aligned_to(grown.data(), 64));
    REQUIRE(holds_pattern(grown, 1000));
    fill_pattern(grown, 1000);
    REQUIRE(holds_pattern(grown, grown.size()));
    grown.resize(10);
    grown.shrink_to_fit();
    REQUIRE(holds_pattern(grown, 10));
}

TEST_CASE("huge-page advice covers only whole extents inside the range", "[aligned_buffer]") {
    // A range that holds no whole aligned extent asks for nothing, and advice on one that does leaves
    // its memory as it was (only the mapping's flags change).
    std::vector<std::uint8_t> small(huge_page_bytes / 2, 7);
    sqz::detail::advise_huge_pages(small.data(), small.size());
    REQUIRE(small == std::vector<std::uint8_t>(huge_page_bytes / 2, 7));
    std::vector<std::uint8_t> large(3 * huge_page_bytes, 9);
    sqz::detail::advise_huge_pages(large.data(), large.size());
    REQUIRE(large == std::vector<std::uint8_t>(3 * huge_page_bytes, 9));
    if (kernel_has_transparent_huge_pages()) {
        const void* extent = aligned_extent_inside(large.data(), large.size());
        REQUIRE(extent != nullptr);
        const auto flags = mapping_flags(extent);
        REQUIRE(flags.has_value());
        INFO("VmFlags:" << *flags);
        REQUIRE(has_flag(*flags, "hg"));
    }
}
