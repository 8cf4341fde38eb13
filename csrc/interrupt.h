// Ctrl-C and SIGTERM during a long native call.
//
// Python runs signal handlers on the main thread only, between bytecodes: a native call that keeps the main
// thread for seconds (building an encoder from a huge tokenizer, encoding a large batch) would leave Ctrl-C and
// SIGTERM pending until it returns. Long loops therefore call `Interrupt::poll()` every unit of work (a document,
// a few thousand table entries). On the thread that made the call, at most every kCheckEvery, poll takes the GIL
// (pybind11 allows taking it inside a gil_scoped_release) and runs PyErr_CheckSignals(): when a handler raised
// (KeyboardInterrupt, or the exception pytrain's SIGTERM handler raises), every thread of the call stops at its
// next poll and the call raises that exception (`raise_if_stopped`, with the GIL held, after the workers have
// joined). Polls on other threads only read the flag, so they cost an atomic load.
//
// Loops deep inside one unit of work (the merges of one huge word, the added-token scan of one document) poll the
// Interrupt of the call their thread works for, `Interrupt::current()`, which `run_parallel` sets for each worker,
// every kPollStride iterations.
#pragma once

#include <pybind11/pybind11.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "parallel.h"

namespace pytrain {

class Interrupt {
  public:
    static constexpr std::chrono::milliseconds kCheckEvery{20};
    static constexpr size_t kPollStride = size_t{1} << 16;  // iterations of an inner loop between polls

    Interrupt() : caller_(std::this_thread::get_id()), next_(std::chrono::steady_clock::now() + kCheckEvery) {}
    Interrupt(const Interrupt&) = delete;
    Interrupt& operator=(const Interrupt&) = delete;

    // True once the call must stop (a signal handler raised). Any thread; GIL held or not.
    bool poll() {
        if (stop_.load(std::memory_order_relaxed)) return true;
        if (std::this_thread::get_id() != caller_) return false;
        const auto now = std::chrono::steady_clock::now();
        if (now < next_) return false;
        next_ = now + kCheckEvery;
        pybind11::gil_scoped_acquire gil;
        if (PyErr_CheckSignals() != 0) {  // the handler's exception stays set on this thread until raised
            stop_.store(true, std::memory_order_relaxed);
            return true;
        }
        return false;
    }

    bool stopped() const { return stop_.load(std::memory_order_relaxed); }

    // The Interrupt of the call this thread works for (nullptr outside run_parallel's workers).
    static Interrupt*& current() {
        thread_local Interrupt* interrupt = nullptr;
        return interrupt;
    }
    // For inner loops: poll the current call's Interrupt on every kPollStride-th `iteration`; true: stop.
    static bool poll_current(size_t iteration) {
        return iteration % kPollStride == 0 && current() != nullptr && current()->poll();
    }

    // With the GIL held, on the calling thread, after every worker has returned: raise the handler's exception.
    void raise_if_stopped() const {
        if (stopped()) throw pybind11::error_already_set();
    }

    // For a loop on the calling thread alone (no workers to wait for): raise at once when a handler raised.
    void check() {
        if (poll()) throw pybind11::error_already_set();
    }

  private:
    std::atomic<bool> stop_{false};
    const std::thread::id caller_;
    std::chrono::steady_clock::time_point next_;
};

// run_parallel (parallel.h) whose calling thread, once its own part fn(0) is done, keeps polling `interrupt` while
// it waits for the other workers, so a signal is noticed however the work is spread. fn polls it too.
template <class Fn>
void run_parallel(int workers, Interrupt& interrupt, Fn&& fn) {
    std::mutex mutex;
    std::condition_variable done;
    int running = workers - 1;
    run_parallel(workers, [&](int w) {
        struct Current {  // this thread works for `interrupt` until fn(w) ends
            explicit Current(Interrupt* interrupt) { Interrupt::current() = interrupt; }
            ~Current() { Interrupt::current() = nullptr; }
        } current(&interrupt);
        if (w != 0) {
            struct Finished {  // counted however fn(w) ends, an exception included
                std::mutex& mutex;
                std::condition_variable& done;
                int& running;
                ~Finished() {
                    std::lock_guard<std::mutex> lock(mutex);
                    if (--running == 0) done.notify_one();
                }
            } finished{mutex, done, running};
            fn(w);
            return;
        }
        fn(0);
        std::unique_lock<std::mutex> lock(mutex);
        while (running > 0) {
            done.wait_for(lock, Interrupt::kCheckEvery);
            lock.unlock();
            interrupt.poll();
            lock.lock();
        }
    });
}

}  // namespace pytrain
