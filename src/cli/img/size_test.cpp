#include "cli/img/size.hpp"

#include <gtest/gtest.h>

namespace fleece::cli::img {
namespace {

std::uint64_t size_of(const char* text) {
    auto r = parse_size(text);
    EXPECT_TRUE(r.ok()) << text;
    return r.ok() ? *r : 0;
}

TEST(ParseSize, PlainNumbersAndSuffixes) {
    EXPECT_EQ(size_of("0"), 0u);
    EXPECT_EQ(size_of("4096"), 4096u);
    EXPECT_EQ(size_of("1000"), 1000u);
    EXPECT_EQ(size_of("512B"), 512u);
    EXPECT_EQ(size_of("1k"), 1024u);
    EXPECT_EQ(size_of("1K"), 1024u);
    EXPECT_EQ(size_of("64k"), 65536u);
    EXPECT_EQ(size_of("1M"), 1u << 20);
    EXPECT_EQ(size_of("2G"), 2ull << 30);
    EXPECT_EQ(size_of("1T"), 1ull << 40);
    EXPECT_EQ(size_of("1P"), 1ull << 50);
    EXPECT_EQ(size_of("1m"), 1u << 20);
    EXPECT_EQ(size_of("0x1000"), 4096u);
}

TEST(ParseSize, Fractions) {
    EXPECT_EQ(size_of("1.5M"), 1572864u);
    EXPECT_EQ(size_of("0.5k"), 512u);
    EXPECT_EQ(size_of("2.25G"), 2415919104u);
}

TEST(ParseSize, Rejects) {
    for (const char* bad : {"", "abc", "-1", "+1", "12Q", "1MB", "1.5", "1.M", "M", "1 M", "0x",
                            "0xg", "99999999999999999999", "8E", "16E", "1.5B"}) {
        auto r = parse_size(bad);
        EXPECT_FALSE(r.ok()) << "'" << bad << "' should be refused";
    }
}

TEST(ParseSize, ErrorNamesTheProblem) {
    auto r = parse_size("12Q");
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message.find("'12Q'"), std::string::npos);
    EXPECT_NE(r.error().message.find("suffixes"), std::string::npos);
}

TEST(ParseResize, RelativeAndAbsolute) {
    const std::uint64_t cur = 10u << 20;
    EXPECT_EQ(*parse_resize("+1M", cur), 11u << 20);
    EXPECT_EQ(*parse_resize("-2M", cur), 8u << 20);
    EXPECT_EQ(*parse_resize("1G", cur), 1u << 30);
    EXPECT_FALSE(parse_resize("-11M", cur).ok());
    EXPECT_FALSE(parse_resize("+", cur).ok());
    EXPECT_FALSE(parse_resize("-x", cur).ok());
}

TEST(HumanSize, MatchesQemuImgStyle) {
    EXPECT_EQ(human_size(0), "0 B");
    EXPECT_EQ(human_size(512), "512 B");
    EXPECT_EQ(human_size(999), "999 B");
    EXPECT_EQ(human_size(1000), "0.977 KiB");
    EXPECT_EQ(human_size(4096), "4 KiB");
    EXPECT_EQ(human_size(200704), "196 KiB");
    EXPECT_EQ(human_size(1384448), "1.32 MiB");
    EXPECT_EQ(human_size(10485760), "10 MiB");
    EXPECT_EQ(human_size(1ull << 30), "1 GiB");
    EXPECT_EQ(human_size(1023ull << 20), "0.999 GiB");
}

} // namespace
} // namespace fleece::cli::img
