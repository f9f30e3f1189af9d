// The bitmap transaction actions: prepare/commit/abort as the transaction command uses them.

#include "block/graph.hpp"
#include "daemon/bitmap_commands.hpp"
#include "io/event_loop.hpp"
#include "nodes/testing/memory_node.hpp"

#include <gtest/gtest.h>

namespace fleece::daemon {
namespace {

using nlohmann::json;

struct Fixture {
    io::EventLoop loop;
    block::Graph g;
    block::Node* src = nullptr;
    block::Node* other = nullptr;
    Fixture() {
        src = *g.add(std::make_unique<nodes::MemoryNode>("source", 4 << 20));
        other = *g.add(std::make_unique<nodes::MemoryNode>("other", 4 << 20, 4096));
    }
    ~Fixture() { loop.run_until_complete(g.close_all()); }

    // Runs a transaction the way the transaction command does; returns the first error.
    Status transaction(const json& actions) {
        std::vector<std::unique_ptr<BitmapAction>> prepared;
        for (const json& a : actions) {
            auto action = make_bitmap_action(g, a["type"].get<std::string>(), a["data"]);
            if (Status st = action->prepare(); !st) {
                for (auto it = prepared.rbegin(); it != prepared.rend(); ++it)
                    (*it)->abort();
                return st;
            }
            prepared.push_back(std::move(action));
        }
        for (auto& a : prepared)
            a->commit();
        return {};
    }
    Status run(const char* type, json data) {
        return transaction(json::array({{{"type", type}, {"data", std::move(data)}}}));
    }
};

TEST(BitmapActions, FreezeRecipeIsAtomic) {
    Fixture f;
    ASSERT_TRUE(f.run("block-dirty-bitmap-add", {{"node", "source"}, {"name", "live"}}));
    block::DirtyBitmap* live = f.src->dirty_bitmaps().find("live");
    live->record(0, 1);
    live->record(3 << 20, 1);
    // add frozen + merge live into it + clear live, in one transaction.
    const json freeze = json::array(
        {{{"type", "block-dirty-bitmap-add"},
          {"data", {{"node", "source"}, {"name", "frozen"}, {"disabled", true}}}},
         {{"type", "block-dirty-bitmap-merge"},
          {"data", {{"node", "source"}, {"target", "frozen"}, {"bitmaps", {"live"}}}}},
         {{"type", "block-dirty-bitmap-clear"}, {"data", {{"node", "source"}, {"name", "live"}}}}});
    ASSERT_TRUE(f.transaction(freeze));
    block::DirtyBitmap* frozen = f.src->dirty_bitmaps().find("frozen");
    ASSERT_NE(frozen, nullptr);
    EXPECT_EQ(frozen->count(), 2u * 65536);
    EXPECT_FALSE(frozen->enabled());
    EXPECT_EQ(live->count(), 0u);

    // The same again fails at the add ("frozen" exists): nothing changes.
    live->record(1 << 20, 1);
    Status st = f.transaction(freeze);
    EXPECT_EQ(st.error().message, "Bitmap already exists: frozen");
    EXPECT_EQ(live->count(), 65536u);

    // A failing last action undoes the add, merge and clear before it.
    const json bad = json::array(
        {{{"type", "block-dirty-bitmap-add"}, {"data", {{"node", "source"}, {"name", "f2"}}}},
         {{"type", "block-dirty-bitmap-merge"},
          {"data", {{"node", "source"}, {"target", "frozen"}, {"bitmaps", {"live"}}}}},
         {{"type", "block-dirty-bitmap-clear"}, {"data", {{"node", "source"}, {"name", "live"}}}},
         {{"type", "block-dirty-bitmap-disable"}, {"data", {{"node", "source"}, {"name", "live"}}}},
         {{"type", "block-dirty-bitmap-remove"},
          {"data", {{"node", "source"}, {"name", "nope"}}}}});
    EXPECT_EQ(f.transaction(bad).error().message, "Dirty bitmap 'nope' not found");
    EXPECT_EQ(f.src->dirty_bitmaps().find("f2"), nullptr);
    EXPECT_EQ(frozen->count(), 2u * 65536);
    EXPECT_EQ(live->count(), 65536u);
    EXPECT_TRUE(live->enabled());
}

TEST(BitmapActions, MergeAcrossNodesAndErrors) {
    Fixture f;
    ASSERT_TRUE(f.run("block-dirty-bitmap-add", {{"node", "source"}, {"name", "a"}}));
    ASSERT_TRUE(f.run("block-dirty-bitmap-add", {{"node", "other"}, {"name", "b"}}));
    // Default granularity follows the node's cluster size (4 KiB here).
    EXPECT_EQ(f.other->dirty_bitmaps().find("b")->granularity(), 4096u);
    f.other->dirty_bitmaps().find("b")->record(8192, 1);
    ASSERT_TRUE(f.run("block-dirty-bitmap-merge",
                      {{"node", "source"},
                       {"target", "a"},
                       {"bitmaps", json::array({{{"node", "other"}, {"name", "b"}}})}}));
    EXPECT_EQ(f.src->dirty_bitmaps().find("a")->count(), 65536u);
    EXPECT_EQ(f.run("block-dirty-bitmap-merge",
                    {{"node", "source"},
                     {"target", "a"},
                     {"bitmaps", json::array({{{"node", "zz"}, {"name", "b"}}})}})
                  .error()
                  .message,
              "Node 'zz' not found");
    EXPECT_EQ(f.run("block-dirty-bitmap-add", {{"node", "zz"}, {"name", "x"}}).error().message,
              "Cannot find device='zz' nor node-name='zz'");
    EXPECT_EQ(
        f.run("block-dirty-bitmap-add", {{"node", "source"}, {"name", "p"}, {"persistent", true}})
            .error()
            .message,
        "Can't store persistent bitmaps to source: Operation not supported");
    EXPECT_EQ(
        f.run("block-dirty-bitmap-add", {{"node", "source"}, {"name", "g"}, {"granularity", -1}})
            .error()
            .message,
        "Parameter 'granularity' expects uint32_t");
    // Busy bitmaps refuse every change.
    f.src->dirty_bitmaps().find("a")->set_busy(true);
    for (const char* t : {"block-dirty-bitmap-clear", "block-dirty-bitmap-remove",
                          "block-dirty-bitmap-enable", "block-dirty-bitmap-disable"})
        EXPECT_EQ(f.run(t, {{"node", "source"}, {"name", "a"}}).error().message,
                  "Bitmap 'a' is currently in use by another operation and cannot be used");
    // Bad transaction data is a clear error, not a crash.
    EXPECT_FALSE(f.run("block-dirty-bitmap-clear", {{"node", 1}, {"name", "a"}}));
    EXPECT_FALSE(
        f.run("block-dirty-bitmap-merge", {{"node", "source"}, {"target", "a"}, {"bitmaps", {1}}}));
}

} // namespace
} // namespace fleece::daemon
