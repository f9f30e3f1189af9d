#pragma once
// Offline qcow2 tools for `fleece img`: synchronous (plain pread/pwrite, no event loop),
// so the CLI can call them directly. The on-disk format itself is in qcow2_format.hpp.

#include "util/result.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace fleece::nodes::qcow2 {

struct CreateOptions {
    std::uint64_t size = 0;
    std::uint32_t cluster_size = 65536;
    std::string backing_file;
    std::string backing_format;
    bool preallocate_metadata = false;
};

// Creates (or truncates) `path` as an empty version 3 image with 16-bit refcounts, laid
// out like `qemu-img create -f qcow2`: header, refcount table, refcount block, L1 table.
Status create_image(const std::string& path, const CreateOptions& options);

enum class Repair { none, leaks, all };

struct CheckResult {
    std::uint64_t corruptions = 0, leaks = 0, corruptions_fixed = 0, leaks_fixed = 0,
                  check_errors = 0, image_end_offset = 0, total_clusters = 0,
                  allocated_clusters = 0, fragmented_clusters = 0, compressed_clusters = 0;
    std::vector<std::string> messages; // one line per finding, qemu-img check style
};

// Rebuilds the reference counts from the metadata (header, L1/L2 tables, refcount
// structures, snapshot table, bitmaps) and compares them with the stored ones. A failure
// to read the image at all is an Error; problems found inside are counted in the result.
Result<CheckResult> check_image(const std::string& path, Repair repair);

struct ImageInfo {
    std::uint32_t version = 0;
    std::uint32_t cluster_size = 0;
    std::uint64_t virtual_size = 0;
    std::string backing_file, backing_format;
    std::uint32_t refcount_bits = 0;
    bool corrupt = false, dirty = false, lazy_refcounts = false, extended_l2 = false;
    std::string compression_type; // zlib | zstd
    std::vector<std::string> bitmap_names;
    struct Bitmap {
        std::string name;
        std::uint64_t granularity = 0;
        bool in_use = false, auto_enabled = false;
    };
    // Persistent bitmaps in directory order (none when the autoclear bit says they are stale).
    std::vector<Bitmap> bitmaps;
};

Result<ImageInfo> read_image_info(const std::string& path);

} // namespace fleece::nodes::qcow2
