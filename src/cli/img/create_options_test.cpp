#include "cli/img/create_options.hpp"

#include <gtest/gtest.h>

namespace fleece::cli::img {
namespace {

TEST(CreateOptions, SplitsKeyValuePairsWithEscapedCommas) {
    auto r = split_options("a=1,backing_file=x,,y.img,b=2");
    ASSERT_TRUE(r.ok()) << r.error().message;
    ASSERT_EQ(r->size(), 3u);
    EXPECT_EQ((*r)[1].first, "backing_file");
    EXPECT_EQ((*r)[1].second, "x,y.img");
    EXPECT_EQ((*r)[2].second, "2");
    EXPECT_FALSE(split_options("novalue").ok());
    EXPECT_FALSE(split_options("=1").ok());
}

TEST(CreateOptions, Qcow2Settings) {
    CreateSettings s;
    s.format = "qcow2";
    ASSERT_TRUE(apply_create_options(s, {"cluster_size=4k,preallocation=metadata",
                                         "backing_file=b.qcow2,backing_fmt=qcow2", "size=1G"}));
    EXPECT_EQ(s.cluster_size, 4096u);
    EXPECT_EQ(s.preallocation, "metadata");
    EXPECT_EQ(s.backing_file, "b.qcow2");
    EXPECT_EQ(s.backing_format, "qcow2");
    EXPECT_EQ(*s.size, 1u << 30);
    EXPECT_TRUE(apply_create_options(s, {"compat=1.1,refcount_bits=16,lazy_refcounts=off"}));
}

TEST(CreateOptions, RefusesBadValues) {
    CreateSettings q;
    q.format = "qcow2";
    auto bad_cluster = apply_create_options(q, {"cluster_size=3k"});
    ASSERT_FALSE(bad_cluster.ok());
    EXPECT_EQ(bad_cluster.error().message,
              "Cluster size must be a power of two between 512 and 2048k");
    EXPECT_FALSE(apply_create_options(q, {"cluster_size=4M"}).ok());
    EXPECT_FALSE(apply_create_options(q, {"cluster_size=256"}).ok());
    EXPECT_FALSE(apply_create_options(q, {"preallocation=full"}).ok());
    EXPECT_FALSE(apply_create_options(q, {"refcount_bits=8"}).ok());
    auto unknown = apply_create_options(q, {"bogus=1"});
    ASSERT_FALSE(unknown.ok());
    EXPECT_NE(unknown.error().message.find("'bogus'"), std::string::npos);

    CreateSettings r;
    r.format = "raw";
    EXPECT_TRUE(apply_create_options(r, {"preallocation=falloc"}));
    EXPECT_FALSE(apply_create_options(r, {"preallocation=metadata"}).ok());
    EXPECT_FALSE(apply_create_options(r, {"cluster_size=64k"}).ok());
    EXPECT_FALSE(apply_create_options(r, {"backing_file=x"}).ok());
}

TEST(CreateOptions, FormattingLineLikeQemuImg) {
    CreateSettings r;
    r.format = "raw";
    r.size = 10485760;
    EXPECT_EQ(formatting_line("r.raw", r), "Formatting 'r.raw', fmt=raw size=10485760");
    CreateSettings q;
    q.format = "qcow2";
    q.size = 1073741824;
    q.backing_file = "base.qcow2";
    q.backing_format = "qcow2";
    EXPECT_EQ(formatting_line("top.qcow2", q),
              "Formatting 'top.qcow2', fmt=qcow2 cluster_size=65536 extended_l2=off "
              "compression_type=zlib size=1073741824 backing_file=base.qcow2 backing_fmt=qcow2 "
              "lazy_refcounts=off refcount_bits=16");
}

} // namespace
} // namespace fleece::cli::img
