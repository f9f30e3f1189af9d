#include "jobs/job.hpp"

#include "util/assert.hpp"

#include <algorithm>
#include <chrono>
#include <fmt/format.h>

namespace fleece::jobs {

using nlohmann::json;

Job::Job(JobOptions options, std::string type, EventSink events)
    : options_(std::move(options)), type_(std::move(type)), events_(std::move(events)) {}

Job::~Job() = default;

void Job::emit(const std::string& name, json data) {
    if (events_) events_(name, data);
}

void Job::set_status(JobStatus s) {
    FLEECE_ASSERT(transition_allowed(status_, s));
    status_ = s;
    emit("JOB_STATUS_CHANGE", json{{"id", id()}, {"status", status_name(s)}});
    state_changed_.notify_all();
}

void Job::start() {
    emit("JOB_STATUS_CHANGE", json{{"id", id()}, {"status", "created"}});
    set_status(JobStatus::running);
    io::EventLoop::current().spawn(lifecycle());
}

Status Job::check_verb(JobVerb verb) const {
    if (verb_allowed(verb, status_)) return {};
    return make_error(fmt::format("Job '{}' in state '{}' cannot accept command verb '{}'", id(),
                                  status_name(status_), verb_name(verb)));
}

Status Job::pause() {
    if (Status st = check_verb(JobVerb::pause); !st) return st;
    ++pause_count_;
    kick();
    on_interrupt();
    return {};
}

Status Job::resume() {
    if (Status st = check_verb(JobVerb::resume); !st) return st;
    if (pause_count_ == 0) return make_error(fmt::format("Can't resume a job that was not paused"));
    --pause_count_;
    io_status_ = "ok";
    state_changed_.notify_all();
    return {};
}

Status Job::cancel() {
    if (Status st = check_verb(JobVerb::cancel); !st) return st;
    cancel_requested_ = true;
    kick();
    on_interrupt();
    state_changed_.notify_all();
    return {};
}

Status Job::set_speed(std::uint64_t bytes_per_second) {
    if (Status st = check_verb(JobVerb::set_speed); !st) return st;
    options_.speed = bytes_per_second;
    on_speed_changed();
    kick();
    return {};
}

Status Job::finalize() {
    if (Status st = check_verb(JobVerb::finalize); !st) return st;
    // A grouped transaction finalizes together.
    std::vector<Job*> all{this};
    if (txn_) all = txn_->jobs();
    for (Job* j : all) {
        if (j->status_ != JobStatus::pending) continue;
        j->finalize_requested_ = true;
        j->state_changed_.notify_all();
    }
    return {};
}

void JobTxn::remove(Job* job) {
    jobs_.erase(std::remove(jobs_.begin(), jobs_.end(), job), jobs_.end());
    changed_.notify_all();
}

void Job::set_txn(std::shared_ptr<JobTxn> txn) {
    txn_ = std::move(txn);
    txn_->add(this);
}

void Job::emit_error(bool is_read, const char* action) {
    emit("BLOCK_JOB_ERROR",
         json{{"device", id()}, {"operation", is_read ? "read" : "write"}, {"action", action}});
}

void Job::pause_for_error(bool nospace) {
    ++pause_count_;
    io_status_ = nospace ? "nospace" : "failed";
}

Status Job::dismiss() {
    if (Status st = check_verb(JobVerb::dismiss); !st) return st;
    set_status(JobStatus::null);
    dismissed_ = true;
    return {};
}

io::Task<void> Job::pause_point() {
    if (pause_count_ == 0 || cancel_requested_) co_return;
    set_status(JobStatus::paused);
    while (pause_count_ > 0 && !cancel_requested_)
        co_await state_changed_.wait();
    set_status(JobStatus::running);
}

io::Task<void> Job::sleep_or_kick(io::Clock::duration d) {
    // Sleep on a timer that a kick cancels: two waits raced through a shared flag.
    io::EventLoop::Timer timer(io::EventLoop::current());
    struct Waker {
        static io::Task<void> run(io::WaitQueue* q, io::EventLoop::Timer* t, bool* done) {
            co_await q->wait();
            if (!*done) t->cancel();
        }
    };
    bool done = false;
    io::EventLoop::current().spawn(Waker::run(&kicked_, &timer, &done));
    co_await timer.wait_for(d);
    done = true;
    // Release the waker if the timer expired on its own (it holds pointers into this frame).
    kicked_.notify_all();
    co_await io::EventLoop::current().yield();
}

json Job::completion_data() {
    sync_progress();
    json data = {{"device", id()},
                 {"type", type()},
                 {"len", progress_total_},
                 {"offset", progress_current_},
                 {"speed", options_.speed}};
    return data;
}

io::Task<void> Job::lifecycle() {
    if (started_drained_ && !cancel_requested_) {
        // The drain that held the job at its start has ended by now (the body starts on
        // the loop turn after the transaction): report it as QEMU does.
        set_status(JobStatus::paused);
        set_status(JobStatus::running);
    }
    std::error_code result = co_await run();
    if (cancel_requested_ && !result) result = std::make_error_code(std::errc::operation_canceled);
    if (txn_) {
        if (!result) {
            // Wait for the rest of the group; a failure there cancels us.
            set_status(JobStatus::waiting);
            ++txn_->finished_ok_;
            txn_->changed_.notify_all();
            while (!txn_->aborted_ && !cancel_requested_ && txn_->finished_ok_ < txn_->jobs_.size())
                co_await txn_->changed_.wait();
            if (txn_->aborted_ || cancel_requested_) {
                cancel_requested_ = true;
                result = std::make_error_code(std::errc::operation_canceled);
            }
        } else if (!txn_->aborted_) {
            txn_->aborted_ = true;
            for (Job* other : txn_->jobs_)
                if (other != this) (void)other->cancel();
            txn_->changed_.notify_all();
        }
    }
    if (!result) {
        if (status_ != JobStatus::waiting) set_status(JobStatus::waiting);
        set_status(JobStatus::pending);
        if (!options_.auto_finalize) {
            emit("BLOCK_JOB_PENDING", json{{"type", type()}, {"id", id()}});
            while (!finalize_requested_ && !cancel_requested_)
                co_await state_changed_.wait();
        }
    }
    if (!result && !cancel_requested_) {
        commit();
        clean();
        co_await clean_graph();
        emit("BLOCK_JOB_COMPLETED", completion_data());
    } else {
        if (!result) result = std::make_error_code(std::errc::operation_canceled);
        set_status(JobStatus::aborting);
        abort();
        clean();
        co_await clean_graph();
        if (result == std::errc::operation_canceled) {
            error_text_ = "Operation canceled";
            emit("BLOCK_JOB_CANCELLED", completion_data());
        } else {
            if (error_text_.empty()) error_text_ = result.message();
            json data = completion_data();
            data["error"] = error_text_;
            emit("BLOCK_JOB_COMPLETED", data);
        }
    }
    if (txn_) txn_->remove(this);
    set_status(JobStatus::concluded);
    if (options_.auto_dismiss) {
        set_status(JobStatus::null);
        dismissed_ = true;
    }
}

io::Task<void> Job::wait_dismissed() {
    while (!dismissed_)
        co_await state_changed_.wait();
}

json Job::query_job() {
    sync_progress();
    json j = {{"id", id()},
              {"type", type()},
              {"status", status_name(status_)},
              {"current-progress", progress_current_},
              {"total-progress", progress_total_}};
    if (!error_text_.empty() && status_ == JobStatus::concluded) j["error"] = error_text_;
    return j;
}

json Job::query_block_job() {
    sync_progress();
    return json{{"device", id()},
                {"type", type()},
                {"len", progress_total_},
                {"offset", progress_current_},
                {"busy", status_ == JobStatus::running},
                {"paused", pause_count_ > 0},
                {"speed", options_.speed},
                {"io-status", io_status_},
                {"ready", false},
                {"status", status_name(status_)},
                {"auto-finalize", options_.auto_finalize},
                {"auto-dismiss", options_.auto_dismiss}};
}

} // namespace fleece::jobs
