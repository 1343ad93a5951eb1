// Replaces the global operator new/delete of the I/O test program so that tests can check that
// malformed files never make the readers request memory in proportion to sizes the file only claims.
#include "io_test_support.hpp"

#include <atomic>
#include <cstdlib>
#include <new>

namespace {
std::atomic<int> watchers{0};
std::atomic<std::size_t> largest_request{0};
}  // namespace

namespace {
void* watched_malloc(std::size_t size) noexcept {
    if (watchers.load(std::memory_order_relaxed) > 0) {
        std::size_t seen = largest_request.load(std::memory_order_relaxed);
        while (size > seen && !largest_request.compare_exchange_weak(seen, size)) {
        }
    }
    return std::malloc(size == 0 ? 1 : size);
}
}  // namespace

// Every non-aligned form is replaced, so that all of them pair malloc with free (the sanitizers' own
// operator new would otherwise meet this free). The aligned forms stay the runtime's, as a pair.
void* operator new(std::size_t size) {
    if (void* p = watched_malloc(size)) return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t size) {
    if (void* p = watched_malloc(size)) return p;
    throw std::bad_alloc();
}
void* operator new(std::size_t size, const std::nothrow_t&) noexcept { return watched_malloc(size); }
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept { return watched_malloc(size); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace sqz_test {
allocation_watch::allocation_watch() {
    largest_request.store(0);
    watchers.fetch_add(1);
}
allocation_watch::~allocation_watch() { watchers.fetch_sub(1); }
std::size_t allocation_watch::largest() const { return largest_request.load(); }
}  // namespace sqz_test
