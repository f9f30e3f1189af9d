#pragma once
// TLS credentials objects, QEMU's tls-creds-x509 and tls-creds-psk (created by --object or
// QMP object-add). A directory holds the files, with QEMU's names:
//   x509 server: ca-cert.pem (needed for verify-peer=on), server-cert.pem, server-key.pem
//   x509 client: ca-cert.pem, optional client-cert.pem / client-key.pem
//   psk:         keys.psk with "username:hexkey" lines
// Server credentials are loaded into GnuTLS when the object is created, so a bad file is
// reported by object-add, not by the first client. Client credentials are used by libnbd
// (the nbd node), which reads the same directory layout itself.
//
// The objects live in one process-wide table: like QEMU's /objects container, they are
// named by id from anywhere (nbd-server-start's tls-creds, the nbd node's tls-creds).

#include "util/result.hpp"

#include <map>
#include <memory>
#include <string>

typedef struct gnutls_session_int* gnutls_session_t;

namespace fleece::io {

enum class TlsCredsType { x509, psk };

struct TlsCredsOptions {
    std::string id;
    TlsCredsType type = TlsCredsType::x509;
    std::string dir;
    bool server = true;      // endpoint=server (default, as QEMU) or client
    bool verify_peer = true; // x509: require and verify the peer's certificate
    std::string username;    // psk client: identity to use (QEMU's default "qemu")
    std::string priority;    // GnuTLS priority string; empty = default
};

class TlsCreds {
  public:
    static Result<std::shared_ptr<TlsCreds>> create(TlsCredsOptions opts);
    ~TlsCreds();
    TlsCreds(const TlsCreds&) = delete;
    TlsCreds& operator=(const TlsCreds&) = delete;

    const TlsCredsOptions& options() const { return opts_; }
    const char* type_name() const {
        return opts_.type == TlsCredsType::x509 ? "tls-creds-x509" : "tls-creds-psk";
    }
    // A non-blocking server session bound to these credentials (server endpoint only).
    Result<gnutls_session_t> new_server_session() const;
    // After a completed handshake: checks the client's certificate when verify-peer=on.
    Status verify_client(gnutls_session_t session) const;

  private:
    explicit TlsCreds(TlsCredsOptions opts) : opts_(std::move(opts)) {}
    Status load_server();

    TlsCredsOptions opts_;
    void* x509_ = nullptr; // gnutls_certificate_credentials_t
    void* psk_ = nullptr;  // gnutls_psk_server_credentials_t
};

// The process-wide object table (ids are unique across both types).
std::map<std::string, std::shared_ptr<TlsCreds>>& tls_creds_objects();
// Looks an object up; the error names the id and what was expected.
Result<std::shared_ptr<TlsCreds>> find_tls_creds(const std::string& id, bool want_server);

} // namespace fleece::io
