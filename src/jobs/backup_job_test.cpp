#include "jobs/backup_job.hpp"
#include "jobs/job_manager.hpp"
#include "nodes/copy_before_write/cbw_node.hpp"
#include "nodes/testing/memory_node.hpp"

#include <gtest/gtest.h>
#include <random>

namespace fleece::jobs {
namespace {

using nlohmann::json;

struct Fixture {
    io::EventLoop loop;
    block::Graph graph;
    nodes::MemoryNode* source;
    nodes::MemoryNode* target;
    std::vector<std::string> events;
    Fixture(std::uint64_t size = 4 << 20) {
        auto s = std::make_unique<nodes::MemoryNode>("src", size);
        for (std::size_t i = 0; i < s->data().size(); ++i)
            s->data()[i] = static_cast<std::byte>((i * 31) >> 9);
        s->set_random_delay(7, 3);
        source = static_cast<nodes::MemoryNode*>(*graph.add(std::move(s)));
        target = static_cast<nodes::MemoryNode*>(
            *graph.add(std::make_unique<nodes::MemoryNode>("tgt", size)));
    }
    EventSink sink() {
        return [this](const std::string& name, const json& data) {
            events.push_back(name == "JOB_STATUS_CHANGE" ? data["status"].get<std::string>()
                                                         : name);
        };
    }
};

// The job every test runs: "bk", from the fixture's source to `target`.
BackupOptions bk_options(std::string target = "tgt") {
    BackupOptions o;
    o.job.id = "bk";
    o.device = "src";
    o.target = std::move(target);
    return o;
}

// A guest's export, as a parent of the source.
struct Guest final : block::ChildParent {
    std::string parent_description() const override { return "export 'guest'"; }
    std::string parent_name() const override { return "guest"; }
    const char* parent_type() const override { return "block-backend"; }
};

io::Task<void> wait_gone(JobManager* m, std::string id) {
    while (m->find(id))
        co_await io::sleep_for(std::chrono::milliseconds(1));
}

TEST(BackupJob, FullBackupCopiesTheSourceExactly) {
    Fixture f;
    JobManager jobs;
    BackupOptions o = bk_options();
    o.max_workers = 8;
    auto job = BackupJob::create(f.graph, o, f.sink());
    ASSERT_TRUE(job.ok()) << job.error().message;
    ASSERT_TRUE(jobs.start(std::move(*job)).ok());
    f.loop.run_until_complete(wait_gone(&jobs, "bk"));
    EXPECT_EQ(f.target->data(), f.source->data());
    EXPECT_EQ(f.events.back(), "null");
    EXPECT_NE(std::find(f.events.begin(), f.events.end(), "BLOCK_JOB_COMPLETED"), f.events.end());
    EXPECT_TRUE(f.source->parents().empty()); // the job let go of its nodes
}

TEST(BackupJob, SourceWithWritersIsRefusedAndNothingStaysAttached) {
    Fixture f;
    Guest writer;
    auto edge = f.graph.attach(writer, *f.source, block::perm_write | block::perm_consistent_read,
                               block::perm_all);
    ASSERT_TRUE(edge.ok());
    BackupOptions o = bk_options();
    auto job = BackupJob::create(f.graph, o, f.sink());
    ASSERT_FALSE(job.ok());
    EXPECT_NE(job.error().message.find("writers"), std::string::npos) << job.error().message;
    EXPECT_EQ(f.source->parents().size(), 1u);
    EXPECT_TRUE(f.target->parents().empty());
    f.graph.detach(std::move(*edge));
}

TEST(BackupJob, WhileRunningNoWriterMayAttachToTheSource) {
    Fixture f;
    JobManager jobs;
    BackupOptions o = bk_options();
    o.job.speed = 1; // holds the job open
    auto job = BackupJob::create(f.graph, o, f.sink());
    ASSERT_TRUE(job.ok());
    ASSERT_TRUE(jobs.start(std::move(*job)).ok());
    Guest writer;
    auto edge = f.graph.attach(writer, *f.source, block::perm_write, block::perm_all);
    EXPECT_FALSE(edge.ok());
    ASSERT_TRUE(jobs.find("bk")->cancel().ok());
    f.loop.run_until_complete(wait_gone(&jobs, "bk"));
    EXPECT_NE(std::find(f.events.begin(), f.events.end(), "BLOCK_JOB_CANCELLED"), f.events.end());
}

TEST(BackupJob, SizeMismatchAndUnknownNodesAreErrors) {
    Fixture f;
    f.graph.add(std::make_unique<nodes::MemoryNode>("small", 4096)).value();
    BackupOptions o = bk_options("small");
    auto job = BackupJob::create(f.graph, o, f.sink());
    ASSERT_FALSE(job.ok());
    EXPECT_EQ(job.error().message, "Source and target image have different sizes");
    o.target = "nope";
    auto missing = BackupJob::create(f.graph, o, f.sink());
    ASSERT_FALSE(missing.ok());
    EXPECT_EQ(missing.error().error_class, "DeviceNotFound");
}

Result<BackupFilter> make_filter(const BackupFilterRequest& req) {
    nodes::CbwConfig cfg;
    cfg.on_error = req.break_guest_write ? nodes::OnCbwError::break_guest_write
                                         : nodes::OnCbwError::break_snapshot;
    auto node = std::make_unique<nodes::CbwNode>(req.name, *req.source, *req.target, cfg);
    nodes::CbwNode* raw = node.get();
    BackupFilter f;
    f.copy = &raw->block_copy();
    f.snapshot_error = [raw] { return raw->snapshot_error(); };
    f.node = std::move(node);
    return f;
}

// Writes every 7th 4 KiB block with 0xee through the guest edge while the job runs.
io::Task<void> guest_writes(block::Child* edge, JobManager* jobs) {
    std::vector<std::byte> buf(4096, std::byte{0xee});
    for (std::uint64_t off = 0; off + 4096 <= edge->node().size(); off += 7 * 4096) {
        auto ec = co_await edge->write(off, buf);
        EXPECT_FALSE(ec) << ec.message();
    }
    while (jobs->find("bk"))
        co_await io::sleep_for(std::chrono::milliseconds(1));
}

TEST(BackupJob, SourceWithWritersGetsTheJobsFilterAndTheSnapshotIsExact) {
    Fixture f;
    const std::vector<std::byte> snapshot = f.source->data();
    Guest guest;
    auto edge = f.graph.attach(guest, *f.source, block::perm_write | block::perm_consistent_read,
                               block::perm_all);
    ASSERT_TRUE(edge.ok());
    JobManager jobs;
    BackupOptions o = bk_options();
    o.max_workers = 4;
    o.max_chunk = 65536;
    o.filter_node_name = "bk-cbw";
    auto job = BackupJob::create(f.graph, o, f.sink(), make_filter);
    ASSERT_TRUE(job.ok()) << job.error().message;
    BackupJob* raw = job->get();
    EXPECT_EQ(raw->filter_name(), "bk-cbw");
    EXPECT_EQ(&(*edge)->node(), f.source); // not in the I/O path before insert()
    f.loop.run_until_complete([](BackupJob* j) -> io::Task<void> {
        Status st = co_await j->insert();
        EXPECT_TRUE(st.ok());
    }(raw));
    EXPECT_EQ((*edge)->node().name(), "bk-cbw"); // the guest now writes through the filter
    ASSERT_TRUE(jobs.start(std::move(*job)).ok());
    f.loop.run_until_complete(guest_writes(edge->get(), &jobs));
    EXPECT_EQ(f.target->data(), snapshot);
    EXPECT_NE(f.source->data(), snapshot);
    EXPECT_EQ(&(*edge)->node(), f.source); // filter gone, the guest is back on the source
    EXPECT_EQ(f.graph.find("bk-cbw"), nullptr);
    EXPECT_NE(std::find(f.events.begin(), f.events.end(), "BLOCK_JOB_COMPLETED"), f.events.end());
    f.graph.detach(std::move(*edge));
}

// The target loses its write cache (an NBD server that went away) at random moments,
// again and again: the job copies the lost clusters again from its immutable source, and
// ends with the target equal to the source, with and without discard-source, for
// checkpoints after every window, every few windows and only at the end.
io::Task<void> lose_cache_now_and_then(nodes::MemoryNode* target, JobManager* jobs,
                                       std::uint64_t seed, int* losses) {
    std::mt19937_64 rng(seed);
    while (jobs->find("bk")) {
        const unsigned turns = static_cast<unsigned>(rng() % 150);
        for (unsigned i = 0; i < turns && jobs->find("bk"); ++i)
            co_await io::EventLoop::current().yield();
        if (!jobs->find("bk")) break;
        target->lose_cache();
        ++*losses;
    }
}

TEST(BackupJob, WhatTheTargetLosesFromItsCacheIsCopiedAgain) {
    const std::uint64_t intervals[] = {64 * 1024, 1 << 20, default_checkpoint_bytes};
    int total_losses = 0;
    for (std::uint64_t seed = 1; seed <= 60; ++seed) {
        Fixture f;
        const std::vector<std::byte> original = f.source->data();
        f.target->set_volatile_cache();
        f.target->set_random_delay(seed, 5);
        JobManager jobs;
        BackupOptions o = bk_options();
        o.max_workers = 8;
        o.max_chunk = 64 * 1024;
        o.discard_source = seed % 2 == 0;
        o.checkpoint_bytes = intervals[(seed / 2) % 3];
        auto job = BackupJob::create(f.graph, o, f.sink());
        ASSERT_TRUE(job.ok()) << job.error().message;
        ASSERT_TRUE(jobs.start(std::move(*job)).ok());
        int losses = 0;
        f.loop.spawn(lose_cache_now_and_then(f.target, &jobs, seed, &losses));
        f.loop.run_until_complete(wait_gone(&jobs, "bk"));
        total_losses += losses;
        EXPECT_NE(std::find(f.events.begin(), f.events.end(), "BLOCK_JOB_COMPLETED"),
                  f.events.end());
        EXPECT_EQ(std::find(f.events.begin(), f.events.end(), "aborting"), f.events.end())
            << "seed " << seed;
        // What the job left in the target's cache, and what a flush made durable.
        EXPECT_TRUE(f.target->data() == original) << "seed " << seed << ", losses " << losses;
        f.target->lose_cache();
        EXPECT_TRUE(f.target->data() == original) << "seed " << seed << " (durable)";
        if (HasFailure()) break;
    }
    EXPECT_GE(total_losses, 60); // the losses really happened during the jobs
}

} // namespace
} // namespace fleece::jobs
