#include "jobs/job.hpp"

#include <gtest/gtest.h>
#include <string>
#include <vector>

namespace fleece::jobs {
namespace {

using nlohmann::json;

TEST(JobTables, MatchQemu) {
    EXPECT_TRUE(transition_allowed(JobStatus::created, JobStatus::running));
    EXPECT_TRUE(transition_allowed(JobStatus::running, JobStatus::waiting));
    EXPECT_TRUE(transition_allowed(JobStatus::pending, JobStatus::concluded));
    EXPECT_FALSE(transition_allowed(JobStatus::running, JobStatus::concluded));
    EXPECT_FALSE(transition_allowed(JobStatus::concluded, JobStatus::running));
    EXPECT_TRUE(verb_allowed(JobVerb::cancel, JobStatus::pending));
    EXPECT_FALSE(verb_allowed(JobVerb::cancel, JobStatus::concluded));
    EXPECT_FALSE(verb_allowed(JobVerb::complete, JobStatus::running));
    EXPECT_TRUE(verb_allowed(JobVerb::finalize, JobStatus::pending));
    EXPECT_TRUE(verb_allowed(JobVerb::dismiss, JobStatus::concluded));
}

class StepJob final : public Job {
  public:
    StepJob(JobOptions o, EventSink s, int steps, bool fail)
        : Job(std::move(o), "backup", std::move(s)), steps_(steps), fail_(fail) {}
    int committed = 0, aborted = 0, cleaned = 0;

  protected:
    io::Task<std::error_code> run() override {
        set_progress_total(static_cast<std::uint64_t>(steps_) * 65536);
        for (int i = 0; i < steps_; ++i) {
            co_await pause_point();
            if (cancelled()) co_return std::error_code{};
            co_await sleep_or_kick(std::chrono::milliseconds(1));
            add_progress(65536);
            if (fail_ && i == steps_ / 2)
                co_return std::make_error_code(std::errc::no_space_on_device);
        }
        co_return std::error_code{};
    }
    void commit() override { ++committed; }
    void abort() override { ++aborted; }
    void clean() override { ++cleaned; }

  private:
    int steps_;
    bool fail_;
};

struct Recorder {
    std::vector<std::string> seq;
    json last_completion;
    EventSink sink() {
        return [this](const std::string& name, const json& data) {
            if (name == "JOB_STATUS_CHANGE")
                seq.push_back(data["status"].get<std::string>());
            else {
                seq.push_back(name);
                if (name != "BLOCK_JOB_PENDING") last_completion = data;
            }
        };
    }
};

io::Task<void> run_job(Job* job) {
    job->start();
    co_await job->wait_dismissed();
}

TEST(Job, SuccessWithAutoFinalizeAndDismiss) {
    io::EventLoop loop;
    Recorder r;
    StepJob job({"bk"}, r.sink(), 4, false);
    loop.run_until_complete(run_job(&job));
    EXPECT_EQ(r.seq, (std::vector<std::string>{"created", "running", "waiting", "pending",
                                               "BLOCK_JOB_COMPLETED", "concluded", "null"}));
    EXPECT_EQ(r.last_completion["offset"], r.last_completion["len"]);
    EXPECT_EQ(job.committed, 1);
    EXPECT_EQ(job.aborted, 0);
}

io::Task<void> manual_finalize(StepJob* job, Recorder* r) {
    job->start();
    while (job->status() != JobStatus::pending)
        co_await io::sleep_for(std::chrono::milliseconds(1));
    EXPECT_FALSE(job->dismiss().ok()); // not concluded yet
    EXPECT_TRUE(job->finalize().ok());
    while (job->status() != JobStatus::concluded)
        co_await io::sleep_for(std::chrono::milliseconds(1));
    EXPECT_EQ(job->query_job()["status"], "concluded");
    EXPECT_TRUE(job->dismiss().ok());
    (void)r;
}

TEST(Job, ManualFinalizeEmitsPendingAndWaits) {
    io::EventLoop loop;
    Recorder r;
    StepJob job({"bk", false, false}, r.sink(), 3, false);
    loop.run_until_complete(manual_finalize(&job, &r));
    EXPECT_EQ(r.seq, (std::vector<std::string>{"created", "running", "waiting", "pending",
                                               "BLOCK_JOB_PENDING", "BLOCK_JOB_COMPLETED",
                                               "concluded", "null"}));
}

TEST(Job, FailureReportsErrorAndAborts) {
    io::EventLoop loop;
    Recorder r;
    StepJob job({"bk"}, r.sink(), 10, true);
    loop.run_until_complete(run_job(&job));
    EXPECT_EQ(r.seq, (std::vector<std::string>{"created", "running", "aborting",
                                               "BLOCK_JOB_COMPLETED", "concluded", "null"}));
    EXPECT_EQ(r.last_completion["error"], "No space left on device");
    EXPECT_EQ(job.aborted, 1);
    EXPECT_EQ(job.committed, 0);
}

io::Task<void> pause_cancel(StepJob* job) {
    job->start();
    co_await io::sleep_for(std::chrono::milliseconds(3));
    EXPECT_TRUE(job->pause().ok());
    while (job->status() != JobStatus::paused)
        co_await io::sleep_for(std::chrono::milliseconds(1));
    const auto progress = job->progress_current();
    co_await io::sleep_for(std::chrono::milliseconds(10));
    EXPECT_EQ(job->progress_current(), progress); // paused jobs make no progress
    EXPECT_TRUE(job->resume().ok());
    co_await io::sleep_for(std::chrono::milliseconds(3));
    EXPECT_TRUE(job->cancel().ok());
    co_await job->wait_dismissed();
    EXPECT_FALSE(job->cancel().ok()); // null: nothing left to cancel
}

TEST(Job, PauseResumeThenCancel) {
    io::EventLoop loop;
    Recorder r;
    StepJob job({"bk"}, r.sink(), 100000, false);
    loop.run_until_complete(pause_cancel(&job));
    ASSERT_GE(r.seq.size(), 6u);
    EXPECT_EQ(r.seq[2], "paused");
    EXPECT_EQ(r.seq[3], "running");
    const std::vector<std::string> tail(r.seq.end() - 4, r.seq.end());
    EXPECT_EQ(tail,
              (std::vector<std::string>{"aborting", "BLOCK_JOB_CANCELLED", "concluded", "null"}));
    EXPECT_LT(r.last_completion["offset"], r.last_completion["len"]);
}

} // namespace
} // namespace fleece::jobs
