// The qcow2 bitmaps extension codec (see qcow2_bitmaps.hpp).
#include "nodes/qcow2/qcow2_bitmaps.hpp"

#include "util/align.hpp"

#include <cstring>
#include <fmt/format.h>
#include <optional>
#include <set>

namespace fleece::nodes::qcow2 {
namespace {

Error bad(std::string what) {
    return make_error("qcow2: " + std::move(what));
}

} // namespace

std::vector<std::byte> serialize_bitmaps_ext(std::uint32_t nb, std::uint64_t dir_size,
                                             std::uint64_t dir_offset) {
    std::vector<std::byte> out(24);
    store_be32(out.data(), nb);
    store_be64(out.data() + 8, dir_size);
    store_be64(out.data() + 16, dir_offset);
    return out;
}

std::uint64_t bitmap_bit_count(std::uint64_t disk_size, std::uint32_t granularity_bits) {
    if (granularity_bits >= 64) return disk_size ? 1 : 0;
    const std::uint64_t g = 1ull << granularity_bits;
    return disk_size / g + (disk_size % g ? 1 : 0);
}

std::uint64_t bitmap_table_entries(std::uint64_t disk_size, std::uint32_t granularity_bits,
                                   std::uint32_t cluster_bits) {
    const std::uint64_t bits_per_cluster = (1ull << cluster_bits) * 8;
    const std::uint64_t bits = bitmap_bit_count(disk_size, granularity_bits);
    return bits / bits_per_cluster + (bits % bits_per_cluster ? 1 : 0);
}

namespace {

// What a strict reader refuses in an entry whose layout is readable (entry `i`; `names`
// collects the names seen so far). The checks run in this order, so the message names
// the first problem.
std::optional<Error> check_entry(std::uint32_t i, const BitmapDirectoryEntry& b,
                                 std::set<std::string>& names, const DirectoryLimits& limits) {
    const std::uint64_t cs = 1ull << limits.cluster_bits;
    const std::string who = fmt::format("bitmap {} '{}'", i, b.name);
    if (b.name.empty()) return bad(fmt::format("bitmap {} has an empty name", i));
    if (b.name.size() > max_bitmap_name_bytes)
        return bad(fmt::format("{}: name is longer than {} bytes", who, max_bitmap_name_bytes));
    if (!names.insert(b.name).second) return bad(fmt::format("{}: duplicate name", who));
    if (b.flags & ~bitmap_flags_known)
        return bad(
            fmt::format("{}: reserved flags {:#x} are set", who, b.flags & ~bitmap_flags_known));
    if (b.type != bitmap_type_dirty_tracking)
        return bad(fmt::format("{}: unknown type {}", who, b.type));
    if (b.granularity_bits < min_bitmap_granularity_bits ||
        b.granularity_bits > max_bitmap_granularity_bits)
        return bad(fmt::format("{}: granularity_bits {} out of range ({}..{})", who,
                               b.granularity_bits, min_bitmap_granularity_bits,
                               max_bitmap_granularity_bits));
    if (!b.extra_data.empty() && !(b.flags & bitmap_flag_extra_data_compatible))
        return bad(fmt::format("{}: unknown extra data ({} bytes)", who, b.extra_data.size()));
    const std::uint64_t want =
        bitmap_table_entries(limits.disk_size, b.granularity_bits, limits.cluster_bits);
    if (b.table_size != want)
        return bad(fmt::format("{}: bitmap table has {} entries, the disk size needs {}", who,
                               b.table_size, want));
    if (b.table_size > max_bitmap_table_entries)
        return bad(fmt::format("{}: bitmap table is too large", who));
    if (b.table_offset & (cs - 1) || (b.table_offset == 0 && b.table_size != 0))
        return bad(fmt::format("{}: bitmap table offset {:#x} is not aligned to the cluster "
                               "size or is 0",
                               who, b.table_offset));
    const std::uint64_t table_bytes = std::uint64_t(b.table_size) * 8;
    if (b.table_offset > limits.file_size || table_bytes > limits.file_size - b.table_offset)
        return bad(fmt::format("{}: bitmap table (offset {:#x}, {} bytes) extends past the "
                               "end of the file",
                               who, b.table_offset, table_bytes));
    return std::nullopt;
}

} // namespace

Result<std::vector<QBitmap>> parse_bitmap_dir(std::span<const std::byte> dir, std::uint32_t nb,
                                              const DirectoryLimits& limits) {
    if (nb == 0) return bad("bitmaps extension with 0 bitmaps");
    if (nb > max_bitmaps)
        return bad(fmt::format("too many bitmaps ({}, at most {})", nb, max_bitmaps));
    if (dir.size() > max_bitmap_directory_bytes)
        return bad(fmt::format("bitmap directory is too large ({} bytes)", dir.size()));
    BitmapDirectoryLayout layout = decode_bitmap_directory(dir, nb);
    std::vector<QBitmap> out;
    std::set<std::string> names;
    // In directory order: an entry's values are judged before a layout problem after it.
    for (std::uint32_t i = 0; i < layout.entries.size(); ++i) {
        if (auto e = check_entry(i, layout.entries[i], names, limits)) return *e;
        if (i + 1 == layout.entries.size() && layout.last_padding_past_end)
            return bad(fmt::format("bitmap directory entry {} is truncated", i));
        out.emplace_back(std::move(layout.entries[i]));
    }
    const std::size_t next = layout.entries.size();
    switch (layout.truncation) {
    case BitmapEntryTruncation::fixed_part:
        return bad(fmt::format("bitmap directory entry {} is truncated (directory of {} bytes "
                               "holds fewer than {} entries)",
                               next, dir.size(), nb));
    case BitmapEntryTruncation::variable_part:
        return bad(fmt::format("bitmap directory entry {} is truncated", next));
    case BitmapEntryTruncation::none:
        break;
    }
    if (layout.end != dir.size())
        return bad(fmt::format("bitmap directory size {} does not match its {} entries ({} bytes)",
                               dir.size(), nb, layout.end));
    return out;
}

std::vector<std::byte> serialize_bitmap_dir(const std::vector<QBitmap>& bitmaps) {
    std::vector<std::byte> out;
    for (const QBitmap& b : bitmaps) {
        const std::size_t at = out.size();
        const std::uint64_t len = bitmap_entry_fixed_bytes + b.extra_data.size() + b.name.size();
        out.resize(at + align_up(len, 8), std::byte{0});
        std::byte* q = out.data() + at;
        store_be64(q, b.table_offset);
        store_be32(q + 8, b.table_size);
        store_be32(q + 12, b.flags);
        q[16] = std::byte{b.type};
        q[17] = std::byte{b.granularity_bits};
        store_be16(q + 18, static_cast<std::uint16_t>(b.name.size()));
        store_be32(q + 20, static_cast<std::uint32_t>(b.extra_data.size()));
        if (!b.extra_data.empty())
            std::memcpy(q + bitmap_entry_fixed_bytes, b.extra_data.data(), b.extra_data.size());
        std::memcpy(q + bitmap_entry_fixed_bytes + b.extra_data.size(), b.name.data(),
                    b.name.size());
    }
    return out;
}

Result<std::vector<std::uint64_t>> parse_bitmap_table(std::span<const std::byte> raw,
                                                      std::uint32_t cluster_bits,
                                                      std::uint64_t file_size) {
    const std::uint64_t cs = 1ull << cluster_bits;
    std::vector<std::uint64_t> t(raw.size() / 8);
    for (std::size_t i = 0; i < t.size(); ++i) {
        const std::uint64_t e = load_be64(raw.data() + 8 * i);
        if (e & bitmap_table_reserved_mask)
            return bad(fmt::format("bitmap table entry {} has reserved bits set", i));
        const std::uint64_t off = e & offset_mask;
        if (off == 0 && e > bitmap_table_all_ones)
            return bad(fmt::format("bitmap table entry {} is invalid", i));
        if (off != 0 && ((off & (cs - 1)) || off > file_size || cs > file_size - off))
            return bad(fmt::format("bitmap data cluster {:#x} (table entry {}) is unaligned or "
                                   "past the end of the file",
                                   off, i));
        if (off != 0 && (e & bitmap_table_all_ones))
            return bad(fmt::format("bitmap table entry {} has reserved bits set", i));
        t[i] = e;
    }
    return t;
}

std::vector<std::byte> serialize_bitmap_table(const std::vector<std::uint64_t>& table) {
    std::vector<std::byte> out(table.size() * 8);
    for (std::size_t i = 0; i < table.size(); ++i)
        store_be64(out.data() + 8 * i, table[i]);
    return out;
}

// Words are stored little-endian, so byte k of the data holds bits 8k..8k+7, lowest first.
void load_bitmap_cluster(std::vector<std::uint64_t>& words, std::uint64_t index,
                         std::span<const std::byte> cluster) {
    const std::uint64_t per = cluster.size() / 8;
    for (std::uint64_t w = 0; w < per; ++w) {
        const std::uint64_t at = index * per + w;
        if (at >= words.size()) return;
        words[at] = load_le64(cluster.data() + 8 * w);
    }
}

void store_bitmap_cluster(const std::vector<std::uint64_t>& words, std::uint64_t index,
                          std::span<std::byte> cluster) {
    const std::uint64_t per = cluster.size() / 8;
    for (std::uint64_t w = 0; w < per; ++w) {
        const std::uint64_t at = index * per + w;
        store_le64(cluster.data() + 8 * w, at < words.size() ? words[at] : 0);
    }
}

bool bitmap_cluster_dirty(const std::vector<std::uint64_t>& words, std::uint64_t index,
                          std::uint64_t cluster_size) {
    const std::uint64_t per = cluster_size / 8;
    for (std::uint64_t at = index * per; at < (index + 1) * per && at < words.size(); ++at)
        if (words[at]) return true;
    return false;
}

} // namespace fleece::nodes::qcow2
