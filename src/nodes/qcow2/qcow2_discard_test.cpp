// Clusters a discard frees go back to the file (QEMU's pass-discard-request): the node
// below the qcow2 node receives them as discards, contiguous host clusters in one request,
// the image file's allocated size falls, the rest of the data stays, and the image stays
// clean. The options and the file node's own discard mode decide whether it happens. The
// order against the L2 tables (a hole only once no durable L2 entry names the cluster) is
// checked by qcow2_crash_order_test.cpp.
#include "block/graph.hpp"
#include "nodes/qcow2/qcow2_tools.hpp"
#include "nodes/test_support.hpp"

#include <gtest/gtest.h>

namespace fleece::nodes {
namespace {

using nlohmann::json;
using namespace testing;

constexpr std::uint64_t KiB = 1024, MiB = 1 << 20;

// Passes everything to the real file node below and notes the discards it forwards. To
// the node directly, not through the edge: the qcow2 node's final commits at close come
// when the edges above have dropped their permissions (it bypasses its own edge then).
class DiscardRecorder final : public block::FilterNode {
  public:
    DiscardRecorder(std::string name, block::Node& file)
        : FilterNode(std::move(name), "discard-recorder") {
        set_file(add_child(file, block::ChildRole::file, "file"));
        refresh_from_children();
    }
    std::vector<std::pair<std::uint64_t, std::uint64_t>> discards; // offset, length

  protected:
    io::Task<std::error_code> do_write(std::uint64_t offset, std::span<const std::byte> buf,
                                       block::ReqFlags flags) override {
        co_return co_await file().node().write(offset, buf, flags);
    }
    io::Task<std::error_code> do_flush() override { co_return co_await file().node().flush(); }
    io::Task<std::error_code> do_discard(std::uint64_t offset, std::uint64_t length) override {
        discards.emplace_back(offset, length);
        co_return co_await file().node().discard(offset, length);
    }
    io::Task<std::error_code> do_truncate(std::uint64_t size, block::Prealloc prealloc) override {
        std::error_code e = co_await file().node().truncate(size, prealloc);
        refresh_from_children();
        co_return e;
    }
};

std::string make_image(const ScratchDir& dir, std::uint64_t size, std::uint32_t cluster) {
    const std::string p = (dir.path() / "d.qcow2").string();
    qcow2::CreateOptions o;
    o.size = size;
    o.cluster_size = cluster;
    EXPECT_TRUE(qcow2::create_image(p, o).ok());
    return p;
}

void expect_clean(const std::string& path) {
    auto r = qcow2::check_image(path, qcow2::Repair::none);
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->corruptions, 0u);
    EXPECT_EQ(r->leaks, 0u);
    EXPECT_EQ(std::system(("qemu-img check " + path + " >/dev/null 2>&1").c_str()), 0);
}

std::vector<std::byte> read_back(Harness& h, std::uint64_t off, std::size_t n) {
    std::vector<std::byte> b(n);
    EXPECT_FALSE(h.read(off, b));
    return b;
}

// qcow2 (options `qcow2_extra`) over a recorder over a file node (discard `file_discard`).
struct Stack {
    Harness h;
    DiscardRecorder* rec = nullptr;

    Stack(const std::string& path, const std::string& file_discard, json qcow2_extra) {
        auto f = h.add(json{{"driver", "file"},
                            {"node-name", "f0"},
                            {"filename", path},
                            {"discard", file_discard}});
        EXPECT_TRUE(f.ok());
        auto r = std::make_unique<DiscardRecorder>("rec", **f);
        rec = r.get();
        EXPECT_TRUE(h.graph.add(std::move(r)).ok());
        json o = {{"driver", "qcow2"}, {"node-name", "q0"}, {"file", "rec"}};
        o.update(qcow2_extra);
        auto q = h.add(o);
        EXPECT_TRUE(q.ok()) << q.error().message;
        EXPECT_TRUE(h.attach(**q, rw).ok());
    }
};

// File-system metadata a hole punch may add (extent tree blocks), far below any discard
// the tests expect to see.
constexpr std::uint64_t extent_tree_slack = 16 * KiB;

TEST(Qcow2Discard, FreedClustersReachTheFileAsOneDiscardPerHostRun) {
    ScratchDir dir;
    const std::string p = make_image(dir, 8 * MiB, 65536);
    {
        Stack s(p, "unmap", {{"discard", "unmap"}});
        const auto data = pattern(4 * MiB, 1);
        ASSERT_FALSE(s.h.write(0, data)); // host clusters in guest order
        ASSERT_FALSE(s.h.flush());
        const std::uint64_t full = st_blocks(p) * 512;
        EXPECT_GE(full, 4 * MiB);
        // 2 MiB = 32 clusters, more than the 1 MiB batch: the discard itself commits and
        // passes them down, before it returns.
        ASSERT_FALSE(s.h.discard(MiB, 2 * MiB));
        ASSERT_EQ(s.rec->discards.size(), 1u);
        EXPECT_EQ(s.rec->discards[0].second, 2 * MiB);
        EXPECT_EQ(s.rec->discards[0].first % 65536, 0u);
        // A punch can split an extent, and the file system may then need a block for its
        // extent tree (seen once in many runs on ext4: 4 KiB), which st_blocks counts too.
        EXPECT_LE(st_blocks(p) * 512, full - 2 * MiB + extent_tree_slack);
        EXPECT_EQ(read_back(s.h, 0, MiB),
                  std::vector<std::byte>(data.begin(), data.begin() + static_cast<long>(MiB)));
        EXPECT_EQ(read_back(s.h, MiB, 2 * MiB), std::vector<std::byte>(2 * MiB));
        // A small discard waits for the next commit (here a flush); partial clusters at
        // its ends stay.
        ASSERT_FALSE(s.h.discard(3 * MiB - 100, 64 * KiB + 200));
        EXPECT_EQ(s.rec->discards.size(), 1u);
        ASSERT_FALSE(s.h.flush());
        ASSERT_EQ(s.rec->discards.size(), 2u);
        EXPECT_EQ(s.rec->discards[1].second, 64 * KiB);
        EXPECT_LE(st_blocks(p) * 512, full - 2 * MiB - 64 * KiB + extent_tree_slack);
        // The freed clusters are reused by new writes, which read back.
        ASSERT_FALSE(s.h.write(5 * MiB, pattern(MiB, 2)));
        ASSERT_FALSE(s.h.flush());
        EXPECT_EQ(read_back(s.h, 5 * MiB, MiB), pattern(MiB, 2));
        EXPECT_EQ(read_back(s.h, 3 * MiB + 64 * KiB, MiB - 64 * KiB),
                  std::vector<std::byte>(data.begin() + static_cast<long>(3 * MiB + 64 * KiB),
                                         data.end()));
    }
    expect_clean(p);
    EXPECT_EQ(std::system(("qemu-io -f qcow2 -c 'read -P 0 1M 2M' " + p + " >/dev/null").c_str()),
              0);
}

TEST(Qcow2Discard, UnmappingZeroWritesArePassedDownToo) {
    ScratchDir dir;
    const std::string p = make_image(dir, 8 * MiB, 65536);
    {
        Stack s(p, "unmap", {{"discard", "unmap"}});
        ASSERT_FALSE(s.h.write(0, pattern(2 * MiB, 1)));
        ASSERT_FALSE(s.h.write_zeroes(0, 2 * MiB, block::req_may_unmap));
        ASSERT_FALSE(s.rec->discards.empty()); // committed: 2 MiB waited
        EXPECT_EQ(read_back(s.h, 0, 2 * MiB), std::vector<std::byte>(2 * MiB));
        // Without unmap the clusters stay allocated (preallocated zero clusters).
        ASSERT_FALSE(s.h.write(4 * MiB, pattern(2 * MiB, 2)));
        const auto before = s.rec->discards.size();
        ASSERT_FALSE(s.h.write_zeroes(4 * MiB, 2 * MiB, 0));
        ASSERT_FALSE(s.h.flush());
        EXPECT_EQ(s.rec->discards.size(), before);
    }
    expect_clean(p);
}

TEST(Qcow2Discard, NothingReachesTheFileWhenTheOptionsSayNo) {
    struct Case {
        const char* file_discard;
        json qcow2;
    };
    const Case cases[] = {
        {"unmap", {{"discard", "unmap"}, {"pass-discard-request", false}}},
        {"ignore", {{"discard", "unmap"}}}, // the file node keeps its allocation
        {"unmap", {{"discard", "ignore"}, {"pass-discard-request", true}}}, // no discard
    };
    for (const Case& c : cases) {
        ScratchDir dir;
        const std::string p = make_image(dir, 8 * MiB, 65536);
        {
            Stack s(p, c.file_discard, c.qcow2);
            ASSERT_FALSE(s.h.write(0, pattern(4 * MiB, 1)));
            ASSERT_FALSE(s.h.flush());
            const std::uint64_t full = st_blocks(p);
            ASSERT_FALSE(s.h.discard(0, 4 * MiB));
            ASSERT_FALSE(s.h.flush());
            ASSERT_FALSE(s.h.flush());
            EXPECT_TRUE(s.rec->discards.empty()) << c.qcow2.dump();
            EXPECT_GE(st_blocks(p), full) << c.qcow2.dump();
        }
        expect_clean(p);
    }
}

TEST(Qcow2Discard, InlineFileDefaultsToUnmapAndOtherOptionsAreAccepted) {
    ScratchDir dir;
    const std::string p = make_image(dir, 8 * MiB, 65536);
    {
        Harness h;
        // As in QEMU: an inline file child gets discard=unmap unless it says otherwise.
        auto q = h.add(json{{"driver", "qcow2"},
                            {"node-name", "q0"},
                            {"discard", "unmap"},
                            {"pass-discard-snapshot", true},
                            {"pass-discard-other", false},
                            {"file", {{"driver", "file"}, {"filename", p}}}});
        ASSERT_TRUE(q.ok()) << q.error().message;
        ASSERT_TRUE(h.attach(**q, rw).ok());
        ASSERT_FALSE(h.write(0, pattern(4 * MiB, 1)));
        ASSERT_FALSE(h.flush());
        const std::uint64_t full = st_blocks(p) * 512;
        ASSERT_FALSE(h.discard(0, 4 * MiB));
        EXPECT_LE(st_blocks(p) * 512, full - 4 * MiB + extent_tree_slack);
    }
    expect_clean(p);
    Harness h;
    auto bad = h.add(json{{"driver", "qcow2"},
                          {"node-name", "q1"},
                          {"pass-discard-request", "maybe"},
                          {"file", {{"driver", "file"}, {"filename", p}}}});
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.error().message.find("pass-discard-request"), std::string::npos)
        << bad.error().message;
}

} // namespace
} // namespace fleece::nodes
