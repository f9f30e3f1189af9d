#include "nodes/qcow2/qcow2_refcounts.hpp"

namespace fleece::nodes::qcow2 {

Refcounts::Refcounts(const Header& h, std::vector<std::uint64_t> table,
                     std::vector<std::unique_ptr<Block>> blocks)
    : cb_(h.cluster_bits), cs_(h.cluster_size()), order_(h.refcount_order),
      per_block_(h.refblock_entries()), table_offset_(h.refcount_table_offset),
      table_clusters_(h.refcount_table_clusters), table_(std::move(table)),
      blocks_(std::move(blocks)), table_cluster_dirty_(table_clusters_, false) {
    blocks_.resize(table_.size());
    for (std::uint64_t i = blocks_.size(); i-- > 0;) {
        if (!blocks_[i]) continue;
        for (std::uint64_t j = per_block_; j-- > 0;)
            if (get_refcount(blocks_[i]->data, j, order_) != 0) {
                end_cluster_ = i * per_block_ + j + 1;
                return;
            }
    }
}

Refcounts::Block* Refcounts::block_for(std::uint64_t cluster) const {
    const std::uint64_t i = cluster / per_block_;
    return i < blocks_.size() ? blocks_[i].get() : nullptr;
}

std::uint64_t Refcounts::get(std::uint64_t cluster) const {
    const Block* b = block_for(cluster);
    return b ? get_refcount(b->data, cluster % per_block_, order_) : 0;
}

void Refcounts::set(std::uint64_t cluster, std::uint64_t value) {
    Block* b = block_for(cluster);
    FLEECE_ASSERT(b);
    set_refcount(b->data, cluster % per_block_, order_, value);
    b->dirty = true;
    if (value != 0 && cluster + 1 > end_cluster_) end_cluster_ = cluster + 1;
}

void Refcounts::release(std::uint64_t cluster) {
    const std::uint64_t v = get(cluster);
    if (v == 0) return; // already free: never wrap around
    set(cluster, v - 1);
    if (v == 1 && cluster < free_hint_) free_hint_ = cluster;
}

// A new refcount block for table entry `index`, stored in cluster `at` (a free cluster in
// its own range, so it counts itself). Grows the table first when it is too small; the
// new table goes right after the block, also inside the block's range.
bool Refcounts::create_block(std::uint64_t index, std::uint64_t at) {
    std::uint64_t table_alloc = 0;
    if (index >= table_.size()) {
        const std::uint64_t entries_per_cluster = cs_ / 8;
        std::uint64_t want = std::max<std::uint64_t>(index + 1, table_.size() * 2);
        const std::uint64_t clusters = (want + entries_per_cluster - 1) / entries_per_cluster;
        if (clusters * cs_ > max_refcount_table_bytes) return false;
        // The table must fit after the block within the block's own range, and no earlier
        // move may still be waiting for its commit.
        if ((at % per_block_) + 1 + clusters > per_block_ || pending_move_) return false;
        table_alloc = clusters;
    }
    auto b = std::make_unique<Block>();
    b->offset = at << cb_;
    b->data.assign(cs_, std::byte{0});
    b->dirty = true;
    if (index >= blocks_.size()) blocks_.resize(index + 1);
    blocks_[index] = std::move(b);
    if (table_alloc) {
        const std::uint64_t new_off = (at + 1) << cb_;
        TableMove m{new_off, static_cast<std::uint32_t>(table_alloc), table_offset_,
                    table_clusters_};
        table_.resize(table_alloc * cs_ / 8, 0);
        blocks_.resize(table_.size());
        table_offset_ = new_off;
        table_clusters_ = static_cast<std::uint32_t>(table_alloc);
        table_cluster_dirty_.assign(table_alloc, false);
        pending_move_ = m;
        for (std::uint64_t c = 0; c < table_alloc; ++c)
            set(at + 1 + c, 1);
    }
    table_[index] = at << cb_;
    table_cluster_dirty_[index * 8 / cs_] = true;
    set(at, 1);
    return true;
}

std::optional<std::uint64_t> Refcounts::allocate(std::uint64_t n) {
    std::uint64_t run_start = free_hint_, run = 0;
    std::optional<std::uint64_t> first_free; // the first free cluster the scan passed
    for (std::uint64_t c = free_hint_;; ++c) {
        if (c >= (1ull << (56 - cb_))) return std::nullopt;
        Block* b = block_for(c);
        if (!b) {
            if (!create_block(c / per_block_, c)) return std::nullopt;
            run = 0;
            continue; // c itself now holds the block (and maybe a table)
        }
        if (get_refcount(b->data, c % per_block_, order_) != 0) {
            run = 0;
            continue;
        }
        if (!first_free) first_free = c;
        if (run == 0) run_start = c;
        if (++run == n) break;
    }
    // Every cluster the scan passed before the first free one is in use, and so is the run
    // now: the next scan starts after them (not from the start of the image every time,
    // which made each allocation cost a walk over all allocated clusters).
    free_hint_ = *first_free == run_start ? run_start + n : *first_free;
    for (std::uint64_t c = run_start; c < run_start + n; ++c)
        set(c, 1);
    return run_start;
}

Refcounts::Dirty Refcounts::take_dirty() {
    Dirty d;
    for (auto& b : blocks_)
        if (b && b->dirty) {
            d.blocks.emplace_back(b->offset, b->data);
            b->dirty = false;
        }
    if (pending_move_) {
        d.table_move = *pending_move_;
        pending_move_.reset();
        std::fill(table_cluster_dirty_.begin(), table_cluster_dirty_.end(), false);
        // The whole new table is written.
        for (std::uint32_t c = 0; c < table_clusters_; ++c)
            table_cluster_dirty_[c] = true;
    }
    for (std::uint64_t c = 0; c < table_cluster_dirty_.size(); ++c) {
        if (!table_cluster_dirty_[c]) continue;
        std::vector<std::byte> buf(cs_);
        for (std::uint64_t e = 0; e < cs_ / 8; ++e)
            store_be64(buf.data() + 8 * e, table_[c * cs_ / 8 + e]);
        d.table_clusters.emplace_back(table_offset_ + c * cs_, std::move(buf));
        table_cluster_dirty_[c] = false;
    }
    return d;
}

void Refcounts::restore_dirty(const Dirty& d) {
    for (auto& b : blocks_)
        if (b)
            for (const auto& [off, _] : d.blocks)
                if (off == b->offset) b->dirty = true;
    if (d.table_move && !pending_move_) pending_move_ = d.table_move;
    for (const auto& [off, _] : d.table_clusters)
        if (off >= table_offset_ && (off - table_offset_) / cs_ < table_cluster_dirty_.size())
            table_cluster_dirty_[(off - table_offset_) / cs_] = true;
}

} // namespace fleece::nodes::qcow2
