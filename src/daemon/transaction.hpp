#pragma once
// QMP `transaction`: a list of actions applied at one point in time, all or nothing.
//
// The graph is drained for the whole transaction (no request from outside the graph is in
// flight or starts), every action is prepared in order, and then either all are committed
// or, when one fails, the prepared ones are aborted in reverse order. Backups prepared in
// one transaction therefore share their point in time.
//
// Action types live in a table: a module adds its own with register_transaction_action()
// (e.g. the dirty-bitmap commands add block-dirty-bitmap-*), usually from the function that
// registers its QMP commands.

#include "control/command_registry.hpp"
#include "daemon/services.hpp"
#include "io/task.hpp"
#include "util/result.hpp"

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

namespace fleece::jobs {
class JobTxn;
}

namespace fleece::daemon {

struct TransactionContext {
    Services* services = nullptr;
    control::CommandContext* command = nullptr;
    // completion-mode=grouped: jobs started by this transaction finish together.
    std::shared_ptr<jobs::JobTxn> group;
    // Job ids taken by earlier actions of this transaction (not started yet).
    std::set<std::string> job_ids;
};

class TransactionAction {
  public:
    virtual ~TransactionAction() = default;
    // Checks and applies the action in a way that abort() can still undo. Runs with the
    // graph drained, in the order of the actions.
    virtual io::Task<Status> prepare(TransactionContext* ctx) = 0;
    // Every action prepared: make it final (start jobs, drop undo state).
    virtual void commit(TransactionContext* ctx) = 0;
    // A later action failed: undo prepare(). Called in reverse order.
    virtual io::Task<void> abort(TransactionContext* ctx) = 0;
    // Actions that only make sense together (blockdev-replace of several users of one node)
    // may take a later action of the transaction into this one; the later one is then
    // dropped and prepared as part of this one, at this one's position.
    virtual bool absorb(TransactionAction& /*later*/) { return false; }
};

// Builds an action from its "data" object (checked against `schema` first).
using TransactionActionFactory =
    std::function<Result<std::unique_ptr<TransactionAction>>(const nlohmann::json& data)>;

struct TransactionActionType {
    std::string type; // "blockdev-backup", "block-dirty-bitmap-add", ...
    std::vector<control::ArgSpec> schema;
    bool supports_grouped = false; // may be used with completion-mode=grouped
    TransactionActionFactory factory;
};

// Adds an action type; adding a type twice replaces the first.
void register_transaction_action(TransactionActionType type);
const TransactionActionType* find_transaction_action(const std::string& type);

// Runs prepared-to-be actions as one transaction (blockdev-backup runs as a one-action
// transaction, like QEMU's).
io::Task<Status> run_transaction(control::CommandContext* ctx,
                                 std::vector<std::unique_ptr<TransactionAction>> actions,
                                 bool grouped);

// The `transaction` QMP command.
void register_transaction_commands(control::CommandRegistry& registry);

} // namespace fleece::daemon
