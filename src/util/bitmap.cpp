#include "util/bitmap.hpp"

#include "util/assert.hpp"

#include <algorithm>
#include <bit>

namespace fleece {
namespace {
constexpr std::uint64_t word_bits = 64;
// Mask of bits [lo, hi) within one word, 0 <= lo < hi <= 64.
std::uint64_t word_mask(unsigned lo, unsigned hi) {
    const std::uint64_t upper = hi == 64 ? ~0ULL : ((1ULL << hi) - 1);
    return upper & ~((1ULL << lo) - 1);
}
} // namespace

Bitmap::Bitmap(std::uint64_t bit_count)
    : words_((bit_count + word_bits - 1) / word_bits, 0), bit_count_(bit_count) {}

bool Bitmap::get(std::uint64_t bit) const {
    FLEECE_ASSERT(bit < bit_count_);
    return (words_[bit / word_bits] >> (bit % word_bits)) & 1;
}

template <bool Set> void Bitmap::apply_range(std::uint64_t first, std::uint64_t count) {
    FLEECE_ASSERT(first <= bit_count_ && count <= bit_count_ - first);
    std::uint64_t bit = first;
    const std::uint64_t end = first + count;
    while (bit < end) {
        const std::uint64_t w = bit / word_bits;
        const unsigned lo = static_cast<unsigned>(bit % word_bits);
        const unsigned hi =
            static_cast<unsigned>(std::min<std::uint64_t>(word_bits, lo + (end - bit)));
        const std::uint64_t mask = word_mask(lo, hi);
        const std::uint64_t before = words_[w];
        words_[w] = Set ? (before | mask) : (before & ~mask);
        set_count_ += static_cast<std::uint64_t>(std::popcount(words_[w]));
        set_count_ -= static_cast<std::uint64_t>(std::popcount(before));
        bit += hi - lo;
    }
}

void Bitmap::set_range(std::uint64_t first, std::uint64_t count) {
    apply_range<true>(first, count);
}
void Bitmap::reset_range(std::uint64_t first, std::uint64_t count) {
    apply_range<false>(first, count);
}

template <bool Set> std::uint64_t Bitmap::find_next(std::uint64_t from, std::uint64_t limit) const {
    limit = std::min(limit, bit_count_);
    if (from >= limit) return limit;
    const std::uint64_t last_word = (limit - 1) / word_bits;
    std::uint64_t w = from / word_bits;
    std::uint64_t word = Set ? words_[w] : ~words_[w];
    word &= ~0ULL << (from % word_bits);
    while (true) {
        if (word != 0) {
            const std::uint64_t bit =
                w * word_bits + static_cast<std::uint64_t>(std::countr_zero(word));
            return std::min(bit, limit);
        }
        if (++w > last_word) return limit;
        word = Set ? words_[w] : ~words_[w];
    }
}

std::uint64_t Bitmap::find_next_set(std::uint64_t from, std::uint64_t limit) const {
    return find_next<true>(from, limit);
}
std::uint64_t Bitmap::find_next_clear(std::uint64_t from, std::uint64_t limit) const {
    return find_next<false>(from, limit);
}

bool Bitmap::all_set(std::uint64_t first, std::uint64_t count) const {
    FLEECE_ASSERT(first <= bit_count_ && count <= bit_count_ - first);
    return count == 0 || find_next_clear(first, first + count) >= first + count;
}

bool Bitmap::none_set(std::uint64_t first, std::uint64_t count) const {
    FLEECE_ASSERT(first <= bit_count_ && count <= bit_count_ - first);
    return count == 0 || find_next_set(first, first + count) >= first + count;
}

void Bitmap::merge(const Bitmap& other) {
    FLEECE_ASSERT(other.bit_count_ == bit_count_);
    for (std::size_t i = 0; i < words_.size(); ++i)
        words_[i] |= other.words_[i];
    recount();
}

void Bitmap::resize(std::uint64_t bit_count) {
    bit_count_ = bit_count;
    words_.resize((bit_count + word_bits - 1) / word_bits, 0);
    clear_tail();
    recount();
}

void Bitmap::load_words(const std::vector<std::uint64_t>& words) {
    for (std::size_t i = 0; i < words_.size(); ++i)
        words_[i] = i < words.size() ? words[i] : 0;
    clear_tail();
    recount();
}

void Bitmap::clear_tail() {
    if (bit_count_ % word_bits != 0 && !words_.empty())
        words_.back() &= (1ULL << (bit_count_ % word_bits)) - 1;
}

void Bitmap::recount() {
    set_count_ = 0;
    for (std::uint64_t w : words_)
        set_count_ += static_cast<std::uint64_t>(std::popcount(w));
}

} // namespace fleece
