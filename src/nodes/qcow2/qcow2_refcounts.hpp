#pragma once
// In-memory refcount state of an open image and the cluster allocator. Synchronous: an
// allocation never suspends, so two requests can never be handed the same cluster.
//
// Every refcount block stays in memory (2 bytes per cluster with 16-bit refcounts, i.e.
// 32 KiB per GiB of image with 64 KiB clusters). Changes are only made in memory and marked
// dirty; the node persists them in its metadata commit (see docs/nodes/qcow2.md for the
// order), taking a snapshot with take_dirty().

#include "nodes/qcow2/qcow2_format.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

namespace fleece::nodes::qcow2 {

class Refcounts {
  public:
    struct Block {
        std::uint64_t offset = 0; // host offset of the block
        std::vector<std::byte> data;
        bool dirty = false;
    };

    // `table` holds the refcount table's raw entries; `blocks[i]` is the block of entry i
    // (null when the entry is 0).
    Refcounts(const Header& h, std::vector<std::uint64_t> table,
              std::vector<std::unique_ptr<Block>> blocks);

    std::uint64_t get(std::uint64_t cluster) const;
    // Finds `n` contiguous free clusters, sets their refcounts to 1 and returns the first
    // one. Creates refcount blocks (and a larger refcount table) as needed. nullopt when
    // the image cannot grow further.
    std::optional<std::uint64_t> allocate(std::uint64_t n);
    // Decrements (freeing at 0). The caller guarantees no durable metadata refers to it.
    void release(std::uint64_t cluster);

    // First cluster index after every cluster with a non-zero refcount: the file must be
    // at least this long (in clusters).
    std::uint64_t end_cluster() const { return end_cluster_; }

    struct TableMove {
        std::uint64_t new_offset = 0;
        std::uint32_t new_clusters = 0;
        std::uint64_t old_offset = 0;
        std::uint32_t old_clusters = 0;
    };
    struct Dirty {
        std::vector<std::pair<std::uint64_t, std::vector<std::byte>>> blocks; // offset, data
        // Refcount table clusters to rewrite in place (offset, data), or a relocation.
        std::vector<std::pair<std::uint64_t, std::vector<std::byte>>> table_clusters;
        std::optional<TableMove> table_move;
        bool empty() const { return blocks.empty() && table_clusters.empty() && !table_move; }
    };
    // Copies of everything changed since the last call, and clears the dirty marks.
    Dirty take_dirty();
    // A failed commit: mark everything dirty again so the next commit retries it.
    void restore_dirty(const Dirty& d);

    std::uint64_t table_offset() const { return table_offset_; }
    std::uint32_t table_clusters() const { return table_clusters_; }

  private:
    Block* block_for(std::uint64_t cluster) const;
    bool create_block(std::uint64_t index, std::uint64_t at_cluster);
    void set(std::uint64_t cluster, std::uint64_t value);

    std::uint32_t cb_;
    std::uint64_t cs_;
    std::uint32_t order_;
    std::uint64_t per_block_;
    std::uint64_t table_offset_;
    std::uint32_t table_clusters_;
    std::vector<std::uint64_t> table_;
    std::vector<std::unique_ptr<Block>> blocks_;
    std::vector<bool> table_cluster_dirty_;
    std::optional<TableMove> pending_move_;
    std::uint64_t free_hint_ = 0;
    std::uint64_t end_cluster_ = 0;
};

} // namespace fleece::nodes::qcow2
