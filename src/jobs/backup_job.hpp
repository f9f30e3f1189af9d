#pragma once
// BackupJob (blockdev-backup): copies the point-in-time view of `device` to `target`.
//
// Today's scope: sync=full from a source nobody writes (the push-with-fleecing case: the
// device is a snapshot-access node, or any node without writers). The job then takes the
// source as immutable (consistent-read, and unshares write) instead of inserting a
// copy-before-write filter, so no guest write can change what it copies.

#include "block/block_copy.hpp"
#include "block/graph.hpp"
#include "jobs/backup_bitmap.hpp"
#include "jobs/job.hpp"

#include <memory>
#include <string>

namespace fleece::jobs {

struct BackupOptions {
    JobOptions job;
    std::string device;
    std::string target;
    std::string sync = "full";
    std::string bitmap;      // sync bitmap on `device` ("" = none)
    std::string bitmap_mode; // on-success | always | never ("" = not given)
    unsigned max_workers = 64;
    std::uint64_t max_chunk = 0;
    std::uint64_t min_cluster_size = 0;
    bool discard_source = false;
};

class BackupJob final : public Job, public block::ChildParent {
  public:
    // Validates the request and attaches to source and target; nothing is left attached
    // when it fails.
    static Result<std::unique_ptr<BackupJob>> create(block::Graph& graph, BackupOptions options,
                                                     EventSink events);
    ~BackupJob() override;

    std::string parent_description() const override { return "job '" + id() + "'"; }
    std::string parent_name() const override { return id(); }
    const char* parent_type() const override { return "block-job"; }

  protected:
    io::Task<std::error_code> run() override;
    void commit() override;
    void abort() override;
    void clean() override;
    void on_speed_changed() override;
    void on_interrupt() override;
    void sync_progress() override;

  private:
    BackupJob(block::Graph& graph, BackupOptions options, EventSink events);

    block::Graph& graph_;
    BackupOptions options_;
    std::unique_ptr<block::Child> source_;
    std::unique_ptr<block::Child> target_;
    std::unique_ptr<block::BlockCopy> copy_;
    std::unique_ptr<BackupBitmap> sync_bitmap_; // frozen while the job runs
};

} // namespace fleece::jobs
