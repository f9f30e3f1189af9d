#include "control/keyval.hpp"

#include <gtest/gtest.h>

using namespace fleece::control;
using nlohmann::json;

TEST(Keyval, DottedKeysBecomeNestedObjectsAndValuesStayStrings) {
    auto r = parse_keyval_or_json("driver=file,node-name=a,filename=x,cache.direct=on,size=4096");
    ASSERT_TRUE(r);
    EXPECT_EQ(r.value(), json({{"driver", "file"},
                               {"node-name", "a"},
                               {"filename", "x"},
                               {"cache", {{"direct", "on"}}},
                               {"size", "4096"}}));
}

TEST(Keyval, EscapedCommaAndEmptyValue) {
    auto r = parse_keyval("filename=a,,b,x=");
    ASSERT_TRUE(r);
    EXPECT_EQ(r.value(), json({{"filename", "a,b"}, {"x", ""}}));
}

TEST(Keyval, NumericKeysBecomeLists) {
    auto r = parse_keyval("server.0.host=a,server.1.host=b");
    ASSERT_TRUE(r);
    EXPECT_EQ(r.value(), json({{"server", json::array({{{"host", "a"}}, {{"host", "b"}}})}}));
}

TEST(Keyval, Errors) {
    EXPECT_FALSE(parse_keyval("driver"));
    EXPECT_EQ(parse_keyval("driver").error().message, "Expected '=' after parameter 'driver'");
    EXPECT_FALSE(parse_keyval("a=1,a.b=2"));
    EXPECT_FALSE(parse_keyval("a.b=1,a=2"));
    EXPECT_FALSE(parse_keyval("a..b=1"));
    EXPECT_FALSE(parse_keyval_or_json("{\"driver\":"));
    EXPECT_FALSE(parse_keyval_or_json("[1]"));
}

TEST(Keyval, ImpliedKeyAndJsonForm) {
    auto r = parse_keyval("socket,id=m,path=/tmp/x", "backend");
    ASSERT_TRUE(r);
    EXPECT_EQ(r.value(), json({{"backend", "socket"}, {"id", "m"}, {"path", "/tmp/x"}}));
    auto j = parse_keyval_or_json(R"( {"driver":"null-co","size":1})");
    ASSERT_TRUE(j);
    EXPECT_EQ(j.value()["size"], 1);
}
