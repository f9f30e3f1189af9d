#pragma once
// BackupJob (blockdev-backup): copies the point-in-time view of `device` to `target`.
//
// Two ways to hold the point in time, chosen by who uses the source:
// - nobody writes it (a snapshot-access node of the fleecing scheme, a read-only node):
//   the job takes it as immutable (consistent-read, write unshared), so no writer can
//   appear while the job runs, and copies with its own copy engine;
// - it has writers: the job inserts its own copy-before-write filter above it (every
//   parent moves onto the filter, exports included), with the job's target as the filter's
//   target. The job and the filter share the filter's copy engine, so each cluster goes to
//   the target exactly once: by the job in the background, or by the filter just before a
//   guest write changes it. The filter leaves the graph when the job is cleaned up.
//
// Creation is split so that a transaction can start several backups at one point in time:
// create() validates and prepares (nothing in the I/O path changes), insert() puts the
// filter in (call it with the graph drained), abandon() undoes both.

#include "block/block_copy.hpp"
#include "block/graph.hpp"
#include "jobs/backup_bitmap.hpp"
#include "jobs/backup_filter.hpp"
#include "jobs/error_action.hpp"
#include "jobs/job.hpp"

#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace fleece::jobs {

// incremental is bitmap with bitmap-mode on-success (normalised in create()).
enum class SyncMode { full, top, none, bitmap, incremental };

// QMP's names of the sync modes ("full", "top", ...); nullopt for any other name.
std::optional<SyncMode> parse_sync_mode(std::string_view name);
const char* sync_mode_name(SyncMode mode);

// Against a target that may lose acknowledged writes (an NBD server with a write cache),
// a job with an immutable source flushes after this many copied bytes, and releases them
// on the source (discard-source) only then: the fleecing image holds up to this much more.
inline constexpr std::uint64_t default_checkpoint_bytes = 16ull * 1024 * 1024;

struct BackupOptions {
    JobOptions job;
    std::string device;
    std::string target;
    SyncMode sync = SyncMode::full;
    std::string bitmap;           // sync bitmap on `device` ("" = none)
    std::string bitmap_mode;      // on-success | always | never ("" = not given)
    std::string filter_node_name; // empty: "#blockNNN"
    ErrorAction on_source_error = ErrorAction::report;
    ErrorAction on_target_error = ErrorAction::report;
    bool cbw_break_guest_write = false; // on-cbw-error (default break-snapshot)
    std::uint64_t cbw_timeout_s = 0;    // x-cbw-timeout of the job's own filter (0 = none)
    bool compress = false;
    bool discard_source = false;
    unsigned max_workers = 64;
    std::uint64_t max_chunk = 0;
    std::uint64_t min_cluster_size = 0;
    std::uint64_t checkpoint_bytes = default_checkpoint_bytes; // not a QMP option (tests)
};

class BackupJob final : public Job, public block::ChildParent {
  public:
    // Validates the request and attaches to source and target; nothing is left attached
    // when it fails. `make_filter` is how a filter is made when the source has writers
    // (null: such a source is refused).
    static Result<std::unique_ptr<BackupJob>> create(block::Graph& graph, BackupOptions options,
                                                     EventSink events,
                                                     BackupFilterFactory make_filter = {});
    ~BackupJob() override;

    // Puts the filter (if any) above the source. Call with the graph drained.
    io::Task<Status> insert();
    // Undoes insert() and create() for a job that will not start.
    io::Task<void> abandon();

    // The job's filter node name, empty when the source is held immutable.
    std::string filter_name() const;

    std::string parent_description() const override { return "job '" + id() + "'"; }
    std::string parent_name() const override { return id(); }
    const char* parent_type() const override { return "block-job"; }

  protected:
    io::Task<std::error_code> run() override;
    void commit() override;
    void abort() override;
    void clean() override;
    io::Task<void> clean_graph() override;
    void on_speed_changed() override;
    void on_interrupt() override;
    void sync_progress() override;

  private:
    BackupJob(block::Graph& graph, BackupOptions options, EventSink events);
    void seed_copy_bitmap();
    Status prepare_immutable(block::Node& source, block::Node& target);
    Status prepare_filter(block::Node& source, block::Node& target,
                          const BackupFilterFactory& make_filter);
    io::Task<std::error_code> copy_loop();
    io::Task<std::error_code> wait_for_cancel();
    std::error_code snapshot_broken();
    io::Task<void> remove_filter();

    block::Graph& graph_;
    BackupOptions options_;
    block::Node* source_node_ = nullptr;
    std::unique_ptr<block::Child> source_; // immutable source, or the job's edge on the filter
    std::unique_ptr<block::Child> target_;
    std::uint64_t target_lost_changes_at_start_ = 0; // Node::lost_changes() at create()
    std::unique_ptr<block::BlockCopy> own_copy_;
    block::BlockCopy* copy_ = nullptr; // own_copy_ or the filter's engine
    BackupFilter filter_;
    block::Node* filter_node_ = nullptr; // in the graph once prepared
    bool inserted_ = false;
    bool stop_reset_ = false;
    std::unique_ptr<BackupBitmap> sync_bitmap_; // frozen while the job runs
    bool copy_bitmap_seeded_ = false;
};

} // namespace fleece::jobs
