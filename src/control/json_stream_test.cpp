#include "control/json_stream.hpp"

#include <gtest/gtest.h>

using namespace fleece::control;

namespace {
std::vector<std::string> split(JsonStreamSplitter& s, std::string_view in) {
    std::vector<StreamItem> items;
    s.feed(in, items);
    std::vector<std::string> out;
    for (auto& i : items)
        out.push_back(i.kind == StreamItem::Kind::too_large ? "<too large>" : i.text);
    return out;
}
} // namespace

TEST(JsonStream, SeveralObjectsOnOneLine) {
    JsonStreamSplitter s;
    auto out = split(s, "{\"a\":1} {\"b\":[1,{}]}\n{}");
    ASSERT_EQ(out.size(), 3u);
    EXPECT_EQ(out[0], "{\"a\":1}");
    EXPECT_EQ(out[1], "{\"b\":[1,{}]}");
    EXPECT_EQ(out[2], "{}");
}

TEST(JsonStream, ObjectSplitAcrossReads) {
    JsonStreamSplitter s;
    EXPECT_TRUE(split(s, "{\"execute\": \"qu").empty());
    EXPECT_TRUE(split(s, "ery-version\", \"x\": \"}\\\"{\"").empty());
    auto out = split(s, "}\n");
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0], "{\"execute\": \"query-version\", \"x\": \"}\\\"{\"}");
}

TEST(JsonStream, BracesInsideStringsAndEscapedBackslash) {
    JsonStreamSplitter s;
    auto out = split(s, R"({"a":"{{[\\"}{"b":"\""})");
    ASSERT_EQ(out.size(), 2u);
    EXPECT_EQ(out[0], R"({"a":"{{[\\"})");
    EXPECT_EQ(out[1], R"({"b":"\""})");
}

TEST(JsonStream, BareTokensAndStrayClosersAreItems) {
    JsonStreamSplitter s;
    auto out = split(s, "garbage 12 }{\"a\":1}");
    ASSERT_EQ(out.size(), 4u);
    EXPECT_EQ(out[0], "garbage");
    EXPECT_EQ(out[1], "12");
    EXPECT_EQ(out[2], "}");
    EXPECT_EQ(out[3], "{\"a\":1}");
}

TEST(JsonStream, OversizedMessageIsReportedOnceAndDiscardedUntilNewline) {
    JsonStreamSplitter s(100);
    std::string big = "{\"a\":\"" + std::string(150, 'x');
    auto out = split(s, big);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0], "<too large>");
    EXPECT_EQ(s.pending(), 0u);
    // Still discarding: more of the same line is dropped without buffering.
    EXPECT_TRUE(split(s, std::string(1000, 'y') + "\"}").empty());
    EXPECT_EQ(s.pending(), 0u);
    out = split(s, "\n{\"ok\":1}");
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0], "{\"ok\":1}");
}

TEST(JsonStream, BrokenValueEndsAtNewline) {
    JsonStreamSplitter s;
    auto out = split(s, "{bad\n{\"a\":1}\n{\"x\": \"unterminated\n{}");
    ASSERT_EQ(out.size(), 4u);
    EXPECT_EQ(out[0], "{bad");
    EXPECT_EQ(out[1], "{\"a\":1}");
    EXPECT_EQ(out[2], "{\"x\": \"unterminated");
    EXPECT_EQ(out[3], "{}");
    // A well-formed value may still span lines.
    out = split(s, "{\"a\":\n [1,\n 2]}");
    ASSERT_EQ(out.size(), 1u);
}

TEST(JsonStream, SingleQuotedStringsHideBracesAndDoubleQuotes) {
    JsonStreamSplitter s;
    auto out = split(s, "{'a': '}\"{'}{\"b\": 'x\\'y'}");
    ASSERT_EQ(out.size(), 2u);
    EXPECT_EQ(out[0], "{'a': '}\"{'}");
    EXPECT_EQ(out[1], "{\"b\": 'x\\'y'}");
}

TEST(JsonStream, QemuJsonToStandard) {
    EXPECT_EQ(qemu_json_to_standard(R"({"a": "b"})"), R"({"a": "b"})");
    EXPECT_EQ(qemu_json_to_standard(R"({'execute': 'quit'})"), R"({"execute": "quit"})");
    EXPECT_EQ(qemu_json_to_standard(R"(['say "hi"', 'it\'s'])"), R"(["say \"hi\"", "it's"])");
    EXPECT_EQ(qemu_json_to_standard(R"(["it\'s", "it's", '\\', '\n'])"),
              R"(["it's", "it's", "\\", "\n"])");
    // Broken texts stay broken (the parser reports them).
    EXPECT_EQ(qemu_json_to_standard("{'a"), "{\"a");
    EXPECT_EQ(qemu_json_to_standard("['\\"), "[\"\\");
}
