#pragma once
// The qcow2 on-disk format (docs/interop/qcow2.txt in QEMU), without any I/O: header and
// header extensions (parse, validate, serialise), L1/L2 entry decoding, refcount entries
// of every width. Everything here works on byte buffers so it can be unit-tested and
// fuzzed; the node and the offline tools do the reading and writing.

#include "util/endian.hpp" // qcow2 is big-endian; the node and tools use these too
#include "util/result.hpp"

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace fleece::nodes::qcow2 {

inline constexpr std::uint32_t magic = 0x514649fb; // "QFI\xfb"
inline constexpr std::uint32_t v2_header_length = 72;
inline constexpr std::uint32_t v3_header_length = 112; // with compression_type + padding
inline constexpr std::uint32_t min_cluster_bits = 9;
inline constexpr std::uint32_t max_cluster_bits = 21;
inline constexpr std::uint32_t max_backing_name = 1023;
// Sanity limits (the same orders of magnitude QEMU enforces).
inline constexpr std::uint64_t max_l1_bytes = 32u << 20;
inline constexpr std::uint64_t max_refcount_table_bytes = 8u << 20;
inline constexpr std::uint64_t max_virtual_size = 1ull << 55;

// Header extension types.
inline constexpr std::uint32_t ext_end = 0;
inline constexpr std::uint32_t ext_backing_format = 0xe2792aca;
inline constexpr std::uint32_t ext_feature_table = 0x6803f857;
inline constexpr std::uint32_t ext_bitmaps = 0x23852875;
inline constexpr std::uint32_t ext_crypto = 0x0537be77;
inline constexpr std::uint32_t ext_data_file = 0x44415441;

// Feature bits.
inline constexpr std::uint64_t incompat_dirty = 1ull << 0;
inline constexpr std::uint64_t incompat_corrupt = 1ull << 1;
inline constexpr std::uint64_t incompat_data_file = 1ull << 2;
inline constexpr std::uint64_t incompat_compression = 1ull << 3;
inline constexpr std::uint64_t incompat_extended_l2 = 1ull << 4;
inline constexpr std::uint64_t incompat_known = 0x1f;
inline constexpr std::uint64_t compat_lazy_refcounts = 1ull << 0;
inline constexpr std::uint64_t autoclear_bitmaps = 1ull << 0;

inline constexpr std::uint8_t compression_zlib = 0;
inline constexpr std::uint8_t compression_zstd = 1;

// L1/L2 entry bits.
inline constexpr std::uint64_t entry_copied = 1ull << 63;
inline constexpr std::uint64_t entry_compressed = 1ull << 62;
inline constexpr std::uint64_t entry_zero = 1ull << 0;
inline constexpr std::uint64_t offset_mask = 0x00fffffffffffe00ull; // bits 9..55
inline constexpr std::uint64_t l1_reserved_mask = 0x7f000000000001ffull;
inline constexpr std::uint64_t l2_standard_reserved_mask = 0x3f000000000001feull;
inline constexpr std::uint64_t refcount_table_reserved_mask = 0x1ffull;

struct HeaderExtension {
    std::uint32_t type = 0;
    std::vector<std::byte> data;
};

struct Header {
    std::uint32_t version = 3;
    std::uint64_t backing_file_offset = 0;
    std::uint32_t backing_file_size = 0;
    std::uint32_t cluster_bits = 16;
    std::uint64_t size = 0;
    std::uint32_t crypt_method = 0;
    std::uint32_t l1_size = 0;
    std::uint64_t l1_table_offset = 0;
    std::uint64_t refcount_table_offset = 0;
    std::uint32_t refcount_table_clusters = 0;
    std::uint32_t nb_snapshots = 0;
    std::uint64_t snapshots_offset = 0;
    std::uint64_t incompatible_features = 0;
    std::uint64_t compatible_features = 0;
    std::uint64_t autoclear_features = 0;
    std::uint32_t refcount_order = 4;
    std::uint32_t header_length = v3_header_length;
    std::uint8_t compression_type = compression_zlib;

    std::string backing_file;
    std::string backing_format;
    // Every other extension (feature name table, bitmaps, unknown ones), kept verbatim in
    // their original order so that rewriting the header preserves them.
    std::vector<HeaderExtension> extensions;

    std::uint64_t cluster_size() const { return 1ull << cluster_bits; }
    std::uint32_t refcount_bits() const { return 1u << refcount_order; }
    std::uint64_t l2_entries() const { return cluster_size() / l2_entry_bytes(); }
    std::uint64_t l2_entry_bytes() const { return extended_l2() ? 16 : 8; }
    std::uint64_t refblock_entries() const { return cluster_size() * 8 / refcount_bits(); }
    bool extended_l2() const { return incompatible_features & incompat_extended_l2; }
    bool dirty() const { return incompatible_features & incompat_dirty; }
    bool corrupt() const { return incompatible_features & incompat_corrupt; }
    const HeaderExtension* find_extension(std::uint32_t type) const;
};

// Entries of the L1 table needed to map `size` bytes with this cluster size.
std::uint64_t l1_entries_for(std::uint64_t size, std::uint32_t cluster_bits,
                             bool extended_l2 = false);

// Parses and validates the header from the start of the image. `first_cluster` is the
// file's first bytes (at least the header; the whole first cluster when available);
// `file_size` is used to refuse tables that point past the end of the file. Errors name
// the problem ("qcow2: L1 table (offset 0x..) extends past the end of the file").
Result<Header> parse_header(std::span<const std::byte> first_cluster, std::uint64_t file_size);

// Serialises the header, its extensions and the backing file name into one buffer (to be
// written at offset 0; it must fit in the first cluster). Version 3 only. Sets
// backing_file_offset/backing_file_size in the output to where the name lands.
Result<std::vector<std::byte>> serialize_header(const Header& h);

// A feature name table describing every feature bit QEMU 7.2 knows (what qemu-img writes).
HeaderExtension default_feature_table();

// Bitmaps extension content (fields only; the directory itself lives in clusters).
struct BitmapsExtension {
    std::uint32_t nb_bitmaps = 0;
    std::uint64_t directory_size = 0;
    std::uint64_t directory_offset = 0;
};
Result<BitmapsExtension> parse_bitmaps_extension(const HeaderExtension& ext);

// Bitmap directory layout (qcow2.txt "Bitmap directory"): entries of 24 fixed bytes, then
// extra data, then the name, each entry padded to a multiple of 8 bytes. This is the one
// place that decodes it; values are kept as stored and not judged, so that `img info` and
// `img check` can show what the strict reader (qcow2_bitmaps.hpp) refuses.
inline constexpr std::size_t bitmap_entry_fixed_bytes = 24;

struct BitmapDirectoryEntry {
    std::uint64_t table_offset = 0;
    std::uint32_t table_size = 0; // entries
    std::uint32_t flags = 0;
    std::uint8_t type = 0;
    std::uint8_t granularity_bits = 0;
    std::string name;
    std::vector<std::byte> extra_data;

    bool operator==(const BitmapDirectoryEntry&) const = default;
};

// Why decoding stopped before the expected number of entries: the next entry's fixed
// part, or its extra data and name, do not fit in the directory.
enum class BitmapEntryTruncation { none, fixed_part, variable_part };

struct BitmapDirectoryLayout {
    std::vector<BitmapDirectoryEntry> entries; // the readable ones, in directory order
    // Entry number entries.size() is unreadable for this reason (none: all were read).
    BitmapEntryTruncation truncation = BitmapEntryTruncation::none;
    // The last entry read fits, but its padding to 8 bytes runs past the end of the
    // directory (so no further entry can follow).
    bool last_padding_past_end = false;
    // Where the entries read end, padding included (past dir.size() only together with
    // last_padding_past_end).
    std::uint64_t end = 0;
};

// Decodes up to `nb_bitmaps` entries; never fails, says where and why it stopped.
BitmapDirectoryLayout decode_bitmap_directory(std::span<const std::byte> dir,
                                              std::uint32_t nb_bitmaps);

// The lenient reading of the offline tools: the layout, or an error when an entry is
// unreadable. A last entry whose padding is cut short is accepted.
Result<std::vector<BitmapDirectoryEntry>> parse_bitmap_directory(std::span<const std::byte> dir,
                                                                 std::uint32_t nb_bitmaps);

struct SnapshotEntry {
    std::uint64_t l1_table_offset = 0;
    std::uint32_t l1_size = 0;
    std::string id, name;
};
// Parses nb snapshot table entries; `consumed` receives the table's byte length.
Result<std::vector<SnapshotEntry>> parse_snapshot_table(std::span<const std::byte> table,
                                                        std::uint32_t nb, std::uint64_t* consumed);

// L2 entry decoding (standard 64-bit entries).
enum class ClusterKind { unallocated, zero_plain, zero_allocated, normal, compressed };
struct L2Entry {
    ClusterKind kind = ClusterKind::unallocated;
    std::uint64_t host_offset = 0; // normal/zero_allocated: cluster offset; compressed: byte offset
    std::uint64_t compressed_size = 0; // compressed: bytes to read from host_offset
    bool copied = false;
    bool reserved_bits = false; // set bits that must be zero (a corruption)
    bool misaligned = false;    // host offset not cluster aligned (a corruption)
};
L2Entry decode_l2(std::uint64_t raw, std::uint32_t cluster_bits, std::uint32_t version);
// Raw compressed descriptor for data of `compressed_bytes` at byte `host_offset`.
std::uint64_t encode_compressed_l2(std::uint64_t host_offset, std::uint64_t compressed_bytes,
                                   std::uint32_t cluster_bits);
// Host clusters [first, last] touched by a compressed entry.
inline std::uint64_t compressed_first_cluster(const L2Entry& e, std::uint32_t cb) {
    return e.host_offset >> cb;
}
inline std::uint64_t compressed_last_cluster(const L2Entry& e, std::uint32_t cb) {
    return (e.host_offset + e.compressed_size - 1) >> cb;
}

// Refcount entries of width 2^order bits in a refcount block buffer.
std::uint64_t get_refcount(std::span<const std::byte> block, std::uint64_t index,
                           std::uint32_t order);
void set_refcount(std::span<std::byte> block, std::uint64_t index, std::uint32_t order,
                  std::uint64_t value);
inline std::uint64_t max_refcount(std::uint32_t order) {
    return order == 6 ? ~0ull : (1ull << (1u << order)) - 1;
}

} // namespace fleece::nodes::qcow2
