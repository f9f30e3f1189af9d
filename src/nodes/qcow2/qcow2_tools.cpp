// Offline tools over plain file descriptors. Nothing here runs on the event loop.
#include "nodes/qcow2/qcow2_tools.hpp"

#include "nodes/qcow2/qcow2_format.hpp"
#include "util/blocking_io.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <map>
#include <sys/stat.h>
#include <unistd.h>

namespace fleece::nodes::qcow2 {
namespace {

class Fd {
  public:
    explicit Fd(int fd) : fd_(fd) {}
    ~Fd() {
        if (fd_ >= 0) ::close(fd_);
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    int get() const { return fd_; }

  private:
    int fd_;
};

Error sys_error(const std::string& what, const std::string& path) {
    return make_error(fmt::format("{} '{}': {}", what, path, std::strerror(errno)));
}

bool pread_all(int fd, void* buf, std::size_t len, std::uint64_t off) {
    auto* p = static_cast<char*>(buf);
    while (len > 0) {
        const ssize_t n = ::pread(fd, p, len, static_cast<off_t>(off));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (n == 0) errno = EIO;
            return false;
        }
        p += n;
        len -= static_cast<std::size_t>(n);
        off += static_cast<std::uint64_t>(n);
    }
    return true;
}

std::uint64_t div_up(std::uint64_t a, std::uint64_t b) {
    return (a + b - 1) / b;
}

struct OpenImage {
    std::uint64_t file_size = 0;
    Header header;
};

Result<OpenImage> read_header(int fd, const std::string& path) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) return sys_error("Could not stat", path);
    OpenImage img;
    img.file_size = static_cast<std::uint64_t>(st.st_size);
    std::vector<std::byte> buf(std::min<std::uint64_t>(img.file_size, 2u << 20));
    if (!buf.empty() && !pread_all(fd, buf.data(), buf.size(), 0))
        return sys_error("Could not read", path);
    auto h = parse_header(buf, img.file_size);
    if (!h) return make_error(fmt::format("'{}': {}", path, h.error().message));
    img.header = std::move(*h);
    return img;
}

} // namespace

// ---------------------------------------------------------------------------- create

Status create_image(const std::string& path, const CreateOptions& o) {
    const std::uint32_t cs = o.cluster_size;
    if (cs < 512 || cs > (2u << 20) || (cs & (cs - 1)))
        return make_error(fmt::format("Cluster size must be a power of two between 512 and "
                                      "2048k (got {})",
                                      cs));
    std::uint32_t cb = 0;
    while ((1u << cb) < cs)
        ++cb;
    if (!o.backing_format.empty() && o.backing_file.empty())
        return make_error("Backing format given without a backing file");
    const std::uint64_t size = (o.size + 511) & ~511ull;
    if (size > max_virtual_size) return make_error("Image size is too large");

    Header h;
    h.cluster_bits = cb;
    h.size = size;
    h.l1_size = static_cast<std::uint32_t>(l1_entries_for(size, cb));
    if (std::uint64_t(h.l1_size) * 8 > max_l1_bytes)
        return make_error("Image size is too large for this cluster size");
    h.backing_file = o.backing_file;
    h.backing_format = o.backing_format;
    h.extensions.push_back(default_feature_table());

    const std::uint64_t l1_clusters = std::max<std::uint64_t>(1, div_up(h.l1_size * 8ull, cs));
    const std::uint64_t guest_clusters = div_up(size, cs);
    const std::uint64_t l2_tables = o.preallocate_metadata ? h.l1_size : 0;
    const std::uint64_t data_clusters = o.preallocate_metadata ? guest_clusters : 0;
    const std::uint64_t per_rb = h.refblock_entries();
    // Fixpoint: the refcount structures must also count themselves.
    std::uint64_t rb_count = 1, rt_clusters = 1, total = 0;
    for (;;) {
        total = 1 + rt_clusters + rb_count + l1_clusters + l2_tables + data_clusters;
        const std::uint64_t need_rb = div_up(total, per_rb);
        const std::uint64_t need_rt = div_up(need_rb * 8, cs);
        if (need_rb <= rb_count && need_rt <= rt_clusters) break;
        rb_count = std::max(rb_count, need_rb);
        rt_clusters = std::max(rt_clusters, need_rt);
    }
    if (rt_clusters * cs > max_refcount_table_bytes) return make_error("Image is too large");
    h.refcount_table_offset = cs;
    h.refcount_table_clusters = static_cast<std::uint32_t>(rt_clusters);
    const std::uint64_t rb_offset = (1 + rt_clusters) * cs;
    h.l1_table_offset = rb_offset + rb_count * cs;
    const std::uint64_t l2_offset = h.l1_table_offset + l1_clusters * cs;
    const std::uint64_t data_offset = l2_offset + l2_tables * cs;

    auto hdr = serialize_header(h);
    if (!hdr) return hdr.error();

    const int raw_fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (raw_fd < 0) return sys_error("Could not create", path);
    Fd fd(raw_fd);
    std::vector<std::byte> cluster(cs);
    std::copy(hdr->begin(), hdr->end(), cluster.begin());
    if (!pwrite_all(fd.get(), cluster.data(), cs, 0)) return sys_error("Could not write", path);
    // Refcount table.
    std::vector<std::byte> rt(rt_clusters * cs);
    for (std::uint64_t i = 0; i < rb_count; ++i)
        store_be64(rt.data() + 8 * i, rb_offset + i * cs);
    if (!pwrite_all(fd.get(), rt.data(), rt.size(), cs)) return sys_error("Could not write", path);
    // Refcount blocks: clusters [0, total) have refcount 1.
    for (std::uint64_t i = 0; i < rb_count; ++i) {
        std::fill(cluster.begin(), cluster.end(), std::byte{0});
        for (std::uint64_t j = 0; j < per_rb && i * per_rb + j < total; ++j)
            set_refcount(cluster, j, h.refcount_order, 1);
        if (!pwrite_all(fd.get(), cluster.data(), cs, rb_offset + i * cs))
            return sys_error("Could not write", path);
    }
    // L1 (and, preallocated, L2 tables mapping every guest cluster in order).
    std::vector<std::byte> l1(l1_clusters * cs);
    const std::uint64_t per_l2 = cs / 8;
    for (std::uint64_t i = 0; i < l2_tables; ++i) {
        store_be64(l1.data() + 8 * i, (l2_offset + i * cs) | entry_copied);
        std::fill(cluster.begin(), cluster.end(), std::byte{0});
        for (std::uint64_t j = 0; j < per_l2 && i * per_l2 + j < guest_clusters; ++j)
            store_be64(cluster.data() + 8 * j,
                       (data_offset + (i * per_l2 + j) * cs) | entry_copied);
        if (!pwrite_all(fd.get(), cluster.data(), cs, l2_offset + i * cs))
            return sys_error("Could not write", path);
    }
    if (!pwrite_all(fd.get(), l1.data(), l1.size(), h.l1_table_offset))
        return sys_error("Could not write", path);
    if (::ftruncate(fd.get(), static_cast<off_t>(total * cs)) != 0)
        return sys_error("Could not resize", path);
    if (::fsync(fd.get()) != 0) return sys_error("Could not sync", path);
    return {};
}

// ---------------------------------------------------------------------------- info

Result<ImageInfo> read_image_info(const std::string& path) {
    const int raw_fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (raw_fd < 0) return sys_error("Could not open", path);
    Fd fd(raw_fd);
    auto img = read_header(fd.get(), path);
    if (!img) return img.error();
    const Header& h = img->header;
    ImageInfo info;
    info.version = h.version;
    info.cluster_size = static_cast<std::uint32_t>(h.cluster_size());
    info.virtual_size = h.size;
    info.backing_file = h.backing_file;
    info.backing_format = h.backing_format;
    info.refcount_bits = h.refcount_bits();
    info.corrupt = h.corrupt();
    info.dirty = h.dirty();
    info.lazy_refcounts = h.compatible_features & compat_lazy_refcounts;
    info.extended_l2 = h.extended_l2();
    info.compression_type = h.compression_type == compression_zstd ? "zstd" : "zlib";
    const HeaderExtension* bitmaps_ext = h.find_extension(ext_bitmaps);
    if (!(h.autoclear_features & autoclear_bitmaps)) bitmaps_ext = nullptr; // stale: ignored
    if (const HeaderExtension* e = bitmaps_ext) {
        auto b = parse_bitmaps_extension(*e);
        if (!b) return b.error();
        if (b->directory_offset > img->file_size ||
            b->directory_size > img->file_size - b->directory_offset)
            return make_error("qcow2: bitmap directory extends past the end of the file");
        std::vector<std::byte> dir(b->directory_size);
        if (!dir.empty() && !pread_all(fd.get(), dir.data(), dir.size(), b->directory_offset))
            return sys_error("Could not read", path);
        auto entries = parse_bitmap_directory(dir, b->nb_bitmaps);
        if (!entries) return entries.error();
        for (auto& be : *entries) {
            info.bitmap_names.push_back(be.name);
            const std::uint64_t g = be.granularity_bits < 64 ? 1ull << be.granularity_bits : 0;
            info.bitmaps.push_back(
                {be.name, g, (be.flags & 1) != 0, (be.flags & 2) != 0}); // in_use, auto
        }
    }
    return info;
}

// ---------------------------------------------------------------------------- check

namespace {

class Checker {
  public:
    Checker(int fd, const OpenImage& img, CheckResult& r)
        : fd_(fd), h_(img.header), file_size_(img.file_size), cb_(h_.cluster_bits),
          cs_(h_.cluster_size()), r_(r), refs_(div_up(file_size_, cs_)) {}

    void run() {
        add_ref(0, cs_, "header");
        walk_l1(h_.l1_table_offset, h_.l1_size, true, "active L1 table");
        walk_refcount_table();
        walk_snapshots();
        walk_bitmaps();
    }

    void compare(Repair repair) {
        std::uint64_t highest = 0;
        bool any = false;
        std::map<std::uint64_t, bool> dirty_blocks;
        const std::uint64_t per_rb = h_.refblock_entries();
        std::uint64_t covered = refblocks_.empty() ? 0 : (refblocks_.rbegin()->first + 1) * per_rb;
        const std::uint64_t n = std::max<std::uint64_t>(refs_.size(), covered);
        for (std::uint64_t i = 0; i < n; ++i) {
            const std::uint64_t want = i < refs_.size() ? refs_[i] : 0;
            auto it = refblocks_.find(i / per_rb);
            const std::uint64_t have =
                it == refblocks_.end() ? 0
                                       : get_refcount(it->second, i % per_rb, h_.refcount_order);
            if (want || have) {
                highest = i;
                any = true;
            }
            if (want > max_refcount(h_.refcount_order)) {
                note_corruption(fmt::format("ERROR cluster {} reference count {} overflows the "
                                            "refcount width",
                                            i, want));
                continue;
            }
            if (want == have) continue;
            const bool leak = have > want;
            if (leak) {
                ++r_.leaks;
                r_.messages.push_back(fmt::format("{} cluster {} refcount={} reference={}",
                                                  repair != Repair::none ? "Repairing" : "Leaked",
                                                  i, have, want));
            } else {
                note_corruption(fmt::format("{} cluster {} refcount={} reference={}",
                                            repair == Repair::all ? "Repairing" : "ERROR", i, have,
                                            want));
            }
            const bool fix = leak ? repair != Repair::none : repair == Repair::all;
            if (fix && it != refblocks_.end()) {
                set_refcount(it->second, i % per_rb, h_.refcount_order, want);
                dirty_blocks[i / per_rb] = true;
                ++(leak ? r_.leaks_fixed : r_.corruptions_fixed);
            }
        }
        // OFLAG_COPIED must be set exactly when the refcount is 1 (active table only).
        for (const auto& c : copied_checks_) {
            auto it = refblocks_.find(c.cluster / per_rb);
            const std::uint64_t have =
                it == refblocks_.end()
                    ? 0
                    : get_refcount(it->second, c.cluster % per_rb, h_.refcount_order);
            if ((have == 1) != c.copied)
                note_corruption(fmt::format("ERROR OFLAG_COPIED {}: offset={:#x} refcount={}",
                                            c.what, c.cluster * cs_, have));
        }
        for (const auto& [idx, _] : dirty_blocks) {
            if (!pwrite_all(fd_, refblocks_[idx].data(), cs_, refblock_offsets_[idx])) {
                ++r_.check_errors;
                r_.messages.push_back(
                    fmt::format("ERROR writing refcount block {}: {}", idx, std::strerror(errno)));
            }
        }
        if (!dirty_blocks.empty() && ::fsync(fd_) != 0) ++r_.check_errors;
        r_.image_end_offset = any ? (highest + 1) * cs_ : 0;
        r_.total_clusters = div_up(h_.size, cs_);
    }

  private:
    struct CopiedCheck {
        std::uint64_t cluster;
        bool copied;
        const char* what;
    };

    void note_corruption(std::string msg) {
        ++r_.corruptions;
        r_.messages.push_back(std::move(msg));
    }

    // Counts a reference to every cluster of [offset, offset+bytes). False if it lies
    // (partly) outside the file, which is a corruption.
    bool add_ref(std::uint64_t offset, std::uint64_t bytes, const std::string& what) {
        if (bytes == 0) return true;
        if (offset > file_size_ || bytes > file_size_ - offset) {
            note_corruption(fmt::format("ERROR {} at offset {:#x} ({} bytes) is outside the image "
                                        "file",
                                        what, offset, bytes));
            return false;
        }
        for (std::uint64_t c = offset >> cb_; c <= (offset + bytes - 1) >> cb_; ++c)
            ++refs_[c];
        return true;
    }

    bool read(std::vector<std::byte>& buf, std::uint64_t off, const std::string& what) {
        if (!pread_all(fd_, buf.data(), buf.size(), off)) {
            ++r_.check_errors;
            r_.messages.push_back(
                fmt::format("ERROR reading {} at {:#x}: {}", what, off, std::strerror(errno)));
            return false;
        }
        return true;
    }

    void walk_l1(std::uint64_t l1_off, std::uint32_t l1_size, bool active,
                 const std::string& what) {
        if (!add_ref(l1_off, std::uint64_t(l1_size) * 8, what)) return;
        std::vector<std::byte> l1(std::uint64_t(l1_size) * 8);
        if (!l1.empty() && !read(l1, l1_off, what)) return;
        std::vector<std::byte> l2(cs_);
        std::uint64_t next_data = 0;
        for (std::uint32_t i = 0; i < l1_size; ++i) {
            const std::uint64_t e = load_be64(l1.data() + 8 * i);
            if (e & l1_reserved_mask)
                note_corruption(
                    fmt::format("ERROR L1 entry {} has reserved bits set ({:#x})", i, e));
            const std::uint64_t l2_off = e & offset_mask;
            if (!l2_off) continue;
            if (l2_off & (cs_ - 1)) {
                note_corruption(
                    fmt::format("ERROR L2 table offset {:#x} is not cluster aligned", l2_off));
                continue;
            }
            if (!add_ref(l2_off, cs_, "L2 table")) continue;
            if (active)
                copied_checks_.push_back({l2_off >> cb_, bool(e & entry_copied), "L2 table"});
            if (h_.extended_l2()) continue; // subcluster bitmaps: not walked
            if (!read(l2, l2_off, "L2 table")) continue;
            for (std::uint64_t j = 0; j < cs_ / 8; ++j) {
                const std::uint64_t raw = load_be64(l2.data() + 8 * j);
                const L2Entry le = decode_l2(raw, cb_, h_.version);
                if (le.reserved_bits)
                    note_corruption(fmt::format("ERROR L2 entry {:#x} has reserved bits set", raw));
                switch (le.kind) {
                case ClusterKind::unallocated:
                case ClusterKind::zero_plain:
                    break;
                case ClusterKind::normal:
                case ClusterKind::zero_allocated:
                    if (le.misaligned) {
                        note_corruption(fmt::format("ERROR data cluster offset {:#x} is not "
                                                    "cluster aligned",
                                                    le.host_offset));
                        break;
                    }
                    if (!add_ref(le.host_offset, cs_, "data cluster")) break;
                    if (active) {
                        copied_checks_.push_back({le.host_offset >> cb_, le.copied, "data"});
                        ++r_.allocated_clusters;
                        if (next_data && le.host_offset != next_data) ++r_.fragmented_clusters;
                        next_data = le.host_offset + cs_;
                    }
                    break;
                case ClusterKind::compressed:
                    if (!add_ref(le.host_offset, le.compressed_size, "compressed cluster")) break;
                    if (active) {
                        ++r_.allocated_clusters;
                        ++r_.compressed_clusters;
                        next_data = 0;
                    }
                    break;
                }
            }
        }
    }

    void walk_refcount_table() {
        const std::uint64_t bytes = std::uint64_t(h_.refcount_table_clusters) * cs_;
        if (!add_ref(h_.refcount_table_offset, bytes, "refcount table")) return;
        std::vector<std::byte> rt(bytes);
        if (!read(rt, h_.refcount_table_offset, "refcount table")) return;
        for (std::uint64_t i = 0; i < bytes / 8; ++i) {
            const std::uint64_t e = load_be64(rt.data() + 8 * i);
            if (e & refcount_table_reserved_mask)
                note_corruption(
                    fmt::format("ERROR refcount table entry {} has reserved bits set", i));
            const std::uint64_t off = e & ~refcount_table_reserved_mask;
            if (!off) continue;
            if (off & (cs_ - 1)) {
                note_corruption(fmt::format("ERROR refcount block {} is not cluster aligned", i));
                continue;
            }
            if (!add_ref(off, cs_, fmt::format("refcount block {}", i))) continue;
            std::vector<std::byte> rb(cs_);
            if (!read(rb, off, "refcount block")) continue;
            refblocks_[i] = std::move(rb);
            refblock_offsets_[i] = off;
        }
    }

    void walk_snapshots() {
        if (h_.nb_snapshots == 0) return;
        const std::uint64_t avail = file_size_ - h_.snapshots_offset;
        std::vector<std::byte> table(std::min<std::uint64_t>(avail, 16u << 20));
        if (!read(table, h_.snapshots_offset, "snapshot table")) return;
        std::uint64_t consumed = 0;
        auto snaps = parse_snapshot_table(table, h_.nb_snapshots, &consumed);
        if (!snaps) {
            note_corruption("ERROR " + snaps.error().message);
            return;
        }
        add_ref(h_.snapshots_offset, consumed, "snapshot table");
        for (const auto& s : *snaps)
            walk_l1(s.l1_table_offset, s.l1_size, false, "snapshot L1 table '" + s.name + "'");
    }

    void walk_bitmaps() {
        const HeaderExtension* e = h_.find_extension(ext_bitmaps);
        if (!e) return;
        auto b = parse_bitmaps_extension(*e);
        if (!b) {
            note_corruption("ERROR " + b.error().message);
            return;
        }
        if (!add_ref(b->directory_offset, b->directory_size, "bitmap directory")) return;
        std::vector<std::byte> dir(b->directory_size);
        if (!dir.empty() && !read(dir, b->directory_offset, "bitmap directory")) return;
        auto entries = parse_bitmap_directory(dir, b->nb_bitmaps);
        if (!entries) {
            note_corruption("ERROR " + entries.error().message);
            return;
        }
        for (const auto& be : *entries) {
            const std::uint64_t bytes = std::uint64_t(be.table_size) * 8;
            if (!add_ref(be.table_offset, bytes, "bitmap table '" + be.name + "'")) continue;
            std::vector<std::byte> t(bytes);
            if (!t.empty() && !read(t, be.table_offset, "bitmap table")) continue;
            for (std::uint64_t k = 0; k < be.table_size; ++k) {
                const std::uint64_t off = load_be64(t.data() + 8 * k) & offset_mask;
                if (off) add_ref(off, cs_, "bitmap data cluster");
            }
        }
    }

    int fd_;
    const Header& h_;
    std::uint64_t file_size_;
    std::uint32_t cb_;
    std::uint64_t cs_;
    CheckResult& r_;
    std::vector<std::uint32_t> refs_;
    std::map<std::uint64_t, std::vector<std::byte>> refblocks_;
    std::map<std::uint64_t, std::uint64_t> refblock_offsets_;
    std::vector<CopiedCheck> copied_checks_;
};

} // namespace

Result<CheckResult> check_image(const std::string& path, Repair repair) {
    const int raw_fd =
        ::open(path.c_str(), (repair == Repair::none ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (raw_fd < 0) return sys_error("Could not open", path);
    Fd fd(raw_fd);
    auto img = read_header(fd.get(), path);
    if (!img) return img.error();
    CheckResult r;
    Checker c(fd.get(), *img, r);
    c.run();
    c.compare(repair);
    return r;
}

} // namespace fleece::nodes::qcow2
