#include "block/dirty_bitmap.hpp"

#include "util/align.hpp"
#include "util/assert.hpp"

#include <algorithm>
#include <fmt/format.h>

namespace fleece::block {

std::uint64_t default_bitmap_granularity(std::uint32_t cluster_size) {
    if (cluster_size == 0) return 64 * 1024;
    return std::clamp<std::uint64_t>(cluster_size, 4 * 1024, 64 * 1024);
}

Status check_granularity(std::uint64_t granularity) {
    if (granularity > 0xffffffffull) return make_error("Parameter 'granularity' expects uint32_t");
    if (granularity < min_bitmap_granularity || !is_power_of_two(granularity))
        return make_error("Granularity must be power of 2 and at least 512");
    return {};
}

// ---- DirtyBitmap ------------------------------------------------------------------------

DirtyBitmap::DirtyBitmap(std::string name, std::uint64_t disk_size, std::uint64_t granularity)
    : name_(std::move(name)), disk_size_(disk_size), granularity_(granularity),
      bits_(div_round_up(disk_size, granularity)) {
    FLEECE_ASSERT(is_power_of_two(granularity));
}

void DirtyBitmap::record(std::uint64_t offset, std::uint64_t length) {
    if (successor_) {
        successor_->record(offset, length);
        return;
    }
    if (enabled_) set_bits(offset, length);
}

void DirtyBitmap::changed() {
    if (owner_) owner_->notify_changed();
}

void DirtyBitmap::set_dirty(std::uint64_t offset, std::uint64_t length) {
    set_bits(offset, length);
    changed();
}

void DirtyBitmap::set_bits(std::uint64_t offset, std::uint64_t length) {
    if (length == 0 || offset >= disk_size_) return;
    const std::uint64_t end = std::min(disk_size_, offset + length);
    const std::uint64_t first = offset / granularity_;
    const std::uint64_t last = div_round_up(end, granularity_);
    bits_.set_range(first, last - first);
}

void DirtyBitmap::reset_dirty(std::uint64_t offset, std::uint64_t length) {
    if (length == 0 || offset >= disk_size_) return;
    const std::uint64_t end = std::min(disk_size_, offset + length);
    const std::uint64_t first = offset / granularity_;
    const std::uint64_t last = div_round_up(end, granularity_);
    bits_.reset_range(first, last - first);
    changed();
}

void DirtyBitmap::merge_bits(const Bitmap& src, std::uint64_t src_granularity) {
    if (src_granularity == granularity_ && src.size() == bits_.size()) {
        bits_.merge(src);
        changed();
        return;
    }
    // Different granularity: walk the source's dirty runs and mark their bytes.
    std::uint64_t bit = src.find_next_set(0);
    while (bit < src.size()) {
        const std::uint64_t end_bit = src.find_next_clear(bit);
        set_bits(bit * src_granularity, (end_bit - bit) * src_granularity);
        if (end_bit >= src.size()) break;
        bit = src.find_next_set(end_bit);
    }
    changed();
}

void DirtyBitmap::merge(const DirtyBitmap& src) {
    FLEECE_ASSERT(src.disk_size_ == disk_size_);
    merge_bits(src.bits_, src.granularity_);
}

std::optional<DirtyExtent> DirtyBitmap::next_dirty(std::uint64_t offset, std::uint64_t end) const {
    end = std::min(end, disk_size_);
    if (offset >= end) return std::nullopt;
    const std::uint64_t end_bit = div_round_up(end, granularity_);
    const std::uint64_t bit = bits_.find_next_set(offset / granularity_, end_bit);
    if (bit >= end_bit) return std::nullopt;
    const std::uint64_t start = std::max(offset, bit * granularity_);
    if (start >= end) return std::nullopt;
    const std::uint64_t stop = std::min(end, bits_.find_next_clear(bit, end_bit) * granularity_);
    return DirtyExtent{start, stop - start};
}

std::optional<DirtyExtent> DirtyBitmap::next_clean(std::uint64_t offset, std::uint64_t end) const {
    end = std::min(end, disk_size_);
    if (offset >= end) return std::nullopt;
    const std::uint64_t end_bit = div_round_up(end, granularity_);
    const std::uint64_t bit = bits_.find_next_clear(offset / granularity_, end_bit);
    if (bit >= end_bit) return std::nullopt;
    const std::uint64_t start = std::max(offset, bit * granularity_);
    if (start >= end) return std::nullopt;
    const std::uint64_t stop = std::min(end, bits_.find_next_set(bit, end_bit) * granularity_);
    return DirtyExtent{start, stop - start};
}

void DirtyBitmap::create_successor() {
    FLEECE_ASSERT(!busy());
    successor_ = std::make_unique<DirtyBitmap>(name_, disk_size_, granularity_);
    successor_->enabled_ = enabled_;
    enabled_ = false;
    changed();
}

void DirtyBitmap::abdicate() {
    FLEECE_ASSERT(successor_);
    bits_ = std::move(successor_->bits_);
    enabled_ = successor_->enabled_;
    successor_.reset();
    changed();
}

void DirtyBitmap::reclaim() {
    FLEECE_ASSERT(successor_);
    bits_.merge(successor_->bits_);
    enabled_ = successor_->enabled_;
    successor_.reset();
    changed();
}

Status check_bitmap(const DirtyBitmap& bitmap, unsigned checks) {
    if ((checks & bitmap_check_busy) && bitmap.busy())
        return make_error(
            fmt::format("Bitmap '{}' is currently in use by another operation and cannot be used",
                        bitmap.name()));
    if ((checks & bitmap_check_readonly) && bitmap.readonly())
        return make_error(
            fmt::format("Bitmap '{}' is readonly and cannot be modified", bitmap.name()));
    if ((checks & bitmap_check_inconsistent) && bitmap.inconsistent())
        return make_error(fmt::format(
            "Bitmap '{}' is inconsistent and cannot be used: it may miss changes made before an "
            "unclean shutdown; remove it (block-dirty-bitmap-remove) and take a full backup",
            bitmap.name()));
    return {};
}

Status merge_check(const DirtyBitmap& dst, const DirtyBitmap& src) {
    if (dst.disk_size() != src.disk_size())
        return make_error(fmt::format("Bitmaps are of different sizes (destination size is {}, "
                                      "source size is {}) and can't be merged",
                                      dst.disk_size(), src.disk_size()));
    return {};
}

// ---- DirtyBitmaps -----------------------------------------------------------------------

DirtyBitmap* DirtyBitmaps::find(std::string_view name) const {
    for (const auto& b : list_)
        if (b->name() == name) return b.get();
    return nullptr;
}

Result<DirtyBitmap*> DirtyBitmaps::add(std::string name, std::uint64_t disk_size,
                                       std::uint64_t granularity) {
    if (name.empty()) return make_error("Bitmap name cannot be empty");
    if (name.size() > max_bitmap_name_length) return make_error("Bitmap name too long: " + name);
    if (Status st = check_granularity(granularity); !st) return st.error();
    if (find(name)) return make_error("Bitmap already exists: " + name);
    list_.insert(list_.begin(),
                 std::make_unique<DirtyBitmap>(std::move(name), disk_size, granularity));
    list_.front()->owner_ = this;
    notify_changed();
    return list_.front().get();
}

void DirtyBitmaps::remove(const DirtyBitmap* bitmap) {
    std::erase_if(list_, [&](const auto& b) { return b.get() == bitmap; });
    notify_changed();
}

void DirtyBitmaps::record(std::uint64_t offset, std::uint64_t length) {
    for (const auto& b : list_)
        b->record(offset, length);
}

} // namespace fleece::block
