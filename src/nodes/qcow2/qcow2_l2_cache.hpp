#pragma once
// Bounded cache of L2 tables (like QEMU's l2-cache-size). Tables are decoded to host-endian
// raw entries. Dirty tables (changed in memory, not yet committed) are never evicted: when
// every slot is dirty the node commits its metadata first. Pointers handed out stay valid
// until the table is evicted, so callers must look a table up again after any suspension.

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

namespace fleece::nodes::qcow2 {

struct L2Table {
    std::uint64_t offset = 0; // host offset of the table
    std::vector<std::uint64_t> entries;
    bool dirty = false;
    std::uint64_t version = 0; // bumped by every change, so a commit knows what it wrote
    std::uint64_t last_use = 0;

    void set(std::uint64_t index, std::uint64_t raw) {
        entries[index] = raw;
        dirty = true;
        ++version;
    }
};

class L2Cache {
  public:
    explicit L2Cache(std::size_t capacity) : capacity_(capacity < 2 ? 2 : capacity) {}

    L2Table* find(std::uint64_t offset);
    L2Table* insert(std::unique_ptr<L2Table> t);
    bool full() const { return map_.size() >= capacity_; }
    // Drops the least recently used clean table; false when all are dirty.
    bool evict_one_clean();
    std::vector<L2Table*> dirty_tables() const;
    std::size_t size() const { return map_.size(); }
    std::size_t capacity() const { return capacity_; }

  private:
    std::size_t capacity_;
    std::uint64_t clock_ = 0;
    std::unordered_map<std::uint64_t, std::unique_ptr<L2Table>> map_;
};

} // namespace fleece::nodes::qcow2
