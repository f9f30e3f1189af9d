#pragma once
// Byte-order helpers for on-disk and on-wire formats (NBD, qcow2): load and store
// unsigned integers at a byte pointer, most significant byte first (big-endian) or last
// (little-endian), whatever the host order. Shifts rather than memcpy + byteswap so they
// stay constexpr and alignment-free; compilers turn them into a single load and bswap.

#include <concepts>
#include <cstddef>
#include <cstdint>

namespace fleece {

// The byte types the formats are parsed from: std::byte buffers and raw unsigned chars.
template <class B>
concept ByteLike = std::same_as<B, std::byte> || std::same_as<B, unsigned char>;

namespace endian_detail {

template <std::unsigned_integral T, ByteLike B> constexpr T load_be(const B* p) {
    T v = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i)
        v = static_cast<T>((v << 8) | static_cast<T>(static_cast<unsigned char>(p[i])));
    return v;
}
template <std::unsigned_integral T, ByteLike B> constexpr T load_le(const B* p) {
    T v = 0;
    for (std::size_t i = sizeof(T); i-- > 0;)
        v = static_cast<T>((v << 8) | static_cast<T>(static_cast<unsigned char>(p[i])));
    return v;
}
template <std::unsigned_integral T, ByteLike B> constexpr void store_be(B* p, T v) {
    for (std::size_t i = sizeof(T); i-- > 0; v = static_cast<T>(v >> 8))
        p[i] = static_cast<B>(v & 0xff);
}
template <std::unsigned_integral T, ByteLike B> constexpr void store_le(B* p, T v) {
    for (std::size_t i = 0; i < sizeof(T); ++i, v = static_cast<T>(v >> 8))
        p[i] = static_cast<B>(v & 0xff);
}

} // namespace endian_detail

template <ByteLike B> constexpr std::uint16_t load_be16(const B* p) {
    return endian_detail::load_be<std::uint16_t>(p);
}
template <ByteLike B> constexpr std::uint32_t load_be32(const B* p) {
    return endian_detail::load_be<std::uint32_t>(p);
}
template <ByteLike B> constexpr std::uint64_t load_be64(const B* p) {
    return endian_detail::load_be<std::uint64_t>(p);
}
template <ByteLike B> constexpr std::uint64_t load_le64(const B* p) {
    return endian_detail::load_le<std::uint64_t>(p);
}

template <ByteLike B> constexpr void store_be16(B* p, std::uint16_t v) {
    endian_detail::store_be(p, v);
}
template <ByteLike B> constexpr void store_be32(B* p, std::uint32_t v) {
    endian_detail::store_be(p, v);
}
template <ByteLike B> constexpr void store_be64(B* p, std::uint64_t v) {
    endian_detail::store_be(p, v);
}
template <ByteLike B> constexpr void store_le64(B* p, std::uint64_t v) {
    endian_detail::store_le(p, v);
}

} // namespace fleece
