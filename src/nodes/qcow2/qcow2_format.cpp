#include "nodes/qcow2/qcow2_format.hpp"

#include "util/align.hpp"

#include <algorithm>
#include <cstring>
#include <fmt/format.h>
#include <optional>

namespace fleece::nodes::qcow2 {

const HeaderExtension* Header::find_extension(std::uint32_t type) const {
    for (const auto& e : extensions)
        if (e.type == type) return &e;
    return nullptr;
}

std::uint64_t l1_entries_for(std::uint64_t size, std::uint32_t cluster_bits, bool extended_l2) {
    const std::uint64_t per_l2 = (1ull << cluster_bits) / (extended_l2 ? 16 : 8);
    const std::uint64_t bytes_per_l1 = per_l2 << cluster_bits;
    return (size + bytes_per_l1 - 1) / bytes_per_l1;
}

namespace {

Error bad(std::string what) {
    return make_error("qcow2: " + std::move(what));
}

bool is_cluster_aligned(std::uint64_t off, std::uint32_t cb) {
    return (off & ((1ull << cb) - 1)) == 0;
}

// A table of `bytes` at `offset` must be aligned and lie inside the file.
std::optional<Error> check_table(const char* name, std::uint64_t offset, std::uint64_t bytes,
                                 std::uint32_t cb, std::uint64_t file_size) {
    if (!is_cluster_aligned(offset, cb))
        return bad(fmt::format("{} offset {:#x} is not aligned to the cluster size", name, offset));
    if (offset == 0 && bytes != 0)
        return bad(fmt::format("{} is at offset 0, inside the header", name));
    if (offset > file_size || bytes > file_size - offset)
        return bad(fmt::format("{} (offset {:#x}, {} bytes) extends past the end of the file "
                               "({} bytes)",
                               name, offset, bytes, file_size));
    return std::nullopt;
}

} // namespace

Result<Header> parse_header(std::span<const std::byte> buf, std::uint64_t file_size) {
    Header h;
    if (buf.size() < v2_header_length) return bad("file too short for a qcow2 header");
    const std::byte* p = buf.data();
    if (load_be32(p) != magic) return bad("bad magic (not a qcow2 image)");
    h.version = load_be32(p + 4);
    if (h.version != 2 && h.version != 3)
        return bad(fmt::format("unsupported version {}", h.version));
    h.backing_file_offset = load_be64(p + 8);
    h.backing_file_size = load_be32(p + 16);
    h.cluster_bits = load_be32(p + 20);
    h.size = load_be64(p + 24);
    h.crypt_method = load_be32(p + 32);
    h.l1_size = load_be32(p + 36);
    h.l1_table_offset = load_be64(p + 40);
    h.refcount_table_offset = load_be64(p + 48);
    h.refcount_table_clusters = load_be32(p + 56);
    h.nb_snapshots = load_be32(p + 60);
    h.snapshots_offset = load_be64(p + 64);
    if (h.cluster_bits < min_cluster_bits || h.cluster_bits > max_cluster_bits)
        return bad(fmt::format("cluster_bits {} out of range (cluster size must be 512 B to "
                               "2 MiB)",
                               h.cluster_bits));
    const std::uint64_t cs = h.cluster_size();
    if (h.version == 2) {
        h.header_length = v2_header_length;
        h.refcount_order = 4;
    } else {
        if (buf.size() < 104) return bad("file too short for a version 3 header");
        h.incompatible_features = load_be64(p + 72);
        h.compatible_features = load_be64(p + 80);
        h.autoclear_features = load_be64(p + 88);
        h.refcount_order = load_be32(p + 96);
        h.header_length = load_be32(p + 100);
        if (h.header_length < 104)
            return bad(fmt::format("header_length {} is too small", h.header_length));
        if (h.header_length > cs || h.header_length > buf.size())
            return bad(fmt::format("header_length {} is larger than the cluster", h.header_length));
        if (h.header_length > 104) h.compression_type = std::to_integer<std::uint8_t>(p[104]);
    }
    if (h.incompatible_features & ~incompat_known)
        return bad(fmt::format("unsupported incompatible features {:#x}",
                               h.incompatible_features & ~incompat_known));
    if (h.incompatible_features & incompat_data_file)
        return bad("external data files are not supported");
    if (h.refcount_order > 6)
        return bad(fmt::format("refcount_order {} is out of range (0..6)", h.refcount_order));
    if (h.crypt_method != 0)
        return bad(
            fmt::format("encrypted images are not supported (crypt_method {})", h.crypt_method));
    if (h.compression_type > compression_zstd)
        return bad(fmt::format("unknown compression type {}", h.compression_type));
    if (h.compression_type != compression_zlib && !(h.incompatible_features & incompat_compression))
        return bad("compression type is set but the compression incompatible bit is not");
    if (h.size > max_virtual_size) return bad(fmt::format("virtual size {} is too large", h.size));

    // L1 table.
    if (std::uint64_t(h.l1_size) * 8 > max_l1_bytes)
        return bad(fmt::format("L1 table is too large ({} entries)", h.l1_size));
    if (h.l1_size < l1_entries_for(h.size, h.cluster_bits, h.extended_l2()))
        return bad(
            fmt::format("L1 table too small ({} entries) for virtual size {}", h.l1_size, h.size));
    if (h.l1_size > 0)
        if (auto e = check_table("L1 table", h.l1_table_offset, std::uint64_t(h.l1_size) * 8,
                                 h.cluster_bits, file_size))
            return *e;
    // Refcount table.
    if (h.refcount_table_clusters == 0) return bad("image has no refcount table");
    if (std::uint64_t(h.refcount_table_clusters) * cs > max_refcount_table_bytes)
        return bad(
            fmt::format("refcount table is too large ({} clusters)", h.refcount_table_clusters));
    if (auto e =
            check_table("refcount table", h.refcount_table_offset,
                        std::uint64_t(h.refcount_table_clusters) * cs, h.cluster_bits, file_size))
        return *e;
    // Snapshot table (just its start; entries are variable length).
    if (h.nb_snapshots > 65536) return bad(fmt::format("too many snapshots ({})", h.nb_snapshots));
    if (h.nb_snapshots > 0)
        if (auto e =
                check_table("snapshot table", h.snapshots_offset, 40, h.cluster_bits, file_size))
            return *e;

    // Header extensions: from header_length to the end of the first cluster.
    const std::uint64_t limit = std::min<std::uint64_t>(cs, buf.size());
    std::uint64_t off = h.header_length;
    bool ended = false;
    while (off + 8 <= limit) {
        const std::uint32_t type = load_be32(p + off);
        const std::uint32_t len = load_be32(p + off + 4);
        off += 8;
        if (type == ext_end) {
            ended = true;
            break;
        }
        if (len > limit - off)
            return bad(fmt::format("header extension {:#x} ({} bytes) extends past the first "
                                   "cluster",
                                   type, len));
        std::span<const std::byte> data(p + off, len);
        if (type == ext_backing_format) {
            h.backing_format.assign(reinterpret_cast<const char*>(data.data()), data.size());
        } else if (type == ext_crypto) {
            return bad("encryption header extension present (encryption is not supported)");
        } else if (type == ext_data_file) {
            return bad("external data files are not supported");
        } else {
            h.extensions.push_back(HeaderExtension{type, {data.begin(), data.end()}});
        }
        off += align_up(len, 8);
    }
    if (!ended && h.version == 3 && off < limit)
        return bad("header extension list is not terminated");

    // Backing file name.
    if (h.backing_file_offset != 0 || h.backing_file_size != 0) {
        if (h.backing_file_size > max_backing_name)
            return bad(fmt::format("backing file name too long ({} bytes)", h.backing_file_size));
        if (h.backing_file_offset > cs || h.backing_file_size > cs - h.backing_file_offset ||
            h.backing_file_offset + h.backing_file_size > buf.size())
            return bad(fmt::format("backing file name (offset {:#x}) is outside the first cluster",
                                   h.backing_file_offset));
        h.backing_file.assign(reinterpret_cast<const char*>(p + h.backing_file_offset),
                              h.backing_file_size);
    }
    return h;
}

HeaderExtension default_feature_table() {
    struct F {
        std::uint8_t type, bit;
        const char* name;
    };
    static constexpr F features[] = {
        {0, 0, "dirty bit"},        {0, 1, "corrupt bit"},         {0, 2, "external data file"},
        {0, 3, "compression type"}, {0, 4, "extended L2 entries"}, {1, 0, "lazy refcounts"},
        {2, 0, "bitmaps"},          {2, 1, "raw external data"},
    };
    HeaderExtension e{ext_feature_table, std::vector<std::byte>(48 * std::size(features))};
    for (std::size_t i = 0; i < std::size(features); ++i) {
        std::byte* q = e.data.data() + 48 * i;
        q[0] = std::byte{features[i].type};
        q[1] = std::byte{features[i].bit};
        std::memcpy(q + 2, features[i].name, std::strlen(features[i].name));
    }
    return e;
}

Result<std::vector<std::byte>> serialize_header(const Header& h) {
    if (h.version != 3) return bad("only version 3 headers are written");
    const std::uint64_t cs = h.cluster_size();
    std::vector<std::byte> out(v3_header_length);
    std::byte* p = out.data();
    store_be32(p, magic);
    store_be32(p + 4, 3);
    store_be32(p + 20, h.cluster_bits);
    store_be64(p + 24, h.size);
    store_be32(p + 32, h.crypt_method);
    store_be32(p + 36, h.l1_size);
    store_be64(p + 40, h.l1_table_offset);
    store_be64(p + 48, h.refcount_table_offset);
    store_be32(p + 56, h.refcount_table_clusters);
    store_be32(p + 60, h.nb_snapshots);
    store_be64(p + 64, h.snapshots_offset);
    store_be64(p + 72, h.incompatible_features);
    store_be64(p + 80, h.compatible_features);
    store_be64(p + 88, h.autoclear_features);
    store_be32(p + 96, h.refcount_order);
    store_be32(p + 100, v3_header_length);
    p[104] = std::byte{h.compression_type};
    auto append_ext = [&](std::uint32_t type, std::span<const std::byte> data) {
        const std::size_t at = out.size();
        out.resize(at + 8 + ((data.size() + 7) & ~std::size_t{7}));
        store_be32(out.data() + at, type);
        store_be32(out.data() + at + 4, static_cast<std::uint32_t>(data.size()));
        std::copy(data.begin(), data.end(), out.begin() + static_cast<std::ptrdiff_t>(at + 8));
    };
    if (!h.backing_format.empty())
        append_ext(ext_backing_format, std::as_bytes(std::span(h.backing_format)));
    for (const auto& e : h.extensions)
        append_ext(e.type, e.data);
    append_ext(ext_end, {});
    if (!h.backing_file.empty()) {
        if (h.backing_file.size() > max_backing_name)
            return bad(fmt::format("backing file name too long ({} bytes)", h.backing_file.size()));
        const std::size_t at = out.size();
        out.resize(at + h.backing_file.size());
        std::memcpy(out.data() + at, h.backing_file.data(), h.backing_file.size());
        p = out.data(); // the resize moved the buffer
        store_be64(p + 8, at);
        store_be32(p + 16, static_cast<std::uint32_t>(h.backing_file.size()));
    }
    if (out.size() > cs)
        return bad("header, extensions and backing file name do not fit in the first cluster");
    return out;
}

Result<BitmapsExtension> parse_bitmaps_extension(const HeaderExtension& ext) {
    if (ext.data.size() < 24) return bad("bitmaps header extension is too short");
    BitmapsExtension b;
    b.nb_bitmaps = load_be32(ext.data.data());
    b.directory_size = load_be64(ext.data.data() + 8);
    b.directory_offset = load_be64(ext.data.data() + 16);
    if (b.directory_size > (64u << 20)) return bad("bitmap directory is too large");
    return b;
}

BitmapDirectoryLayout decode_bitmap_directory(std::span<const std::byte> dir,
                                              std::uint32_t nb_bitmaps) {
    BitmapDirectoryLayout out;
    std::uint64_t off = 0;
    for (std::uint32_t i = 0; i < nb_bitmaps; ++i) {
        if (dir.size() - off < bitmap_entry_fixed_bytes) {
            out.truncation = BitmapEntryTruncation::fixed_part;
            break;
        }
        const std::byte* q = dir.data() + off;
        const std::uint16_t name_size = load_be16(q + 18);
        const std::uint32_t extra = load_be32(q + 20);
        const std::uint64_t len = bitmap_entry_fixed_bytes + std::uint64_t(extra) + name_size;
        if (len > dir.size() - off) {
            out.truncation = BitmapEntryTruncation::variable_part;
            break;
        }
        BitmapDirectoryEntry e;
        e.table_offset = load_be64(q);
        e.table_size = load_be32(q + 8);
        e.flags = load_be32(q + 12);
        e.type = std::to_integer<std::uint8_t>(q[16]);
        e.granularity_bits = std::to_integer<std::uint8_t>(q[17]);
        const std::byte* extra_data = q + bitmap_entry_fixed_bytes;
        e.extra_data.assign(extra_data, extra_data + extra);
        e.name.assign(reinterpret_cast<const char*>(extra_data + extra), name_size);
        out.entries.push_back(std::move(e));
        off += align_up(len, 8);
        out.end = off;
        if (off > dir.size()) {
            out.last_padding_past_end = true;
            off = dir.size();
        }
    }
    return out;
}

Result<std::vector<BitmapDirectoryEntry>> parse_bitmap_directory(std::span<const std::byte> dir,
                                                                 std::uint32_t nb_bitmaps) {
    BitmapDirectoryLayout layout = decode_bitmap_directory(dir, nb_bitmaps);
    if (layout.truncation != BitmapEntryTruncation::none)
        return bad("bitmap directory entry is truncated");
    return std::move(layout.entries);
}

Result<std::vector<SnapshotEntry>> parse_snapshot_table(std::span<const std::byte> table,
                                                        std::uint32_t nb, std::uint64_t* consumed) {
    std::vector<SnapshotEntry> out;
    std::size_t off = 0;
    for (std::uint32_t i = 0; i < nb; ++i) {
        if (table.size() - off < 40) return bad("snapshot table entry is truncated");
        const std::byte* q = table.data() + off;
        SnapshotEntry s;
        s.l1_table_offset = load_be64(q);
        s.l1_size = load_be32(q + 8);
        const std::uint16_t id_size = load_be16(q + 12);
        const std::uint16_t name_size = load_be16(q + 14);
        const std::uint32_t extra = load_be32(q + 36);
        const std::uint64_t len = 40ull + extra + id_size + name_size;
        if (len > table.size() - off) return bad("snapshot table entry is truncated");
        s.id.assign(reinterpret_cast<const char*>(q + 40 + extra), id_size);
        s.name.assign(reinterpret_cast<const char*>(q + 40 + extra + id_size), name_size);
        out.push_back(std::move(s));
        off += align_up(len, 8);
        if (off > table.size()) off = table.size();
    }
    if (consumed) *consumed = off;
    return out;
}

L2Entry decode_l2(std::uint64_t raw, std::uint32_t cb, std::uint32_t version) {
    L2Entry e;
    e.copied = raw & entry_copied;
    if (raw & entry_compressed) {
        const std::uint32_t x = 62 - (cb - 8);
        const std::uint64_t off_mask = (1ull << x) - 1;
        const std::uint64_t sectors = ((raw & ~(entry_copied | entry_compressed)) >> x) + 1;
        e.kind = ClusterKind::compressed;
        e.host_offset = raw & off_mask;
        e.compressed_size = sectors * 512 - (e.host_offset & 511);
        e.reserved_bits = e.copied; // the copied flag must be clear for compressed clusters
        return e;
    }
    const bool zero = version >= 3 && (raw & entry_zero);
    e.host_offset = raw & offset_mask;
    e.reserved_bits = (raw & l2_standard_reserved_mask) != 0 || (version < 3 && (raw & entry_zero));
    e.misaligned = !is_cluster_aligned(e.host_offset, cb);
    if (zero)
        e.kind = e.host_offset ? ClusterKind::zero_allocated : ClusterKind::zero_plain;
    else
        e.kind = e.host_offset ? ClusterKind::normal : ClusterKind::unallocated;
    return e;
}

std::uint64_t encode_compressed_l2(std::uint64_t host_offset, std::uint64_t bytes,
                                   std::uint32_t cb) {
    const std::uint32_t x = 62 - (cb - 8);
    const std::uint64_t extra_sectors = ((host_offset + bytes - 1) >> 9) - (host_offset >> 9);
    return entry_compressed | (extra_sectors << x) | host_offset;
}

std::uint64_t get_refcount(std::span<const std::byte> block, std::uint64_t index,
                           std::uint32_t order) {
    const std::uint32_t bits = 1u << order;
    if (bits < 8) {
        const std::uint64_t bit = index * bits;
        const unsigned byte = std::to_integer<unsigned>(block[bit / 8]);
        return (byte >> (bit % 8)) & ((1u << bits) - 1);
    }
    const std::byte* q = block.data() + index * (bits / 8);
    switch (bits) {
    case 8:
        return std::to_integer<std::uint64_t>(q[0]);
    case 16:
        return load_be16(q);
    case 32:
        return load_be32(q);
    default:
        return load_be64(q);
    }
}

void set_refcount(std::span<std::byte> block, std::uint64_t index, std::uint32_t order,
                  std::uint64_t value) {
    const std::uint32_t bits = 1u << order;
    if (bits < 8) {
        const std::uint64_t bit = index * bits;
        const unsigned mask = ((1u << bits) - 1) << (bit % 8);
        unsigned byte = std::to_integer<unsigned>(block[bit / 8]);
        byte = (byte & ~mask) | ((static_cast<unsigned>(value) << (bit % 8)) & mask);
        block[bit / 8] = static_cast<std::byte>(byte);
        return;
    }
    std::byte* q = block.data() + index * (bits / 8);
    switch (bits) {
    case 8:
        q[0] = static_cast<std::byte>(value);
        break;
    case 16:
        store_be16(q, static_cast<std::uint16_t>(value));
        break;
    case 32:
        store_be32(q, static_cast<std::uint32_t>(value));
        break;
    default:
        store_be64(q, value);
        break;
    }
}

} // namespace fleece::nodes::qcow2
