#include "block/dirty_bitmap.hpp"
#include "block/graph.hpp"
#include "io/event_loop.hpp"

#include <gtest/gtest.h>
#include <random>
#include <set>
#include <vector>

namespace fleece::block {
namespace {

// Reference model: the set of dirty granules, computed the obvious way (one granule at a
// time), plus the enabled flag and an optional successor.
struct Model {
    std::uint64_t disk = 0, gran = 0;
    std::set<std::uint64_t> bits;
    bool enabled = true;
    bool frozen = false;
    std::set<std::uint64_t> succ_bits;
    bool succ_enabled = false;

    std::uint64_t nbits() const { return (disk + gran - 1) / gran; }
    static void mark(std::set<std::uint64_t>& s, std::uint64_t disk, std::uint64_t g,
                     std::uint64_t off, std::uint64_t len) {
        const std::uint64_t end = std::min(disk, off + len);
        if (off >= end) return;
        for (std::uint64_t b = off / g; b <= (end - 1) / g; ++b)
            s.insert(b);
    }
    void record(std::uint64_t off, std::uint64_t len) {
        if (frozen) {
            if (succ_enabled) mark(succ_bits, disk, gran, off, len);
        } else if (enabled) {
            mark(bits, disk, gran, off, len);
        }
    }
};

std::set<std::uint64_t> bits_of(const Bitmap& b) {
    std::set<std::uint64_t> out;
    for (std::uint64_t i = 0; i < b.size(); ++i)
        if (b.get(i)) out.insert(i);
    return out;
}

TEST(DirtyBitmap, DefaultGranularityFollowsQemu) {
    EXPECT_EQ(default_bitmap_granularity(0), 65536u);
    EXPECT_EQ(default_bitmap_granularity(512), 4096u);
    EXPECT_EQ(default_bitmap_granularity(65536), 65536u);
    EXPECT_EQ(default_bitmap_granularity(2u << 20), 65536u);
}

TEST(DirtyBitmaps, AddValidatesNameAndGranularity) {
    DirtyBitmaps set;
    EXPECT_EQ(set.add("", 1 << 20, 65536).error().message, "Bitmap name cannot be empty");
    EXPECT_EQ(set.add("a", 1 << 20, 1000).error().message,
              "Granularity must be power of 2 and at least 512");
    EXPECT_EQ(set.add("a", 1 << 20, 256).error().message,
              "Granularity must be power of 2 and at least 512");
    EXPECT_EQ(set.add("a", 1 << 20, 1ull << 32).error().message,
              "Parameter 'granularity' expects uint32_t");
    EXPECT_TRUE(set.add(std::string(1023, 'x'), 1 << 20, 512));
    EXPECT_FALSE(set.add(std::string(1024, 'x'), 1 << 20, 512));
    ASSERT_TRUE(set.add("a", 1 << 20, 1ull << 31));
    EXPECT_EQ(set.add("a", 1 << 20, 512).error().message, "Bitmap already exists: a");
    ASSERT_TRUE(set.add("b", 1 << 20, 512));
    // Newest first, as query-named-block-nodes lists them.
    EXPECT_EQ(set.list().front()->name(), "b");
    set.remove(set.find("b"));
    EXPECT_EQ(set.find("b"), nullptr);
}

TEST(DirtyBitmap, CountIsWholeGranules) {
    DirtyBitmap b("b", 100000, 65536);
    b.record(99999, 1);
    EXPECT_EQ(b.count(), 65536u);
    b.record(0, 1);
    EXPECT_EQ(b.count(), 131072u);
    auto e = b.next_dirty(0, 100000);
    ASSERT_TRUE(e);
    EXPECT_EQ(e->offset, 0u);
    EXPECT_EQ(e->length, 100000u); // clipped to the disk size
}

TEST(DirtyBitmap, BusyFrozenAndChecks) {
    DirtyBitmap b("b", 1 << 20, 65536);
    EXPECT_TRUE(check_bitmap(b, bitmap_check_all));
    b.set_busy(true);
    EXPECT_EQ(check_bitmap(b, bitmap_check_all).error().message,
              "Bitmap 'b' is currently in use by another operation and cannot be used");
    b.set_busy(false);
    b.create_successor();
    EXPECT_TRUE(b.busy());
    EXPECT_TRUE(b.recording());
    EXPECT_FALSE(b.enabled());
    b.reclaim();
    EXPECT_FALSE(b.busy());
    EXPECT_TRUE(b.enabled());
    b.set_inconsistent(true);
    EXPECT_FALSE(check_bitmap(b, bitmap_check_allow_readonly));
}

TEST(DirtyBitmap, MergeAcrossGranularitiesRoundsOutwards) {
    DirtyBitmap fine("f", 1 << 20, 512);
    DirtyBitmap coarse("c", 1 << 20, 65536);
    fine.record(65536 + 512, 512);
    coarse.merge(fine);
    EXPECT_EQ(bits_of(coarse.bits()), (std::set<std::uint64_t>{1}));
    DirtyBitmap fine2("f2", 1 << 20, 4096);
    fine2.merge(coarse);
    EXPECT_EQ(fine2.count(), 65536u);
    EXPECT_EQ(fine2.next_dirty(0, 1 << 20)->offset, 65536u);
    DirtyBitmap other("o", 2 << 20, 65536);
    EXPECT_EQ(merge_check(coarse, other).error().message,
              "Bitmaps are of different sizes (destination size is 1048576, source size is "
              "2097152) and can't be merged");
}

// Random operations against the model, over several granularities and unaligned sizes.
TEST(DirtyBitmap, RandomOperationsMatchModel) {
    std::mt19937_64 rng(7);
    for (std::uint64_t gran : {512ull, 4096ull, 65536ull}) {
        for (std::uint64_t disk : {gran * 37 + 123, gran * 64, gran * 3}) {
            DirtyBitmap b("b", disk, gran);
            Model m;
            m.disk = disk;
            m.gran = gran;
            for (int step = 0; step < 1000; ++step) {
                const std::uint64_t off = rng() % disk;
                const std::uint64_t len = 1 + rng() % std::min<std::uint64_t>(disk - off, gran * 5);
                switch (rng() % 10) {
                case 0:
                case 1:
                case 2:
                    b.record(off, len);
                    m.record(off, len);
                    break;
                case 3:
                    if (!b.frozen()) {
                        const bool on = rng() % 2;
                        b.set_enabled(on);
                        m.enabled = on;
                    }
                    break;
                case 4:
                    if (!b.frozen()) {
                        b.create_successor();
                        m.frozen = true;
                        m.succ_enabled = m.enabled;
                        m.enabled = false;
                        m.succ_bits.clear();
                    }
                    break;
                case 5:
                    if (b.frozen()) {
                        b.abdicate();
                        m.frozen = false;
                        m.bits = m.succ_bits;
                        m.enabled = m.succ_enabled;
                    }
                    break;
                case 6:
                    if (b.frozen()) {
                        b.reclaim();
                        m.frozen = false;
                        m.bits.insert(m.succ_bits.begin(), m.succ_bits.end());
                        m.enabled = m.succ_enabled;
                    }
                    break;
                case 7: {
                    // Merge from a bitmap of another granularity holding one random range.
                    const std::uint64_t g2 = 512ull << (rng() % 8);
                    DirtyBitmap src("s", disk, g2);
                    src.set_dirty(off, len);
                    b.merge(src);
                    // The model: every byte of src's dirty granules marks our granules.
                    const std::uint64_t s0 = off / g2 * g2;
                    const std::uint64_t s1 = std::min(disk, (off + len + g2 - 1) / g2 * g2);
                    Model::mark(m.bits, disk, gran, s0, s1 - s0);
                    break;
                }
                case 8: {
                    const std::uint64_t a = off / gran * gran;
                    b.reset_dirty(a, len);
                    for (std::uint64_t i = a / gran;
                         i < (std::min(disk, a + len) + gran - 1) / gran; ++i)
                        m.bits.erase(i);
                    break;
                }
                case 9:
                    if (rng() % 20 == 0) {
                        b.clear();
                        m.bits.clear();
                    }
                    break;
                }
                ASSERT_EQ(bits_of(b.bits()), m.bits) << "step " << step << " gran " << gran;
                ASSERT_EQ(b.count(), m.bits.size() * gran);
                ASSERT_EQ(b.recording(), m.frozen ? m.succ_enabled : m.enabled);
                if (b.frozen()) {
                    ASSERT_EQ(bits_of(b.successor()->bits()), m.succ_bits);
                }
            }
            // Extent walk covers exactly the dirty bytes.
            std::uint64_t pos = 0, dirty_bytes = 0;
            while (auto e = b.next_dirty(pos, disk)) {
                for (std::uint64_t i = e->offset / gran;
                     i < (e->offset + e->length + gran - 1) / gran; ++i)
                    ASSERT_TRUE(m.bits.count(i));
                dirty_bytes += e->length;
                pos = e->offset + e->length;
                auto c = b.next_clean(pos, disk);
                if (!c) break;
                pos = c->offset + c->length;
            }
            std::uint64_t expect = 0;
            for (std::uint64_t i : m.bits)
                expect += std::min(disk, (i + 1) * gran) - i * gran;
            ASSERT_EQ(dirty_bytes, expect);
        }
    }
}

// ---- The write hook in Node -------------------------------------------------------------

class MemNode final : public Node {
  public:
    MemNode(std::string name, std::uint64_t size) : Node(std::move(name), "memory"), data(size) {
        set_size(size);
    }
    std::vector<std::byte> data;
    bool fail = false;

  protected:
    io::Task<std::error_code> do_read(std::uint64_t, std::span<std::byte>, ReqFlags) override {
        co_return std::error_code{};
    }
    io::Task<std::error_code> do_write(std::uint64_t, std::span<const std::byte>,
                                       ReqFlags) override {
        co_await io::EventLoop::current().yield();
        co_return fail ? errno_code(EIO) : std::error_code{};
    }
    io::Task<std::error_code> do_flush() override { co_return std::error_code{}; }
};

struct User final : ChildParent {
    std::string parent_description() const override { return "export 'u'"; }
    std::string parent_name() const override { return "u"; }
    const char* parent_type() const override { return "block-backend"; }
};

io::Task<void> do_writes(Child* c) {
    std::vector<std::byte> buf(4096);
    (void)co_await c->write(70 * 1024, buf);
    (void)co_await c->write_zeroes(1 << 20, 1);
    (void)co_await c->discard(3 << 20, 65536 * 2);
    (void)co_await c->read(2 << 20, buf); // reads never dirty
}

TEST(DirtyBitmapHook, WritesZeroesAndDiscardsReachingANodeAreRecorded) {
    io::EventLoop loop;
    Graph g;
    auto* n = static_cast<MemNode*>(*g.add(std::make_unique<MemNode>("disk", 4 << 20)));
    User u;
    auto c = std::move(*g.attach(u, *n, perm_write | perm_consistent_read, perm_all));
    DirtyBitmap* b = *n->dirty_bitmaps().add("b0", n->size(), 65536);
    DirtyBitmap* off = *n->dirty_bitmaps().add("off", n->size(), 65536);
    off->set_enabled(false);
    loop.run_until_complete(do_writes(c.get()));
    EXPECT_EQ(bits_of(b->bits()), (std::set<std::uint64_t>{1, 16, 48, 49}));
    EXPECT_EQ(off->count(), 0u);
    // A failed write still counts: the data may have changed partly.
    n->fail = true;
    b->clear();
    loop.run_until_complete(do_writes(c.get()));
    EXPECT_EQ(bits_of(b->bits()).count(1), 1u);
    g.detach(std::move(c));
    loop.run_until_complete(g.close_all());
}

} // namespace
} // namespace fleece::block
