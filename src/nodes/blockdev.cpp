#include "nodes/registry.hpp"

#include <fmt/format.h>

namespace fleece::nodes {

namespace {

bool valid_node_name(const std::string& name) {
    // QEMU: up to 31 characters, letters first, then letters, digits, '-', '.', '_'.
    if (name.empty() || name.size() > 31 || !std::isalpha(static_cast<unsigned char>(name[0])))
        return false;
    for (char c : name)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != '_')
            return false;
    return true;
}

Result<CommonOptions> read_common(OptionReader& r) {
    CommonOptions c;
    c.read_only = r.boolean("read-only").value_or(false);
    c.auto_read_only = r.boolean("auto-read-only").value_or(false);
    c.force_share = r.boolean("force-share").value_or(false);
    c.discard = r.choice("discard", {"ignore", "off", "unmap", "on"}).value_or("ignore");
    if (c.discard == "off") c.discard = "ignore";
    if (c.discard == "on") c.discard = "unmap";
    c.detect_zeroes = r.choice("detect-zeroes", {"off", "on", "unmap"}).value_or("off");
    OptionReader cache = r.object("cache");
    c.cache_direct = cache.boolean("direct").value_or(false);
    c.cache_no_flush = cache.boolean("no-flush").value_or(false);
    if (Status st = cache.finish(); !st) return st.error();
    return c;
}

io::Task<Result<block::Node*>> open_node(OpenContext& ctx, nlohmann::json options, bool implicit) {
    if (!options.is_object())
        co_return make_error("Invalid parameter type for 'options', expected: object");
    OptionReader r(options);
    const std::string driver_name = r.required_string("driver");
    std::string node_name;
    if (auto n = r.string("node-name")) {
        node_name = *n;
        if (!valid_node_name(node_name))
            co_return make_error("Invalid node-name: '" + node_name + "'");
    } else if (implicit) {
        node_name = ctx.graph.generate_name();
    } else {
        r.fail("Parameter 'node-name' is missing");
    }
    if (Status st = r.finish(); !st && driver_name.empty()) co_return st.error();
    const DriverSpec* driver = find_driver(driver_name);
    if (!driver)
        co_return make_error(
            fmt::format("Parameter 'driver' does not accept value '{}'", driver_name));
    if (!node_name.empty() && ctx.graph.find(node_name))
        co_return make_error(fmt::format("Duplicate nodes with node-name='{}'", node_name));
    auto common = read_common(r);
    if (!common) co_return common.error();
    auto node = co_await driver->open(ctx, node_name, *common, r);
    if (!node) co_return node.error();
    if (Status st = r.finish(); !st) co_return st.error();
    (*node)->set_implicit(implicit && !options.contains("node-name"));
    auto added = ctx.graph.add(std::move(*node));
    if (!added) co_return added.error();
    if (implicit) ctx.created.push_back((*added)->name());
    co_return *added;
}

} // namespace

io::Task<Result<block::Node*>> resolve_ref(OpenContext& ctx, const nlohmann::json& ref,
                                           std::string what) {
    if (ref.is_string()) {
        block::Node* n = ctx.graph.find(ref.get<std::string>());
        if (!n)
            co_return make_error(
                fmt::format("Cannot find device='' nor node-name='{}'", ref.get<std::string>()));
        co_return n;
    }
    if (ref.is_object()) co_return co_await open_node(ctx, ref, true);
    co_return make_error(
        fmt::format("Invalid parameter type for '{}', expected: object or string", what));
}

io::Task<Result<block::Node*>> blockdev_add(block::Graph& graph, nlohmann::json options) {
    OpenContext ctx{graph, {}};
    auto node = co_await open_node(ctx, std::move(options), false);
    if (!node) {
        // Roll back nested nodes, newest first; each had only the failed node as user.
        for (auto it = ctx.created.rbegin(); it != ctx.created.rend(); ++it)
            (void)co_await graph.remove(*it);
    }
    co_return node;
}

const DriverSpec* find_driver(std::string_view name) {
    for (const auto& d : drivers())
        if (d.name == name) return &d;
    return nullptr;
}

} // namespace fleece::nodes
