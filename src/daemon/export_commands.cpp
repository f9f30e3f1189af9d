// QMP commands for the NBD server and its exports: nbd-server-start/stop,
// block-export-add/del, query-block-exports (QEMU's names and arguments).

#include "daemon/export_commands.hpp"

#include "io/tls_creds.hpp"
#include "nbd/server.hpp"
#include "nodes/options.hpp"

#include <fmt/format.h>

namespace fleece::daemon {
namespace {

using nlohmann::json;

Services& services_of(control::CommandContext& ctx) {
    return *static_cast<Services*>(ctx.services);
}

// Accepts QMP's legacy form {"type": "unix", "data": {"path": P}} and the flat form
// {"type": "unix", "path": P} used on the command line.
Status listen_on(nbd::NbdServer& server, const json& addr) {
    if (!addr.is_object() || !addr.contains("type") || !addr["type"].is_string())
        return make_error("Parameter 'addr.type' is missing");
    const json& data = addr.contains("data") ? addr["data"] : addr;
    const std::string type = addr["type"].get<std::string>();
    auto text = [&](const char* key) -> std::string {
        if (!data.contains(key)) return {};
        const json& v = data[key];
        return v.is_string() ? v.get<std::string>() : v.dump();
    };
    if (type == "unix") {
        if (text("path").empty()) return make_error("Parameter 'addr.data.path' is missing");
        return server.listen_unix(text("path"));
    }
    if (type == "inet") {
        if (text("port").empty()) return make_error("Parameter 'addr.data.port' is missing");
        return server.listen_tcp(text("host"), text("port"));
    }
    return make_error(fmt::format("Parameter 'addr.type' does not accept value '{}'", type));
}

// A number from QMP, a string from --nbd-server.
Result<std::uint32_t> uint32_argument(const json& args, const char* key) {
    const json& m = args[key];
    std::uint64_t n = 0;
    if (m.is_number_unsigned())
        n = m.get<std::uint64_t>();
    else if (m.is_string() && !m.get<std::string>().empty() &&
             m.get<std::string>().find_first_not_of("0123456789") == std::string::npos &&
             m.get<std::string>().size() < 11)
        n = std::stoull(m.get<std::string>());
    else
        return make_error(fmt::format("Parameter '{}' expects uint32", key));
    if (n > UINT32_MAX) return make_error(fmt::format("Parameter '{}' expects uint32", key));
    return static_cast<std::uint32_t>(n);
}

} // namespace

Status start_nbd_server(Services& s, const json& args) {
    if (s.nbd_server) return make_error("NBD server already running");
    if (args.contains("tls-authz"))
        return make_error("'tls-authz' is not supported (use verify-peer on the credentials)");
    auto server = std::make_unique<nbd::NbdServer>(*s.graph);
    if (args.contains("tls-creds")) {
        if (!args["tls-creds"].is_string())
            return make_error("Invalid parameter type for 'tls-creds', expected: string");
        auto creds = io::find_tls_creds(args["tls-creds"].get<std::string>(), true);
        if (!creds) return creds.error();
        server->set_tls_creds(*creds);
    }
    if (args.contains("max-connections")) {
        auto n = uint32_argument(args, "max-connections");
        if (!n) return n.error();
        server->set_max_connections(*n);
    }
    if (args.contains("handshake-max-seconds")) {
        auto n = uint32_argument(args, "handshake-max-seconds");
        if (!n) return n.error();
        server->set_handshake_max_seconds(*n);
    }
    if (Status st = listen_on(*server, args.value("addr", json())); !st) return st;
    s.nbd_server = std::move(server);
    return {};
}

Status add_export(Services& s, const json& args) {
    if (args.value("type", "") != "nbd")
        return make_error(
            fmt::format("Parameter 'type' does not accept value '{}'", args.value("type", "")));
    if (!s.nbd_server) return make_error("NBD server not running");
    nbd::ExportOptions o;
    o.id = args.value("id", "");
    o.node_name = args.value("node-name", "");
    o.name = args.value("name", o.node_name);
    o.description = args.value("description", "");
    const json w = args.value("writable", json(false));
    o.writable = w.is_boolean() ? w.get<bool>() : (w == "on" || w == "true");
    const json d = args.value("allocation-depth", json(false));
    o.allocation_depth = d.is_boolean() ? d.get<bool>() : (d == "on" || d == "true");
    if (args.contains("bitmaps")) {
        for (const json& b : args["bitmaps"]) {
            // BlockDirtyBitmapOrStr; QEMU 7.2 takes names on the exported node.
            if (!b.is_string()) return make_error("Parameter 'bitmaps' expects a list of names");
            o.bitmaps.push_back(b.get<std::string>());
        }
    }
    if (s.nbd_server->has_export(o.id))
        return make_error(fmt::format("Block export id '{}' is already in use", o.id));
    return s.nbd_server->add_export(o);
}

namespace {

io::Task<Result<json>> nbd_server_start_command(control::CommandContext& ctx, const json& args) {
    if (Status st = start_nbd_server(services_of(ctx), args); !st) co_return st.error();
    co_return json::object();
}

io::Task<Result<json>> nbd_server_stop_command(control::CommandContext& ctx, const json&) {
    Services& s = services_of(ctx);
    if (!s.nbd_server) co_return make_error("NBD server not running");
    std::vector<std::string> ids;
    for (const auto& e : s.nbd_server->query())
        ids.push_back(e.id);
    co_await s.nbd_server->stop();
    s.nbd_server.reset();
    for (const auto& id : ids)
        ctx.emit_event("BLOCK_EXPORT_DELETED", json{{"id", id}});
    co_return json::object();
}

io::Task<Result<json>> block_export_add_command(control::CommandContext& ctx, const json& args) {
    if (Status st = add_export(services_of(ctx), args); !st) co_return st.error();
    co_return json::object();
}

io::Task<Result<json>> block_export_del_command(control::CommandContext& ctx, const json& args) {
    Services& s = services_of(ctx);
    const std::string id = args.at("id").get<std::string>();
    if (!s.nbd_server || !s.nbd_server->has_export(id))
        co_return make_error(fmt::format("Export '{}' is not found", id));
    Status st = co_await s.nbd_server->remove_export(id);
    if (!st) co_return st.error();
    ctx.emit_event("BLOCK_EXPORT_DELETED", json{{"id", id}});
    co_return json::object();
}

io::Task<Result<json>> query_block_exports_command(control::CommandContext& ctx, const json&) {
    json out = json::array();
    Services& s = services_of(ctx);
    if (s.nbd_server)
        for (const auto& e : s.nbd_server->query())
            out.push_back({{"type", "nbd"},
                           {"id", e.id},
                           {"node-name", e.node_name},
                           {"shutting-down", false}});
    co_return out;
}

} // namespace

void register_export_commands(control::CommandRegistry& registry) {
    using control::ArgType;
    registry.add({"nbd-server-start",
                  "Starts the NBD server on a unix or inet address",
                  {{"addr", ArgType::object, true},
                   {"tls-creds", ArgType::str, false},
                   {"tls-authz", ArgType::str, false},
                   {"max-connections", ArgType::integer, false},
                   {"handshake-max-seconds", ArgType::integer, false}},
                  false,
                  nbd_server_start_command});
    registry.add({"nbd-server-stop",
                  "Stops the NBD server and removes its exports",
                  {},
                  false,
                  nbd_server_stop_command});
    registry.add({"block-export-add",
                  "Exports a node over NBD",
                  {{"type", ArgType::str, true},
                   {"id", ArgType::str, true},
                   {"node-name", ArgType::str, true},
                   {"name", ArgType::str, false},
                   {"description", ArgType::str, false},
                   {"writable", ArgType::boolean, false},
                   {"writethrough", ArgType::boolean, false},
                   {"bitmaps", ArgType::array, false},
                   {"allocation-depth", ArgType::boolean, false},
                   {"iothread", ArgType::str, false},
                   {"fixed-iothread", ArgType::boolean, false}},
                  false,
                  block_export_add_command});
    registry.add({"block-export-del",
                  "Removes an export",
                  {{"id", ArgType::str, true}, {"mode", ArgType::str, false}},
                  false,
                  block_export_del_command});
    registry.add(
        {"query-block-exports", "Lists the exports", {}, false, query_block_exports_command});
}

} // namespace fleece::daemon
