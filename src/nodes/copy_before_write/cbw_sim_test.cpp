// Deterministic simulation: random guest writes, zero-writes and discards race with
// snapshot reads and snapshot discards while both memory nodes reorder completions. The
// invariant: every successful snapshot read returns the point-in-time data.
#include "nodes/copy_before_write/cbw_test_util.hpp"
#include "nodes/testing/sim_seeds.hpp"

#include <random>

namespace fleece::nodes::testing {
namespace {

constexpr std::uint64_t disk = 1024 * 1024;

struct Sim {
    std::vector<std::byte> snapshot; // point-in-time content
    unsigned running = 0;
    io::WaitQueue idle;
    std::vector<std::string> failures;
};

// Ops start at random loop turns, so reads begin in the middle of a guest write's copy.
io::Task<void> start_later(unsigned turns) {
    for (unsigned i = 0; i < turns; ++i)
        co_await io::EventLoop::current().yield();
}

void finished(Sim* s) {
    if (--s->running == 0) s->idle.notify_all();
}

io::Task<void> guest_op(Sim* s, block::Child* c, int kind, std::uint64_t off, std::uint64_t len,
                        int p, unsigned wait) {
    co_await start_later(wait);
    if (kind == 0)
        (void)co_await write_pattern(c, off, len, p);
    else if (kind == 1)
        (void)co_await write_zeroes(c, off, len);
    else
        (void)co_await discard(c, off, len);
    finished(s);
}

io::Task<void> snapshot_read(Sim* s, block::Child* c, std::uint64_t off, std::uint64_t len,
                             unsigned wait) {
    co_await start_later(wait);
    std::vector<std::byte> buf(len);
    std::error_code ec = co_await c->read(off, buf);
    if (!ec && !std::equal(buf.begin(), buf.end(), s->snapshot.begin() + off))
        s->failures.push_back("snapshot read at " + std::to_string(off) + "+" +
                              std::to_string(len) + " returned data that is not point-in-time");
    else if (ec && ec != block::errno_code(EACCES))
        s->failures.push_back("snapshot read failed: " + ec.message());
    finished(s);
}

io::Task<void> snapshot_discard(Sim* s, block::Child* c, std::uint64_t off, std::uint64_t len,
                                unsigned wait) {
    co_await start_later(wait);
    if (auto ec = co_await c->discard(off, len))
        s->failures.push_back("snapshot discard failed: " + ec.message());
    finished(s);
}

io::Task<void> wait_all(Sim* s) {
    while (s->running > 0)
        co_await s->idle.wait();
}

void run_seed(std::uint64_t seed, std::uint64_t copy_window, bool timeout) {
    std::mt19937_64 rng(seed);
    nlohmann::json opts = {{"x-copy-window", copy_window}};
    // A timeout (never reached here) runs every copy detached from the request that waits.
    if (timeout) opts["cbw-timeout"] = 60;
    Fleece f(disk, opts);
    f.src->set_random_delay(seed * 2 + 1, 16);
    f.tgt->set_random_delay(seed * 2 + 2, 6);
    for (std::uint64_t i = 0; i < disk; i += 4096)
        f.fill(i, 4096, static_cast<int>(rng() % 3 == 0 ? 0 : 1 + rng() % 255)); // some zero areas
    Sim s;
    s.snapshot = f.src->data();
    auto rnd_range = [&](std::uint64_t max_len, std::uint64_t* off, std::uint64_t* len) {
        *off = rng() % disk;
        *len = 1 + rng() % std::min(max_len, disk - *off);
    };
    for (int round = 0; round < 8; ++round) {
        const int ops = 4 + static_cast<int>(rng() % 12);
        for (int i = 0; i < ops; ++i) {
            std::uint64_t off, len;
            const unsigned what = static_cast<unsigned>(rng() % 10);
            const unsigned wait = static_cast<unsigned>(rng() % 80);
            ++s.running;
            if (what < 4) {
                rnd_range(200 * 1024, &off, &len);
                f.loop.spawn(guest_op(&s, f.gc.get(), what % 3, off, len,
                                      static_cast<int>(1 + rng() % 255), wait));
            } else if (what < 9) {
                rnd_range(300 * 1024, &off, &len);
                f.loop.spawn(snapshot_read(&s, f.rc.get(), off, len, wait));
            } else {
                rnd_range(150 * 1024, &off, &len);
                f.loop.spawn(snapshot_discard(&s, f.rc.get(), off, len, wait));
            }
        }
        f.loop.run_until_complete(wait_all(&s));
    }
    // Every cluster still readable must read as the snapshot.
    for (std::uint64_t off = 0; off < disk; off += 64 * 1024) {
        ++s.running;
        f.loop.spawn(snapshot_read(&s, f.rc.get(), off, 64 * 1024, 0));
    }
    f.loop.run_until_complete(wait_all(&s));
    for (const auto& msg : s.failures)
        ADD_FAILURE() << "seed " << seed << ", x-copy-window " << copy_window
                      << (timeout ? ", cbw-timeout 60" : "") << ": " << msg;
}

TEST(CopyBeforeWriteSim, PointInTimeUnderRandomConcurrency) {
    // Seeds alternate exact copies, copy-ahead in 256 KiB windows and over the whole disk,
    // each without and with cbw-timeout.
    const std::uint64_t windows[] = {0, 256 * 1024, disk};
    const SeedRange seeds = sim_seeds({1, 300});
    for (std::uint64_t seed = seeds.first; seed < seeds.end(); ++seed) {
        run_seed(seed, windows[seed % 3], (seed / 3) % 2 == 1);
        if (HasFailure()) {
            std::cerr << "cbw sim failed with seed " << seed << "\n";
            break;
        }
    }
}

} // namespace
} // namespace fleece::nodes::testing
