// The pure format code: entries, refcount widths, header validation and round trips.
#include "nodes/qcow2/qcow2_compress.hpp"
#include "nodes/qcow2/qcow2_format.hpp"

#include <gtest/gtest.h>

namespace fleece::nodes::qcow2 {
namespace {

Header sample() {
    Header h;
    h.cluster_bits = 16;
    h.size = 1ull << 30;
    h.l1_size = 2;
    h.l1_table_offset = 3 << 16;
    h.refcount_table_offset = 1 << 16;
    h.refcount_table_clusters = 1;
    return h;
}

TEST(Qcow2Format, HeaderRoundTripWithExtensions) {
    Header h = sample();
    h.backing_file = "base.qcow2";
    h.backing_format = "qcow2";
    h.extensions.push_back(default_feature_table());
    h.extensions.push_back(HeaderExtension{0x12345678, {std::byte{1}, std::byte{2}, std::byte{3}}});
    auto bytes = serialize_header(h);
    ASSERT_TRUE(bytes.ok());
    auto back = parse_header(*bytes, 1 << 20);
    ASSERT_TRUE(back.ok()) << back.error().message;
    EXPECT_EQ(back->backing_file, "base.qcow2");
    EXPECT_EQ(back->backing_format, "qcow2");
    ASSERT_EQ(back->extensions.size(), 2u);
    EXPECT_EQ(back->extensions[1].type, 0x12345678u);
    EXPECT_EQ(back->extensions[1].data.size(), 3u);
    EXPECT_EQ(back->l1_size, 2u);
    EXPECT_EQ(back->refcount_bits(), 16u);
}

TEST(Qcow2Format, ValidationNamesTheProblem) {
    Header h = sample();
    auto bytes = *serialize_header(h);
    auto expect_error = [&](std::vector<std::byte> b, std::uint64_t file_size, const char* what) {
        auto r = parse_header(b, file_size);
        ASSERT_FALSE(r.ok()) << what;
        EXPECT_NE(r.error().message.find(what), std::string::npos) << r.error().message;
    };
    expect_error(bytes, 1 << 17, "L1 table"); // L1 at 192 KiB, file 128 KiB
    auto b = bytes;
    store_be32(b.data() + 20, 22);
    expect_error(b, 1 << 20, "cluster_bits 22");
    b = bytes;
    store_be32(b.data() + 96, 7);
    expect_error(b, 1 << 20, "refcount_order 7");
    b = bytes;
    store_be64(b.data() + 72, 1ull << 10);
    expect_error(b, 1 << 20, "unsupported incompatible features");
    b = bytes;
    store_be32(b.data() + 36, 1); // one L1 entry cannot map 1 GiB with 64 KiB clusters
    expect_error(b, 1 << 20, "L1 table too small");
    b = bytes;
    store_be32(b.data() + 56, 0);
    expect_error(b, 1 << 20, "no refcount table");
    b = bytes;
    b[0] = std::byte{0};
    expect_error(b, 1 << 20, "bad magic");
    b.assign(bytes.begin(), bytes.begin() + 50);
    expect_error(b, 1 << 20, "too short");
}

TEST(Qcow2Format, L2EntryKinds) {
    EXPECT_EQ(decode_l2(0, 16, 3).kind, ClusterKind::unallocated);
    EXPECT_EQ(decode_l2(entry_zero, 16, 3).kind, ClusterKind::zero_plain);
    auto e = decode_l2(0x50000 | entry_zero | entry_copied, 16, 3);
    EXPECT_EQ(e.kind, ClusterKind::zero_allocated);
    EXPECT_EQ(e.host_offset, 0x50000u);
    e = decode_l2(0x50000 | entry_copied, 16, 3);
    EXPECT_EQ(e.kind, ClusterKind::normal);
    EXPECT_TRUE(e.copied);
    EXPECT_TRUE(decode_l2(0x50200, 16, 3).misaligned);
    EXPECT_TRUE(decode_l2(0x50000 | 2, 16, 3).reserved_bits);
    EXPECT_TRUE(decode_l2(0x50000 | entry_zero, 16, 2).reserved_bits); // no zero flag in v2
    for (std::uint32_t cb : {9u, 12u, 16u, 21u}) {
        const std::uint64_t bytes = (1u << cb) - 100; // compressed data is under a cluster
        const std::uint64_t raw = encode_compressed_l2(0x123456, bytes, cb);
        e = decode_l2(raw, cb, 3);
        EXPECT_EQ(e.kind, ClusterKind::compressed);
        EXPECT_EQ(e.host_offset, 0x123456u);
        EXPECT_GE(e.compressed_size, bytes); // rounded up to whole sectors
        EXPECT_LT(e.compressed_size, bytes + 512);
    }
}

TEST(Qcow2Format, RefcountWidths) {
    std::vector<std::byte> block(512);
    for (std::uint32_t order = 0; order <= 6; ++order) {
        std::fill(block.begin(), block.end(), std::byte{0});
        const std::uint64_t n = 512 * 8 >> order;
        for (std::uint64_t i = 0; i < n; ++i)
            set_refcount(block, i, order, i & max_refcount(order));
        for (std::uint64_t i = 0; i < n; ++i)
            ASSERT_EQ(get_refcount(block, i, order), i & max_refcount(order)) << order << " " << i;
    }
    // 16-bit refcounts are big endian.
    std::fill(block.begin(), block.end(), std::byte{0});
    set_refcount(block, 1, 4, 0x0102);
    EXPECT_EQ(block[2], std::byte{1});
    EXPECT_EQ(block[3], std::byte{2});
}

TEST(Qcow2Format, CompressionRoundTrip) {
    std::vector<std::byte> in(65536);
    for (std::size_t i = 0; i < in.size(); ++i)
        in[i] = static_cast<std::byte>((i / 100) & 0xff);
    for (std::uint8_t type : {compression_zlib, compression_zstd}) {
        std::vector<std::byte> packed(65536);
        const std::size_t n = compress_cluster(type, in, packed);
        ASSERT_GT(n, 0u);
        packed.resize(n + 300); // sector padding after the stream is ignored
        std::vector<std::byte> out(65536);
        ASSERT_TRUE(decompress_cluster(type, packed, out));
        EXPECT_EQ(out, in);
        packed.resize(n / 2); // truncated
        EXPECT_FALSE(decompress_cluster(type, packed, out));
    }
}

} // namespace
} // namespace fleece::nodes::qcow2
