#pragma once
// Non-blocking stream sockets on the event loop: every call tries the system call first and
// waits for readiness only on EAGAIN, so a busy connection costs one syscall per transfer.

#include "io/task.hpp"
#include "util/result.hpp"

#include <cstdint>
#include <span>
#include <string>

namespace fleece::io {

// Owns a file descriptor; closes it on destruction.
class FileDescriptor {
  public:
    FileDescriptor() = default;
    explicit FileDescriptor(int fd) : fd_(fd) {}
    FileDescriptor(FileDescriptor&& o) noexcept : fd_(o.release()) {}
    FileDescriptor& operator=(FileDescriptor&& o) noexcept;
    ~FileDescriptor() { reset(); }
    int get() const { return fd_; }
    int release() {
        int fd = fd_;
        fd_ = -1;
        return fd;
    }
    void reset(int fd = -1);
    explicit operator bool() const { return fd_ >= 0; }

  private:
    int fd_ = -1;
};

// Reads at most buf.size() bytes; 0 means end of stream; -errno on error.
Task<std::int64_t> read_some(int fd, std::span<std::byte> buf);
// Reads exactly buf.size() bytes; returns 0, -ECONNRESET on early EOF, or -errno.
Task<int> read_exact(int fd, std::span<std::byte> buf);
// Writes all of buf; returns 0 or -errno.
Task<int> write_all(int fd, std::span<const std::byte> buf);
// Writes all parts, in order, with as few system calls as the socket allows (sendmsg with
// one iovec per part); returns 0 or -errno. At most max_gather_parts parts.
inline constexpr std::size_t max_gather_parts = 128;
Task<int> write_all_gather(int fd, std::span<const std::span<const std::byte>> parts);
// Accepts one connection (non-blocking, close-on-exec); returns the fd or -errno.
Task<int> accept(int listen_fd);

// Listening sockets. A unix socket path is unlinked first if it is a stale socket.
Result<FileDescriptor> listen_unix(const std::string& path, unsigned mode = 0600);
Result<FileDescriptor> listen_tcp(const std::string& host, const std::string& port);
Result<FileDescriptor> connect_unix(const std::string& path);
void set_nonblocking(int fd);

} // namespace fleece::io
