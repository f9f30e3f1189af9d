#pragma once
// Integer alignment helpers. Alignments are powers of two unless stated otherwise.

#include <bit>
#include <cstdint>

namespace fleece {

constexpr bool is_power_of_two(std::uint64_t v) {
    return v != 0 && std::has_single_bit(v);
}
constexpr std::uint64_t align_down(std::uint64_t v, std::uint64_t a) {
    return v - v % a;
}
constexpr std::uint64_t align_up(std::uint64_t v, std::uint64_t a) {
    return v % a == 0 ? v : v + (a - v % a);
}
constexpr bool is_aligned(std::uint64_t v, std::uint64_t a) {
    return v % a == 0;
}
constexpr std::uint64_t div_round_up(std::uint64_t v, std::uint64_t d) {
    return (v + d - 1) / d;
}

// True when [offset, offset+length) lies within [0, size) without overflow.
constexpr bool range_within(std::uint64_t offset, std::uint64_t length, std::uint64_t size) {
    return offset <= size && length <= size - offset;
}

// True when the two half-open ranges intersect. Empty ranges intersect nothing.
constexpr bool ranges_overlap(std::uint64_t a_off, std::uint64_t a_len, std::uint64_t b_off,
                              std::uint64_t b_len) {
    return a_len != 0 && b_len != 0 && a_off < b_off + b_len && b_off < a_off + a_len;
}

} // namespace fleece
