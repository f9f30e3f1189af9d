#pragma once
// copy-before-write: a filter that copies old data to a target before the guest changes it,
// and serves the point-in-time view through the SnapshotSource API (see
// docs/nodes/copy-before-write.md).

#include "block/block_copy.hpp"
#include "block/node.hpp"
#include "block/range_lock.hpp"
#include "block/snapshot_source.hpp"
#include "nodes/registry.hpp"
#include "util/bitmap.hpp"

#include <chrono>
#include <memory>
#include <utility>

namespace fleece::nodes {

enum class OnCbwError { break_guest_write, break_snapshot };

// x-copy-window of a filter added with blockdev-add: one default chunk of the copy engine.
inline constexpr std::uint64_t default_copy_window = block::BlockCopy::default_chunk;

struct CbwConfig {
    OnCbwError on_error = OnCbwError::break_guest_write;
    std::chrono::nanoseconds timeout{0};
    std::uint64_t min_cluster_size = 0;
    // Copy-ahead window (option x-copy-window, docs/nodes/copy-before-write.md): a write that
    // has to copy, in an aligned window of this size where an earlier write already copied a
    // cluster, copies the window's other uncopied clusters in the same pass. 0 = exactly the
    // write's clusters (QEMU's rule, and a backup job's own filter, whose target is remote).
    std::uint64_t copy_window = 0;
    // Option `bitmap`: only its dirty clusters are copied and readable in the snapshot. Its
    // content is taken when the node opens (the pointer is not kept).
    const block::DirtyBitmap* bitmap = nullptr;
};

// The copy and readable cluster sets of a filter (saved to undo x-cbw-set-bitmap).
struct CbwCopySets {
    Bitmap copy, access;
};

// What the guest paid for fleecing: guest requests (write, write-zeroes, discard) that had
// to wait for old data to be copied first, and how long they waited (x-cbw-stats in
// query-named-block-nodes, docs/nodes/copy-before-write.md).
struct CbwStats {
    std::uint64_t requests = 0; // requests that found data still to copy in their range
    std::uint64_t errors = 0;   // of those, copies that failed or timed out
    std::uint64_t total_ns = 0; // their summed wait
    std::uint64_t max_ns = 0;   // the longest single wait
};

class CbwNode final : public block::FilterNode, public block::SnapshotSource {
  public:
    CbwNode(std::string name, block::Node& file, block::Node& target, CbwConfig cfg);
    ~CbwNode() override;

    block::PermPair child_perms(const block::Child& c, block::PermSet parent_perm,
                                block::PermSet parent_shared) const override;
    io::Task<void> close() override;

    io::Task<std::error_code> snapshot_read(std::uint64_t offset,
                                            std::span<std::byte> buf) override;
    io::Task<block::BlockStatus> snapshot_block_status(std::uint64_t offset,
                                                       std::uint64_t length) override;
    io::Task<std::error_code> snapshot_discard(std::uint64_t offset, std::uint64_t length) override;

    block::BlockCopy& block_copy() { return *bcs_; }
    std::error_code snapshot_error() const { return snapshot_error_; }
    const CbwStats& stats() const { return stats_; }

    // x-cbw-set-bitmap: the snapshot covers only `bitmap`'s dirty clusters from now on, as
    // if the filter had been opened with option `bitmap` at this instant. Refused (false)
    // once a guest write or a snapshot read, block status or discard used the sets, and for
    // a backup job's own filter (its sets are the job's). On success `*before` receives the
    // previous sets, for restore_copy_sets() (an aborted transaction).
    bool set_bitmap(const block::DirtyBitmap& bitmap, CbwCopySets* before);
    void restore_copy_sets(CbwCopySets sets);

  protected:
    io::Task<std::error_code> do_write(std::uint64_t offset, std::span<const std::byte> buf,
                                       block::ReqFlags flags) override;
    io::Task<std::error_code> do_write_zeroes(std::uint64_t offset, std::uint64_t length,
                                              block::ReqFlags flags) override;
    io::Task<std::error_code> do_discard(std::uint64_t offset, std::uint64_t length) override;

  private:
    block::Node* tracked_source_ = nullptr; // our file's node, reads tracked until close()
    io::Task<std::error_code> copy_before_write(std::uint64_t offset, std::uint64_t length);
    // [start, end), a range with clusters to copy, grown to whole copy-ahead windows at
    // either edge whose window a write already copied in; unchanged when copy-ahead is off.
    std::pair<std::uint64_t, std::uint64_t> copy_ahead_range(std::uint64_t start,
                                                             std::uint64_t end) const;
    bool is_fleecing() const;
    // Length of the prefix of [offset, end) that is uniformly done or not done.
    std::uint64_t uniform_prefix(std::uint64_t offset, std::uint64_t end, bool* done) const;
    std::error_code check_access(std::uint64_t offset, std::uint64_t length) const;
    // The prefix of [offset, end) that is readable and uniformly done or not (*length,
    // *done); EACCES when the first cluster is not readable.
    std::error_code readable_uniform_prefix(std::uint64_t offset, std::uint64_t end, bool* done,
                                            std::uint64_t* length) const;
    // A piece of the snapshot at `offset`, within [offset, end), held under the reader lock
    // of the child that serves it (`target` when done, else `file`): no guest write changes
    // what it describes until the guard goes. Snapshot reads and block status both use it.
    struct SnapshotPiece {
        block::RangeLockTable::Guard guard;
        std::uint64_t length = 0;
        bool done = false;
        std::error_code error; // EACCES: not readable
    };
    io::Task<SnapshotPiece> lock_snapshot_piece(std::uint64_t offset, std::uint64_t end);
    void start_from_bitmap(const block::DirtyBitmap& bitmap);

    block::Child* target_;
    CbwConfig cfg_;
    std::unique_ptr<block::BlockCopy> bcs_;
    Bitmap access_; // clusters the snapshot may still read
    Bitmap done_;   // clusters whose old data is in the target
    // Snapshot reads in progress hold shared locks, in the table of the child they read.
    // Guest writes wait_idle() over source reads (they must not change the source under a
    // read), but not over target reads, which they cannot disturb: the backup job reads
    // every copied cluster from the target while the guest writes on. Snapshot discards
    // wait for both (they must not drop target data under a read).
    block::RangeLockTable source_reads_;
    block::RangeLockTable target_reads_;
    std::error_code snapshot_error_; // latched first error with break-snapshot
    bool touched_ = false;           // a guest write or snapshot call has used the sets
    CbwStats stats_;
};

// A BlockDirtyBitmap reference {node, name} usable as the filter's bitmap over a source of
// `source_size` bytes: it exists, is consistent and has that size (QEMU's messages).
Result<const block::DirtyBitmap*>
find_cbw_bitmap(const block::Graph& graph, const nlohmann::json& ref, std::uint64_t source_size);

// Driver "copy-before-write".
DriverSpec copy_before_write_driver();

} // namespace fleece::nodes
