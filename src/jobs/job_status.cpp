#include "jobs/job_status.hpp"

#include <array>

namespace fleece::jobs {
namespace {

using S = JobStatus;
constexpr int idx(S s) {
    return static_cast<int>(s);
}

// transitions[from][to]; columns in enum order:
//                     U  C  R  P  Y  S  W  D  A  X  N
constexpr std::array<std::array<bool, job_status_count>, job_status_count> transitions = {{
    /* undefined */ {0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0},
    /* created   */ {0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1},
    /* running   */ {0, 0, 0, 1, 1, 0, 1, 0, 1, 0, 0},
    /* paused    */ {0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0},
    /* ready     */ {0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0},
    /* standby   */ {0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0},
    /* waiting   */ {0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0},
    /* pending   */ {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0},
    /* aborting  */ {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0},
    /* concluded */ {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1},
    /* null      */ {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
}};

// verbs[verb][status]:        U  C  R  P  Y  S  W  D  A  X  N
constexpr std::array<std::array<bool, job_status_count>, job_verb_count> verbs = {{
    /* cancel    */ {0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0},
    /* pause     */ {0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0},
    /* resume    */ {0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0},
    /* set-speed */ {0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0},
    /* complete  */ {0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0},
    /* finalize  */ {0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0},
    /* dismiss   */ {0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0},
}};

} // namespace

std::string_view status_name(JobStatus s) {
    static constexpr std::array<std::string_view, job_status_count> names = {
        "undefined", "created", "running",  "paused",    "ready", "standby",
        "waiting",   "pending", "aborting", "concluded", "null"};
    return names[static_cast<std::size_t>(idx(s))];
}

std::string_view verb_name(JobVerb v) {
    static constexpr std::array<std::string_view, job_verb_count> names = {
        "cancel", "pause", "resume", "set-speed", "complete", "finalize", "dismiss"};
    return names[static_cast<std::size_t>(v)];
}

bool transition_allowed(JobStatus from, JobStatus to) {
    return transitions[static_cast<std::size_t>(idx(from))][static_cast<std::size_t>(idx(to))];
}

bool verb_allowed(JobVerb verb, JobStatus status) {
    return verbs[static_cast<std::size_t>(verb)][static_cast<std::size_t>(idx(status))];
}

} // namespace fleece::jobs
