#include "cli/img/image.hpp"

#include "nodes/registry.hpp"

#include <array>
#include <cstring>
#include <fmt/format.h>

namespace fleece::cli::img {
namespace {

using nlohmann::json;

// "a=1&socket=/p" -> value of `key`, or "".
std::string query_value(const std::string& query, const std::string& key) {
    std::size_t pos = 0;
    while (pos <= query.size()) {
        std::size_t end = query.find('&', pos);
        if (end == std::string::npos) end = query.size();
        const std::string item = query.substr(pos, end - pos);
        const std::size_t eq = item.find('=');
        if (eq != std::string::npos && item.substr(0, eq) == key) return item.substr(eq + 1);
        pos = end + 1;
    }
    return "";
}

Error bad_uri(const std::string& name, const char* why) {
    return make_error(fmt::format("Invalid NBD URI '{}': {}", name, why));
}

// A cheap, unambiguous format probe: qcow2 starts with "QFI\xfb"; anything else is raw.
io::Task<Result<std::string>> probe_format(Session* s, block::Node* proto, std::string name) {
    struct Prober final : block::ChildParent {
        std::string parent_description() const override { return "fleece img probe"; }
        std::string parent_name() const override { return "fleece-img-probe"; }
        const char* parent_type() const override { return "block-backend"; }
    };
    if (proto->size() < 4) co_return std::string("raw");
    Prober prober;
    auto child =
        s->graph.attach(prober, *proto, block::perm_consistent_read, block::perm_all, "probe");
    if (!child) co_return child.error();
    // One aligned block so that O_DIRECT-style alignment limits are met too.
    const std::size_t n = std::min<std::uint64_t>(
        proto->size(), std::max<std::uint32_t>(512, proto->limits().request_alignment));
    std::vector<std::byte> buf(n);
    const std::error_code ec = co_await (*child)->read(0, std::span(buf.data(), n));
    s->graph.detach(std::move(*child));
    if (ec) co_return make_error(fmt::format("Could not read '{}': {}", name, ec.message()));
    static constexpr std::array<unsigned char, 4> qcow2_magic{'Q', 'F', 'I', 0xfb};
    if (std::memcmp(buf.data(), qcow2_magic.data(), 4) == 0) co_return std::string("qcow2");
    co_return std::string("raw");
}

} // namespace

bool known_format(const std::string& format) {
    return format == "raw" || format == "qcow2";
}

Result<Location> parse_location(const std::string& name) {
    Location loc;
    loc.name = name;
    if (name.rfind("nbd+unix://", 0) == 0) {
        // nbd+unix:///EXPORT?socket=PATH
        std::string rest = name.substr(std::strlen("nbd+unix://"));
        const std::size_t q = rest.find('?');
        const std::string query = q == std::string::npos ? "" : rest.substr(q + 1);
        std::string path_part = rest.substr(0, q);
        if (!path_part.empty() && path_part[0] != '/')
            return bad_uri(name, "nbd+unix URIs have no host part");
        const std::string socket = query_value(query, "socket");
        if (socket.empty()) return bad_uri(name, "missing '?socket=PATH'");
        loc.nbd = true;
        loc.protocol = json{{"driver", "nbd"},
                            {"server", {{"type", "unix"}, {"path", socket}}},
                            {"export", path_part.empty() ? "" : path_part.substr(1)}};
        return loc;
    }
    if (name.rfind("nbd://", 0) == 0) {
        // nbd://HOST[:PORT][/EXPORT]
        std::string rest = name.substr(std::strlen("nbd://"));
        const std::size_t slash = rest.find('/');
        const std::string authority = rest.substr(0, slash);
        const std::string export_name = slash == std::string::npos ? "" : rest.substr(slash + 1);
        std::string host = authority, port = "10809";
        const std::size_t colon = authority.rfind(':');
        if (colon != std::string::npos && authority.find(']') == std::string::npos) {
            host = authority.substr(0, colon);
            port = authority.substr(colon + 1);
        }
        if (host.empty()) return bad_uri(name, "missing host");
        if (port.empty() || port.find_first_not_of("0123456789") != std::string::npos)
            return bad_uri(name, "bad port");
        loc.nbd = true;
        loc.protocol = json{{"driver", "nbd"},
                            {"server", {{"type", "inet"}, {"host", host}, {"port", port}}},
                            {"export", export_name}};
        return loc;
    }
    if (name.find("://") != std::string::npos)
        return make_error(fmt::format("Unknown protocol in '{}'", name));
    loc.protocol = json{{"driver", "file"}, {"filename", name}};
    return loc;
}

std::vector<block::Node*> Image::chain() const {
    std::vector<block::Node*> out;
    block::Node* n = &node_;
    // A loop in the graph is impossible (the graph refuses cycles); the bound is a guard.
    while (n && out.size() < 4096) {
        out.push_back(n);
        block::Child* b = n->child("backing");
        n = b ? &b->node() : nullptr;
    }
    return out;
}

namespace {

io::Task<Result<block::Node*>> open_protocol(Session* s, Location loc, bool writable,
                                             bool no_flush) {
    json proto_opts = loc.protocol;
    proto_opts["node-name"] = s->fresh_name("proto");
    proto_opts["read-only"] = !writable;
    if (no_flush && !loc.nbd) proto_opts["cache"] = json{{"no-flush", true}};
    co_return co_await nodes::blockdev_add(s->graph, proto_opts);
}

} // namespace

io::Task<Result<std::string>> probe_image_format(Session* s, std::string name) {
    const std::string prefix = fmt::format("Could not open '{}': ", name);
    auto loc = parse_location(name);
    if (!loc) co_return make_error(prefix + loc.error().message);
    auto proto = co_await open_protocol(s, *loc, false, false);
    if (!proto) co_return make_error(prefix + proto.error().message);
    auto probed = co_await probe_format(s, *proto, name);
    const std::string proto_name = (*proto)->name();
    (void)co_await s->graph.remove(proto_name);
    if (!probed) co_return make_error(prefix + probed.error().message);
    co_return *probed;
}

io::Task<Result<std::unique_ptr<Image>>> open_image(Session* s, OpenRequest req) {
    const std::string prefix = fmt::format("Could not open '{}': ", req.name);
    if (!req.format.empty() && !known_format(req.format))
        co_return make_error(prefix + fmt::format("Unknown driver '{}'", req.format));
    auto loc = parse_location(req.name);
    if (!loc) co_return make_error(prefix + loc.error().message);

    auto proto = co_await open_protocol(s, *loc, req.writable, req.no_flush);
    if (!proto) co_return make_error(prefix + proto.error().message);
    const std::string proto_name = (*proto)->name();

    std::string format = req.format;
    if (format.empty()) {
        auto probed = co_await probe_format(s, *proto, req.name);
        if (!probed) co_return make_error(prefix + probed.error().message);
        format = *probed;
    }

    json fmt_opts = req.format_options;
    const std::string node_name = s->fresh_name("img");
    fmt_opts["driver"] = format;
    fmt_opts["node-name"] = node_name;
    fmt_opts["file"] = proto_name;
    fmt_opts["read-only"] = !req.writable;
    auto node = co_await nodes::blockdev_add(s->graph, fmt_opts);
    if (!node) co_return make_error(prefix + node.error().message);

    auto image = std::make_unique<Image>(s->graph, req.name, format, **node, loc->nbd);
    block::PermSet perm = block::perm_consistent_read;
    if (req.writable) perm |= block::perm_write;
    auto child = s->graph.attach(*image, **node, perm, block::perm_all);
    if (!child) co_return make_error(prefix + child.error().message);
    image->set_child(std::move(*child));
    co_return image;
}

} // namespace fleece::cli::img
