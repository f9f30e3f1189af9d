#include "jobs/job_manager.hpp"

#include "io/event_loop.hpp"
#include "util/assert.hpp"

#include <fmt/format.h>

namespace fleece::jobs {

JobManager::~JobManager() = default;

Job* JobManager::find(const std::string& id) const {
    auto it = jobs_.find(id);
    return it == jobs_.end() ? nullptr : it->second.get();
}

Result<Job*> JobManager::lookup(const std::string& id) const {
    if (Job* j = find(id)) return j;
    return Error{"DeviceNotActive", fmt::format("Job '{}' not found", id)};
}

Status JobManager::start(std::unique_ptr<Job> job) {
    if (find(job->id())) return make_error(fmt::format("Job ID '{}' already in use", job->id()));
    Job* raw = job.get();
    jobs_.emplace(raw->id(), std::move(job));
    raw->start();
    io::EventLoop::current().spawn(reap(raw));
    return {};
}

io::Task<void> JobManager::reap(Job* job) {
    co_await job->wait_dismissed();
    // Let the job's lifecycle coroutine finish its last statement before destruction.
    co_await io::EventLoop::current().yield();
    jobs_.erase(job->id());
}

nlohmann::json JobManager::query_jobs() const {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& [id, job] : jobs_)
        out.push_back(job->query_job());
    return out;
}

nlohmann::json JobManager::query_block_jobs() const {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& [id, job] : jobs_)
        if (job->status() != JobStatus::null) out.push_back(job->query_block_job());
    return out;
}

io::Task<void> JobManager::cancel_all() {
    std::vector<Job*> all;
    for (auto& [id, job] : jobs_)
        all.push_back(job.get());
    for (Job* j : all) {
        (void)j->cancel();
        if (j->status() == JobStatus::concluded) (void)j->dismiss();
    }
    while (!jobs_.empty()) {
        Job* j = jobs_.begin()->second.get();
        if (j->status() == JobStatus::concluded) (void)j->dismiss();
        co_await io::sleep_for(std::chrono::milliseconds(1));
    }
}

} // namespace fleece::jobs
