// sqz/detail/aligned_buffer.hpp - std::vector storage aligned for SIMD loads, large buffers on huge pages.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace sqz::detail {

/// A transparent huge page on x86-64 Linux. Buffers of at least this many bytes ask the kernel for huge
/// pages. A matrix's codes are read as one long stream, and on 4 KB pages a stream misses the TLB every
/// 4 KB and, likely, loses the hardware prefetcher at every page boundary (there are no performance
/// counters here to tell). On the Zen 4 machine of docs/benchmarks.md a plain streaming read ran 15-28%
/// faster on huge pages, the products 2-5% faster (idle host).
inline constexpr std::size_t huge_page_bytes = std::size_t{2} << 20;

/// Asks for transparent huge pages for the whole huge_page_bytes extents inside [p, p + bytes) (the
/// kernel maps only aligned extents with huge pages). Only advice, given before the pages are first
/// written: where transparent huge pages are off ("never") or this is not Linux, nothing changes.
inline void advise_huge_pages([[maybe_unused]] void* p, [[maybe_unused]] std::size_t bytes) noexcept {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const auto begin = reinterpret_cast<std::uintptr_t>(p);
    const std::uintptr_t first = (begin + huge_page_bytes - 1) / huge_page_bytes * huge_page_bytes;
    const std::uintptr_t end = (begin + bytes) / huge_page_bytes * huge_page_bytes;
    if (first < end) (void)::madvise(reinterpret_cast<void*>(first), end - first, MADV_HUGEPAGE);
#endif
}

/// Allocator returning memory aligned to `Alignment` bytes (a cache line by default), so SIMD kernels
/// can use aligned loads on every row of a repacked layout; buffers of huge_page_bytes and more on
/// huge pages where the system has them. (Not aligned to a huge page themselves: with every buffer
/// starting on a 2 MiB boundary, the 4-bit exact product ran 5-8% slower from DRAM, huge pages or not.)
template <class T, std::size_t Alignment = 64>
struct aligned_allocator {
    using value_type = T;
    static constexpr std::align_val_t alignment{Alignment};

    aligned_allocator() noexcept = default;
    template <class U>
    aligned_allocator(const aligned_allocator<U, Alignment>&) noexcept {}

    template <class U>
    struct rebind {
        using other = aligned_allocator<U, Alignment>;
    };

    T* allocate(std::size_t count) {
        // std::vector never asks for more than max_size() elements, so the product does not overflow.
        void* p = ::operator new(count * sizeof(T), alignment);
        if (count * sizeof(T) >= huge_page_bytes) advise_huge_pages(p, count * sizeof(T));
        return static_cast<T*>(p);
    }
    void deallocate(T* pointer, std::size_t) noexcept { ::operator delete(pointer, alignment); }

    template <class U>
    bool operator==(const aligned_allocator<U, Alignment>&) const noexcept {
        return true;
    }
};

template <class T>
using aligned_vector = std::vector<T, aligned_allocator<T>>;

}  // namespace sqz::detail
