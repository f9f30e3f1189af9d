// QMP dirty bitmap commands and their transaction actions (see bitmap_commands.hpp).

#include "daemon/bitmap_commands.hpp"

#include "block/bitmap_sidecar_store.hpp"
#include "block/dirty_bitmap.hpp"
#include "block/graph.hpp"
#include "daemon/services.hpp"
#include "daemon/transaction.hpp"

#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <map>
#include <optional>
#include <unistd.h>
#include <vector>

namespace fleece::daemon {
namespace {

using block::DirtyBitmap;
using nlohmann::json;

// ---- argument schemas (shared by the commands and the transaction actions) -------------

using control::ArgType;
const std::vector<control::ArgSpec>& add_args() {
    static const std::vector<control::ArgSpec> a = {{"node", ArgType::str, true},
                                                    {"name", ArgType::str, true},
                                                    {"granularity", ArgType::integer, false},
                                                    {"persistent", ArgType::boolean, false},
                                                    {"disabled", ArgType::boolean, false}};
    return a;
}
const std::vector<control::ArgSpec>& name_args() {
    static const std::vector<control::ArgSpec> a = {{"node", ArgType::str, true},
                                                    {"name", ArgType::str, true}};
    return a;
}
const std::vector<control::ArgSpec>& merge_args() {
    static const std::vector<control::ArgSpec> a = {{"node", ArgType::str, true},
                                                    {"target", ArgType::str, true},
                                                    {"bitmaps", ArgType::array, true}};
    return a;
}

Status validate(std::string_view type, const std::vector<control::ArgSpec>& args,
                const json& data) {
    control::CommandSpec spec;
    spec.name = std::string(type);
    spec.args = args;
    if (!data.is_object()) return make_error("Invalid parameter type for 'data', expected: object");
    return control::validate_args(spec, data);
}

Result<block::Node*> find_node(block::Graph& graph, const std::string& name) {
    block::Node* n = graph.find(name);
    if (!n)
        return make_error(fmt::format("Cannot find device='{}' nor node-name='{}'", name, name));
    return n;
}

// block_dirty_bitmap_lookup in QEMU: node, then bitmap.
Result<DirtyBitmap*> lookup(block::Graph& graph, const std::string& node, const std::string& name,
                            block::Node** node_out = nullptr) {
    auto n = find_node(graph, node);
    if (!n) return n.error();
    DirtyBitmap* b = (*n)->dirty_bitmaps().find(name);
    if (!b) return make_error(fmt::format("Dirty bitmap '{}' not found", name));
    if (node_out) *node_out = *n;
    return b;
}

// ---- actions ----------------------------------------------------------------------------

// What every action works from: the graph and the arguments (a command's, or the data of a
// transaction entry).
class ActionOnArgs : public BitmapAction {
  public:
    ActionOnArgs(block::Graph& g, json d) : graph_(g), data_(std::move(d)) {}

  protected:
    // The bitmap the "node" and "name" arguments name.
    Result<DirtyBitmap*> named_bitmap(block::Node** node_out = nullptr) {
        return lookup(graph_, data_["node"].get<std::string>(), data_["name"].get<std::string>(),
                      node_out);
    }

    block::Graph& graph_;
    json data_;
};

class AddAction final : public ActionOnArgs {
  public:
    using ActionOnArgs::ActionOnArgs;
    Status prepare() override {
        if (Status st = validate("block-dirty-bitmap-add", add_args(), data_); !st) return st;
        auto n = find_node(graph_, data_["node"].get<std::string>());
        if (!n) return n.error();
        block::Node& node = **n;
        std::uint64_t granularity = block::default_bitmap_granularity(node.limits().cluster_size);
        if (data_.contains("granularity")) {
            const json& g = data_["granularity"];
            if (!g.is_number_unsigned())
                return make_error("Parameter 'granularity' expects uint32_t");
            granularity = g.get<std::uint64_t>();
        }
        const bool persistent = data_.value("persistent", false);
        const std::string name = data_["name"].get<std::string>();
        if (persistent && !name.empty() && !node.supports_persistent_bitmaps() &&
            !node.external_bitmap_store())
            return make_error(fmt::format(
                "Can't store persistent bitmaps to {}: Operation not supported", node.name()));
        auto b = node.dirty_bitmaps().add(name, node.size(), granularity);
        if (!b) return b.error();
        (*b)->set_persistent(persistent);
        (*b)->set_enabled(!data_.value("disabled", false));
        node_ = &node;
        added_ = *b;
        return {};
    }
    void abort() override {
        if (added_) node_->dirty_bitmaps().remove(added_);
    }

  private:
    block::Node* node_ = nullptr;
    DirtyBitmap* added_ = nullptr;
};

class RemoveAction final : public ActionOnArgs {
  public:
    using ActionOnArgs::ActionOnArgs;
    Status prepare() override {
        if (Status st = validate("block-dirty-bitmap-remove", name_args(), data_); !st) return st;
        auto b = named_bitmap(&node_);
        if (!b) return b.error();
        if (Status st = check_bitmap(**b, block::bitmap_check_busy | block::bitmap_check_readonly);
            !st)
            return st;
        // Hidden from the rest of the transaction: busy until it is really gone.
        bitmap_ = *b;
        bitmap_->set_busy(true);
        return {};
    }
    void commit() override {
        const bool persistent = bitmap_->persistent();
        const std::string name = bitmap_->name();
        node_->dirty_bitmaps().remove(bitmap_);
        if (persistent) node_->persistent_bitmap_removed(name);
    }
    void abort() override { bitmap_->set_busy(false); }

  private:
    block::Node* node_ = nullptr;
    DirtyBitmap* bitmap_ = nullptr;
};

class ClearAction final : public ActionOnArgs {
  public:
    using ActionOnArgs::ActionOnArgs;
    Status prepare() override {
        if (Status st = validate("block-dirty-bitmap-clear", name_args(), data_); !st) return st;
        auto b = named_bitmap();
        if (!b) return b.error();
        if (Status st = check_bitmap(**b, block::bitmap_check_all); !st) return st;
        bitmap_ = *b;
        saved_ = bitmap_->copy_bits();
        bitmap_->clear();
        return {};
    }
    void abort() override { bitmap_->restore_bits(std::move(*saved_)); }

  private:
    DirtyBitmap* bitmap_ = nullptr;
    std::optional<Bitmap> saved_;
};

class EnableAction final : public ActionOnArgs {
  public:
    EnableAction(block::Graph& g, json d, bool enable)
        : ActionOnArgs(g, std::move(d)), enable_(enable) {}
    Status prepare() override {
        const char* type = enable_ ? "block-dirty-bitmap-enable" : "block-dirty-bitmap-disable";
        if (Status st = validate(type, name_args(), data_); !st) return st;
        auto b = named_bitmap();
        if (!b) return b.error();
        if (Status st = check_bitmap(**b, block::bitmap_check_allow_readonly); !st) return st;
        bitmap_ = *b;
        was_ = bitmap_->enabled();
        bitmap_->set_enabled(enable_);
        return {};
    }
    void abort() override { bitmap_->set_enabled(was_); }

  private:
    bool enable_;
    DirtyBitmap* bitmap_ = nullptr;
    bool was_ = false;
};

class MergeAction final : public ActionOnArgs {
  public:
    using ActionOnArgs::ActionOnArgs;
    Status prepare() override {
        if (Status st = validate("block-dirty-bitmap-merge", merge_args(), data_); !st) return st;
        const std::string node = data_["node"].get<std::string>();
        auto dst = lookup(graph_, node, data_["target"].get<std::string>());
        if (!dst) return dst.error();
        if (Status st = check_bitmap(**dst, block::bitmap_check_all); !st) return st;
        // Collect and check every source first: the merge is all or nothing.
        std::vector<const DirtyBitmap*> sources;
        const json& list = data_["bitmaps"];
        for (std::size_t i = 0; i < list.size(); ++i) {
            const json& item = list[i];
            Result<DirtyBitmap*> src = make_error("");
            if (item.is_string()) {
                src = lookup(graph_, node, item.get<std::string>());
            } else if (item.is_object() && item.contains("node") && item["node"].is_string() &&
                       item.contains("name") && item["name"].is_string() && item.size() == 2) {
                block::Node* n = graph_.find(item["node"].get<std::string>());
                if (!n)
                    return make_error(
                        fmt::format("Node '{}' not found", item["node"].get<std::string>()));
                src = lookup(graph_, n->name(), item["name"].get<std::string>());
            } else {
                return make_error(fmt::format(
                    "Invalid parameter type for 'bitmaps[{}]', expected: string or object "
                    "{{node, name}}",
                    i));
            }
            if (!src) return src.error();
            if (Status st = check_bitmap(**src, block::bitmap_check_busy |
                                                    block::bitmap_check_inconsistent);
                !st)
                return st;
            if (Status st = block::merge_check(**dst, **src); !st) return st;
            sources.push_back(*src);
        }
        bitmap_ = *dst;
        saved_ = bitmap_->copy_bits();
        for (const DirtyBitmap* s : sources)
            bitmap_->merge(*s);
        return {};
    }
    void abort() override { bitmap_->restore_bits(std::move(*saved_)); }

  private:
    DirtyBitmap* bitmap_ = nullptr;
    std::optional<Bitmap> saved_;
};

// ---- commands ---------------------------------------------------------------------------

block::Graph& graph_of(control::CommandContext& ctx) {
    return *static_cast<Services*>(ctx.services)->graph;
}

io::Task<Result<json>> sidecar_command(control::CommandContext& ctx, const json& args) {
    if (Status st = attach_sidecar(graph_of(ctx), args); !st) co_return st.error();
    co_return json::object();
}

template <const char* Type>
io::Task<Result<json>> bitmap_command(control::CommandContext& ctx, const json& args) {
    std::unique_ptr<BitmapAction> action = make_bitmap_action(graph_of(ctx), Type, args);
    if (Status st = action->prepare(); !st) co_return st.error();
    action->commit();
    // The change is in the node's persistent bitmap storage (a qcow2 image's removal, a
    // sidecar) before the command returns.
    if (block::Node* n = graph_of(ctx).find(args.at("node").get<std::string>()))
        co_await n->wait_bitmap_updates();
    co_return json::object();
}

constexpr char add_type[] = "block-dirty-bitmap-add";
constexpr char remove_type[] = "block-dirty-bitmap-remove";
constexpr char clear_type[] = "block-dirty-bitmap-clear";
constexpr char enable_type[] = "block-dirty-bitmap-enable";
constexpr char disable_type[] = "block-dirty-bitmap-disable";
constexpr char merge_type[] = "block-dirty-bitmap-merge";

} // namespace

bool is_bitmap_action(std::string_view type) {
    for (std::string_view t :
         {add_type, remove_type, clear_type, enable_type, disable_type, merge_type})
        if (t == type) return true;
    return false;
}

std::unique_ptr<BitmapAction> make_bitmap_action(block::Graph& graph, std::string_view type,
                                                 json data) {
    if (type == add_type) return std::make_unique<AddAction>(graph, std::move(data));
    if (type == remove_type) return std::make_unique<RemoveAction>(graph, std::move(data));
    if (type == clear_type) return std::make_unique<ClearAction>(graph, std::move(data));
    if (type == enable_type) return std::make_unique<EnableAction>(graph, std::move(data), true);
    if (type == disable_type) return std::make_unique<EnableAction>(graph, std::move(data), false);
    if (type == merge_type) return std::make_unique<MergeAction>(graph, std::move(data));
    FLEECE_ASSERT(!"not a bitmap action");
    return nullptr;
}

namespace {

// A bitmap action inside `transaction`: built when prepared (the graph comes from the
// transaction's services), undone in reverse order by the transaction on failure.
class BitmapTransactionAction final : public TransactionAction {
  public:
    BitmapTransactionAction(std::string type, json data)
        : type_(std::move(type)), data_(std::move(data)) {}

    io::Task<Status> prepare(TransactionContext* ctx) override {
        action_ = make_bitmap_action(*ctx->services->graph, type_, data_);
        if (!action_) co_return make_error(fmt::format("Unknown action '{}'", type_));
        co_return action_->prepare();
    }
    void commit(TransactionContext*) override {
        if (action_) action_->commit();
    }
    io::Task<void> abort(TransactionContext*) override {
        if (action_) action_->abort();
        co_return;
    }

  private:
    std::string type_;
    json data_;
    std::unique_ptr<BitmapAction> action_;
};

void register_bitmap_transaction_action(const char* type,
                                        const std::vector<control::ArgSpec>& schema) {
    const std::string name = type;
    register_transaction_action(
        {name, schema, false, // QEMU refuses completion-mode=grouped for bitmap actions
         [name](const json& data) -> Result<std::unique_ptr<TransactionAction>> {
             return std::unique_ptr<TransactionAction>(
                 std::make_unique<BitmapTransactionAction>(name, data));
         }});
}

} // namespace

Status attach_sidecar(block::Graph& graph, const json& args) {
    auto node = find_node(graph, args.at("node").get<std::string>());
    if (!node) return node.error();
    block::SidecarOptions options;
    options.write_ahead = args.value("write-ahead", false);
    if (args.contains("journal-granularity")) {
        const json& g = args["journal-granularity"];
        if (!g.is_number_unsigned())
            return make_error("Parameter 'journal-granularity' expects uint64");
        options.journal_granularity = g.get<std::uint64_t>();
        if (!options.write_ahead)
            return make_error("Parameter 'journal-granularity' needs 'write-ahead': true");
    }
    return block::SidecarStore::attach(**node, args.at("path").get<std::string>(), options);
}

void register_bitmap_commands(control::CommandRegistry& registry) {
    register_bitmap_transaction_action(add_type, add_args());
    register_bitmap_transaction_action(remove_type, name_args());
    register_bitmap_transaction_action(clear_type, name_args());
    register_bitmap_transaction_action(enable_type, name_args());
    register_bitmap_transaction_action(disable_type, name_args());
    register_bitmap_transaction_action(merge_type, merge_args());
    registry.add({"x-block-dirty-bitmap-sidecar",
                  "Keeps a node's persistent bitmaps in a sidecar file (loads it, marks it in "
                  "use; saved clean at shutdown)",
                  {{"node", ArgType::str, true},
                   {"path", ArgType::str, true},
                   {"write-ahead", ArgType::boolean, false},
                   {"journal-granularity", ArgType::any, false}},
                  false,
                  sidecar_command});
    registry.add({add_type, "Creates a dirty bitmap on a node", add_args(), false,
                  bitmap_command<add_type>});
    registry.add(
        {remove_type, "Deletes a dirty bitmap", name_args(), false, bitmap_command<remove_type>});
    registry.add(
        {clear_type, "Clears a dirty bitmap", name_args(), false, bitmap_command<clear_type>});
    registry.add({enable_type, "Makes a dirty bitmap record writes", name_args(), false,
                  bitmap_command<enable_type>});
    registry.add({disable_type, "Stops a dirty bitmap from recording writes", name_args(), false,
                  bitmap_command<disable_type>});
    registry.add({merge_type, "Merges dirty bitmaps (also from other nodes) into a target",
                  merge_args(), false, bitmap_command<merge_type>});
}

} // namespace fleece::daemon
