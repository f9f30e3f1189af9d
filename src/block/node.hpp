#pragma once
// Node: one vertex of the block graph (a driver instance with a unique node-name).
// Child: one edge, from a parent (a node, an export or a job) to a child node.
//
// Public entry points are non-virtual: they check the request, count it for drain and call
// the driver's do_* hook. Parents never call a child node directly but go through their
// Child edge, which checks the edge's permissions and, for edges from outside the graph
// (exports, jobs), holds new requests while the node is drained so that a graph change
// (e.g. inserting a copy-before-write filter) takes effect for every later request.

#include "block/dirty_bitmap.hpp"
#include "block/perm.hpp"
#include "block/range_lock.hpp"
#include "block/types.hpp"
#include "io/sync.hpp"
#include "io/task.hpp"

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace fleece::block {

class Node;
class Graph;
class DrainedSection;

// An image file's size and modification time (Node::disk_identity()).
struct DiskIdentity {
    std::uint64_t size = 0;
    std::int64_t mtime_ns = 0;
    bool operator==(const DiskIdentity&) const = default;
};

// Keeps a node's persistent bitmaps outside its image (a bitmap sidecar file,
// block/bitmap_sidecar_store.hpp). The node owns it and closes it when it leaves the graph.
class ExternalBitmapStore {
  public:
    virtual ~ExternalBitmapStore() = default;
    // Write-ahead. Every write, write-zeroes and discard, after the node recorded it in its
    // bitmaps and before the driver runs, calls change_starts(); when that returns false
    // (the change is not yet durably accounted for) the node awaits cover() before the
    // driver runs, and an error fails the request (nothing reached the disk).
    // change_ends() follows every change_starts(), when the driver is done and the bitmaps
    // recorded the change again (or the request failed); a change that started before the
    // store was attached never reaches it.
    virtual bool change_starts(std::uint64_t offset, std::uint64_t length) = 0;
    virtual io::Task<std::error_code> cover(std::uint64_t offset, std::uint64_t length) = 0;
    virtual void change_ends(std::uint64_t offset, std::uint64_t length) = 0;
    // Until the bitmaps as they are now are saved (a QMP bitmap command returns after).
    virtual io::Task<void> wait_saved() = 0;
    // The node leaves the graph, drained: save the bitmaps for the next start, clean.
    virtual io::Task<void> close() = 0;
};

// How the new space of a growing truncate is backed (two of QEMU's PreallocMode values).
// falloc reserves it on the host: later O_DIRECT writes into it are then overwrites, which
// Linux filesystems serve inline instead of punting them to a worker thread behind the
// inode lock, as they must for writes into holes.
enum class Prealloc { off, falloc };

enum class ChildRole { file, backing, target, data, root };
const char* role_name(ChildRole role);

// Whoever holds a Child: a Node, an export or a job.
class ChildParent {
  public:
    virtual ~ChildParent() = default;
    // For messages: "node 'cbw'", "export 'guest'", "job 'bk'".
    virtual std::string parent_description() const = 0;
    // Name used by x-debug-query-block-graph for non-node parents ("guest", "bk").
    virtual std::string parent_name() const = 0;
    // Type in x-debug-query-block-graph: "block-driver", "block-backend", "block-job".
    virtual const char* parent_type() const = 0;
    virtual Node* as_node() { return nullptr; }
};

class Child {
  public:
    Child(ChildParent* parent, Node* node, ChildRole role, std::string name, PermSet perm = 0,
          PermSet shared = perm_all);
    ~Child();
    Child(const Child&) = delete;
    Child& operator=(const Child&) = delete;

    Node& node() const { return *node_; }
    ChildParent& parent() const { return *parent_; }
    ChildRole role() const { return role_; }
    const std::string& name() const { return name_; } // "file", "backing", "target", "root"
    PermSet perm() const { return perm_; }
    PermSet shared() const { return shared_; }
    bool attached() const { return attached_; }

    io::Task<std::error_code> read(std::uint64_t offset, std::span<std::byte> buf,
                                   ReqFlags flags = 0);
    io::Task<std::error_code> write(std::uint64_t offset, std::span<const std::byte> buf,
                                    ReqFlags flags = 0);
    io::Task<std::error_code> write_zeroes(std::uint64_t offset, std::uint64_t length,
                                           ReqFlags flags = 0);
    io::Task<std::error_code> discard(std::uint64_t offset, std::uint64_t length);
    io::Task<std::error_code> flush();
    io::Task<BlockStatus> block_status(std::uint64_t offset, std::uint64_t length);
    // Changes the child's size (a format driver growing its image file); needs perm_resize.
    io::Task<std::error_code> truncate(std::uint64_t size, Prealloc prealloc = Prealloc::off);

  private:
    friend class Graph;
    friend class Node;
    io::Task<void> wait_while_quiesced();
    bool may_write(ReqFlags flags) const;

    ChildParent* parent_;
    Node* node_;
    ChildRole role_;
    std::string name_;
    PermSet perm_;
    PermSet shared_;
    bool attached_ = false;
};

class Node : public ChildParent {
  public:
    Node(std::string name, std::string driver);
    ~Node() override;

    const std::string& name() const { return name_; }
    const std::string& driver() const { return driver_; }
    std::uint64_t size() const { return size_; }
    const Caps& caps() const { return caps_; }
    const Limits& limits() const { return limits_; }
    bool read_only() const { return read_only_; }
    // Created implicitly by a nested blockdev-add; deleted together with its parent.
    bool implicit() const { return implicit_; }
    void set_implicit(bool v) { implicit_ = v; }

    const std::vector<Child*>& parents() const { return parents_; }
    const std::vector<std::unique_ptr<Child>>& children() const { return children_; }
    Child* child(std::string_view edge_name) const;

    // The permissions this node takes on and shares for child `c`, given what its own
    // parents need (parent_perm, union) and allow (parent_shared, intersection).
    virtual PermPair child_perms(const Child& c, PermSet parent_perm, PermSet parent_shared) const;

    // Checked entry points (called by Child). `via_backing`: the read comes through a
    // backing edge (see track_reads).
    io::Task<std::error_code> read(std::uint64_t offset, std::span<std::byte> buf, ReqFlags flags,
                                   bool via_backing = false);
    io::Task<std::error_code> write(std::uint64_t offset, std::span<const std::byte> buf,
                                    ReqFlags flags);
    io::Task<std::error_code> write_zeroes(std::uint64_t offset, std::uint64_t length,
                                           ReqFlags flags);
    io::Task<std::error_code> discard(std::uint64_t offset, std::uint64_t length);
    io::Task<std::error_code> flush();
    io::Task<BlockStatus> block_status(std::uint64_t offset, std::uint64_t length,
                                       bool via_backing = false);
    io::Task<std::error_code> truncate(std::uint64_t size, Prealloc prealloc = Prealloc::off);

    // What query-named-block-nodes shows as "file": a path for protocol nodes, the
    // file child's filename for filters and formats.
    virtual std::string filename() const;
    // What tells whether the image file changed between two runs (a bitmap sidecar's check
    // for writes made while fleeced was not running): its size and modification time.
    // nullopt where there is no such thing (block devices, memory, network).
    virtual std::optional<DiskIdentity> disk_identity() const { return std::nullopt; }
    // Driver-specific cache mode for queries.
    virtual bool cache_direct() const { return false; }
    virtual bool cache_no_flush() const { return false; }

    // Write caches that can vanish (docs/nodes/nbd.md): an NBD client whose connection
    // dropped may have lost changes its server acknowledged but had not flushed, and then
    // fails every flush. A writer that can write again everything it wrote since its last
    // successful flush (a backup job with an immutable source) checks lost_changes() after
    // each flush, rewrites when it grew, and accepts the losses so flushes succeed again.
    // Nodes that never lose acknowledged changes return false / 0; filters ask their file.
    virtual bool may_lose_acknowledged_changes() const { return false; }
    virtual std::uint64_t lost_changes() const { return 0; }
    virtual void accept_lost_changes() {}
    // A cancelled job's requests must not wait for a server to come back (an NBD client
    // waiting up to reconnect-delay): those waiting fail now, as do new ones until the
    // connection is back (QEMU's bdrv_cancel_in_flight). Filters pass it to their file.
    virtual void cancel_in_flight() {}
    // A network node whose connection dropped: for how long (query-named-block-nodes'
    // x-disconnected-for-ms, so `fleece backup` can say why its target went quiet).
    virtual std::optional<std::chrono::milliseconds> disconnected_for() const {
        return std::nullopt;
    }

    // Called once when the node leaves the graph, after it was drained.
    virtual io::Task<void> close() { co_return; }
    // Graph hooks: the child set or a child's content changed (recompute caps and size).
    virtual void refresh_from_children() {}

    // Dirty bitmaps: every write, write-zeroes and discard reaching this node is recorded
    // by the entry points above, before the driver runs and again when it is done (a write
    // in flight while a backup freezes a bitmap lands in the successor too).
    DirtyBitmaps& dirty_bitmaps() { return dirty_bitmaps_; }
    const DirtyBitmaps& dirty_bitmaps() const { return dirty_bitmaps_; }
    // Whether persistent bitmaps can be stored with this node's image (qcow2 can).
    virtual bool supports_persistent_bitmaps() const { return false; }
    // A persistent bitmap of this node was removed: a node storing bitmaps in its image
    // drops it there too (qcow2 does, in the background).
    virtual void persistent_bitmap_removed(const std::string& name) { (void)name; }
    // Waits until the node's persistent bitmap storage holds every change made so far: the
    // image's own (a qcow2 removal in the background) and an external store's. QMP bitmap
    // commands and `transaction` return after it.
    io::Task<void> wait_bitmap_updates();
    // A store for the persistent bitmaps of a node that cannot keep them in its image
    // (set once, best before the node takes writes; closed with the node).
    void set_external_bitmap_store(std::unique_ptr<ExternalBitmapStore> store) {
        bitmap_store_ = std::move(store);
    }
    ExternalBitmapStore* external_bitmap_store() const { return bitmap_store_.get(); }

    // Read tracking, for the seed's fleecing scheme: a fleecing image whose backing is this
    // node reads unallocated clusters straight from here, past the copy-before-write filter.
    // The filter turns tracking on and, after copying a cluster, waits for reads of it that
    // started earlier, so none of them can see the guest's new data. Only reads arriving
    // through a backing edge are tracked: they are the ones that go around the filter (the
    // guest's own reads, and the filter's copies, may see the new data). Off, or through
    // any other edge, a read costs nothing. Block status queries through a backing edge
    // count as reads: a "zero" that described the guest's new data would make a backup
    // write zeroes where the snapshot has data.
    void track_reads(bool on) { track_reads_ += on ? 1 : -1; }
    io::Task<void> wait_reads_idle(std::uint64_t offset, std::uint64_t length) {
        return reads_.wait_idle(offset, length);
    }

    std::uint64_t in_flight() const { return in_flight_; }
    // Work a driver keeps doing after the request that started it returned (a copy-before-
    // write copy that timed out goes on in the background): it counts as in flight, so
    // drain and removal wait for it.
    void background_work_started() { ++in_flight_; }
    void background_work_finished();
    bool quiesced() const { return quiesce_counter_ > 0; }

    // ChildParent
    std::string parent_description() const override { return "node '" + name_ + "'"; }
    std::string parent_name() const override { return name_; }
    const char* parent_type() const override { return "block-driver"; }
    Node* as_node() override { return this; }

  protected:
    virtual io::Task<std::error_code> do_read(std::uint64_t offset, std::span<std::byte> buf,
                                              ReqFlags flags) = 0;
    virtual io::Task<std::error_code> do_write(std::uint64_t offset, std::span<const std::byte> buf,
                                               ReqFlags flags) = 0;
    // Default: write zero buffers (unless req_no_fallback, then ENOTSUP).
    virtual io::Task<std::error_code> do_write_zeroes(std::uint64_t offset, std::uint64_t length,
                                                      ReqFlags flags);
    // Default: nothing to release, success (discard is advisory).
    virtual io::Task<std::error_code> do_discard(std::uint64_t offset, std::uint64_t length);
    virtual io::Task<std::error_code> do_flush() = 0;
    // Image updates of persistent bitmaps still running (wait_bitmap_updates()).
    virtual io::Task<void> wait_image_bitmap_updates() { co_return; }
    // Default: everything is data.
    virtual io::Task<BlockStatus> do_block_status(std::uint64_t offset, std::uint64_t length);
    // Default: the size cannot change (ENOTSUP).
    // A driver that cannot preallocate may ignore `prealloc` (it is an optimisation).
    virtual io::Task<std::error_code> do_truncate(std::uint64_t size, Prealloc prealloc);

    // Construction helpers for drivers. Children are created detached; the Graph attaches
    // them when the node is added (and refuses the node if permissions conflict).
    Child& add_child(Node& node, ChildRole role, std::string edge_name);
    void set_size(std::uint64_t size) { size_ = size; }
    Caps caps_;
    Limits limits_;
    bool read_only_ = false;

  private:
    friend class Graph;
    friend class Child;
    friend class DrainedSection;
    // True when a parent node holds us as its `target` and its `file` is `source`.
    bool is_copy_target_of(const Node& source) const;
    class InFlight;
    std::error_code check_range(std::uint64_t offset, std::uint64_t length) const;
    std::error_code check_writable() const;
    // Every change is recorded in the bitmaps and announced to the external bitmap store
    // (if any) before the driver runs, and recorded again and announced done after. The
    // store that heard the start (null: none) hears the end, even if it was attached in
    // between. `*needs_cover`: await store->cover() before the driver runs.
    ExternalBitmapStore* begin_change(std::uint64_t offset, std::uint64_t length,
                                      bool* needs_cover);
    // The store's cover(); on failure the change ends here (the request fails).
    io::Task<std::error_code> cover_change(ExternalBitmapStore* store, std::uint64_t offset,
                                           std::uint64_t length);
    void end_change(ExternalBitmapStore* store, std::uint64_t offset, std::uint64_t length);
    // Node::close() plus the external bitmap store, for the graph.
    io::Task<void> close_with_store();

    std::string name_;
    std::string driver_;
    std::uint64_t size_ = 0;
    bool implicit_ = false;
    std::vector<Child*> parents_;
    std::vector<std::unique_ptr<Child>> children_;
    std::uint64_t in_flight_ = 0;
    std::uint32_t quiesce_counter_ = 0;
    io::WaitQueue idle_;          // notified when in_flight_ drops to zero
    io::WaitQueue quiesce_ended_; // notified when quiesce_counter_ drops to zero
    DirtyBitmaps dirty_bitmaps_;
    std::unique_ptr<ExternalBitmapStore> bitmap_store_;
    int track_reads_ = 0;
    RangeLockTable reads_; // shared holds by tracked reads in flight
};

// Forwards every operation to the `file` child; drivers override what they change.
class FilterNode : public Node {
  public:
    using Node::Node;
    PermPair child_perms(const Child& c, PermSet parent_perm, PermSet parent_shared) const override;
    void refresh_from_children() override;
    bool may_lose_acknowledged_changes() const override {
        return file_ && file_->node().may_lose_acknowledged_changes();
    }
    std::uint64_t lost_changes() const override { return file_ ? file_->node().lost_changes() : 0; }
    std::optional<DiskIdentity> disk_identity() const override {
        return file_ ? file_->node().disk_identity() : std::nullopt;
    }
    void accept_lost_changes() override {
        if (file_) file_->node().accept_lost_changes();
    }
    void cancel_in_flight() override {
        if (file_) file_->node().cancel_in_flight();
    }

  protected:
    Child& file() const { return *file_; }
    void set_file(Child& c) { file_ = &c; }
    io::Task<std::error_code> do_read(std::uint64_t offset, std::span<std::byte> buf,
                                      ReqFlags flags) override;
    io::Task<std::error_code> do_write(std::uint64_t offset, std::span<const std::byte> buf,
                                       ReqFlags flags) override;
    io::Task<std::error_code> do_write_zeroes(std::uint64_t offset, std::uint64_t length,
                                              ReqFlags flags) override;
    io::Task<std::error_code> do_discard(std::uint64_t offset, std::uint64_t length) override;
    io::Task<std::error_code> do_flush() override;
    io::Task<BlockStatus> do_block_status(std::uint64_t offset, std::uint64_t length) override;

  private:
    Child* file_ = nullptr;
};

} // namespace fleece::block
