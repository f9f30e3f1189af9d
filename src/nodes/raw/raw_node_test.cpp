#include "nodes/test_support.hpp"

#include <gtest/gtest.h>

namespace fleece::nodes {
namespace {

using nlohmann::json;
using namespace testing;

constexpr std::uint64_t MiB = 1 << 20;

TEST(RawNode, NestedFileWithoutWindowIsTransparent) {
    ScratchDir dir;
    const std::string path = dir.file("disk.img", 2 * MiB);
    Harness h;
    auto n = h.add(json{{"driver", "raw"},
                        {"node-name", "r0"},
                        {"file", json{{"driver", "file"}, {"filename", path}}}});
    ASSERT_TRUE(n.ok()) << n.error().message;
    EXPECT_EQ((*n)->size(), 2 * MiB);
    EXPECT_EQ((*n)->filename(), path);
    EXPECT_EQ(h.graph.nodes().size(), 2u);
    ASSERT_TRUE(h.attach(**n, rw | block::perm_resize).ok());
    // Without a window the child edge passes resize through.
    EXPECT_TRUE((*n)->child("file")->shared() & block::perm_resize);
    const auto data = pattern(8192, 5);
    ASSERT_FALSE(h.write(100, data));
    std::vector<std::byte> back(data.size());
    ASSERT_FALSE(h.read(100, back));
    EXPECT_EQ(back, data);
}

TEST(RawNode, OffsetAndSizeWindow) {
    ScratchDir dir;
    const std::string path = dir.file("disk.img", 4 * MiB);
    Harness h;
    auto f = h.add(json{{"driver", "file"}, {"node-name", "f0"}, {"filename", path}});
    ASSERT_TRUE(f.ok()) << f.error().message;
    auto n = h.add(json{
        {"driver", "raw"}, {"node-name", "r0"}, {"file", "f0"}, {"offset", MiB}, {"size", MiB}});
    ASSERT_TRUE(n.ok()) << n.error().message;
    EXPECT_EQ((*n)->size(), MiB);
    EXPECT_FALSE((*n)->child("file")->shared() & block::perm_resize);
    ASSERT_TRUE(h.attach(**n, rw).ok());
    const auto data = pattern(4096, 11);
    ASSERT_FALSE(h.write(0, data));
    // Beyond the window is out of range for the raw node.
    EXPECT_EQ(h.write(MiB - 100, data), std::errc::invalid_argument);

    // Check through a second, read-only view of the file itself: data landed at +1 MiB.
    auto g = h.add(
        json{{"driver", "file"}, {"node-name", "g"}, {"filename", path}, {"read-only", true}});
    ASSERT_TRUE(g.ok()) << g.error().message;
    TestUser other;
    auto view = h.graph.attach(other, **g, block::perm_consistent_read, block::perm_all, "view");
    ASSERT_TRUE(view.ok()) << view.error().message;
    std::vector<std::byte> back(4096);
    EXPECT_FALSE(h.loop.run_until_complete((*view)->read(MiB, back)));
    EXPECT_EQ(back, data);
    h.graph.detach(std::move(*view));

    // block-status is translated too: the window start is data, what follows is a hole.
    auto s = h.status(0, MiB);
    EXPECT_EQ(s.flags & block::status_data, block::status_data);
    EXPECT_EQ(s.length, 4096u);
    s = h.status(4096, MiB - 4096);
    EXPECT_EQ(s.flags & block::status_data, 0u);
}

TEST(RawNode, RejectsWindowsOutsideTheChild) {
    ScratchDir dir;
    const std::string path = dir.file("disk.img", MiB);
    Harness h;
    auto f = h.add(json{{"driver", "file"}, {"node-name", "f0"}, {"filename", path}});
    ASSERT_TRUE(f.ok());
    auto n = h.add(json{
        {"driver", "raw"}, {"node-name", "r0"}, {"file", "f0"}, {"offset", 4096}, {"size", MiB}});
    ASSERT_FALSE(n.ok());
    EXPECT_NE(n.error().message.find("has to be smaller or equal"), std::string::npos);
    n = h.add(json{{"driver", "raw"}, {"node-name", "r0"}, {"file", "f0"}, {"offset", 2 * MiB}});
    ASSERT_FALSE(n.ok());
    n = h.add(json{{"driver", "raw"}, {"node-name", "r0"}, {"file", "nope"}});
    ASSERT_FALSE(n.ok());
    EXPECT_EQ(n.error().message, "Cannot find device='' nor node-name='nope'");
    // A failed nested open leaves nothing behind.
    n = h.add(json{{"driver", "raw"},
                   {"node-name", "r0"},
                   {"size", 2 * MiB},
                   {"file", json{{"driver", "file"}, {"filename", path}}}});
    ASSERT_FALSE(n.ok());
    EXPECT_EQ(h.graph.nodes().size(), 1u);
}

} // namespace
} // namespace fleece::nodes
