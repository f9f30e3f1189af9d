#pragma once
// QMP commands for jobs (blockdev-backup, query-jobs, job-* and block-job-* verbs).

#include "control/command_registry.hpp"
#include "daemon/services.hpp"

namespace fleece::daemon {

void register_job_commands(control::CommandRegistry& registry);

} // namespace fleece::daemon
