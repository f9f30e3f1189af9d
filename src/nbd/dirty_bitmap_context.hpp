#pragma once
// The qemu:dirty-bitmap:NAME meta context: block status from a dirty bitmap (bit 0 = dirty,
// NBD's "qemu:dirty-bitmap" encoding), for exports created with `bitmaps: [NAME, ...]`.
// Pull-mode incremental backup clients (nbdinfo --map=qemu:dirty-bitmap:NAME, qemu-img map
// with x-dirty-bitmap) read which clusters changed through it.
//
// An exported bitmap is busy (no user changes) until the export goes away. It is looked up
// on the exported node, then down through filters and backing links (same size, same
// offsets), as QEMU does.

#include "block/dirty_bitmap.hpp"
#include "block/node.hpp"
#include "nbd/meta_context.hpp"
#include "util/result.hpp"

#include <memory>
#include <string>
#include <vector>

namespace fleece::nbd {

inline constexpr const char* meta_dirty_bitmap_prefix = "qemu:dirty-bitmap:";
inline constexpr std::uint32_t state_dirty = 0x1;

// Finds, checks and marks busy every named bitmap; all or nothing.
Result<std::vector<block::DirtyBitmap*>>
claim_export_bitmaps(block::Node& node, const std::vector<std::string>& names, bool writable);
void release_export_bitmaps(const std::vector<block::DirtyBitmap*>& bitmaps);

std::shared_ptr<MetaContext> make_dirty_bitmap_context(const block::DirtyBitmap* bitmap);

} // namespace fleece::nbd
