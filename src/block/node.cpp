#include "block/node.hpp"

#include "util/align.hpp"
#include "util/assert.hpp"

#include <algorithm>
#include <cerrno>
#include <vector>

namespace fleece::block {

const char* role_name(ChildRole role) {
    switch (role) {
    case ChildRole::file:
        return "file";
    case ChildRole::backing:
        return "backing";
    case ChildRole::target:
        return "target";
    case ChildRole::data:
        return "data-file";
    case ChildRole::root:
        return "root";
    }
    return "?";
}

std::string perm_names(PermSet perms) {
    std::string out;
    for (PermSet bit = 1; bit <= perm_resize; bit <<= 1) {
        if (perms & bit) {
            if (!out.empty()) out += ", ";
            out += perm_name(bit);
        }
    }
    return out;
}

const char* perm_name(PermSet one_perm) {
    if (one_perm & perm_consistent_read) return "consistent-read";
    if (one_perm & perm_write) return "write";
    if (one_perm & perm_write_unchanged) return "write-unchanged";
    if (one_perm & perm_resize) return "resize";
    return "none";
}

// ---- Child ------------------------------------------------------------------------------

Child::Child(ChildParent* parent, Node* node, ChildRole role, std::string name, PermSet perm,
             PermSet shared)
    : parent_(parent), node_(node), role_(role), name_(std::move(name)), perm_(perm),
      shared_(shared) {}

Child::~Child() {
    FLEECE_ASSERT(!attached_);
}

io::Task<void> Child::wait_while_quiesced() {
    // Only requests entering the graph from outside wait; a node's own requests to its
    // children must go on, or draining a node with requests in flight would deadlock.
    while (role_ == ChildRole::root && node_->quiesced())
        co_await node_->quiesce_ended_.wait();
}

bool Child::may_write(ReqFlags flags) const {
    if (perm_ & perm_write) return true;
    return (flags & req_write_unchanged) && (perm_ & perm_write_unchanged);
}

io::Task<std::error_code> Child::read(std::uint64_t offset, std::span<std::byte> buf,
                                      ReqFlags flags) {
    co_await wait_while_quiesced();
    co_return co_await node_->read(offset, buf, flags, role_ == ChildRole::backing);
}

io::Task<std::error_code> Child::write(std::uint64_t offset, std::span<const std::byte> buf,
                                       ReqFlags flags) {
    co_await wait_while_quiesced();
    if (!may_write(flags)) co_return errno_code(EPERM);
    co_return co_await node_->write(offset, buf, flags);
}

io::Task<std::error_code> Child::write_zeroes(std::uint64_t offset, std::uint64_t length,
                                              ReqFlags flags) {
    co_await wait_while_quiesced();
    if (!may_write(flags)) co_return errno_code(EPERM);
    co_return co_await node_->write_zeroes(offset, length, flags);
}

io::Task<std::error_code> Child::discard(std::uint64_t offset, std::uint64_t length) {
    co_await wait_while_quiesced();
    if (!may_write(0)) co_return errno_code(EPERM);
    co_return co_await node_->discard(offset, length);
}

io::Task<std::error_code> Child::truncate(std::uint64_t size, Prealloc prealloc) {
    co_await wait_while_quiesced();
    if (!(perm_ & perm_resize)) co_return errno_code(EPERM);
    co_return co_await node_->truncate(size, prealloc);
}

io::Task<std::error_code> Child::flush() {
    co_await wait_while_quiesced();
    co_return co_await node_->flush();
}

io::Task<BlockStatus> Child::block_status(std::uint64_t offset, std::uint64_t length) {
    co_await wait_while_quiesced();
    co_return co_await node_->block_status(offset, length, role_ == ChildRole::backing);
}

// ---- Node -------------------------------------------------------------------------------

void Node::background_work_finished() {
    FLEECE_ASSERT(in_flight_ > 0);
    if (--in_flight_ == 0) idle_.notify_all();
}

class Node::InFlight {
  public:
    explicit InFlight(Node* n) : n_(n) { ++n_->in_flight_; }
    ~InFlight() {
        if (--n_->in_flight_ == 0) n_->idle_.notify_all();
    }
    InFlight(const InFlight&) = delete;
    InFlight& operator=(const InFlight&) = delete;

  private:
    Node* n_;
};

Node::Node(std::string name, std::string driver)
    : name_(std::move(name)), driver_(std::move(driver)) {}

Node::~Node() {
    FLEECE_ASSERT(parents_.empty());
    FLEECE_ASSERT(in_flight_ == 0);
}

Child* Node::child(std::string_view edge_name) const {
    for (const auto& c : children_)
        if (c->name() == edge_name) return c.get();
    return nullptr;
}

std::string Node::filename() const {
    for (const auto& c : children_)
        if (c->role() == ChildRole::file || c->role() == ChildRole::data)
            return c->node().filename();
    return "";
}

Child& Node::add_child(Node& node, ChildRole role, std::string edge_name) {
    children_.push_back(std::make_unique<Child>(this, &node, role, std::move(edge_name)));
    return *children_.back();
}

PermPair Node::child_perms(const Child& c, PermSet parent_perm, PermSet parent_shared) const {
    switch (c.role()) {
    case ChildRole::backing: {
        PermPair p = backing_child_perms(parent_perm, parent_shared);
        // A fleecing image: a node that another node copies old data into (its `target`)
        // from our own backing node. That copier, a copy-before-write filter, is then the
        // only writer of the backing node, and only its writes may go on there; sharing
        // write here lets it keep writing even when our readers share no write.
        if (is_copy_target_of(c.node())) p.shared |= perm_write | perm_resize;
        return p;
    }
    case ChildRole::file:
    case ChildRole::data:
        return storage_child_perms(parent_perm, parent_shared, read_only_);
    default:
        return filter_child_perms(parent_perm, parent_shared);
    }
}

bool Node::is_copy_target_of(const Node& source) const {
    for (const Child* p : parents_) {
        if (p->role() != ChildRole::target) continue;
        const Node* copier = p->parent_->as_node();
        const Child* file = copier ? copier->child("file") : nullptr;
        if (file && &file->node() == &source) return true;
    }
    return false;
}

std::error_code Node::check_range(std::uint64_t offset, std::uint64_t length) const {
    if (!range_within(offset, length, size_)) return errno_code(EINVAL);
    return {};
}

std::error_code Node::check_writable() const {
    if (read_only_ || !caps_.write) return errno_code(EPERM);
    return {};
}

io::Task<std::error_code> Node::read(std::uint64_t offset, std::span<std::byte> buf, ReqFlags flags,
                                     bool via_backing) {
    if (auto e = check_range(offset, buf.size())) co_return e;
    if (buf.empty()) co_return std::error_code{};
    InFlight guard(this);
    if (track_reads_ > 0 && via_backing) {
        RangeLockTable::Guard held =
            co_await reads_.lock(offset, buf.size(), RangeLockTable::Mode::shared);
        co_return co_await do_read(offset, buf, flags);
    }
    co_return co_await do_read(offset, buf, flags);
}

io::Task<std::error_code> Node::write(std::uint64_t offset, std::span<const std::byte> buf,
                                      ReqFlags flags) {
    if (auto e = check_range(offset, buf.size())) co_return e;
    if (auto e = check_writable()) co_return e;
    if (buf.empty()) co_return std::error_code{};
    InFlight guard(this);
    bool needs_cover = false;
    ExternalBitmapStore* const store = begin_change(offset, buf.size(), &needs_cover);
    if (needs_cover) {
        const std::error_code cover_ec = co_await cover_change(store, offset, buf.size());
        if (cover_ec) co_return cover_ec;
    }
    std::error_code ec;
    if ((flags & req_fua) && !caps_.fua) {
        // No native FUA: write, then flush, before the request completes.
        ec = co_await do_write(offset, buf, flags & ~req_fua);
        if (!ec) ec = co_await do_flush();
    } else {
        ec = co_await do_write(offset, buf, flags);
    }
    end_change(store, offset, buf.size());
    co_return ec;
}

io::Task<std::error_code> Node::write_zeroes(std::uint64_t offset, std::uint64_t length,
                                             ReqFlags flags) {
    if (auto e = check_range(offset, length)) co_return e;
    if (auto e = check_writable()) co_return e;
    if (length == 0) co_return std::error_code{};
    InFlight guard(this);
    bool needs_cover = false;
    ExternalBitmapStore* const store = begin_change(offset, length, &needs_cover);
    if (needs_cover) {
        const std::error_code cover_ec = co_await cover_change(store, offset, length);
        if (cover_ec) co_return cover_ec;
    }
    std::error_code ec;
    if ((flags & req_fua) && !caps_.fua) {
        ec = co_await do_write_zeroes(offset, length, flags & ~req_fua);
        if (!ec) ec = co_await do_flush();
    } else {
        ec = co_await do_write_zeroes(offset, length, flags);
    }
    end_change(store, offset, length);
    co_return ec;
}

io::Task<std::error_code> Node::discard(std::uint64_t offset, std::uint64_t length) {
    if (auto e = check_range(offset, length)) co_return e;
    if (auto e = check_writable()) co_return e;
    if (length == 0) co_return std::error_code{};
    InFlight guard(this);
    bool needs_cover = false;
    ExternalBitmapStore* const store = begin_change(offset, length, &needs_cover);
    if (needs_cover) {
        const std::error_code cover_ec = co_await cover_change(store, offset, length);
        if (cover_ec) co_return cover_ec;
    }
    std::error_code ec = co_await do_discard(offset, length);
    end_change(store, offset, length);
    co_return ec;
}

ExternalBitmapStore* Node::begin_change(std::uint64_t offset, std::uint64_t length,
                                        bool* needs_cover) {
    // Recorded first, in the same step as the store hears of it: a bitmap snapshot the
    // store saves from now on holds this change, or the store knows it is in flight
    // (block/change_journal.hpp).
    dirty_bitmaps_.record(offset, length);
    ExternalBitmapStore* store = bitmap_store_.get();
    *needs_cover = store && !store->change_starts(offset, length);
    return store;
}

io::Task<std::error_code> Node::cover_change(ExternalBitmapStore* store, std::uint64_t offset,
                                             std::uint64_t length) {
    const std::error_code ec = co_await store->cover(offset, length);
    if (ec) end_change(store, offset, length); // failed: nothing reached the disk
    co_return ec;
}

void Node::end_change(ExternalBitmapStore* store, std::uint64_t offset, std::uint64_t length) {
    // Recorded before and after: a bitmap frozen or cleared mid-request still sees it.
    dirty_bitmaps_.record(offset, length);
    if (store) store->change_ends(offset, length);
}

io::Task<void> Node::wait_bitmap_updates() {
    co_await wait_image_bitmap_updates();
    if (bitmap_store_) co_await bitmap_store_->wait_saved();
}

io::Task<void> Node::close_with_store() {
    // The store first: it records the disk file's identity, which needs the file still
    // open. The bitmaps may then name a write whose data the node's closing flush has not
    // made durable yet; that only over-approximates.
    if (bitmap_store_) {
        co_await bitmap_store_->close();
        bitmap_store_.reset();
    }
    co_await close();
}

io::Task<std::error_code> Node::truncate(std::uint64_t size, Prealloc prealloc) {
    if (auto e = check_writable()) co_return e;
    InFlight guard(this);
    co_return co_await do_truncate(size, prealloc);
}

io::Task<std::error_code> Node::do_truncate(std::uint64_t, Prealloc) {
    co_return errno_code(ENOTSUP);
}

io::Task<std::error_code> Node::flush() {
    InFlight guard(this);
    co_return co_await do_flush();
}

io::Task<BlockStatus> Node::block_status(std::uint64_t offset, std::uint64_t length,
                                         bool via_backing) {
    if (auto e = check_range(offset, length); e || length == 0) {
        BlockStatus s;
        s.error = e ? e : errno_code(EINVAL);
        co_return s;
    }
    InFlight guard(this);
    RangeLockTable::Guard held; // see track_reads
    if (track_reads_ > 0 && via_backing)
        held = co_await reads_.lock(offset, length, RangeLockTable::Mode::shared);
    BlockStatus s = co_await do_block_status(offset, length);
    FLEECE_ASSERT(s.error || (s.length > 0 && s.length <= length));
    co_return s;
}

io::Task<std::error_code> Node::do_write_zeroes(std::uint64_t offset, std::uint64_t length,
                                                ReqFlags flags) {
    if (flags & req_no_fallback) co_return errno_code(ENOTSUP);
    const std::uint64_t chunk = std::min<std::uint64_t>(length, 1u << 20);
    std::vector<std::byte> zeroes(chunk);
    for (std::uint64_t done = 0; done < length;) {
        const std::uint64_t n = std::min(chunk, length - done);
        if (auto e = co_await do_write(offset + done, std::span(zeroes.data(), n), flags & req_fua))
            co_return e;
        done += n;
    }
    co_return std::error_code{};
}

io::Task<std::error_code> Node::do_discard(std::uint64_t, std::uint64_t) {
    co_return std::error_code{};
}

io::Task<BlockStatus> Node::do_block_status(std::uint64_t, std::uint64_t length) {
    BlockStatus s;
    s.length = length;
    co_return s;
}

// ---- FilterNode -------------------------------------------------------------------------

PermPair FilterNode::child_perms(const Child& c, PermSet parent_perm, PermSet parent_shared) const {
    if (&c == file_) return filter_child_perms(parent_perm, parent_shared);
    return Node::child_perms(c, parent_perm, parent_shared);
}

void FilterNode::refresh_from_children() {
    if (!file_) return;
    set_size(file_->node().size());
    caps_ = file_->node().caps();
    limits_ = file_->node().limits();
}

io::Task<std::error_code> FilterNode::do_read(std::uint64_t offset, std::span<std::byte> buf,
                                              ReqFlags flags) {
    return file_->read(offset, buf, flags);
}
io::Task<std::error_code> FilterNode::do_write(std::uint64_t offset, std::span<const std::byte> buf,
                                               ReqFlags flags) {
    return file_->write(offset, buf, flags);
}
io::Task<std::error_code> FilterNode::do_write_zeroes(std::uint64_t offset, std::uint64_t length,
                                                      ReqFlags flags) {
    return file_->write_zeroes(offset, length, flags);
}
io::Task<std::error_code> FilterNode::do_discard(std::uint64_t offset, std::uint64_t length) {
    return file_->discard(offset, length);
}
io::Task<std::error_code> FilterNode::do_flush() {
    return file_->flush();
}
io::Task<BlockStatus> FilterNode::do_block_status(std::uint64_t offset, std::uint64_t length) {
    return file_->block_status(offset, length);
}

} // namespace fleece::block
