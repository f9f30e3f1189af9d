#include "nodes/fault_injection/fault_injection_node.hpp"
#include "nodes/test_support.hpp"

#include <gtest/gtest.h>

namespace fleece::nodes {
namespace {

using nlohmann::json;
using namespace testing;

constexpr std::uint64_t MiB = 1 << 20;

struct FaultInjection : ::testing::Test {
    ScratchDir dir;
    Harness h;
    FaultInjectionNode* fi = nullptr;

    void open(json rules) {
        const std::string path = dir.file("disk.img", MiB);
        auto n = h.add(json{{"driver", "fault-injection"},
                            {"node-name", "fi"},
                            {"rules", std::move(rules)},
                            {"file", json{{"driver", "file"}, {"filename", path}}}});
        ASSERT_TRUE(n.ok()) << n.error().message;
        fi = as_fault_injection(*n);
        ASSERT_NE(fi, nullptr);
        ASSERT_TRUE(h.attach(**n, rw).ok());
    }
    std::error_code read_at(std::uint64_t off) {
        std::vector<std::byte> buf(4096);
        return h.read(off, buf);
    }
};

TEST_F(FaultInjection, OnceFiresOnlyOnce) {
    open(json::array({json{{"operation", "read"}, {"once", true}}}));
    EXPECT_EQ(read_at(0), std::errc::io_error);
    EXPECT_FALSE(read_at(0));
    EXPECT_FALSE(fi->rules()[0].armed);
    EXPECT_EQ(fi->rules()[0].fired, 1u);
    // Re-arming makes it fire once more.
    ASSERT_TRUE(fi->arm(0, true));
    EXPECT_EQ(read_at(0), std::errc::io_error);
    EXPECT_FALSE(read_at(0));
    EXPECT_FALSE(fi->arm(1, true));
}

TEST_F(FaultInjection, EveryTimeOnlyForItsOperationAndRange) {
    open(json::array(
        {json{{"operation", "write"}, {"errno", 28}, {"offset", 65536}, {"length", 4096}}}));
    const auto data = pattern(4096, 1);
    EXPECT_EQ(h.write(65536, data), std::errc::no_space_on_device);
    EXPECT_EQ(h.write(65536 - 2048, data), std::errc::no_space_on_device); // overlaps
    EXPECT_FALSE(h.write(65536 + 4096, data));                             // just after
    EXPECT_FALSE(h.write(65536 - 4096, data));                             // just before
    EXPECT_FALSE(read_at(65536));                                          // other operation
    EXPECT_EQ(h.write(65536, data), std::errc::no_space_on_device);
    EXPECT_EQ(fi->rules()[0].fired, 3u);
}

TEST_F(FaultInjection, AnyOperationFlushAndBlockStatus) {
    open(json::array({json{{"operation", "any"}, {"armed", false}}}));
    EXPECT_FALSE(read_at(0));
    EXPECT_FALSE(h.flush());
    fi->arm(0, true);
    EXPECT_EQ(read_at(0), std::errc::io_error);
    EXPECT_EQ(h.flush(), std::errc::io_error);
    EXPECT_EQ(h.discard(0, 4096), std::errc::io_error);
    EXPECT_EQ(h.write_zeroes(0, 4096), std::errc::io_error);
    EXPECT_EQ(h.status(0, 4096).error, std::errc::io_error);
}

TEST_F(FaultInjection, SetRulesFromJsonValidatesAndReplaces) {
    open(json::array());
    EXPECT_FALSE(read_at(0));
    block::Node* node = h.graph.find("fi");
    Status st = fault_injection_set(*node, json::array({json{{"operation", "reed"}}}));
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.error().message.find("rules[0].operation"), std::string::npos)
        << st.error().message;
    st = fault_injection_set(*node, json::array({json{{"operation", "read"}, {"bogus", 1}}}));
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.error().message, "Parameter 'rules[0].bogus' is unexpected");
    st = fault_injection_set(*node, json{{"operation", "read"}});
    ASSERT_FALSE(st.ok());
    EXPECT_TRUE(fi->rules().empty()); // failed updates change nothing
    st = fault_injection_set(
        *node, json::array({json{{"operation", "read"}, {"errno", 30}, {"offset", 8192}}}));
    ASSERT_TRUE(st.ok()) << st.error().message;
    EXPECT_FALSE(read_at(0));
    EXPECT_EQ(read_at(8192), std::errc::read_only_file_system);
    EXPECT_EQ(read_at(MiB - 4096),
              std::errc::read_only_file_system); // length defaults to the whole disk
    // Not a fault-injection node.
    st = fault_injection_set(fi->child("file")->node(), json::array());
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(as_fault_injection(&fi->child("file")->node()), nullptr);
}

TEST_F(FaultInjection, DelayOnlyRuleAddsLatency) {
    open(json::array({json{{"operation", "read"}, {"errno", 0}, {"delay-ms", 30}}}));
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_FALSE(read_at(0));
    EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(30));
}

} // namespace
} // namespace fleece::nodes
