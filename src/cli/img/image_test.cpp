#include "cli/img/create_image.hpp"
#include "cli/img/image.hpp"

#include <gtest/gtest.h>

namespace fleece::cli::img {
namespace {

TEST(Location, PathsUseTheFileDriver) {
    auto r = parse_location("/tmp/a.img");
    ASSERT_TRUE(r.ok());
    EXPECT_FALSE(r->nbd);
    EXPECT_EQ(r->protocol["driver"], "file");
    EXPECT_EQ(r->protocol["filename"], "/tmp/a.img");
}

TEST(Location, NbdUnixUri) {
    auto r = parse_location("nbd+unix:///disk0?socket=/run/x.sock");
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_TRUE(r->nbd);
    EXPECT_EQ(r->protocol["driver"], "nbd");
    EXPECT_EQ(r->protocol["export"], "disk0");
    EXPECT_EQ(r->protocol["server"]["type"], "unix");
    EXPECT_EQ(r->protocol["server"]["path"], "/run/x.sock");
    auto empty_export = parse_location("nbd+unix://?socket=/s");
    ASSERT_TRUE(empty_export.ok());
    EXPECT_EQ(empty_export->protocol["export"], "");
    EXPECT_FALSE(parse_location("nbd+unix:///disk0").ok());
    EXPECT_FALSE(parse_location("nbd+unix://host/disk0?socket=/s").ok());
}

TEST(Location, NbdTcpUri) {
    auto r = parse_location("nbd://127.0.0.1:10810/exp");
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->protocol["server"]["type"], "inet");
    EXPECT_EQ(r->protocol["server"]["host"], "127.0.0.1");
    EXPECT_EQ(r->protocol["server"]["port"], "10810");
    EXPECT_EQ(r->protocol["export"], "exp");
    auto default_port = parse_location("nbd://localhost");
    ASSERT_TRUE(default_port.ok());
    EXPECT_EQ(default_port->protocol["server"]["port"], "10809");
    EXPECT_FALSE(parse_location("nbd://:10809/x").ok());
    EXPECT_FALSE(parse_location("nbd://h:port/x").ok());
    EXPECT_FALSE(parse_location("http://example/x").ok());
}

TEST(BackingPath, RelativeToTheImage) {
    EXPECT_EQ(backing_path("top.qcow2", "base.qcow2"), "base.qcow2");
    EXPECT_EQ(backing_path("/d/top.qcow2", "base.qcow2"), "/d/base.qcow2");
    EXPECT_EQ(backing_path("/d/top.qcow2", "/e/base.qcow2"), "/e/base.qcow2");
    EXPECT_EQ(backing_path("d/top.qcow2", "../b.qcow2"), "d/../b.qcow2");
}

} // namespace
} // namespace fleece::cli::img
