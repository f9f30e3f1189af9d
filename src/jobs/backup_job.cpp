#include "jobs/backup_job.hpp"

#include <chrono>
#include <fmt/format.h>
#include <utility>

namespace fleece::jobs {

namespace {

// A source "has writers" when some user holds the write permission on it now. Such a
// source changes under the job, so it needs a filter; any other source can be frozen.
bool has_writers(const block::Node& node) {
    for (const block::Child* p : node.parents())
        if (p->perm() & block::perm_write) return true;
    return false;
}

} // namespace

BackupJob::BackupJob(block::Graph& graph, BackupOptions options, EventSink events)
    : Job(options.job, "backup", std::move(events)), graph_(graph), options_(std::move(options)) {}

BackupJob::~BackupJob() {
    // abandon() or clean_graph() removed the filter; only edges can be left here.
    if (source_) graph_.detach(std::move(source_));
    if (target_) graph_.detach(std::move(target_));
}

std::string BackupJob::filter_name() const {
    return filter_node_ ? filter_node_->name() : std::string();
}

Result<std::unique_ptr<BackupJob>> BackupJob::create(block::Graph& graph, BackupOptions options,
                                                     EventSink events,
                                                     BackupFilterFactory make_filter) {
    block::Node* source = graph.find(options.device);
    if (!source)
        return Error{"DeviceNotFound", fmt::format("Cannot find device='{}' nor node-name='{}'",
                                                   options.device, options.device)};
    block::Node* target = graph.find(options.target);
    if (!target)
        return Error{"DeviceNotFound", fmt::format("Cannot find device='{}' nor node-name='{}'",
                                                   options.target, options.target)};
    if (source == target) return make_error("Source and target cannot be the same");
    BitmapSyncRequest bitmap_req{std::string(sync_mode_name(options.sync)), options.bitmap,
                                 options.bitmap_mode};
    if (Status st = normalize_bitmap_sync(bitmap_req); !st) return st.error();
    if (bitmap_req.sync == "bitmap") options.sync = SyncMode::bitmap; // incremental too
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
    if (options.min_cluster_size != 0 &&
        (options.min_cluster_size & (options.min_cluster_size - 1)) != 0)
        return make_error("min-cluster-size needs to be a power of 2");
    if (options.compress && !target->caps().compressed_write)
        return make_error(
            fmt::format("Compression is not supported for this drive {}", target->name()));
    const std::uint64_t cluster =
        block::BlockCopy::cluster_size_for(*target, options.min_cluster_size);
    if (options.max_chunk != 0 && options.max_chunk < cluster)
        return make_error(
            fmt::format("Required max-chunk ({}) is less than backup cluster size ({})",
                        options.max_chunk, cluster));
    std::unique_ptr<BackupJob> job(new BackupJob(graph, std::move(options), std::move(events)));
    job->source_node_ = source;
    const bool needs_filter = has_writers(*source);
    if (needs_filter && !make_filter)
        return make_error(fmt::format("Cannot back up '{}' while it has writers", source->name()));
    Status st = needs_filter ? job->prepare_filter(*source, *target, make_filter)
                             : job->prepare_immutable(*source, *target);
    if (!st) return st.error(); // the destructor detaches what was attached
    job->sync_bitmap_ = std::move(frozen);
    job->copy_->set_speed(job->options_.job.speed);
    job->copy_->set_compress(job->options_.compress);
    job->set_progress_total(job->copy_->progress_total());
    return job;
}

Status BackupJob::prepare_immutable(block::Node& source, block::Node& target) {
    // The source must stay as it is for the job's life: read it consistently and let nobody
    // write it. With discard-source the job itself writes (discards) it: that only drops
    // what is already on the target.
    block::PermSet perm = block::perm_consistent_read;
    if (options_.discard_source) perm |= block::perm_write;
    auto src = graph_.attach(*this, source, perm,
                             block::perm_consistent_read | block::perm_write_unchanged, "root");
    if (!src) {
        std::string msg =
            fmt::format("Cannot back up '{}': {}", source.name(), src.error().message);
        // The seed's scheme: only the filter may write its fleecing image.
        if (options_.discard_source)
            msg += "; discard-source needs to write the source: to release a fleecing image "
                   "as the job goes, back up from a snapshot-access node on its "
                   "copy-before-write filter";
        return make_error(msg);
    }
    source_ = std::move(*src);
    auto tgt = graph_.attach(*this, target, block::perm_write,
                             block::perm_consistent_read | block::perm_write_unchanged, "target");
    if (!tgt) return tgt.error();
    target_ = std::move(*tgt);
    target_lost_changes_at_start_ = target.lost_changes();
    const std::uint64_t cluster =
        block::BlockCopy::cluster_size_for(target, options_.min_cluster_size);
    own_copy_ = std::make_unique<block::BlockCopy>(*source_, *target_, cluster, false);
    own_copy_->set_discard_source(options_.discard_source);
    // The source stays as it is, so what a target loses from its write cache (an NBD
    // server that went away) can be copied again: flush as we go, and release the source
    // only behind a flush.
    if (target.may_lose_acknowledged_changes() && options_.sync != SyncMode::none)
        own_copy_->enable_checkpoints(options_.checkpoint_bytes);
    copy_ = own_copy_.get();
    return {};
}

Status BackupJob::prepare_filter(block::Node& source, block::Node& target,
                                 const BackupFilterFactory& make_filter) {
    if (options_.discard_source)
        // Discarding a disk that is in use would destroy the guest's data.
        return make_error(fmt::format(
            "discard-source needs a source without writers (a snapshot-access node), but "
            "'{}' has writers",
            source.name()));
    std::string name = options_.filter_node_name;
    if (name.empty()) name = graph_.generate_name();
    if (graph_.find(name))
        return make_error(fmt::format("Duplicate nodes with node-name='{}'", name));
    // The filter's target child holds the write permission; the job only flushes.
    auto tgt = graph_.attach(*this, target, 0, block::perm_all, "target");
    if (!tgt) return tgt.error();
    target_ = std::move(*tgt);
    target_lost_changes_at_start_ = target.lost_changes();
    BackupFilterRequest req;
    req.name = name;
    req.source = &source;
    req.target = &target;
    req.break_guest_write = options_.cbw_break_guest_write;
    req.min_cluster_size = options_.min_cluster_size;
    req.timeout_s = options_.cbw_timeout_s;
    auto filter = make_filter(req);
    if (!filter) return filter.error();
    // Parentless, the filter takes nothing on the source yet; it enters the I/O path in
    // insert(). Nothing after this can fail, so create() never leaves a node behind.
    auto added = graph_.add(std::move(filter->node));
    if (!added) return added.error();
    filter_node_ = *added;
    filter_ = std::move(*filter);
    copy_ = filter_.copy;
    return {};
}

io::Task<Status> BackupJob::insert() {
    if (filter_node_ && !inserted_) {
        Status st = co_await graph_.replace(*source_node_, *filter_node_);
        if (!st) co_return st;
        inserted_ = true;
        // The job holds the filter like QEMU's job block backend: no permissions of its own.
        auto edge = graph_.attach(*this, *filter_node_, 0, block::perm_all, "root");
        if (!edge) co_return edge.error();
        source_ = std::move(*edge);
    }
    // The point in time is now: the filter (if any) sees every later write.
    seed_copy_bitmap();
    co_return Status{};
}

void BackupJob::seed_copy_bitmap() {
    if (copy_bitmap_seeded_ || !copy_) return;
    copy_bitmap_seeded_ = true;
    if (options_.sync != SyncMode::bitmap) return; // the engine starts with every cluster
    // Seeded at the snapshot point, not at create(): writes made between the freeze and
    // the filter's insertion are in the successor and must be copied too.
    sync_bitmap_->seed_copy_bitmap(*copy_);
    set_progress_total(copy_->progress_total());
}

io::Task<void> BackupJob::remove_filter() {
    if (source_) graph_.detach(std::move(source_));
    if (filter_node_) {
        if (inserted_) {
            // Every parent goes back to the source: the graph is as it was before the job.
            Status st = co_await graph_.replace(*filter_node_, *source_node_);
            (void)st; // relaxing only: moving users back to where they were cannot conflict
            inserted_ = false;
        }
        const std::string name = filter_node_->name();
        filter_node_ = nullptr;
        copy_ = nullptr;
        (void)co_await graph_.remove(name);
    }
    if (target_) graph_.detach(std::move(target_));
}

io::Task<void> BackupJob::abandon() {
    if (own_copy_) co_await own_copy_->close();
    co_await remove_filter();
    if (source_) graph_.detach(std::move(source_));
}

std::error_code BackupJob::snapshot_broken() {
    if (!filter_.snapshot_error) return {};
    return filter_.snapshot_error();
}

io::Task<std::error_code> BackupJob::run() {
    seed_copy_bitmap(); // no-op after insert(); a job without insert() has no writers
    std::error_code result;
    if (options_.sync == SyncMode::top) {
        // Only what the source's top layer allocates is copied.
        result = co_await copy_->reset_unallocated(&stop_reset_);
        set_progress_total(copy_->progress_total());
    }
    if (!result) {
        if (options_.sync == SyncMode::none)
            result = co_await wait_for_cancel();
        else
            result = co_await copy_loop();
    }
    if (!result && !cancelled()) {
        if (std::error_code broken = snapshot_broken()) {
            set_error_text(fmt::format("Permission denied (the point-in-time view broke: the "
                                       "copy-before-write filter failed: {})",
                                       broken.message()));
            result = block::errno_code(EACCES);
        }
    }
    // With checkpoints the last one was the final flush.
    if (!result && !cancelled() && target_ && !copy_->checkpoints()) {
        result = co_await target_->flush();
        // Without checkpoints nothing lost can be copied again (docs/backup-jobs.md).
        if (result && target_->node().lost_changes() != target_lost_changes_at_start_)
            set_error_text(
                fmt::format("{} (the target's connection dropped while it held writes it had "
                            "acknowledged but not flushed; they may be lost, so this backup is "
                            "incomplete: run it again)",
                            result.message()));
    }
    if (own_copy_) co_await own_copy_->close();
    co_return result;
}

// sync=none: only the filter copies (what the guest overwrites); the job runs until
// cancelled, or fails when the snapshot breaks.
io::Task<std::error_code> BackupJob::wait_for_cancel() {
    using namespace std::chrono_literals;
    while (!cancelled()) {
        co_await pause_point();
        if (cancelled()) break;
        if (snapshot_broken()) co_return std::error_code{}; // run() reports it
        co_await sleep_or_kick(200ms);
    }
    co_return std::error_code{};
}

io::Task<std::error_code> BackupJob::copy_loop() {
    block::CopyOptions opts;
    opts.max_workers = options_.max_workers;
    opts.max_chunk = options_.max_chunk;
    while (true) {
        co_await pause_point();
        if (cancelled()) co_return std::error_code{};
        std::error_code ec = co_await copy_->copy_all_background(opts);
        if (cancelled() || snapshot_broken()) co_return std::error_code{};
        if (!ec || ec.value() == ECANCELED) {
            if (copy_->copy_bitmap().count() != 0)
                continue; // ended early (pause, or a copy failed elsewhere): go on
            if (!copy_->checkpoints()) co_return std::error_code{};
            // The final checkpoint: done, unless the target lost what it had not flushed.
            ec = co_await copy_->checkpoint();
            if (!ec && copy_->copy_bitmap().count() == 0) co_return std::error_code{};
            if (!ec) continue;
        }
        const bool is_read = copy_->last_error_is_read();
        const ErrorReaction r =
            react(is_read ? options_.on_source_error : options_.on_target_error, ec);
        emit_error(is_read, reaction_name(r));
        switch (r) {
        case ErrorReaction::report:
            co_return ec;
        case ErrorReaction::ignore:
            break; // the failed clusters are dirty again: retry them
        case ErrorReaction::stop:
            pause_for_error(ec.value() == ENOSPC); // the next pause_point() pauses
            break;
        }
    }
}

void BackupJob::on_speed_changed() {
    if (copy_) copy_->set_speed(speed());
}

void BackupJob::sync_progress() {
    // Copies done by copy-before-write count too: both go through the same engine.
    if (!copy_) return;
    set_progress_total(copy_->progress_total());
    if (copy_->progress_done() > progress_current())
        add_progress(copy_->progress_done() - progress_current());
}

void BackupJob::on_interrupt() {
    // Ends the running background call; in-flight chunks finish, the rest stays dirty.
    stop_reset_ = cancelled();
    if (copy_) copy_->cancel_background();
    // Nothing of a cancelled job waits for a target that is away (reconnect-delay).
    if (cancelled() && target_) target_->node().cancel_in_flight();
}

// The sync bitmap's fate (see backup_bitmap.hpp); run() has waited for every copy.
void BackupJob::commit() {
    if (sync_bitmap_) sync_bitmap_->finish(true, copy_->copy_bitmap(), copy_->cluster_size());
}

void BackupJob::abort() {
    if (sync_bitmap_) sync_bitmap_->finish(false, copy_->copy_bitmap(), copy_->cluster_size());
}

void BackupJob::clean() {
    // Detach the immutable source now so the node is free as soon as the job concludes.
    if (!filter_node_) {
        if (source_) graph_.detach(std::move(source_));
        if (target_) graph_.detach(std::move(target_));
    }
}

io::Task<void> BackupJob::clean_graph() {
    // The filter did copy-before-write until now (also while pending); it goes last.
    if (filter_node_) {
        sync_progress(); // the engine goes with the filter; keep the final figures
        co_await remove_filter();
    }
}

namespace {
constexpr std::pair<std::string_view, SyncMode> sync_modes[] = {
    {"full", SyncMode::full},
    {"top", SyncMode::top},
    {"none", SyncMode::none},
    {"bitmap", SyncMode::bitmap},
    {"incremental", SyncMode::incremental}};
} // namespace

std::optional<SyncMode> parse_sync_mode(std::string_view name) {
    for (const auto& [n, m] : sync_modes)
        if (n == name) return m;
    return std::nullopt;
}

const char* sync_mode_name(SyncMode mode) {
    for (const auto& [n, m] : sync_modes)
        if (m == mode) return n.data();
    return "full";
}

} // namespace fleece::jobs
