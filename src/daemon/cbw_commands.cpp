// x-cbw-set-bitmap: see cbw_commands.hpp.

#include "daemon/cbw_commands.hpp"

#include "block/graph.hpp"
#include "daemon/transaction.hpp"
#include "nodes/copy_before_write/cbw_node.hpp"

#include <fmt/format.h>

namespace fleece::daemon {
namespace {

using nlohmann::json;

constexpr const char* kType = "x-cbw-set-bitmap";

std::vector<control::ArgSpec> set_bitmap_args() {
    using control::ArgType;
    return {{"node", ArgType::str, true}, {"bitmap", ArgType::object, true}};
}

// Applied in prepare (later actions of the transaction see it), undone exactly in abort.
// With the graph drained no request uses the filter between the two.
class SetBitmapAction final : public TransactionAction {
  public:
    explicit SetBitmapAction(json data) : data_(std::move(data)) {}

    io::Task<Status> prepare(TransactionContext* ctx) override {
        block::Graph& graph = *ctx->services->graph;
        const std::string name = data_["node"].get<std::string>();
        block::Node* node = graph.find(name);
        if (!node) co_return make_error(fmt::format("Node '{}' not found", name));
        auto* cbw = dynamic_cast<nodes::CbwNode*>(node);
        if (!cbw)
            co_return make_error(fmt::format(
                "Node '{}' is not a copy-before-write filter (driver '{}')", name, node->driver()));
        auto bitmap = nodes::find_cbw_bitmap(graph, data_["bitmap"], cbw->size());
        if (!bitmap) co_return bitmap.error();
        if (!cbw->set_bitmap(**bitmap, &before_))
            co_return make_error(fmt::format(
                "Copy-before-write filter '{}' is already in use (it copied, served the snapshot "
                "or belongs to a backup job): its bitmap can only be set before that",
                name));
        cbw_ = cbw;
        co_return Status{};
    }
    void commit(TransactionContext*) override { cbw_ = nullptr; }
    io::Task<void> abort(TransactionContext*) override {
        if (cbw_) cbw_->restore_copy_sets(std::move(before_));
        cbw_ = nullptr;
        co_return;
    }

  private:
    json data_;
    nodes::CbwNode* cbw_ = nullptr;
    nodes::CbwCopySets before_;
};

Result<std::unique_ptr<TransactionAction>> make_action(const json& data) {
    return std::unique_ptr<TransactionAction>(std::make_unique<SetBitmapAction>(data));
}

// The command is a one-action transaction: drained like the transaction form.
io::Task<Result<json>> set_bitmap_command(control::CommandContext& ctx, const json& args) {
    std::vector<std::unique_ptr<TransactionAction>> actions;
    actions.push_back(std::make_unique<SetBitmapAction>(args));
    Status st = co_await run_transaction(&ctx, std::move(actions), false);
    if (!st) co_return st.error();
    co_return json::object();
}

} // namespace

void register_cbw_commands(control::CommandRegistry& registry) {
    register_transaction_action({kType, set_bitmap_args(), false, make_action});
    registry.add({kType,
                  "Makes a copy-before-write filter copy (and its snapshot serve) only the dirty "
                  "clusters of a bitmap, from now on",
                  set_bitmap_args(), false, set_bitmap_command});
}

} // namespace fleece::daemon
