#pragma once
// SnapshotSource: a node that can serve a point-in-time view of its data next to its live
// view (the copy-before-write filter). snapshot-access reads through this interface instead
// of through a Child, so it needs no permissions on the node.

#include "block/types.hpp"
#include "io/task.hpp"

#include <cstdint>
#include <span>
#include <system_error>

namespace fleece::block {

class SnapshotSource {
  public:
    virtual ~SnapshotSource() = default;
    // EACCES outside the readable area or after the snapshot broke.
    virtual io::Task<std::error_code> snapshot_read(std::uint64_t offset,
                                                    std::span<std::byte> buf) = 0;
    virtual io::Task<BlockStatus> snapshot_block_status(std::uint64_t offset,
                                                        std::uint64_t length) = 0;
    // Drops whole clusters inside the range from the snapshot (they become unreadable).
    virtual io::Task<std::error_code> snapshot_discard(std::uint64_t offset,
                                                       std::uint64_t length) = 0;
};

} // namespace fleece::block
