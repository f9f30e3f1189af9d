#pragma once
// TlsStream: a GnuTLS session over a non-blocking socket, driven by the event loop. GnuTLS
// moves bytes through our own push/pull functions; when they would block, the coroutine
// waits for the socket with io::poll and retries, so no thread ever blocks on a client.

#include "io/stream.hpp"
#include "io/tls_creds.hpp"

#include <memory>

namespace fleece::io {

class TlsStream final : public Stream {
  public:
    ~TlsStream() override;
    // Runs the server side of the handshake on `fd` (not owned), then checks the client's
    // certificate when the credentials ask for it. The error says why the handshake failed.
    static Task<Result<std::unique_ptr<TlsStream>>>
    server_handshake(int fd, std::shared_ptr<const TlsCreds> creds);

    Task<int> read_exact(std::span<std::byte> buf) override;
    Task<int> write_all(std::span<const std::byte> buf) override;

  private:
    TlsStream(int fd, gnutls_session_t s, std::shared_ptr<const TlsCreds> creds)
        : fd_(fd), session_(s), creds_(std::move(creds)) {}
    int fd_;
    gnutls_session_t session_;
    std::shared_ptr<const TlsCreds> creds_; // the session uses their GnuTLS credentials
};

} // namespace fleece::io
