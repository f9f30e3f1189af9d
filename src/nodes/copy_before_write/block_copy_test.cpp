// BlockCopy on its own: exactly-once copies under concurrency, re-dirtying on failure,
// rate limit and cancellation of the background loop.
#include "block/block_copy.hpp"
#include "nodes/copy_before_write/cbw_test_util.hpp"

#include <cstring>

namespace fleece::nodes::testing {
namespace {

using namespace std::chrono_literals;
using block::BlockCopy;
using block::CopyOptions;
constexpr std::uint64_t M = 1024 * 1024;

struct Copier {
    io::EventLoop loop;
    block::Graph g;
    MemoryNode* src;
    MemoryNode* tgt;
    User user{"job"};
    std::unique_ptr<block::Child> sc, tc;
    std::unique_ptr<BlockCopy> bc;
    explicit Copier(std::uint64_t size) {
        src = static_cast<MemoryNode*>(*g.add(std::make_unique<MemoryNode>("src", size)));
        tgt = static_cast<MemoryNode*>(*g.add(std::make_unique<MemoryNode>("tgt", size)));
        std::memset(src->data().data(), 0x5a, size);
        sc = std::move(*g.attach(user, *src, block::perm_consistent_read, block::perm_all));
        tc = std::move(*g.attach(user, *tgt, block::perm_write, block::perm_all, "target"));
        bc = std::make_unique<BlockCopy>(*sc, *tc, BlockCopy::cluster_size_for(*tgt, 0), false);
    }
    ~Copier() {
        loop.run_until_complete(bc->close());
        bc.reset();
        g.detach(std::move(sc));
        g.detach(std::move(tc));
        loop.run_until_complete(g.close_all());
    }
};

struct Count {
    unsigned running = 0;
    io::WaitQueue idle;
    std::vector<std::error_code> results;
};

io::Task<void> one_copy(Count* c, BlockCopy* bc, std::uint64_t off, std::uint64_t len) {
    c->results.push_back(co_await bc->copy(off, len, CopyOptions{true, {}, 4, 256 * 1024}));
    if (--c->running == 0) c->idle.notify_all();
}
io::Task<void> wait_count(Count* c) {
    while (c->running)
        co_await c->idle.wait();
}
io::Task<std::error_code> copy_all(BlockCopy* bc, CopyOptions o) {
    co_return co_await bc->copy_all_background(o);
}
io::Task<std::error_code> copy_range(BlockCopy* bc, std::uint64_t off, std::uint64_t len) {
    co_return co_await bc->copy(off, len, CopyOptions{true, {}, 64, 0});
}

TEST(BlockCopy, OverlappingCallsCopyEachClusterOnce) {
    for (std::uint64_t seed = 1; seed <= 20; ++seed) {
        Copier c(4 * M);
        c.src->set_random_delay(seed, 8);
        c.tgt->set_random_delay(seed + 100, 8);
        Count n;
        std::mt19937_64 rng(seed);
        for (int i = 0; i < 16; ++i) {
            const std::uint64_t off = rng() % (4 * M);
            ++n.running;
            c.loop.spawn(one_copy(&n, c.bc.get(), off, 1 + rng() % (4 * M - off)));
        }
        ++n.running;
        c.loop.spawn(one_copy(&n, c.bc.get(), 0, 4 * M));
        c.loop.run_until_complete(wait_count(&n));
        for (auto ec : n.results)
            EXPECT_FALSE(ec) << "seed " << seed;
        EXPECT_EQ(c.tgt->bytes_written(), 4 * M) << "seed " << seed;
        EXPECT_EQ(c.tgt->data(), c.src->data()) << "seed " << seed;
        EXPECT_EQ(c.bc->progress_done(), 4 * M);
        EXPECT_EQ(c.bc->progress_total(), 4 * M);
    }
}

TEST(BlockCopy, TargetGetsPageAlignedBuffers) {
    // An O_DIRECT target takes page-aligned memory as is; anything else costs a bounce copy
    // and, on ext4, an exclusive inode lock for a write into fresh space.
    Copier c(8 * M);
    c.loop.run_until_complete(copy_range(c.bc.get(), 0, 3 * M));
    ASSERT_EQ(c.loop.run_until_complete(copy_all(c.bc.get(), CopyOptions{true, {}, 8, 4 * M})),
              std::error_code{});
    EXPECT_EQ(c.tgt->data(), c.src->data());
    EXPECT_GT(c.tgt->writes(), 0u);
    EXPECT_EQ(c.tgt->unaligned_buffer_writes(), 0u);
}

TEST(BlockCopy, FailedChunksAreDirtyAgain) {
    Copier c(1 * M);
    c.tgt->fail_writes(EIO, 1);
    EXPECT_EQ(c.loop.run_until_complete(copy_range(c.bc.get(), 0, 1 * M)), block::errno_code(EIO));
    EXPECT_EQ(c.bc->copy_bitmap().count(), 16u);
    EXPECT_FALSE(c.loop.run_until_complete(copy_range(c.bc.get(), 0, 1 * M)));
    EXPECT_EQ(c.bc->copy_bitmap().count(), 0u);
    EXPECT_EQ(c.tgt->data(), c.src->data());
}

TEST(BlockCopy, ZeroAreasBecomeWriteZeroes) {
    Copier c(1 * M);
    std::memset(c.src->data().data(), 0, 1 * M);
    std::memset(c.tgt->data().data(), 0x77, 1 * M);
    EXPECT_FALSE(c.loop.run_until_complete(copy_range(c.bc.get(), 0, 1 * M)));
    EXPECT_EQ(c.tgt->data(), c.src->data());
}

TEST(BlockCopy, ResetClearsWholeClustersOnly) {
    Copier c(1 * M);
    c.bc->reset(32 * 1024, 128 * 1024); // covers cluster 1 only
    EXPECT_EQ(c.bc->copy_bitmap().count(), 15u);
    EXPECT_FALSE(c.bc->copy_bitmap().get(1));
}

TEST(BlockCopy, BackgroundRateLimit) {
    Copier c(4 * M);
    c.bc->set_speed(4 * M); // 1 MiB chunks: the first goes at once, then ~250 ms each
    const auto t0 = io::Clock::now();
    EXPECT_FALSE(c.loop.run_until_complete(copy_all(c.bc.get(), CopyOptions{})));
    const auto took = io::Clock::now() - t0;
    EXPECT_GE(took, 500ms);
    EXPECT_LT(took, 3s);
    EXPECT_EQ(c.tgt->data(), c.src->data());
}

io::Task<std::error_code> cancel_after(BlockCopy* bc, std::chrono::milliseconds d) {
    co_await io::sleep_for(d);
    bc->cancel_background();
    co_return std::error_code{};
}
io::Task<void> spawn_cancel(BlockCopy* bc) {
    (void)co_await cancel_after(bc, 100ms);
}

TEST(BlockCopy, BackgroundCancelWakesRateLimitSleep) {
    Copier c(4 * M);
    c.bc->set_speed(1); // first chunk, then effectively stalls
    c.loop.spawn(spawn_cancel(c.bc.get()));
    const auto t0 = io::Clock::now();
    EXPECT_EQ(c.loop.run_until_complete(copy_all(c.bc.get(), CopyOptions{})),
              block::errno_code(ECANCELED));
    EXPECT_LT(io::Clock::now() - t0, 1s);
    EXPECT_EQ(c.bc->progress_done(), 1 * M);
}

} // namespace
} // namespace fleece::nodes::testing
