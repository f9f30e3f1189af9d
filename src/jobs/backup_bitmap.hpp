#pragma once
// The dirty bitmap side of blockdev-backup (sync=bitmap|incremental, and a bitmap with
// sync=full|top): QEMU's argument rules, freezing the bitmap while the job runs, seeding
// the job's copy bitmap from it, and what happens to it when the job ends:
//
//   bitmap-mode   job succeeded                      job failed or was cancelled
//   on-success    keeps only writes since the start  gets its content back (+ new writes)
//   always        keeps only writes since the start  same, plus every cluster not copied
//   never         gets its content back              gets its content back
//
// "Writes since the start" are the successor's: the bitmap is frozen (busy, not recording)
// when the job is created and a successor records the writes made meanwhile.

#include "block/block_copy.hpp"
#include "block/dirty_bitmap.hpp"
#include "block/node.hpp"
#include "util/result.hpp"

#include <memory>
#include <string>

namespace fleece::jobs {

enum class BitmapMode { on_success, always, never };

// Validates sync/bitmap/bitmap-mode as QEMU does. Rewrites sync=incremental to
// sync=bitmap with mode on-success. `bitmap_mode` is "" when not given.
struct BitmapSyncRequest {
    std::string sync;
    std::string bitmap;
    std::string bitmap_mode;
};
Status normalize_bitmap_sync(BitmapSyncRequest& req);

// A frozen sync bitmap for the life of a backup job. Destroying it without finish()
// reclaims (the job never ran: the bitmap is as before, plus the writes made meanwhile).
class BackupBitmap {
  public:
    // Looks the bitmap up on `source` (the job's device node only, as QEMU), checks it
    // and freezes it.
    static Result<std::unique_ptr<BackupBitmap>> freeze(block::Node& source,
                                                        const BitmapSyncRequest& req);
    ~BackupBitmap();
    BackupBitmap(const BackupBitmap&) = delete;
    BackupBitmap& operator=(const BackupBitmap&) = delete;

    // sync=bitmap: copy exactly the frozen bitmap's clusters (rounded out to the copy
    // cluster size).
    void seed_copy_bitmap(block::BlockCopy& copy) const;
    // The job ended. `remaining` are the clusters the job did not copy (its copy bitmap at
    // `cluster` granularity).
    void finish(bool success, const Bitmap& remaining, std::uint64_t cluster);

  private:
    BackupBitmap(block::DirtyBitmap* bitmap, BitmapMode mode) : bitmap_(bitmap), mode_(mode) {}
    block::DirtyBitmap* bitmap_;
    BitmapMode mode_;
    bool finished_ = false;
};

} // namespace fleece::jobs
