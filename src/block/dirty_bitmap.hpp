#pragma once
// Dirty bitmaps: named per-node sets of clusters that changed since a point in time, the
// basis of incremental backups (QEMU's block-dirty-bitmap-* model, see
// docs/dirty-bitmaps.md).
//
// - A DirtyBitmap covers a node's whole size at a power-of-two granularity (512 B .. 2 GiB).
//   Bit i covers bytes [i*g, (i+1)*g); a write touching any byte of it sets it.
// - Node records every write, write-zeroes and discard that reaches it into all of its
//   bitmaps (DirtyBitmaps::record), in its non-virtual entry points, so no driver can miss it.
// - Enabled bitmaps record; disabled ones keep their content.
// - Busy bitmaps are in use (an export, a backup job) and refuse user changes.
// - Frozen: a backup job took the bitmap. It stops recording, keeps the content the job
//   copies, and a successor records the writes made meanwhile. When the job ends the
//   bitmap either abdicates (keeps only the successor's writes: the backup covered the rest)
//   or reclaims (takes the successor's writes back in: nothing was backed up).

#include "util/bitmap.hpp"
#include "util/result.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace fleece::block {

class Node;
class DirtyBitmaps;

inline constexpr std::uint64_t min_bitmap_granularity = 512;
inline constexpr std::uint64_t max_bitmap_granularity = 1ull << 31;
inline constexpr std::size_t max_bitmap_name_length = 1023;

// QEMU's default: the node's cluster size clamped to [4 KiB, 64 KiB], 64 KiB when unknown.
std::uint64_t default_bitmap_granularity(std::uint32_t cluster_size);

struct DirtyExtent {
    std::uint64_t offset = 0;
    std::uint64_t length = 0;
};

class DirtyBitmap {
  public:
    DirtyBitmap(std::string name, std::uint64_t disk_size, std::uint64_t granularity);
    DirtyBitmap(const DirtyBitmap&) = delete;
    DirtyBitmap& operator=(const DirtyBitmap&) = delete;

    const std::string& name() const { return name_; }
    std::uint64_t granularity() const { return granularity_; }
    std::uint64_t disk_size() const { return disk_size_; }
    const Bitmap& bits() const { return bits_; }

    bool enabled() const { return enabled_; }
    void set_enabled(bool on) {
        enabled_ = on;
        changed();
    }
    // What query shows as "recording": enabled, or frozen with a recording successor.
    bool recording() const { return enabled_ || (successor_ && successor_->enabled_); }
    // In use by an export or a job (set_busy), or frozen by a backup.
    bool busy() const { return busy_ || successor_ != nullptr; }
    void set_busy(bool on) { busy_ = on; }
    bool frozen() const { return successor_ != nullptr; }
    bool persistent() const { return persistent_; }
    void set_persistent(bool on) {
        persistent_ = on;
        changed();
    }
    // Content cannot be trusted (e.g. not stored cleanly before a crash): unusable.
    bool inconsistent() const { return inconsistent_; }
    void set_inconsistent(bool on) {
        inconsistent_ = on;
        changed();
    }
    // Loaded from a read-only image: content must not change.
    bool readonly() const { return readonly_; }
    void set_readonly(bool on) { readonly_ = on; }

    // Dirty bytes as QEMU counts them: set bits times granularity (the last bit counts whole).
    std::uint64_t count() const { return bits_.count() * granularity_; }
    bool is_dirty(std::uint64_t offset) const { return bits_.get(offset / granularity_); }

    // The write hook: into the successor when frozen, else into this bitmap when enabled.
    void record(std::uint64_t offset, std::uint64_t length);
    // Unconditional changes of the content (clipped to the disk size).
    void set_dirty(std::uint64_t offset, std::uint64_t length);
    // Clears every bit the range touches (callers pass granularity-aligned ranges).
    void reset_dirty(std::uint64_t offset, std::uint64_t length);
    void clear() {
        bits_.reset_all();
        changed();
    }
    // this |= src, byte-wise: a coarser destination rounds outwards (over-approximates).
    // Disk sizes must match (checked by callers, see merge_check).
    void merge(const DirtyBitmap& src);
    void merge_bits(const Bitmap& src, std::uint64_t src_granularity);
    // Content backup and restore (transaction abort).
    Bitmap copy_bits() const { return bits_; }
    void restore_bits(Bitmap saved) {
        bits_ = std::move(saved);
        changed();
    }

    // First dirty extent starting at or after `offset` and ending at most at `end`, in
    // bytes clipped to the disk size; nullopt when clean.
    std::optional<DirtyExtent> next_dirty(std::uint64_t offset, std::uint64_t end) const;
    std::optional<DirtyExtent> next_clean(std::uint64_t offset, std::uint64_t end) const;

    // Successor handling for backup jobs.
    // Freeze: the successor (same granularity, clean) records from now on; this one stops.
    void create_successor();
    // The job backed up this content: keep only what the successor recorded.
    void abdicate();
    // The job did not back it up: take the successor's writes back in.
    void reclaim();
    const DirtyBitmap* successor() const { return successor_.get(); }

  private:
    friend class DirtyBitmaps;
    void set_bits(std::uint64_t offset, std::uint64_t length);
    // Every change but a recorded write tells the owning set (its change listener).
    void changed();

    DirtyBitmaps* owner_ = nullptr;
    std::string name_;
    std::uint64_t disk_size_;
    std::uint64_t granularity_;
    Bitmap bits_;
    bool enabled_ = true;
    bool busy_ = false;
    bool persistent_ = false;
    bool inconsistent_ = false;
    bool readonly_ = false;
    std::unique_ptr<DirtyBitmap> successor_;
};

// Checks before using a bitmap, with QEMU's messages.
inline constexpr unsigned bitmap_check_busy = 1;
inline constexpr unsigned bitmap_check_readonly = 2;
inline constexpr unsigned bitmap_check_inconsistent = 4;
inline constexpr unsigned bitmap_check_all = 7;
inline constexpr unsigned bitmap_check_allow_readonly = 5;
Status check_bitmap(const DirtyBitmap& bitmap, unsigned checks);
// Why src cannot be merged into dst (different disk sizes), or success.
Status merge_check(const DirtyBitmap& dst, const DirtyBitmap& src);

// The bitmaps of one node, newest first (the order query-named-block-nodes shows).
class DirtyBitmaps {
  public:
    DirtyBitmap* find(std::string_view name) const;
    const std::vector<std::unique_ptr<DirtyBitmap>>& list() const { return list_; }
    bool empty() const { return list_.empty(); }

    // Validates the name (non-empty, <= 1023 bytes, unique) and granularity (power of two in
    // [512, 2 GiB]); 0 = default_granularity.
    Result<DirtyBitmap*> add(std::string name, std::uint64_t disk_size, std::uint64_t granularity);
    // Removes the bitmap object (callers check busy first).
    void remove(const DirtyBitmap* bitmap);

    // The write hook: every bitmap records the range.
    void record(std::uint64_t offset, std::uint64_t length);

    // Called after every change of the set or of a bitmap's content other than a recorded
    // write (add, remove, clear, merge, enable, freeze, abdicate, ...): a store keeping the
    // bitmaps outside the node's image saves them then. One listener; empty = none.
    void set_change_listener(std::function<void()> listener) { listener_ = std::move(listener); }
    void notify_changed() {
        if (listener_) listener_();
    }

  private:
    std::vector<std::unique_ptr<DirtyBitmap>> list_;
    std::function<void()> listener_;
};

// Validates a granularity from the user (QEMU's wording).
Status check_granularity(std::uint64_t granularity);

} // namespace fleece::block
