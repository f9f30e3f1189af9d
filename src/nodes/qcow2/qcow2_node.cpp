// Request paths of the qcow2 node. All on the loop thread; code between two co_awaits is
// atomic. Guest ranges are locked per cluster: reads shared, anything that changes an L2
// entry exclusive, so allocations of the same cluster are serialised while different
// clusters proceed in parallel, and a discard waits for reads of the clusters it frees.
#include "io/offload.hpp"
#include "nodes/qcow2/qcow2_compress.hpp"
#include "nodes/qcow2/qcow2_node_impl.hpp"
#include "util/align.hpp"
#include "util/log.hpp"

#include <bit>
#include <cstring>
#include <fmt/format.h>

namespace fleece::nodes::qcow2 {

using block::errno_code;

Qcow2Node::Qcow2Node(std::string name, NodeConfig cfg, block::Node& file, block::Node* backing)
    : Node(std::move(name), "qcow2"), h_(std::move(cfg.header)), cb_(h_.cluster_bits),
      cs_(h_.cluster_size()), header_bytes_(std::move(cfg.header_bytes)), l1_(std::move(cfg.l1)),
      cache_(cfg.l2_cache_tables), rc_(std::move(cfg.refcounts)), discard_unmap_(cfg.discard_unmap),
      pass_discard_request_(cfg.pass_discard_request), pass_discard_other_(cfg.pass_discard_other),
      open_file_size_(file.size()), bitmap_state_(std::move(cfg.bitmaps)) {
    read_only_ = cfg.read_only;
    set_size(h_.size);
    file_ = &add_child(file, block::ChildRole::file, "file");
    if (backing) backing_ = &add_child(*backing, block::ChildRole::backing, "backing");
    caps_.write = !read_only_;
    caps_.flush = true;
    caps_.fua = true; // honoured with a metadata commit after the write
    caps_.trim = discard_unmap_;
    caps_.zero = true;
    caps_.fast_zero = true; // partial clusters answer ENOTSUP under req_no_fallback
    caps_.block_status = true;
    caps_.compressed_write = !read_only_; // whole clusters under req_write_compressed
    limits_.request_alignment = std::max<std::uint32_t>(1, file.limits().request_alignment);
    limits_.preferred_alignment =
        std::max<std::uint32_t>(file.limits().preferred_alignment,
                                static_cast<std::uint32_t>(std::min<std::uint64_t>(cs_, 65536)));
    limits_.cluster_size = static_cast<std::uint32_t>(cs_);
    install_bitmaps();
}

std::error_code Qcow2Node::corrupt(const std::string& what) {
    log::error("qcow2 node '{}': {}", name(), what);
    return errno_code(EIO);
}

io::Task<void> Qcow2Node::close() {
    if (read_only_) co_return;
    closing_ = true;
    // Twice: the first commit releases clusters in memory, the second writes those
    // refcount decrements, so a clean close leaves no leaked clusters.
    for (int i = 0; i < 2; ++i)
        if (auto e = co_await commit()) {
            log::error("qcow2 node '{}': metadata commit at close failed: {}", name(), e.message());
            co_return; // bitmaps stay in_use on disk: they load as inconsistent (safe)
        }
    if (auto e = co_await store_bitmaps(true))
        log::error("qcow2 node '{}': storing persistent bitmaps failed: {}", name(), e.message());
    co_await trim_file(); // after the store, which may take new clusters
}

io::Task<void> Qcow2Node::trim_file() {
    if (!grown_ahead_) co_return;
    const std::uint64_t keep = std::max(open_file_size_, rc_->end_cluster() << cb_);
    if (file_->node().size() <= keep) co_return;
    // Nothing with a refcount lies past `keep` (end_cluster only ever grows), so this only
    // drops never-used holes; a failure just leaves them.
    if (auto e = co_await file_->node().truncate(keep))
        log::warn("qcow2 node '{}': trimming the file to {} bytes failed: {}", name(), keep,
                  e.message());
}

namespace {

// The file size of an image with every cluster allocated: header, L1 and L2 tables,
// refcount table and blocks, data (what `qemu-img measure` calls fully allocated).
std::uint64_t fully_allocated_size(const Header& h) {
    const std::uint64_t cs = h.cluster_size();
    const std::uint64_t data = div_round_up(h.size, cs);
    const std::uint64_t l2 = div_round_up(data, h.l2_entries());
    const std::uint64_t l1 =
        div_round_up(l1_entries_for(h.size, h.cluster_bits, h.extended_l2()) * 8, cs);
    const std::uint64_t clusters = 1 + l1 + l2 + data;
    // Refcount blocks count every cluster, themselves and the refcount table included; the
    // fixed point is reached in a few rounds.
    std::uint64_t blocks = 0, table = 0;
    for (int round = 0; round < 8; ++round) {
        blocks = div_round_up(clusters + blocks + table, h.refblock_entries());
        table = div_round_up(blocks * 8, cs);
    }
    return (clusters + blocks + table) * cs;
}

} // namespace

io::Task<std::error_code> Qcow2Node::grow_file() {
    for (;;) {
        const std::uint64_t need = rc_->end_cluster() << cb_;
        const std::uint64_t size = file_->node().size();
        if (size >= need) co_return std::error_code{};
        // Ahead in steps of 1/8 of the file (1 MiB to 64 MiB): growing runs in the loop
        // thread and is a journaled inode update, so once per allocated cluster it was a
        // large part of an allocating write's cost. close() trims what stays unused.
        // With O_DIRECT, preallocated (falloc), not sparse: an O_DIRECT write into a hole
        // makes ext4 and XFS take the inode lock exclusively and io_uring punt the write to
        // a worker thread, which serialised every allocating write (a fleecing image takes
        // one per first-touched cluster); into reserved space it is an overwrite, served
        // inline. Buffered writes do not suffer from holes, so the file stays sparse then.
        const block::Prealloc prealloc =
            file_->node().cache_direct() ? block::Prealloc::falloc : block::Prealloc::off;
        const std::uint64_t step = std::max<std::uint64_t>(
            cs_, std::bit_floor(std::clamp<std::uint64_t>(need / 8, 1u << 20, 64u << 20)));
        std::uint64_t target = align_up(need, step);
        // Reserve nothing past what the image can ever hold: a fleecing image the guest
        // copied whole would otherwise end the job one grow step larger than the disk. A
        // few clusters of slack for bitmaps and a moved refcount table; an image beyond even
        // that (many bitmaps) grows in steps as before.
        const std::uint64_t cap = fully_allocated_size(h_) + 8 * cs_;
        if (need <= cap) target = std::min(target, cap);
        std::error_code e;
        for (int attempt = 0; attempt < 2; ++attempt) {
            if (closing_)
                e = co_await file_->node().truncate(target, prealloc);
            else
                e = co_await file_->truncate(target, prealloc);
            if (!e || target == need) break;
            target = need; // e.g. a block device: no room to grow ahead
        }
        if (e) co_return e;
        if (target > need) grown_ahead_ = true;
    }
}

io::Task<Qcow2Node::Lookup> Qcow2Node::load_l2(std::uint64_t l1_index, bool create,
                                               bool may_commit) {
    for (;;) {
        const std::uint64_t l1e = l1_[l1_index];
        const std::uint64_t off = l1e & offset_mask;
        if (l1e & l1_reserved_mask)
            co_return Lookup{corrupt(fmt::format("L1 entry {} has reserved bits set", l1_index)),
                             nullptr};
        if (off == 0) {
            if (!create) co_return Lookup{{}, nullptr};
            if (cache_.full() && !cache_.evict_one_clean()) {
                if (auto e = co_await commit()) co_return Lookup{e, nullptr};
                continue;
            }
            // Check-then-act without suspension: nobody else can create this table now.
            auto c = rc_->allocate(1);
            if (!c) co_return Lookup{errno_code(ENOSPC), nullptr};
            auto t = std::make_unique<L2Table>();
            t->offset = *c << cb_;
            t->entries.assign(l2_entries(), 0);
            t->dirty = true;
            t->version = 1;
            l1_[l1_index] = t->offset | entry_copied;
            l1_dirty_clusters_.insert(l1_index * 8 / cs_);
            co_return Lookup{{}, cache_.insert(std::move(t))};
        }
        if (L2Table* t = cache_.find(off)) co_return Lookup{{}, t};
        if (loading_.count(off)) {
            co_await load_done_.wait();
            continue;
        }
        if ((off & (cs_ - 1)) || off + cs_ > file_->node().size())
            co_return Lookup{corrupt(fmt::format("L2 table offset {:#x} (L1 entry {}) is unaligned "
                                                 "or past the end of the file",
                                                 off, l1_index)),
                             nullptr};
        // Every slot dirty: writers commit to make room; a reader goes over the bound for a
        // moment instead (it may have no write permission left to commit with).
        if (cache_.full() && !cache_.evict_one_clean() && may_commit) {
            if (auto e = co_await commit()) co_return Lookup{e, nullptr};
            continue;
        }
        loading_.insert(off);
        std::vector<std::byte> buf(cs_);
        const std::error_code e = co_await file_->read(off, buf);
        loading_.erase(off);
        load_done_.notify_all();
        if (e) co_return Lookup{e, nullptr};
        auto t = std::make_unique<L2Table>();
        t->offset = off;
        t->entries.resize(l2_entries());
        for (std::uint64_t i = 0; i < t->entries.size(); ++i)
            t->entries[i] = load_be64(buf.data() + 8 * i);
        co_return Lookup{{}, cache_.insert(std::move(t))};
    }
}

io::Task<Qcow2Node::EntryResult> Qcow2Node::lookup(std::uint64_t g, bool for_write) {
    const std::uint64_t l1i = g / l2_entries();
    if (l1i >= l1_.size()) co_return EntryResult{};
    Lookup l = co_await load_l2(l1i, false, for_write);
    if (l.first) co_return EntryResult{l.first, 0};
    co_return EntryResult{{}, l.second ? l.second->entries[g % l2_entries()] : 0};
}

bool Qcow2Node::peek_entry(std::uint64_t g, std::uint64_t* raw) {
    const std::uint64_t l1i = g / l2_entries();
    if (l1i >= l1_.size()) {
        *raw = 0;
        return true;
    }
    const std::uint64_t l1e = l1_[l1i];
    if (l1e & l1_reserved_mask) return false; // the slow path reports it
    if ((l1e & offset_mask) == 0) {
        *raw = 0;
        return true;
    }
    L2Table* t = cache_.find(l1e & offset_mask);
    if (!t) return false;
    *raw = t->entries[g % l2_entries()];
    return true;
}

bool Qcow2Node::try_set_entry(std::uint64_t g, std::uint64_t raw, Freed why) {
    const std::uint64_t l1i = g / l2_entries();
    if (l1i >= l1_.size()) return false;
    const std::uint64_t off = l1_[l1i] & offset_mask;
    L2Table* t = off && !(l1_[l1i] & l1_reserved_mask) ? cache_.find(off) : nullptr;
    if (!t) return false;
    apply_entry(t, g, raw, why);
    return true;
}

void Qcow2Node::apply_entry(L2Table* t, std::uint64_t g, std::uint64_t raw, Freed why) {
    const std::uint64_t old = t->entries[g % l2_entries()];
    if (old == raw) return;
    t->set(g % l2_entries(), raw);
    // A cluster kept by the new entry (data -> preallocated zero) is not released.
    const L2Entry before = decode_l2(old, cb_, h_.version);
    const L2Entry after = decode_l2(raw, cb_, h_.version);
    const bool kept =
        after.kind == ClusterKind::zero_allocated && after.host_offset == before.host_offset;
    if (!kept) queue_release(old, why);
}

namespace {
struct CompressJob {
    std::uint8_t type;
    std::span<const std::byte> in;
    std::span<std::byte> out;
    std::size_t operator()() const { return compress_cluster(type, in, out); }
};

struct DecompressJob {
    std::uint8_t type;
    const std::vector<std::byte>* in;
    std::span<std::byte> out;
    bool operator()() const { return decompress_cluster(type, *in, out); }
};
} // namespace

io::Task<std::error_code> Qcow2Node::read_compressed(const L2Entry& e,
                                                     std::span<std::byte> cluster) {
    const std::uint64_t fsize = file_->node().size();
    if (e.host_offset >= fsize) co_return corrupt("compressed cluster past the end of the file");
    // The last sector of the stream may run past the end of the file (QEMU does not pad it).
    const std::uint64_t len = std::min(e.compressed_size, fsize - e.host_offset);
    std::vector<std::byte> in(len);
    if (auto err = co_await file_->read(e.host_offset, in)) co_return err;
    // A plain functor over buffers in this frame, built outside the co_await expression
    // (GCC 12 miscompiles temporaries with captures there: double free).
    const DecompressJob job{h_.compression_type, &in, cluster};
    const bool ok = co_await io::offload(job);
    if (!ok)
        co_return corrupt(
            fmt::format("compressed cluster at {:#x} does not decompress", e.host_offset));
    co_return std::error_code{};
}

io::Task<std::error_code> Qcow2Node::read_piece(std::uint64_t pos, std::span<std::byte> out,
                                                std::uint64_t raw) {
    const L2Entry e = decode_l2(raw, cb_, h_.version);
    if (e.reserved_bits)
        co_return corrupt(fmt::format("L2 entry {:#x} has reserved bits set", raw));
    const std::uint64_t in = pos & (cs_ - 1);
    switch (e.kind) {
    case ClusterKind::zero_plain:
    case ClusterKind::zero_allocated:
        std::memset(out.data(), 0, out.size());
        co_return std::error_code{};
    case ClusterKind::unallocated: {
        std::size_t from_backing = 0;
        if (backing_) {
            const std::uint64_t bsize = backing_->node().size();
            if (pos < bsize)
                from_backing =
                    static_cast<std::size_t>(std::min<std::uint64_t>(out.size(), bsize - pos));
        }
        if (from_backing)
            if (auto err = co_await backing_->read(pos, out.first(from_backing))) co_return err;
        std::memset(out.data() + from_backing, 0, out.size() - from_backing);
        co_return std::error_code{};
    }
    case ClusterKind::normal:
        if (e.misaligned || e.host_offset + in + out.size() > file_->node().size())
            co_return corrupt(fmt::format("data cluster offset {:#x} is invalid", e.host_offset));
        co_return co_await file_->read(e.host_offset + in, out);
    case ClusterKind::compressed: {
        std::vector<std::byte> cluster(cs_);
        if (auto err = co_await read_compressed(e, cluster)) co_return err;
        std::memcpy(out.data(), cluster.data() + in, out.size());
        co_return std::error_code{};
    }
    }
    co_return errno_code(EIO);
}

io::Task<std::error_code> Qcow2Node::do_read(std::uint64_t offset, std::span<std::byte> buf,
                                             block::ReqFlags) {
    const std::uint64_t lo = align_down(offset, cs_);
    const std::uint64_t hi = align_up(offset + buf.size(), cs_);
    auto guard = co_await locks_.lock(lo, hi - lo, block::RangeLockTable::Mode::shared);
    // Contiguous normal clusters are read with one request.
    std::uint64_t run_host = 0, run_len = 0, run_buf = 0;
    std::uint64_t done = 0;
    while (done < buf.size()) {
        const std::uint64_t pos = offset + done;
        const std::uint64_t n = std::min<std::uint64_t>(buf.size() - done, cs_ - (pos & (cs_ - 1)));
        EntryResult r;
        if (!peek_entry(pos >> cb_, &r.raw)) r = co_await lookup(pos >> cb_);
        if (r.error) co_return r.error;
        const L2Entry e = decode_l2(r.raw, cb_, h_.version);
        const std::uint64_t host = e.host_offset + (pos & (cs_ - 1));
        const bool plain = e.kind == ClusterKind::normal && !e.reserved_bits && !e.misaligned &&
                           host + n <= file_->node().size();
        if (plain && run_len && run_host + run_len == host) {
            run_len += n;
        } else {
            if (run_len)
                if (auto err = co_await file_->read(run_host, buf.subspan(run_buf, run_len)))
                    co_return err;
            run_len = 0;
            if (plain) {
                run_host = host;
                run_len = n;
                run_buf = done;
            } else if (!e.reserved_bits && (e.kind == ClusterKind::zero_plain ||
                                            e.kind == ClusterKind::zero_allocated ||
                                            (e.kind == ClusterKind::unallocated &&
                                             (!backing_ || pos >= backing_->node().size())))) {
                // Zeroes inline: no await per cluster over long holes.
                std::memset(buf.data() + done, 0, n);
            } else if (auto err = co_await read_piece(pos, buf.subspan(done, n), r.raw)) {
                co_return err;
            }
        }
        done += n;
    }
    if (run_len)
        if (auto err = co_await file_->read(run_host, buf.subspan(run_buf, run_len))) co_return err;
    co_return std::error_code{};
}

void Qcow2Node::queue_release(std::uint64_t old_raw, Freed why) {
    const L2Entry e = decode_l2(old_raw, cb_, h_.version);
    if (e.reserved_bits) return; // never trust a corrupt entry with a refcount change
    // QEMU passes down what a guest request frees, not what an overwrite frees. Only when
    // the file does something with a discard (a file node with discard=unmap).
    const bool to_file =
        why == Freed::by_request && pass_discard_request_ && file_->node().caps().trim;
    auto add = [&](std::uint64_t cluster) {
        pending_release_.push_back(cluster);
        if (to_file) pending_file_discard_.push_back(cluster);
    };
    if (e.kind == ClusterKind::normal || e.kind == ClusterKind::zero_allocated) {
        if (!e.misaligned) add(e.host_offset >> cb_);
    } else if (e.kind == ClusterKind::compressed) {
        for (std::uint64_t c = compressed_first_cluster(e, cb_);
             c <= compressed_last_cluster(e, cb_); ++c)
            add(c); // a host cluster shared with other streams keeps a refcount: not discarded
    }
}

io::Task<std::error_code> Qcow2Node::set_entry(std::uint64_t g, std::uint64_t raw, Freed why) {
    if (try_set_entry(g, raw, why)) co_return std::error_code{};
    Lookup l = co_await load_l2(g / l2_entries(), true, true);
    if (l.first) co_return l.first;
    apply_entry(l.second, g, raw, why); // no suspension since the lookup: the pointer is valid
    co_return std::error_code{};
}

bool Qcow2Node::writable_in_place(std::uint64_t raw) const {
    const L2Entry e = decode_l2(raw, cb_, h_.version);
    return e.kind == ClusterKind::normal && e.copied && !e.misaligned && !e.reserved_bits;
}

bool Qcow2Node::reads_as_zeroes(std::uint64_t g, std::uint64_t raw) const {
    const L2Entry e = decode_l2(raw, cb_, h_.version);
    return e.kind == ClusterKind::zero_plain || e.kind == ClusterKind::zero_allocated ||
           (e.kind == ClusterKind::unallocated &&
            (!backing_ || (g << cb_) >= backing_->node().size()));
}

io::Task<std::error_code> Qcow2Node::write_piece(std::uint64_t pos,
                                                 std::span<const std::byte> data) {
    const std::uint64_t g = pos >> cb_;
    EntryResult r = co_await lookup(g, true);
    if (r.error) co_return r.error;
    if (decode_l2(r.raw, cb_, h_.version).reserved_bits)
        co_return corrupt(fmt::format("L2 entry {:#x} has reserved bits set", r.raw));
    if (writable_in_place(r.raw))
        co_return co_await file_->write(
            decode_l2(r.raw, cb_, h_.version).host_offset + (pos & (cs_ - 1)), data);
    std::vector<std::uint64_t> old{r.raw};
    co_return co_await write_allocating(pos, data, std::move(old));
}

// Allocating write: new clusters, written whole (unless they are fresh holes and the old
// content is zeroes: then only the new bytes), then the L2 entries (in memory; they reach
// the disk only in a commit, after the data and the refcounts).
io::Task<std::error_code> Qcow2Node::write_allocating(std::uint64_t pos,
                                                      std::span<const std::byte> data,
                                                      std::vector<std::uint64_t> old) {
    const std::uint64_t g0 = pos >> cb_;
    const std::uint64_t k = old.size();
    const std::uint64_t in0 = pos & (cs_ - 1);
    const std::uint64_t end = pos + data.size();
    const std::uint64_t tail_in = end - ((g0 + k - 1) << cb_); // 1..cs_
    // Clusters at or past this were never allocated in this session nor part of the file
    // at open: holes that read as zeroes.
    const std::uint64_t untouched = std::max(open_file_size_, rc_->end_cluster() << cb_);
    auto c = rc_->allocate(k);
    if (!c) co_return errno_code(ENOSPC);
    const std::uint64_t host0 = *c << cb_;
    const std::uint64_t host_last = host0 + (k - 1) * cs_;
    const bool head = in0 != 0 && !(host0 >= untouched && reads_as_zeroes(g0, old[0]));
    const bool tail =
        tail_in != cs_ && !(host_last >= untouched && reads_as_zeroes(g0 + k - 1, old[k - 1]));
    std::error_code err = co_await grow_file();
    if (!err && !head && !tail) {
        err = co_await file_->write(host0 + in0, data);
    } else if (!err) {
        // One buffer from the first byte to write to the last, old content merged in.
        const std::uint64_t lo = head ? 0 : in0;
        const std::uint64_t hi = tail ? k * cs_ : (k - 1) * cs_ + tail_in;
        std::vector<std::byte> buf(hi - lo);
        if (head && tail && k == 1) {
            err = co_await read_piece(g0 << cb_, buf, old[0]);
        } else {
            if (head) err = co_await read_piece(g0 << cb_, std::span(buf).first(in0), old[0]);
            if (!err && tail)
                err = co_await read_piece(end, std::span(buf).last(cs_ - tail_in), old[k - 1]);
        }
        if (!err) {
            std::memcpy(buf.data() + (in0 - lo), data.data(), data.size());
            err = co_await file_->write(host0 + lo, buf);
        }
    }
    std::uint64_t mapped = 0;
    for (; !err && mapped < k; ++mapped) {
        const std::uint64_t raw = (host0 + mapped * cs_) | entry_copied;
        if (!try_set_entry(g0 + mapped, raw)) err = co_await set_entry(g0 + mapped, raw);
        if (err) break;
    }
    if (err) {
        for (std::uint64_t i = mapped; i < k; ++i)
            rc_->release(*c + i); // nothing refers to these
        co_return err;
    }
    co_return std::error_code{};
}

// Compressed clusters get a host cluster of their own (no packing of several into one),
// written only as far as the compressed stream goes, so the rest stays a hole.
io::Task<std::error_code> Qcow2Node::write_compressed(std::uint64_t pos,
                                                      std::span<const std::byte> data) {
    const std::uint32_t align = std::max<std::uint32_t>(512, limits_.request_alignment);
    std::vector<std::byte> packed(cs_ - align); // must save at least one sector
    const CompressJob job{h_.compression_type, data, packed};
    const std::size_t n = co_await io::offload(job);
    if (n == 0) co_return co_await write_piece(pos, data);
    packed.resize(align_up(std::uint64_t{n}, std::uint64_t{align}), std::byte{0});
    auto c = rc_->allocate(1);
    if (!c) co_return errno_code(ENOSPC);
    const std::uint64_t host = *c << cb_;
    std::error_code err = co_await grow_file();
    if (!err) err = co_await file_->write(host, packed);
    if (err) {
        rc_->release(*c);
        co_return err;
    }
    co_return co_await set_entry(pos >> cb_, encode_compressed_l2(host, n, cb_));
}

io::Task<std::error_code> Qcow2Node::do_write(std::uint64_t offset, std::span<const std::byte> buf,
                                              block::ReqFlags flags) {
    {
        const std::uint64_t lo = align_down(offset, cs_);
        const std::uint64_t hi = align_up(offset + buf.size(), cs_);
        auto guard = co_await locks_.lock(lo, hi - lo, block::RangeLockTable::Mode::exclusive);
        // Consecutive clusters written in place at contiguous host offsets go as one
        // request; consecutive clusters that need new ones get one contiguous run (and
        // one request). Both runs are pending until a cluster does not extend them.
        std::uint64_t place_host = 0, place_len = 0, place_buf = 0;
        std::vector<std::uint64_t> alloc_old;
        std::uint64_t alloc_buf = 0, alloc_len = 0;
        for (std::uint64_t done = 0; done <= buf.size();) {
            const bool last = done == buf.size();
            const std::uint64_t pos = offset + done;
            const std::uint64_t n =
                last ? 0 : std::min<std::uint64_t>(buf.size() - done, cs_ - (pos & (cs_ - 1)));
            const bool compressed = !last && (flags & block::req_write_compressed) && n == cs_;
            EntryResult r;
            if (!last && !compressed && !peek_entry(pos >> cb_, &r.raw))
                r = co_await lookup(pos >> cb_, true);
            if (r.error) co_return r.error;
            const L2Entry e = decode_l2(r.raw, cb_, h_.version);
            if (!last && !compressed && e.reserved_bits)
                co_return corrupt(fmt::format("L2 entry {:#x} has reserved bits set", r.raw));
            const bool in_place = !last && !compressed && writable_in_place(r.raw);
            const bool allocating = !last && !compressed && !in_place;
            const std::uint64_t host = e.host_offset + (pos & (cs_ - 1));
            if (place_len && !(in_place && place_host + place_len == host)) {
                if (auto err = co_await file_->write(place_host, buf.subspan(place_buf, place_len)))
                    co_return err;
                place_len = 0;
            }
            if (!alloc_old.empty() && !allocating) {
                if (auto err = co_await write_allocating(offset + alloc_buf,
                                                         buf.subspan(alloc_buf, alloc_len),
                                                         std::move(alloc_old)))
                    co_return err;
                alloc_old.clear();
                alloc_len = 0;
            }
            if (last) break;
            if (compressed) {
                if (auto err = co_await write_compressed(pos, buf.subspan(done, n))) co_return err;
            } else if (in_place) {
                if (place_len == 0) {
                    place_host = host;
                    place_buf = done;
                }
                place_len += n;
            } else {
                if (alloc_old.empty()) alloc_buf = done;
                alloc_old.push_back(r.raw);
                alloc_len += n;
                // A run must fit in free space between refcount blocks, which new blocks
                // interrupt every refblock_entries() clusters.
                if (alloc_old.size() >= std::max<std::uint64_t>(1, h_.refblock_entries() / 4)) {
                    if (auto err = co_await write_allocating(offset + alloc_buf,
                                                             buf.subspan(alloc_buf, alloc_len),
                                                             std::move(alloc_old)))
                        co_return err;
                    alloc_old.clear();
                    alloc_len = 0;
                }
            }
            done += n;
        }
    }
    if (flags & block::req_fua) co_return co_await commit();
    co_return std::error_code{};
}

io::Task<std::error_code> Qcow2Node::do_write_zeroes(std::uint64_t offset, std::uint64_t length,
                                                     block::ReqFlags flags) {
    const bool partial = (offset & (cs_ - 1)) || ((offset + length) & (cs_ - 1));
    if (partial && (flags & block::req_no_fallback)) co_return errno_code(ENOTSUP);
    {
        const std::uint64_t lo = align_down(offset, cs_);
        const std::uint64_t hi = align_up(offset + length, cs_);
        auto guard = co_await locks_.lock(lo, hi - lo, block::RangeLockTable::Mode::exclusive);
        std::vector<std::byte> zeroes;
        for (std::uint64_t done = 0; done < length;) {
            const std::uint64_t pos = offset + done;
            const std::uint64_t n = std::min<std::uint64_t>(length - done, cs_ - (pos & (cs_ - 1)));
            done += n;
            if (n < cs_) {
                // Part of a cluster: write real zeroes.
                zeroes.assign(n, std::byte{0});
                if (auto e = co_await write_piece(pos, zeroes)) co_return e;
                continue;
            }
            const std::uint64_t g = pos >> cb_;
            EntryResult r;
            if (!peek_entry(g, &r.raw)) r = co_await lookup(g, true);
            if (r.error) co_return r.error;
            const L2Entry e = decode_l2(r.raw, cb_, h_.version);
            std::uint64_t raw = entry_zero;
            if (e.kind == ClusterKind::zero_plain) continue;
            if (e.kind == ClusterKind::zero_allocated && !(flags & block::req_may_unmap)) continue;
            // Without unmap an owned cluster stays allocated (preallocated zero cluster).
            if (!(flags & block::req_may_unmap) && e.kind == ClusterKind::normal && e.copied &&
                !e.misaligned)
                raw = e.host_offset | entry_copied | entry_zero;
            if (try_set_entry(g, raw, Freed::by_request)) continue;
            if (auto err = co_await set_entry(g, raw, Freed::by_request)) co_return err;
        }
    }
    if (flags & block::req_fua) co_return co_await commit();
    co_return co_await commit_if_releases_wait();
}

io::Task<std::error_code> Qcow2Node::do_discard(std::uint64_t offset, std::uint64_t length) {
    if (!discard_unmap_) co_return std::error_code{};
    const std::uint64_t lo = align_up(offset, cs_);
    const std::uint64_t hi = align_down(offset + length, cs_);
    if (hi <= lo) co_return std::error_code{}; // advisory: partial clusters are left alone
    {
        // Exclusive: waits for reads that may still use the clusters being released.
        auto guard = co_await locks_.lock(lo, hi - lo, block::RangeLockTable::Mode::exclusive);
        for (std::uint64_t pos = lo; pos < hi; pos += cs_) {
            const std::uint64_t g = pos >> cb_;
            EntryResult r;
            if (!peek_entry(g, &r.raw)) r = co_await lookup(g, true);
            if (r.error) co_return r.error;
            // With a backing file the cluster must keep reading as zeroes, not fall through.
            const std::uint64_t raw = backing_ ? entry_zero : 0;
            if (r.raw == 0 && !backing_) continue;
            if (try_set_entry(g, raw, Freed::by_request)) continue;
            if (auto err = co_await set_entry(g, raw, Freed::by_request)) co_return err;
        }
    }
    co_return co_await commit_if_releases_wait();
}

io::Task<std::error_code> Qcow2Node::commit_if_releases_wait() {
    // Freed clusters only go back to the file in a commit (after the L2 entries without
    // them are durable, see qcow2_commit.cpp). Without a flush from the user that would be
    // every 4096 releases; clusters the file takes back (a fleecing image shrinking under
    // a discard-source backup) go once 1/64 of the file's size (1 MiB to 16 MiB) of them
    // waits: the image follows the discards within that, and a commit (two flushes of the
    // file, unless cache.no-flush) comes once per that many bytes discarded, not per
    // request (a 64 KiB-chunk backup discards hundreds of times a second).
    // A discard arriving while a commit runs leaves its clusters to the next trigger, or
    // to a second round of the request that started that commit (bounded, so no request
    // keeps committing for others).
    const std::uint64_t batch_bytes =
        std::clamp<std::uint64_t>(file_->node().size() / 64, 1u << 20, 16u << 20);
    const std::uint64_t batch = std::max<std::uint64_t>(1, batch_bytes >> cb_);
    for (int round = 0; round < 2; ++round) {
        if (pending_release_.size() <= 4096 &&
            (pending_file_discard_.size() < batch || commit_mutex_.locked()))
            break;
        if (auto e = co_await commit()) co_return e;
    }
    co_return std::error_code{};
}

io::Task<std::error_code> Qcow2Node::do_flush() {
    co_return co_await commit();
}

io::Task<block::BlockStatus> Qcow2Node::do_block_status(std::uint64_t offset,
                                                        std::uint64_t length) {
    block::BlockStatus s;
    // Classify the first cluster, then extend over following clusters of the same class
    // (bounded, so one query costs at most one L2 table).
    auto classify = [this](std::uint64_t raw) {
        const L2Entry e = decode_l2(raw, cb_, h_.version);
        switch (e.kind) {
        case ClusterKind::normal:
        case ClusterKind::compressed:
            return 1;
        case ClusterKind::zero_plain:
        case ClusterKind::zero_allocated:
            return 2;
        case ClusterKind::unallocated:
            return 0;
        }
        return 0;
    };
    const std::uint64_t end = offset + length;
    EntryResult first = co_await lookup(offset >> cb_);
    if (first.error) {
        s.error = first.error;
        co_return s;
    }
    const int cls = classify(first.raw);
    // Data in normal clusters also reports its host offset (img map); the run then only
    // extends over host-contiguous normal clusters. Compressed data has no such offset.
    const bool normal = decode_l2(first.raw, cb_, h_.version).kind == ClusterKind::normal;
    std::uint64_t next_host = decode_l2(first.raw, cb_, h_.version).host_offset + cs_;
    std::uint64_t pos = std::min(end, align_down(offset, cs_) + cs_);
    for (int i = 0; pos < end && i < 4096; ++i) {
        // Only what is cached: no suspension (and no deep await chain) per cluster.
        std::uint64_t raw = 0;
        if (!peek_entry(pos >> cb_, &raw) || classify(raw) != cls) break;
        if (cls == 1) {
            const L2Entry e = decode_l2(raw, cb_, h_.version);
            if ((e.kind == ClusterKind::normal) != normal) break;
            if (normal && e.host_offset != next_host) break;
            next_host += cs_;
        }
        pos = std::min(end, pos + cs_);
    }
    s.length = pos - offset;
    s.depth = 1;
    if (cls == 1) {
        s.flags = block::status_data | block::status_allocated;
        if (normal)
            s.offset = decode_l2(first.raw, cb_, h_.version).host_offset + (offset & (cs_ - 1));
    } else if (cls == 2) {
        s.flags = block::status_zero | block::status_allocated;
    } else if (backing_ && offset < backing_->node().size()) {
        const std::uint64_t blen = std::min(s.length, backing_->node().size() - offset);
        block::BlockStatus b = co_await backing_->block_status(offset, blen);
        if (b.error) co_return b;
        s.length = b.length;
        s.flags = b.flags & ~block::status_allocated;
        s.depth = b.depth == 0 ? 0 : b.depth + 1;
        s.offset = b.offset;
    } else {
        s.flags = block::status_zero;
        s.depth = 0;
    }
    co_return s;
}

} // namespace fleece::nodes::qcow2
