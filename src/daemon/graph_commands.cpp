// QMP commands over the block graph: blockdev-add, blockdev-del, query-named-block-nodes,
// x-debug-query-block-graph, and the fault-injection control used by tests.

#include "daemon/graph_commands.hpp"

#include "block/graph.hpp"
#include "daemon/replace_command.hpp"
#include "io/event_loop.hpp"
#include "nodes/fault_injection/fault_injection_node.hpp"
#include "nodes/query.hpp"
#include "nodes/registry.hpp"

namespace fleece::daemon {
namespace {

using nlohmann::json;

block::Graph& graph_of(control::CommandContext& ctx) {
    return *static_cast<Services*>(ctx.services)->graph;
}

io::Task<Result<json>> blockdev_add_command(control::CommandContext& ctx, const json& args) {
    auto node = co_await nodes::blockdev_add(graph_of(ctx), args);
    if (!node) co_return node.error();
    co_return json::object();
}

io::Task<Result<json>> blockdev_del_command(control::CommandContext& ctx, const json& args) {
    Status st = co_await graph_of(ctx).remove(args.at("node-name").get<std::string>());
    if (!st) co_return st.error();
    co_return json::object();
}

io::Task<Result<json>> query_named_block_nodes_command(control::CommandContext& ctx,
                                                       const json& args) {
    const bool flat = args.value("flat", false);
    co_return nodes::query_named_block_nodes(graph_of(ctx), flat);
}

io::Task<Result<json>> debug_block_graph_command(control::CommandContext& ctx, const json&) {
    co_return nodes::debug_block_graph(graph_of(ctx));
}

io::Task<Result<json>> fault_injection_set_command(control::CommandContext& ctx, const json& args) {
    const std::string name = args.at("node-name").get<std::string>();
    block::Node* node = graph_of(ctx).find(name);
    if (!node) co_return Error{"DeviceNotFound", "Cannot find node-name='" + name + "'"};
    Status st = nodes::fault_injection_set(*node, args.at("rules"));
    if (!st) co_return st.error();
    co_return json::object();
}

} // namespace

void register_graph_commands(control::CommandRegistry& registry, Services& services) {
    using control::ArgType;
    registry.add({"blockdev-add",
                  "Creates a block node (and nested ones) from driver options",
                  {{"driver", ArgType::str, true}, {"node-name", ArgType::str, false}},
                  true,
                  blockdev_add_command});
    registry.add({"blockdev-del",
                  "Deletes a block node that has no users",
                  {{"node-name", ArgType::str, true}},
                  false,
                  blockdev_del_command});
    registry.add({"query-named-block-nodes",
                  "Lists every block node",
                  {{"flat", ArgType::boolean, false}},
                  false,
                  query_named_block_nodes_command});
    registry.add({"x-debug-query-block-graph",
                  "Dumps nodes and edges with permissions",
                  {},
                  false,
                  debug_block_graph_command});
    registry.add({"x-fault-injection-set",
                  "Replaces the rules of a fault-injection node (tests)",
                  {{"node-name", ArgType::str, true}, {"rules", ArgType::array, true}},
                  false,
                  fault_injection_set_command});
    register_replace_command(registry);
    services.blockdev_add = [&services](const json& options) -> Result<void> {
        auto node =
            services.loop->run_until_complete(nodes::blockdev_add(*services.graph, options));
        if (!node) return node.error();
        return Result<void>();
    };
}

} // namespace fleece::daemon
