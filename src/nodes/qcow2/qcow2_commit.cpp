// The metadata commit: the only place where metadata reaches the disk. The order makes
// every durable state consistent except for leaked clusters:
//
//   1. refcount blocks (increments for clusters allocated so far, decrements released by
//      the previous commit); refcount table entries / a moved table only after a sync;
//   2. sync: the refcounts and the data of every completed write are durable;
//   3. L2 tables (copies taken at the start, so they only name clusters whose data write
//      had completed and whose refcount is in step 1); a sync; then changed L1 clusters;
//   4. sync: the new mappings are durable;
//   5. only now are clusters whose L2 entries were removed before step 1 discarded in
//      the file (pass-discard-*: those whose refcount drops to 0) and then released in
//      memory (reusable; their refcount decrement is written by the next commit).
//
// A crash between any two steps leaves at most clusters with a refcount but no reference.
//
// Why a freed cluster is discarded in the file only at step 5: a discard punches a hole,
// so the cluster reads as zeroes from then on. If an L2 entry that may survive a crash
// still named the cluster, the image would come back with that guest cluster reading as
// zeroes instead of its data (e.g. a guest write after the discard, not yet flushed, and
// the old mapping on disk). At step 5 no L2 table on disk names it any more: the L2
// tables without it were written in step 3 and made durable by the sync of step 4 (the
// release list was taken in step 1, after the entries changed in memory), so a crash
// after the hole can only leave a leaked cluster (refcount 1 on disk, no reference),
// which reads as nothing. The hole is punched before the in-memory release, so no new
// allocation can take the cluster (and write data into it) before the punch is done.
// With cache.no-flush the syncs do nothing: the order of completions still holds (what a
// kill -9 preserves), power loss is unprotected as for every other write then.
#include "nodes/qcow2/qcow2_node_impl.hpp"
#include "util/log.hpp"

#include <algorithm>

namespace fleece::nodes::qcow2 {

io::Task<std::error_code> Qcow2Node::commit() {
    auto mutex_guard = co_await commit_mutex_.lock();

    // Snapshot (no suspension until every copy is taken).
    struct TableCopy {
        std::uint64_t offset;
        std::uint64_t version;
        std::vector<std::byte> bytes;
    };
    std::vector<TableCopy> l2;
    for (L2Table* t : cache_.dirty_tables()) {
        TableCopy c{t->offset, t->version, std::vector<std::byte>(cs_)};
        for (std::uint64_t i = 0; i < t->entries.size(); ++i)
            store_be64(c.bytes.data() + 8 * i, t->entries[i]);
        l2.push_back(std::move(c));
    }
    std::vector<std::pair<std::uint64_t, std::vector<std::byte>>> l1;
    for (std::uint64_t cl : l1_dirty_clusters_) {
        std::vector<std::byte> b(cs_);
        const std::uint64_t per = cs_ / 8;
        for (std::uint64_t i = 0; i < per && cl * per + i < l1_.size(); ++i)
            store_be64(b.data() + 8 * i, l1_[cl * per + i]);
        l1.emplace_back(h_.l1_table_offset + cl * cs_, std::move(b));
    }
    const std::set<std::uint64_t> l1_clusters = std::move(l1_dirty_clusters_);
    l1_dirty_clusters_.clear();
    std::vector<std::uint64_t> releases = std::move(pending_release_);
    pending_release_.clear();
    std::vector<std::uint64_t> file_discards = std::move(pending_file_discard_);
    pending_file_discard_.clear();
    Refcounts::Dirty rd = rc_->take_dirty();

    auto fail = [&](std::error_code e) {
        rc_->restore_dirty(rd);
        l1_dirty_clusters_.insert(l1_clusters.begin(), l1_clusters.end());
        pending_release_.insert(pending_release_.end(), releases.begin(), releases.end());
        pending_file_discard_.insert(pending_file_discard_.end(), file_discards.begin(),
                                     file_discards.end());
        return e;
    };

    // Metadata may lie past the current end of the file (new refcount blocks, tables).
    if (auto e = co_await grow_file()) co_return fail(e);

    // 1. refcounts.
    for (const auto& [off, data] : rd.blocks)
        if (auto e = co_await meta_write(off, data)) co_return fail(e);
    if (!rd.table_clusters.empty()) {
        if (auto e = co_await meta_flush()) co_return fail(e);
        for (const auto& [off, data] : rd.table_clusters)
            if (auto e = co_await meta_write(off, data)) co_return fail(e);
        if (rd.table_move) {
            if (auto e = co_await meta_flush()) co_return fail(e);
            h_.refcount_table_offset = rd.table_move->new_offset;
            h_.refcount_table_clusters = rd.table_move->new_clusters;
            if (auto e = co_await write_header()) co_return fail(e);
        }
    }
    // 2. refcounts and data durable.
    if (auto e = co_await meta_flush()) co_return fail(e);
    // 3. mappings.
    for (const auto& c : l2)
        if (auto e = co_await meta_write(c.offset, c.bytes)) co_return fail(e);
    if (!l1.empty()) {
        if (!l2.empty())
            if (auto e = co_await meta_flush()) co_return fail(e);
        for (const auto& [off, data] : l1) {
            // The L1 table need not end on a cluster boundary inside the file.
            const std::uint64_t n =
                std::min<std::uint64_t>(data.size(), file_->node().size() - off);
            if (auto e = co_await meta_write(off, std::span(data).first(n))) co_return fail(e);
        }
    }
    // 4. mappings durable.
    if (!l2.empty() || !l1.empty())
        if (auto e = co_await meta_flush()) co_return fail(e);
    // 5. what the old mappings held goes back to the file, then can be reused.
    for (const auto& c : l2)
        if (L2Table* t = cache_.find(c.offset); t && t->version == c.version) t->dirty = false;
    if (rd.table_move && pass_discard_other_)
        for (std::uint32_t i = 0; i < rd.table_move->old_clusters; ++i)
            file_discards.push_back((rd.table_move->old_offset >> cb_) + i);
    if (!file_discards.empty()) co_await discard_in_file(std::move(file_discards));
    for (std::uint64_t cl : releases)
        rc_->release(cl);
    if (rd.table_move)
        for (std::uint32_t i = 0; i < rd.table_move->old_clusters; ++i)
            rc_->release((rd.table_move->old_offset >> cb_) + i);
    co_return std::error_code{};
}

io::Task<void> Qcow2Node::discard_in_file(std::vector<std::uint64_t> clusters) {
    std::sort(clusters.begin(), clusters.end());
    clusters.erase(std::unique(clusters.begin(), clusters.end()), clusters.end());
    // Only clusters this release frees: one still referenced elsewhere (refcount > 1, a
    // compressed cluster shared with other streams) keeps its data. Decided before the
    // first suspension; nothing can take a reference meanwhile (the clusters are not
    // free until released below the caller's awaits).
    std::erase_if(clusters, [this](std::uint64_t c) { return rc_->get(c) != 1; });
    const std::uint64_t fsize = file_->node().size();
    for (std::size_t i = 0; i < clusters.size();) {
        std::size_t j = i + 1;
        while (j < clusters.size() && clusters[j] == clusters[j - 1] + 1)
            ++j;
        const std::uint64_t off = clusters[i] << cb_;
        const std::uint64_t n = j - i;
        i = j;
        if (off >= fsize) continue;
        const std::uint64_t len = std::min<std::uint64_t>(n << cb_, fsize - off);
        // While closing the edge has no write permission left (see meta_write).
        std::error_code e;
        if (closing_)
            e = co_await file_->node().discard(off, len);
        else
            e = co_await file_->discard(off, len);
        if (e)
            log::warn("qcow2 node '{}': discarding {} bytes at {:#x} in the file failed: {}",
                      name(), len, off, e.message());
    }
}

// While the node is being closed its parents are gone and so are the edge's write
// permissions; the final commit then goes to the file node directly (it is drained).
io::Task<std::error_code> Qcow2Node::meta_write(std::uint64_t off,
                                                std::span<const std::byte> data) {
    if (closing_) co_return co_await file_->node().write(off, data, 0);
    co_return co_await file_->write(off, data);
}

io::Task<std::error_code> Qcow2Node::meta_flush() {
    if (closing_) co_return co_await file_->node().flush();
    co_return co_await file_->flush();
}

io::Task<std::error_code> Qcow2Node::write_header() {
    std::byte* p = header_bytes_.data();
    store_be64(p + 48, h_.refcount_table_offset);
    store_be32(p + 56, h_.refcount_table_clusters);
    if (h_.version >= 3) store_be64(p + 88, h_.autoclear_features);
    co_return co_await meta_write(0, header_bytes_);
}

} // namespace fleece::nodes::qcow2
