#include "block/range_lock.hpp"
#include "block/range_lock_model.hpp"
#include "io/event_loop.hpp"

#include <gtest/gtest.h>
#include <random>
#include <string>
#include <vector>

namespace fleece::block {
namespace {

using io::EventLoop;
using io::Task;
using Mode = RangeLockTable::Mode;

Task<void> turns(int n) {
    for (int i = 0; i < n; ++i)
        co_await EventLoop::current().yield();
}

// Takes the lock, logs +id, holds it for `hold` turns (or until *release_flag), logs -id.
Task<void> locker(RangeLockTable* t, std::uint64_t off, std::uint64_t len, Mode mode,
                  std::vector<int>* log, int id, int hold) {
    auto g = co_await t->lock(off, len, mode);
    EXPECT_TRUE(g.held());
    EXPECT_EQ(g.offset(), off);
    EXPECT_EQ(g.length(), len);
    log->push_back(id);
    co_await turns(hold);
    log->push_back(-id);
}

Task<void> idle_waiter(RangeLockTable* t, std::uint64_t off, std::uint64_t len,
                       std::vector<int>* log, int id) {
    co_await t->wait_idle(off, len);
    log->push_back(id);
}

template <class F> void run(F scenario) {
    EventLoop loop;
    loop.run_until_complete(scenario());
}

TEST(RangeLock, AdjacentRangesDoNotConflict) {
    RangeLockTable t;
    auto a = t.try_lock(0, 4096, Mode::exclusive);
    ASSERT_TRUE(a);
    auto b = t.try_lock(4096, 4096, Mode::exclusive);
    EXPECT_TRUE(b);
    EXPECT_FALSE(t.try_lock(4095, 2, Mode::shared));
    EXPECT_FALSE(t.try_lock(4095, 1, Mode::shared));
    EXPECT_FALSE(t.try_lock(8191, 1, Mode::exclusive));
    auto c = t.try_lock(8192, 1, Mode::exclusive);
    EXPECT_TRUE(c);
    EXPECT_TRUE(t.overlaps_holder(4095, 1));
    EXPECT_FALSE(t.overlaps_holder(8193, 100));
    EXPECT_EQ(t.holders(), 3u);
}

TEST(RangeLock, AdjacentLockDoesNotWait) {
    run([]() -> Task<void> {
        RangeLockTable t;
        auto a = co_await t.lock(100, 100, Mode::exclusive);
        auto b = co_await t.lock(200, 100, Mode::exclusive); // would hang if it waited
        auto c = co_await t.lock(0, 100, Mode::exclusive);
        EXPECT_EQ(t.holders(), 3u);
        EXPECT_EQ(t.waiters(), 0u);
    });
}

TEST(RangeLock, ZeroLengthConflictsWithNothing) {
    RangeLockTable t;
    auto big = t.try_lock(0, 1000, Mode::exclusive);
    ASSERT_TRUE(big);
    auto z = t.try_lock(500, 0, Mode::exclusive);
    ASSERT_TRUE(z);
    EXPECT_TRUE(z->held());
    EXPECT_EQ(z->length(), 0u);
    EXPECT_FALSE(t.overlaps_holder(500, 0));
    EXPECT_FALSE(t.overlaps_holder(1000, 5));
    big->release();
    EXPECT_FALSE(t.overlaps_holder(0, 1000)); // a zero-length holder covers nothing
    auto again = t.try_lock(0, 1000, Mode::exclusive);
    EXPECT_TRUE(again);
    z->release();
    EXPECT_FALSE(z->held());
    EXPECT_EQ(t.holders(), 1u);
}

TEST(RangeLock, ZeroLengthNeverWaitsEvenBehindWaiters) {
    run([]() -> Task<void> {
        RangeLockTable t;
        std::vector<int> log;
        auto s = co_await t.lock(0, 100, Mode::shared);
        EventLoop::current().spawn(locker(&t, 0, 100, Mode::exclusive, &log, 1, 0));
        co_await turns(2);
        EXPECT_EQ(t.waiters(), 1u);
        auto z = co_await t.lock(50, 0, Mode::exclusive);
        EXPECT_TRUE(z.held());
        co_await t.wait_idle(50, 0);
        EXPECT_TRUE(t.try_lock(10, 0, Mode::shared).has_value());
        s.release();
        co_await turns(3);
        EXPECT_EQ(log, (std::vector<int>{1, -1}));
    });
}

TEST(RangeLock, SharedHoldersOverlap) {
    run([]() -> Task<void> {
        RangeLockTable t;
        auto a = co_await t.lock(0, 100, Mode::shared);
        auto b = co_await t.lock(50, 100, Mode::shared);
        auto c = t.try_lock(0, 200, Mode::shared);
        EXPECT_TRUE(c);
        EXPECT_EQ(t.holders(), 3u);
        EXPECT_FALSE(t.try_lock(149, 1, Mode::exclusive));
        EXPECT_TRUE(t.try_lock(200, 1, Mode::exclusive));
    });
}

TEST(RangeLock, ExclusiveBlocksSharedAndViceVersa) {
    run([]() -> Task<void> {
        RangeLockTable t;
        std::vector<int> log;
        auto x = co_await t.lock(0, 100, Mode::exclusive);
        EXPECT_FALSE(t.try_lock(99, 10, Mode::shared));
        EventLoop::current().spawn(locker(&t, 99, 10, Mode::shared, &log, 1, 2));
        co_await turns(3);
        EXPECT_TRUE(log.empty());
        EXPECT_EQ(t.waiters(), 1u);
        x.release();
        EXPECT_EQ(t.holders(), 1u); // granted at release time, before it runs
        EXPECT_EQ(t.waiters(), 0u);
        EXPECT_FALSE(t.try_lock(0, 100, Mode::exclusive)); // no barging past the grant
        co_await turns(1);
        EXPECT_EQ(log, (std::vector<int>{1}));
        // Shared holder now blocks an exclusive request.
        EventLoop::current().spawn(locker(&t, 0, 100, Mode::exclusive, &log, 2, 0));
        co_await turns(1);
        EXPECT_EQ(log, (std::vector<int>{1}));
        co_await turns(5);
        EXPECT_EQ(log, (std::vector<int>{1, -1, 2, -2}));
        EXPECT_EQ(t.holders(), 0u);
    });
}

TEST(RangeLock, FifoWritersNotStarvedByReaders) {
    run([]() -> Task<void> {
        RangeLockTable t;
        std::vector<int> log;
        auto r0 = co_await t.lock(0, 100, Mode::shared);
        // A writer queues behind the reader; a later reader must queue behind the writer,
        // although it is compatible with the current holder.
        EventLoop::current().spawn(locker(&t, 0, 100, Mode::exclusive, &log, 1, 2));
        co_await turns(1);
        EventLoop::current().spawn(locker(&t, 50, 10, Mode::shared, &log, 2, 0));
        co_await turns(1);
        EventLoop::current().spawn(locker(&t, 200, 10, Mode::shared, &log, 3, 0)); // unrelated
        co_await turns(1);
        EXPECT_EQ(t.waiters(), 2u);
        EXPECT_FALSE(t.try_lock(55, 1, Mode::shared));    // would jump the waiting writer
        EXPECT_TRUE(t.try_lock(100, 5, Mode::exclusive)); // adjacent to both
        co_await turns(3);
        EXPECT_EQ(log, (std::vector<int>{3, -3}));
        r0.release();
        co_await turns(10);
        EXPECT_EQ(log, (std::vector<int>{3, -3, 1, -1, 2, -2}));
    });
}

TEST(RangeLock, FifoAmongWriters) {
    run([]() -> Task<void> {
        RangeLockTable t;
        std::vector<int> log;
        auto hold = co_await t.lock(0, 10, Mode::exclusive);
        for (int i = 1; i <= 4; ++i) {
            EventLoop::current().spawn(locker(&t, 0, 10 + i, Mode::exclusive, &log, i, 1));
            co_await turns(1);
        }
        hold.release();
        co_await turns(20);
        EXPECT_EQ(log, (std::vector<int>{1, -1, 2, -2, 3, -3, 4, -4}));
    });
}

TEST(RangeLock, QueuedReadersAreGrantedTogether) {
    run([]() -> Task<void> {
        RangeLockTable t;
        std::vector<int> log;
        auto w = co_await t.lock(0, 100, Mode::exclusive);
        EventLoop::current().spawn(locker(&t, 0, 10, Mode::shared, &log, 1, 3));
        EventLoop::current().spawn(locker(&t, 5, 10, Mode::shared, &log, 2, 3));
        co_await turns(1);
        w.release();
        EXPECT_EQ(t.holders(), 2u);
        co_await turns(1);
        EXPECT_EQ(log, (std::vector<int>{1, 2}));
        co_await turns(5);
    });
}

TEST(RangeLock, ShrinkWakesWaiters) {
    run([]() -> Task<void> {
        RangeLockTable t;
        std::vector<int> log;
        auto g = co_await t.lock(0, 8192, Mode::exclusive);
        EventLoop::current().spawn(locker(&t, 4096, 4096, Mode::exclusive, &log, 1, 0));
        co_await turns(1);
        EventLoop::current().spawn(locker(&t, 0, 10, Mode::shared, &log, 2, 0));
        co_await turns(2);
        EXPECT_EQ(t.waiters(), 2u);
        t.shrink(g, 8192); // no-op
        EXPECT_EQ(t.waiters(), 2u);
        t.shrink(g, 4096);
        EXPECT_EQ(g.length(), 4096u);
        EXPECT_EQ(g.offset(), 0u);
        EXPECT_EQ(t.waiters(), 1u);
        co_await turns(2);
        EXPECT_EQ(log, (std::vector<int>{1, -1}));
        EXPECT_TRUE(t.overlaps_holder(4095, 1));
        EXPECT_FALSE(t.overlaps_holder(4096, 1));
        t.shrink(g, 0);
        EXPECT_TRUE(g.held());
        EXPECT_EQ(g.length(), 0u);
        co_await turns(2);
        EXPECT_EQ(log, (std::vector<int>{1, -1, 2, -2}));
        EXPECT_EQ(t.holders(), 1u);
        g.release();
        EXPECT_EQ(t.holders(), 0u);
    });
}

TEST(RangeLock, WaitIdle) {
    run([]() -> Task<void> {
        RangeLockTable t;
        std::vector<int> log;
        co_await t.wait_idle(0, 100); // empty table: immediate
        auto s = co_await t.lock(0, 100, Mode::shared);
        co_await t.wait_idle(100, 100);                               // adjacent: immediate
        EventLoop::current().spawn(idle_waiter(&t, 50, 10, &log, 1)); // overlaps a reader
        co_await turns(2);
        EXPECT_TRUE(log.empty());
        EXPECT_EQ(t.waiters(), 1u);
        EXPECT_EQ(t.holders(), 1u); // takes no lock
        // Later requests queue behind wait_idle, so it cannot be starved.
        EventLoop::current().spawn(locker(&t, 0, 100, Mode::shared, &log, 2, 1));
        co_await turns(2);
        EXPECT_TRUE(log.empty());
        EXPECT_FALSE(t.try_lock(55, 1, Mode::shared));
        s.release();
        EXPECT_EQ(t.waiters(), 0u);
        co_await turns(5);
        EXPECT_EQ(log, (std::vector<int>{1, 2, -2}));
        EXPECT_EQ(t.holders(), 0u);
    });
}

TEST(RangeLock, WaitIdleWaitsForEarlierWaiters) {
    run([]() -> Task<void> {
        RangeLockTable t;
        std::vector<int> log;
        auto x = co_await t.lock(0, 10, Mode::exclusive);
        EventLoop::current().spawn(locker(&t, 5, 20, Mode::exclusive, &log, 1, 2));
        co_await turns(1);
        // Overlaps only the waiter, not the holder: still waits for it.
        EventLoop::current().spawn(idle_waiter(&t, 20, 10, &log, 2));
        co_await turns(2);
        EXPECT_TRUE(log.empty());
        x.release();
        co_await turns(10);
        EXPECT_EQ(log, (std::vector<int>{1, -1, 2}));
    });
}

TEST(RangeLock, GuardMoveAndRelease) {
    RangeLockTable t;
    RangeLockTable::Guard empty;
    EXPECT_FALSE(empty.held());
    EXPECT_EQ(empty.length(), 0u);
    {
        auto g = t.try_lock(0, 10, Mode::exclusive);
        ASSERT_TRUE(g);
        RangeLockTable::Guard moved(std::move(*g));
        EXPECT_FALSE(g->held());
        EXPECT_TRUE(moved.held());
        EXPECT_TRUE(moved.exclusive());
        EXPECT_EQ(t.holders(), 1u);
        auto other = t.try_lock(20, 10, Mode::shared);
        ASSERT_TRUE(other);
        moved = std::move(*other); // drops [0,10)
        EXPECT_EQ(t.holders(), 1u);
        EXPECT_EQ(moved.offset(), 20u);
        EXPECT_TRUE(t.try_lock(0, 10, Mode::exclusive));
        moved.release();
        moved.release();
        EXPECT_EQ(t.holders(), 0u);
        auto last = t.try_lock(0, 10, Mode::exclusive);
        EXPECT_EQ(t.holders(), 1u);
    } // destructor releases
    EXPECT_EQ(t.holders(), 0u);
}

TEST(RangeLock, FullRangeAtTopOfAddressSpace) {
    RangeLockTable t;
    const std::uint64_t max = ~std::uint64_t{0};
    auto a = t.try_lock(max - 10, 10, Mode::exclusive);
    ASSERT_TRUE(a);
    EXPECT_FALSE(t.try_lock(0, max, Mode::shared));
    EXPECT_TRUE(t.try_lock(0, max - 10, Mode::exclusive));
}

// Starts a task eagerly and lets the test destroy it while it is suspended.
struct Starter {
    struct promise_type {
        Starter get_return_object() {
            return {std::coroutine_handle<promise_type>::from_promise(*this)};
        }
        std::suspend_never initial_suspend() noexcept { return {}; }
        std::suspend_always final_suspend() noexcept { return {}; }
        void return_void() noexcept {}
        void unhandled_exception() noexcept { std::terminate(); }
    };
    std::coroutine_handle<promise_type> h;
};
Starter start(Task<void>* task) {
    co_await std::move(*task);
}

TEST(RangeLock, DestroyedWaiterWithdrawsItsRequest) {
    EventLoop loop;
    RangeLockTable t;
    std::vector<int> log;
    auto x = t.try_lock(0, 10, Mode::exclusive);
    ASSERT_TRUE(x);
    auto w1 = locker(&t, 0, 20, Mode::exclusive, &log, 1, 0);
    Starter s = start(&w1); // runs until lock() suspends
    EXPECT_EQ(t.waiters(), 1u);
    loop.spawn(locker(&t, 15, 5, Mode::shared, &log, 2, 0)); // queued behind w1 only
    loop.run_until_complete(turns(2));
    EXPECT_TRUE(log.empty());
    EXPECT_EQ(t.waiters(), 2u);
    s.h.destroy();
    w1 = Task<void>(); // destroys the suspended frames; the request is withdrawn
    EXPECT_EQ(t.waiters(), 0u);
    loop.run_until_complete(turns(2));
    EXPECT_EQ(log, (std::vector<int>{2, -2}));
    x->release();
    EXPECT_EQ(t.holders(), 0u);
}

struct Mt {
    std::mt19937_64 rng;
    std::uint64_t next(std::uint64_t bound) {
        return bound <= 1 ? 0 : std::uniform_int_distribution<std::uint64_t>(0, bound - 1)(rng);
    }
};

TEST(RangeLock, ModelBasedRandomSchedules) {
    for (std::uint64_t seed = 1; seed <= 200; ++seed) {
        SCOPED_TRACE("seed " + std::to_string(seed));
        EventLoop loop;
        Mt src{std::mt19937_64(seed)};
        const int workers = 4 + static_cast<int>(seed % 29); // 4..32 coroutines
        const std::string error =
            loop.run_until_complete(testing::run_range_lock_scenario(&src, workers, 40));
        ASSERT_EQ(error, "");
    }
}

// The model itself, on a hand-checked case: a reader behind a queued writer waits.
TEST(RangeLockModel, ReferenceRules) {
    using M = testing::RangeLockModel;
    M m;
    const auto r = m.request(0, 10, M::Kind::shared);
    const auto w = m.request(0, 10, M::Kind::exclusive);
    const auto r2 = m.request(5, 1, M::Kind::shared);
    const auto z = m.request(5, 0, M::Kind::exclusive);
    EXPECT_EQ(m.req(r).state, M::State::granted);
    EXPECT_EQ(m.req(w).state, M::State::pending);
    EXPECT_EQ(m.req(r2).state, M::State::pending);
    EXPECT_EQ(m.req(z).state, M::State::granted);
    m.release(r);
    EXPECT_EQ(m.req(w).state, M::State::granted);
    EXPECT_EQ(m.req(r2).state, M::State::pending);
    m.release(w);
    EXPECT_EQ(m.req(r2).state, M::State::granted);
}

} // namespace
} // namespace fleece::block
