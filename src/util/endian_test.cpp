#include "util/endian.hpp"

#include <array>
#include <gtest/gtest.h>

namespace fleece {
namespace {

constexpr std::array<unsigned char, 8> wire{0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef};

// constexpr: usable in constant expressions.
static_assert(load_be16(wire.data()) == 0x0123);
static_assert(load_be32(wire.data()) == 0x01234567u);
static_assert(load_be64(wire.data()) == 0x0123456789abcdefull);
static_assert(load_le64(wire.data()) == 0xefcdab8967452301ull);
static_assert([] {
    std::array<std::byte, 8> b{};
    store_be64(b.data(), 0x0123456789abcdefull);
    return load_be64(b.data()) == 0x0123456789abcdefull && b[0] == std::byte{0x01};
}());

TEST(Endian, BigEndianStoresMostSignificantByteFirst) {
    std::array<std::byte, 14> b{};
    store_be16(b.data(), 0xa1b2);
    store_be32(b.data() + 2, 0xc3d4e5f6u);
    store_be64(b.data() + 6, 0x0102030405060708ull);
    const std::array<unsigned char, 14> want{0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x01,
                                             0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08};
    for (std::size_t i = 0; i < b.size(); ++i)
        EXPECT_EQ(std::to_integer<unsigned>(b[i]), want[i]) << "byte " << i;
    EXPECT_EQ(load_be16(b.data()), 0xa1b2);
    EXPECT_EQ(load_be32(b.data() + 2), 0xc3d4e5f6u);
    EXPECT_EQ(load_be64(b.data() + 6), 0x0102030405060708ull);
}

TEST(Endian, LittleEndianStoresLeastSignificantByteFirst) {
    std::array<unsigned char, 8> b{};
    store_le64(b.data(), 0x0102030405060708ull);
    for (std::size_t i = 0; i < b.size(); ++i)
        EXPECT_EQ(b[i], 8 - i) << "byte " << i;
    EXPECT_EQ(load_le64(b.data()), 0x0102030405060708ull);
}

TEST(Endian, UnalignedAndExtremeValuesRoundTrip) {
    std::array<std::byte, 9> b{};
    for (std::uint64_t v : {0ull, 1ull, 0x80ull, ~0ull, 1ull << 63, 0x00ff00ff00ff00ffull}) {
        store_be64(b.data() + 1, v); // odd address: no alignment assumption
        EXPECT_EQ(load_be64(b.data() + 1), v);
        store_le64(b.data() + 1, v);
        EXPECT_EQ(load_le64(b.data() + 1), v);
        store_be32(b.data() + 1, static_cast<std::uint32_t>(v));
        EXPECT_EQ(load_be32(b.data() + 1), static_cast<std::uint32_t>(v));
        store_be16(b.data() + 1, static_cast<std::uint16_t>(v));
        EXPECT_EQ(load_be16(b.data() + 1), static_cast<std::uint16_t>(v));
    }
}

} // namespace
} // namespace fleece
