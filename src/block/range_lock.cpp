#include "block/range_lock.hpp"

#include "io/event_loop.hpp"
#include "util/assert.hpp"

#include <limits>

namespace fleece::block {

// Suspends a request that was queued in waiters_. grant_waiters() sets `granted_` and
// posts the coroutine. If the frame is destroyed while still suspended, the destructor
// withdraws the request (or drops the lock it was already granted).
class RangeLockTable::Awaiter {
  public:
    Awaiter(RangeLockTable* table, Iter it) : table_(table), it_(it), kind_(it->kind) {
        it_->granted = &granted_;
    }
    Awaiter(const Awaiter&) = delete;
    Awaiter& operator=(const Awaiter&) = delete;
    ~Awaiter() {
        if (!resumed_) table_->cancel(it_, kind_, granted_);
    }
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) noexcept { it_->waiter = h; }
    void await_resume() noexcept {
        FLEECE_ASSERT(granted_);
        resumed_ = true;
    }

  private:
    RangeLockTable* table_;
    Iter it_; // dangles once an idle request is granted; only used for lock requests then
    Kind kind_;
    bool granted_ = false;
    bool resumed_ = false;
};

RangeLockTable::~RangeLockTable() {
    // A Guard or a suspended request outliving the table would touch freed memory.
    FLEECE_ASSERT(holders_.empty());
    FLEECE_ASSERT(waiters_.empty());
}

void RangeLockTable::check_range(std::uint64_t offset, std::uint64_t length) {
    FLEECE_ASSERT(length <= std::numeric_limits<std::uint64_t>::max() - offset);
}

bool RangeLockTable::can_grant_now(const Entry& e) const {
    for (const Entry& h : holders_)
        if (conflict(h, e)) return false;
    for (const Entry& w : waiters_)
        if (conflict(w, e)) return false;
    return true;
}

RangeLockTable::Iter RangeLockTable::enqueue(Entry e) {
    e.state = State::waiting;
    waiters_.push_back(e);
    return std::prev(waiters_.end());
}

void RangeLockTable::add_holder_checked(Iter it) {
    // Invariant: no two conflicting holders overlap.
    for (auto h = holders_.begin(); h != holders_.end(); ++h)
        FLEECE_ASSERT(h == it || !conflict(*h, *it));
}

io::Task<RangeLockTable::Guard> RangeLockTable::lock(std::uint64_t offset, std::uint64_t length,
                                                     Mode mode) {
    check_range(offset, length);
    Entry e{offset, length, kind_of(mode), State::held, {}, nullptr};
    if (can_grant_now(e)) {
        holders_.push_back(e);
        add_holder_checked(std::prev(holders_.end()));
        co_return Guard(this, std::prev(holders_.end()));
    }
    const Iter it = enqueue(e);
    co_await Awaiter(this, it);
    // grant_waiters() moved the entry to holders_ (splice keeps the iterator valid).
    FLEECE_ASSERT(it->state == State::held);
    co_return Guard(this, it);
}

std::optional<RangeLockTable::Guard> RangeLockTable::try_lock(std::uint64_t offset,
                                                              std::uint64_t length, Mode mode) {
    check_range(offset, length);
    Entry e{offset, length, kind_of(mode), State::held, {}, nullptr};
    if (!can_grant_now(e)) return std::nullopt;
    holders_.push_back(e);
    add_holder_checked(std::prev(holders_.end()));
    return Guard(this, std::prev(holders_.end()));
}

io::Task<void> RangeLockTable::wait_idle(std::uint64_t offset, std::uint64_t length) {
    check_range(offset, length);
    Entry e{offset, length, Kind::idle, State::waiting, {}, nullptr};
    if (can_grant_now(e)) co_return;
    co_await Awaiter(this, enqueue(e));
}

bool RangeLockTable::overlaps_holder(std::uint64_t offset, std::uint64_t length) const {
    check_range(offset, length);
    for (const Entry& h : holders_)
        if (overlap(h.offset, h.length, offset, length)) return true;
    return false;
}

void RangeLockTable::shrink(Guard& guard, std::uint64_t new_length) {
    FLEECE_ASSERT(guard.table_ == this);
    FLEECE_ASSERT(guard.it_->state == State::held);
    FLEECE_ASSERT(new_length <= guard.it_->length);
    if (new_length == guard.it_->length) return;
    guard.it_->length = new_length;
    grant_waiters();
}

void RangeLockTable::release(Iter it) {
    FLEECE_ASSERT(it->state == State::held);
    holders_.erase(it);
    grant_waiters();
}

void RangeLockTable::cancel(Iter it, Kind kind, bool granted) {
    if (granted) {
        // Granted but destroyed before it ran: give the lock back.
        if (kind != Kind::idle) release(it);
        return;
    }
    FLEECE_ASSERT(it->state == State::waiting);
    waiters_.erase(it);
    grant_waiters(); // later requests may have been queued only behind this one
}

void RangeLockTable::grant_waiters() {
    auto it = waiters_.begin();
    while (it != waiters_.end()) {
        bool blocked = false;
        for (const Entry& h : holders_) {
            if (conflict(h, *it)) {
                blocked = true;
                break;
            }
        }
        for (auto w = waiters_.begin(); !blocked && w != it; ++w)
            blocked = conflict(*w, *it);
        if (blocked) {
            ++it;
            continue;
        }
        const auto next = std::next(it);
        const std::coroutine_handle<> h = it->waiter;
        FLEECE_ASSERT(h && it->granted != nullptr);
        *it->granted = true;
        if (it->kind == Kind::idle) {
            waiters_.erase(it);
        } else {
            it->state = State::held;
            it->waiter = {};
            it->granted = nullptr;
            holders_.splice(holders_.end(), waiters_, it);
            add_holder_checked(it);
        }
        io::EventLoop::current().post(h);
        it = next;
    }
}

} // namespace fleece::block
