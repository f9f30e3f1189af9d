#pragma once
// The kernel-facing half of the event loop. A Backend executes IoOps asynchronously and
// reports completions back to the loop; the loop owns timers, the run queue and coroutines.
//
// Two implementations: io_uring (the default) and a thread pool plus poll(2) (used
// automatically when io_uring is unavailable, e.g. blocked by a seccomp profile).

#include <coroutine>
#include <cstdint>
#include <memory>
#include <string_view>

namespace fleece::io {

enum class IoOpcode : std::uint8_t { read, write, fsync, fdatasync, fallocate, poll };

// One asynchronous system call. Lives in the awaiting coroutine's frame until completion.
struct IoOp {
    IoOpcode opcode = IoOpcode::read;
    int fd = -1;
    void* buffer = nullptr;
    std::uint64_t length = 0;
    std::uint64_t offset = 0;
    int mode = 0;            // fallocate mode, or poll event mask
    std::int64_t result = 0; // bytes / revents, or -errno
    std::coroutine_handle<> waiter;
};

class EventLoop;

class Backend {
  public:
    virtual ~Backend() = default;
    virtual std::string_view name() const = 0;
    // Queue an operation. Its completion sets op->result and posts op->waiter on the loop.
    virtual void submit(IoOp* op) = 0;
    // Push queued submissions to the kernel and wait up to timeout_ns for completions
    // (0 = do not block, -1 = no limit). Completed waiters are posted to the loop.
    virtual void wait(std::int64_t timeout_ns) = 0;
    // Interrupt a blocking wait(); safe from any thread.
    virtual void wakeup() = 0;
    // Operations submitted and not completed yet.
    virtual std::size_t in_flight() const = 0;
};

enum class BackendKind { automatic, io_uring, threads };

std::unique_ptr<Backend> make_uring_backend(EventLoop& loop); // nullptr when unavailable
std::unique_ptr<Backend> make_thread_backend(EventLoop& loop);

} // namespace fleece::io
