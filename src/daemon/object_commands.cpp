#include "daemon/object_commands.hpp"

#include "io/tls_creds.hpp"

#include <fmt/format.h>

namespace fleece::daemon {
namespace {

using nlohmann::json;

// A boolean property: true/false from QMP, on/off/yes/no/true/false from the command line.
Result<bool> bool_property(const json& args, const char* key, bool dflt) {
    if (!args.contains(key)) return dflt;
    const json& v = args[key];
    if (v.is_boolean()) return v.get<bool>();
    if (v.is_string()) {
        const std::string s = v.get<std::string>();
        if (s == "on" || s == "yes" || s == "true") return true;
        if (s == "off" || s == "no" || s == "false") return false;
    }
    return make_error(fmt::format("Parameter '{}' expects 'on' or 'off'", key));
}

Result<std::string> string_property(const json& args, const char* key) {
    if (!args.contains(key)) return std::string();
    if (!args[key].is_string())
        return make_error(fmt::format("Invalid parameter type for '{}', expected: string", key));
    return args[key].get<std::string>();
}

Result<io::TlsCredsOptions> tls_options(const json& args, io::TlsCredsType type) {
    io::TlsCredsOptions o;
    o.type = type;
    const std::vector<std::string> known = {"qom-type", "id",           "dir",
                                            "endpoint", "verify-peer",  "username",
                                            "priority", "sanity-check", "loaded"};
    for (const auto& [key, value] : args.items()) {
        (void)value;
        if (std::find(known.begin(), known.end(), key) == known.end() ||
            (type == io::TlsCredsType::psk && (key == "verify-peer" || key == "sanity-check")) ||
            (type == io::TlsCredsType::x509 && key == "username"))
            return make_error(fmt::format("Property '{}' not found", key));
    }
    auto id = string_property(args, "id");
    auto dir = string_property(args, "dir");
    auto endpoint = string_property(args, "endpoint");
    auto username = string_property(args, "username");
    auto priority = string_property(args, "priority");
    for (auto* r : {&id, &dir, &endpoint, &username, &priority})
        if (!*r) return r->error();
    auto verify = bool_property(args, "verify-peer", true);
    if (!verify) return verify.error();
    o.id = *id;
    o.dir = *dir;
    if (endpoint->empty() || *endpoint == "server")
        o.server = true;
    else if (*endpoint == "client")
        o.server = false;
    else
        return make_error(
            fmt::format("Parameter 'endpoint' does not accept value '{}'", *endpoint));
    o.verify_peer = *verify;
    o.username = *username;
    o.priority = *priority;
    return o;
}

io::Task<Result<json>> object_add_command(control::CommandContext&, const json& args) {
    if (Status st = add_object(args); !st) co_return st.error();
    co_return json::object();
}

io::Task<Result<json>> object_del_command(control::CommandContext&, const json& args) {
    const std::string id = args.at("id").get<std::string>();
    // Users of the object (a running NBD server) keep their own reference, as in QEMU.
    if (io::tls_creds_objects().erase(id) == 0)
        co_return make_error(fmt::format("object '{}' not found", id));
    co_return json::object();
}

} // namespace

Status add_object(const json& args) {
    if (!args.is_object() || !args.contains("qom-type") || !args["qom-type"].is_string())
        return make_error("Parameter 'qom-type' is missing");
    const std::string type = args["qom-type"].get<std::string>();
    io::TlsCredsType tls_type;
    if (type == "tls-creds-x509")
        tls_type = io::TlsCredsType::x509;
    else if (type == "tls-creds-psk")
        tls_type = io::TlsCredsType::psk;
    else
        return make_error(fmt::format("Invalid parameter 'qom-type': object type '{}' is not "
                                      "supported (supported: tls-creds-x509, tls-creds-psk)",
                                      type));
    auto opts = tls_options(args, tls_type);
    if (!opts) return opts.error();
    if (opts->id.empty()) return make_error("Parameter 'id' is missing");
    if (io::tls_creds_objects().count(opts->id))
        return make_error(fmt::format("attempt to add duplicate property '{}' to object "
                                      "(type 'container')",
                                      opts->id));
    auto creds = io::TlsCreds::create(std::move(*opts));
    if (!creds) return creds.error();
    io::tls_creds_objects()[(*creds)->options().id] = *creds;
    return {};
}

void register_object_commands(control::CommandRegistry& registry) {
    using control::ArgType;
    registry.add({"object-add",
                  "Creates an object (tls-creds-x509, tls-creds-psk)",
                  {{"qom-type", ArgType::str, true}, {"id", ArgType::str, true}},
                  true,
                  object_add_command});
    registry.add({"object-del",
                  "Deletes an object",
                  {{"id", ArgType::str, true}},
                  false,
                  object_del_command});
}

} // namespace fleece::daemon
