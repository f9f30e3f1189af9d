#include "jobs/backup_job.hpp"

#include <fmt/format.h>

namespace fleece::jobs {

BackupJob::BackupJob(block::Graph& graph, BackupOptions options, EventSink events)
    : Job(options.job, "backup", std::move(events)), graph_(graph), options_(std::move(options)) {}

BackupJob::~BackupJob() {
    if (source_) graph_.detach(std::move(source_));
    if (target_) graph_.detach(std::move(target_));
}

Result<std::unique_ptr<BackupJob>> BackupJob::create(block::Graph& graph, BackupOptions options,
                                                     EventSink events) {
    block::Node* source = graph.find(options.device);
    if (!source)
        return Error{"DeviceNotFound", fmt::format("Cannot find device='{}' nor node-name='{}'",
                                                   options.device, options.device)};
    block::Node* target = graph.find(options.target);
    if (!target)
        return Error{"DeviceNotFound", fmt::format("Cannot find device='{}' nor node-name='{}'",
                                                   options.target, options.target)};
    if (source == target) return make_error("Source and target cannot be the same");
    BitmapSyncRequest bitmap_req{options.sync, options.bitmap, options.bitmap_mode};
    if (Status st = normalize_bitmap_sync(bitmap_req); !st) return st.error();
    options.sync = bitmap_req.sync;
    if (options.sync != "full" && options.sync != "bitmap")
        return make_error(fmt::format(
            "sync mode '{}' is not supported yet (only 'full', 'bitmap', 'incremental')",
            options.sync));
    // Frozen before anything else can fail, as QEMU checks the bitmap first; an early
    // return reclaims it (BackupBitmap's destructor).
    std::unique_ptr<BackupBitmap> frozen;
    if (!bitmap_req.bitmap.empty()) {
        auto f = BackupBitmap::freeze(*source, bitmap_req);
        if (!f) return f.error();
        frozen = std::move(*f);
    }
    if (source->size() != target->size())
        return make_error("Source and target image have different sizes");
    if (options.max_workers == 0) return make_error("max-workers must be greater than zero");
    std::unique_ptr<BackupJob> job(new BackupJob(graph, std::move(options), std::move(events)));
    // The source must be immutable for the job's life: read it consistently and let nobody
    // write it. A source with writers needs a copy-before-write filter, which this job does
    // not insert yet: put one in front (the fleecing scheme) and back up its snapshot.
    auto src = graph.attach(*job, *source, block::perm_consistent_read,
                            block::perm_consistent_read | block::perm_write_unchanged, "root");
    if (!src)
        return make_error(
            fmt::format("Cannot back up '{}' while it has writers: {} "
                        "(back up a snapshot-access node of a copy-before-write filter instead)",
                        source->name(), src.error().message));
    job->source_ = std::move(*src);
    auto tgt = graph.attach(*job, *target, block::perm_write,
                            block::perm_consistent_read | block::perm_write_unchanged, "target");
    if (!tgt) return tgt.error(); // the destructor detaches the source
    job->target_ = std::move(*tgt);
    const std::uint64_t cluster =
        block::BlockCopy::cluster_size_for(*target, job->options_.min_cluster_size);
    if (job->options_.max_chunk != 0 && job->options_.max_chunk < cluster)
        return make_error(
            fmt::format("Required max-chunk ({}) is less than backup cluster size ({})",
                        job->options_.max_chunk, cluster));
    job->copy_ = std::make_unique<block::BlockCopy>(*job->source_, *job->target_, cluster, false);
    job->sync_bitmap_ = std::move(frozen);
    if (job->options_.sync == "bitmap")
        job->sync_bitmap_->seed_copy_bitmap(*job->copy_);
    else
        job->copy_->copy_bitmap().set_all();
    job->copy_->set_speed(job->options_.job.speed);
    job->set_progress_total(job->copy_->progress_total());
    return job;
}

io::Task<std::error_code> BackupJob::run() {
    block::CopyOptions opts;
    opts.max_workers = options_.max_workers;
    opts.max_chunk = options_.max_chunk;
    std::error_code result;
    while (true) {
        co_await pause_point();
        if (cancelled()) break;
        result = co_await copy_->copy_all_background(opts);
        if (result || cancelled() || copy_->copy_bitmap().count() == 0) break;
        // The call ended early (pause): loop, wait out the pause, continue where we were.
    }
    if (!result && !cancelled()) result = co_await target_->flush();
    co_await copy_->close();
    co_return result;
}

void BackupJob::on_speed_changed() {
    if (copy_) copy_->set_speed(speed());
}

void BackupJob::sync_progress() {
    // Copies done by copy-before-write count too: both go through the same engine.
    if (!copy_) return;
    set_progress_total(copy_->progress_total());
    add_progress(copy_->progress_done() - progress_current());
}

void BackupJob::on_interrupt() {
    // Ends the running background call; in-flight chunks finish, the rest stays dirty.
    if (copy_) copy_->cancel_background();
}

// The sync bitmap's fate (see backup_bitmap.hpp); run() has waited for every copy.
void BackupJob::commit() {
    if (sync_bitmap_) sync_bitmap_->finish(true, copy_->copy_bitmap(), copy_->cluster_size());
}

void BackupJob::abort() {
    if (sync_bitmap_) sync_bitmap_->finish(false, copy_->copy_bitmap(), copy_->cluster_size());
}

void BackupJob::clean() {
    // Detach now so the nodes are free as soon as the job concludes.
    if (source_) graph_.detach(std::move(source_));
    if (target_) graph_.detach(std::move(target_));
}

} // namespace fleece::jobs
