// Thread-count resolution and a fork-join helper over std::thread.
//
// Every parallel routine in this extension splits its input into `workers` contiguous parts whose outputs land
// in fixed places, so results never depend on the worker count or on scheduling.
#pragma once

#include <algorithm>
#include <cstddef>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace pytrain {

// The worker count for `requested` threads (0 = one per hardware thread), capped at `useful` (the number of parts
// worth a thread of their own; at least 1) and at kOversubscription workers per hardware thread: a few per core
// can hide page-fault latency on a cold mmap, thousands only cost thread start-ups. Results never depend on the
// count. Throws std::invalid_argument (ValueError in Python) when `requested` is negative.
inline constexpr size_t kOversubscription = 8;

inline int resolve_threads(int requested, size_t useful) {
    if (requested < 0) {
        throw std::invalid_argument("threads must be >= 0 (0 means one per CPU core), got " +
                                    std::to_string(requested));
    }
    // asked once: glibc answers by reading /sys on every call, which the per-layer kernels would pay per call
    static const size_t cores = std::max(1u, std::thread::hardware_concurrency());
    const size_t n = requested > 0 ? std::min(static_cast<size_t>(requested), kOversubscription * cores) : cores;
    return static_cast<int>(std::min(n, std::max<size_t>(useful, 1)));
}

// Runs fn(0) .. fn(workers - 1), fn(0) on the calling thread, and rethrows the first worker exception (by
// worker index) after all have finished. fn must not touch Python objects: callers release the GIL around this.
template <class Fn>
void run_parallel(int workers, Fn&& fn) {
    if (workers <= 1) {
        fn(0);
        return;
    }
    std::vector<std::exception_ptr> errors(workers);
    std::vector<std::thread> pool;
    pool.reserve(workers - 1);
    try {
        for (int w = 1; w < workers; ++w) {
            pool.emplace_back([&fn, &errors, w] {
                try {
                    fn(w);
                } catch (...) {
                    errors[w] = std::current_exception();
                }
            });
        }
        fn(0);
    } catch (...) {
        errors[0] = std::current_exception();
    }
    for (std::thread& t : pool) t.join();
    for (const std::exception_ptr& e : errors) {
        if (e) std::rethrow_exception(e);
    }
}

// Even split of [0, total) into `parts` ranges: part i is [split_point(total, parts, i), split_point(.., i + 1)).
inline size_t split_point(size_t total, int parts, int i) {
    const size_t n = static_cast<size_t>(parts), k = static_cast<size_t>(i);
    return total / n * k + total % n * k / n;  // floor(total * k / n) without overflowing total * k
}

}  // namespace pytrain
