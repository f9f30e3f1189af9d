#pragma once
// DirectWriteOrder: keeps the file node's O_DIRECT read-modify-writes from losing a
// concurrent write, at no cost to whole-block writes while no read-modify-write is pending.
//
// A misaligned O_DIRECT write reads its covering aligned range, patches it and writes it
// back; a write into that range landing between the read and the write-back would be lost.
// So a read-modify-write holds its range exclusively and other writes must not overlap it.
// Whole-block writes are the hot path (a guest's 4 KiB or 1 MiB writes) and read-modify-
// writes are rare (a format driver's small metadata update on a cache.direct image), so:
//   - while no read-modify-write is pending, a write only counts itself in flight;
//   - a read-modify-write first marks itself pending (from then on every new write takes a
//     shared range lock), waits until the counted writes are done, then locks its range
//     exclusively;
//   - the last read-modify-write to finish brings back the lock-free path.
// Loop thread only. Must outlive every Hold.

#include "block/range_lock.hpp"
#include "io/sync.hpp"
#include "io/task.hpp"

#include <cstdint>
#include <optional>
#include <utility>

namespace fleece::nodes {

class DirectWriteOrder {
  public:
    // What a write holds until it completed: a count in flight, a range lock, or both a
    // range lock and a pending read-modify-write mark.
    class Hold {
      public:
        Hold() = default;
        Hold(Hold&& o) noexcept
            : order_(std::exchange(o.order_, nullptr)), counted_(o.counted_), rmw_(o.rmw_),
              range_(std::move(o.range_)) {}
        Hold& operator=(Hold&& o) noexcept {
            if (this != &o) {
                release();
                order_ = std::exchange(o.order_, nullptr);
                counted_ = o.counted_;
                rmw_ = o.rmw_;
                range_ = std::move(o.range_);
            }
            return *this;
        }
        Hold(const Hold&) = delete;
        Hold& operator=(const Hold&) = delete;
        ~Hold() { release(); }

        void release() {
            range_.release();
            if (!order_) return;
            DirectWriteOrder* o = std::exchange(order_, nullptr);
            if (counted_) o->unlocked_done();
            if (rmw_) --o->rmw_pending_;
        }
        bool lock_free() const { return order_ && counted_; }

      private:
        friend class DirectWriteOrder;
        DirectWriteOrder* order_ = nullptr;
        bool counted_ = false; // counted in unlocked_in_flight_
        bool rmw_ = false;     // counted in rmw_pending_
        block::RangeLockTable::Guard range_;
    };

    DirectWriteOrder() = default;
    DirectWriteOrder(const DirectWriteOrder&) = delete;
    DirectWriteOrder& operator=(const DirectWriteOrder&) = delete;

    // A write of whole aligned blocks [offset, offset+length).
    io::Task<Hold> write(std::uint64_t offset, std::uint64_t length) {
        // No co_await between the check and the count: a read-modify-write that marks
        // itself pending later will see this write counted and wait for it.
        if (rmw_pending_ == 0) {
            Hold h;
            h.order_ = this;
            h.counted_ = true;
            ++unlocked_in_flight_;
            co_return h;
        }
        Hold h;
        h.range_ = co_await ranges_.lock(offset, length, block::RangeLockTable::Mode::shared);
        co_return h;
    }

    // A read-modify-write of the aligned range [offset, offset+length).
    io::Task<Hold> read_modify_write(std::uint64_t offset, std::uint64_t length) {
        Hold h;
        h.order_ = this;
        h.rmw_ = true;
        ++rmw_pending_; // from here on, new writes take range locks
        while (unlocked_in_flight_ > 0)
            co_await unlocked_idle_.wait();
        h.range_ = co_await ranges_.lock(offset, length, block::RangeLockTable::Mode::exclusive);
        co_return h;
    }

    std::uint64_t unlocked_in_flight() const { return unlocked_in_flight_; }
    std::uint64_t rmw_pending() const { return rmw_pending_; }

  private:
    void unlocked_done() {
        if (--unlocked_in_flight_ == 0) unlocked_idle_.notify_all();
    }

    block::RangeLockTable ranges_;
    std::uint64_t unlocked_in_flight_ = 0;
    std::uint64_t rmw_pending_ = 0;
    io::WaitQueue unlocked_idle_;
};

} // namespace fleece::nodes
