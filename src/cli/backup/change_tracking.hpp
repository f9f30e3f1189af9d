#pragma once
// Change tracking for `fleece backup --bitmap NAME`: the dirty bitmap NAME on the backed-up
// node records what the guest changes after a backup, and is reset at the exact snapshot
// point of the next one.
//
// The reset happens in the same `transaction` as the copy-before-write insertion (the
// snapshot point), so no guest write falls between the two. In that transaction NAME's
// content moves into a disabled copy "<run prefix>-frozen-NAME" on the same node and NAME
// starts again empty. An incremental backs up exactly the frozen copy's clusters. When the
// backup succeeds the frozen copy is dropped; when it fails, is cancelled or the tool is
// killed, the frozen copy is merged back into NAME (QEMU's bitmap-mode on-success: a failed
// backup loses no change). A new NAME is marked with "<run prefix>-new-NAME" until the
// backup succeeds; a failed first backup removes NAME again, so no chain can start from a
// backup that does not exist.
//
// Each successful backup also records a chain point id on the node (an empty marker
// bitmap) and in a small file next to a local target ("<target>.fleece-chain"), so an
// incremental can check that --base is the backup NAME was last reset by: an older base
// would miss the changes in between.

#include "cli/backup/progress.hpp"
#include "cli/backup/qmp_client.hpp"

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace fleece::cli {

struct BitmapInfo {
    std::string name;
    std::uint64_t granularity = 0, count = 0;
    bool recording = false, busy = false, persistent = false, inconsistent = false;
};

// The dirty bitmaps of `node` as query-named-block-nodes reports them.
std::vector<BitmapInfo> bitmaps_of(QmpClient& qmp, const std::string& node);

// The error text for a chain that cannot continue; it always says what to do.
std::string full_backup_required(const std::string& node, const std::string& bitmap,
                                 const std::string& why);

class ChangeTracking {
  public:
    ChangeTracking(QmpClient& qmp, ProgressReporter& out, std::string node, std::string bitmap,
                   std::string prefix, bool incremental);

    // Looks at NAME before anything changes. Throws (nothing changed) when an incremental
    // cannot be trusted: NAME missing, inconsistent (a crash), not recording, or busy.
    void check();

    // Right before the snapshot transaction (removes an unusable NAME that is replaced).
    void before_snapshot();
    // The bitmap actions of the snapshot transaction; `persistent` is used for a new NAME.
    nlohmann::json snapshot_actions(bool persistent) const;
    // Called once the snapshot transaction went through.
    void snapshot_taken(bool persistent);

    // For an incremental: the frozen copy as a {node, name} reference. Its clusters are the
    // increment; the snapshot transaction hands it to the copy-before-write filter
    // (x-cbw-set-bitmap) so that the filter copies nothing else.
    nlohmann::json frozen_bitmap() const { return {{"node", node_}, {"name", frozen_name()}}; }

    // For an incremental: a disabled bitmap on `snap_node` holding the frozen clusters
    // (the job's bitmap must live on its device). Returns its name.
    std::string add_job_bitmap(const std::string& snap_node);

    // The backup completed (the target holds the point in time): the chain moves on. A new
    // chain point id is recorded on the node (see chain_point()); returns it.
    std::string commit();

    // Which backup NAME was last reset by: the id of the chain point that commit() stored
    // as an empty marker bitmap "fleece-chain-NAME-<id>" on the node (persistent like NAME).
    // "" when there is none (a chain started by other tools, or a lost bitmap).
    std::string chain_point();
    // Anything else: NAME gets its changes back (or goes away if this run created it).
    // Safe to call when nothing was done.
    void rollback();

    // Summary fields: bitmap, bitmap-action, bitmap-persistent, bitmap-survives-crash,
    // dirty-bytes.
    nlohmann::json describe() const;
    std::uint64_t dirty_bytes() const { return dirty_bytes_; }

    // What a killed run left (bitmaps named "<prefix>-frozen-X" / "<prefix>-new-X" on any
    // node): merges frozen copies back, removes bitmaps a failed first backup created.
    static bool undo_leftovers(QmpClient& qmp, ProgressReporter& out, const std::string& prefix);

  private:
    QmpClient& qmp_;
    ProgressReporter& out_;
    std::string node_, name_, prefix_;
    bool incremental_;
    std::optional<BitmapInfo> before_; // NAME as it was at check()
    enum class Action { create, recreate, freeze } action_ = Action::create;
    bool taken_ = false, persistent_ = false, done_ = false;
    // Persistent in a write-ahead sidecar: a crash of fleeced keeps the chain.
    bool survives_crash_ = false;
    std::uint64_t dirty_bytes_ = 0;

    std::string frozen_name() const { return prefix_ + "-frozen-" + name_; }
    std::string marker_prefix() const { return "fleece-chain-" + name_ + "-"; }
    std::string new_marker() const { return prefix_ + "-new-" + name_; }
};

} // namespace fleece::cli
