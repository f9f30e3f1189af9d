#pragma once
// QMP commands for dirty bitmaps: block-dirty-bitmap-add, -remove, -clear, -enable,
// -disable and -merge, with QEMU's arguments and error messages.
//
// Each command is also a `transaction` action. The transaction command runs, for every
// action in order, make_bitmap_action() and prepare(); if all prepared, commit() each,
// else abort() the prepared ones in reverse order. prepare() applies the change at once,
// so later actions of the same transaction see it (QEMU's "add, merge into it, clear the
// live one" freeze recipe); abort() undoes it exactly; commit() makes it final. A
// standalone command is a one-action transaction. The graph must not change between
// prepare and commit/abort (the transaction runs without awaiting in between).

#include "control/command_registry.hpp"
#include "util/result.hpp"

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace fleece::block {
class Graph;
}

namespace fleece::daemon {

class BitmapAction {
  public:
    virtual ~BitmapAction() = default;
    virtual Status prepare() = 0;
    virtual void commit() {}
    virtual void abort() {}
};

// True for the transaction action types handled here ("block-dirty-bitmap-add", ...).
bool is_bitmap_action(std::string_view type);
// The action for one transaction entry {type, data}; `data` holds the command's arguments.
// The graph must outlive the action.
std::unique_ptr<BitmapAction> make_bitmap_action(block::Graph& graph, std::string_view type,
                                                 nlohmann::json data);

void register_bitmap_commands(control::CommandRegistry& registry);

// x-block-dirty-bitmap-sidecar {node, path, write-ahead?, journal-granularity?} (arguments
// already of their types), also for fleeced's --bitmap-sidecar (ADR 0002).
Status attach_sidecar(block::Graph& graph, const nlohmann::json& args);

} // namespace fleece::daemon
