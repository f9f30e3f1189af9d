#include "jobs/backup_bitmap.hpp"

#include <fmt/format.h>

namespace fleece::jobs {

Status normalize_bitmap_sync(BitmapSyncRequest& req) {
    const std::string asked_sync = req.sync;
    if (req.sync == "incremental") {
        if (!req.bitmap_mode.empty() && req.bitmap_mode != "on-success")
            return make_error(
                "Bitmap sync mode must be 'on-success' when using sync mode 'incremental'");
        req.sync = "bitmap";
        req.bitmap_mode = "on-success";
    }
    if (req.sync == "bitmap" && req.bitmap.empty())
        return make_error(
            fmt::format("must provide a valid bitmap name for '{}' sync mode", asked_sync));
    if (!req.bitmap_mode.empty() && req.bitmap_mode != "on-success" &&
        req.bitmap_mode != "always" && req.bitmap_mode != "never")
        return make_error(
            fmt::format("Parameter 'bitmap-mode' does not accept value '{}'", req.bitmap_mode));
    if (req.bitmap.empty()) {
        if (!req.bitmap_mode.empty())
            return make_error("Cannot specify bitmap sync mode without a bitmap");
        return {};
    }
    if (req.bitmap_mode.empty())
        return make_error("Bitmap sync mode must be given when providing a bitmap");
    if (req.sync == "none")
        return make_error("sync mode 'none' does not produce meaningful bitmap outputs");
    if (req.bitmap_mode == "never" && req.sync != "bitmap")
        return make_error(fmt::format(
            "Bitmap sync mode 'never' has no meaningful effect when combined with sync mode '{}'",
            req.sync));
    return {};
}

Result<std::unique_ptr<BackupBitmap>> BackupBitmap::freeze(block::Node& source,
                                                           const BitmapSyncRequest& req) {
    block::DirtyBitmap* b = source.dirty_bitmaps().find(req.bitmap);
    if (!b) return make_error(fmt::format("Bitmap '{}' could not be found", req.bitmap));
    if (Status st = check_bitmap(*b, block::bitmap_check_allow_readonly); !st) return st.error();
    const BitmapMode mode = req.bitmap_mode == "always"  ? BitmapMode::always
                            : req.bitmap_mode == "never" ? BitmapMode::never
                                                         : BitmapMode::on_success;
    if (mode != BitmapMode::never)
        if (Status st = check_bitmap(*b, block::bitmap_check_readonly); !st) return st.error();
    b->create_successor();
    return std::unique_ptr<BackupBitmap>(new BackupBitmap(b, mode));
}

BackupBitmap::~BackupBitmap() {
    if (!finished_) bitmap_->reclaim();
}

void BackupBitmap::seed_copy_bitmap(block::BlockCopy& copy) const {
    block::DirtyBitmap clusters("", bitmap_->disk_size(), copy.cluster_size());
    clusters.merge(*bitmap_);
    // Writes since the freeze happened before the snapshot point when this runs at it.
    if (const block::DirtyBitmap* s = bitmap_->successor()) clusters.merge(*s);
    copy.copy_bitmap() = clusters.copy_bits();
}

void BackupBitmap::finish(bool success, const Bitmap& remaining, std::uint64_t cluster) {
    if (finished_) return;
    finished_ = true;
    const bool keep_new_only =
        (success || mode_ == BitmapMode::always) && mode_ != BitmapMode::never;
    if (!keep_new_only) {
        bitmap_->reclaim();
        return;
    }
    bitmap_->abdicate();
    // Clusters the failed job never copied must stay dirty for the next backup.
    if (!success) bitmap_->merge_bits(remaining, cluster);
}

} // namespace fleece::jobs
