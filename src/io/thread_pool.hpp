#pragma once
// A bounded pool of worker threads for blocking work: file I/O in the fallback backend and
// CPU-heavy jobs (compression, hashing) through offload(). Results come back to the loop.

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace fleece::io {

class ThreadPool {
  public:
    explicit ThreadPool(std::size_t max_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    // Run `job` on a worker. Threads are started lazily up to max_threads.
    void execute(std::function<void()> job);

  private:
    void worker();

    std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<std::function<void()>> jobs_;
    std::vector<std::thread> threads_;
    std::size_t max_threads_;
    std::size_t idle_ = 0;
    bool stopping_ = false;
};

} // namespace fleece::io
