#pragma once
// A flat bitset with range operations and fast scans. The building block of dirty bitmaps,
// copy bitmaps and allocation maps; the caller maps bytes to bits (granularity).

#include <cstdint>
#include <vector>

namespace fleece {

class Bitmap {
  public:
    Bitmap() = default;
    explicit Bitmap(std::uint64_t bit_count);

    std::uint64_t size() const { return bit_count_; }
    std::uint64_t count() const { return set_count_; } // number of set bits
    bool get(std::uint64_t bit) const;

    void set_range(std::uint64_t first, std::uint64_t count);
    void reset_range(std::uint64_t first, std::uint64_t count);
    void set(std::uint64_t bit) { set_range(bit, 1); }
    void reset(std::uint64_t bit) { reset_range(bit, 1); }
    void set_all() { set_range(0, bit_count_); }
    void reset_all() { reset_range(0, bit_count_); }

    // First set (clear) bit in [from, limit); `limit` when there is none. The scan stops at
    // `limit`, so a bounded question costs the range, not the rest of the bitmap.
    std::uint64_t find_next_set(std::uint64_t from, std::uint64_t limit) const;
    std::uint64_t find_next_clear(std::uint64_t from, std::uint64_t limit) const;
    // First set (clear) bit at or after `from`; size() when there is none.
    std::uint64_t find_next_set(std::uint64_t from) const {
        return find_next_set(from, bit_count_);
    }
    std::uint64_t find_next_clear(std::uint64_t from) const {
        return find_next_clear(from, bit_count_);
    }
    // True when every bit in [first, first+count) is set (clear).
    bool all_set(std::uint64_t first, std::uint64_t count) const;
    bool none_set(std::uint64_t first, std::uint64_t count) const;

    void merge(const Bitmap& other);      // this |= other; sizes must match
    void resize(std::uint64_t bit_count); // new bits are clear

    const std::vector<std::uint64_t>& words() const { return words_; }
    // Replace the content from raw little-endian words (persistence); extra bits are cleared.
    void load_words(const std::vector<std::uint64_t>& words);

  private:
    template <bool Set> void apply_range(std::uint64_t first, std::uint64_t count);
    template <bool Set> std::uint64_t find_next(std::uint64_t from, std::uint64_t limit) const;
    void clear_tail();
    void recount();

    std::vector<std::uint64_t> words_;
    std::uint64_t bit_count_ = 0;
    std::uint64_t set_count_ = 0;
};

} // namespace fleece
