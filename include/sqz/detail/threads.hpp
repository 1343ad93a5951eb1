// sqz/detail/threads.hpp - OpenMP row loops that are deterministic and exception-safe.
//
// An exception must not escape an OpenMP parallel region (that calls std::terminate), so
// parallel_for catches it inside, finishes or skips the remaining iterations, and rethrows the exception
// of the lowest failing index after the loop. With dynamic scheduling every index below a failing one has
// already been started, so the error reported does not depend on the number of threads.
#pragma once

#include <Eigen/Core>

#include <atomic>
#include <exception>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace sqz::detail {

/// Number of threads a request stands for: requested > 0 as given, otherwise OpenMP's default (1 without
/// OpenMP).
inline int resolve_threads(int requested) noexcept {
#ifdef _OPENMP
    return requested > 0 ? requested : omp_get_max_threads();
#else
    (void)requested;
    return 1;
#endif
}

/// Calls body(i, thread) for i in [0, count) on `threads` threads (thread in [0, threads), for per-thread
/// scratch). Iterations must be independent; per-iteration results must be written to per-index slots.
template <class Body>
void parallel_for(Eigen::Index count, int threads, Body&& body) {
    const int team = resolve_threads(threads);
    std::exception_ptr error;
    Eigen::Index error_index = count;
    std::atomic<Eigen::Index> lowest_failure{count};
#ifdef _OPENMP
#pragma omp parallel for num_threads(team) schedule(dynamic, 1)
#endif
    for (Eigen::Index i = 0; i < count; ++i) {
        if (i > lowest_failure.load(std::memory_order_relaxed)) continue;
#ifdef _OPENMP
        const int thread = omp_get_thread_num();
#else
        const int thread = 0;
#endif
        try {
            body(i, thread);
        } catch (...) {
#ifdef _OPENMP
#pragma omp critical(sqz_parallel_for_error)
#endif
            {
                if (i < error_index) {
                    error_index = i;
                    error = std::current_exception();
                    lowest_failure.store(i, std::memory_order_relaxed);
                }
            }
        }
    }
    (void)team;
    if (error) std::rethrow_exception(error);
}

}  // namespace sqz::detail
