// sqz/detail/aligned_buffer.hpp - std::vector storage aligned for 256-bit SIMD loads.
#pragma once

#include <cstddef>
#include <new>
#include <vector>

namespace sqz::detail {

/// Allocator returning memory aligned to `Alignment` bytes (a cache line by default), so SIMD kernels
/// can use aligned loads on every row of a repacked layout.
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

    T* allocate(std::size_t count) { return static_cast<T*>(::operator new(count * sizeof(T), alignment)); }
    void deallocate(T* pointer, std::size_t) noexcept { ::operator delete(pointer, alignment); }

    template <class U>
    bool operator==(const aligned_allocator<U, Alignment>&) const noexcept {
        return true;
    }
};

template <class T>
using aligned_vector = std::vector<T, aligned_allocator<T>>;

}  // namespace sqz::detail
