#pragma once
// Stream: a byte stream over a connected socket, either plain or wrapped in TLS, so a
// protocol (the NBD server) reads and writes the same way before and after STARTTLS.
// One reader and any number of writers serialised by the caller may use it at once.

#include "io/socket.hpp"
#include "io/task.hpp"

#include <cstddef>
#include <span>

namespace fleece::io {

class Stream {
  public:
    virtual ~Stream() = default;
    // Exactly buf.size() bytes; 0, -ECONNRESET on early end of stream, or -errno.
    virtual Task<int> read_exact(std::span<std::byte> buf) = 0;
    // All of buf; 0 or -errno.
    virtual Task<int> write_all(std::span<const std::byte> buf) = 0;
};

// The socket itself (not owned: the connection keeps the descriptor).
class SocketStream final : public Stream {
  public:
    explicit SocketStream(int fd) : fd_(fd) {}
    Task<int> read_exact(std::span<std::byte> buf) override { return io::read_exact(fd_, buf); }
    Task<int> write_all(std::span<const std::byte> buf) override { return io::write_all(fd_, buf); }

  private:
    int fd_;
};

} // namespace fleece::io
