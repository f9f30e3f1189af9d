// copy-before-write with the `bitmap` option: only the bitmap's dirty clusters are copied
// before writes and readable through the snapshot; clean clusters read as EACCES. The same
// narrowing applied after open (set_bitmap, behind x-cbw-set-bitmap) and its undo.

#include "nodes/copy_before_write/cbw_test_util.hpp"

namespace fleece::nodes::testing {
namespace {

constexpr std::uint64_t k = 1024;
constexpr std::uint64_t M = 1024 * k;

nlohmann::json bitmap_option() {
    return {{"bitmap", {{"node", "source"}, {"name", "frozen"}}}};
}

// Clusters 1 and 3 (64 KiB) dirty, at a finer granularity than the CBW cluster.
void add_frozen_bitmap(MemoryNode& src) {
    block::DirtyBitmap* b = *src.dirty_bitmaps().add("frozen", src.size(), 4096);
    b->record(64 * k + 4 * k, 4 * k);
    b->record(3 * 64 * k, 64 * k);
    b->set_enabled(false);
}

TEST(CbwBitmap, OnlyDirtyClustersAreCopiedAndReadable) {
    Fleece f(1 * M, bitmap_option(), add_frozen_bitmap);
    f.fill(0, 1 * M, 0x11);
    EXPECT_EQ(f.cbw->block_copy().copy_bitmap().count(), 2u);
    // Guest writes everywhere: only the two dirty clusters are copied.
    EXPECT_FALSE(f.run(write_pattern(f.gc.get(), 0, 1 * M, 0x22)));
    EXPECT_EQ(f.cbw->block_copy().progress_done(), 128 * k);
    // The snapshot serves the dirty clusters with the old data...
    EXPECT_FALSE(f.run(read_pattern(f.rc.get(), 64 * k, 64 * k, 0x11)));
    EXPECT_FALSE(f.run(read_pattern(f.rc.get(), 3 * 64 * k, 64 * k, 0x11)));
    // ...and refuses the clean ones, also when a read straddles both.
    EXPECT_EQ(f.run(read_pattern(f.rc.get(), 0, 4 * k, 0x11)), block::errno_code(EACCES));
    EXPECT_EQ(f.run(read_pattern(f.rc.get(), 2 * 64 * k, 64 * k, 0x11)), block::errno_code(EACCES));
    EXPECT_EQ(f.run(read_pattern(f.rc.get(), 64 * k, 128 * k, 0x11)), block::errno_code(EACCES));
    // Block status too.
    block::BlockStatus st = f.loop.run_until_complete(f.rc->block_status(0, 64 * k));
    EXPECT_EQ(st.error, block::errno_code(EACCES));
    st = f.loop.run_until_complete(f.rc->block_status(64 * k, 1 * M - 64 * k));
    EXPECT_FALSE(st.error);
    EXPECT_EQ(st.length, 64 * k);
}

TEST(CbwBitmap, OptionErrors) {
    EXPECT_THROW(Fleece(1 * M, {{"bitmap", {{"node", "nope"}, {"name", "frozen"}}}}),
                 std::runtime_error);
    try {
        Fleece f(1 * M, {{"bitmap", "frozen"}}, add_frozen_bitmap);
        FAIL();
    } catch (const std::runtime_error& e) {
        EXPECT_STREQ(e.what(), "Invalid parameter type for 'bitmap', expected: object");
    }
    try {
        Fleece f(1 * M, bitmap_option(), [](MemoryNode& src) {
            add_frozen_bitmap(src);
            src.dirty_bitmaps().find("frozen")->set_inconsistent(true);
        });
        FAIL();
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("inconsistent"), std::string::npos);
    }
}

// x-cbw-set-bitmap: a filter opened without `bitmap` narrowed later, before any use.
TEST(CbwBitmap, SetBitmapBeforeUseNarrowsLikeTheOption) {
    Fleece f(1 * M, nlohmann::json::object(), add_frozen_bitmap);
    f.fill(0, 1 * M, 0x11);
    EXPECT_EQ(f.cbw->block_copy().copy_bitmap().count(), 16u); // everything, as opened
    CbwCopySets before;
    ASSERT_TRUE(f.cbw->set_bitmap(*f.src->dirty_bitmaps().find("frozen"), &before));
    EXPECT_EQ(before.copy.count(), 16u);
    EXPECT_EQ(f.cbw->block_copy().copy_bitmap().count(), 2u);
    EXPECT_FALSE(f.run(write_pattern(f.gc.get(), 0, 1 * M, 0x22)));
    EXPECT_EQ(f.cbw->block_copy().progress_done(), 128 * k);
    EXPECT_EQ(f.cbw->stats().requests, 1u);
    EXPECT_FALSE(f.run(read_pattern(f.rc.get(), 3 * 64 * k, 64 * k, 0x11)));
    EXPECT_EQ(f.run(read_pattern(f.rc.get(), 0, 4 * k, 0x11)), block::errno_code(EACCES));
    // Used now: a second narrowing is refused.
    CbwCopySets again;
    EXPECT_FALSE(f.cbw->set_bitmap(*f.src->dirty_bitmaps().find("frozen"), &again));
}

TEST(CbwBitmap, RestoreUndoesSetBitmap) {
    Fleece f(1 * M, nlohmann::json::object(), add_frozen_bitmap);
    f.fill(0, 1 * M, 0x11);
    CbwCopySets before;
    ASSERT_TRUE(f.cbw->set_bitmap(*f.src->dirty_bitmaps().find("frozen"), &before));
    f.cbw->restore_copy_sets(std::move(before)); // the transaction was aborted
    EXPECT_FALSE(f.run(write_pattern(f.gc.get(), 0, 1 * M, 0x22)));
    EXPECT_EQ(f.cbw->block_copy().progress_done(), 1 * M);
    EXPECT_FALSE(f.run(read_pattern(f.rc.get(), 0, 1 * M, 0x11)));
}

TEST(CbwBitmap, SetBitmapRefusedOnceTheSnapshotWasRead) {
    Fleece f(1 * M, nlohmann::json::object(), add_frozen_bitmap);
    f.fill(0, 1 * M, 0x11);
    EXPECT_FALSE(f.run(read_pattern(f.rc.get(), 0, 4 * k, 0x11)));
    CbwCopySets before;
    EXPECT_FALSE(f.cbw->set_bitmap(*f.src->dirty_bitmaps().find("frozen"), &before));
    EXPECT_EQ(f.cbw->block_copy().copy_bitmap().count(), 16u); // unchanged
}

TEST(CbwBitmap, FindCbwBitmapChecksTheReference) {
    Fleece f(1 * M, nlohmann::json::object(), add_frozen_bitmap);
    const nlohmann::json ref = {{"node", "source"}, {"name", "frozen"}};
    EXPECT_TRUE(find_cbw_bitmap(f.g, ref, 1 * M));
    auto wrong_size = find_cbw_bitmap(f.g, ref, 2 * M);
    ASSERT_FALSE(wrong_size);
    EXPECT_NE(wrong_size.error().message.find("does not match the source size"), std::string::npos);
    auto missing = find_cbw_bitmap(f.g, {{"node", "source"}, {"name", "nope"}}, 1 * M);
    ASSERT_FALSE(missing);
    EXPECT_EQ(missing.error().message, "Dirty bitmap 'nope' not found");
    EXPECT_FALSE(find_cbw_bitmap(f.g, {{"node", "source"}}, 1 * M));
}

} // namespace
} // namespace fleece::nodes::testing
