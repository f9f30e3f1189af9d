#include "util/bitmap.hpp"

#include <algorithm>
#include <gtest/gtest.h>
#include <random>
#include <vector>

namespace fleece {
namespace {

TEST(Bitmap, SetResetAndScanAcrossWordBoundaries) {
    Bitmap b(200);
    EXPECT_EQ(b.count(), 0u);
    EXPECT_EQ(b.find_next_set(0), 200u);
    b.set_range(60, 10);
    EXPECT_EQ(b.count(), 10u);
    EXPECT_EQ(b.find_next_set(0), 60u);
    EXPECT_EQ(b.find_next_clear(60), 70u);
    EXPECT_TRUE(b.all_set(60, 10));
    EXPECT_FALSE(b.all_set(59, 10));
    b.reset_range(64, 2);
    EXPECT_EQ(b.count(), 8u);
    EXPECT_EQ(b.find_next_clear(60), 64u);
    EXPECT_EQ(b.find_next_set(64), 66u);
    b.set_all();
    EXPECT_EQ(b.count(), 200u);
    EXPECT_EQ(b.find_next_clear(0), 200u);
}

TEST(Bitmap, TailBitsNeverLeak) {
    Bitmap b(70);
    b.set_all();
    EXPECT_EQ(b.count(), 70u);
    b.resize(65);
    EXPECT_EQ(b.count(), 65u);
    b.resize(70);
    EXPECT_EQ(b.count(), 65u);
    EXPECT_FALSE(b.get(66));
}

// Model-based: random operations against std::vector<bool>.
TEST(Bitmap, MatchesVectorModel) {
    for (unsigned seed = 1; seed <= 20; ++seed) {
        std::mt19937_64 rng(seed);
        const std::uint64_t n = 1 + rng() % 500;
        Bitmap b(n);
        std::vector<bool> model(n);
        for (int op = 0; op < 300; ++op) {
            const std::uint64_t first = rng() % n;
            const std::uint64_t count = rng() % (n - first + 1);
            const bool set = rng() % 2;
            set ? b.set_range(first, count) : b.reset_range(first, count);
            for (std::uint64_t i = first; i < first + count; ++i)
                model[i] = set;
            const std::uint64_t from = rng() % (n + 1);
            std::uint64_t expect_set = n, expect_clear = n, expect_count = 0;
            for (std::uint64_t i = 0; i < n; ++i)
                expect_count += model[i];
            for (std::uint64_t i = from; i < n; ++i)
                if (model[i]) {
                    expect_set = i;
                    break;
                }
            for (std::uint64_t i = from; i < n; ++i)
                if (!model[i]) {
                    expect_clear = i;
                    break;
                }
            ASSERT_EQ(b.count(), expect_count) << "seed " << seed;
            ASSERT_EQ(b.find_next_set(from), expect_set) << "seed " << seed;
            ASSERT_EQ(b.find_next_clear(from), expect_clear) << "seed " << seed;
            // Bounded scans answer the limit when the first hit lies at or past it.
            const std::uint64_t limit = from + rng() % (n - from + 1);
            ASSERT_EQ(b.find_next_set(from, limit), std::min(expect_set, limit)) << "seed " << seed;
            ASSERT_EQ(b.find_next_clear(from, limit), std::min(expect_clear, limit))
                << "seed " << seed;
            ASSERT_EQ(b.none_set(from, limit - from), expect_set >= limit) << "seed " << seed;
            ASSERT_EQ(b.all_set(from, limit - from), expect_clear >= limit) << "seed " << seed;
        }
    }
}

} // namespace
} // namespace fleece
