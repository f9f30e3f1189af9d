#include "io/socket.hpp"

#include "io/file_io.hpp"
#include "util/assert.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

namespace fleece::io {

FileDescriptor& FileDescriptor::operator=(FileDescriptor&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
}

void FileDescriptor::reset(int fd) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
}

void set_nonblocking(int fd) {
    const int flags = ::fcntl(fd, F_GETFL);
    ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

Task<std::int64_t> read_some(int fd, std::span<std::byte> buf) {
    while (true) {
        const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
        if (n >= 0) co_return n;
        if (errno == EINTR) continue;
        if (errno == ENOTSOCK) {
            const ssize_t r = ::read(fd, buf.data(), buf.size());
            if (r >= 0) co_return r;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK) co_return -errno;
        const std::int64_t p = co_await poll(fd, POLLIN);
        if (p < 0) co_return p;
    }
}

Task<int> read_exact(int fd, std::span<std::byte> buf) {
    std::size_t done = 0;
    while (done < buf.size()) {
        const std::int64_t n = co_await read_some(fd, buf.subspan(done));
        if (n < 0) co_return static_cast<int>(n);
        if (n == 0) co_return -ECONNRESET;
        done += static_cast<std::size_t>(n);
    }
    co_return 0;
}

Task<int> write_all(int fd, std::span<const std::byte> buf) {
    const std::span<const std::byte> parts[1] = {buf};
    co_return co_await write_all_gather(fd, parts);
}

Task<int> write_all_gather(int fd, std::span<const std::span<const std::byte>> parts) {
    FLEECE_ASSERT(parts.size() <= max_gather_parts);
    iovec iov[max_gather_parts];
    std::size_t count = 0;
    for (const auto& p : parts) {
        if (p.empty()) continue;
        iov[count].iov_base = const_cast<std::byte*>(p.data());
        iov[count].iov_len = p.size();
        ++count;
    }
    std::size_t first = 0; // iov[first..count) is still to send
    while (first < count) {
        msghdr msg{};
        msg.msg_iov = iov + first;
        msg.msg_iovlen = count - first;
        const ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (n >= 0) {
            auto left = static_cast<std::size_t>(n);
            while (first < count && left >= iov[first].iov_len)
                left -= iov[first++].iov_len;
            if (left > 0) {
                iov[first].iov_base = static_cast<std::byte*>(iov[first].iov_base) + left;
                iov[first].iov_len -= left;
            }
            continue;
        }
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) co_return -errno;
        const std::int64_t p = co_await poll(fd, POLLOUT);
        if (p < 0) co_return static_cast<int>(p);
        if (p & (POLLERR | POLLHUP)) co_return -EPIPE;
    }
    co_return 0;
}

Task<int> accept(int listen_fd) {
    while (true) {
        const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) co_return fd;
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) co_return -errno;
        const std::int64_t p = co_await poll(listen_fd, POLLIN);
        if (p < 0) co_return static_cast<int>(p);
        if (p & (POLLERR | POLLHUP | POLLNVAL)) co_return -ECONNABORTED;
    }
}

namespace {
Result<sockaddr_un> unix_address(const std::string& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof addr.sun_path)
        return make_error(fmt::format("socket path '{}' is too long (max {} bytes)", path,
                                      sizeof addr.sun_path - 1));
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    return addr;
}
// Whether something accepts connections on the unix socket at `addr` (a connect that does
// not fail with ECONNREFUSED: a full backlog, EAGAIN, also means a live listener).
bool unix_socket_is_live(const sockaddr_un& addr) {
    FileDescriptor probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!probe) return false;
    const int r = ::connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
    return r == 0 || errno == EAGAIN || errno == EINPROGRESS;
}
} // namespace

Result<FileDescriptor> listen_unix(const std::string& path, unsigned mode) {
    auto addr = unix_address(path);
    if (!addr) return addr.error();
    FileDescriptor fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) return make_error(fmt::format("socket: {}", std::strerror(errno)));
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
        // A socket file left by a process killed with SIGKILL has nobody listening: remove it.
        // One that accepts connections belongs to a live process and is left alone.
        if (unix_socket_is_live(*addr))
            return make_error(fmt::format(
                "Failed to bind socket to {}: another process is listening on it", path));
        ::unlink(path.c_str());
    }
    // Create the socket owner-only from the start; widen afterwards if asked.
    const mode_t old_mask = ::umask(0077);
    const int r = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof(sockaddr_un));
    const int bind_errno = errno;
    ::umask(old_mask);
    if (r < 0)
        return make_error(
            fmt::format("Failed to bind socket to {}: {}", path, std::strerror(bind_errno)));
    if (mode != 0600) ::chmod(path.c_str(), mode);
    if (::listen(fd.get(), 128) < 0)
        return make_error(fmt::format("listen on {}: {}", path, std::strerror(errno)));
    return fd;
}

Result<FileDescriptor> listen_tcp(const std::string& host, const std::string& port) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    addrinfo* list = nullptr;
    const int gai =
        ::getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &list);
    if (gai != 0)
        return make_error(
            fmt::format("address resolution failed for {}:{}: {}", host, port, gai_strerror(gai)));
    std::string last_error = "no address";
    for (addrinfo* ai = list; ai; ai = ai->ai_next) {
        FileDescriptor fd(
            ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
        if (!fd) continue;
        const int one = 1;
        ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd.get(), 128) == 0) {
            ::freeaddrinfo(list);
            return fd;
        }
        last_error = std::strerror(errno);
    }
    ::freeaddrinfo(list);
    return make_error(fmt::format("Failed to listen on {}:{}: {}", host, port, last_error));
}

Result<FileDescriptor> connect_unix(const std::string& path) {
    auto addr = unix_address(path);
    if (!addr) return addr.error();
    FileDescriptor fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) return make_error(fmt::format("socket: {}", std::strerror(errno)));
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof(sockaddr_un)) < 0)
        return make_error(fmt::format("Failed to connect to '{}': {}", path, std::strerror(errno)));
    return fd;
}

} // namespace fleece::io
