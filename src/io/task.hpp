#pragma once
// Task<T>: a lazily started C++20 coroutine that returns T to whoever co_awaits it.
//
// Rules (see docs/architecture.md):
//  - A Task starts when awaited and resumes its awaiter by symmetric transfer when done,
//    so chains of awaits use no stack and no scheduler round trip.
//  - Coroutines are named functions that take parameters by value. Capturing lambdas must
//    never be coroutines: their captures die with the lambda object, not the frame.
//  - Detached work is started with EventLoop::spawn(); it owns its arguments.

#include "util/assert.hpp"

#include <coroutine>
#include <cstddef>
#include <exception>
#include <new>
#include <optional>
#include <type_traits>
#include <utility>

namespace fleece::io {

template <class T = void> class Task;

namespace detail {

// Coroutine frames are allocated per request on the data path; recycle them per thread
// instead of going to malloc each time.
void* allocate_frame(std::size_t size);
void free_frame(void* p, std::size_t size) noexcept;

class PromiseBase {
  public:
    static void* operator new(std::size_t size) { return allocate_frame(size); }
    static void operator delete(void* p, std::size_t size) noexcept { free_frame(p, size); }

    std::suspend_always initial_suspend() noexcept { return {}; }

    struct FinalAwaiter {
        bool await_ready() noexcept { return false; }
        template <class P>
        std::coroutine_handle<> await_suspend(std::coroutine_handle<P> h) noexcept {
            std::coroutine_handle<> next = h.promise().continuation_;
            return next ? next : std::noop_coroutine();
        }
        void await_resume() noexcept {}
    };
    FinalAwaiter final_suspend() noexcept { return {}; }
    void unhandled_exception() noexcept { exception_ = std::current_exception(); }

    void set_continuation(std::coroutine_handle<> c) { continuation_ = c; }

  protected:
    void rethrow_if_failed() {
        if (exception_) std::rethrow_exception(exception_);
    }

  private:
    std::coroutine_handle<> continuation_;
    std::exception_ptr exception_;
};

template <class T> class Promise final : public PromiseBase {
  public:
    Task<T> get_return_object() noexcept;
    template <class U>
    requires std::is_convertible_v<U&&, T>
    void return_value(U&& value) { value_.emplace(std::forward<U>(value)); }
    T take_result() {
        rethrow_if_failed();
        FLEECE_ASSERT(value_.has_value());
        return std::move(*value_);
    }

  private:
    std::optional<T> value_;
};

template <> class Promise<void> final : public PromiseBase {
  public:
    Task<void> get_return_object() noexcept;
    void return_void() noexcept {}
    void take_result() { rethrow_if_failed(); }
};

} // namespace detail

template <class T> class [[nodiscard]] Task {
  public:
    using promise_type = detail::Promise<T>;
    using handle_type = std::coroutine_handle<promise_type>;

    Task() = default;
    explicit Task(handle_type h) : h_(h) {}
    Task(Task&& other) noexcept : h_(std::exchange(other.h_, {})) {}
    Task& operator=(Task&& other) noexcept {
        if (this != &other) {
            destroy();
            h_ = std::exchange(other.h_, {});
        }
        return *this;
    }
    Task(const Task&) = delete;
    Task& operator=(const Task&) = delete;
    ~Task() { destroy(); }

    bool valid() const { return static_cast<bool>(h_); }

    auto operator co_await() && noexcept {
        struct Awaiter {
            handle_type h;
            bool await_ready() const noexcept { return false; }
            std::coroutine_handle<> await_suspend(std::coroutine_handle<> awaiting) noexcept {
                h.promise().set_continuation(awaiting);
                return h;
            }
            T await_resume() { return h.promise().take_result(); }
        };
        FLEECE_ASSERT(h_);
        return Awaiter{h_};
    }

  private:
    void destroy() {
        if (h_) {
            h_.destroy();
            h_ = {};
        }
    }
    handle_type h_;
};

namespace detail {
template <class T> Task<T> Promise<T>::get_return_object() noexcept {
    return Task<T>(std::coroutine_handle<Promise<T>>::from_promise(*this));
}
inline Task<void> Promise<void>::get_return_object() noexcept {
    return Task<void>(std::coroutine_handle<Promise<void>>::from_promise(*this));
}
} // namespace detail

} // namespace fleece::io
