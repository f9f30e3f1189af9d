#include "nodes/test_support.hpp"

#include <gtest/gtest.h>

namespace fleece::nodes {
namespace {

using nlohmann::json;
using namespace testing;

constexpr std::uint64_t MiB = 1 << 20;

TEST(FileNode, ReadWriteFlushAndQueries) {
    ScratchDir dir;
    const std::string path = dir.file("disk.img", 4 * MiB);
    Harness h;
    auto n = h.add(json{{"driver", "file"},
                        {"node-name", "f0"},
                        {"filename", path},
                        {"aio", "io_uring"},
                        {"locking", "off"}});
    ASSERT_TRUE(n.ok()) << n.error().message;
    EXPECT_EQ((*n)->size(), 4 * MiB);
    EXPECT_EQ((*n)->filename(), path);
    EXPECT_FALSE((*n)->cache_direct());
    ASSERT_TRUE(h.attach(**n, rw).ok());

    const auto data = pattern(64 * 1024, 7);
    ASSERT_FALSE(h.write(12345, data, block::req_fua));
    std::vector<std::byte> back(data.size());
    ASSERT_FALSE(h.read(12345, back));
    EXPECT_EQ(back, data);
    EXPECT_FALSE(h.flush());
    // Out of range is refused by the entry point, not the kernel.
    EXPECT_EQ(h.read(4 * MiB - 10, back), std::errc::invalid_argument);

    // write-zeroes without unmap (ZERO_RANGE or fallback), then reads zeroes.
    ASSERT_FALSE(h.write_zeroes(12345, 1000));
    ASSERT_FALSE(h.read(12345, back));
    EXPECT_TRUE(std::all_of(back.begin(), back.begin() + 1000,
                            [](std::byte b) { return b == std::byte{0}; }));
    EXPECT_EQ(back[1000], data[1000]);
}

TEST(FileNode, DiscardPunchesHoleOnlyWithUnmap) {
    ScratchDir dir;
    const std::string path = dir.file("disk.img", 4 * MiB);
    {
        Harness h;
        auto n = h.add(json{{"driver", "file"}, {"node-name", "f0"}, {"filename", path}});
        ASSERT_TRUE(n.ok()) << n.error().message;
        EXPECT_FALSE((*n)->caps().trim);
        ASSERT_TRUE(h.attach(**n, rw).ok());
        ASSERT_FALSE(h.write(0, pattern(MiB, 1)));
        ASSERT_FALSE(h.flush());
        const auto before = st_blocks(path);
        ASSERT_GE(before, MiB / 512);
        // discard=ignore (default): success, nothing released.
        ASSERT_FALSE(h.discard(0, MiB));
        EXPECT_EQ(st_blocks(path), before);
    }
    Harness h;
    auto n = h.add(
        json{{"driver", "file"}, {"node-name", "f1"}, {"filename", path}, {"discard", "unmap"}});
    ASSERT_TRUE(n.ok()) << n.error().message;
    EXPECT_TRUE((*n)->caps().trim);
    ASSERT_TRUE(h.attach(**n, rw).ok());
    const auto before = st_blocks(path);
    ASSERT_FALSE(h.discard(0, MiB / 2));
    EXPECT_LE(st_blocks(path), before - (MiB / 2) / 512);
    std::vector<std::byte> back(4096);
    ASSERT_FALSE(h.read(0, back));
    EXPECT_EQ(back, std::vector<std::byte>(4096));
    // write-zeroes with may_unmap punches too.
    const auto mid = st_blocks(path);
    ASSERT_FALSE(h.write_zeroes(MiB / 2, MiB / 2, block::req_may_unmap));
    EXPECT_LE(st_blocks(path), mid - (MiB / 2) / 512);
}

TEST(FileNode, GrowingTruncateReservesSpaceOnlyWhenAskedTo) {
    ScratchDir dir;
    const std::string path = dir.file("grow.img", MiB);
    Harness h;
    auto n = h.add(json{{"driver", "file"}, {"node-name", "f0"}, {"filename", path}});
    ASSERT_TRUE(n.ok()) << n.error().message;
    ASSERT_TRUE(h.attach(**n, rw | block::perm_resize).ok());
    const auto sparse_blocks = st_blocks(path);
    // Prealloc::off: a sparse extension.
    ASSERT_FALSE(h.loop.run_until_complete(h.root->truncate(2 * MiB)));
    EXPECT_EQ((*n)->size(), 2 * MiB);
    EXPECT_EQ(st_blocks(path), sparse_blocks);
    // Prealloc::falloc: the new MiB is reserved on the host, and still reads as zeroes.
    ASSERT_FALSE(h.loop.run_until_complete(h.root->truncate(3 * MiB, block::Prealloc::falloc)));
    EXPECT_EQ((*n)->size(), 3 * MiB);
    EXPECT_GE(st_blocks(path), sparse_blocks + MiB / 512);
    std::vector<std::byte> back(MiB, std::byte{1});
    ASSERT_FALSE(h.read(2 * MiB, back));
    EXPECT_EQ(back, std::vector<std::byte>(MiB));
}

TEST(FileNode, BlockStatusReportsHolesAndData) {
    ScratchDir dir;
    const std::string path = dir.file("sparse.img", 8 * MiB);
    Harness h;
    auto n = h.add(json{{"driver", "file"}, {"node-name", "f0"}, {"filename", path}});
    ASSERT_TRUE(n.ok()) << n.error().message;
    ASSERT_TRUE((*n)->caps().block_status);
    ASSERT_TRUE(h.attach(**n, rw).ok());
    ASSERT_FALSE(h.write(2 * MiB, pattern(MiB, 3)));
    ASSERT_FALSE(h.flush());

    auto s = h.status(0, 8 * MiB);
    ASSERT_FALSE(s.error);
    EXPECT_EQ(s.flags & (block::status_data | block::status_zero), block::status_zero);
    EXPECT_EQ(s.length, 2 * MiB);
    s = h.status(2 * MiB, 6 * MiB);
    ASSERT_FALSE(s.error);
    EXPECT_EQ(s.flags, block::status_data | block::status_allocated);
    EXPECT_EQ(s.length, MiB);
    // Clipped to the query.
    s = h.status(2 * MiB, 4096);
    EXPECT_EQ(s.length, 4096u);
    // Trailing hole up to EOF (SEEK_DATA gives ENXIO).
    s = h.status(3 * MiB, 5 * MiB);
    ASSERT_FALSE(s.error);
    EXPECT_EQ(s.flags & block::status_zero, block::status_zero);
    EXPECT_EQ(s.flags & block::status_data, 0u);
    EXPECT_EQ(s.length, 5 * MiB);
}

// The node remembers the last data region it found (sequential readers ask before every
// read); punching a hole inside it, or truncating, must not leave a stale "data" answer.
TEST(FileNode, BlockStatusForgetsItsDataRegionWhenAHoleIsPunched) {
    ScratchDir dir;
    const std::string path = dir.file("region.img", 8 * MiB);
    Harness h;
    auto n = h.add(
        json{{"driver", "file"}, {"node-name", "f0"}, {"filename", path}, {"discard", "unmap"}});
    ASSERT_TRUE(n.ok()) << n.error().message;
    ASSERT_TRUE(h.attach(**n, rw).ok());
    ASSERT_FALSE(h.write(0, pattern(4 * MiB, 5)));
    ASSERT_FALSE(h.flush());
    auto s = h.status(0, 8 * MiB);
    EXPECT_EQ(s.flags, block::status_data | block::status_allocated);
    EXPECT_EQ(s.length, 4 * MiB);
    // Inside the remembered region: still data, clipped to the region's end.
    s = h.status(MiB, 7 * MiB);
    EXPECT_EQ(s.flags, block::status_data | block::status_allocated);
    EXPECT_EQ(s.length, 3 * MiB);

    ASSERT_FALSE(h.discard(MiB, MiB));
    s = h.status(MiB, MiB);
    EXPECT_EQ(s.flags & (block::status_data | block::status_zero), block::status_zero);
    s = h.status(0, 8 * MiB);
    EXPECT_EQ(s.flags, block::status_data | block::status_allocated);
    EXPECT_EQ(s.length, MiB);
    // write-zeroes with unmap punches too.
    s = h.status(2 * MiB, MiB);
    EXPECT_EQ(s.flags, block::status_data | block::status_allocated);
    ASSERT_FALSE(h.write_zeroes(2 * MiB, MiB, block::req_may_unmap));
    s = h.status(2 * MiB, MiB);
    EXPECT_EQ(s.flags & (block::status_data | block::status_zero), block::status_zero);
}

TEST(FileNode, DirectIoNeedsAlignment) {
    ScratchDir dir;
    const std::string path = dir.file("direct.img", 4 * MiB);
    Harness h;
    auto n = h.add(json{{"driver", "file"},
                        {"node-name", "f0"},
                        {"filename", path},
                        {"cache", json::object({{"direct", true}})}});
    if (!n.ok() && n.error().message.find("Invalid argument") != std::string::npos)
        GTEST_SKIP() << "file system without O_DIRECT: " << n.error().message;
    ASSERT_TRUE(n.ok()) << n.error().message;
    EXPECT_TRUE((*n)->cache_direct());
    const std::uint32_t a = (*n)->limits().request_alignment;
    EXPECT_TRUE(a == 512 || a == 4096) << a;
    ASSERT_TRUE(h.attach(**n, rw).ok());

    // std::vector memory is not sector aligned: the driver bounces it.
    const auto data = pattern(64 * 1024, 9);
    ASSERT_FALSE(h.write(a * 3, data));
    std::vector<std::byte> back(data.size());
    ASSERT_FALSE(h.read(a * 3, back));
    EXPECT_EQ(back, data);
    // Misaligned offsets and lengths are padded: reads through the covering range, writes
    // as read-modify-write that keeps the bytes around them.
    std::vector<std::byte> small(a);
    ASSERT_FALSE(h.read(a * 3 + 1, small));
    EXPECT_EQ(small, std::vector<std::byte>(data.begin() + 1, data.begin() + 1 + a));
    const auto odd = pattern(a + 1, 4);
    ASSERT_FALSE(h.write(a * 3 + 7, odd));
    std::vector<std::byte> whole(3 * a);
    ASSERT_FALSE(h.read(a * 3, whole));
    for (std::size_t i = 0; i < whole.size(); ++i) {
        const std::byte want = (i >= 7 && i < 7 + a + 1) ? odd[i - 7] : data[i];
        ASSERT_EQ(whole[i], want) << "byte " << i;
    }
    EXPECT_FALSE(h.flush());
}

TEST(FileNode, ReadOnlyRefusesWriters) {
    ScratchDir dir;
    const std::string path = dir.file("ro.img", MiB);
    ::chmod(path.c_str(), 0400); // O_RDONLY must be what we open with
    Harness h;
    auto n = h.add(
        json{{"driver", "file"}, {"node-name", "ro"}, {"filename", path}, {"read-only", true}});
    ASSERT_TRUE(n.ok()) << n.error().message;
    EXPECT_TRUE((*n)->read_only());
    Status st = h.attach(**n, rw);
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.error().message,
              "Block node 'ro' is read-only: 'write' is taken by export 'test' (as 'root')");
    ASSERT_TRUE(h.attach(**n, block::perm_consistent_read).ok());
    std::vector<std::byte> back(4096);
    EXPECT_FALSE(h.read(0, back));
    EXPECT_EQ(h.write(0, back), std::errc::operation_not_permitted);
}

TEST(FileNode, OpenErrors) {
    ScratchDir dir;
    Harness h;
    const std::string missing = (dir.path() / "nope.img").string();
    auto n = h.add(json{{"driver", "file"}, {"node-name", "f0"}, {"filename", missing}});
    ASSERT_FALSE(n.ok());
    EXPECT_EQ(n.error().message, "Could not open '" + missing + "': No such file or directory");
    n = h.add(json{{"driver", "file"}, {"node-name", "f0"}});
    ASSERT_FALSE(n.ok());
    EXPECT_EQ(n.error().message, "Parameter 'filename' is missing");
    n = h.add(
        json{{"driver", "file"}, {"node-name", "f0"}, {"filename", missing}, {"aio", "posix"}});
    ASSERT_FALSE(n.ok());
    EXPECT_NE(n.error().message.find("'aio'"), std::string::npos) << n.error().message;
    n = h.add(json{{"driver", "file"}, {"node-name", "f0"}, {"filename", dir.path().string()}});
    ASSERT_FALSE(n.ok());
    EXPECT_TRUE(h.graph.nodes().empty());
}

TEST(FileNode, NoFlushAndNoFallbackZeroes) {
    ScratchDir dir;
    const std::string path = dir.file("nf.img", MiB);
    Harness h;
    auto n = h.add(json{{"driver", "file"},
                        {"node-name", "f0"},
                        {"filename", path},
                        {"cache", json::object({{"no-flush", "on"}})}});
    ASSERT_TRUE(n.ok()) << n.error().message;
    EXPECT_TRUE((*n)->cache_no_flush());
    ASSERT_TRUE(h.attach(**n, rw).ok());
    EXPECT_FALSE(h.flush());
    // ext4/xfs/tmpfs... support ZERO_RANGE or not; either way the answer is success or ENOTSUP.
    const auto e = h.write_zeroes(0, 65536, block::req_no_fallback);
    EXPECT_TRUE(!e || e == std::errc::not_supported) << e.message();
}

} // namespace
} // namespace fleece::nodes
