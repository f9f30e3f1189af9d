#include "io/event_loop.hpp"

#include "util/assert.hpp"
#include "util/log.hpp"

#include <array>

namespace fleece::io {

namespace {
thread_local EventLoop* t_current = nullptr;

struct DetachedTask {
    struct promise_type {
        DetachedTask get_return_object() noexcept {
            return {std::coroutine_handle<promise_type>::from_promise(*this)};
        }
        std::suspend_always initial_suspend() noexcept { return {}; }
        std::suspend_never final_suspend() noexcept { return {}; }
        void return_void() noexcept {}
        void unhandled_exception() noexcept {}
    };
    std::coroutine_handle<promise_type> handle;
};

DetachedTask run_detached(Task<void> task) {
    try {
        co_await std::move(task);
    } catch (const std::exception& e) {
        log::error("unhandled exception in background task: {}", e.what());
    } catch (...) {
        log::error("unhandled non-standard exception in background task");
    }
}
} // namespace

namespace detail {
// Frame recycling: size classes of 64 bytes up to 4 KiB, a bounded free list each.
namespace {
constexpr std::size_t frame_class_bytes = 64;
constexpr std::size_t frame_classes = 64;
constexpr std::size_t frame_cache_depth = 256;
struct FrameCache {
    std::array<std::vector<void*>, frame_classes> free_lists;
    ~FrameCache() {
        for (auto& list : free_lists)
            for (void* p : list)
                ::operator delete(p);
    }
};
thread_local FrameCache t_frames;
std::size_t frame_class(std::size_t size) {
    return (size + frame_class_bytes - 1) / frame_class_bytes;
}
} // namespace

void* allocate_frame(std::size_t size) {
    const std::size_t c = frame_class(size);
    if (c < frame_classes) {
        auto& list = t_frames.free_lists[c];
        if (!list.empty()) {
            void* p = list.back();
            list.pop_back();
            return p;
        }
        return ::operator new(c* frame_class_bytes);
    }
    return ::operator new(size);
}

void free_frame(void* p, std::size_t size) noexcept {
    const std::size_t c = frame_class(size);
    if (c < frame_classes) {
        auto& list = t_frames.free_lists[c];
        if (list.size() < frame_cache_depth) {
            list.push_back(p);
            return;
        }
    }
    ::operator delete(p);
}
} // namespace detail

EventLoop::EventLoop(BackendKind kind) {
    FLEECE_ASSERT(t_current == nullptr);
    t_current = this;
    if (kind != BackendKind::threads) backend_ = make_uring_backend(*this);
    if (!backend_) {
        if (kind == BackendKind::io_uring)
            log::warn("io_uring requested but unavailable; using the thread-pool backend");
        backend_ = make_thread_backend(*this);
    }
}

EventLoop::~EventLoop() {
    // Let queued work run so detached tasks can observe shutdown and free their frames.
    // Never block here: only finish what is already runnable or completing.
    for (int i = 0; i < 1000 && (!ready_.empty() || backend_->in_flight() > 0); ++i) {
        run_foreign();
        run_ready();
        backend_->wait(ready_.empty() && backend_->in_flight() > 0 ? 1000000 : 0);
    }
    backend_.reset();
    t_current = nullptr;
}

EventLoop& EventLoop::current() {
    FLEECE_ASSERT(t_current != nullptr);
    return *t_current;
}

void EventLoop::post_from_thread(std::function<void()> fn) {
    {
        std::lock_guard<std::mutex> guard(foreign_mutex_);
        foreign_.push_back(std::move(fn));
    }
    backend_->wakeup();
}

void EventLoop::spawn(Task<void> task) {
    post(run_detached(std::move(task)).handle);
}

void EventLoop::run() {
    stop_requested_ = false;
    while (!stop_requested_)
        turn();
}

void EventLoop::turn() {
    // Wait first, run last: callers check their exit condition right after the coroutines
    // ran, so a finished run_until_complete() never blocks in the kernel.
    fire_timers();
    backend_->wait(ready_.empty() ? next_timeout_ns() : 0);
    run_foreign();
    fire_timers();
    run_ready();
}

void EventLoop::run_ready() {
    // Only what is ready now: coroutines posted while running wait for the next turn, so
    // I/O completions and timers are never starved by a busy coroutine chain.
    std::size_t n = ready_.size();
    while (n-- > 0 && !ready_.empty()) {
        std::coroutine_handle<> h = ready_.front();
        ready_.pop_front();
        h.resume();
    }
}

void EventLoop::run_foreign() {
    std::vector<std::function<void()>> batch;
    {
        std::lock_guard<std::mutex> guard(foreign_mutex_);
        batch.swap(foreign_);
    }
    for (auto& fn : batch)
        fn();
}

void EventLoop::fire_timers() {
    if (timers_.empty()) return; // no clock read on the (common) turn without timers
    const auto now = Clock::now();
    while (!timers_.empty() && timers_.begin()->deadline <= now) {
        TimerEntry e = *timers_.begin();
        timers_.erase(timers_.begin());
        *e.expired_flag = true;
        post(e.waiter);
    }
}

std::int64_t EventLoop::next_timeout_ns() const {
    if (timers_.empty()) return -1;
    const auto d = timers_.begin()->deadline - Clock::now();
    return std::max<std::int64_t>(0,
                                  std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
}

EventLoop::TimerHandle EventLoop::add_timer(Clock::time_point deadline,
                                            std::coroutine_handle<> waiter, bool* expired) {
    return timers_.insert(TimerEntry{deadline, timer_seq_++, waiter, expired}).first;
}

void EventLoop::cancel_timer(TimerHandle it) {
    TimerEntry e = *it;
    timers_.erase(it);
    *e.expired_flag = false;
    post(e.waiter);
}

Task<void> sleep_for(Clock::duration d) {
    EventLoop::Timer timer(EventLoop::current());
    co_await timer.wait_for(d);
}

} // namespace fleece::io
