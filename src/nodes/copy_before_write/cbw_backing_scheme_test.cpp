// The seed's fleecing scheme: the copy-before-write target is an overlay whose backing is
// the filter's own file (the live disk), and readers read the overlay. Checks the four
// permission rules of issue 5 item 3 with a minimal in-memory overlay (the qcow2 driver
// plays this role in production).
#include "nodes/copy_before_write/cbw_test_util.hpp"
#include "util/bitmap.hpp"

#include <random>
#include <string>

namespace fleece::nodes::testing {
namespace {

constexpr std::uint64_t k = 1024;
constexpr std::uint64_t M = 1024 * 1024;
constexpr std::uint64_t kCluster = 64 * k;

// Clusters written here are read from here, the others from `backing`. Records the flags
// of every write and the discards it receives.
class Overlay final : public block::Node {
  public:
    Overlay(std::string name, block::Node& backing)
        : Node(std::move(name), "test-overlay"), data_(backing.size()),
          allocated_(backing.size() / kCluster) {
        set_size(backing.size());
        backing_ = &add_child(backing, block::ChildRole::backing, "backing");
    }
    std::vector<block::ReqFlags> write_flags;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> discards;

  protected:
    io::Task<std::error_code> do_read(std::uint64_t off, std::span<std::byte> buf,
                                      block::ReqFlags) override {
        for (std::uint64_t pos = 0; pos < buf.size();) {
            const std::uint64_t c = (off + pos) / kCluster;
            const std::uint64_t n =
                std::min<std::uint64_t>(buf.size() - pos, (c + 1) * kCluster - (off + pos));
            auto piece = buf.subspan(pos, n);
            if (allocated_.get(c)) {
                std::memcpy(piece.data(), data_.data() + off + pos, n);
            } else if (auto ec = co_await backing_->read(off + pos, piece)) {
                co_return ec;
            }
            pos += n;
        }
        co_return std::error_code{};
    }
    io::Task<std::error_code> do_write(std::uint64_t off, std::span<const std::byte> buf,
                                       block::ReqFlags flags) override {
        write_flags.push_back(flags);
        std::memcpy(data_.data() + off, buf.data(), buf.size());
        allocated_.set_range(off / kCluster,
                             div_round_up(off + buf.size(), kCluster) - off / kCluster);
        co_return std::error_code{};
    }
    io::Task<std::error_code> do_flush() override { co_return std::error_code{}; }
    // As qcow2 answers: its own clusters are data, the others what the backing says.
    io::Task<block::BlockStatus> do_block_status(std::uint64_t off, std::uint64_t len) override {
        const std::uint64_t c = off / kCluster;
        const std::uint64_t n = std::min(len, (c + 1) * kCluster - off);
        if (allocated_.get(c)) {
            block::BlockStatus st;
            st.length = n;
            st.flags = block::status_data | block::status_allocated;
            co_return st;
        }
        block::BlockStatus st = co_await backing_->block_status(off, n);
        st.flags &= ~block::status_allocated;
        co_return st;
    }
    io::Task<std::error_code> do_discard(std::uint64_t off, std::uint64_t len) override {
        discards.emplace_back(off, len);
        co_return std::error_code{};
    }

  private:
    static std::uint64_t div_round_up(std::uint64_t a, std::uint64_t b) { return (a + b - 1) / b; }
    std::vector<std::byte> data_;
    Bitmap allocated_;
    block::Child* backing_ = nullptr;
};

struct BackingScheme {
    io::EventLoop loop;
    block::Graph g;
    MemoryNode* disk = nullptr;
    Overlay* temp = nullptr;
    block::Node* cbw = nullptr;
    User guest{"guest"};
    User reader{"reader"};
    std::unique_ptr<block::Child> gc, rc;

    BackingScheme() {
        disk = static_cast<MemoryNode*>(*g.add(std::make_unique<MemoryNode>("disk", 1 * M)));
        std::memset(disk->data().data(), 0x5d, 1 * M);
        temp = static_cast<Overlay*>(*g.add(std::make_unique<Overlay>("temp", *disk)));
        auto n = loop.run_until_complete(blockdev_add(g, {{"driver", "copy-before-write"},
                                                          {"node-name", "fl-cbw"},
                                                          {"file", "disk"},
                                                          {"target", "temp"}}));
        if (!n) throw std::runtime_error(n.error().message);
        cbw = *n;
        gc = std::move(*g.attach(guest, *cbw, block::perm_write | block::perm_consistent_read,
                                 block::perm_all));
    }
    ~BackingScheme() {
        if (rc) g.detach(std::move(rc));
        if (gc) g.detach(std::move(gc));
        loop.run_until_complete(g.close_all());
    }
    template <typename T> T run(io::Task<T> t) { return loop.run_until_complete(std::move(t)); }
};

// Rule 1: copies into a fleecing image are write-unchanged, and the filter takes only
// write-unchanged on it.
TEST(CbwBackingScheme, CopiesAreWriteUnchangedAndOnlyThatIsTaken) {
    BackingScheme f;
    const block::Child* target = f.cbw->child("target");
    EXPECT_EQ(target->perm(), block::perm_write_unchanged);
    EXPECT_FALSE(f.run(write_pattern(f.gc.get(), 0, 64 * k, 0xab)));
    ASSERT_EQ(f.temp->write_flags.size(), 1u);
    EXPECT_TRUE(f.temp->write_flags[0] & block::req_write_unchanged);
    // The overlay still reads as the snapshot; the disk has the new data.
    block::Node& temp = *f.temp;
    auto r = f.g.attach(f.reader, temp, block::perm_consistent_read,
                        block::perm_consistent_read | block::perm_write_unchanged);
    ASSERT_TRUE(r.ok()) << r.error().message;
    f.rc = std::move(*r);
    EXPECT_FALSE(f.run(read_pattern(f.rc.get(), 0, 128 * k, 0x5d)));
    EXPECT_FALSE(f.run(read_pattern(f.gc.get(), 0, 64 * k, 0xab)));
}

// Rule 2: the backing edge of the fleecing image shares write with the filter, even when
// the image's reader (a push backup source) shares no write.
TEST(CbwBackingScheme, BackingEdgeOfFleecingImageSharesWrite) {
    BackingScheme f;
    auto r = f.g.attach(f.reader, *f.temp, block::perm_consistent_read,
                        block::perm_consistent_read | block::perm_write_unchanged);
    ASSERT_TRUE(r.ok()) << r.error().message;
    f.rc = std::move(*r);
    EXPECT_TRUE(f.temp->child("backing")->shared() & block::perm_write);
    // The guest keeps writing through the filter.
    EXPECT_FALSE(f.run(write_pattern(f.gc.get(), 64 * k, 64 * k, 0x11)));
    EXPECT_FALSE(f.run(read_pattern(f.rc.get(), 64 * k, 64 * k, 0x5d)));
}

// Rule 3: with the filter on the disk (and users above it) nobody else may write the disk.
TEST(CbwBackingScheme, NobodyElseMayWriteTheDisk) {
    BackingScheme f;
    User other("other");
    auto w = f.g.attach(other, *f.disk, block::perm_write, block::perm_all);
    ASSERT_FALSE(w.ok());
    EXPECT_NE(w.error().message.find("'write'"), std::string::npos) << w.error().message;
    EXPECT_NE(w.error().message.find("'disk'"), std::string::npos) << w.error().message;
}

// Rule 4: a second writer on the fleecing image is refused with a clear message.
TEST(CbwBackingScheme, SecondWriterOnFleecingImageIsRefused) {
    BackingScheme f;
    User other("other");
    auto w = f.g.attach(other, *f.temp, block::perm_write, block::perm_all);
    ASSERT_FALSE(w.ok());
    EXPECT_NE(w.error().message.find("'temp'"), std::string::npos) << w.error().message;
    EXPECT_NE(w.error().message.find("'write'"), std::string::npos) << w.error().message;
    EXPECT_NE(w.error().message.find("node 'fl-cbw'"), std::string::npos) << w.error().message;
    // A reader is fine.
    auto r = f.g.attach(other, *f.temp, block::perm_consistent_read, block::perm_all);
    EXPECT_TRUE(r.ok());
    if (r.ok()) f.g.detach(std::move(*r));
}

// A reader of the fleecing image reads uncopied clusters straight from the disk, past the
// filter. A guest write that copies such a cluster must not land while that read is still
// in flight, or the snapshot shows data written after its point in time. Seeded delays
// reorder the requests; without the filter's wait for tracked reads this fails.
struct RaceState {
    int running = 0;
    std::vector<std::string> failures;
};

io::Task<void> race_read(RaceState* s, block::Child* c, std::uint64_t off, std::uint64_t len) {
    if (auto ec = co_await read_pattern(c, off, len, 0x5d))
        s->failures.push_back("snapshot read at " + std::to_string(off) + ": " + ec.message());
    --s->running;
}

io::Task<void> race_write(RaceState* s, block::Child* c, std::uint64_t off, std::uint64_t len,
                          int p) {
    if (auto ec = co_await write_pattern(c, off, len, p))
        s->failures.push_back("guest write: " + ec.message());
    --s->running;
}

io::Task<void> race_wait(RaceState* s) {
    while (s->running > 0)
        co_await io::EventLoop::current().yield();
}

// 100 seeds of one race: a reader on the fleecing image and the guest on the filter send 24
// requests to random clusters among the first 8, each at random the reader's
// (`reader_op(state, edge, cluster)`) or the guest's (`guest_op(state, edge, cluster, rng)`).
// The disk's seeded delays reorder them; every message the requests left fails the test.
template <class ReaderOp, class GuestOp> void race_seeds(ReaderOp reader_op, GuestOp guest_op) {
    for (std::uint64_t seed = 1; seed <= 100 && !::testing::Test::HasFailure(); ++seed) {
        BackingScheme f;
        auto r = f.g.attach(f.reader, *f.temp, block::perm_consistent_read,
                            block::perm_consistent_read | block::perm_write_unchanged);
        ASSERT_TRUE(r.ok()) << r.error().message;
        f.rc = std::move(*r);
        f.disk->set_random_delay(seed, 6);
        RaceState s;
        std::mt19937_64 rng(seed);
        for (int i = 0; i < 24; ++i) {
            const std::uint64_t cluster = rng() % 8;
            ++s.running;
            if (rng() % 2)
                f.loop.spawn(reader_op(&s, f.rc.get(), cluster));
            else
                f.loop.spawn(guest_op(&s, f.gc.get(), cluster, rng));
        }
        f.loop.run_until_complete(race_wait(&s));
        for (const auto& m : s.failures)
            ADD_FAILURE() << "seed " << seed << ": " << m;
    }
}

TEST(CbwBackingScheme, SnapshotReadsRacingGuestWritesSeeThePointInTime) {
    race_seeds([](RaceState* s, block::Child* c,
                  std::uint64_t cluster) { return race_read(s, c, cluster * kCluster, kCluster); },
               [](RaceState* s, block::Child* c, std::uint64_t cluster, std::mt19937_64& rng) {
                   const std::uint64_t off = cluster * kCluster + (rng() % 16) * 4 * k;
                   return race_write(s, c, off, 4 * k, static_cast<int>(1 + rng() % 90));
               });
}

// A reader of the fleecing image (a backup job) asks block status before it reads, and
// writes zeroes for what is reported zero. While guest write-zeroes race it, the answer must
// still describe the point in time (all data here), never the zeroes the guest wrote after
// the copy: block status through the backing edge waits like a read does.
io::Task<void> race_status(RaceState* s, block::Child* c, std::uint64_t off, std::uint64_t len) {
    const block::BlockStatus st = co_await c->block_status(off, len);
    if (st.error)
        s->failures.push_back("block status: " + st.error.message());
    else if (st.flags & block::status_zero)
        s->failures.push_back("block status at " + std::to_string(off) +
                              " says zero, the snapshot has data there");
    --s->running;
}
io::Task<void> race_zeroes(RaceState* s, block::Child* c, std::uint64_t off, std::uint64_t len) {
    if (auto ec = co_await write_zeroes(c, off, len))
        s->failures.push_back("guest write-zeroes: " + ec.message());
    --s->running;
}

TEST(CbwBackingScheme, BlockStatusRacingGuestZeroesSeesThePointInTime) {
    race_seeds(
        [](RaceState* s, block::Child* c, std::uint64_t cluster) {
            return race_status(s, c, cluster * kCluster, kCluster);
        },
        [](RaceState* s, block::Child* c, std::uint64_t cluster, std::mt19937_64&) {
            return race_zeroes(s, c, cluster * kCluster, kCluster);
        });
}

// A snapshot-access node on the filter may also read a fleecing image (QEMU's
// image-fleecing test builds it so). Its discards (a discard-source backup's) release the
// copies in the image although the filter holds only write-unchanged on it: the range has
// left the snapshot. Before, the discard failed with EPERM and nothing was released.
TEST(CbwBackingScheme, SnapshotAccessDiscardReleasesTheFleecingImage) {
    BackingScheme f;
    auto snap = f.run(blockdev_add(
        f.g, {{"driver", "snapshot-access"}, {"node-name", "snap"}, {"file", "fl-cbw"}}));
    ASSERT_TRUE(snap.ok()) << snap.error().message;
    auto r = f.g.attach(f.reader, **snap, block::perm_consistent_read | block::perm_write,
                        block::perm_consistent_read | block::perm_write_unchanged);
    ASSERT_TRUE(r.ok()) << r.error().message;
    f.rc = std::move(*r);
    EXPECT_EQ(f.cbw->child("target")->perm(), block::perm_write_unchanged);
    EXPECT_FALSE(f.run(write_pattern(f.gc.get(), 0, 64 * k, 0xab))); // copied to temp
    EXPECT_FALSE(f.run(read_pattern(f.rc.get(), 0, 128 * k, 0x5d)));
    EXPECT_FALSE(f.run(discard(f.rc.get(), 0, 128 * k)));
    ASSERT_EQ(f.temp->discards.size(), 1u);
    EXPECT_EQ(f.temp->discards[0], std::make_pair(std::uint64_t{0}, 128 * k));
    // Gone from the snapshot, and no longer copied before guest writes.
    std::vector<std::byte> buf(64 * k);
    EXPECT_TRUE(f.run(f.rc->read(0, buf)));
    const auto writes = f.temp->write_flags.size();
    EXPECT_FALSE(f.run(write_pattern(f.gc.get(), 64 * k, 64 * k, 0x11)));
    EXPECT_EQ(f.temp->write_flags.size(), writes);
}

// Without the backing link (snapshot-access scheme) the target is written normally.
TEST(CbwBackingScheme, PlainTargetIsWrittenWithWrite) {
    Fleece f(1 * M);
    EXPECT_EQ(f.cbw->child("target")->perm(), block::perm_write);
}

} // namespace
} // namespace fleece::nodes::testing
