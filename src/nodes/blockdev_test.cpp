#include "io/event_loop.hpp"
#include "nodes/registry.hpp"

#include <gtest/gtest.h>

namespace fleece::nodes {
namespace {

using nlohmann::json;

TEST(Blockdev, AddsNullNodeAndRejectsBadOptions) {
    io::EventLoop loop;
    block::Graph g;
    auto ok = loop.run_until_complete(
        blockdev_add(g, json{{"driver", "null-co"}, {"node-name", "n0"}, {"size", 4096}}));
    ASSERT_TRUE(ok.ok()) << ok.error().message;
    EXPECT_EQ((*ok)->size(), 4096u);
    auto unknown = loop.run_until_complete(
        blockdev_add(g, json{{"driver", "null-co"}, {"node-name", "n1"}, {"bogus", 1}}));
    ASSERT_FALSE(unknown.ok());
    EXPECT_EQ(unknown.error().message, "Parameter 'bogus' is unexpected");
    auto no_driver = loop.run_until_complete(blockdev_add(g, json{{"node-name", "n2"}}));
    ASSERT_FALSE(no_driver.ok());
    EXPECT_EQ(no_driver.error().message, "Parameter 'driver' is missing");
    auto bad_driver =
        loop.run_until_complete(blockdev_add(g, json{{"driver", "nope"}, {"node-name", "n3"}}));
    ASSERT_FALSE(bad_driver.ok());
    auto dup =
        loop.run_until_complete(blockdev_add(g, json{{"driver", "null-co"}, {"node-name", "n0"}}));
    ASSERT_FALSE(dup.ok());
    auto bad_type = loop.run_until_complete(
        blockdev_add(g, json{{"driver", "null-co"}, {"node-name", "n4"}, {"size", "big"}}));
    ASSERT_FALSE(bad_type.ok());
    EXPECT_NE(bad_type.error().message.find("'size'"), std::string::npos);
    // key=value form delivers strings: they convert.
    auto strings = loop.run_until_complete(blockdev_add(
        g,
        json{{"driver", "null-co"}, {"node-name", "n5"}, {"size", "8192"}, {"read-zeroes", "on"}}));
    ASSERT_TRUE(strings.ok()) << strings.error().message;
    EXPECT_EQ(g.nodes().size(), 2u);
}

} // namespace
} // namespace fleece::nodes
