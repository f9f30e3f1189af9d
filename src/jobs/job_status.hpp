#pragma once
// QEMU's job state machine as data: the allowed transitions and which verbs each state
// accepts. Every status change is checked against these tables.

#include <cstdint>
#include <string_view>

namespace fleece::jobs {

enum class JobStatus : std::uint8_t {
    undefined,
    created,
    running,
    paused,
    ready,
    standby,
    waiting,
    pending,
    aborting,
    concluded,
    null,
};
inline constexpr int job_status_count = 11;

enum class JobVerb : std::uint8_t { cancel, pause, resume, set_speed, complete, finalize, dismiss };
inline constexpr int job_verb_count = 7;

std::string_view status_name(JobStatus s);
std::string_view verb_name(JobVerb v);
bool transition_allowed(JobStatus from, JobStatus to);
bool verb_allowed(JobVerb verb, JobStatus status);

} // namespace fleece::jobs
