#include "control/qmp_session.hpp"

#include "control/json_stream.hpp"
#include "control/version.hpp"

namespace fleece::control {

using nlohmann::json;

json qmp_greeting() {
    return json{{"QMP", {{"version", version_json()}, {"capabilities", json::array({"oob"})}}}};
}

json qmp_error(const Error& error, const json* id) {
    json reply{{"error", {{"class", error.error_class}, {"desc", error.message}}}};
    if (id) reply["id"] = *id;
    return reply;
}

json QmpSession::too_large_reply() {
    return qmp_error(make_error("JSON parse error, message too large (limit 1 MiB)"));
}

io::Task<json> QmpSession::handle(std::string text) {
    // Invalid UTF-8 is replaced rather than rejected so replies that echo it stay valid JSON.
    json request = json::parse(qemu_json_to_standard(text), nullptr, false);
    if (request.is_discarded())
        co_return qmp_error(make_error("JSON parse error, invalid JSON text"));
    co_return co_await execute(std::move(request));
}

namespace {

// Checks the request envelope; returns the command name or an error.
Result<std::string> check_envelope(const json& request) {
    if (!request.is_object()) return make_error("QMP input must be a JSON object");
    const char* exec_key = request.contains("exec-oob") ? "exec-oob" : "execute";
    for (const auto& [key, value] : request.items()) {
        if (key != exec_key && key != "arguments" && key != "id")
            return make_error("QMP input member '" + key + "' is unexpected");
    }
    auto it = request.find(exec_key);
    if (it == request.end()) return make_error("QMP input lacks member 'execute'");
    if (!it->is_string())
        return make_error(std::string("QMP input member '") + exec_key + "' must be a string");
    auto args = request.find("arguments");
    if (args != request.end() && !args->is_object())
        return make_error("QMP input member 'arguments' must be an object");
    return it->get<std::string>();
}

} // namespace

io::Task<json> QmpSession::execute(json request) {
    const json* id = nullptr;
    if (request.is_object() && request.contains("id")) id = &request["id"];
    Result<std::string> name = check_envelope(request);
    if (!name) co_return qmp_error(name.error(), id);

    const bool is_caps = *name == "qmp_capabilities";
    if (!command_mode_ && !is_caps)
        co_return qmp_error(
            Error{"CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'"},
            id);
    if (command_mode_ && is_caps)
        co_return qmp_error(Error{"CommandNotFound",
                                  "Capabilities negotiation is already complete, command "
                                  "ignored"},
                            id);

    json args = request.value("arguments", json::object());
    Result<json> result = co_await dispatch(*registry_, ctx_, *name, std::move(args));
    if (!result) co_return qmp_error(result.error(), id);
    if (is_caps) command_mode_ = true;
    json reply{{"return", std::move(result).value()}};
    if (id) reply["id"] = *id;
    co_return reply;
}

} // namespace fleece::control
