#pragma once
// The qcow2 node's state and request paths (internal to the driver). The open function
// (qcow2_open.cpp) reads and validates the metadata and builds the node; qcow2_node.cpp
// serves requests; qcow2_commit.cpp persists metadata in the crash-safe order.

#include "block/node.hpp"
#include "block/range_lock.hpp"
#include "io/sync.hpp"
#include "nodes/qcow2/qcow2_bitmap_store.hpp"
#include "nodes/qcow2/qcow2_format.hpp"
#include "nodes/qcow2/qcow2_l2_cache.hpp"
#include "nodes/qcow2/qcow2_refcounts.hpp"

#include <set>
#include <utility>

namespace fleece::nodes::qcow2 {

struct NodeConfig {
    Header header;
    std::vector<std::byte> header_bytes; // the first cluster as read (rewritten for header updates)
    std::vector<std::uint64_t> l1;
    std::unique_ptr<Refcounts> refcounts;
    std::size_t l2_cache_tables = 16;
    bool read_only = false;
    bool discard_unmap = false;
    // QEMU's pass-discard-request / pass-discard-other: whether host clusters freed by a
    // guest discard (or a write-zeroes that may unmap) / by anything else the driver
    // frees (an old refcount table) are discarded in the file once unreferenced.
    bool pass_discard_request = false;
    bool pass_discard_other = false;
    BitmapState bitmaps; // persistent bitmaps read at open (qcow2_bitmap_store.hpp)
};

class Qcow2Node final : public block::Node {
  public:
    Qcow2Node(std::string name, NodeConfig cfg, block::Node& file, block::Node* backing);

    std::string filename() const override { return file_->node().filename(); }
    io::Task<void> close() override;
    void refresh_from_children() override {}
    bool supports_persistent_bitmaps() const override;
    void persistent_bitmap_removed(const std::string& name) override;
    io::Task<void> wait_image_bitmap_updates() override;

  protected:
    io::Task<std::error_code> do_read(std::uint64_t offset, std::span<std::byte> buf,
                                      block::ReqFlags flags) override;
    io::Task<std::error_code> do_write(std::uint64_t offset, std::span<const std::byte> buf,
                                       block::ReqFlags flags) override;
    io::Task<std::error_code> do_write_zeroes(std::uint64_t offset, std::uint64_t length,
                                              block::ReqFlags flags) override;
    io::Task<std::error_code> do_discard(std::uint64_t offset, std::uint64_t length) override;
    io::Task<std::error_code> do_flush() override;
    io::Task<block::BlockStatus> do_block_status(std::uint64_t offset,
                                                 std::uint64_t length) override;

  private:
    using Lookup = std::pair<std::error_code, L2Table*>;
    // Why an L2 entry changes: a guest discard or unmapping zero write frees host
    // clusters the file may get back (pass-discard-request); anything else does not.
    enum class Freed { by_overwrite, by_request };
    struct EntryResult {
        std::error_code error;
        std::uint64_t raw = 0;
    };

    std::uint64_t l2_entries() const { return h_.l2_entries(); }
    // The L2 table of L1 slot `l1_index` (creating it when `create`), valid until the
    // caller's next suspension. {ok, nullptr} when absent and not created. Only writers
    // (`may_commit`) commit metadata to make room in a cache full of dirty tables.
    io::Task<Lookup> load_l2(std::uint64_t l1_index, bool create, bool may_commit);
    io::Task<EntryResult> lookup(std::uint64_t guest_cluster, bool for_write = false);
    // Synchronous fast paths when the L2 table is cached (or absent): no suspension, so
    // loops over many clusters build no deep await chains. False: use the slow path.
    bool peek_entry(std::uint64_t guest_cluster, std::uint64_t* raw);
    bool try_set_entry(std::uint64_t guest_cluster, std::uint64_t raw,
                       Freed why = Freed::by_overwrite);
    void apply_entry(L2Table* t, std::uint64_t guest_cluster, std::uint64_t raw, Freed why);
    // Reads [pos, pos+out.size()) of one guest cluster whose L2 entry is `raw`.
    io::Task<std::error_code> read_piece(std::uint64_t pos, std::span<std::byte> out,
                                         std::uint64_t raw);
    io::Task<std::error_code> read_compressed(const L2Entry& e, std::span<std::byte> cluster);
    // Writes one piece inside one guest cluster (caller holds the cluster exclusively).
    io::Task<std::error_code> write_piece(std::uint64_t pos, std::span<const std::byte> data);
    // Writes `data` at guest `pos` into new host clusters: one contiguous run for every
    // guest cluster it touches (whose L2 entries are `old`), one I/O to the file (old
    // content of partial first/last clusters merged in), then the L2 entries. The caller
    // holds the clusters exclusively.
    io::Task<std::error_code> write_allocating(std::uint64_t pos, std::span<const std::byte> data,
                                               std::vector<std::uint64_t> old);
    // Whether the old content of a guest cluster whose L2 entry is `raw` reads as zeroes.
    bool reads_as_zeroes(std::uint64_t guest_cluster, std::uint64_t raw) const;
    // True when the L2 entry `raw` is a data cluster this image owns (written in place).
    bool writable_in_place(std::uint64_t raw) const;
    // Writes one whole guest cluster compressed (or plainly if it does not shrink).
    io::Task<std::error_code> write_compressed(std::uint64_t pos, std::span<const std::byte> data);
    // Sets the L2 entry of `guest_cluster` to `raw`, queueing the old clusters for release.
    io::Task<std::error_code> set_entry(std::uint64_t guest_cluster, std::uint64_t raw,
                                        Freed why = Freed::by_overwrite);
    void queue_release(std::uint64_t old_raw, Freed why);
    // After a discard / unmapping zero write: commits when enough freed clusters wait to
    // be discarded in the file (so the image shrinks while discards keep coming).
    io::Task<std::error_code> commit_if_releases_wait();
    // Discards host clusters in the file, contiguous ones in one request (advisory:
    // failures are logged). Only for clusters nothing durable refers to (commit step 5).
    io::Task<void> discard_in_file(std::vector<std::uint64_t> clusters);
    // Makes the file long enough for every allocated cluster, growing ahead in steps.
    io::Task<std::error_code> grow_file();
    // At close: gives back the part of the file grown ahead but never allocated.
    io::Task<void> trim_file();
    io::Task<std::error_code> meta_write(std::uint64_t off, std::span<const std::byte> data);
    io::Task<std::error_code> meta_flush();
    // Rewrites the first cluster with the current refcount table location.
    io::Task<std::error_code> write_header();
    std::error_code corrupt(const std::string& what);

    // Persists every metadata change made so far in the crash-safe order (qcow2_commit.cpp).
    io::Task<std::error_code> commit();
    // Persistent bitmaps (qcow2_bitmap_store.cpp): the loaded ones become the node's
    // DirtyBitmaps; a clean close stores every persistent bitmap.
    // Without write_data only drops removed bitmaps from the image (while serving).
    void install_bitmaps();
    io::Task<std::error_code> store_bitmaps(bool write_data);
    io::Task<void> drop_removed_bitmaps();

    Header h_;
    std::uint32_t cb_;
    std::uint64_t cs_;
    std::vector<std::byte> header_bytes_;
    std::vector<std::uint64_t> l1_;
    std::set<std::uint64_t> l1_dirty_clusters_;
    L2Cache cache_;
    std::unique_ptr<Refcounts> rc_;
    std::set<std::uint64_t> loading_; // L2 tables being read
    io::WaitQueue load_done_;
    block::RangeLockTable locks_; // guest byte ranges, rounded out to clusters
    io::AsyncMutex commit_mutex_;
    std::vector<std::uint64_t> pending_release_; // host clusters whose L2 entries are gone
    // Those of them to discard in the file when their refcount drops to 0 (commit step 5).
    std::vector<std::uint64_t> pending_file_discard_;
    bool discard_unmap_;
    bool pass_discard_request_;
    bool pass_discard_other_;
    bool closing_ = false;
    // File length at open: below it old bytes may lie in free clusters; above it (and
    // above every cluster ever allocated since, see Refcounts::end_cluster) the file is
    // holes, so a new cluster there needs no zero-filling.
    std::uint64_t open_file_size_ = 0;
    bool grown_ahead_ = false;
    block::Child* file_;
    block::Child* backing_ = nullptr;
    BitmapState bitmap_state_;    // the bitmaps directory on disk
    io::AsyncMutex bitmap_mutex_; // one directory rewrite at a time
    unsigned pending_bitmap_updates_ = 0;
    io::WaitQueue bitmap_updates_done_;
};

} // namespace fleece::nodes::qcow2
