// blockdev-replace, modelled on the command proposed for QEMU (a union on `parent-type`):
//   {"parent-type": "export", "id": E,                       "new-child": N}
//   {"parent-type": "driver", "parent": P, "child": C,       "new-child": N}
// The move is drained (requests in flight finish first, new ones wait and then go to N),
// and transactional (on a permission conflict, a loop or a size mismatch nothing changes).
// It is also a `transaction` action (fleeced only), undone by moving the edge back.

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

struct ResolvedReplace {
    block::Child* edge = nullptr;
    block::Node* to = nullptr;
};

Result<ResolvedReplace> resolve(Services& s, const json& args) {
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
    return ResolvedReplace{*edge, to};
}

io::Task<Result<json>> blockdev_replace_command(control::CommandContext& ctx, const json& args) {
    auto r = resolve(services_of(ctx), args);
    if (!r) co_return r.error();
    Status st = co_await services_of(ctx).graph->replace_child(*r->edge, *r->to);
    if (!st) co_return st.error();
    co_return json::object();
}

// As a transaction action (a fleeced extension): the filter insertion and dirty bitmap
// changes happen at one instant, so `fleece backup` resets its change-tracking bitmap
// exactly at the snapshot point (no guest write falls between the two).
class ReplaceAction final : public TransactionAction {
  public:
    explicit ReplaceAction(json data) : data_(std::move(data)) {}
    io::Task<Status> prepare(TransactionContext* ctx) override {
        auto r = resolve(*ctx->services, data_);
        if (!r) co_return r.error();
        edge_ = r->edge;
        from_ = &edge_->node();
        Status st = co_await ctx->services->graph->replace_child(*edge_, *r->to);
        if (st) moved_ = true;
        co_return st;
    }
    void commit(TransactionContext*) override {}
    io::Task<void> abort(TransactionContext* ctx) override {
        if (moved_) (void)co_await ctx->services->graph->replace_child(*edge_, *from_);
    }

  private:
    json data_;
    block::Child* edge_ = nullptr;
    block::Node* from_ = nullptr;
    bool moved_ = false;
};

const std::vector<control::ArgSpec>& replace_args() {
    using control::ArgType;
    static const std::vector<control::ArgSpec> a = {{"parent-type", ArgType::str, true},
                                                    {"new-child", ArgType::str, true},
                                                    {"id", ArgType::str, false},
                                                    {"parent", ArgType::str, false},
                                                    {"child", ArgType::str, false}};
    return a;
}

} // namespace

void register_replace_command(control::CommandRegistry& registry) {
    registry.add({"blockdev-replace",
                  "Points an export or a node's child at another node, live (filter insertion)",
                  replace_args(), false, blockdev_replace_command});
    register_transaction_action(
        {"blockdev-replace", replace_args(), false,
         [](const json& data) -> Result<std::unique_ptr<TransactionAction>> {
             return std::unique_ptr<TransactionAction>(std::make_unique<ReplaceAction>(data));
         }});
}

} // namespace fleece::daemon
