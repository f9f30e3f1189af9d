#pragma once
// Coroutine synchronisation for the single data-plane thread: WaitQueue, Event, AsyncMutex,
// AsyncSemaphore and Gate. All are FIFO. Wake-ups are posted to the loop rather than resumed
// inline, so a notifier never runs a waiter's code in the middle of its own critical section.
// None of these are thread-safe; they are not meant to be.

#include "io/event_loop.hpp"
#include "io/task.hpp"
#include "util/assert.hpp"

#include <coroutine>
#include <cstdint>
#include <utility>

namespace fleece::io {

namespace detail {
// Intrusive FIFO of suspended coroutines. Nodes live in the awaiters, i.e. in the frames.
struct WaitNode {
    std::coroutine_handle<> handle;
    WaitNode* next = nullptr;
    std::uint64_t amount = 0; // semaphore units wanted
};
class WaitList {
  public:
    bool empty() const { return head_ == nullptr; }
    WaitNode* front() const { return head_; }
    void push(WaitNode* n) {
        n->next = nullptr;
        if (tail_)
            tail_->next = n;
        else
            head_ = n;
        tail_ = n;
    }
    WaitNode* pop() {
        WaitNode* n = head_;
        if (n) {
            head_ = n->next;
            if (!head_) tail_ = nullptr;
        }
        return n;
    }

  private:
    WaitNode* head_ = nullptr;
    WaitNode* tail_ = nullptr;
};
} // namespace detail

// A list of coroutines waiting for "something changed"; waiters re-check their condition.
class WaitQueue {
  public:
    auto wait() {
        struct Awaiter {
            WaitQueue* q;
            detail::WaitNode node;
            bool await_ready() const noexcept { return false; }
            void await_suspend(std::coroutine_handle<> h) {
                node.handle = h;
                q->waiters_.push(&node);
            }
            void await_resume() const noexcept {}
        };
        return Awaiter{this, {}};
    }
    void notify_one() {
        if (auto* n = waiters_.pop()) EventLoop::current().post(n->handle);
    }
    void notify_all() {
        while (auto* n = waiters_.pop())
            EventLoop::current().post(n->handle);
    }
    bool empty() const { return waiters_.empty(); }

  private:
    detail::WaitList waiters_;
};

// A manual-reset event.
class Event {
  public:
    bool is_set() const { return set_; }
    void set() {
        set_ = true;
        queue_.notify_all();
    }
    void reset() { set_ = false; }
    Task<void> wait() {
        while (!set_)
            co_await queue_.wait();
    }

  private:
    WaitQueue queue_;
    bool set_ = false;
};

class AsyncMutex {
  public:
    class Guard {
      public:
        Guard() = default;
        explicit Guard(AsyncMutex* m) : m_(m) {}
        Guard(Guard&& o) noexcept : m_(std::exchange(o.m_, nullptr)) {}
        Guard& operator=(Guard&& o) noexcept {
            if (this != &o) {
                unlock();
                m_ = std::exchange(o.m_, nullptr);
            }
            return *this;
        }
        ~Guard() { unlock(); }
        void unlock() {
            if (m_) std::exchange(m_, nullptr)->unlock();
        }

      private:
        AsyncMutex* m_ = nullptr;
    };

    // co_await mutex.lock() -> Guard
    auto lock() {
        struct Awaiter {
            AsyncMutex* m;
            detail::WaitNode node;
            bool await_ready() noexcept {
                if (!m->locked_) {
                    m->locked_ = true;
                    return true;
                }
                return false;
            }
            void await_suspend(std::coroutine_handle<> h) {
                node.handle = h;
                m->waiters_.push(&node);
            }
            Guard await_resume() noexcept { return Guard(m); }
        };
        return Awaiter{this, {}};
    }
    bool try_lock() {
        if (locked_) return false;
        locked_ = true;
        return true;
    }
    bool locked() const { return locked_; }
    // Ownership passes directly to the first waiter, so a newcomer cannot barge in.
    void unlock() {
        FLEECE_ASSERT(locked_);
        if (auto* n = waiters_.pop())
            EventLoop::current().post(n->handle);
        else
            locked_ = false;
    }

  private:
    detail::WaitList waiters_;
    bool locked_ = false;
};

class AsyncSemaphore {
  public:
    explicit AsyncSemaphore(std::uint64_t units) : available_(units) {}

    class Units {
      public:
        Units() = default;
        Units(AsyncSemaphore* s, std::uint64_t n) : s_(s), n_(n) {}
        Units(Units&& o) noexcept : s_(std::exchange(o.s_, nullptr)), n_(o.n_) {}
        Units& operator=(Units&& o) noexcept {
            if (this != &o) {
                release();
                s_ = std::exchange(o.s_, nullptr);
                n_ = o.n_;
            }
            return *this;
        }
        ~Units() { release(); }
        void release() {
            if (s_) std::exchange(s_, nullptr)->release(n_);
        }
        // Keep the units taken; the owner returns them later with AsyncSemaphore::release.
        void detach() { s_ = nullptr; }

      private:
        AsyncSemaphore* s_ = nullptr;
        std::uint64_t n_ = 0;
    };

    // co_await sem.acquire(n) -> Units (FIFO: a large request is not starved by small ones)
    auto acquire(std::uint64_t n = 1) {
        struct Awaiter {
            AsyncSemaphore* s;
            detail::WaitNode node;
            bool await_ready() noexcept {
                if (s->waiters_.empty() && s->available_ >= node.amount) {
                    s->available_ -= node.amount;
                    return true;
                }
                return false;
            }
            void await_suspend(std::coroutine_handle<> h) {
                node.handle = h;
                s->waiters_.push(&node);
            }
            Units await_resume() noexcept { return Units(s, node.amount); }
        };
        Awaiter a{this, {}};
        a.node.amount = n;
        return a;
    }
    bool try_acquire(std::uint64_t n = 1) {
        if (!waiters_.empty() || available_ < n) return false;
        available_ -= n;
        return true;
    }
    void release(std::uint64_t n = 1) {
        available_ += n;
        while (auto* front = waiters_.front()) {
            if (front->amount > available_) break;
            available_ -= front->amount;
            EventLoop::current().post(waiters_.pop()->handle);
        }
    }
    std::uint64_t available() const { return available_; }

  private:
    detail::WaitList waiters_;
    std::uint64_t available_;
};

// A Gate tracks in-flight work for shutdown: enter() fails once close() started, and
// close() completes when everything that entered has left.
class Gate {
  public:
    class Holder {
      public:
        Holder() = default;
        explicit Holder(Gate* g) : g_(g) {}
        Holder(Holder&& o) noexcept : g_(std::exchange(o.g_, nullptr)) {}
        Holder& operator=(Holder&& o) noexcept {
            if (this != &o) {
                leave();
                g_ = std::exchange(o.g_, nullptr);
            }
            return *this;
        }
        ~Holder() { leave(); }
        explicit operator bool() const { return g_ != nullptr; }
        void leave() {
            if (g_) std::exchange(g_, nullptr)->leave();
        }

      private:
        Gate* g_ = nullptr;
    };

    // An empty Holder when the gate is closed.
    Holder enter() {
        if (closed_) return Holder();
        ++count_;
        return Holder(this);
    }
    bool closed() const { return closed_; }
    std::uint64_t count() const { return count_; }
    Task<void> close() {
        closed_ = true;
        while (count_ > 0)
            co_await drained_.wait();
    }

  private:
    void leave() {
        FLEECE_ASSERT(count_ > 0);
        if (--count_ == 0) drained_.notify_all();
    }
    WaitQueue drained_;
    std::uint64_t count_ = 0;
    bool closed_ = false;
};

} // namespace fleece::io
