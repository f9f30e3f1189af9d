#include "cli/backup/change_tracking.hpp"

#include <cstdio>
#include <random>
#include <stdexcept>

namespace fleece::cli {

using nlohmann::json;

namespace {

json action(const std::string& type, json data) {
    return json{{"type", type}, {"data", std::move(data)}};
}

std::optional<BitmapInfo> find_bitmap(QmpClient& qmp, const std::string& node,
                                      const std::string& name) {
    for (BitmapInfo& b : bitmaps_of(qmp, node))
        if (b.name == name) return b;
    return std::nullopt;
}

} // namespace

std::vector<BitmapInfo> bitmaps_of(QmpClient& qmp, const std::string& node) {
    std::vector<BitmapInfo> out;
    for (const json& n : qmp.execute("query-named-block-nodes", json{{"flat", true}})) {
        if (n.value("node-name", "") != node || !n.contains("dirty-bitmaps")) continue;
        for (const json& b : n["dirty-bitmaps"]) {
            BitmapInfo i;
            i.name = b.value("name", "");
            i.granularity = b.value("granularity", std::uint64_t{0});
            i.count = b.value("count", std::uint64_t{0});
            i.recording = b.value("recording", false);
            i.busy = b.value("busy", false);
            i.persistent = b.value("persistent", false);
            i.inconsistent = b.value("inconsistent", false);
            out.push_back(i);
        }
    }
    return out;
}

std::string full_backup_required(const std::string& node, const std::string& bitmap,
                                 const std::string& why) {
    return "dirty bitmap '" + bitmap + "' on node '" + node + "' " + why +
           ": an incremental backup could miss changes, so none was taken. Take a full "
           "backup: fleece backup --sync full --bitmap " +
           bitmap + " (it starts a new chain)";
}

ChangeTracking::ChangeTracking(QmpClient& qmp, ProgressReporter& out, std::string node,
                               std::string bitmap, std::string prefix, bool incremental)
    : qmp_(qmp), out_(out), node_(std::move(node)), name_(std::move(bitmap)),
      prefix_(std::move(prefix)), incremental_(incremental) {}

void ChangeTracking::check() {
    before_ = find_bitmap(qmp_, node_, name_);
    if (before_ && before_->busy)
        throw std::runtime_error("dirty bitmap '" + name_ + "' on node '" + node_ +
                                 "' is in use by another operation (an NBD export or a job); "
                                 "try again when it is free");
    const bool trusted = before_ && !before_->inconsistent && before_->recording;
    if (incremental_) {
        if (!before_)
            throw std::runtime_error(full_backup_required(
                node_, name_, "does not exist (no chain was started, or fleeced lost it)"));
        if (before_->inconsistent)
            throw std::runtime_error(full_backup_required(
                node_, name_,
                "is inconsistent (fleeced stopped without saving it, e.g. a crash or kill -9)"));
        if (!before_->recording)
            throw std::runtime_error(
                full_backup_required(node_, name_, "is disabled (it did not record every change)"));
    }
    if (!before_)
        action_ = Action::create;
    else if (trusted)
        action_ = Action::freeze;
    else
        action_ = Action::recreate; // a full backup starts a new chain from an unusable one
}

json ChangeTracking::snapshot_actions(bool persistent) const {
    json actions = json::array();
    json add_new{{"node", node_}, {"name", name_}, {"persistent", persistent}};
    // The marker says "NAME belongs to a backup that has not succeeded yet".
    json marker{
        {"node", node_}, {"name", new_marker()}, {"persistent", persistent}, {"disabled", true}};
    switch (action_) {
    case Action::create:
        actions.push_back(action("block-dirty-bitmap-add", add_new));
        actions.push_back(action("block-dirty-bitmap-add", marker));
        break;
    case Action::recreate: // the unusable NAME was removed by before_snapshot()
        actions.push_back(action("block-dirty-bitmap-add", add_new));
        actions.push_back(action("block-dirty-bitmap-add", marker));
        break;
    case Action::freeze: {
        json frozen{{"node", node_},
                    {"name", frozen_name()},
                    {"granularity", before_->granularity},
                    {"persistent", before_->persistent},
                    {"disabled", true}};
        actions.push_back(action("block-dirty-bitmap-add", frozen));
        actions.push_back(action(
            "block-dirty-bitmap-merge",
            json{{"node", node_}, {"target", frozen_name()}, {"bitmaps", json::array({name_})}}));
        actions.push_back(
            action("block-dirty-bitmap-clear", json{{"node", node_}, {"name", name_}}));
        break;
    }
    }
    return actions;
}

void ChangeTracking::before_snapshot() {
    // A transaction cannot remove and add one name (the add sees the old bitmap), so an
    // unusable NAME goes first; it could not have continued any chain anyway.
    if (action_ == Action::recreate)
        qmp_.execute("block-dirty-bitmap-remove", json{{"node", node_}, {"name", name_}});
}

// Whether the node keeps its bitmaps in a write-ahead sidecar that has not fallen back
// (x-bitmap-sidecar of query-named-block-nodes, docs/dirty-bitmaps.md).
bool write_ahead_sidecar(QmpClient& qmp, const std::string& node) {
    for (const json& n : qmp.execute("query-named-block-nodes", json{{"flat", true}})) {
        if (n.value("node-name", "") != node || !n.contains("x-bitmap-sidecar")) continue;
        const json& s = n["x-bitmap-sidecar"];
        return s.value("write-ahead", false) &&
               !s.value("journal", json::object()).value("degraded", false);
    }
    return false;
}

void ChangeTracking::snapshot_taken(bool persistent) {
    taken_ = true;
    persistent_ = action_ == Action::freeze ? before_->persistent : persistent;
    survives_crash_ = persistent_ && write_ahead_sidecar(qmp_, node_);
    if (action_ == Action::freeze)
        if (auto f = find_bitmap(qmp_, node_, frozen_name())) dirty_bytes_ = f->count;
    std::string text;
    switch (action_) {
    case Action::create:
        text = "dirty bitmap '" + name_ + "' created at the snapshot point";
        break;
    case Action::recreate:
        text = "dirty bitmap '" + name_ + "' was " +
               (before_->inconsistent ? "inconsistent" : "disabled") +
               ": replaced by a new one at the snapshot point (a new chain starts)";
        break;
    case Action::freeze:
        text = "dirty bitmap '" + name_ + "' reset at the snapshot point (" +
               human_bytes(static_cast<double>(dirty_bytes_)) + " changed since the last backup)";
        break;
    }
    if (!persistent_)
        text += "; NOT persistent: fleeced forgets it when it stops, and the next incremental "
                "will ask for a full backup";
    out_.step("bitmap", text, describe());
}

std::string ChangeTracking::add_job_bitmap(const std::string& snap_node) {
    const std::string job_bitmap = prefix_ + "-job";
    qmp_.execute("block-dirty-bitmap-add", json{{"node", snap_node},
                                                {"name", job_bitmap},
                                                {"granularity", before_->granularity},
                                                {"disabled", true}});
    json sources = json::array({json{{"node", node_}, {"name", frozen_name()}}});
    qmp_.execute("block-dirty-bitmap-merge",
                 json{{"node", snap_node}, {"target", job_bitmap}, {"bitmaps", sources}});
    return job_bitmap;
}

std::string ChangeTracking::chain_point() {
    const std::string prefix = marker_prefix();
    for (const BitmapInfo& b : bitmaps_of(qmp_, node_)) {
        if (b.name.rfind(prefix, 0) != 0) continue;
        const std::string id = b.name.substr(prefix.size());
        if (!id.empty() && id.find_first_not_of("0123456789abcdef") == std::string::npos) return id;
    }
    return "";
}

std::string ChangeTracking::commit() {
    if (!taken_ || done_) return "";
    done_ = true;
    std::random_device rd;
    char id[17];
    std::snprintf(id, sizeof id, "%08x%08x", rd(), rd());
    // One transaction: the chain point moves and the frozen copy (or the "new" marker) goes.
    json actions = json::array();
    const std::string leftover = action_ == Action::freeze ? frozen_name() : new_marker();
    actions.push_back(
        action("block-dirty-bitmap-remove", json{{"node", node_}, {"name", leftover}}));
    if (const std::string old = chain_point(); !old.empty())
        actions.push_back(action("block-dirty-bitmap-remove",
                                 json{{"node", node_}, {"name", marker_prefix() + old}}));
    actions.push_back(action("block-dirty-bitmap-add", json{{"node", node_},
                                                            {"name", marker_prefix() + id},
                                                            {"persistent", persistent_},
                                                            {"disabled", true}}));
    qmp_.execute("transaction", json{{"actions", actions}});
    return id;
}

void ChangeTracking::rollback() {
    if (!taken_ || done_) return;
    done_ = true; // undo_leftovers does the work (also for a killed run)
    if (!undo_leftovers(qmp_, out_, prefix_))
        throw std::runtime_error("could not give dirty bitmap '" + name_ + "' its changes back");
}

json ChangeTracking::describe() const {
    static const char* names[] = {"created", "recreated", "reset"};
    json out{{"bitmap", name_}};
    if (!taken_) return out; // stopped before the snapshot: nothing was done to it
    out["bitmap-action"] = names[static_cast<int>(action_)];
    out["bitmap-persistent"] = persistent_;
    out["bitmap-survives-crash"] = survives_crash_;
    out["dirty-bytes"] = dirty_bytes_;
    return out;
}

bool ChangeTracking::undo_leftovers(QmpClient& qmp, ProgressReporter& out,
                                    const std::string& prefix) {
    bool ok = true;
    const std::string frozen = prefix + "-frozen-", fresh = prefix + "-new-";
    for (const json& n : qmp.execute("query-named-block-nodes", json{{"flat", true}})) {
        const std::string node = n.value("node-name", "");
        const std::vector<BitmapInfo> list = bitmaps_of(qmp, node);
        for (const BitmapInfo& b : list) {
            auto remove = [&](const std::string& name) {
                bool present = false;
                for (const BitmapInfo& other : list)
                    present |= other.name == name;
                if (!present) return;
                try {
                    qmp.execute("block-dirty-bitmap-remove", json{{"node", node}, {"name", name}});
                } catch (const std::exception& e) {
                    out.warning("removing dirty bitmap '" + name + "' failed: " + e.what());
                    ok = false;
                }
            };
            if (b.name.rfind(frozen, 0) == 0) {
                const std::string name = b.name.substr(frozen.size());
                try {
                    json sources = json::array({b.name});
                    qmp.execute("block-dirty-bitmap-merge",
                                json{{"node", node}, {"target", name}, {"bitmaps", sources}});
                    out.step("bitmap-restored",
                             "dirty bitmap '" + name +
                                 "' got back the changes of the failed backup",
                             json{{"bitmap", name}, {"node", node}});
                } catch (const std::exception& e) {
                    // Not mergeable (inconsistent after a crash): without NAME the next
                    // incremental asks for a full backup instead of missing changes.
                    out.warning("could not merge '" + b.name + "' back (" + e.what() +
                                "): removing dirty bitmap '" + name + "', take a full backup");
                    remove(name);
                }
                remove(b.name);
            } else if (b.name.rfind(fresh, 0) == 0) {
                const std::string name = b.name.substr(fresh.size());
                remove(name);
                remove(b.name);
                out.step("bitmap-removed",
                         "dirty bitmap '" + name +
                             "' removed: the full backup that started its chain did not complete",
                         json{{"bitmap", name}, {"node", node}});
            }
        }
    }
    return ok;
}

} // namespace fleece::cli
