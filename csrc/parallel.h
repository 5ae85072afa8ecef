// The one parallel-for of the native core (as hnswlib's ParallelFor): std::thread workers taking chunks
// of an index range from an atomic counter, the caller working too, the first exception rethrown.
// Every threaded loop in csrc/ goes through it. No Python here.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace imgsim {

// Threads to use for `items` independent items: threads <= 0 means every core, never more than items.
inline size_t thread_count(int threads, size_t items) {
    size_t t = threads > 0 ? static_cast<size_t>(threads) : std::thread::hardware_concurrency();
    if (t == 0) t = 1;
    return std::max<size_t>(1, std::min(t, items));
}

// f(begin, end, tid) over [0, n) in chunks of `grain`, handed out in order to `threads` threads
// (tid < threads; the caller is tid 0). Chunks go to whichever thread is free, so uneven work
// (dense clusters, queries that fall back to a scan) balances itself. A thread that cannot be started
// leaves its share to the others. After an exception no new chunk starts; the first one is rethrown.
template <class F>
void parallel_for(size_t n, size_t threads, size_t grain, F&& f) {
    grain = std::max<size_t>(grain, 1);
    if (n == 0) return;
    threads = std::min(threads, (n + grain - 1) / grain);
    if (threads <= 1) {
        f(size_t{0}, n, size_t{0});
        return;
    }
    std::atomic<size_t> next{0};
    std::exception_ptr err;
    std::mutex err_mu;
    auto worker = [&](size_t tid) {
        try {
            for (;;) {
                const size_t b = next.fetch_add(grain);
                if (b >= n) break;
                f(b, std::min(n, b + grain), tid);
            }
        } catch (...) {
            std::lock_guard<std::mutex> lk(err_mu);
            if (!err) err = std::current_exception();
            next.store(n);
        }
    };
    std::vector<std::thread> pool;
    pool.reserve(threads - 1);
    for (size_t t = 1; t < threads; ++t) {
        try {
            pool.emplace_back(worker, t);
        } catch (const std::system_error&) {
            break;  // out of threads: the ones running (and the caller) take the remaining chunks
        }
    }
    worker(0);
    for (auto& th : pool) th.join();
    if (err) std::rethrow_exception(err);
}

}  // namespace imgsim
