// Loading and storing persistent dirty bitmaps of a qcow2 image (qcow2_bitmap_store.hpp).
#include "nodes/qcow2/qcow2_bitmap_store.hpp"

#include "io/event_loop.hpp"
#include "nodes/qcow2/qcow2_node_impl.hpp"
#include "util/log.hpp"

#include <algorithm>
#include <bit>
#include <fmt/format.h>
#include <map>

namespace fleece::nodes::qcow2 {
namespace {

using block::DirtyBitmap;

// The bits to store: a frozen bitmap (a backup running at close) also keeps what its
// successor recorded meanwhile, so the stored bitmap over-approximates, never misses.
std::vector<std::uint64_t> words_to_store(const DirtyBitmap& b) {
    if (!b.successor()) return b.bits().words();
    Bitmap bits = b.copy_bits();
    bits.merge(b.successor()->bits());
    return bits.words();
}

Error bad(std::string what) {
    return make_error("qcow2: " + std::move(what));
}

// Removes the bitmaps extension from `h` (and the autoclear bit that vouches for it).
void drop_extension(Header& h) {
    std::erase_if(h.extensions, [](const HeaderExtension& e) { return e.type == ext_bitmaps; });
    h.autoclear_features &= ~autoclear_bitmaps;
}

void set_extension(Header& h, std::vector<std::byte> data) {
    for (auto& e : h.extensions)
        if (e.type == ext_bitmaps) {
            e.data = std::move(data);
            return;
        }
    h.extensions.push_back({ext_bitmaps, std::move(data)});
}

} // namespace

Result<std::vector<std::byte>> header_cluster(const Header& h) {
    auto bytes = serialize_header(h);
    if (!bytes) return bytes.error();
    bytes->resize(h.cluster_size(), std::byte{0});
    return bytes;
}

io::Task<Result<BitmapState>> open_bitmaps(block::Node& file, Header& h,
                                           std::vector<std::byte>& header_bytes, bool read_only) {
    BitmapState st;
    const HeaderExtension* ext = h.find_extension(ext_bitmaps);
    const bool vouched = h.autoclear_features & autoclear_bitmaps;
    if (read_only) {
        if (!ext || !vouched) co_return st; // a writer without bitmap support: stale, ignored
    } else {
        // Autoclear bits we do not maintain must be cleared by a writer; the bitmaps bit
        // stays when there are bitmaps we take over.
        std::uint64_t keep = h.autoclear_features & autoclear_bitmaps;
        if (!ext) keep = 0;
        if (ext && !vouched) {
            // Written by a program lacking bitmap support: the bitmaps may miss changes.
            // QEMU drops them; so do we (their clusters leak until `check -r leaks`).
            log::warn("qcow2 '{}': bitmaps extension without the autoclear bit: a program "
                      "without bitmap support changed the image; dropping its bitmaps",
                      file.filename());
            drop_extension(h);
            auto bytes = header_cluster(h);
            if (!bytes) co_return bytes.error();
            header_bytes = std::move(*bytes);
            if (auto e = co_await file.write(0, header_bytes, 0))
                co_return bad("dropping stale bitmaps: " + e.message());
            if (auto e = co_await file.flush()) co_return bad("flush: " + e.message());
            co_return st;
        }
        if (h.autoclear_features != keep) {
            h.autoclear_features = keep;
            if (h.version >= 3) {
                store_be64(header_bytes.data() + 88, keep);
                if (auto e = co_await file.write(0, header_bytes, 0))
                    co_return bad("updating the header: " + e.message());
            }
        }
        if (!ext) co_return st;
    }
    if (h.version < 3) co_return bad("bitmaps extension in a version 2 image");

    auto be = parse_bitmaps_extension(*ext);
    if (!be) co_return be.error();
    if (ext->data.size() >= 8 && load_be32(ext->data.data() + 4) != 0)
        co_return bad("bitmaps extension has reserved bits set");
    const std::uint64_t cs = h.cluster_size();
    const std::uint64_t fsize = file.size();
    if (be->directory_offset & (cs - 1))
        co_return bad(fmt::format("bitmap directory offset {:#x} is not aligned to the cluster "
                                  "size",
                                  be->directory_offset));
    if (be->directory_offset == 0 || be->directory_offset > fsize ||
        be->directory_size > fsize - be->directory_offset)
        co_return bad(fmt::format("bitmap directory (offset {:#x}, {} bytes) is at offset 0 or "
                                  "extends past the end of the file",
                                  be->directory_offset, be->directory_size));
    std::vector<std::byte> dir(be->directory_size);
    if (!dir.empty())
        if (auto e = co_await file.read(be->directory_offset, dir, 0))
            co_return bad("reading the bitmap directory: " + e.message());
    DirectoryLimits lim{h.cluster_bits, h.size, fsize};
    auto entries = parse_bitmap_dir(dir, be->nb_bitmaps, lim);
    if (!entries) co_return entries.error();
    st.dir_offset = be->directory_offset;
    st.dir_size = be->directory_size;

    std::vector<std::byte> cluster(cs);
    for (QBitmap& q : *entries) {
        StoredBitmap sb;
        std::vector<std::byte> raw(std::uint64_t(q.table_size) * 8);
        if (!raw.empty())
            if (auto e = co_await file.read(q.table_offset, raw, 0))
                co_return bad(
                    fmt::format("reading the table of bitmap '{}': {}", q.name, e.message()));
        auto table = parse_bitmap_table(raw, h.cluster_bits, fsize);
        if (!table)
            co_return make_error(fmt::format("{} (bitmap '{}')", table.error().message, q.name));
        sb.table = std::move(*table);
        sb.was_in_use = q.in_use();
        if (!sb.was_in_use) {
            const std::uint64_t bits = bitmap_bit_count(h.size, q.granularity_bits);
            sb.words.assign((bits + 63) / 64, 0);
            for (std::uint64_t i = 0; i < sb.table.size(); ++i) {
                const std::uint64_t e = sb.table[i];
                if (e == 0) continue;
                if (e == bitmap_table_all_ones) {
                    std::fill(cluster.begin(), cluster.end(), std::byte{0xff});
                } else if (auto err = co_await file.read(e & offset_mask, cluster, 0)) {
                    co_return bad(
                        fmt::format("reading the data of bitmap '{}': {}", q.name, err.message()));
                }
                load_bitmap_cluster(sb.words, i, cluster);
            }
        }
        sb.entry = std::move(q);
        st.bitmaps.push_back(std::move(sb));
    }

    if (!read_only) {
        // In use from now on, durably, before the node exists (so before any guest write):
        // a crash from here on leaves the flag set and the bitmaps load as inconsistent.
        bool changed = false;
        for (StoredBitmap& sb : st.bitmaps)
            if (!sb.entry.in_use()) {
                sb.entry.flags |= bitmap_flag_in_use;
                changed = true;
            }
        if (changed) {
            std::vector<QBitmap> list;
            for (const StoredBitmap& sb : st.bitmaps)
                list.push_back(sb.entry);
            const std::vector<std::byte> bytes = serialize_bitmap_dir(list);
            FLEECE_ASSERT(bytes.size() == st.dir_size);
            if (auto e = co_await file.write(st.dir_offset, bytes, 0))
                co_return bad("marking bitmaps in use: " + e.message());
        }
        if (auto e = co_await file.flush()) co_return bad("flush: " + e.message());
    }
    co_return st;
}

// ---- the node side -------------------------------------------------------------------

bool Qcow2Node::supports_persistent_bitmaps() const {
    return !read_only_ && h_.version >= 3;
}

void Qcow2Node::install_bitmaps() {
    for (StoredBitmap& sb : bitmap_state_.bitmaps) {
        auto b = dirty_bitmaps().add(sb.entry.name, size(), sb.entry.granularity());
        if (!b) {
            log::error("qcow2 node '{}': cannot load bitmap '{}': {}", name(), sb.entry.name,
                       b.error().message);
            continue;
        }
        DirtyBitmap* d = *b;
        d->set_persistent(true);
        d->set_readonly(read_only_);
        if (sb.was_in_use) {
            // Not stored at the last close: changes after the last store are unknown.
            d->set_inconsistent(true);
            d->set_enabled(false);
        } else {
            Bitmap bits(d->bits().size());
            bits.load_words(sb.words);
            d->restore_bits(std::move(bits));
            d->set_enabled(sb.entry.auto_enabled());
        }
        sb.words.clear();
        sb.words.shrink_to_fit();
    }
}

void Qcow2Node::persistent_bitmap_removed(const std::string& name) {
    if (read_only_ || closing_) return;
    bool on_disk = false;
    for (const StoredBitmap& sb : bitmap_state_.bitmaps)
        on_disk = on_disk || sb.entry.name == name;
    if (!on_disk) return;
    // Without a writer above us the file edge holds no write permission (fleece's model:
    // a format node takes what its parents need); the bitmap then leaves at close.
    if (!(file_->perm() & block::perm_write)) return;
    // In the background (the QMP command is synchronous); drain and close wait for it.
    background_work_started();
    ++pending_bitmap_updates_;
    io::EventLoop::current().spawn(drop_removed_bitmaps());
}

io::Task<void> Qcow2Node::wait_image_bitmap_updates() {
    while (pending_bitmap_updates_ > 0)
        co_await bitmap_updates_done_.wait();
}

io::Task<void> Qcow2Node::drop_removed_bitmaps() {
    if (auto e = co_await store_bitmaps(false))
        log::warn("qcow2 node '{}': removing a bitmap from the image failed ({}); it stays "
                  "there in use and loads as inconsistent",
                  name(), e.message());
    --pending_bitmap_updates_;
    bitmap_updates_done_.notify_all();
    background_work_finished();
}

io::Task<std::error_code> Qcow2Node::store_bitmaps(bool write_data) {
    if (read_only_) co_return std::error_code{};
    auto serial = co_await bitmap_mutex_.lock();
    // What the new directory holds, in order: bitmaps already on disk first (directory
    // order), then new persistent ones, oldest first. Without write_data (a removal while
    // the node serves), only removed bitmaps leave; the others keep their entries.
    struct Plan {
        const DirtyBitmap* bitmap = nullptr; // null: keep the old entry as it is
        QBitmap entry;
        std::vector<std::uint64_t> words;
        std::vector<std::uint64_t> table;
        std::vector<std::uint64_t> data_clusters; // indexes with data
    };
    std::vector<Plan> plans;
    std::vector<std::uint64_t> to_free; // clusters of old entries that are replaced or gone
    std::map<std::string, const DirtyBitmap*> persistent;
    for (const auto& b : dirty_bitmaps().list())
        if (b->persistent()) persistent[b->name()] = b.get();
    std::map<std::string, bool> seen;
    auto free_old = [&](const StoredBitmap& sb) {
        for (std::uint64_t e : sb.table)
            if (e & offset_mask) to_free.push_back((e & offset_mask) >> cb_);
        const std::uint64_t tb = sb.table.size() * 8;
        for (std::uint64_t c = 0; c < (tb + cs_ - 1) / cs_; ++c)
            to_free.push_back((sb.entry.table_offset >> cb_) + c);
    };
    for (const StoredBitmap& sb : bitmap_state_.bitmaps) {
        auto it = persistent.find(sb.entry.name);
        if (it == persistent.end()) {
            free_old(sb); // removed (or made non-persistent): gone from the image
            continue;
        }
        seen[sb.entry.name] = true;
        if (it->second->inconsistent() || !write_data) {
            plans.push_back({nullptr, sb.entry, {}, sb.table, {}}); // stays in_use: inconsistent
            continue;
        }
        free_old(sb);
        plans.push_back({it->second, {}, {}, {}, {}});
    }
    const auto& list = dirty_bitmaps().list();
    for (auto it = list.rbegin(); it != list.rend() && write_data; ++it)
        if ((*it)->persistent() && !seen.count((*it)->name()))
            plans.push_back({it->get(), {}, {}, {}, {}});

    if (plans.empty() && !bitmap_state_.has_extension()) co_return std::error_code{};
    if (!write_data && plans.size() == bitmap_state_.bitmaps.size()) co_return std::error_code{};

    // Allocate everything without suspending; refcounts change in memory only.
    for (Plan& p : plans) {
        if (!p.bitmap) continue;
        const DirtyBitmap& b = *p.bitmap;
        p.words = words_to_store(b);
        p.entry.name = b.name();
        p.entry.granularity_bits = static_cast<std::uint8_t>(std::countr_zero(b.granularity()));
        p.entry.flags = b.enabled() ? bitmap_flag_auto : 0;
        const std::uint64_t n = bitmap_table_entries(size(), p.entry.granularity_bits, cb_);
        p.entry.table_size = static_cast<std::uint32_t>(n);
        p.table.assign(n, 0);
        for (std::uint64_t i = 0; i < n; ++i) {
            if (!bitmap_cluster_dirty(p.words, i, cs_)) continue;
            auto c = rc_->allocate(1);
            if (!c) co_return block::errno_code(ENOSPC);
            p.table[i] = *c << cb_;
            p.data_clusters.push_back(i);
        }
        if (n == 0) continue; // an empty disk: no table
        auto t = rc_->allocate((n * 8 + cs_ - 1) / cs_);
        if (!t) co_return block::errno_code(ENOSPC);
        p.entry.table_offset = *t << cb_;
    }
    std::vector<QBitmap> entries;
    for (const Plan& p : plans)
        entries.push_back(p.entry);
    const std::vector<std::byte> dir = serialize_bitmap_dir(entries);
    std::uint64_t dir_offset = 0;
    if (!dir.empty()) {
        auto d = rc_->allocate((dir.size() + cs_ - 1) / cs_);
        if (!d) co_return block::errno_code(ENOSPC);
        dir_offset = *d << cb_;
    }
    if (auto e = co_await grow_file()) co_return e;

    // Data, tables, directory: new clusters nothing durable refers to yet.
    std::vector<std::byte> cluster(cs_);
    for (const Plan& p : plans) {
        if (!p.bitmap) continue;
        for (std::uint64_t i : p.data_clusters) {
            store_bitmap_cluster(p.words, i, cluster);
            if (auto e = co_await meta_write(p.table[i], cluster)) co_return e;
        }
        if (p.table.empty()) continue;
        std::vector<std::byte> t = serialize_bitmap_table(p.table);
        t.resize((t.size() + cs_ - 1) / cs_ * cs_, std::byte{0});
        if (auto e = co_await meta_write(p.entry.table_offset, t)) co_return e;
    }
    if (!dir.empty()) {
        std::vector<std::byte> d = dir;
        d.resize((d.size() + cs_ - 1) / cs_ * cs_, std::byte{0});
        if (auto e = co_await meta_write(dir_offset, d)) co_return e;
    }
    // Their refcounts and content durable (the commit ends with a flush) ...
    if (auto e = co_await commit()) co_return e;
    // ... before the header names them.
    if (entries.empty()) {
        std::erase_if(h_.extensions,
                      [](const HeaderExtension& x) { return x.type == ext_bitmaps; });
        h_.autoclear_features &= ~autoclear_bitmaps;
    } else {
        set_extension(h_, serialize_bitmaps_ext(static_cast<std::uint32_t>(entries.size()),
                                                dir.size(), dir_offset));
        h_.autoclear_features |= autoclear_bitmaps;
    }
    auto hdr = header_cluster(h_);
    if (!hdr) {
        log::error("qcow2 node '{}': cannot store bitmaps: {}", name(), hdr.error().message);
        co_return block::errno_code(EINVAL);
    }
    {
        // A commit may be rewriting the header (refcount table move) meanwhile.
        auto header_guard = co_await commit_mutex_.lock();
        header_bytes_ = std::move(*hdr);
        if (auto e = co_await meta_write(0, header_bytes_)) co_return e;
        if (auto e = co_await meta_flush()) co_return e;
    }
    // The old directory and replaced clusters are unreferenced on disk now: free them.
    if (bitmap_state_.has_extension())
        for (std::uint64_t c = 0; c < (bitmap_state_.dir_size + cs_ - 1) / cs_; ++c)
            to_free.push_back((bitmap_state_.dir_offset >> cb_) + c);
    for (std::uint64_t c : to_free)
        rc_->release(c);
    BitmapState now;
    now.dir_offset = dir_offset;
    now.dir_size = dir.size();
    for (Plan& p : plans) {
        StoredBitmap sb;
        sb.entry = std::move(p.entry);
        sb.table = std::move(p.table);
        now.bitmaps.push_back(std::move(sb));
    }
    bitmap_state_ = std::move(now);
    co_return co_await commit();
}

} // namespace fleece::nodes::qcow2
