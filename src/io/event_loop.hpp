#pragma once
// EventLoop: the single data-plane thread. It owns the run queue of coroutines, the timers
// and an I/O Backend. Everything in the block graph runs on it, so the graph needs no locks:
// code between two co_awaits is atomic with respect to every other request.

#include "io/backend.hpp"
#include "io/task.hpp"

#include <chrono>
#include <coroutine>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string_view>
#include <vector>

namespace fleece::io {

using Clock = std::chrono::steady_clock;

class EventLoop {
  public:
    explicit EventLoop(BackendKind kind = BackendKind::automatic);
    ~EventLoop();
    EventLoop(const EventLoop&) = delete;
    EventLoop& operator=(const EventLoop&) = delete;

    // The loop running on this thread (the one constructed here). Asserts there is one.
    static EventLoop& current();

    std::string_view backend_name() const { return backend_->name(); }
    Backend& backend() { return *backend_; }

    // Resume `h` on a later turn of the loop. Loop thread only.
    void post(std::coroutine_handle<> h) { ready_.push_back(h); }
    // Run `fn` on the loop thread; safe from any thread.
    void post_from_thread(std::function<void()> fn);
    // Start a detached task on a later turn. Exceptions escaping it are logged.
    void spawn(Task<void> task);

    // Run until stop() is called.
    void run();
    void stop() { stop_requested_ = true; }
    // Run the loop until `task` completes and return its result (tests and main()).
    template <class T> T run_until_complete(Task<T> task);

    // Awaitables -----------------------------------------------------------------------
    struct SleepAwaiter;
    class Timer;
    auto yield() {
        struct Awaiter {
            EventLoop* loop;
            bool await_ready() const noexcept { return false; }
            void await_suspend(std::coroutine_handle<> h) { loop->post(h); }
            void await_resume() const noexcept {}
        };
        return Awaiter{this};
    }
    // Submit one system call and suspend until it completes; returns result or -errno.
    auto io(IoOp op) {
        struct Awaiter {
            EventLoop* loop;
            IoOp op;
            bool await_ready() const noexcept { return false; }
            void await_suspend(std::coroutine_handle<> h) {
                op.waiter = h;
                loop->backend_->submit(&op);
            }
            std::int64_t await_resume() const noexcept { return op.result; }
        };
        return Awaiter{this, op};
    }

    // Timer registration (used by Timer).
    struct TimerEntry {
        Clock::time_point deadline;
        std::uint64_t seq;
        std::coroutine_handle<> waiter;
        bool* expired_flag;
        bool operator<(const TimerEntry& o) const {
            return deadline != o.deadline ? deadline < o.deadline : seq < o.seq;
        }
    };
    using TimerHandle = std::set<TimerEntry>::iterator;
    TimerHandle add_timer(Clock::time_point deadline, std::coroutine_handle<> waiter,
                          bool* expired);
    void cancel_timer(TimerHandle it); // resumes the waiter with expired=false

    std::size_t pending_timers() const { return timers_.size(); }

  private:
    void turn();
    void run_ready();
    void fire_timers();
    void run_foreign();
    std::int64_t next_timeout_ns() const;

    std::unique_ptr<Backend> backend_;
    std::deque<std::coroutine_handle<>> ready_;
    std::set<TimerEntry> timers_;
    std::uint64_t timer_seq_ = 0;
    std::mutex foreign_mutex_;
    std::vector<std::function<void()>> foreign_;
    bool stop_requested_ = false;
};

// A one-shot, cancellable timer: `co_await timer.wait_until(t)` returns true when the
// deadline passed, false when cancel() woke it early.
class EventLoop::Timer {
  public:
    explicit Timer(EventLoop& loop) : loop_(loop) {}
    Timer(const Timer&) = delete;
    ~Timer() { FLEECE_ASSERT(!armed_); }

    auto wait_until(Clock::time_point deadline) {
        struct Awaiter {
            Timer* t;
            Clock::time_point deadline;
            bool await_ready() const noexcept { return deadline <= Clock::now(); }
            void await_suspend(std::coroutine_handle<> h) {
                t->expired_ = false;
                t->cancelled_ = false;
                t->armed_ = true;
                t->handle_ = t->loop_.add_timer(deadline, h, &t->expired_);
            }
            bool await_resume() noexcept {
                if (t->armed_) {
                    t->armed_ = false;
                    return t->expired_;
                }
                return true; // deadline already passed, never armed
            }
        };
        return Awaiter{this, deadline};
    }
    auto wait_for(Clock::duration d) { return wait_until(Clock::now() + d); }
    bool armed() const { return armed_; }
    // Idempotent: the waiter may be resumed later than cancel() returns, and a second
    // cancel() in between must not touch the already erased entry.
    void cancel() {
        if (!armed_ || expired_ || cancelled_) return;
        cancelled_ = true;
        loop_.cancel_timer(handle_);
    }

  private:
    EventLoop& loop_;
    TimerHandle handle_{};
    bool expired_ = false;
    bool armed_ = false;
    bool cancelled_ = false;
};

// co_await sleep_for(loop, 10ms);
Task<void> sleep_for(Clock::duration d);

namespace detail {
template <class T>
Task<void> capture_result(Task<T> task, std::optional<T>* out, std::exception_ptr* error,
                          bool* done) {
    try {
        out->emplace(co_await std::move(task));
    } catch (...) {
        *error = std::current_exception();
    }
    *done = true;
}
inline Task<void> capture_void(Task<void> task, std::exception_ptr* error, bool* done) {
    try {
        co_await std::move(task);
    } catch (...) {
        *error = std::current_exception();
    }
    *done = true;
}
} // namespace detail

template <class T> T EventLoop::run_until_complete(Task<T> task) {
    bool done = false;
    std::exception_ptr error;
    if constexpr (std::is_void_v<T>) {
        spawn(detail::capture_void(std::move(task), &error, &done));
        while (!done)
            turn();
        if (error) std::rethrow_exception(error);
    } else {
        std::optional<T> out;
        spawn(detail::capture_result<T>(std::move(task), &out, &error, &done));
        while (!done)
            turn();
        if (error) std::rethrow_exception(error);
        return std::move(*out);
    }
}

} // namespace fleece::io
