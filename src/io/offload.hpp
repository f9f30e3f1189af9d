#pragma once
// offload(fn): run CPU-heavy work (compression, hashing) on the shared bounded worker pool
// and resume on the loop with its result. The data-plane thread never blocks on it.

#include "io/event_loop.hpp"
#include "io/thread_pool.hpp"

#include <coroutine>
#include <functional>
#include <optional>
#include <type_traits>

namespace fleece::io {

ThreadPool& offload_pool();

template <class Fn> auto offload(Fn fn) {
    using R = std::invoke_result_t<Fn&>;
    static_assert(!std::is_void_v<R>, "offload() needs a function that returns a value");
    struct Awaiter {
        Fn fn;
        std::optional<R> result;
        bool await_ready() const noexcept { return false; }
        void await_suspend(std::coroutine_handle<> h) {
            EventLoop* loop = &EventLoop::current();
            offload_pool().execute([this, loop, h] {
                result.emplace(fn());
                loop->post_from_thread([loop, h] { loop->post(h); });
            });
        }
        R await_resume() { return std::move(*result); }
    };
    return Awaiter{std::move(fn), std::nullopt};
}

} // namespace fleece::io
