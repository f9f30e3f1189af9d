// QMP `transaction` and the table of action types (see transaction.hpp).

#include "block/graph.hpp"
#include "daemon/transaction.hpp"
#include "jobs/job.hpp"

#include <fmt/format.h>
#include <map>

namespace fleece::daemon {
namespace {

using nlohmann::json;

std::map<std::string, TransactionActionType>& action_table() {
    static std::map<std::string, TransactionActionType> table;
    return table;
}

Services& services_of(control::CommandContext& ctx) {
    return *static_cast<Services*>(ctx.services);
}

// Parses every action before anything happens, so a typo in the last action changes
// nothing.
Result<std::vector<std::unique_ptr<TransactionAction>>> build_actions(const json& list,
                                                                      bool grouped) {
    std::vector<std::unique_ptr<TransactionAction>> out;
    for (const json& item : list) {
        if (!item.is_object() || !item.contains("type") || !item["type"].is_string())
            return make_error("Parameter 'actions' expects a list of {type, data} objects");
        const std::string type = item["type"].get<std::string>();
        const TransactionActionType* t = find_transaction_action(type);
        if (!t)
            return make_error(
                fmt::format("Invalid parameter 'type': '{}' is not a transaction action", type));
        if (grouped && !t->supports_grouped)
            return make_error(fmt::format(
                "Action '{}' does not support Transaction property completion-mode = grouped",
                type));
        const json data = item.value("data", json::object());
        if (!data.is_object()) return make_error("Parameter 'data' expects an object");
        control::CommandSpec spec{type, "", t->schema, false, nullptr};
        if (Status st = control::validate_args(spec, data); !st) return st.error();
        auto action = t->factory(data);
        if (!action) return action.error();
        bool absorbed = false;
        for (auto& earlier : out)
            if ((absorbed = earlier->absorb(**action))) break;
        if (!absorbed) out.push_back(std::move(*action));
    }
    return out;
}

io::Task<Result<json>> transaction_command(control::CommandContext& ctx, const json& args) {
    bool grouped = false;
    if (args.contains("properties")) {
        const json& props = args["properties"];
        for (const auto& [key, value] : props.items())
            if (key != "completion-mode")
                co_return make_error(fmt::format("Parameter 'properties.{}' is unexpected", key));
        if (props.contains("completion-mode")) {
            const json& mode = props["completion-mode"];
            if (mode == "grouped")
                grouped = true;
            else if (mode != "individual")
                co_return make_error(
                    "Parameter 'completion-mode' does not accept value (use 'individual' or "
                    "'grouped')");
        }
    }
    auto actions = build_actions(args.at("actions"), grouped);
    if (!actions) co_return actions.error();
    Status st = co_await run_transaction(&ctx, std::move(*actions), grouped);
    if (!st) co_return st.error();
    // As the bitmap commands do: return once the nodes' bitmap storage holds what the
    // actions changed (a bitmap added at a backup's snapshot point survives a crash).
    for (block::Node* n : services_of(ctx).graph->nodes())
        co_await n->wait_bitmap_updates();
    co_return json::object();
}

} // namespace

void register_transaction_action(TransactionActionType type) {
    std::string name = type.type;
    action_table()[name] = std::move(type);
}

const TransactionActionType* find_transaction_action(const std::string& type) {
    auto it = action_table().find(type);
    return it == action_table().end() ? nullptr : &it->second;
}

io::Task<Status> run_transaction(control::CommandContext* ctx,
                                 std::vector<std::unique_ptr<TransactionAction>> actions,
                                 bool grouped) {
    Services& s = services_of(*ctx);
    TransactionContext tctx;
    tctx.services = &s;
    tctx.command = ctx;
    if (grouped) tctx.group = std::make_shared<jobs::JobTxn>();
    // One drained section for everything: guest writes wait at the export edges while
    // filters go in, so every backup of this transaction sees the same instant.
    block::DrainedSection drained = co_await s.graph->drain_all();
    std::size_t prepared = 0;
    Status result;
    for (; prepared < actions.size(); ++prepared) {
        result = co_await actions[prepared]->prepare(&tctx);
        if (!result) break;
    }
    if (!result) {
        while (prepared > 0)
            co_await actions[--prepared]->abort(&tctx);
        drained.end();
        co_return result;
    }
    for (auto& a : actions)
        a->commit(&tctx);
    drained.end();
    co_return Status{};
}

void register_transaction_commands(control::CommandRegistry& registry) {
    using control::ArgType;
    registry.add({"transaction",
                  "Runs several actions atomically, at one point in time",
                  {{"actions", ArgType::array, true}, {"properties", ArgType::object, false}},
                  false,
                  transaction_command});
}

} // namespace fleece::daemon
