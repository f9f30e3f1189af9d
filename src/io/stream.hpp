#pragma once
// Stream: a byte stream over a connected socket, either plain or wrapped in TLS, so a
// protocol (the NBD server) reads and writes the same way before and after STARTTLS.
// One reader and any number of writers serialised by the caller may use it at once.

#include "io/socket.hpp"
#include "io/task.hpp"

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <memory>
#include <span>

namespace fleece::io {

class Stream {
  public:
    virtual ~Stream() = default;
    // Exactly buf.size() bytes; 0, -ECONNRESET on early end of stream, or -errno.
    virtual Task<int> read_exact(std::span<std::byte> buf) = 0;
    // All of buf; 0 or -errno.
    virtual Task<int> write_all(std::span<const std::byte> buf) = 0;
    // All parts in order (at most max_gather_parts); 0 or -errno. A reply header and its
    // payload go out in one system call where the stream can do that.
    virtual Task<int> write_gather(std::span<const std::span<const std::byte>> parts) {
        return write_parts_one_by_one(this, parts);
    }
    // From now on the stream may read more than asked and keep the rest for the next
    // read_exact (fewer system calls for small pipelined messages). Only once nothing else
    // (a TLS session taking over the socket) will read the socket behind our back.
    virtual void enable_read_ahead() {}

  private:
    static Task<int> write_parts_one_by_one(Stream* s,
                                            std::span<const std::span<const std::byte>> parts) {
        for (const auto& p : parts) {
            if (p.empty()) continue;
            if (const int r = co_await s->write_all(p); r < 0) co_return r;
        }
        co_return 0;
    }
};

// The socket itself (not owned: the connection keeps the descriptor).
class SocketStream final : public Stream {
  public:
    explicit SocketStream(int fd) : fd_(fd) {}
    Task<int> read_exact(std::span<std::byte> buf) override {
        if (!ahead_) return io::read_exact(fd_, buf);
        return read_exact_buffered(this, buf);
    }
    Task<int> write_all(std::span<const std::byte> buf) override { return io::write_all(fd_, buf); }
    Task<int> write_gather(std::span<const std::span<const std::byte>> parts) override {
        return io::write_all_gather(fd_, parts);
    }
    void enable_read_ahead() override {
        if (!ahead_) ahead_ = std::make_unique<std::byte[]>(read_ahead_size);
    }

  private:
    // Serves what was read ahead first. A small read (a request header) with nothing left
    // reads up to read_ahead_size_ bytes at once; a large one (a write's payload) goes
    // straight into the caller's buffer.
    static Task<int> read_exact_buffered(SocketStream* s, std::span<std::byte> buf) {
        std::size_t done = 0;
        while (done < buf.size()) {
            if (s->ahead_begin_ < s->ahead_end_) {
                const std::size_t n = std::min(buf.size() - done, s->ahead_end_ - s->ahead_begin_);
                std::memcpy(buf.data() + done, s->ahead_.get() + s->ahead_begin_, n);
                s->ahead_begin_ += n;
                done += n;
                continue;
            }
            if (buf.size() - done >= read_ahead_size) {
                const int r = co_await io::read_exact(s->fd_, buf.subspan(done));
                co_return r;
            }
            s->ahead_begin_ = s->ahead_end_ = 0;
            const std::int64_t n =
                co_await io::read_some(s->fd_, std::span(s->ahead_.get(), read_ahead_size));
            if (n <= 0) co_return n == 0 ? -ECONNRESET : static_cast<int>(n);
            s->ahead_end_ = static_cast<std::size_t>(n);
        }
        co_return 0;
    }

    static constexpr std::size_t read_ahead_size = 16 * 1024;
    int fd_;
    std::unique_ptr<std::byte[]> ahead_; // set once read-ahead is on
    std::size_t ahead_begin_ = 0;        // [ahead_begin_, ahead_end_) is not consumed yet
    std::size_t ahead_end_ = 0;
};

} // namespace fleece::io
