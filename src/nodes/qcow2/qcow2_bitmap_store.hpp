#pragma once
// Persistent dirty bitmaps of an open qcow2 image (QEMU's bitmaps extension, the
// clean-shutdown contract of docs/adr/0002-crash-safe-change-tracking.md):
//
// - open_bitmaps() (at open, before the node exists, so before any guest write): reads
//   the directory, tables and data; on a writable open marks every bitmap in_use in place
//   and flushes. A bitmap already in_use was not stored cleanly (crash, kill -9): it loads
//   as inconsistent. An extension without the autoclear bit was left by a program that did
//   not maintain it: its bitmaps are ignored (and dropped on a writable open, as QEMU does;
//   their clusters leak, which `check -r leaks` repairs).
// - Qcow2Node::store_bitmaps() (clean close): writes every persistent bitmap's data and
//   table into new clusters, the new directory, commits the refcounts, then switches the
//   header to the new directory and only after that frees the old clusters. So a durable
//   directory never names a cluster whose durable refcount is zero.

#include "block/node.hpp"
#include "io/task.hpp"
#include "nodes/qcow2/qcow2_bitmaps.hpp"

#include <vector>

namespace fleece::nodes::qcow2 {

struct StoredBitmap {
    QBitmap entry;                    // as on disk now (in_use after a writable open)
    std::vector<std::uint64_t> table; // its bitmap table as on disk
    std::vector<std::uint64_t> words; // the loaded bits (empty when in_use at open)
    bool was_in_use = false;          // in_use before this open: inconsistent
};

struct BitmapState {
    std::vector<StoredBitmap> bitmaps; // directory order
    std::uint64_t dir_offset = 0;
    std::uint64_t dir_size = 0;
    bool has_extension() const { return !bitmaps.empty(); }
};

// Loads the bitmaps of the image whose parsed header is `h` (header_bytes: its first
// cluster, updated when the header is rewritten). Also settles the autoclear bits of a
// writable open. Errors name the problem ("qcow2: bitmap 0 'b': ...").
io::Task<Result<BitmapState>> open_bitmaps(block::Node& file, Header& h,
                                           std::vector<std::byte>& header_bytes, bool read_only);

// The header serialised into a whole first cluster of `cluster_size` bytes.
Result<std::vector<std::byte>> header_cluster(const Header& h);

} // namespace fleece::nodes::qcow2
