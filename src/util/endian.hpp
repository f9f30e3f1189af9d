#pragma once
// Byte-order helpers for on-disk and on-wire formats (NBD, qcow2): load and store
// unsigned integers at a byte pointer, most significant byte first (big-endian) or last
// (little-endian), whatever the host order, at any alignment. constexpr (std::byteswap
// is C++23: the GCC/clang builtins stand in for it).

#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace fleece {

// The byte types the formats are parsed from: std::byte buffers and raw unsigned chars.
template <class B>
concept ByteLike = std::same_as<B, std::byte> || std::same_as<B, unsigned char>;

namespace endian_detail {

template <std::unsigned_integral T> constexpr T byteswap(T v) {
    if constexpr (sizeof(T) == 2)
        return __builtin_bswap16(v);
    else if constexpr (sizeof(T) == 4)
        return __builtin_bswap32(v);
    else
        return __builtin_bswap64(v);
}
// Host order <-> the wanted order.
template <std::unsigned_integral T> constexpr T to_order(T v, std::endian order) {
    return order == std::endian::native ? v : byteswap(v);
}

// At run time one unaligned load or store plus a bswap; in constant expressions (where
// memcpy is not allowed) byte by byte.
template <std::unsigned_integral T, ByteLike B> constexpr T load(const B* p, std::endian order) {
    if (std::is_constant_evaluated()) {
        T v = 0;
        for (std::size_t i = 0; i < sizeof(T); ++i) {
            const std::size_t at = order == std::endian::big ? i : sizeof(T) - 1 - i;
            v = static_cast<T>((v << 8) | static_cast<unsigned char>(p[at]));
        }
        return v;
    }
    T v;
    std::memcpy(&v, p, sizeof v);
    return to_order(v, order);
}
template <std::unsigned_integral T, ByteLike B> constexpr void store(B* p, T v, std::endian order) {
    if (std::is_constant_evaluated()) {
        for (std::size_t i = 0; i < sizeof(T); ++i) {
            const std::size_t at = order == std::endian::big ? sizeof(T) - 1 - i : i;
            p[at] = static_cast<B>((v >> (8 * i)) & 0xff);
        }
        return;
    }
    v = to_order(v, order);
    std::memcpy(p, &v, sizeof v);
}

} // namespace endian_detail

template <ByteLike B> constexpr std::uint16_t load_be16(const B* p) {
    return endian_detail::load<std::uint16_t>(p, std::endian::big);
}
template <ByteLike B> constexpr std::uint32_t load_be32(const B* p) {
    return endian_detail::load<std::uint32_t>(p, std::endian::big);
}
template <ByteLike B> constexpr std::uint64_t load_be64(const B* p) {
    return endian_detail::load<std::uint64_t>(p, std::endian::big);
}
template <ByteLike B> constexpr std::uint32_t load_le32(const B* p) {
    return endian_detail::load<std::uint32_t>(p, std::endian::little);
}
template <ByteLike B> constexpr std::uint64_t load_le64(const B* p) {
    return endian_detail::load<std::uint64_t>(p, std::endian::little);
}

template <ByteLike B> constexpr void store_be16(B* p, std::uint16_t v) {
    endian_detail::store(p, v, std::endian::big);
}
template <ByteLike B> constexpr void store_be32(B* p, std::uint32_t v) {
    endian_detail::store(p, v, std::endian::big);
}
template <ByteLike B> constexpr void store_be64(B* p, std::uint64_t v) {
    endian_detail::store(p, v, std::endian::big);
}
template <ByteLike B> constexpr void store_le32(B* p, std::uint32_t v) {
    endian_detail::store(p, v, std::endian::little);
}
template <ByteLike B> constexpr void store_le64(B* p, std::uint64_t v) {
    endian_detail::store(p, v, std::endian::little);
}

} // namespace fleece
