#include "control/command_registry.hpp"

#include "util/assert.hpp"

namespace fleece::control {

using nlohmann::json;

const char* arg_type_name(ArgType type) {
    switch (type) {
    case ArgType::str:
        return "string";
    case ArgType::integer:
        return "integer";
    case ArgType::boolean:
        return "boolean";
    case ArgType::object:
        return "object";
    case ArgType::array:
        return "array";
    case ArgType::any:
        return "any";
    case ArgType::node_ref:
        return "string or object";
    }
    return "any";
}

void CommandRegistry::add(CommandSpec spec) {
    FLEECE_ASSERT(spec.handler);
    const std::string name = spec.name;
    const bool inserted = commands_.emplace(name, std::move(spec)).second;
    FLEECE_ASSERT(inserted);
}

const CommandSpec* CommandRegistry::find(const std::string& name) const {
    auto it = commands_.find(name);
    return it == commands_.end() ? nullptr : &it->second;
}

std::vector<const CommandSpec*> CommandRegistry::list() const {
    std::vector<const CommandSpec*> out;
    out.reserve(commands_.size());
    for (const auto& [name, spec] : commands_)
        out.push_back(&spec);
    return out;
}

namespace {

bool matches(ArgType type, const json& v) {
    switch (type) {
    case ArgType::str:
        return v.is_string();
    case ArgType::integer:
        return v.is_number_integer();
    case ArgType::boolean:
        return v.is_boolean();
    case ArgType::object:
        return v.is_object();
    case ArgType::array:
        return v.is_array();
    case ArgType::any:
        return true;
    case ArgType::node_ref:
        return v.is_string() || v.is_object();
    }
    return false;
}

const ArgSpec* find_arg(const CommandSpec& spec, const std::string& key) {
    for (const auto& a : spec.args)
        if (a.name == key) return &a;
    return nullptr;
}

} // namespace

Status validate_args(const CommandSpec& spec, const json& args) {
    if (!args.is_object()) return make_error("QMP input member 'arguments' must be an object");
    for (const auto& [key, value] : args.items()) {
        const ArgSpec* a = find_arg(spec, key);
        if (!a) {
            if (spec.open_schema) continue;
            return make_error("Parameter '" + key + "' is unexpected");
        }
        if (!matches(a->type, value))
            return make_error("Parameter '" + key + "' expects " + arg_type_name(a->type));
    }
    for (const auto& a : spec.args)
        if (a.required && !args.contains(a.name))
            return make_error("Parameter '" + a.name + "' is missing");
    return {};
}

io::Task<Result<json>> dispatch(const CommandRegistry& registry, CommandContext& ctx,
                                std::string name, json args) {
    const CommandSpec* spec = registry.find(name);
    if (!spec) co_return Error{"CommandNotFound", "The command " + name + " has not been found"};
    if (Status st = validate_args(*spec, args); !st) co_return st.error();
    ctx.registry = &registry;
    co_return co_await spec->handler(ctx, args);
}

} // namespace fleece::control
