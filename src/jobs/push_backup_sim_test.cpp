// Deterministic simulation of push backup with fleecing (the benchmark's S2 graph): a
// backup job reads the point-in-time view through snapshot-access while random guest
// writes, write-zeroes and discards go through the copy-before-write filter, and every node
// (disk, fleecing image, backup target) completes its requests in a random order. The
// invariant: when the job completes, the target holds exactly the disk at the snapshot
// point, whatever the job's chunk size, worker count and discard-source and the filter's
// copy window. QEMU 7.2 breaks it with multi-cluster chunks (research: ANCHOR.md).
#include "jobs/backup_job.hpp"
#include "jobs/job_manager.hpp"
#include "nodes/copy_before_write/cbw_test_util.hpp"
#include "nodes/testing/sim_seeds.hpp"

#include <gtest/gtest.h>
#include <random>

namespace fleece::jobs {
namespace {

using nodes::MemoryNode;
using nodes::testing::Fleece;

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t disk_size = 2048 * KiB;

struct Guest {
    std::mt19937_64 rng;
    JobManager* jobs;
    block::Child* edge;
    int writes = 0;
    unsigned running = 0; // slots not yet returned

    // One guest "queue slot": random requests, one at a time, until the job is gone.
    io::Task<void> slot() {
        ++running;
        while (jobs->find("bk")) {
            const unsigned pause = static_cast<unsigned>(rng() % 40);
            for (unsigned i = 0; i < pause; ++i)
                co_await io::EventLoop::current().yield();
            const std::uint64_t off = (rng() % (disk_size / 512)) * 512;
            const std::uint64_t len = std::min<std::uint64_t>(
                disk_size - off, 512 * (1 + rng() % (rng() % 4 == 0 ? 512 : 16)));
            const unsigned kind = static_cast<unsigned>(rng() % 8);
            std::error_code ec;
            if (kind < 6)
                ec = co_await nodes::testing::write_pattern(edge, off, len,
                                                            static_cast<int>(1 + rng() % 255));
            else if (kind == 6)
                ec = co_await nodes::testing::write_zeroes(edge, off, len);
            else
                ec = co_await nodes::testing::discard(edge, off, len);
            EXPECT_FALSE(ec) << "guest request kind " << kind << " at " << off << "+" << len << ": "
                             << ec.message();
            ++writes;
        }
        --running;
    }
};

io::Task<void> wait_gone(JobManager* jobs) {
    while (jobs->find("bk"))
        co_await io::sleep_for(std::chrono::milliseconds(1));
}

struct Setting {
    std::uint64_t max_chunk;
    unsigned max_workers;
    bool discard_source;
    std::uint64_t copy_window;
};

void run_seed(std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    const std::uint64_t chunks[] = {64 * KiB, 0 /* the default, 1 MiB */, 256 * KiB};
    const unsigned workers[] = {1, 4, 64};
    const std::uint64_t windows[] = {0, 256 * KiB, disk_size};
    const Setting s{chunks[seed % 3], workers[(seed / 3) % 3], (seed / 9) % 2 == 1,
                    windows[(seed / 18) % 3]};
    Fleece f(disk_size, {{"x-copy-window", s.copy_window}});
    // Random content with zero stretches (the job writes those as write-zeroes).
    for (std::uint64_t off = 0; off < disk_size; off += 4 * KiB)
        f.fill(off, 4 * KiB, rng() % 4 == 0 ? 0 : static_cast<int>(1 + rng() % 255));
    const std::vector<std::byte> snapshot = f.src->data();
    f.src->set_random_delay(seed * 3 + 1, 12);
    f.tgt->set_random_delay(seed * 3 + 2, 6);
    auto* target = static_cast<MemoryNode*>(
        *f.g.add(std::make_unique<MemoryNode>("backup-target", disk_size)));
    target->set_random_delay(seed * 3 + 3, 10);
    // The fixture's reader edge shares nothing the job needs; the job is the reader here.
    f.g.detach(std::move(f.rc));

    JobManager jobs;
    std::vector<std::string> events;
    BackupOptions o;
    o.job.id = "bk";
    o.device = "fl-access";
    o.target = "backup-target";
    o.max_chunk = s.max_chunk;
    o.max_workers = s.max_workers;
    o.discard_source = s.discard_source;
    auto job = BackupJob::create(f.g, o, [&](const std::string& name, const nlohmann::json& d) {
        events.push_back(name == "JOB_STATUS_CHANGE" ? d["status"].get<std::string>() : name);
    });
    ASSERT_TRUE(job.ok()) << job.error().message;
    ASSERT_TRUE(jobs.start(std::move(*job)).ok());
    Guest guest{std::mt19937_64(seed ^ 0x5eed), &jobs, f.gc.get()};
    const unsigned slots = 1 + static_cast<unsigned>(rng() % 6);
    for (unsigned i = 0; i < slots; ++i)
        f.loop.spawn(guest.slot());
    f.loop.run_until_complete(wait_gone(&jobs));
    // The guest's last requests finish before the fixture closes the graph.
    f.loop.run_until_complete([](Guest* g) -> io::Task<void> {
        while (g->running > 0)
            co_await io::EventLoop::current().yield();
    }(&guest));

    const auto where = [&] {
        return "seed " + std::to_string(seed) + " (max-chunk " + std::to_string(s.max_chunk) +
               ", max-workers " + std::to_string(s.max_workers) + ", discard-source " +
               (s.discard_source ? "on" : "off") + ", x-copy-window " +
               std::to_string(s.copy_window) + ", " + std::to_string(slots) + " guest slots)";
    };
    EXPECT_NE(std::find(events.begin(), events.end(), "BLOCK_JOB_COMPLETED"), events.end())
        << where();
    EXPECT_GT(guest.writes, 0) << where();
    EXPECT_NE(f.src->data(), snapshot) << where() << ": the guest changed nothing";
    const std::vector<std::byte>& got = target->data();
    for (std::uint64_t off = 0; off < disk_size; off += 512) {
        if (!std::equal(got.begin() + off, got.begin() + off + 512, snapshot.begin() + off)) {
            ADD_FAILURE() << where() << ": the target differs from the snapshot at " << off
                          << " (target byte " << int(got[off]) << ", snapshot "
                          << int(snapshot[off]) << ", disk now " << int(f.src->data()[off])
                          << ", fleece " << int(f.tgt->data()[off]) << ")";
            break;
        }
    }
}

TEST(PushBackupSim, TargetIsThePointInTimeUnderRandomConcurrency) {
    const nodes::testing::SeedRange seeds = nodes::testing::sim_seeds({1, 108});
    for (std::uint64_t seed = seeds.first; seed < seeds.end() && !HasFailure(); ++seed)
        run_seed(seed);
}

} // namespace
} // namespace fleece::jobs
