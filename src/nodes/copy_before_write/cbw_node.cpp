#include "nodes/copy_before_write/cbw_node.hpp"

#include "block/graph.hpp"
#include "util/align.hpp"

#include <algorithm>
#include <fmt/format.h>
#include <string_view>
#include <tuple>

namespace fleece::nodes {

using namespace fleece::block;

CbwNode::CbwNode(std::string name, Node& file, Node& target, CbwConfig cfg)
    : FilterNode(std::move(name), "copy-before-write"), cfg_(cfg) {
    set_file(add_child(file, ChildRole::file, "file"));
    target_ = &add_child(target, ChildRole::target, "target");
    refresh_from_children();
    const std::uint64_t cluster = BlockCopy::cluster_size_for(target, cfg_.min_cluster_size);
    // Fleecing (target's backing is our file): copies do not change what the target reads.
    bcs_ = std::make_unique<BlockCopy>(this->file(), *target_, cluster, is_fleecing());
    if (cfg_.bitmap) {
        start_from_bitmap(*cfg_.bitmap);
        cfg_.bitmap = nullptr;
    } else {
        access_ = Bitmap(bcs_->copy_bitmap().size());
        access_.set_all();
    }
    done_ = Bitmap(bcs_->copy_bitmap().size());
    tracked_source_ = &this->file().node(); // see Node::track_reads and copy_before_write()
    tracked_source_->track_reads(true);
}

CbwNode::~CbwNode() = default;

void CbwNode::start_from_bitmap(const DirtyBitmap& bitmap) {
    // Clusters clean in the user's bitmap did not change since the last backup: neither
    // copied nor readable. A coarser cluster rounds the dirty areas outwards.
    DirtyBitmap clusters("", size(), bcs_->cluster_size());
    clusters.merge(bitmap);
    bcs_->copy_bitmap() = clusters.copy_bits();
    access_ = clusters.copy_bits();
}

bool CbwNode::set_bitmap(const DirtyBitmap& bitmap, CbwCopySets* before) {
    // Once used, done_ and the copies in the target belong to the old sets. A backup job's
    // own filter serves the job's copy set, which is the job's to choose.
    if (touched_ || snapshot_error_) return false;
    for (const Child* p : parents())
        if (std::string_view(p->parent().parent_type()) == "block-job") return false;
    *before = CbwCopySets{bcs_->copy_bitmap(), access_};
    start_from_bitmap(bitmap);
    return true;
}

void CbwNode::restore_copy_sets(CbwCopySets sets) {
    bcs_->copy_bitmap() = std::move(sets.copy);
    access_ = std::move(sets.access);
}

bool CbwNode::is_fleecing() const {
    const Child* backing = target_->node().child("backing");
    return backing && &backing->node() == &file().node();
}

PermPair CbwNode::child_perms(const Child& c, PermSet parent_perm, PermSet parent_shared) const {
    if (&c == target_) {
        // Resize is never shared: the copy bitmap fixed the length.
        // A fleecing image (backed by our file) is the snapshot itself: our copies leave
        // what it reads unchanged, and any other writer would change the snapshot.
        if (is_fleecing()) return {perm_write_unchanged, perm_all & ~(perm_write | perm_resize)};
        // Otherwise we write old data there; sharing writes lets it sit in a written chain.
        return {perm_write, perm_all & ~perm_resize};
    }
    PermPair p = filter_child_perms(parent_perm, parent_shared);
    // A parentless filter must not conflict with the parents it is about to take over.
    // With parents, nobody else may change the source behind our back.
    if (!parents().empty()) {
        p.perm |= perm_consistent_read;
        p.shared &= ~(perm_write | perm_resize);
    }
    return p;
}

io::Task<void> CbwNode::close() {
    co_await bcs_->close();
    if (tracked_source_) tracked_source_->track_reads(false);
    tracked_source_ = nullptr;
}

io::Task<std::error_code> CbwNode::copy_before_write(std::uint64_t offset, std::uint64_t length) {
    touched_ = true;
    if (snapshot_error_)
        co_return std::error_code{}; // the snapshot is gone: no more stalls for the guest
    const std::uint64_t c = bcs_->cluster_size();
    const std::uint64_t start = align_down(offset, c);
    const std::uint64_t end = std::min(align_up(offset + length, c), align_up(size(), c));
    CopyOptions opts;
    opts.ignore_ratelimit = true;
    opts.timeout = cfg_.timeout;
    opts.owner = this; // a timed-out copy keeps us busy for drain until it ends
    // Only requests that find something still to copy count (the rest pass at once).
    const bool copies = !bcs_->copy_bitmap().none_set(start / c, div_round_up(end, c) - start / c);
    const auto began =
        copies ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
    // Copy-ahead (docs/adr/0003-copy-ahead-in-copy-before-write.md): a request that has to
    // copy also takes its windows' other uncopied clusters along, one large read and write
    // instead of one small random copy for each later first write. They are best effort:
    // when that copy fails (they are dirty again, copied by whoever needs them next), only
    // the request's own clusters decide the outcome, as without copy-ahead.
    // With cbw-timeout the whole request, copy-ahead and retry together, waits at most that
    // long: a copy that timed out is not retried, and a retry gets only the time left.
    std::uint64_t copied_start = start, copied_end = end;
    if (copies) std::tie(copied_start, copied_end) = copy_ahead_range(start, end);
    std::error_code ec = co_await bcs_->copy(copied_start, copied_end - copied_start, opts);
    if (ec && (copied_start != start || copied_end != end)) {
        copied_start = start;
        copied_end = end;
        bool retry = true;
        if (cfg_.timeout.count() != 0) {
            opts.timeout = cfg_.timeout - (std::chrono::steady_clock::now() - began);
            retry = ec != errno_code(ETIMEDOUT) && opts.timeout.count() > 0;
        }
        if (retry) ec = co_await bcs_->copy(start, end - start, opts);
    }
    if (copies) {
        const auto waited =
            static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                           std::chrono::steady_clock::now() - began)
                                           .count());
        ++stats_.requests;
        if (ec) ++stats_.errors;
        stats_.total_ns += waited;
        stats_.max_ns = std::max(stats_.max_ns, waited);
    }
    if (ec) {
        if (cfg_.on_error == OnCbwError::break_guest_write) co_return ec;
        if (!snapshot_error_) snapshot_error_ = ec;
    } else {
        done_.set_range(copied_start / c, (copied_end - copied_start) / c);
    }
    // Snapshot reads served from the source over this range must finish first.
    co_await source_reads_.wait_idle(start, end - start);
    // The seed's scheme: the fleecing image reads uncopied clusters from our file directly.
    // Such a read that began before the copy landed must not see the guest's write.
    if (is_fleecing()) co_await file().node().wait_reads_idle(start, end - start);
    co_return std::error_code{};
}

std::pair<std::uint64_t, std::uint64_t> CbwNode::copy_ahead_range(std::uint64_t start,
                                                                  std::uint64_t end) const {
    const std::uint64_t c = bcs_->cluster_size();
    const std::uint64_t w = cfg_.copy_window;
    if (w <= c) return {start, end};
    const std::uint64_t limit = align_up(size(), c);
    // A window counts as written in when a write already copied one of its clusters (done_),
    // which random and sequential writers both do long before they finish the window.
    auto written_in = [&](std::uint64_t w_start) {
        const std::uint64_t w_end = std::min(w_start + w, limit);
        return !done_.none_set(w_start / c, div_round_up(w_end, c) - w_start / c);
    };
    const std::uint64_t left = align_down(start, w);
    const std::uint64_t right = align_down(end - 1, w);
    if (left < start && written_in(left)) start = left;
    if (right + w > end && written_in(right)) end = std::min(right + w, limit);
    return {start, end};
}

io::Task<std::error_code> CbwNode::do_write(std::uint64_t offset, std::span<const std::byte> buf,
                                            ReqFlags flags) {
    if (!(flags & req_write_unchanged)) {
        if (auto ec = co_await copy_before_write(offset, buf.size())) co_return ec;
    }
    co_return co_await file().write(offset, buf, flags);
}

io::Task<std::error_code> CbwNode::do_write_zeroes(std::uint64_t offset, std::uint64_t length,
                                                   ReqFlags flags) {
    if (!(flags & req_write_unchanged)) {
        if (auto ec = co_await copy_before_write(offset, length)) co_return ec;
    }
    co_return co_await file().write_zeroes(offset, length, flags);
}

io::Task<std::error_code> CbwNode::do_discard(std::uint64_t offset, std::uint64_t length) {
    // A discard changes what the source reads as, so the old data must be saved first.
    if (auto ec = co_await copy_before_write(offset, length)) co_return ec;
    co_return co_await file().discard(offset, length);
}

std::error_code CbwNode::check_access(std::uint64_t offset, std::uint64_t length) const {
    if (snapshot_error_) return errno_code(EACCES);
    const std::uint64_t c = bcs_->cluster_size();
    const std::uint64_t first = offset / c;
    const std::uint64_t last = div_round_up(offset + length, c);
    if (!access_.all_set(first, last - first)) return errno_code(EACCES);
    return {};
}

std::uint64_t CbwNode::uniform_prefix(std::uint64_t offset, std::uint64_t end, bool* done) const {
    const std::uint64_t c = bcs_->cluster_size();
    const std::uint64_t bit = offset / c;
    *done = done_.get(bit);
    const std::uint64_t end_bit = div_round_up(end, c);
    const std::uint64_t next =
        *done ? done_.find_next_clear(bit, end_bit) : done_.find_next_set(bit, end_bit);
    return std::min(end, next * c) - offset;
}

std::error_code CbwNode::readable_uniform_prefix(std::uint64_t offset, std::uint64_t end,
                                                 bool* done, std::uint64_t* length) const {
    if (auto ec = check_access(offset, 1)) return ec;
    const std::uint64_t c = bcs_->cluster_size();
    const std::uint64_t readable =
        std::min(end, access_.find_next_clear(offset / c, div_round_up(end, c)) * c);
    *length = uniform_prefix(offset, readable, done);
    return {};
}

io::Task<CbwNode::SnapshotPiece> CbwNode::lock_snapshot_piece(std::uint64_t offset,
                                                              std::uint64_t end) {
    for (;;) {
        SnapshotPiece p;
        if ((p.error = readable_uniform_prefix(offset, end, &p.done, &p.length))) co_return p;
        RangeLockTable& readers = p.done ? target_reads_ : source_reads_;
        p.guard = co_await readers.lock(offset, p.length, RangeLockTable::Mode::shared);
        // The lock may have waited behind a guest write or a snapshot discard: decide again
        // under it. From here to the caller's child request there is no await, so a guest
        // write that has not yet marked these clusters done will wait for us before changing
        // the source.
        bool done_now = false;
        std::uint64_t length_now = 0;
        if ((p.error = readable_uniform_prefix(offset, end, &done_now, &length_now))) co_return p;
        // Copied while we waited (clusters only ever become done): the source lock is the
        // wrong one now, so decide again.
        if (done_now != p.done) continue;
        p.length = std::min(p.length, length_now);
        co_return p;
    }
}

io::Task<std::error_code> CbwNode::snapshot_read(std::uint64_t offset, std::span<std::byte> buf) {
    touched_ = true;
    std::uint64_t pos = offset;
    const std::uint64_t end = offset + buf.size();
    while (pos < end) {
        // All of the range must be readable, not only a prefix.
        if (auto ec = check_access(pos, end - pos)) co_return ec;
        SnapshotPiece p = co_await lock_snapshot_piece(pos, end);
        if (p.error) co_return p.error;
        auto piece = buf.subspan(pos - offset, p.length);
        std::error_code ec;
        if (p.done)
            ec = co_await target_->read(pos, piece);
        else
            ec = co_await file().read(pos, piece);
        p.guard.release();
        if (ec) co_return ec;
        pos += p.length;
    }
    // A snapshot that broke while we read cannot vouch for the data.
    if (snapshot_error_) co_return errno_code(EACCES);
    co_return std::error_code{};
}

io::Task<BlockStatus> CbwNode::snapshot_block_status(std::uint64_t offset, std::uint64_t length) {
    touched_ = true;
    BlockStatus st;
    const std::uint64_t end = std::min(offset + length, size());
    if (offset >= end) {
        st.error = errno_code(EINVAL);
        co_return st;
    }
    // Only the first cluster decides access; the answer covers the readable prefix. Under
    // the reader lock, as a read: the answer must describe the point in time, and a child's
    // block status may suspend (a qcow2 disk loading an L2 table). Without the lock a guest
    // write could copy the cluster and then zero it in the source meanwhile, and "zero"
    // would reach the backup job, which writes zeroes to its target without reading (the
    // push backup simulation found this).
    SnapshotPiece p = co_await lock_snapshot_piece(offset, end);
    if (p.error) {
        st.error = p.error;
        co_return st;
    }
    if (p.done) {
        st = co_await target_->block_status(offset, p.length);
        // The copied data is ours, whatever the target says.
        if (!st.error) st.flags |= status_allocated;
    } else {
        st = co_await file().block_status(offset, p.length);
    }
    co_return st;
}

io::Task<std::error_code> CbwNode::snapshot_discard(std::uint64_t offset, std::uint64_t length) {
    touched_ = true;
    if (snapshot_error_) co_return errno_code(EACCES);
    const std::uint64_t c = bcs_->cluster_size();
    // Inward to whole clusters: a partial cluster may still be read, so it stays.
    const std::uint64_t first = div_round_up(offset, c);
    const std::uint64_t end_bit =
        offset + length >= size() ? access_.size() : (offset + length) / c;
    if (end_bit <= first) co_return std::error_code{};
    access_.reset_range(first, end_bit - first);
    bcs_->reset(first * c, std::min(end_bit * c, size()) - first * c);
    const std::uint64_t start = first * c;
    const std::uint64_t stop = std::min(end_bit * c, size());
    // Reads that started before the discard may still be using the target data.
    co_await source_reads_.wait_idle(start, stop - start);
    co_await target_reads_.wait_idle(start, stop - start);
    // A fleecing image (backed by our file) is a target we hold with write-unchanged only,
    // which a discard is not, so through the edge it failed (EPERM, ignored: advisory) and
    // a discard-source backup released nothing. It is ours to release: the range has just
    // left the snapshot (unreadable through us, never copied again), and nobody else may
    // write the image. QEMU's filter holds write on its target and discards it too.
    if (is_fleecing()) co_return co_await target_->node().discard(start, stop - start);
    co_return co_await target_->discard(start, stop - start);
}

// BlockDirtyBitmap {node, name}, QEMU's messages.
Result<const DirtyBitmap*> find_cbw_bitmap(const Graph& graph, const nlohmann::json& ref,
                                           std::uint64_t source_size) {
    if (!ref.is_object())
        return make_error("Invalid parameter type for 'bitmap', expected: object");
    for (const char* key : {"node", "name"})
        if (!ref.contains(key) || !ref[key].is_string())
            return make_error(fmt::format("Parameter 'bitmap.{}' is missing", key));
    const std::string node = ref["node"].get<std::string>();
    const std::string name = ref["name"].get<std::string>();
    const Node* n = graph.find(node);
    if (!n) return make_error(fmt::format("Node '{}' not found", node));
    const DirtyBitmap* b = n->dirty_bitmaps().find(name);
    if (!b) return make_error(fmt::format("Dirty bitmap '{}' not found", name));
    if (Status st = check_bitmap(*b, bitmap_check_inconsistent); !st) return st.error();
    if (b->disk_size() != source_size)
        return make_error(fmt::format("Bitmap '{}' size ({}) does not match the source size ({})",
                                      b->name(), b->disk_size(), source_size));
    return b;
}

namespace {

io::Task<Result<std::unique_ptr<Node>>> open_cbw(OpenContext& ctx, std::string node_name,
                                                 const CommonOptions&, OptionReader& opts) {
    CbwConfig cfg;
    cfg.copy_window = default_copy_window;
    const nlohmann::json* file_ref = opts.required_raw("file");
    const nlohmann::json* target_ref = opts.required_raw("target");
    const nlohmann::json* bitmap_ref = opts.raw("bitmap");
    if (auto e = opts.choice("on-cbw-error", {"break-guest-write", "break-snapshot"}))
        cfg.on_error =
            *e == "break-snapshot" ? OnCbwError::break_snapshot : OnCbwError::break_guest_write;
    // Seconds as a 64-bit nanosecond count: QEMU <= 9.0 wrapped values >= 5 s in 32 bits.
    if (auto t = opts.uint("cbw-timeout")) {
        if (*t > 1'000'000'000ull) co_return make_error("Parameter 'cbw-timeout' is too large");
        cfg.timeout = std::chrono::seconds(*t);
    }
    if (auto m = opts.uint("min-cluster-size")) {
        if (*m != 0 && !is_power_of_two(*m))
            co_return make_error("min-cluster-size needs to be a power of 2");
        if (*m > (1ull << 30)) co_return make_error("min-cluster-size must not exceed 1 GiB");
        cfg.min_cluster_size = *m;
    }
    if (auto w = opts.uint("x-copy-window")) {
        if (*w != 0 && !is_power_of_two(*w))
            co_return make_error("x-copy-window needs to be 0 or a power of 2");
        if (*w > (1ull << 30)) co_return make_error("x-copy-window must not exceed 1 GiB");
        cfg.copy_window = *w;
    }
    if (Status st = opts.finish(); !st) co_return st.error();
    auto file = co_await resolve_ref(ctx, *file_ref, "file");
    if (!file) co_return file.error();
    auto target = co_await resolve_ref(ctx, *target_ref, "target");
    if (!target) co_return target.error();
    if ((*file)->size() != (*target)->size())
        co_return make_error(fmt::format("Source and target image have different sizes ({} vs {})",
                                         (*file)->size(), (*target)->size()));
    if (bitmap_ref) {
        auto bitmap = find_cbw_bitmap(ctx.graph, *bitmap_ref, (*file)->size());
        if (!bitmap) co_return bitmap.error();
        cfg.bitmap = *bitmap;
    }
    co_return std::unique_ptr<Node>(std::make_unique<CbwNode>(node_name, **file, **target, cfg));
}

} // namespace

DriverSpec copy_before_write_driver() {
    return {"copy-before-write", "copies old data to a target before guest writes (fleecing)",
            open_cbw};
}

} // namespace fleece::nodes
