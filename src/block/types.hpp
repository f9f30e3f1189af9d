#pragma once
// Request flags, capabilities, limits and block status shared by every node.

#include <cstdint>
#include <system_error>

namespace fleece::block {

// Per-request flags (a bit set).
using ReqFlags = std::uint32_t;
inline constexpr ReqFlags req_fua = 0x1;             // durable before completion
inline constexpr ReqFlags req_may_unmap = 0x2;       // write-zeroes may punch a hole
inline constexpr ReqFlags req_no_fallback = 0x4;     // write-zeroes must be fast (NBD FAST_ZERO)
inline constexpr ReqFlags req_write_unchanged = 0x8; // content stays the same (CBW into fleecing)

// Store the data compressed (backup `compress`); only for nodes with compressed_write.
inline constexpr ReqFlags req_write_compressed = 0x10;

struct Caps {
    bool write = true; // the node can be written at all
    bool flush = true;
    bool fua = false;          // native FUA (otherwise emulated by a flush)
    bool trim = false;         // discard does something
    bool zero = false;         // efficient write-zeroes
    bool fast_zero = false;    // write-zeroes that is guaranteed fast
    bool block_status = false; // reports holes / zeroes

    // Accepts req_write_compressed on whole clusters.
    bool compressed_write = false;
};

struct Limits {
    std::uint32_t request_alignment = 1; // offsets and lengths must be multiples of this
    std::uint32_t preferred_alignment = 4096;
    std::uint32_t max_transfer = 32u << 20; // largest read/write per request
    std::uint32_t cluster_size = 0;         // allocation unit, 0 = unknown
};

// Status of the prefix [offset, offset + length) of a queried range.
inline constexpr std::uint32_t status_data = 0x1;      // holds data (not a hole)
inline constexpr std::uint32_t status_zero = 0x2;      // reads as zeroes
inline constexpr std::uint32_t status_allocated = 0x4; // allocated in this node, not below
struct BlockStatus {
    std::error_code error;
    std::uint64_t length = 0;
    std::uint32_t flags = status_data | status_allocated;
    std::uint32_t depth = 1; // 1 = this node, 2 = its backing, ... 0 = unallocated everywhere
    // Where the range's data lives in the file of the image at `depth` (what `img map`
    // shows as "offset"), when the format driver knows it; formats fill it in.
    static constexpr std::uint64_t no_offset = UINT64_MAX;
    std::uint64_t offset = no_offset;
};

inline std::error_code errno_code(int e) {
    return {e, std::generic_category()};
}

} // namespace fleece::block
