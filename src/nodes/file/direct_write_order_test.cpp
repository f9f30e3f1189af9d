#include "io/event_loop.hpp"
#include "nodes/file/direct_write_order.hpp"

#include <gtest/gtest.h>
#include <string>
#include <vector>

namespace fleece::nodes {
namespace {

using Hold = DirectWriteOrder::Hold;

struct Log {
    std::vector<std::string> events;
    int plain_active_on_block0 = 0; // writes of [0, 4096) holding their hold
    bool rmw_active = false;
    int overlaps = 0; // an RMW and another write of block 0 held at the same time
};

// Takes a hold of the given kind, logs when it has it, keeps it for `turns` loop turns.
io::Task<void> writer(DirectWriteOrder* order, Log* log, std::string name, bool rmw,
                      std::uint64_t offset, std::uint64_t length, int turns) {
    Hold h;
    if (rmw)
        h = co_await order->read_modify_write(offset, length);
    else
        h = co_await order->write(offset, length);
    const bool block0 = offset == 0;
    if (rmw) {
        if (log->plain_active_on_block0 > 0) ++log->overlaps;
        log->rmw_active = true;
    } else if (block0) {
        if (log->rmw_active) ++log->overlaps;
        ++log->plain_active_on_block0;
    }
    log->events.push_back(name + " start");
    for (int i = 0; i < turns; ++i)
        co_await io::EventLoop::current().yield();
    log->events.push_back(name + " end");
    if (rmw)
        log->rmw_active = false;
    else if (block0)
        --log->plain_active_on_block0;
}

// A write of block 0 that starts after `turns` loop turns.
io::Task<void> delayed_writer(DirectWriteOrder* order, Log* log, std::string name, int turns) {
    for (int i = 0; i < turns; ++i)
        co_await io::EventLoop::current().yield();
    co_await writer(order, log, std::move(name), false, 0, 4096, 1);
}

io::Task<void> held_by_gate(io::Task<void> inner, io::Gate::Holder hold) {
    co_await std::move(inner);
    hold.leave();
}

// Starts the tasks in order and waits for all of them.
io::Task<void> run_all(std::vector<io::Task<void>> tasks) {
    io::Gate gate;
    for (auto& t : tasks)
        io::EventLoop::current().spawn(held_by_gate(std::move(t), gate.enter()));
    co_await gate.close();
}

TEST(DirectWriteOrder, WritesTakeNoLockWhileNoReadModifyWriteIsPending) {
    io::EventLoop loop;
    DirectWriteOrder order;
    Hold a = loop.run_until_complete(order.write(0, 4096));
    Hold b = loop.run_until_complete(order.write(0, 4096)); // same range: no conflict
    EXPECT_TRUE(a.lock_free());
    EXPECT_TRUE(b.lock_free());
    EXPECT_EQ(order.unlocked_in_flight(), 2u);
    a.release();
    b.release();
    EXPECT_EQ(order.unlocked_in_flight(), 0u);
}

TEST(DirectWriteOrder, ReadModifyWriteWaitsForWritesInFlightAndHoldsLaterOnesBack) {
    io::EventLoop loop;
    DirectWriteOrder order;
    Log log;
    std::vector<io::Task<void>> tasks;
    // w1 is in flight (lock-free) when the RMW comes; w2 and w4 overlap the RMW and come
    // after it (w4 once it holds its lock); w3 touches another block.
    tasks.push_back(writer(&order, &log, "w1", false, 0, 4096, 5));
    tasks.push_back(writer(&order, &log, "rmw", true, 0, 4096, 5));
    tasks.push_back(writer(&order, &log, "w2", false, 0, 4096, 1));
    tasks.push_back(writer(&order, &log, "w3", false, 8192, 4096, 1));
    tasks.push_back(delayed_writer(&order, &log, "w4", 8));
    loop.run_until_complete(run_all(std::move(tasks)));

    auto at = [&](const std::string& e) {
        for (std::size_t i = 0; i < log.events.size(); ++i)
            if (log.events[i] == e) return i;
        ADD_FAILURE() << "missing event " << e;
        return log.events.size();
    };
    EXPECT_EQ(log.events.size(), 10u);
    EXPECT_LT(at("w1 end"), at("rmw start")); // the RMW waits for the lock-free write
    EXPECT_LT(at("rmw end"), at("w4 start")); // a write that comes while it holds waits
    EXPECT_EQ(log.overlaps, 0);
    EXPECT_EQ(order.rmw_pending(), 0u);
    EXPECT_EQ(order.unlocked_in_flight(), 0u);
    // Back to the lock-free path once no RMW is pending.
    Hold h = loop.run_until_complete(order.write(0, 4096));
    EXPECT_TRUE(h.lock_free());
}

} // namespace
} // namespace fleece::nodes
