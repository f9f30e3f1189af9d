// The qcow2 node on real files: allocation, the bounded L2 cache, refcount table growth,
// concurrent allocating writes, backing fall-through and zero/discard handling. Every test
// ends with both our check and `qemu-img check` finding the image clean.
#include "nodes/qcow2/qcow2_tools.hpp"
#include "nodes/test_support.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <random>

namespace fleece::nodes {
namespace {

using nlohmann::json;
using namespace testing;
using qcow2::CreateOptions;

constexpr std::uint64_t KiB = 1024, MiB = 1 << 20;

std::string make_image(const ScratchDir& dir, const std::string& name, std::uint64_t size,
                       std::uint32_t cluster, const std::string& backing = "",
                       const std::string& backing_fmt = "") {
    const std::string p = (dir.path() / name).string();
    CreateOptions o;
    o.size = size;
    o.cluster_size = cluster;
    o.backing_file = backing;
    o.backing_format = backing_fmt;
    EXPECT_TRUE(qcow2::create_image(p, o).ok());
    return p;
}

json qcow2_opts(const std::string& path, json extra = json::object()) {
    json o = {{"driver", "qcow2"},
              {"node-name", "q0"},
              {"discard", "unmap"},
              {"file", {{"driver", "file"}, {"filename", path}}}};
    o.update(extra);
    return o;
}

// Opens the image as node "q0" (qcow2_opts plus `extra`) and attaches the test user
// read-write.
::testing::AssertionResult open_rw(Harness& h, const std::string& path,
                                   json extra = json::object()) {
    auto n = h.add(qcow2_opts(path, std::move(extra)));
    if (!n.ok()) return ::testing::AssertionFailure() << n.error().message;
    if (auto a = h.attach(**n, rw); !a.ok())
        return ::testing::AssertionFailure() << a.error().message;
    return ::testing::AssertionSuccess();
}

void expect_clean(const std::string& path) {
    auto r = qcow2::check_image(path, qcow2::Repair::none);
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->corruptions, 0u) << path;
    EXPECT_EQ(r->leaks, 0u) << path;
    for (const auto& m : r->messages)
        ADD_FAILURE() << m;
    EXPECT_EQ(std::system(("qemu-img check " + path + " >/dev/null 2>&1").c_str()), 0) << path;
}

std::vector<std::byte> read_back(Harness& h, std::uint64_t off, std::size_t n) {
    std::vector<std::byte> b(n);
    EXPECT_FALSE(h.read(off, b));
    return b;
}

TEST(Qcow2Node, WritesReadBackAndImageStaysClean) {
    ScratchDir dir;
    const std::string p = make_image(dir, "a.qcow2", 8 * MiB, 4096);
    {
        Harness h;
        auto n = h.add(qcow2_opts(p));
        ASSERT_TRUE(n.ok()) << n.error().message;
        EXPECT_EQ((*n)->size(), 8 * MiB);
        EXPECT_EQ((*n)->limits().cluster_size, 4096u);
        ASSERT_TRUE(h.attach(**n, rw).ok());
        const auto a = pattern(10000, 1);
        ASSERT_FALSE(h.write(1000, a)); // partial first and last clusters
        EXPECT_EQ(read_back(h, 1000, a.size()), a);
        EXPECT_EQ(read_back(h, 0, 1000), std::vector<std::byte>(1000));
        ASSERT_FALSE(h.write(1500, pattern(100, 2), block::req_fua));
        auto b = read_back(h, 1000, a.size());
        EXPECT_EQ(b[500], pattern(100, 2)[0]);
        // Block status: data, then unallocated zeroes. A data run stops where the host
        // clusters stop being contiguous (img map reports host offsets), so walk it.
        std::uint64_t data_end = 0;
        for (;;) {
            auto d = h.status(data_end, 8 * MiB - data_end);
            ASSERT_GT(d.length, 0u);
            if (d.flags != (block::status_data | block::status_allocated)) break;
            data_end += d.length;
        }
        EXPECT_EQ(data_end, 12288u);
        auto s = h.status(12288, 8 * MiB - 12288);
        EXPECT_EQ(s.flags, block::status_zero);
        EXPECT_EQ(s.depth, 0u);
    }
    expect_clean(p);
}

TEST(Qcow2Node, SmallL2CacheEvictsAndCommits) {
    ScratchDir dir;
    // 512-byte clusters: one L2 table maps 32 KiB, so 1 MiB of writes needs 32 tables.
    const std::string p = make_image(dir, "s.qcow2", 4 * MiB, 512);
    {
        Harness h;
        ASSERT_TRUE(open_rw(h, p, {{"l2-cache-size", 1024}}));
        for (unsigned i = 0; i < 64; ++i)
            ASSERT_FALSE(h.write(i * 64 * KiB + 100, pattern(700, i)));
        for (unsigned i = 0; i < 64; ++i)
            EXPECT_EQ(read_back(h, i * 64 * KiB + 100, 700), pattern(700, i)) << i;
    }
    expect_clean(p);
}

TEST(Qcow2Node, RefcountTableGrows) {
    ScratchDir dir;
    // 512-byte clusters, 16-bit refcounts: a refcount block covers 128 KiB, the initial
    // one-cluster table 64 blocks = 8 MiB of file. 10 MiB of data needs a bigger table.
    const std::string p = make_image(dir, "g.qcow2", 16 * MiB, 512);
    {
        Harness h;
        ASSERT_TRUE(open_rw(h, p));
        for (unsigned i = 0; i < 10; ++i)
            ASSERT_FALSE(h.write(i * MiB, pattern(MiB, i)));
        ASSERT_FALSE(h.flush());
        for (unsigned i = 0; i < 10; ++i)
            EXPECT_EQ(read_back(h, i * MiB, MiB), pattern(MiB, i)) << i;
    }
    expect_clean(p);
    // And it reopens with the moved table.
    Harness h;
    auto n = h.add(qcow2_opts(p, {{"read-only", true}}));
    ASSERT_TRUE(n.ok()) << n.error().message;
    ASSERT_TRUE(h.attach(**n, block::perm_consistent_read).ok());
    EXPECT_EQ(read_back(h, 9 * MiB, MiB), pattern(MiB, 9));
}

io::Task<void> write_one(block::Child* c, std::uint64_t off, std::vector<std::byte> data, int* left,
                         int* errors) {
    const std::error_code e = co_await c->write(off, std::span<const std::byte>(data));
    if (e) ++*errors;
    --*left;
}

io::Task<void> wait_zero(io::EventLoop* loop, int* left) {
    while (*left > 0)
        co_await loop->yield();
}

using Writes = std::vector<std::pair<std::uint64_t, std::vector<std::byte>>>;

// Issues all the writes at once (offset, data), waits for them; returns how many failed.
int write_concurrently(Harness& h, Writes writes) {
    int left = 0, errors = 0;
    for (auto& [off, data] : writes) {
        ++left;
        h.loop.spawn(write_one(h.root.get(), off, std::move(data), &left, &errors));
    }
    h.loop.run_until_complete(wait_zero(&h.loop, &left));
    return errors;
}

TEST(Qcow2Node, ConcurrentAllocatingWrites) {
    ScratchDir dir;
    const std::string p = make_image(dir, "c.qcow2", 16 * MiB, 65536);
    {
        Harness h;
        ASSERT_TRUE(open_rw(h, p));
        // Four writers per cluster (disjoint 16 KiB pieces) over 64 clusters, all at once.
        Writes writes;
        for (unsigned piece = 0; piece < 4; ++piece)
            for (unsigned c = 0; c < 64; ++c)
                writes.emplace_back(c * 65536 + piece * 16 * KiB, pattern(16 * KiB, c * 4 + piece));
        EXPECT_EQ(write_concurrently(h, std::move(writes)), 0);
        for (unsigned c = 0; c < 64; ++c)
            for (unsigned piece = 0; piece < 4; ++piece)
                EXPECT_EQ(read_back(h, c * 65536 + piece * 16 * KiB, 16 * KiB),
                          pattern(16 * KiB, c * 4 + piece));
    }
    expect_clean(p);
    auto r = qcow2::check_image(p, qcow2::Repair::none);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->allocated_clusters, 64u); // each cluster allocated exactly once
}

TEST(Qcow2Node, ConcurrentMultiClusterWritesGetContiguousHostRuns) {
    ScratchDir dir;
    const std::string p = make_image(dir, "r.qcow2", 32 * MiB, 65536);
    {
        Harness h;
        ASSERT_TRUE(open_rw(h, p));
        // Four 1 MiB writes in flight at once, the last one unaligned at both ends: each
        // gets one run of host clusters (reads of it are then one request).
        Writes writes;
        for (unsigned i = 0; i < 4; ++i)
            writes.emplace_back(i * 4 * MiB + (i == 3 ? 1000 : 0), pattern(MiB, i));
        EXPECT_EQ(write_concurrently(h, std::move(writes)), 0);
        for (unsigned i = 0; i < 3; ++i) {
            auto s = h.status(i * 4 * MiB, MiB);
            EXPECT_EQ(s.flags, block::status_data | block::status_allocated);
            EXPECT_EQ(s.length, MiB) << "write " << i << " is not one host run";
            EXPECT_EQ(read_back(h, i * 4 * MiB, MiB), pattern(MiB, i));
        }
        // 17 clusters: the partial first and last ones keep their zeroes.
        EXPECT_EQ(h.status(12 * MiB, 17 * 65536).length, 17 * 65536u);
        EXPECT_EQ(read_back(h, 12 * MiB + 1000, MiB), pattern(MiB, 3));
        EXPECT_EQ(read_back(h, 12 * MiB, 1000), std::vector<std::byte>(1000));
        EXPECT_EQ(read_back(h, 13 * MiB + 1000, 64 * KiB - 1000),
                  std::vector<std::byte>(64 * KiB - 1000));
    }
    expect_clean(p);
    auto r = qcow2::check_image(p, qcow2::Repair::none);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->allocated_clusters, 3 * 16u + 17u);
}

TEST(Qcow2Node, BackingFallThroughZeroesAndDiscard) {
    ScratchDir dir;
    const std::string base = dir.file("base.raw", 1 * MiB); // shorter than the top
    {
        Harness h;
        auto n = h.add(json{{"driver", "file"}, {"node-name", "b"}, {"filename", base}});
        ASSERT_TRUE(n.ok());
        ASSERT_TRUE(h.attach(**n, rw).ok());
        ASSERT_FALSE(h.write(0, pattern(MiB, 9)));
    }
    const std::string top = make_image(dir, "top.qcow2", 2 * MiB, 65536, "base.raw", "raw");
    {
        Harness h;
        ASSERT_TRUE(open_rw(h, top));
        EXPECT_EQ(read_back(h, 0, MiB), pattern(MiB, 9));
        EXPECT_EQ(read_back(h, MiB, MiB), std::vector<std::byte>(MiB)); // past the backing
        auto s = h.status(0, 64 * KiB);
        EXPECT_EQ(s.depth, 2u);
        EXPECT_FALSE(s.flags & block::status_allocated);
        // Copy-on-write of a partial cluster keeps the backing data around it.
        ASSERT_FALSE(h.write(100, pattern(10, 3)));
        auto b = read_back(h, 0, 65536);
        auto expect = pattern(MiB, 9);
        expect.resize(65536);
        std::copy_n(pattern(10, 3).begin(), 10, expect.begin() + 100);
        EXPECT_EQ(b, expect);
        // Zeroes and discard hide the backing.
        ASSERT_FALSE(h.write_zeroes(65536, 65536, block::req_may_unmap));
        ASSERT_FALSE(h.discard(0, 65536));
        EXPECT_EQ(read_back(h, 0, 2 * 65536), std::vector<std::byte>(2 * 65536));
        const auto base_data = pattern(MiB, 9);
        EXPECT_EQ(read_back(h, 2 * 65536, 100),
                  std::vector<std::byte>(base_data.begin() + 2 * 65536,
                                         base_data.begin() + 2 * 65536 + 100));
        s = h.status(0, 64 * KiB);
        EXPECT_EQ(s.flags, block::status_zero | block::status_allocated);
        // A partial zero request cannot be fast.
        EXPECT_EQ(h.write_zeroes(3 * 65536 + 1, 100, block::req_no_fallback),
                  std::errc::not_supported);
    }
    expect_clean(top);
}

TEST(Qcow2Node, ReleasedClustersAreReused) {
    ScratchDir dir;
    const std::string p = make_image(dir, "r.qcow2", 8 * MiB, 65536);
    {
        Harness h;
        ASSERT_TRUE(open_rw(h, p));
        ASSERT_FALSE(h.write(0, pattern(4 * MiB, 1)));
        ASSERT_FALSE(h.flush());
        const auto size_before = std::filesystem::file_size(p);
        ASSERT_FALSE(h.discard(0, 4 * MiB));
        ASSERT_FALSE(h.flush()); // releases them
        ASSERT_FALSE(h.flush()); // writes the decrements
        ASSERT_FALSE(h.write(4 * MiB, pattern(4 * MiB, 2)));
        ASSERT_FALSE(h.flush());
        EXPECT_EQ(std::filesystem::file_size(p), size_before);
        EXPECT_EQ(read_back(h, 0, 4 * MiB), std::vector<std::byte>(4 * MiB));
        EXPECT_EQ(read_back(h, 4 * MiB, 4 * MiB), pattern(4 * MiB, 2));
    }
    expect_clean(p);
}

std::uint64_t qemu_img_fully_allocated(std::uint64_t size) {
    const std::string out =
        command_output(fmt::format("qemu-img measure --output=json --size {} -O qcow2", size));
    return json::parse(out).at("fully-allocated").get<std::uint64_t>();
}

// Growing ahead stops at the size of the image fully allocated: an image written whole
// (a fleecing image the guest copied completely) is not left a grow step larger.
TEST(Qcow2Node, GrowAheadStopsAtTheFullyAllocatedSize) {
    ScratchDir dir;
    const std::string p = make_image(dir, "g.qcow2", 64 * MiB, 65536);
    const std::uint64_t full = qemu_img_fully_allocated(64 * MiB);
    {
        Harness h;
        ASSERT_TRUE(open_rw(h, p));
        for (std::uint64_t off = 0; off < 64 * MiB; off += MiB)
            ASSERT_FALSE(h.write(off, pattern(MiB, static_cast<int>(off / MiB) + 1)));
        ASSERT_FALSE(h.flush());
        // Grow steps are 1/8 of the file here (8 MiB): without the bound, 72 MiB.
        EXPECT_LE(std::filesystem::file_size(p), full + 8 * 65536);
        EXPECT_GE(std::filesystem::file_size(p), full);
    }
    expect_clean(p);
}

TEST(Qcow2Node, CompressedWritesReadBackAndQemuAgrees) {
    ScratchDir dir;
    for (const char* type : {"zlib", "zstd"}) {
        const std::string p = (dir.path() / (std::string(type) + ".qcow2")).string();
        ASSERT_EQ(std::system(fmt::format("qemu-img create -f qcow2 -o compression_type={} {} 4M "
                                          ">/dev/null",
                                          type, p)
                                  .c_str()),
                  0);
        std::vector<std::byte> text(2 * 65536);
        for (std::size_t i = 0; i < text.size(); ++i)
            text[i] = static_cast<std::byte>("fleece compresses "[i % 18]);
        std::vector<std::byte> noise(65536); // does not shrink: stored plainly
        std::mt19937 rng(4);
        for (auto& b : noise)
            b = static_cast<std::byte>(rng() & 0xff);
        {
            Harness h;
            ASSERT_TRUE(open_rw(h, p));
            ASSERT_FALSE(h.write(0, text, block::req_write_compressed));
            ASSERT_FALSE(h.write(3 * 65536, noise, block::req_write_compressed));
            EXPECT_EQ(read_back(h, 0, text.size()), text);
            EXPECT_EQ(read_back(h, 3 * 65536, 65536), noise);
            // Overwriting part of a compressed cluster decompresses it first.
            ASSERT_FALSE(h.write(100, pattern(10, 5)));
            auto expect = text;
            std::copy_n(pattern(10, 5).begin(), 10, expect.begin() + 100);
            EXPECT_EQ(read_back(h, 0, text.size()), expect);
        }
        expect_clean(p);
        auto r = qcow2::check_image(p, qcow2::Repair::none);
        ASSERT_TRUE(r.ok());
        EXPECT_EQ(r->compressed_clusters, 1u) << type; // cluster 1 (cluster 0 was rewritten)
        EXPECT_EQ(std::system(fmt::format("qemu-io -f qcow2 -c 'read -P 0 {} 65536' {} "
                                          ">/dev/null",
                                          2 * 65536, p)
                                  .c_str()),
                  0);
    }
}

TEST(Qcow2Node, WritableOpenOfCorruptImageRefused) {
    ScratchDir dir;
    const std::string p = make_image(dir, "x.qcow2", MiB, 65536);
    FILE* f = std::fopen(p.c_str(), "r+b");
    std::fseek(f, 79, SEEK_SET);
    std::fputc(2, f); // incompatible features: corrupt bit
    std::fclose(f);
    Harness h;
    auto n = h.add(qcow2_opts(p));
    ASSERT_FALSE(n.ok());
    EXPECT_NE(n.error().message.find("marked corrupt"), std::string::npos) << n.error().message;
    EXPECT_TRUE(h.graph.find("q0") == nullptr);
    auto ro = h.add(qcow2_opts(p, {{"read-only", true}}));
    EXPECT_TRUE(ro.ok());
}

} // namespace
} // namespace fleece::nodes
