#pragma once
// The qcow2 bitmaps extension (persistent dirty bitmaps, QEMU's docs/interop/qcow2.txt,
// "Bitmaps extension"), without I/O: the extension's fields, the bitmap directory, bitmap
// tables and the bit layout of data clusters. Pure functions on byte buffers so they can
// be unit-tested and fuzzed; the node (qcow2_bitmap_store.cpp) does the reading/writing.
//
// On disk: header extension 0x23852875 {nb_bitmaps, directory size and offset}; the
// directory is a run of clusters with one entry per bitmap (table offset and size, flags
// in_use/auto/extra_data_compatible, type 1, granularity_bits, name); each bitmap table
// has one 64-bit entry per data cluster (offset, or 0 = all zeroes, 1 = all ones); bit j
// of byte k of the bitmap data covers guest bytes [(8k+j)*g, (8k+j+1)*g).

#include "nodes/qcow2/qcow2_format.hpp"
#include "util/result.hpp"

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace fleece::nodes::qcow2 {

inline constexpr std::uint32_t bitmap_flag_in_use = 1u << 0;
inline constexpr std::uint32_t bitmap_flag_auto = 1u << 1;
inline constexpr std::uint32_t bitmap_flag_extra_data_compatible = 1u << 2;
inline constexpr std::uint32_t bitmap_flags_known = 7;
inline constexpr std::uint8_t bitmap_type_dirty_tracking = 1;
inline constexpr std::uint32_t max_bitmaps = 65535;
inline constexpr std::uint64_t max_bitmap_directory_bytes = 64u << 20;
inline constexpr std::uint32_t min_bitmap_granularity_bits = 9;
inline constexpr std::uint32_t max_bitmap_granularity_bits = 31;
inline constexpr std::size_t max_bitmap_name_bytes = 1023;
inline constexpr std::uint64_t max_bitmap_table_entries = 0x8000000;
inline constexpr std::uint64_t bitmap_table_all_ones = 1;
inline constexpr std::uint64_t bitmap_table_reserved_mask = 0xff000000000001feull;

// A directory entry the strict reader accepted, or one the node is about to write (a new
// one is a dirty-tracking bitmap of 64 KiB granularity). Extra data is kept verbatim.
struct QBitmap : BitmapDirectoryEntry {
    QBitmap() {
        type = bitmap_type_dirty_tracking;
        granularity_bits = 16;
    }
    explicit QBitmap(BitmapDirectoryEntry decoded) : BitmapDirectoryEntry(std::move(decoded)) {}

    bool in_use() const { return flags & bitmap_flag_in_use; }
    bool auto_enabled() const { return flags & bitmap_flag_auto; }
    std::uint64_t granularity() const { return 1ull << granularity_bits; }
};

// The extension's 24 bytes.
std::vector<std::byte> serialize_bitmaps_ext(std::uint32_t nb, std::uint64_t dir_size,
                                             std::uint64_t dir_offset);

// Bits of a bitmap of `disk_size` bytes at this granularity; data clusters for it (the
// table's size).
std::uint64_t bitmap_bit_count(std::uint64_t disk_size, std::uint32_t granularity_bits);
std::uint64_t bitmap_table_entries(std::uint64_t disk_size, std::uint32_t granularity_bits,
                                   std::uint32_t cluster_bits);

struct DirectoryLimits {
    std::uint32_t cluster_bits = 16;
    std::uint64_t disk_size = 0;
    std::uint64_t file_size = 0; // tables must lie inside the file
};

// Parses and validates a whole directory of `nb` entries: the layout as decoded by
// decode_bitmap_directory (qcow2_format.hpp), then what the values mean. Errors name the
// problem and the bitmap ("qcow2: bitmap 'b0': granularity_bits 40 out of range (9..31)").
// The directory must be exactly `dir.size()` bytes long (entries padded to 8 bytes).
Result<std::vector<QBitmap>> parse_bitmap_dir(std::span<const std::byte> dir, std::uint32_t nb,
                                              const DirectoryLimits& limits);
std::vector<std::byte> serialize_bitmap_dir(const std::vector<QBitmap>& bitmaps);

// A bitmap table (big-endian entries) of `entries` entries; errors for reserved bits,
// unaligned offsets and clusters past the end of the file.
Result<std::vector<std::uint64_t>> parse_bitmap_table(std::span<const std::byte> raw,
                                                      std::uint32_t cluster_bits,
                                                      std::uint64_t file_size);
std::vector<std::byte> serialize_bitmap_table(const std::vector<std::uint64_t>& table);

// Data cluster `index` of a bitmap <-> the in-memory words (Bitmap::words(): bit i of the
// bitmap is bit i%64 of word i/64). `cluster` is one whole cluster; words past the end of
// `words` read as zero and are not stored.
void load_bitmap_cluster(std::vector<std::uint64_t>& words, std::uint64_t index,
                         std::span<const std::byte> cluster);
void store_bitmap_cluster(const std::vector<std::uint64_t>& words, std::uint64_t index,
                          std::span<std::byte> cluster);
// Whether data cluster `index` has any bit set (else the table entry is 0).
bool bitmap_cluster_dirty(const std::vector<std::uint64_t>& words, std::uint64_t index,
                          std::uint64_t cluster_size);

} // namespace fleece::nodes::qcow2
