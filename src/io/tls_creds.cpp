#include "io/tls_creds.hpp"

#include <fmt/format.h>
#include <gnutls/gnutls.h>
#include <sys/stat.h>
#include <unistd.h>

namespace fleece::io {

namespace {

bool readable(const std::string& path) {
    return ::access(path.c_str(), R_OK) == 0;
}

Error gnutls_error(const std::string& what, int rc) {
    return make_error(fmt::format("{}: {}", what, gnutls_strerror(rc)));
}

// QEMU's default priority, widened by the PSK key exchanges for PSK credentials.
std::string priority_for(const TlsCredsOptions& o) {
    std::string p = o.priority.empty() ? "NORMAL" : o.priority;
    if (o.type == TlsCredsType::psk) p += ":+ECDHE-PSK:+DHE-PSK:+PSK";
    return p;
}

} // namespace

Result<std::shared_ptr<TlsCreds>> TlsCreds::create(TlsCredsOptions opts) {
    if (opts.id.empty()) return make_error("Parameter 'id' is missing");
    if (opts.dir.empty()) return make_error("Parameter 'dir' is missing");
    struct stat st {};
    if (::stat(opts.dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
        return make_error(fmt::format("Unable to access credentials directory {}", opts.dir));
    std::shared_ptr<TlsCreds> c(new TlsCreds(std::move(opts)));
    if (c->opts_.server) {
        if (Status s = c->load_server(); !s) return s.error();
    } else if (c->opts_.type == TlsCredsType::x509) {
        if (!readable(c->opts_.dir + "/ca-cert.pem"))
            return make_error(
                fmt::format("Unable to access credentials {}/ca-cert.pem", c->opts_.dir));
    } else if (!readable(c->opts_.dir + "/keys.psk")) {
        return make_error(fmt::format("Unable to access credentials {}/keys.psk", c->opts_.dir));
    }
    return c;
}

Status TlsCreds::load_server() {
    const std::string& d = opts_.dir;
    if (opts_.type == TlsCredsType::psk) {
        const std::string keys = d + "/keys.psk";
        if (!readable(keys))
            return make_error(fmt::format("Unable to access credentials {}", keys));
        gnutls_psk_server_credentials_t p = nullptr;
        if (int rc = gnutls_psk_allocate_server_credentials(&p); rc < 0)
            return gnutls_error("Cannot allocate PSK credentials", rc);
        psk_ = p;
        if (int rc = gnutls_psk_set_server_credentials_file(p, keys.c_str()); rc < 0)
            return gnutls_error(fmt::format("Cannot load PSK keys {}", keys), rc);
        return {};
    }
    const std::string ca = d + "/ca-cert.pem", cert = d + "/server-cert.pem",
                      key = d + "/server-key.pem", crl = d + "/ca-crl.pem";
    for (const std::string& f : {cert, key})
        if (!readable(f)) return make_error(fmt::format("Unable to access credentials {}", f));
    if (opts_.verify_peer && !readable(ca))
        return make_error(
            fmt::format("Unable to access credentials {} (needed for verify-peer)", ca));
    gnutls_certificate_credentials_t c = nullptr;
    if (int rc = gnutls_certificate_allocate_credentials(&c); rc < 0)
        return gnutls_error("Cannot allocate certificate credentials", rc);
    x509_ = c;
    if (readable(ca))
        if (int rc = gnutls_certificate_set_x509_trust_file(c, ca.c_str(), GNUTLS_X509_FMT_PEM);
            rc < 0)
            return gnutls_error(fmt::format("Cannot load CA certificate {}", ca), rc);
    if (readable(crl))
        if (int rc = gnutls_certificate_set_x509_crl_file(c, crl.c_str(), GNUTLS_X509_FMT_PEM);
            rc < 0)
            return gnutls_error(fmt::format("Cannot load CA revocation list {}", crl), rc);
    if (int rc =
            gnutls_certificate_set_x509_key_file(c, cert.c_str(), key.c_str(), GNUTLS_X509_FMT_PEM);
        rc < 0)
        return gnutls_error(fmt::format("Cannot load certificate {} / key {}", cert, key), rc);
    return {};
}

TlsCreds::~TlsCreds() {
    if (x509_)
        gnutls_certificate_free_credentials(static_cast<gnutls_certificate_credentials_t>(x509_));
    if (psk_)
        gnutls_psk_free_server_credentials(static_cast<gnutls_psk_server_credentials_t>(psk_));
}

Result<gnutls_session_t> TlsCreds::new_server_session() const {
    if (!opts_.server)
        return make_error(fmt::format("TLS credentials '{}' are not for a server", opts_.id));
    gnutls_session_t s = nullptr;
    if (int rc = gnutls_init(&s, GNUTLS_SERVER | GNUTLS_NONBLOCK); rc < 0)
        return gnutls_error("TLS session", rc);
    const std::string prio = priority_for(opts_);
    int rc = gnutls_priority_set_direct(s, prio.c_str(), nullptr);
    if (rc >= 0) {
        if (psk_) {
            rc = gnutls_credentials_set(s, GNUTLS_CRD_PSK, psk_);
        } else {
            rc = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, x509_);
            if (opts_.verify_peer) gnutls_certificate_server_set_request(s, GNUTLS_CERT_REQUIRE);
        }
    }
    if (rc < 0) {
        gnutls_deinit(s);
        return gnutls_error("TLS session", rc);
    }
    return s;
}

Status TlsCreds::verify_client(gnutls_session_t session) const {
    if (psk_ || !opts_.verify_peer) return {};
    unsigned status = 0;
    if (int rc = gnutls_certificate_verify_peers2(session, &status); rc < 0)
        return gnutls_error("Cannot verify client certificate", rc);
    if (status != 0) {
        gnutls_datum_t text{};
        std::string why = "invalid";
        if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &text, 0) >= 0) {
            why.assign(reinterpret_cast<const char*>(text.data), text.size);
            gnutls_free(text.data);
        }
        return make_error("Client certificate rejected: " + why);
    }
    return {};
}

std::map<std::string, std::shared_ptr<TlsCreds>>& tls_creds_objects() {
    static std::map<std::string, std::shared_ptr<TlsCreds>> objects;
    return objects;
}

Result<std::shared_ptr<TlsCreds>> find_tls_creds(const std::string& id, bool want_server) {
    auto& objects = tls_creds_objects();
    auto it = objects.find(id);
    if (it == objects.end()) return make_error(fmt::format("No TLS credentials with id '{}'", id));
    if (it->second->options().server != want_server)
        return make_error(fmt::format("Expecting TLS credentials with a {} endpoint",
                                      want_server ? "server" : "client"));
    return it->second;
}

} // namespace fleece::io
