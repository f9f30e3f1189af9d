#include "io/thread_pool.hpp"

namespace fleece::io {

ThreadPool::ThreadPool(std::size_t max_threads) : max_threads_(max_threads) {}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> guard(mutex_);
        stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_)
        t.join();
}

void ThreadPool::execute(std::function<void()> job) {
    {
        std::lock_guard<std::mutex> guard(mutex_);
        jobs_.push_back(std::move(job));
        if (idle_ == 0 && threads_.size() < max_threads_)
            threads_.emplace_back([this] { worker(); });
    }
    cv_.notify_one();
}

void ThreadPool::worker() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (true) {
        ++idle_;
        cv_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
        --idle_;
        if (jobs_.empty()) return; // stopping and nothing left
        auto job = std::move(jobs_.front());
        jobs_.pop_front();
        lock.unlock();
        job();
        lock.lock();
    }
}

} // namespace fleece::io
