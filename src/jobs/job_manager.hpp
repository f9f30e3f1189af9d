#pragma once
// JobManager: owns the jobs by id, answers query-jobs / query-block-jobs and applies verbs.
// A job leaves the table when it reaches `null` (dismissed).

#include "io/task.hpp"
#include "jobs/job.hpp"
#include "util/result.hpp"

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace fleece::jobs {

class JobManager {
  public:
    JobManager() = default;
    ~JobManager();

    Job* find(const std::string& id) const;
    // Takes ownership and starts the job; refuses a duplicate id.
    Status start(std::unique_ptr<Job> job);
    Result<Job*> lookup(const std::string& id) const; // QEMU's "Job 'x' not found"

    nlohmann::json query_jobs() const;
    nlohmann::json query_block_jobs() const;

    // Cancels every job and waits for them (daemon shutdown).
    io::Task<void> cancel_all();

  private:
    io::Task<void> reap(Job* job);
    std::map<std::string, std::unique_ptr<Job>> jobs_;
};

} // namespace fleece::jobs
