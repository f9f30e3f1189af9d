// blockdev-replace, modelled on the command proposed for QEMU (a union on `parent-type`):
//   {"parent-type": "export", "id": E,                       "new-child": N}
//   {"parent-type": "driver", "parent": P, "child": C,       "new-child": N}
// The move is drained (requests in flight finish first, new ones wait and then go to N),
// and transactional (on a permission conflict, a loop or a size mismatch nothing changes).
//
// It is also a `transaction` action. All blockdev-replace actions of one transaction are
// applied together, as one graph change at the position of the first of them, with the
// permissions checked only for the result: that is how several users of a node (two
// writers, say) move onto a filter that forbids writes bypassing it. One at a time, the
// first move would conflict with the writers still on the node.

#include "daemon/replace_command.hpp"

#include "block/graph.hpp"
#include "daemon/services.hpp"
#include "daemon/transaction.hpp"
#include "nbd/server.hpp"

#include <fmt/format.h>

namespace fleece::daemon {
namespace {

using nlohmann::json;

Services& services_of(control::CommandContext& ctx) {
    return *static_cast<Services*>(ctx.services);
}

Result<block::Child*> export_edge(Services& s, const json& args) {
    if (!args.contains("id")) return make_error("Parameter 'id' is missing");
    const std::string id = args["id"].get<std::string>();
    if (s.nbd_server)
        for (const auto& e : s.nbd_server->exports())
            if (e->options().id == id) return &e->child();
    return make_error(fmt::format("Export '{}' is not found", id));
}

// Drivers whose child is part of what they mean (the snapshot behind a snapshot-access
// node, the copy-before-write file and fleecing target) cannot have it swapped live.
bool child_is_replaceable(const block::Node& parent, const block::Child& c) {
    if (parent.driver() == "snapshot-access" || parent.driver() == "copy-before-write")
        return false;
    return c.role() != block::ChildRole::target;
}

Result<block::Child*> node_edge(block::Graph& graph, const json& args) {
    if (!args.contains("parent")) return make_error("Parameter 'parent' is missing");
    if (!args.contains("child")) return make_error("Parameter 'child' is missing");
    const std::string parent_name = args["parent"].get<std::string>();
    const std::string child_name = args["child"].get<std::string>();
    block::Node* parent = graph.find(parent_name);
    if (!parent)
        return Error{"DeviceNotFound", fmt::format("Cannot find node-name='{}'", parent_name)};
    block::Child* c = parent->child(child_name);
    if (!c)
        return make_error(
            fmt::format("Node '{}' has no child named '{}'", parent_name, child_name));
    if (!child_is_replaceable(*parent, *c))
        return make_error(
            fmt::format("The '{}' child of node '{}' (driver '{}') cannot be replaced", child_name,
                        parent_name, parent->driver()));
    return c;
}

// The edge named by one set of blockdev-replace arguments, and the node it is to point at.
Result<std::pair<block::Child*, block::Node*>> resolve_move(Services& s, const json& args) {
    const std::string type = args.at("parent-type").get<std::string>();
    Result<block::Child*> edge = make_error("unset");
    if (type == "export") {
        edge = export_edge(s, args);
    } else if (type == "driver") {
        edge = node_edge(*s.graph, args);
    } else if (type == "qdev") {
        return make_error("parent-type 'qdev' is not available: fleeced has no devices");
    } else {
        return make_error(fmt::format("Parameter 'parent-type' does not accept value '{}'", type));
    }
    if (!edge) return edge.error();
    const std::string new_name = args.at("new-child").get<std::string>();
    block::Node* to = s.graph->find(new_name);
    if (!to) return Error{"DeviceNotFound", fmt::format("Cannot find node-name='{}'", new_name)};
    return std::pair<block::Child*, block::Node*>{*edge, to};
}

io::Task<Result<json>> blockdev_replace_command(control::CommandContext& ctx, const json& args) {
    Services& s = services_of(ctx);
    auto move = resolve_move(s, args);
    if (!move) co_return move.error();
    Status st = co_await s.graph->replace_child(*move->first, *move->second);
    if (!st) co_return st.error();
    co_return json::object();
}

class ReplaceAction final : public TransactionAction {
  public:
    explicit ReplaceAction(json args) { args_.push_back(std::move(args)); }

    bool absorb(TransactionAction& later) override {
        auto* other = dynamic_cast<ReplaceAction*>(&later);
        if (!other) return false;
        for (json& a : other->args_)
            args_.push_back(std::move(a));
        other->args_.clear();
        return true;
    }

    io::Task<Status> prepare(TransactionContext* ctx) override {
        std::vector<std::pair<block::Child*, block::Node*>> moves;
        for (const json& a : args_) {
            auto move = resolve_move(*ctx->services, a);
            if (!move) co_return move.error();
            moves.push_back(*move);
        }
        undo_.clear();
        for (const auto& [edge, to] : moves)
            undo_.push_back({edge, &edge->node()});
        Status st = co_await ctx->services->graph->replace_children(moves);
        if (!st) undo_.clear();
        co_return st;
    }

    void commit(TransactionContext*) override { undo_.clear(); }

    io::Task<void> abort(TransactionContext* ctx) override {
        if (undo_.empty()) co_return;
        // Back to where every edge was; the graph before was valid, so this cannot conflict.
        Status st = co_await ctx->services->graph->replace_children(std::move(undo_));
        (void)st;
        undo_.clear();
    }

  private:
    std::vector<json> args_;
    std::vector<std::pair<block::Child*, block::Node*>> undo_;
};

std::vector<control::ArgSpec> replace_schema() {
    using control::ArgType;
    return {{"parent-type", ArgType::str, true},
            {"new-child", ArgType::str, true},
            {"id", ArgType::str, false},
            {"parent", ArgType::str, false},
            {"child", ArgType::str, false}};
}

Result<std::unique_ptr<TransactionAction>> replace_action(const json& data) {
    return std::unique_ptr<TransactionAction>(new ReplaceAction(data));
}

} // namespace

void register_replace_command(control::CommandRegistry& registry) {
    registry.add({"blockdev-replace",
                  "Points an export or a node's child at another node, live (filter insertion)",
                  replace_schema(), false, blockdev_replace_command});
    register_transaction_action({"blockdev-replace", replace_schema(), false, replace_action});
}

} // namespace fleece::daemon
