// blockdev-backup with a sync bitmap: argument rules, incremental copies only the dirty
// clusters, and the bitmap's fate per bitmap-mode on success, failure and cancel.

#include "jobs/backup_bitmap.hpp"
#include "jobs/backup_job.hpp"
#include "jobs/job_manager.hpp"
#include "nodes/testing/memory_node.hpp"

#include <gtest/gtest.h>

namespace fleece::jobs {
namespace {

using nlohmann::json;

constexpr std::uint64_t K64 = 65536;

struct Fixture {
    io::EventLoop loop;
    block::Graph graph;
    nodes::MemoryNode* source;
    nodes::MemoryNode* target;
    JobManager jobs;
    std::vector<std::string> events;
    Fixture() {
        auto s = std::make_unique<nodes::MemoryNode>("src", 4 << 20);
        for (std::size_t i = 0; i < s->data().size(); ++i)
            s->data()[i] = static_cast<std::byte>(1 + ((i * 31) >> 9) % 250);
        source = static_cast<nodes::MemoryNode*>(*graph.add(std::move(s)));
        target = static_cast<nodes::MemoryNode*>(
            *graph.add(std::make_unique<nodes::MemoryNode>("tgt", 4 << 20)));
    }
    ~Fixture() { loop.run_until_complete(graph.close_all()); }
    block::DirtyBitmap* add_bitmap(const char* name) {
        return *source->dirty_bitmaps().add(name, source->size(), K64);
    }
    BackupOptions options(std::string sync, std::string bitmap, std::string mode) {
        BackupOptions o;
        o.job.id = "bk";
        o.device = "src";
        o.target = "tgt";
        o.sync = parse_sync_mode(sync).value();
        o.bitmap = std::move(bitmap);
        o.bitmap_mode = std::move(mode);
        return o;
    }
    EventSink sink() {
        return [this](const std::string& name, const json&) { events.push_back(name); };
    }
    Status run(BackupOptions o) {
        auto job = BackupJob::create(graph, o, sink());
        if (!job) return job.error();
        if (Status st = jobs.start(std::move(*job)); !st) return st;
        loop.run_until_complete(wait_gone(&jobs, "bk"));
        return {};
    }
    static io::Task<void> wait_gone(JobManager* m, std::string id) {
        while (m->find(id))
            co_await io::sleep_for(std::chrono::milliseconds(1));
    }
    bool cluster_equal(std::uint64_t i) const {
        return std::equal(source->data().begin() + i * K64, source->data().begin() + (i + 1) * K64,
                          target->data().begin() + i * K64);
    }
    bool cluster_zero(std::uint64_t i) const {
        return std::all_of(target->data().begin() + i * K64, target->data().begin() + (i + 1) * K64,
                           [](std::byte b) { return b == std::byte{0}; });
    }
};

TEST(BackupBitmap, ArgumentRulesFollowQemu) {
    auto check = [](std::string sync, std::string bitmap, std::string mode) {
        BitmapSyncRequest r{std::move(sync), std::move(bitmap), std::move(mode)};
        Status st = normalize_bitmap_sync(r);
        return st ? std::string("ok:") + r.sync + "/" + r.bitmap_mode : st.error().message;
    };
    EXPECT_EQ(check("incremental", "b", ""), "ok:bitmap/on-success");
    EXPECT_EQ(check("incremental", "", ""),
              "must provide a valid bitmap name for 'incremental' sync mode");
    EXPECT_EQ(check("incremental", "b", "always"),
              "Bitmap sync mode must be 'on-success' when using sync mode 'incremental'");
    EXPECT_EQ(check("bitmap", "b", ""), "Bitmap sync mode must be given when providing a bitmap");
    EXPECT_EQ(check("full", "", "never"), "Cannot specify bitmap sync mode without a bitmap");
    EXPECT_EQ(check("full", "b", "never"),
              "Bitmap sync mode 'never' has no meaningful effect when combined with sync mode "
              "'full'");
    EXPECT_EQ(check("none", "b", "on-success"),
              "sync mode 'none' does not produce meaningful bitmap outputs");
    EXPECT_EQ(check("full", "b", "always"), "ok:full/always");
    EXPECT_EQ(check("full", "", ""), "ok:full/");
}

TEST(BackupBitmap, IncrementalCopiesOnlyDirtyClustersAndAbdicates) {
    Fixture f;
    block::DirtyBitmap* b = f.add_bitmap("b0");
    b->record(K64 + 100, 10);
    b->record(40 * K64, 2 * K64);
    ASSERT_TRUE(f.run(f.options("incremental", "b0", "")));
    for (std::uint64_t i = 0; i < 64; ++i) {
        if (i == 1 || i == 40 || i == 41)
            EXPECT_TRUE(f.cluster_equal(i)) << i;
        else
            EXPECT_TRUE(f.cluster_zero(i)) << i;
    }
    // Backed up: the bitmap is clean, recording and free again.
    EXPECT_EQ(b->count(), 0u);
    EXPECT_TRUE(b->enabled());
    EXPECT_FALSE(b->busy());
}

TEST(BackupBitmap, BusyMissingAndFrozenWhileRunning) {
    Fixture f;
    block::DirtyBitmap* b = f.add_bitmap("b0");
    EXPECT_EQ(f.run(f.options("bitmap", "zz", "always")).error().message,
              "Bitmap 'zz' could not be found");
    b->set_busy(true);
    EXPECT_EQ(f.run(f.options("bitmap", "b0", "always")).error().message,
              "Bitmap 'b0' is currently in use by another operation and cannot be used");
    b->set_busy(false);
    // A failed create leaves the bitmap as it was.
    f.graph.add(std::make_unique<nodes::MemoryNode>("small", 4096)).value();
    auto o = f.options("bitmap", "b0", "on-success");
    o.target = "small";
    EXPECT_FALSE(f.run(o));
    EXPECT_FALSE(b->busy());

    b->record(0, 1);
    o = f.options("bitmap", "b0", "on-success");
    o.job.speed = 1; // holds the job open
    auto job = BackupJob::create(f.graph, o, f.sink());
    ASSERT_TRUE(job);
    EXPECT_TRUE(b->busy());
    EXPECT_TRUE(b->frozen());
    EXPECT_TRUE(b->recording());
    ASSERT_TRUE(f.jobs.start(std::move(*job)));
    // Cancelled: the bitmap gets its content back plus what was recorded meanwhile.
    b->record(10 * K64, 1);
    ASSERT_TRUE(f.jobs.find("bk")->cancel());
    f.loop.run_until_complete(Fixture::wait_gone(&f.jobs, "bk"));
    EXPECT_FALSE(b->busy());
    EXPECT_TRUE(b->is_dirty(0));
    EXPECT_TRUE(b->is_dirty(10 * K64));
    EXPECT_EQ(b->count(), 2 * K64);
}

TEST(BackupBitmap, NeverKeepsTheBitmapAndFailureReclaims) {
    Fixture f;
    block::DirtyBitmap* b = f.add_bitmap("b0");
    b->record(5 * K64, 1);
    ASSERT_TRUE(f.run(f.options("bitmap", "b0", "never")));
    EXPECT_TRUE(f.cluster_equal(5));
    EXPECT_EQ(b->count(), K64);

    // on-success with a failing target: content back.
    f.target->fail_writes(EIO);
    ASSERT_TRUE(f.run(f.options("bitmap", "b0", "on-success")));
    EXPECT_EQ(b->count(), K64);
    EXPECT_FALSE(b->busy());
}

TEST(BackupBitmap, AlwaysOnFailureKeepsOnlyWhatWasNotCopied) {
    Fixture f;
    block::DirtyBitmap* b = f.add_bitmap("b0");
    b->record(0, 4 << 20); // everything dirty
    f.target->fail_writes(EIO);
    ASSERT_TRUE(f.run(f.options("bitmap", "b0", "always")));
    // Nothing was copied: everything stays dirty.
    EXPECT_EQ(b->count(), std::uint64_t{4} << 20);
    f.target->fail_writes(0);
    // A full backup with mode always starts a chain: afterwards the bitmap is clean.
    ASSERT_TRUE(f.run(f.options("full", "b0", "always")));
    EXPECT_EQ(b->count(), 0u);
    EXPECT_EQ(f.target->data(), f.source->data());
}

} // namespace
} // namespace fleece::jobs
