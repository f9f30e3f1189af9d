// The bitmaps extension codec: directory round trips, every refusal names its problem,
// bitmap tables, and the bit layout of data clusters.
#include "nodes/qcow2/qcow2_bitmaps.hpp"

#include <gtest/gtest.h>

namespace fleece::nodes::qcow2 {
namespace {

constexpr std::uint64_t disk = 1ull << 30; // 1 GiB: 16384 bits at 64 KiB, one data cluster
const DirectoryLimits limits{16, disk, 1ull << 32};

QBitmap entry(std::string name, std::uint8_t gbits = 16) {
    QBitmap b;
    b.name = std::move(name);
    b.granularity_bits = gbits;
    b.flags = bitmap_flag_auto;
    b.table_size = static_cast<std::uint32_t>(bitmap_table_entries(disk, gbits, 16));
    b.table_offset = 5 << 16;
    return b;
}

std::string parse_error(const std::vector<QBitmap>& list, std::uint32_t nb = 0) {
    auto dir = serialize_bitmap_dir(list);
    auto r = parse_bitmap_dir(dir, nb ? nb : static_cast<std::uint32_t>(list.size()), limits);
    return r ? "" : r.error().message;
}

TEST(Qcow2Bitmaps, DirectoryRoundTrip) {
    QBitmap a = entry("b0");
    QBitmap b = entry("a-much-longer-name", 9);
    b.flags = bitmap_flag_in_use;
    b.table_offset = 7 << 16;
    QBitmap c = entry("x", 20);
    c.flags |= bitmap_flag_extra_data_compatible;
    c.extra_data = {std::byte{1}, std::byte{2}, std::byte{3}};
    auto dir = serialize_bitmap_dir({a, b, c});
    EXPECT_EQ(dir.size() % 8, 0u);
    auto r = parse_bitmap_dir(dir, 3, limits);
    ASSERT_TRUE(r) << r.error().message;
    ASSERT_EQ(r->size(), 3u);
    EXPECT_EQ((*r)[0].name, "b0");
    EXPECT_TRUE((*r)[0].auto_enabled());
    EXPECT_FALSE((*r)[0].in_use());
    EXPECT_EQ((*r)[1].name, "a-much-longer-name");
    EXPECT_EQ((*r)[1].granularity(), 512u);
    EXPECT_TRUE((*r)[1].in_use());
    EXPECT_EQ((*r)[1].table_offset, 7u << 16);
    EXPECT_EQ((*r)[1].table_size, 4u); // 2^21 bits at 512 B over 2^19 bits per cluster
    EXPECT_EQ((*r)[2].extra_data.size(), 3u);
    EXPECT_EQ(serialize_bitmap_dir(*r), dir);
}

TEST(Qcow2Bitmaps, CorruptDirectoriesAreRefusedWithTheProblemNamed) {
    auto has = [](const std::string& msg, const char* what) {
        return msg.find(what) != std::string::npos;
    };
    EXPECT_TRUE(has(parse_error({entry("b0")}, 2), "entry 1 is truncated"));
    QBitmap t = entry("b0");
    t.type = 2;
    EXPECT_TRUE(has(parse_error({t}), "'b0': unknown type 2"));
    EXPECT_TRUE(has(parse_error({entry("b0", 8)}), "granularity_bits 8 out of range"));
    EXPECT_TRUE(has(parse_error({entry("b0", 32)}), "granularity_bits 32 out of range"));
    QBitmap f = entry("b0");
    f.flags |= 0x10;
    EXPECT_TRUE(has(parse_error({f}), "reserved flags 0x10"));
    EXPECT_TRUE(has(parse_error({entry("b0"), entry("b0")}), "'b0': duplicate name"));
    QBitmap s = entry("b0");
    s.table_size = 3;
    EXPECT_TRUE(has(parse_error({s}), "bitmap table has 3 entries, the disk size needs 1"));
    QBitmap u = entry("b0");
    u.table_offset = 12345;
    EXPECT_TRUE(has(parse_error({u}), "not aligned"));
    QBitmap z = entry("b0");
    z.table_offset = 0;
    EXPECT_TRUE(has(parse_error({z}), "is 0"));
    QBitmap p = entry("b0");
    p.table_offset = 1ull << 40;
    EXPECT_TRUE(has(parse_error({p}), "extends past the end of the file"));
    EXPECT_TRUE(has(parse_error({entry("")}), "empty name"));
    QBitmap x = entry("b0");
    x.extra_data = {std::byte{1}};
    EXPECT_TRUE(has(parse_error({x}), "unknown extra data"));
    auto dir = serialize_bitmap_dir({entry("b0")});
    dir.resize(dir.size() + 8);
    auto r = parse_bitmap_dir(dir, 1, limits);
    ASSERT_FALSE(r);
    EXPECT_TRUE(has(r.error().message, "does not match"));
    auto none = parse_bitmap_dir({}, 0, limits);
    ASSERT_FALSE(none);
    EXPECT_TRUE(has(none.error().message, "0 bitmaps"));
}

// The same bytes through the lenient reader of `img info/check` (qcow2_format) and the
// strict reader of the node: one layout decoder, so the same entries.
TEST(Qcow2Bitmaps, LenientAndStrictReadersAgreeOnTheLayout) {
    QBitmap a = entry("odd"); // 24 + 3 bytes, padded to 32
    QBitmap b = entry("with-extra", 12);
    b.flags = bitmap_flag_in_use | bitmap_flag_extra_data_compatible;
    b.extra_data = {std::byte{0xa}, std::byte{0xb}, std::byte{0xc}, std::byte{0xd},
                    std::byte{0xe}}; // 24 + 5 + 10 bytes, padded to 40
    b.table_offset = 9 << 16;
    QBitmap c = entry("eight-ch", 31); // 24 + 8 bytes, no padding
    c.flags = 0;
    const auto dir = serialize_bitmap_dir({a, b, c});
    ASSERT_EQ(dir.size(), 32u + 40u + 32u);
    // The spec's offsets in entry 1, which starts at 32 (entry 0 padded from 27 bytes).
    EXPECT_EQ(load_be64(dir.data() + 32), 9u << 16);
    EXPECT_EQ(dir[32 + 17], std::byte{12});          // granularity_bits
    EXPECT_EQ(load_be16(dir.data() + 32 + 18), 10u); // name size
    EXPECT_EQ(load_be32(dir.data() + 32 + 20), 5u);  // extra data size
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(dir.data()) + 32 + 24 + 5, 10),
              "with-extra");

    auto layout = decode_bitmap_directory(dir, 3);
    EXPECT_EQ(layout.truncation, BitmapEntryTruncation::none);
    EXPECT_FALSE(layout.last_padding_past_end);
    EXPECT_EQ(layout.end, dir.size());
    auto lenient = parse_bitmap_directory(dir, 3);
    ASSERT_TRUE(lenient) << lenient.error().message;
    auto strict = parse_bitmap_dir(dir, 3, limits);
    ASSERT_TRUE(strict) << strict.error().message;
    ASSERT_EQ(lenient->size(), 3u);
    ASSERT_EQ(strict->size(), 3u);
    const QBitmap* want[] = {&a, &b, &c};
    for (std::size_t i = 0; i < 3; ++i) {
        const BitmapDirectoryEntry& wanted = *want[i];
        EXPECT_TRUE((*lenient)[i] == wanted) << "lenient entry " << i;
        EXPECT_TRUE((*strict)[i] == wanted) << "strict entry " << i;
        EXPECT_TRUE(layout.entries[i] == wanted) << "decoded entry " << i;
    }
    EXPECT_EQ((*lenient)[1].name, "with-extra");
    EXPECT_EQ((*lenient)[1].extra_data.size(), 5u);
    EXPECT_EQ((*strict)[1].granularity(), 4096u);
    EXPECT_TRUE((*strict)[1].in_use());
}

// A directory the strict reader refuses for what its values mean is still laid out
// readably: `img info/check` see its entries.
TEST(Qcow2Bitmaps, SemanticallyInvalidDirectoryIsStillDecoded) {
    QBitmap g = entry("g40");
    g.granularity_bits = 40;
    QBitmap t = entry("type7");
    t.type = 7;
    QBitmap n = entry(std::string(max_bitmap_name_bytes + 1, 'n'));
    const auto dir = serialize_bitmap_dir({g, t, n});
    auto strict = parse_bitmap_dir(dir, 3, limits);
    ASSERT_FALSE(strict);
    EXPECT_EQ(strict.error().message,
              "qcow2: bitmap 0 'g40': granularity_bits 40 out of range (9..31)");
    auto lenient = parse_bitmap_directory(dir, 3);
    ASSERT_TRUE(lenient) << lenient.error().message;
    ASSERT_EQ(lenient->size(), 3u);
    EXPECT_EQ((*lenient)[0].name, "g40");
    EXPECT_EQ((*lenient)[0].granularity_bits, 40u);
    EXPECT_EQ((*lenient)[1].type, 7u);
    EXPECT_EQ((*lenient)[2].name.size(), max_bitmap_name_bytes + 1);
    // Without the first entry the strict reader names the next problem.
    auto rest = serialize_bitmap_dir({t, n});
    auto strict_rest = parse_bitmap_dir(rest, 2, limits);
    ASSERT_FALSE(strict_rest);
    EXPECT_EQ(strict_rest.error().message, "qcow2: bitmap 0 'type7': unknown type 7");
}

// Layout problems: both readers refuse an unreadable entry; a last entry whose padding is
// cut off is read by the lenient reader and refused by the strict one.
TEST(Qcow2Bitmaps, LayoutProblemsAreSeenByBothReaders) {
    auto dir = serialize_bitmap_dir({entry("b0"), entry("b1")});    // 2 x 32 bytes
    std::vector<std::byte> cut(dir.begin(), dir.begin() + 32 + 25); // b1's name cut short
    auto layout = decode_bitmap_directory(cut, 2);
    EXPECT_EQ(layout.entries.size(), 1u);
    EXPECT_EQ(layout.truncation, BitmapEntryTruncation::variable_part);
    auto lenient = parse_bitmap_directory(cut, 2);
    ASSERT_FALSE(lenient);
    EXPECT_EQ(lenient.error().message, "qcow2: bitmap directory entry is truncated");
    auto strict = parse_bitmap_dir(cut, 2, limits);
    ASSERT_FALSE(strict);
    EXPECT_EQ(strict.error().message, "qcow2: bitmap directory entry 1 is truncated");

    // b1 complete (its name ends at byte 58), its padding to 64 missing.
    std::vector<std::byte> unpadded(dir.begin(), dir.begin() + 32 + 24 + 2);
    layout = decode_bitmap_directory(unpadded, 2);
    EXPECT_EQ(layout.entries.size(), 2u);
    EXPECT_EQ(layout.truncation, BitmapEntryTruncation::none);
    EXPECT_TRUE(layout.last_padding_past_end);
    EXPECT_EQ(layout.end, 64u);
    lenient = parse_bitmap_directory(unpadded, 2);
    ASSERT_TRUE(lenient) << lenient.error().message;
    EXPECT_EQ((*lenient)[1].name, "b1");
    strict = parse_bitmap_dir(unpadded, 2, limits);
    ASSERT_FALSE(strict);
    EXPECT_EQ(strict.error().message, "qcow2: bitmap directory entry 1 is truncated");

    // Fewer entries than the extension claims.
    lenient = parse_bitmap_directory(dir, 3);
    ASSERT_FALSE(lenient);
    strict = parse_bitmap_dir(dir, 3, limits);
    ASSERT_FALSE(strict);
    EXPECT_EQ(strict.error().message, "qcow2: bitmap directory entry 2 is truncated (directory "
                                      "of 64 bytes holds fewer than 3 entries)");
}

TEST(Qcow2Bitmaps, TableEntries) {
    std::vector<std::uint64_t> t = {0, bitmap_table_all_ones, 9ull << 16};
    auto raw = serialize_bitmap_table(t);
    auto r = parse_bitmap_table(raw, 16, 1 << 20);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(*r, t);
    EXPECT_FALSE(parse_bitmap_table(serialize_bitmap_table({(9ull << 16) | 2}), 16, 1 << 20));
    EXPECT_FALSE(parse_bitmap_table(serialize_bitmap_table({(9ull << 16) | 1}), 16, 1 << 20));
    EXPECT_FALSE(parse_bitmap_table(serialize_bitmap_table({9ull << 12}), 16, 1 << 20));
    auto past = parse_bitmap_table(serialize_bitmap_table({16ull << 16}), 16, 1 << 20);
    ASSERT_FALSE(past);
    EXPECT_NE(past.error().message.find("past the end of the file"), std::string::npos);
}

TEST(Qcow2Bitmaps, DataClusterBitOrder) {
    // 512-byte clusters hold 4096 bits; two clusters' worth of words.
    std::vector<std::uint64_t> words(128, 0);
    words[0] = 1ull | (1ull << 9); // bits 0 and 9
    words[64] = 1ull << 63;        // bit 4096 + 63: second cluster
    std::vector<std::byte> c(512);
    store_bitmap_cluster(words, 0, c);
    EXPECT_EQ(c[0], std::byte{1});
    EXPECT_EQ(c[1], std::byte{2});
    EXPECT_EQ(c[2], std::byte{0});
    EXPECT_TRUE(bitmap_cluster_dirty(words, 1, 512));
    EXPECT_FALSE(bitmap_cluster_dirty(std::vector<std::uint64_t>(128, 0), 1, 512));
    std::vector<std::uint64_t> back(128, 0);
    load_bitmap_cluster(back, 0, c);
    store_bitmap_cluster(words, 1, c);
    EXPECT_EQ(c[7], std::byte{0x80});
    load_bitmap_cluster(back, 1, c);
    EXPECT_EQ(back, words);
    // A cluster past the end of the words stores zeroes and loads nothing.
    store_bitmap_cluster(words, 2, c);
    EXPECT_EQ(c[0], std::byte{0});
}

TEST(Qcow2Bitmaps, Sizes) {
    EXPECT_EQ(bitmap_bit_count(1000, 9), 2u);
    EXPECT_EQ(bitmap_table_entries(0, 16, 16), 0u);
    EXPECT_EQ(bitmap_table_entries(1ull << 30, 16, 16), 1u);
    EXPECT_EQ(bitmap_table_entries((1ull << 35) + 1, 16, 16), 2u);
    auto ext = serialize_bitmaps_ext(3, 64, 1 << 16);
    HeaderExtension h{ext_bitmaps, ext};
    auto b = parse_bitmaps_extension(h);
    ASSERT_TRUE(b);
    EXPECT_EQ(b->nb_bitmaps, 3u);
    EXPECT_EQ(b->directory_size, 64u);
    EXPECT_EQ(b->directory_offset, 1u << 16);
}

} // namespace
} // namespace fleece::nodes::qcow2
