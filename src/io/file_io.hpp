#pragma once
// Awaitable system calls on the current EventLoop. Results are bytes (or 0) on success and
// -errno on failure, like io_uring's CQE result.

#include "io/event_loop.hpp"

#include <cstdint>
#include <span>

namespace fleece::io {

inline auto pread(int fd, std::span<std::byte> buf, std::uint64_t offset) {
    return EventLoop::current().io(
        IoOp{IoOpcode::read, fd, buf.data(), buf.size(), offset, 0, 0, {}});
}
inline auto pwrite(int fd, std::span<const std::byte> buf, std::uint64_t offset) {
    return EventLoop::current().io(IoOp{
        IoOpcode::write, fd, const_cast<std::byte*>(buf.data()), buf.size(), offset, 0, 0, {}});
}
inline auto fsync(int fd) {
    return EventLoop::current().io(IoOp{IoOpcode::fsync, fd, nullptr, 0, 0, 0, 0, {}});
}
inline auto fdatasync(int fd) {
    return EventLoop::current().io(IoOp{IoOpcode::fdatasync, fd, nullptr, 0, 0, 0, 0, {}});
}
inline auto fallocate(int fd, int mode, std::uint64_t offset, std::uint64_t length) {
    return EventLoop::current().io(
        IoOp{IoOpcode::fallocate, fd, nullptr, length, offset, mode, 0, {}});
}
// Wait until `fd` reports any of `events` (POLLIN, POLLOUT); returns revents or -errno.
inline auto poll(int fd, int events) {
    return EventLoop::current().io(IoOp{IoOpcode::poll, fd, nullptr, 0, 0, events, 0, {}});
}

// Full-length positional transfers: loop over short reads/writes. A read past EOF fills
// nothing and returns the bytes actually read.
Task<std::int64_t> pread_full(int fd, std::span<std::byte> buf, std::uint64_t offset);
Task<std::int64_t> pwrite_full(int fd, std::span<const std::byte> buf, std::uint64_t offset);

} // namespace fleece::io
