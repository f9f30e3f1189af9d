#include "block/bitmap_sidecar.hpp"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <unistd.h>

namespace fleece::block {
namespace {

std::string temp_path(const char* name) {
    return (std::filesystem::temp_directory_path() /
            (std::string("fleece-sidecar-") + std::to_string(::getpid()) + "-" + name))
        .string();
}

TEST(BitmapSidecar, RoundTripKeepsPersistentBitmapsOnly) {
    const std::string path = temp_path("rt");
    DirtyBitmaps set;
    DirtyBitmap* a = *set.add("a", 10'000'000, 65536);
    DirtyBitmap* b = *set.add("b", 10'000'000, 512);
    DirtyBitmap* t = *set.add("temp", 10'000'000, 65536);
    a->set_persistent(true);
    b->set_persistent(true);
    b->set_enabled(false);
    a->record(3 * 65536 + 5, 70000);
    b->set_dirty(9'999'999, 1);
    b->set_inconsistent(true);
    t->record(0, 1);
    // A frozen bitmap is saved with its successor's writes (over-approximation).
    a->create_successor();
    a->record(100 * 65536, 1);
    ASSERT_TRUE(write_sidecar(path, 10'000'000, set,
                              SidecarState{true, false, 0, DiskIdentity{10'000'000, -5}}));
    auto c = read_sidecar(path);
    ASSERT_TRUE(c) << c.error().message;
    EXPECT_TRUE(c->clean);
    EXPECT_FALSE(c->write_ahead);
    ASSERT_TRUE(c->identity);
    EXPECT_EQ(*c->identity, (DiskIdentity{10'000'000, -5}));
    EXPECT_EQ(c->disk_size, 10'000'000u);
    ASSERT_EQ(c->bitmaps.size(), 2u);
    EXPECT_EQ(c->bitmaps[0].name, "a");
    EXPECT_TRUE(c->bitmaps[0].enabled);
    Bitmap bits(a->bits().size());
    bits.load_words(c->bitmaps[0].words);
    EXPECT_TRUE(bits.get(3) && bits.get(4) && bits.get(100));
    EXPECT_EQ(bits.count(), 3u);
    EXPECT_EQ(c->bitmaps[1].name, "b");
    EXPECT_EQ(c->bitmaps[1].granularity, 512u);
    EXPECT_FALSE(c->bitmaps[1].enabled);
    EXPECT_TRUE(c->bitmaps[1].inconsistent);
    EXPECT_FALSE(c->bitmaps[0].inconsistent);

    ASSERT_TRUE(write_sidecar(path, 10'000'000, set, SidecarState{false, true, 9, std::nullopt}));
    c = read_sidecar(path);
    ASSERT_TRUE(c);
    EXPECT_FALSE(c->clean);
    EXPECT_TRUE(c->write_ahead);
    EXPECT_EQ(c->journal_epoch, 9u);
    EXPECT_FALSE(c->identity);
    std::remove(path.c_str());
}

TEST(BitmapSidecar, DamagedFilesAreErrors) {
    const std::string path = temp_path("bad");
    EXPECT_FALSE(read_sidecar(path)); // missing
    DirtyBitmaps set;
    (*set.add("a", 1 << 20, 65536))->set_persistent(true);
    ASSERT_TRUE(write_sidecar(path, 1 << 20, set, SidecarState{true, false, 0, std::nullopt}));
    std::filesystem::resize_file(path, std::filesystem::file_size(path) - 1);
    auto r = read_sidecar(path);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("damaged or truncated"), std::string::npos);
    { std::ofstream(path) << "something else entirely"; }
    EXPECT_NE(read_sidecar(path).error().message.find("not a fleece bitmap sidecar"),
              std::string::npos);
    std::remove(path.c_str());
}

// Version 1 files (before write-ahead mode) still load: clean-shutdown, no identity.
TEST(BitmapSidecar, VersionOneFilesLoad) {
    const std::string path = temp_path("v1");
    std::string v1("FLEECEBM", 8);
    auto put = [&v1](std::uint64_t v, int bytes) {
        for (int i = 0; i < bytes; ++i)
            v1.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    };
    put(1, 4);       // version
    put(1, 4);       // in use
    put(1 << 20, 8); // disk size
    put(1, 4);       // one bitmap
    put(1, 4);
    v1 += "x";
    put(65536, 8);   // granularity
    v1.push_back(1); // enabled
    put(1, 8);       // one word
    put(0x5, 8);
    std::ofstream(path, std::ios::binary) << v1;
    auto c = read_sidecar(path);
    ASSERT_TRUE(c) << c.error().message;
    EXPECT_FALSE(c->clean);
    EXPECT_FALSE(c->write_ahead);
    EXPECT_FALSE(c->identity);
    ASSERT_EQ(c->bitmaps.size(), 1u);
    EXPECT_EQ(c->bitmaps[0].name, "x");
    EXPECT_EQ(c->bitmaps[0].words, std::vector<std::uint64_t>{0x5});
    std::remove(path.c_str());
}

} // namespace
} // namespace fleece::block
