#include "control/builtin_commands.hpp"

#include "control/version.hpp"

namespace fleece::control {

using nlohmann::json;

namespace {

// Switching to command mode is done by the session once this succeeds; the handler only
// has to accept the arguments ("enable" lists optional capabilities; we enable none).
io::Task<Result<json>> qmp_capabilities(CommandContext&, const json& args) {
    if (args.contains("enable")) {
        for (const auto& cap : args["enable"]) {
            if (!cap.is_string() || cap.get<std::string>() != "oob")
                co_return make_error("Parameter 'enable' expects an array of capabilities");
        }
    }
    co_return json::object();
}

io::Task<Result<json>> query_version(CommandContext&, const json&) {
    co_return version_json();
}

io::Task<Result<json>> quit(CommandContext& ctx, const json&) {
    if (ctx.request_quit) ctx.request_quit();
    co_return json::object();
}

io::Task<Result<json>> query_commands(CommandContext& ctx, const json&) {
    json list = json::array();
    if (ctx.registry)
        for (const CommandSpec* spec : ctx.registry->list())
            list.push_back({{"name", spec->name}});
    co_return list;
}

} // namespace

void register_builtin_commands(CommandRegistry& registry) {
    registry.add({"qmp_capabilities",
                  "Leave capabilities negotiation mode",
                  {{"enable", ArgType::array, false}},
                  false,
                  qmp_capabilities});
    registry.add({"query-version", "Report the version", {}, false, query_version});
    registry.add({"query-commands", "List the supported commands", {}, false, query_commands});
    registry.add({"quit", "Stop the daemon", {}, false, quit});
}

} // namespace fleece::control
