#pragma once
// RangeLockTable: byte-range locks for the single data-plane thread.
//
// Modes are shared and exclusive. Two requests conflict when both ranges are non-empty,
// they overlap, and at least one of them is exclusive; a zero-length range conflicts with
// nothing. Fairness is strict FIFO among conflicting requests: a request is granted only
// when it conflicts with no holder AND with no earlier waiter, so a stream of readers
// cannot starve a writer (and a later reader queues behind a waiting writer).
//
// Grants are decided synchronously when a lock is released or shrunk: the waiter becomes
// a holder at that moment (nobody can barge in before it runs) and its coroutine is
// posted to the loop, like AsyncMutex. Not thread-safe; loop thread only.
//
// wait_idle() queues like an exclusive request that releases the instant it is granted:
// it completes once no holder and no earlier waiter overlaps the range (any mode), and
// requests made after it queue behind it, so it cannot be starved either.
//
// The table must outlive every Guard and every pending lock()/wait_idle().

#include "io/task.hpp"

#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <list>
#include <optional>
#include <utility>

namespace fleece::block {

class RangeLockTable {
  public:
    enum class Mode { shared, exclusive };

  private:
    enum class Kind : std::uint8_t { shared, exclusive, idle };
    enum class State : std::uint8_t { waiting, held };
    struct Entry {
        std::uint64_t offset;
        std::uint64_t length;
        Kind kind;
        State state;
        std::coroutine_handle<> waiter; // set while waiting
        bool* granted = nullptr;        // the awaiter's flag, set when the grant is decided
    };
    using List = std::list<Entry>;
    using Iter = List::iterator;

  public:
    class Guard {
      public:
        Guard() = default;
        Guard(Guard&& o) noexcept : table_(std::exchange(o.table_, nullptr)), it_(o.it_) {}
        Guard& operator=(Guard&& o) noexcept {
            if (this != &o) {
                release();
                table_ = std::exchange(o.table_, nullptr);
                it_ = o.it_;
            }
            return *this;
        }
        Guard(const Guard&) = delete;
        Guard& operator=(const Guard&) = delete;
        ~Guard() { release(); }

        void release() {
            if (table_) std::exchange(table_, nullptr)->release(it_);
        }
        bool held() const { return table_ != nullptr; }
        // The held range; 0/0 once released.
        std::uint64_t offset() const { return table_ ? it_->offset : 0; }
        std::uint64_t length() const { return table_ ? it_->length : 0; }
        bool exclusive() const { return table_ && it_->kind == Kind::exclusive; }

      private:
        friend class RangeLockTable;
        Guard(RangeLockTable* t, Iter it) : table_(t), it_(it) {}
        RangeLockTable* table_ = nullptr;
        Iter it_{};
    };

    RangeLockTable() = default;
    RangeLockTable(const RangeLockTable&) = delete;
    RangeLockTable& operator=(const RangeLockTable&) = delete;
    ~RangeLockTable();

    // Waits (FIFO) until [offset, offset+length) can be held in `mode`.
    io::Task<Guard> lock(std::uint64_t offset, std::uint64_t length, Mode mode);
    // Succeeds only if lock() would not wait: no conflicting holder and no conflicting waiter.
    std::optional<Guard> try_lock(std::uint64_t offset, std::uint64_t length, Mode mode);
    // Waits until no holder and no earlier waiter overlaps the range (in any mode); takes
    // no lock. A zero-length range completes immediately.
    io::Task<void> wait_idle(std::uint64_t offset, std::uint64_t length);

    // Whether any holder (any mode) overlaps the range. Zero length: false.
    bool overlaps_holder(std::uint64_t offset, std::uint64_t length) const;
    std::size_t holders() const { return holders_.size(); }
    // Pending lock() and wait_idle() calls.
    std::size_t waiters() const { return waiters_.size(); }

    // Shrinks a held lock to [offset, offset+new_length) (new_length <= length), granting
    // waiters that no longer conflict. A lock shrunk to zero stays held but blocks nothing.
    void shrink(Guard& guard, std::uint64_t new_length);

  private:
    class Awaiter;

    static bool overlap(std::uint64_t a_off, std::uint64_t a_len, std::uint64_t b_off,
                        std::uint64_t b_len) {
        return a_len != 0 && b_len != 0 && a_off < b_off + b_len && b_off < a_off + a_len;
    }
    static bool conflict(const Entry& a, const Entry& b) {
        if (a.kind == Kind::shared && b.kind == Kind::shared) return false;
        return overlap(a.offset, a.length, b.offset, b.length);
    }
    static Kind kind_of(Mode m) { return m == Mode::shared ? Kind::shared : Kind::exclusive; }
    static void check_range(std::uint64_t offset, std::uint64_t length);

    // Would a new request `e` (queued after every current waiter) be granted right away?
    bool can_grant_now(const Entry& e) const;
    // Queue `e` as a waiter; returns its position.
    Iter enqueue(Entry e);
    void add_holder_checked(Iter it);
    void release(Iter it);
    void cancel(Iter it, Kind kind, bool granted);
    // Grants every waiter that no longer conflicts with a holder or an earlier waiter.
    void grant_waiters();

    List holders_;
    List waiters_; // FIFO
};

} // namespace fleece::block
