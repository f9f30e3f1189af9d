#include "io/tls_stream.hpp"

#include "io/file_io.hpp"

#include <cerrno>
#include <fmt/format.h>
#include <gnutls/gnutls.h>
#include <poll.h>
#include <sys/socket.h>

namespace fleece::io {

namespace {

// GnuTLS transport callbacks: plain non-blocking socket calls; EAGAIN goes back to GnuTLS,
// which returns GNUTLS_E_AGAIN to our coroutine. MSG_NOSIGNAL: a vanished client must not
// raise SIGPIPE in the daemon.
ssize_t push(gnutls_transport_ptr_t ptr, const void* data, std::size_t size) {
    const int fd = static_cast<int>(reinterpret_cast<std::intptr_t>(ptr));
    return ::send(fd, data, size, MSG_NOSIGNAL);
}

ssize_t pull(gnutls_transport_ptr_t ptr, void* data, std::size_t size) {
    const int fd = static_cast<int>(reinterpret_cast<std::intptr_t>(ptr));
    return ::recv(fd, data, size, 0);
}

bool retry(std::int64_t rc) {
    return rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED;
}

// Waits until the socket is ready in `events`; false when the socket is gone.
Task<bool> wait_ready(int fd, int events) {
    const std::int64_t p = co_await poll(fd, events);
    if (p < 0 || (p & POLLNVAL)) co_return false;
    co_return true;
}

} // namespace

TlsStream::~TlsStream() {
    gnutls_deinit(session_);
}

Task<Result<std::unique_ptr<TlsStream>>>
TlsStream::server_handshake(int fd, std::shared_ptr<const TlsCreds> creds) {
    auto s = creds->new_server_session();
    if (!s) co_return s.error();
    std::unique_ptr<TlsStream> stream(new TlsStream(fd, *s, creds));
    gnutls_session_t session = *s;
    gnutls_transport_set_ptr(
        session, reinterpret_cast<gnutls_transport_ptr_t>(static_cast<std::intptr_t>(fd)));
    gnutls_transport_set_push_function(session, push);
    gnutls_transport_set_pull_function(session, pull);
    while (true) {
        const int rc = gnutls_handshake(session);
        if (rc == GNUTLS_E_SUCCESS) break;
        if (!retry(rc) && gnutls_error_is_fatal(rc))
            co_return make_error(fmt::format("TLS handshake failed: {}", gnutls_strerror(rc)));
        if (!retry(rc)) continue; // a warning alert: keep going
        const int events = gnutls_record_get_direction(session) == 0 ? POLLIN : POLLOUT;
        if (!co_await wait_ready(fd, events))
            co_return make_error("TLS handshake failed: connection closed");
    }
    if (Status v = creds->verify_client(session); !v) co_return v.error();
    co_return std::move(stream);
}

Task<int> TlsStream::read_exact(std::span<std::byte> buf) {
    std::size_t done = 0;
    while (done < buf.size()) {
        const ssize_t n = gnutls_record_recv(session_, buf.data() + done, buf.size() - done);
        if (n > 0) {
            done += static_cast<std::size_t>(n);
            continue;
        }
        if (n == 0) co_return -ECONNRESET;
        if (retry(n)) {
            if (!co_await wait_ready(fd_, POLLIN)) co_return -ECONNRESET;
            continue;
        }
        if (!gnutls_error_is_fatal(static_cast<int>(n))) continue;
        co_return -ECONNRESET;
    }
    co_return 0;
}

Task<int> TlsStream::write_all(std::span<const std::byte> buf) {
    std::size_t done = 0;
    while (done < buf.size()) {
        // After GNUTLS_E_AGAIN GnuTLS wants the same arguments again; we retry with them.
        const ssize_t n = gnutls_record_send(session_, buf.data() + done, buf.size() - done);
        if (n > 0) {
            done += static_cast<std::size_t>(n);
            continue;
        }
        if (retry(n)) {
            if (!co_await wait_ready(fd_, POLLOUT)) co_return -EPIPE;
            continue;
        }
        co_return -EPIPE;
    }
    co_return 0;
}

} // namespace fleece::io
