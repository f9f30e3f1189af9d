#include "cli/backup/target_spec.hpp"

#include "nodes/qcow2/qcow2_tools.hpp"

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <stdexcept>
#include <sys/stat.h>
#include <unistd.h>

namespace fleece::cli {

using nlohmann::json;

namespace {

bool starts_with(const std::string& s, const std::string& prefix) {
    return s.rfind(prefix, 0) == 0;
}

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() &&
           s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Percent-decoding for export names and socket paths given in a URI.
std::string uri_decode(const std::string& s) {
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '%' && i + 2 < s.size()) {
            out += static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16));
            i += 2;
        } else {
            out += s[i];
        }
    }
    return out;
}

TargetSpec parse_nbd_uri(const std::string& text, const std::string& tls_creds) {
    TargetSpec t;
    t.kind = TargetSpec::Kind::nbd;
    t.text = text;
    const auto scheme_end = text.find("://");
    const std::string scheme = text.substr(0, scheme_end);
    const bool tls = starts_with(scheme, "nbds");
    const bool unix_socket = ends_with(scheme, "+unix");
    if (scheme != "nbd" && scheme != "nbds" && scheme != "nbd+unix" && scheme != "nbds+unix")
        throw std::runtime_error("target '" + text +
                                 "': unknown URI scheme (nbd, nbd+unix, nbds, nbds+unix)");
    if (tls && tls_creds.empty())
        throw std::runtime_error("target '" + text +
                                 "' asks for TLS: give --tls-creds ID naming a tls-creds-x509 "
                                 "object created in fleeced (--object tls-creds-x509,id=ID,...)");
    t.tls_creds = tls ? tls_creds : "";
    std::string rest = text.substr(scheme_end + 3);
    std::string query;
    if (auto q = rest.find('?'); q != std::string::npos) {
        query = rest.substr(q + 1);
        rest.erase(q);
    }
    const auto slash = rest.find('/');
    const std::string authority = rest.substr(0, slash);
    t.export_name = slash == std::string::npos ? "" : uri_decode(rest.substr(slash + 1));
    if (unix_socket) {
        std::string socket;
        std::size_t pos = 0;
        while (pos <= query.size()) {
            const auto amp = query.find('&', pos);
            const std::string kv = query.substr(pos, amp == std::string::npos ? amp : amp - pos);
            if (starts_with(kv, "socket=")) socket = uri_decode(kv.substr(7));
            if (amp == std::string::npos) break;
            pos = amp + 1;
        }
        if (!authority.empty())
            throw std::runtime_error("target '" + text + "': a +unix URI has no host");
        if (socket.empty()) throw std::runtime_error("target '" + text + "': missing ?socket=PATH");
        t.server = json{{"type", "unix"}, {"path", socket}};
    } else {
        if (authority.empty()) throw std::runtime_error("target '" + text + "': missing host");
        std::string host = authority, port = "10809";
        if (host.front() == '[') { // [v6]:port
            const auto close = host.find(']');
            if (close == std::string::npos)
                throw std::runtime_error("target '" + text + "': bad IPv6 address");
            if (close + 1 < host.size() && host[close + 1] == ':') port = host.substr(close + 2);
            host = host.substr(1, close - 1);
        } else if (auto colon = host.rfind(':'); colon != std::string::npos) {
            port = host.substr(colon + 1);
            host.erase(colon);
        }
        if (port.empty() || port.find_first_not_of("0123456789") != std::string::npos)
            throw std::runtime_error("target '" + text + "': bad port '" + port + "'");
        t.server = json{{"type", "inet"}, {"host", host}, {"port", port}};
    }
    return t;
}

} // namespace

TargetSpec parse_target(const std::string& text, const std::string& format,
                        const std::string& tls_creds) {
    if (text.empty()) throw std::runtime_error("--target is empty");
    if (text.find("://") != std::string::npos) {
        if (!format.empty())
            throw std::runtime_error("--target-format applies to local files, not to " + text);
        return parse_nbd_uri(text, tls_creds);
    }
    TargetSpec t;
    t.text = text;
    t.path = text;
    t.format = !format.empty() ? format : (ends_with(text, ".qcow2") ? "qcow2" : "raw");
    if (t.format != "raw" && t.format != "qcow2")
        throw std::runtime_error("--target-format must be raw or qcow2, not '" + t.format + "'");
    struct stat st {};
    if (::stat(text.c_str(), &st) == 0) {
        // A block device is written in place; an existing regular file is never overwritten
        // by accident (it may be the previous backup).
        if (!S_ISBLK(st.st_mode))
            throw std::runtime_error("target file " + text +
                                     " already exists: remove it or choose another path");
        if (t.format != "raw")
            throw std::runtime_error("target " + text + " is a block device: use raw format");
        t.exists = true;
    }
    return t;
}

void make_overlay_target(TargetSpec& t, const std::string& base) {
    if (t.kind != TargetSpec::Kind::file)
        throw std::runtime_error("--base applies to a local file target; for an NBD target, "
                                 "export a qcow2 overlay of the previous backup yourself");
    if (t.exists)
        throw std::runtime_error("an incremental target must be a new file, not a device");
    if (t.format != "qcow2")
        throw std::runtime_error("an incremental target is a qcow2 overlay of --base, not " +
                                 t.format + ": name it .qcow2 or use --target-format qcow2");
    struct stat st {};
    if (::stat(base.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
        throw std::runtime_error(
            "--base " + base + ": " +
            (errno == ENOENT ? std::string("no such file") : std::string("not a regular file")) +
            " (give the previous backup of this chain)");
    char magic[4] = {};
    const int fd = ::open(base.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        throw std::runtime_error("--base " + base + ": cannot open: " + std::strerror(errno));
    const bool qcow2 = ::pread(fd, magic, 4, 0) == 4 && std::memcmp(magic, "QFI\xfb", 4) == 0;
    ::close(fd);
    t.backing_format = qcow2 ? "qcow2" : "raw";
    t.backing_size = static_cast<std::uint64_t>(st.st_size);
    if (qcow2) {
        auto info = nodes::qcow2::read_image_info(base);
        if (!info) throw std::runtime_error("--base " + base + ": " + info.error().message);
        t.backing_size = info->virtual_size;
    }
    char* real_base = ::realpath(base.c_str(), nullptr);
    const std::string abs_base = real_base ? real_base : base;
    std::free(real_base);
    // The target does not exist yet: resolve its directory.
    const auto slash = t.path.rfind('/');
    const std::string dir = slash == std::string::npos ? "." : t.path.substr(0, slash + 1);
    char* real_dir = ::realpath(dir.c_str(), nullptr);
    const std::string abs_dir = real_dir ? real_dir : dir;
    std::free(real_dir);
    const auto base_slash = abs_base.rfind('/');
    if (abs_base.substr(0, base_slash) == abs_dir)
        t.backing_file = abs_base.substr(base_slash + 1);
    else
        t.backing_file = abs_base;
}

bool create_target_image(const TargetSpec& t, std::uint64_t size) {
    if (t.kind != TargetSpec::Kind::file || t.exists) return false;
    if (t.format == "qcow2") {
        nodes::qcow2::CreateOptions o;
        o.size = size;
        o.backing_file = t.backing_file;
        o.backing_format = t.backing_format;
        Status st = nodes::qcow2::create_image(t.path, o);
        if (!st) throw std::runtime_error("cannot create " + t.path + ": " + st.error().message);
        return true;
    }
    const int fd = ::open(t.path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) throw std::runtime_error("cannot create " + t.path + ": " + std::strerror(errno));
    const bool ok = ::ftruncate(fd, static_cast<off_t>(size)) == 0;
    const int err = errno;
    ::close(fd);
    if (!ok) {
        ::unlink(t.path.c_str());
        throw std::runtime_error("cannot size " + t.path + ": " + std::strerror(err));
    }
    return true;
}

json target_blockdev(const TargetSpec& t, const std::string& node_name) {
    if (t.kind == TargetSpec::Kind::nbd) {
        json nbd{{"driver", "nbd"}, {"node-name", node_name}, {"server", t.server}};
        if (!t.export_name.empty()) nbd["export"] = t.export_name;
        if (!t.tls_creds.empty()) nbd["tls-creds"] = t.tls_creds;
        if (t.reconnect_delay_s) nbd["reconnect-delay"] = t.reconnect_delay_s;
        return nbd;
    }
    json file{{"driver", "file"}, {"filename", t.path}};
    if (t.format == "raw") {
        file["node-name"] = node_name;
        return file;
    }
    return json{{"driver", t.format}, {"node-name", node_name}, {"file", file}};
}

} // namespace fleece::cli
