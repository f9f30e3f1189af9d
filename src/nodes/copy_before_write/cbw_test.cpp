// copy-before-write + snapshot-access: the image-fleecing pattern scenario (research §5),
// error policies, timeout, discards and permissions.
#include "nodes/copy_before_write/cbw_test_util.hpp"

namespace fleece::nodes::testing {
namespace {

using namespace std::chrono_literals;
constexpr std::uint64_t k = 1024;
constexpr std::uint64_t M = 1024 * 1024;

struct Pat {
    int p;
    std::uint64_t off, len;
};
const Pat patterns[] = {
    {0x5d, 0, 64 * k}, {0xd5, 1 * M, 64 * k}, {0xdc, 32 * M, 64 * k}, {0xcd, 0x3ff0000, 64 * k}};
const Pat zeroes[] = {{0, 0x00f8000, 32 * k}, {0, 0x2010000, 32 * k}, {0, 0x3fe0000, 64 * k}};
const Pat overwrites[] = {{0xab, 0, 64 * k},
                          {0xad, 0x00f8000, 64 * k},
                          {0x1d, 0x2008000, 64 * k},
                          {0xea, 0x3fe0000, 64 * k}};
const Pat remainder[] = {
    {0xd5, 0x108000, 32 * k}, {0xdc, 32 * M, 32 * k}, {0xcd, 0x3ff0000, 64 * k}};

TEST(CopyBeforeWrite, ImageFleecingPatterns) {
    // Exact copies as in QEMU (copy-ahead has its own tests below).
    Fleece f(64 * M, {{"x-copy-window", 0}});
    for (const Pat& p : patterns)
        f.fill(p.off, p.len, p.p);
    auto verify_snapshot = [&] {
        for (const Pat& p : patterns)
            EXPECT_FALSE(f.run(read_pattern(f.rc.get(), p.off, p.len, p.p))) << std::hex << p.off;
        for (const Pat& p : zeroes)
            EXPECT_FALSE(f.run(read_pattern(f.rc.get(), p.off, p.len, 0))) << std::hex << p.off;
    };
    verify_snapshot();
    for (const Pat& p : overwrites)
        ASSERT_FALSE(f.run(write_pattern(f.gc.get(), p.off, p.len, p.p)));
    verify_snapshot();
    for (const Pat& p : overwrites)
        EXPECT_FALSE(f.run(read_pattern(f.gc.get(), p.off, p.len, p.p)));
    for (const Pat& p : remainder)
        EXPECT_FALSE(f.run(read_pattern(f.gc.get(), p.off, p.len, p.p)));
    // 6 clusters were copied, as in the iotest's BLOCK_JOB_CANCELLED offset 393216.
    EXPECT_EQ(f.cbw->block_copy().progress_done(), 393216u);
}

TEST(CopyBeforeWrite, ZeroWritesAndDiscardsAlsoCopyFirst) {
    Fleece f(1 * M);
    f.fill(0, 1 * M, 0x11);
    ASSERT_FALSE(f.run(write_zeroes(f.gc.get(), 4 * k, 8 * k)));
    ASSERT_FALSE(f.run(discard(f.gc.get(), 200 * k, 100 * k)));
    EXPECT_FALSE(f.run(read_pattern(f.rc.get(), 0, 1 * M, 0x11)));
    EXPECT_FALSE(f.run(read_pattern(f.gc.get(), 4 * k, 8 * k, 0)));
}

TEST(CopyBeforeWrite, WriteUnchangedSkipsCopy) {
    Fleece f(1 * M);
    f.fill(0, 1 * M, 0x22);
    std::vector<std::byte> buf = pattern(64 * k, 0x22);
    auto w = [](block::Child* c, std::vector<std::byte>* b) -> io::Task<std::error_code> {
        co_return co_await c->write(0, *b, block::req_write_unchanged);
    };
    EXPECT_FALSE(f.loop.run_until_complete(w(f.gc.get(), &buf)));
    EXPECT_EQ(f.tgt->writes(), 0u);
}

TEST(CopyBeforeWrite, BreakGuestWriteKeepsSnapshot) {
    Fleece f(1 * M);
    f.fill(0, 1 * M, 0x33);
    f.tgt->fail_writes(EIO, 1);
    EXPECT_EQ(f.run(write_pattern(f.gc.get(), 0, 1 * M, 0x44)), block::errno_code(EIO));
    EXPECT_FALSE(f.run(read_pattern(f.gc.get(), 0, 1 * M, 0x33))); // nothing written
    EXPECT_FALSE(f.run(read_pattern(f.rc.get(), 0, 1 * M, 0x33)));
    // The failed clusters were re-dirtied: a retry copies them and succeeds.
    EXPECT_FALSE(f.run(write_pattern(f.gc.get(), 0, 1 * M, 0x44)));
    EXPECT_FALSE(f.run(read_pattern(f.rc.get(), 0, 1 * M, 0x33)));
}

TEST(CopyBeforeWrite, BreakSnapshotFailsSnapshotReads) {
    Fleece f(1 * M, {{"on-cbw-error", "break-snapshot"}});
    f.fill(0, 1 * M, 0x33);
    f.tgt->fail_writes(EIO, 1);
    EXPECT_FALSE(f.run(write_pattern(f.gc.get(), 0, 1 * M, 0x44)));
    EXPECT_FALSE(f.run(read_pattern(f.gc.get(), 0, 1 * M, 0x44)));
    EXPECT_EQ(f.run(read_pattern(f.rc.get(), 0, 1 * M, 0x33)), block::errno_code(EACCES));
    EXPECT_EQ(f.run(discard(f.rc.get(), 0, 64 * k)), block::errno_code(EACCES));
    const auto w = f.tgt->writes();
    EXPECT_FALSE(f.run(write_pattern(f.gc.get(), 0, 64 * k, 0x55))); // no more CBW
    EXPECT_EQ(f.tgt->writes(), w);
}

TEST(CopyBeforeWrite, TimeoutWithSlowTarget) {
    for (const char* policy : {"break-guest-write", "break-snapshot"}) {
        Fleece f(1 * M, {{"on-cbw-error", policy}, {"cbw-timeout", 1}});
        f.fill(0, 1 * M, 0x66);
        ASSERT_FALSE(f.run(write_pattern(f.gc.get(), 0, 512 * k, 0x77)));
        f.tgt->set_write_latency(1500ms);
        const auto t0 = io::Clock::now();
        std::error_code ec = f.run(write_pattern(f.gc.get(), 512 * k, 512 * k, 0x77));
        const auto took = io::Clock::now() - t0;
        EXPECT_GE(took, 900ms);
        EXPECT_LT(took, 1400ms);
        if (std::string(policy) == "break-guest-write") {
            EXPECT_EQ(ec, block::errno_code(ETIMEDOUT));
        } else {
            EXPECT_FALSE(ec);
            EXPECT_EQ(f.run(read_pattern(f.rc.get(), 0, 1 * M, 0x66)), block::errno_code(EACCES));
        }
    }
}

TEST(CopyBeforeWrite, SnapshotDiscardAlignsInward) {
    Fleece f(1 * M);
    f.fill(0, 1 * M, 0x12);
    // Unaligned: nothing whole inside, a no-op (QEMU 7.2 aborted here).
    EXPECT_FALSE(f.run(discard(f.rc.get(), 0, 32 * k)));
    EXPECT_FALSE(f.run(read_pattern(f.rc.get(), 0, 64 * k, 0x12)));
    // 32k..160k covers only cluster 1 entirely.
    EXPECT_FALSE(f.run(discard(f.rc.get(), 32 * k, 128 * k)));
    EXPECT_FALSE(f.run(read_pattern(f.rc.get(), 0, 64 * k, 0x12)));
    EXPECT_EQ(f.run(read_pattern(f.rc.get(), 64 * k, 64 * k, 0x12)), block::errno_code(EACCES));
    EXPECT_FALSE(f.run(read_pattern(f.rc.get(), 128 * k, 64 * k, 0x12)));
    // A guest write to the discarded cluster copies nothing.
    const auto w = f.tgt->writes();
    EXPECT_FALSE(f.run(write_pattern(f.gc.get(), 64 * k, 64 * k, 0x99)));
    EXPECT_EQ(f.tgt->writes(), w);
}

TEST(CopyBeforeWrite, SecondWriterOnSourceIsRefused) {
    Fleece f(1 * M);
    User other("other");
    auto w = f.g.attach(other, *f.src, block::perm_write, block::perm_all);
    ASSERT_FALSE(w.ok());
    EXPECT_NE(w.error().message.find("write"), std::string::npos) << w.error().message;
    // Readers that share everything are fine.
    auto r = f.g.attach(other, *f.src, block::perm_consistent_read, block::perm_all);
    ASSERT_TRUE(r.ok());
    f.g.detach(std::move(*r));
}

TEST(CopyBeforeWrite, ParentlessFilterIsRelaxedUntilItGetsParents) {
    io::EventLoop loop;
    block::Graph g;
    g.add(std::make_unique<MemoryNode>("source", M)).value();
    g.add(std::make_unique<MemoryNode>("temp", M)).value();
    User direct("direct"), guest("guest");
    auto w = g.attach(direct, *g.find("source"), block::perm_write | block::perm_consistent_read,
                      block::perm_all);
    ASSERT_TRUE(w.ok());
    // Being inserted: no parents yet, so it must not conflict with the disk's writer.
    auto cbw = loop.run_until_complete(blockdev_add(g, {{"driver", "copy-before-write"},
                                                        {"node-name", "fl-cbw"},
                                                        {"file", "source"},
                                                        {"target", "temp"}}));
    ASSERT_TRUE(cbw.ok()) << cbw.error().message;
    // With a parent it unshares write on the disk, which the direct writer holds.
    auto gw = g.attach(guest, **cbw, block::perm_write, block::perm_all);
    EXPECT_FALSE(gw.ok());
    g.detach(std::move(*w));
    loop.run_until_complete(g.close_all());
}

io::Task<block::BlockStatus> status(block::Child* c, std::uint64_t off, std::uint64_t len) {
    co_return co_await c->block_status(off, len);
}

TEST(CopyBeforeWrite, SnapshotBlockStatus) {
    Fleece f(1 * M);
    f.fill(0, 64 * k, 0x12);
    ASSERT_FALSE(f.run(write_pattern(f.gc.get(), 0, 4 * k, 0x13)));
    auto st = f.loop.run_until_complete(status(f.rc.get(), 0, 1 * M));
    EXPECT_FALSE(st.error);
    EXPECT_EQ(st.length, 64 * k); // the done cluster, answered by the target
    EXPECT_TRUE(st.flags & block::status_allocated);
    ASSERT_FALSE(f.run(discard(f.rc.get(), 128 * k, 64 * k)));
    st = f.loop.run_until_complete(status(f.rc.get(), 128 * k, 64 * k));
    EXPECT_EQ(st.error, block::errno_code(EACCES));
    st = f.loop.run_until_complete(status(f.rc.get(), 64 * k, 512 * k));
    EXPECT_FALSE(st.error);
    EXPECT_EQ(st.length, 64 * k); // stops at the discarded cluster
    EXPECT_TRUE(st.flags & block::status_zero);
}

TEST(CopyBeforeWrite, SnapshotAccessRejectsWritesAndOtherNodes) {
    Fleece f(1 * M);
    EXPECT_EQ(f.run(write_pattern(f.rc.get(), 0, 4 * k, 1)), block::errno_code(ENOTSUP));
    auto bad = f.loop.run_until_complete(blockdev_add(
        f.g, {{"driver", "snapshot-access"}, {"node-name", "bad"}, {"file", "source"}}));
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.error().message.find("does not support snapshot access"), std::string::npos);
}

TEST(CopyBeforeWrite, OptionValidation) {
    Fleece f(1 * M);
    auto add = [&](nlohmann::json extra) {
        nlohmann::json o = {{"driver", "copy-before-write"},
                            {"node-name", "x"},
                            {"file", "source"},
                            {"target", "temp"}};
        o.update(extra);
        return f.loop.run_until_complete(blockdev_add(f.g, o));
    };
    auto r1 = add({{"min-cluster-size", 3000}});
    ASSERT_FALSE(r1.ok());
    EXPECT_NE(r1.error().message.find("power of 2"), std::string::npos);
    auto r2 = add({{"bitmap", {{"node", "source"}, {"name", "b"}}}});
    ASSERT_FALSE(r2.ok());
    EXPECT_EQ(r2.error().message, "Dirty bitmap 'b' not found");
    auto r3 = add({{"on-cbw-error", "bogus"}});
    ASSERT_FALSE(r3.ok());
    auto r4 = add({{"x-copy-window", 3 * M}});
    ASSERT_FALSE(r4.ok());
    EXPECT_NE(r4.error().message.find("x-copy-window"), std::string::npos);
}

// Copy-ahead: the first write in a window copies its cluster only; a later write there that
// has to copy takes the window's other uncopied clusters along.
TEST(CopyBeforeWrite, CopyAheadFillsWindowsAlreadyWrittenIn) {
    Fleece f(4 * M);
    f.fill(0, 4 * M, 0x21);
    ASSERT_FALSE(f.run(write_pattern(f.gc.get(), 0, 4 * k, 0x22)));
    EXPECT_EQ(f.cbw->block_copy().progress_done(), 64 * k); // first write in window 0
    ASSERT_FALSE(f.run(write_pattern(f.gc.get(), 0, 4 * k, 0x23)));
    EXPECT_EQ(f.cbw->block_copy().progress_done(), 64 * k); // nothing to copy: no copy-ahead
    ASSERT_FALSE(f.run(write_pattern(f.gc.get(), 300 * k, 4 * k, 0x24)));
    EXPECT_EQ(f.cbw->block_copy().progress_done(), 1 * M); // the rest of window 0
    const auto target_writes = f.tgt->writes();
    ASSERT_FALSE(f.run(write_pattern(f.gc.get(), 900 * k, 4 * k, 0x25)));
    EXPECT_EQ(f.tgt->writes(), target_writes); // already copied ahead
    // A write crossing into window 1 copies only its own cluster there (window 1 is new),
    // and a write in window 3 is the first there.
    ASSERT_FALSE(f.run(write_pattern(f.gc.get(), 1 * M - 4 * k, 8 * k, 0x26)));
    EXPECT_EQ(f.cbw->block_copy().progress_done(), 1 * M + 64 * k);
    ASSERT_FALSE(f.run(write_pattern(f.gc.get(), 3 * M + 8 * k, 4 * k, 0x27)));
    EXPECT_EQ(f.cbw->block_copy().progress_done(), 1 * M + 128 * k);
    EXPECT_FALSE(f.run(read_pattern(f.rc.get(), 0, 4 * M, 0x21)));
}

// Copy-ahead is off with x-copy-window 0, and on with a cbw-timeout (`fleece backup` sets
// one by default, and its guest gets copy-ahead too).
TEST(CopyBeforeWrite, CopyAheadCanBeTurnedOffAndWorksWithATimeout) {
    const std::pair<nlohmann::json, std::uint64_t> cases[] = {
        {nlohmann::json{{"x-copy-window", 0}}, 128 * k},
        {nlohmann::json{{"cbw-timeout", 60}}, 1 * M}};
    for (const auto& [opts, copied] : cases) {
        Fleece f(4 * M, opts);
        f.fill(0, 4 * M, 0x31);
        ASSERT_FALSE(f.run(write_pattern(f.gc.get(), 0, 4 * k, 0x32)));
        ASSERT_FALSE(f.run(write_pattern(f.gc.get(), 300 * k, 4 * k, 0x33)));
        EXPECT_EQ(f.cbw->block_copy().progress_done(), copied) << opts.dump();
        EXPECT_FALSE(f.run(read_pattern(f.rc.get(), 0, 4 * M, 0x31)));
    }
}

// The clusters copied ahead are best effort: when their copy fails, the guest write still
// succeeds once its own cluster is saved, and the others stay to be copied.
TEST(CopyBeforeWrite, FailedCopyAheadDoesNotFailTheWrite) {
    for (nlohmann::json opts : {nlohmann::json::object(), nlohmann::json{{"cbw-timeout", 60}}}) {
        Fleece f(4 * M, opts);
        f.fill(0, 4 * M, 0x41);
        ASSERT_FALSE(f.run(write_pattern(f.gc.get(), 0, 4 * k, 0x42)));
        f.tgt->fail_writes(EIO, 1); // the window copy (clusters 1-15, one chunk) fails
        ASSERT_FALSE(f.run(write_pattern(f.gc.get(), 300 * k, 4 * k, 0x43))) << opts.dump();
        EXPECT_EQ(f.cbw->block_copy().progress_done(), 128 * k);
        EXPECT_FALSE(f.run(read_pattern(f.rc.get(), 0, 4 * M, 0x41)));
        EXPECT_FALSE(f.run(read_pattern(f.gc.get(), 300 * k, 4 * k, 0x43)));
    }
}

// cbw-timeout bounds the guest's whole wait: the retry of a failed copy-ahead gets only the
// time left, and a copy-ahead that timed out is not retried at all.
TEST(CopyBeforeWrite, CopyAheadAndItsRetryShareTheTimeout) {
    {
        Fleece f(4 * M, {{"cbw-timeout", 1}});
        f.fill(0, 4 * M, 0x44);
        ASSERT_FALSE(f.run(write_pattern(f.gc.get(), 0, 4 * k, 0x45)));
        f.tgt->set_write_latency(600ms);
        f.tgt->fail_writes(EIO, 1); // the window copy fails after 600 ms; the retry is slow too
        const auto t0 = io::Clock::now();
        EXPECT_EQ(f.run(write_pattern(f.gc.get(), 300 * k, 4 * k, 0x46)),
                  block::errno_code(ETIMEDOUT));
        EXPECT_LT(io::Clock::now() - t0, 1150ms);
    }
    {
        Fleece f(4 * M, {{"cbw-timeout", 1}});
        f.fill(0, 4 * M, 0x47);
        ASSERT_FALSE(f.run(write_pattern(f.gc.get(), 0, 4 * k, 0x48)));
        f.tgt->set_write_latency(1500ms);
        const auto t0 = io::Clock::now();
        EXPECT_EQ(f.run(write_pattern(f.gc.get(), 300 * k, 4 * k, 0x49)),
                  block::errno_code(ETIMEDOUT));
        EXPECT_LT(io::Clock::now() - t0, 1400ms);
    }
}

io::Task<void> note_when_done(io::Task<std::error_code> op, std::string name,
                              std::vector<std::string>* order) {
    if (auto ec = co_await std::move(op)) name += " failed: " + ec.message();
    order->push_back(name);
}

io::Task<void> wait_until_size(const std::vector<std::string>* v, std::size_t n) {
    while (v->size() < n)
        co_await io::sleep_for(1ms);
}

// A snapshot read of copied data is served by the target, which a guest write cannot
// disturb: the write goes on at once instead of waiting for the read (the backup job reads
// every copied cluster this way while the guest writes).
TEST(CopyBeforeWrite, GuestWritesDoNotWaitForSnapshotReadsOfCopiedData) {
    Fleece f(1 * M);
    f.fill(0, 1 * M, 0x51);
    ASSERT_FALSE(f.run(write_pattern(f.gc.get(), 0, 4 * k, 0x52))); // cluster 0 is copied
    f.tgt->set_read_latency(300ms);
    std::vector<std::string> order;
    f.loop.spawn(note_when_done(read_pattern(f.rc.get(), 0, 64 * k, 0x51), "read", &order));
    f.loop.spawn(note_when_done(write_pattern(f.gc.get(), 8 * k, 4 * k, 0x53), "write", &order));
    f.loop.run_until_complete(wait_until_size(&order, 2));
    EXPECT_EQ(order, (std::vector<std::string>{"write", "read"}));
    EXPECT_FALSE(f.run(read_pattern(f.gc.get(), 8 * k, 4 * k, 0x53)));
}

TEST(CopyBeforeWrite, MinClusterSize) {
    Fleece f(4 * M, {{"min-cluster-size", 1 * M}});
    EXPECT_EQ(f.cbw->block_copy().cluster_size(), 1 * M);
    f.fill(0, 4 * M, 0x42);
    EXPECT_FALSE(f.run(write_pattern(f.gc.get(), 0, 4 * k, 0x43)));
    EXPECT_EQ(f.cbw->block_copy().progress_done(), 1 * M);
}

} // namespace
} // namespace fleece::nodes::testing

namespace fleece::nodes::testing {
namespace {

io::Task<std::uint64_t> drain_and_count_target_writes(block::Graph* g, block::Node* cbw,
                                                      MemoryNode* tgt) {
    block::DrainedSection drained = co_await g->drain(*cbw);
    co_return tgt->writes();
}

// A copy that outlived its cbw-timeout is still in flight on the filter: draining the
// filter (blockdev-replace, blockdev-del) waits until it really ends.
TEST(CopyBeforeWrite, DrainWaitsForTimedOutCopies) {
    Fleece f(1 * M, {{"cbw-timeout", 1}});
    f.fill(0, 1 * M, 0x66);
    f.tgt->set_write_latency(std::chrono::milliseconds(1500));
    const auto before = f.tgt->writes();
    EXPECT_EQ(f.run(write_pattern(f.gc.get(), 0, 64 * k, 0x77)), block::errno_code(ETIMEDOUT));
    EXPECT_EQ(f.tgt->writes(), before); // the slow copy has not landed yet
    EXPECT_GT(f.cbw->in_flight(), 0u);
    const auto after_drain =
        f.loop.run_until_complete(drain_and_count_target_writes(&f.g, f.cbw, f.tgt));
    EXPECT_GT(after_drain, before);
    EXPECT_EQ(f.cbw->in_flight(), 0u);
    // The copy that finished late still counts: the snapshot reads the old data.
    EXPECT_FALSE(f.run(read_pattern(f.rc.get(), 0, 64 * k, 0x66)));
}

} // namespace
} // namespace fleece::nodes::testing
