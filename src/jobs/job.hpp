#pragma once
// Job: the generic half of every long-running operation (backup now, others later), with
// QEMU's states, verbs and events. A driver implements run() and the commit/abort/clean
// hooks; this class owns the state machine, pause/cancel points, progress and events.

#include "io/event_loop.hpp"
#include "io/sync.hpp"
#include "io/task.hpp"
#include "jobs/job_status.hpp"
#include "util/result.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <system_error>
#include <vector>

namespace fleece::jobs {

using EventSink = std::function<void(const std::string& name, const nlohmann::json& data)>;

class Job;

// Jobs started by one `transaction` with completion-mode=grouped: each waits (status
// `waiting`) until all have finished their work; the first failure or cancel cancels the
// others, so either all commit or none does.
class JobTxn {
  public:
    void add(Job* job) { jobs_.push_back(job); }
    void remove(Job* job);
    const std::vector<Job*>& jobs() const { return jobs_; }

  private:
    friend class Job;
    std::vector<Job*> jobs_;
    unsigned finished_ok_ = 0;
    bool aborted_ = false;
    io::WaitQueue changed_;
};

struct JobOptions {
    std::string id;
    bool auto_finalize = true;
    bool auto_dismiss = true;
    std::uint64_t speed = 0; // bytes per second, 0 = unlimited
};

class Job {
  public:
    Job(JobOptions options, std::string type, EventSink events);
    virtual ~Job();
    Job(const Job&) = delete;
    Job& operator=(const Job&) = delete;

    const std::string& id() const { return options_.id; }
    const std::string& type() const { return type_; }
    JobStatus status() const { return status_; }
    std::uint64_t progress_current() const { return progress_current_; }
    std::uint64_t progress_total() const { return progress_total_; }
    std::uint64_t speed() const { return options_.speed; }
    bool cancelled() const { return cancel_requested_; }

    // created -> running; the body starts on the next loop turn.
    void start();
    // Verbs (checked against the verb table; errors in QEMU's wording).
    Status pause();
    Status resume();
    Status cancel();
    Status set_speed(std::uint64_t bytes_per_second);
    Status finalize();
    Status dismiss();
    Status check_verb(JobVerb verb) const;

    // The job is started inside a drained section (a transaction), as blockdev-backup always
    // is: like QEMU 7.2 it then reports the drain as a paused/running pair right after
    // running (research/qemu-fleecing.md §4.2). Before start().
    void mark_started_drained() { started_drained_ = true; }
    // Joins a grouped transaction (before start()).
    void set_txn(std::shared_ptr<JobTxn> txn);

    nlohmann::json query_job();
    nlohmann::json query_block_job();
    // Completes when the job reached `null` (dismissed).
    io::Task<void> wait_dismissed();

  protected:
    // The body. Return {} on success, an error otherwise; cancellation is noticed by the
    // framework, the body just returns early when cancelled() is true.
    virtual io::Task<std::error_code> run() = 0;
    virtual void commit() {}
    virtual void abort() {}
    virtual void clean() {}
    // After clean(): asynchronous graph work (removing a job's filter node).
    virtual io::Task<void> clean_graph() { co_return; }
    // Extra fields for the completion events (e.g. "error" text is added by the framework).
    virtual void on_speed_changed() {}
    // A pause or cancel was requested: make the body reach a pause point soon.
    virtual void on_interrupt() {}
    // Bring progress up to date before it is reported (e.g. from a copy engine).
    virtual void sync_progress() {}

    // Body helpers.
    io::Task<void> pause_point(); // returns once not paused (or cancelled)
    void set_progress_total(std::uint64_t total) { progress_total_ = total; }
    void add_progress(std::uint64_t bytes) { progress_current_ += bytes; }
    // Wakes a body sleeping in sleep_or_kick (speed change, pause, cancel).
    void kick() { kicked_.notify_all(); }
    io::Task<void> sleep_or_kick(io::Clock::duration d);
    void set_error_text(std::string text) { error_text_ = std::move(text); }
    // BLOCK_JOB_ERROR {device, operation: read|write, action}.
    void emit_error(bool is_read, const char* action);
    // The `stop` error action: the job pauses as if the user had paused it (resume retries)
    // and io-status shows the error until then.
    void pause_for_error(bool nospace);

  private:
    io::Task<void> lifecycle();
    void set_status(JobStatus s);
    void emit(const std::string& name, nlohmann::json data);
    nlohmann::json completion_data();

    JobOptions options_;
    std::string type_;
    EventSink events_;
    JobStatus status_ = JobStatus::created;
    std::uint64_t progress_current_ = 0;
    std::uint64_t progress_total_ = 0;
    std::uint32_t pause_count_ = 0;
    bool cancel_requested_ = false;
    bool finalize_requested_ = false;
    bool dismissed_ = false;
    std::string error_text_;
    io::WaitQueue state_changed_; // pause/resume/finalize/dismiss/cancel requests
    io::WaitQueue kicked_;
    std::shared_ptr<JobTxn> txn_;
    const char* io_status_ = "ok";
    bool started_drained_ = false;
};

} // namespace fleece::jobs
