#include "io/buffer_pool.hpp"
#include "io/sync.hpp"

#include <gtest/gtest.h>
#include <vector>

namespace fleece::io {
namespace {

Task<void> locker(AsyncMutex* m, std::vector<int>* log, int id) {
    auto guard = co_await m->lock();
    log->push_back(id);
    co_await EventLoop::current().yield();
    co_await EventLoop::current().yield();
    log->push_back(-id);
}

Task<void> mutex_scenario(std::vector<int>* log) {
    AsyncMutex m;
    for (int i = 1; i <= 3; ++i)
        EventLoop::current().spawn(locker(&m, log, i));
    for (int i = 0; i < 20; ++i)
        co_await EventLoop::current().yield();
}

TEST(AsyncMutex, ExclusiveAndFifo) {
    EventLoop loop;
    std::vector<int> log;
    loop.run_until_complete(mutex_scenario(&log));
    EXPECT_EQ(log, (std::vector<int>{1, -1, 2, -2, 3, -3}));
}

Task<void> sem_user(AsyncSemaphore* s, std::uint64_t n, std::vector<int>* log, int id) {
    auto units = co_await s->acquire(n);
    log->push_back(id);
    co_await EventLoop::current().yield();
}

Task<void> semaphore_scenario(std::vector<int>* log) {
    AsyncSemaphore s(4);
    auto held = co_await s.acquire(3);
    EventLoop::current().spawn(sem_user(&s, 2, log, 1)); // must wait: 1 left
    EventLoop::current().spawn(sem_user(&s, 1, log, 2)); // FIFO: waits behind 1
    for (int i = 0; i < 5; ++i)
        co_await EventLoop::current().yield();
    EXPECT_TRUE(log->empty());
    held.release();
    for (int i = 0; i < 10; ++i)
        co_await EventLoop::current().yield();
    EXPECT_EQ(s.available(), 4u);
}

TEST(AsyncSemaphore, FifoWithoutStarvation) {
    EventLoop loop;
    std::vector<int> log;
    loop.run_until_complete(semaphore_scenario(&log));
    EXPECT_EQ(log, (std::vector<int>{1, 2}));
}

Task<void> gate_worker(Gate* g, Event* release, int* finished) {
    auto holder = g->enter();
    EXPECT_TRUE(holder);
    co_await release->wait();
    ++*finished;
}

Task<void> gate_scenario() {
    Gate gate;
    Event release;
    int finished = 0;
    for (int i = 0; i < 3; ++i)
        EventLoop::current().spawn(gate_worker(&gate, &release, &finished));
    co_await EventLoop::current().yield();
    EXPECT_EQ(gate.count(), 3u);
    auto releaser = [](Event* e) -> Task<void> {
        co_await sleep_for(std::chrono::milliseconds(5));
        e->set();
    };
    EventLoop::current().spawn(releaser(&release));
    co_await gate.close();
    EXPECT_EQ(finished, 3);
    EXPECT_FALSE(gate.enter()); // closed gates admit nobody
}

TEST(Gate, CloseWaitsForEveryoneInside) {
    EventLoop loop;
    loop.run_until_complete(gate_scenario());
}

Task<void> pool_user(BufferPool* pool, int* max_seen, int* live) {
    auto buf = co_await pool->get(64 * 1024);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(buf.data()) % BufferPool::alignment, 0u);
    ++*live;
    *max_seen = std::max(*max_seen, *live);
    co_await sleep_for(std::chrono::milliseconds(1));
    --*live;
}

Task<void> pool_scenario(int* max_seen) {
    BufferPool pool(256 * 1024); // room for 4 buffers of 64 KiB
    int live = 0;
    Gate gate;
    for (int i = 0; i < 16; ++i)
        EventLoop::current().spawn(pool_user(&pool, max_seen, &live));
    while (true) {
        co_await sleep_for(std::chrono::milliseconds(2));
        if (live == 0 && pool.bytes_in_use() == 0) break;
    }
}

TEST(BufferPool, BudgetBoundsLiveBuffers) {
    EventLoop loop;
    int max_seen = 0;
    loop.run_until_complete(pool_scenario(&max_seen));
    EXPECT_EQ(max_seen, 4);
}

} // namespace
} // namespace fleece::io
