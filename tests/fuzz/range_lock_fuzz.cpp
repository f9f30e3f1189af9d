// libFuzzer target for block::RangeLockTable. The input is a stream of choices for the
// same randomized scenario the unit test runs (block/range_lock_model.hpp): the first two
// bytes pick the number of coroutines and operations each, every later byte one decision
// (which operation, mode, range, hold time in loop turns, shrink, release style). Once the
// input is exhausted every choice is 0, so every run terminates. Invariants checked: no two
// conflicting holders at once, every request granted (no deadlock), FIFO among conflicting
// requests, and exact agreement with the reference model; violations abort.
//
// Link against fleece_block (and libFuzzer: -fsanitize=fuzzer).

#include "block/range_lock_model.hpp"
#include "io/event_loop.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

struct ByteSource {
    const std::uint8_t* data;
    std::size_t size;
    std::size_t pos = 0;
    std::uint64_t next(std::uint64_t bound) {
        if (bound <= 1) return 0;
        std::uint64_t v = 0;
        // One byte for small bounds, two for larger ones (offsets).
        const int bytes = bound <= 256 ? 1 : 2;
        for (int i = 0; i < bytes; ++i)
            v = (v << 8) | (pos < size ? data[pos++] : 0u);
        return v % bound;
    }
};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    // One loop per process (EventLoop is one per thread); reused between inputs.
    static fleece::io::EventLoop loop;
    ByteSource src{data, size};
    const int workers = 1 + static_cast<int>(src.next(16));
    const int ops = 1 + static_cast<int>(src.next(32));
    const std::string error = loop.run_until_complete(
        fleece::block::testing::run_range_lock_scenario(&src, workers, ops));
    if (!error.empty()) {
        std::fprintf(stderr, "range_lock_fuzz: %s\n", error.c_str());
        std::abort();
    }
    return 0;
}
