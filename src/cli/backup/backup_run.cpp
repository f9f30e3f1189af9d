// The body of `fleece backup`: build the fleecing graph around a live node, push the
// snapshot to the target, and always take everything out again.
//
// Every object this run adds is named "fleece-backup-<pid>-<role>" (the job is
// "fleece-backup-<pid>"), and the fleecing file is "fleece-backup-<pid>-<node>.fleecing".
// So a run that crashed can be recognised later (its pid is no longer a fleece process),
// and the same teardown code removes a crashed run's objects and this run's own: it works
// from what the daemon reports, not from what this process remembers.

#include "cli/backup/backup_command.hpp"
#include "cli/backup/block_graph.hpp"
#include "cli/backup/change_tracking.hpp"
#include "cli/backup/progress.hpp"
#include "cli/backup/qmp_client.hpp"
#include "cli/backup/target_spec.hpp"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <thread>
#include <unistd.h>

namespace fleece::cli {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

const std::string kMarker = "fleece-backup-";

volatile std::sig_atomic_t g_signal = 0;
extern "C" void on_signal(int sig) {
    g_signal = sig;
}

void install_signal_handlers() {
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; // no SA_RESTART: a blocking poll returns EINTR so we notice at once
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
}

struct Interrupted : std::runtime_error {
    Interrupted() : std::runtime_error("interrupted") {}
};

void check_interrupt() {
    if (g_signal) throw Interrupted();
}

// "fleece-backup-<pid>[-...]" -> pid
std::optional<long> owner_pid(const std::string& name) {
    if (name.rfind(kMarker, 0) != 0) return std::nullopt;
    const std::string rest = name.substr(kMarker.size());
    const auto digits = rest.find_first_not_of("0123456789");
    if (digits == 0) return std::nullopt;
    return std::stol(rest.substr(0, digits));
}

bool fleece_process_alive(long pid) {
    if (pid == ::getpid()) return true;
    if (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) return false;
    std::ifstream comm("/proc/" + std::to_string(pid) + "/comm");
    std::string name;
    std::getline(comm, name);
    return name == "fleece";
}

std::uint64_t allocated_bytes(const std::string& path) {
    struct stat st {};
    if (path.empty() || ::stat(path.c_str(), &st) != 0) return 0;
    return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

bool is_dir(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string dir_of(const std::string& path) {
    const auto slash = path.rfind('/');
    if (slash == std::string::npos) return ".";
    return slash == 0 ? "/" : path.substr(0, slash);
}

std::string basename_of(const std::string& path) {
    const auto slash = path.rfind('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Best effort during cleanup: report and go on, so one failure does not leave the rest.
template <class F> bool attempt(ProgressReporter& out, const std::string& what, F&& f) {
    try {
        f();
        return true;
    } catch (const std::exception& e) {
        out.warning(what + " failed: " + e.what());
        return false;
    }
}

// Waits for job `id` to conclude (cancelling it if asked), then dismisses it.
// Returns its query-jobs entry at conclusion (null if it was gone already).
json finish_job(QmpClient& qmp, const std::string& id, bool cancel, Clock::duration limit) {
    const auto deadline = Clock::now() + limit;
    bool cancel_sent = false;
    while (true) {
        json mine;
        for (const json& j : qmp.execute("query-jobs"))
            if (j.value("id", "") == id) mine = j;
        if (mine.is_null()) return mine;
        const std::string status = mine.value("status", "");
        if (status == "concluded") {
            qmp.execute("job-dismiss", json{{"id", id}});
            return mine;
        }
        if (cancel && !cancel_sent) {
            qmp.execute("job-cancel", json{{"id", id}});
            cancel_sent = true;
        }
        if (Clock::now() > deadline)
            throw std::runtime_error("job '" + id + "' did not end in time (status " + status +
                                     ")");
        while (qmp.next_event(0ms)) {
        }
        std::this_thread::sleep_for(100ms);
    }
}

// Points every edge of `edges` at `node` in one `transaction`: the daemon moves them together
// and checks permissions only for the result, so a node with several writers can go under
// (and come back from) a filter that forbids writes bypassing it.
void replace_all(QmpClient& qmp, const std::vector<ParentEdge>& edges, const std::string& node) {
    if (edges.empty()) return;
    json actions = json::array();
    for (const ParentEdge& p : edges)
        actions.push_back(json{{"type", "blockdev-replace"}, {"data", p.replace_args(node)}});
    qmp.execute("transaction", json{{"actions", actions}});
}

// The node behind the `file` edge of node `parent` (the disk under a copy-before-write).
std::string file_child_of(QmpClient& qmp, const std::string& parent) {
    const json graph = qmp.execute("x-debug-query-block-graph");
    std::map<int, std::string> names;
    for (const json& n : graph.at("nodes"))
        if (n.value("type", "") == "block-driver")
            names[n.at("id").get<int>()] = n.value("name", "");
    for (const json& e : graph.at("edges")) {
        const auto p = names.find(e.at("parent").get<int>());
        if (p != names.end() && p->second == parent && e.value("name", "") == "file")
            return names[e.at("child").get<int>()];
    }
    return {};
}

// Removes everything named with `prefix` (a run's job, nodes and fleecing file), putting
// the users of the copy-before-write filter back on the disk. Returns false when something
// could not be removed.
bool remove_run(QmpClient& qmp, ProgressReporter& out, const std::string& prefix) {
    bool ok = true;
    ok &= attempt(out, "stopping job " + prefix, [&] { finish_job(qmp, prefix, true, 60s); });
    // A run that did not succeed gives its change-tracking bitmap its changes back.
    ok &= attempt(out, "restoring dirty bitmaps of " + prefix, [&] {
        if (!ChangeTracking::undo_leftovers(qmp, out, prefix))
            throw std::runtime_error("see the warnings above");
    });
    std::set<std::string> present;
    std::map<std::string, std::string> filenames;
    for (const NodeInfo& n : list_nodes(qmp)) {
        present.insert(n.name);
        filenames[n.name] = n.filename;
    }
    for (const char* role : {"-target", "-snap"}) {
        const std::string name = prefix + role;
        if (present.count(name))
            ok &= attempt(out, "removing node " + name, [&] {
                qmp.execute("blockdev-del", json{{"node-name", name}});
            });
    }
    const std::string cbw = prefix + "-cbw";
    if (present.count(cbw)) {
        ok &= attempt(out, "restoring the users of " + cbw, [&] {
            const std::string disk = file_child_of(qmp, cbw);
            if (disk.empty()) throw std::runtime_error("no file child");
            replace_all(qmp, find_parents(qmp, cbw), disk);
        });
        ok &= attempt(out, "removing node " + cbw, [&] {
            qmp.execute("blockdev-del", json{{"node-name", cbw}});
        });
    }
    const std::string fleecing = prefix + "-fleecing";
    if (present.count(fleecing)) {
        ok &= attempt(out, "removing node " + fleecing, [&] {
            qmp.execute("blockdev-del", json{{"node-name", fleecing}});
        });
        // Only a file this tool named is ever deleted.
        const std::string& file = filenames[fleecing];
        if (basename_of(file).rfind(prefix + "-", 0) == 0) ::unlink(file.c_str());
    }
    return ok;
}

// Removes what crashed earlier runs left: objects named by a pid that is no longer a fleece
// process. A live run's objects make this run refuse (two backups of one disk would fight).
void remove_stale_runs(QmpClient& qmp, ProgressReporter& out, const std::string& node) {
    std::set<long> pids;
    for (const NodeInfo& n : list_nodes(qmp))
        if (auto pid = owner_pid(n.name)) pids.insert(*pid);
    for (const json& j : qmp.execute("query-jobs"))
        if (auto pid = owner_pid(j.value("id", ""))) pids.insert(*pid);
    for (const json& n : qmp.execute("query-named-block-nodes", json{{"flat", true}}))
        for (const json& b : n.value("dirty-bitmaps", json::array()))
            if (auto pid = owner_pid(b.value("name", ""))) pids.insert(*pid);
    for (long pid : pids) {
        const std::string prefix = kMarker + std::to_string(pid);
        if (fleece_process_alive(pid))
            throw std::runtime_error("another fleece backup (pid " + std::to_string(pid) +
                                     ") is running on this daemon; wait for it or stop it");
        out.step("stale",
                 "removing what an earlier fleece backup (pid " + std::to_string(pid) +
                     ") left behind",
                 json{{"prefix", prefix}, {"node", node}});
        if (!remove_run(qmp, out, prefix))
            throw std::runtime_error("could not remove the leftovers of " + prefix);
    }
}

// Fleecing files of dead runs in `dir` (their nodes are gone by now).
void remove_stale_files(ProgressReporter& out, const std::string& dir) {
    DIR* d = ::opendir(dir.c_str());
    if (!d) return;
    std::vector<std::string> stale;
    while (dirent* e = ::readdir(d)) {
        const std::string name = e->d_name;
        if (name.size() < 9 || name.compare(name.size() - 9, 9, ".fleecing") != 0) continue;
        if (auto pid = owner_pid(name); pid && !fleece_process_alive(*pid))
            stale.push_back(dir + "/" + name);
    }
    ::closedir(d);
    for (const std::string& f : stale) {
        out.step("stale", "removing a stale fleecing file " + f, json{{"file", f}});
        ::unlink(f.c_str());
    }
}

class BackupRun {
  public:
    BackupRun(QmpClient& qmp, ProgressReporter& out, const BackupOptions& o, TargetSpec target)
        : qmp_(qmp), out_(out), o_(o), target_(std::move(target)),
          prefix_(kMarker + std::to_string(::getpid())) {}

    // Returns the exit status.
    int run();

  private:
    void setup();
    json monitor(); // the job's query-jobs entry at its end
    void read_node_stats(ProgressSample& s);
    std::string snapshot_broken_reason() const;
    std::string choose_fleecing_file(const NodeInfo& disk);
    void create_fleecing_file(std::uint64_t size);
    void take_snapshot(const std::vector<ParentEdge>& parents);
    void check_base_is_newest();
    void write_chain_record(const std::string& chain_point);
    bool incremental() const { return o_.sync == "incremental"; }

    QmpClient& qmp_;
    ProgressReporter& out_;
    const BackupOptions& o_;
    TargetSpec target_;
    const std::string prefix_;
    NodeInfo disk_;
    std::string fleecing_file_;
    bool target_created_ = false;
    bool fleecing_created_ = false; // only a file this run created is ever deleted
    json graph_before_;
    std::unique_ptr<ChangeTracking> tracking_; // with --bitmap
};

std::string BackupRun::choose_fleecing_file(const NodeInfo& disk) {
    std::string dir;
    const std::string name = prefix_ + "-" + disk.name + ".fleecing";
    if (!o_.fleecing_path.empty()) {
        if (!is_dir(o_.fleecing_path)) return o_.fleecing_path; // an exact file name
        dir = o_.fleecing_path;
    } else if (!disk.filename.empty() && disk.filename[0] == '/' && is_dir(dir_of(disk.filename))) {
        dir = dir_of(disk.filename); // next to the disk: same (fast, local) storage
    } else {
        const char* tmp = std::getenv("TMPDIR");
        dir = tmp && *tmp ? tmp : "/var/tmp";
    }
    remove_stale_files(out_, dir);
    return dir + "/" + name;
}

void BackupRun::create_fleecing_file(std::uint64_t size) {
    TargetSpec spec;
    spec.path = fleecing_file_;
    spec.format = o_.fleecing_format;
    struct stat st {};
    if (::stat(fleecing_file_.c_str(), &st) == 0)
        throw std::runtime_error("fleecing file " + fleecing_file_ + " already exists");
    fleecing_created_ = create_target_image(spec, size);
}

void BackupRun::setup() {
    bool found = false;
    std::string all;
    for (const NodeInfo& n : list_nodes(qmp_)) {
        if (n.name == o_.node) {
            disk_ = n;
            found = true;
        }
        all += (all.empty() ? "" : ", ") + n.name;
    }
    if (!found)
        throw std::runtime_error("node '" + o_.node + "' not found in fleeced (nodes: " +
                                 (all.empty() ? "none" : all) + ")");
    if (disk_.size == 0) throw std::runtime_error("node '" + o_.node + "' has size 0");
    remove_stale_runs(qmp_, out_, o_.node);
    if (!o_.bitmap.empty()) {
        tracking_ = std::make_unique<ChangeTracking>(qmp_, out_, o_.node, o_.bitmap, prefix_,
                                                     incremental());
        tracking_->check(); // an untrustworthy bitmap stops an incremental here
        if (incremental() && !o_.base.empty()) check_base_is_newest();
    }
    if (!target_.backing_file.empty() && target_.backing_size != disk_.size)
        throw std::runtime_error("--base " + o_.base + " is " +
                                 std::to_string(target_.backing_size) + " bytes but node '" +
                                 o_.node + "' is " + std::to_string(disk_.size) +
                                 " bytes: it is not a backup of this disk");
    graph_before_ = graph_fingerprint(qmp_);
    const std::vector<ParentEdge> parents = find_parents(qmp_, o_.node);

    // The target first: a target that cannot be reached fails before the guest is touched.
    target_created_ = create_target_image(target_, disk_.size);
    const std::string target_node = prefix_ + "-target";
    try {
        qmp_.execute("blockdev-add", target_blockdev(target_, target_node));
    } catch (const QmpError& e) {
        throw std::runtime_error("cannot open the target " + target_.text + ": " + e.what());
    }
    for (const NodeInfo& n : list_nodes(qmp_))
        if (n.name == target_node && n.size < disk_.size)
            throw std::runtime_error("the target " + target_.text + " is smaller (" +
                                     std::to_string(n.size) + " bytes) than node '" + o_.node +
                                     "' (" + std::to_string(disk_.size) + " bytes)");
    check_interrupt();

    fleecing_file_ = choose_fleecing_file(disk_);
    create_fleecing_file(disk_.size);
    // A throw-away file (removed at the end, or by the next run after a crash): flushing
    // it buys nothing, so a qcow2 fleecing image keeps its metadata order without fsyncs.
    json file{{"driver", "file"},
              {"filename", fleecing_file_},
              {"discard", "unmap"},
              {"cache", {{"no-flush", true}}}};
    json fleecing;
    if (o_.fleecing_format == "raw") {
        fleecing = file;
    } else {
        fleecing = json{{"driver", o_.fleecing_format}, {"discard", "unmap"}, {"file", file}};
    }
    fleecing["node-name"] = prefix_ + "-fleecing";
    qmp_.execute("blockdev-add", fleecing);
    out_.step("fleecing",
              "fleecing image " + fleecing_file_ + " (" + o_.fleecing_format + ", sparse, " +
                  human_bytes(static_cast<double>(disk_.size)) + ")",
              json{{"file", fleecing_file_}, {"format", o_.fleecing_format}});

    json cbw{{"driver", "copy-before-write"},
             {"node-name", prefix_ + "-cbw"},
             {"file", o_.node},
             {"target", prefix_ + "-fleecing"},
             {"on-cbw-error", o_.on_cbw_error},
             {"cbw-timeout", o_.cbw_timeout_s}};
    if (o_.copy_window) cbw["x-copy-window"] = *o_.copy_window;
    qmp_.execute("blockdev-add", cbw);
    check_interrupt();

    take_snapshot(parents);

    qmp_.execute("blockdev-add", json{{"driver", "snapshot-access"},
                                      {"node-name", prefix_ + "-snap"},
                                      {"file", prefix_ + "-cbw"},
                                      {"discard", "unmap"}});
    json backup{{"job-id", prefix_},    {"device", prefix_ + "-snap"}, {"target", target_node},
                {"sync", "full"},       {"discard-source", true},      {"auto-finalize", true},
                {"auto-dismiss", false}};
    if (incremental()) {
        // Only the clusters changed since the previous backup; the job's bitmap must live
        // on its device, so the frozen copy is merged into one there.
        backup["sync"] = "incremental";
        backup["bitmap"] = tracking_->add_job_bitmap(prefix_ + "-snap");
    }
    if (o_.speed) backup["speed"] = o_.speed;
    qmp_.execute("blockdev-backup", backup);
    out_.step("started", "backup job " + prefix_ + " started: " + o_.node + " -> " + target_.text,
              json{{"job", prefix_}, {"len", disk_.size}, {"target", target_.text}});
}

// Why the snapshot broke, as far as this side can tell: a full fleecing file system is named
// with its free space, else the other cause (copies slower than --cbw-timeout).
std::string BackupRun::snapshot_broken_reason() const {
    const std::string dir = dir_of(fleecing_file_);
    struct statvfs fs {};
    if (!fleecing_file_.empty() && ::statvfs(dir.c_str(), &fs) == 0) {
        const double free_bytes =
            static_cast<double>(fs.f_bavail) * static_cast<double>(fs.f_frsize);
        if (free_bytes < 1024.0 * 1024.0)
            return " (the snapshot was broken by a failed copy-before-write: the fleecing storage "
                   "is full, " +
                   human_bytes(free_bytes) + " free in " + dir + " (fleecing image " +
                   human_bytes(static_cast<double>(allocated_bytes(fleecing_file_))) +
                   "); put the fleecing image on larger storage with --fleecing DIR; the guest "
                   "was not affected)";
    }
    return " (the snapshot was broken by a failed copy-before-write: the fleecing storage is "
           "full or slower than --cbw-timeout; the guest was not affected)";
}

// The filter's copy-before-write figures (x-cbw-stats of query-named-block-nodes), and
// whether the target is unreachable (x-disconnected-for-ms).
void BackupRun::read_node_stats(ProgressSample& s) {
    for (const json& n : qmp_.execute("query-named-block-nodes")) {
        if (n.value("node-name", "") == prefix_ + "-target" && n.contains("x-disconnected-for-ms"))
            s.target_away_ms = n["x-disconnected-for-ms"].get<std::int64_t>();
        if (n.value("node-name", "") != prefix_ + "-cbw" || !n.contains("x-cbw-stats")) continue;
        const json& c = n["x-cbw-stats"];
        s.cbw_count = c.value("requests", std::uint64_t{0});
        s.cbw_errors = c.value("errors", std::uint64_t{0});
        s.cbw_total_ns = c.value("latency-total-ns", std::uint64_t{0});
        s.cbw_max_ns = c.value("latency-max-ns", std::uint64_t{0});
    }
}

// The snapshot point: the writer moving onto the filter (the filter without parents claims
// nothing, so the writer is unaffected until its edge moves). With --bitmap the moves and
// the bitmap reset are one `transaction`: no guest write can land between them. An
// incremental also narrows the filter to the frozen increment in that transaction.
void BackupRun::take_snapshot(const std::vector<ParentEdge>& parents) {
    json users = json::array();
    for (const ParentEdge& p : parents)
        users.push_back(p.describe());
    if (!tracking_) {
        // Every user at once: the filter forbids writes that bypass it, so writers cannot
        // move one by one.
        replace_all(qmp_, parents, prefix_ + "-cbw");
    } else {
        bool persistent = true; // where the node can keep it (qcow2, or a raw disk's sidecar)
        tracking_->before_snapshot();
        while (true) {
            json actions = tracking_->snapshot_actions(persistent);
            if (incremental()) {
                // The filter copies only the increment, frozen in this same instant:
                // guest writes elsewhere cost no copy and no fleecing space.
                json narrow{{"node", prefix_ + "-cbw"}, {"bitmap", tracking_->frozen_bitmap()}};
                actions.push_back(json{{"type", "x-cbw-set-bitmap"}, {"data", narrow}});
            }
            for (const ParentEdge& p : parents) {
                json replace = p.replace_args(prefix_ + "-cbw");
                actions.push_back(json{{"type", "blockdev-replace"}, {"data", replace}});
            }
            try {
                qmp_.execute("transaction", json{{"actions", actions}});
                break;
            } catch (const QmpError& e) {
                const std::string why = e.what();
                if (!persistent || why.find("persistent") == std::string::npos) throw;
                // Nothing changed (the transaction is all or nothing): go on without.
                out_.warning("node '" + o_.node + "' cannot store persistent dirty bitmaps (" +
                             why + "); bitmap '" + o_.bitmap +
                             "' lives in fleeced's memory only. For chains that survive a "
                             "restart use a qcow2 disk, or attach a sidecar to a raw disk "
                             "(fleeced --bitmap-sidecar node=" +
                             o_.node +
                             ",path=DISK.fleece-bitmaps,write-ahead=on, or fleece "
                             "qmp x-block-dirty-bitmap-sidecar)");
                persistent = false;
            }
        }
        tracking_->snapshot_taken(persistent);
    }
    out_.step(
        "snapshot",
        "snapshot taken: copy-before-write inserted under " +
            (parents.empty() ? std::string("node '" + o_.node + "' (no users)") : users.dump()),
        json{{"node", o_.node}, {"users", users}});
}

std::string chain_record_path(const std::string& backup) {
    return backup + ".fleece-chain";
}

// --base must be the backup the bitmap was last reset by; an older one would miss the
// changes between the two. Both carry the chain point id of that backup.
void BackupRun::check_base_is_newest() {
    std::ifstream in(chain_record_path(o_.base));
    if (!in) {
        out_.warning("--base " + o_.base + " has no " + chain_record_path(o_.base) +
                     ": cannot check that it is the newest backup of bitmap '" + o_.bitmap +
                     "' (an older one would miss changes)");
        return;
    }
    json record = json::parse(in, nullptr, false);
    if (record.is_discarded() || !record.is_object())
        throw std::runtime_error(chain_record_path(o_.base) + " is not a fleece chain record");
    const std::string bitmap = record.value("bitmap", ""), point = record.value("chain-point", "");
    if (bitmap != o_.bitmap)
        throw std::runtime_error("--base " + o_.base + " belongs to the chain of bitmap '" +
                                 bitmap + "', not '" + o_.bitmap + "'");
    const std::string current = tracking_->chain_point();
    if (current.empty()) {
        out_.warning("node '" + o_.node + "' has no chain point for bitmap '" + o_.bitmap +
                     "': cannot check that --base " + o_.base + " is the newest backup");
        return;
    }
    if (current != point)
        throw std::runtime_error(
            "--base " + o_.base + " is not the newest backup of the chain of bitmap '" + o_.bitmap +
            "': a later backup reset the bitmap, so an increment on top of " + o_.base +
            " would miss changes. Give the newest backup as --base (or take a full "
            "backup)");
}

void BackupRun::write_chain_record(const std::string& chain_point) {
    if (!target_created_ || chain_point.empty()) return; // NBD or device: nowhere to put it
    const std::string path = chain_record_path(target_.path);
    std::ofstream f(path, std::ios::trunc);
    const json record{{"node", o_.node},
                      {"bitmap", o_.bitmap},
                      {"chain-point", chain_point},
                      {"sync", o_.sync},
                      {"base", o_.base}};
    f << record.dump() << "\n";
    f.close();
    if (!f) out_.warning("could not write " + path + " (the next --base check will warn)");
}

json BackupRun::monitor() {
    bool cancel_sent = false;
    while (true) {
        if (g_signal && !cancel_sent) {
            out_.step("cancel", "interrupted: cancelling the backup job");
            attempt(out_, "job-cancel", [&] { qmp_.execute("job-cancel", json{{"id", prefix_}}); });
            cancel_sent = true;
        }
        json mine;
        for (const json& j : qmp_.execute("query-jobs"))
            if (j.value("id", "") == prefix_) mine = j;
        if (mine.is_null()) throw std::runtime_error("the backup job disappeared");
        const bool concluded = mine.value("status", "") == "concluded";
        if (!cancel_sent) { // also once at the end, so the bar shows where the job stopped
            ProgressSample s;
            s.done = mine.value("current-progress", std::uint64_t{0});
            s.total = mine.value("total-progress", std::uint64_t{0});
            s.fleecing_bytes = allocated_bytes(fleecing_file_);
            read_node_stats(s);
            out_.progress(s);
        }
        if (concluded) return mine;
        // Events between polls: report job errors as they happen.
        const auto until = Clock::now() + 250ms;
        while (Clock::now() < until && !(g_signal && !cancel_sent)) {
            auto ev = qmp_.next_event(
                std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()));
            if (!ev) continue;
            const json data = ev->value("data", json::object());
            if (ev->value("event", "") == "BLOCK_JOB_ERROR" && data.value("device", "") == prefix_)
                out_.warning("backup job " + data.value("operation", std::string("I/O")) +
                             " error (action " + data.value("action", std::string("?")) + ")");
        }
    }
}

int BackupRun::run() {
    bool ok = false;
    std::string failure;
    json result = json::object();
    try {
        setup();
        result = monitor();
        const std::uint64_t done = result.value("current-progress", std::uint64_t{0});
        const std::uint64_t total = result.value("total-progress", std::uint64_t{0});
        if (result.contains("error")) {
            failure = result["error"].get<std::string>();
            if (failure.find("ermission denied") != std::string::npos)
                failure += snapshot_broken_reason();
        } else if (done != total) {
            failure = "the job ended at " + std::to_string(done) + " of " + std::to_string(total) +
                      " bytes";
        } else {
            ok = true;
        }
        qmp_.execute("job-dismiss", json{{"id", prefix_}});
    } catch (const Interrupted&) {
        failure = "interrupted";
    } catch (const std::exception& e) {
        failure = e.what();
    }
    if (g_signal) failure = "interrupted by signal " + std::to_string(g_signal);
    if (tracking_) {
        if (ok) {
            // The target holds the point in time: the chain moves on.
            attempt(out_, "moving the chain on", [&] { write_chain_record(tracking_->commit()); });
        } else {
            attempt(out_, "restoring dirty bitmap " + o_.bitmap, [&] { tracking_->rollback(); });
        }
    }

    if (!graph_before_.is_null())
        out_.step("cleanup", "cleaning up: restoring the graph and removing the fleecing image");
    bool clean = false;
    try {
        clean = remove_run(qmp_, out_, prefix_);
    } catch (const std::exception& e) {
        out_.warning(std::string("cleanup: ") + e.what());
    }
    if (fleecing_created_) ::unlink(fleecing_file_.c_str()); // also if its node never came
    if (!graph_before_.is_null()) {
        try {
            if (graph_fingerprint(qmp_) != graph_before_) {
                out_.warning("the block graph differs from before the backup");
                clean = false;
            }
        } catch (const std::exception& e) {
            out_.warning(std::string("checking the graph: ") + e.what());
            clean = false;
        }
    }
    if (!ok && target_created_) {
        ::unlink(target_.path.c_str()); // an incomplete backup must not look like one
        out_.step("target-removed", "removed the incomplete target file " + target_.path);
    }

    const double secs = out_.elapsed_s();
    json details{
        {"node", o_.node},        {"sync", o_.sync},
        {"target", target_.text}, {"bytes", result.value("total-progress", std::uint64_t{0})},
        {"seconds", secs},        {"peak-fleecing-bytes", out_.peak_fleecing_bytes()},
        {"graph-restored", clean}};
    details.update(out_.cbw_json());
    if (!o_.base.empty()) details["base"] = o_.base;
    if (tracking_) details.update(tracking_->describe());
    if (ok && clean) {
        const double bytes = static_cast<double>(result.value("total-progress", std::uint64_t{0}));
        char line[512];
        std::snprintf(line, sizeof line,
                      "%s backup complete: %s of node '%s' -> %s in %.1f s (%s/s), peak fleecing "
                      "usage %s, %llu guest requests waited for copy-before-write (avg %.0f us, "
                      "max %.0f us); graph restored",
                      o_.sync.c_str(), human_bytes(bytes).c_str(), o_.node.c_str(),
                      target_.text.c_str(), secs, human_bytes(secs > 0 ? bytes / secs : 0).c_str(),
                      human_bytes(static_cast<double>(out_.peak_fleecing_bytes())).c_str(),
                      static_cast<unsigned long long>(details["cbw-count"].get<std::uint64_t>()),
                      details["cbw-latency-avg-us"].get<double>(),
                      details["cbw-latency-max-us"].get<double>());
        std::string text = line;
        if (!o_.base.empty()) text += "; overlay of " + o_.base;
        if (tracking_)
            text +=
                std::string("; dirty bitmap '") + o_.bitmap + "' tracks changes from this point" +
                (!details.value("bitmap-persistent", false)      ? " (in memory only)"
                 : details.value("bitmap-survives-crash", false) ? " (persistent, survives a crash)"
                                                                 : " (persistent)");
        out_.summary(true, text, details);
        return 0;
    }
    if (ok) failure = "the backup completed but the cleanup was incomplete (see warnings)";
    details["error"] = failure;
    out_.summary(false, "backup FAILED: " + failure + (clean ? "; graph restored" : ""), details);
    if (g_signal) return 128 + g_signal;
    return 1;
}

} // namespace

int run_backup(const BackupOptions& o) {
    ProgressReporter out(o.json);
    try {
        if (o.sync != "full" && o.sync != "incremental")
            throw std::runtime_error("--sync must be full or incremental, not '" + o.sync + "'");
        if (o.sync == "incremental" && o.bitmap.empty())
            throw std::runtime_error("--sync incremental needs --bitmap NAME (the bitmap the "
                                     "previous backup of the chain was taken with)");
        if (!o.base.empty() && o.sync != "incremental")
            throw std::runtime_error("--base belongs to --sync incremental");
        if (o.fleecing_format != "raw" && o.fleecing_format != "qcow2")
            throw std::runtime_error("--fleecing-format must be raw or qcow2");
        if (o.on_cbw_error != "break-snapshot" && o.on_cbw_error != "break-guest-write")
            throw std::runtime_error("--on-cbw-error must be break-snapshot or break-guest-write");
        // An incremental to a local file is a qcow2 overlay of the previous backup.
        std::string target_format = o.target_format;
        if (o.sync == "incremental" && o.target.find("://") == std::string::npos &&
            target_format.empty())
            target_format = "qcow2";
        TargetSpec target = parse_target(o.target, target_format, o.tls_creds);
        target.reconnect_delay_s = o.target_reconnect_s;
        if (o.sync == "incremental" && target.kind == TargetSpec::Kind::file) {
            if (o.base.empty())
                throw std::runtime_error(
                    "an incremental to a local file needs --base PREV, the previous backup of "
                    "the chain (the target becomes a qcow2 overlay of it)");
            make_overlay_target(target, o.base);
        } else if (!o.base.empty()) {
            make_overlay_target(target, o.base); // explains why --base does not apply
        }
        install_signal_handlers();
        QmpClient qmp(o.qmp_socket);
        BackupRun run(qmp, out, o, std::move(target));
        return run.run();
    } catch (const std::exception& e) {
        out.summary(false, std::string("error: ") + e.what(), json{{"error", e.what()}});
        return g_signal ? 128 + g_signal : 1;
    }
}

} // namespace fleece::cli
