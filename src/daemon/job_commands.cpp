// QMP commands for jobs: blockdev-backup, query-jobs, query-block-jobs and the job verbs.

#include "daemon/job_commands.hpp"

#include "jobs/backup_job.hpp"
#include "jobs/job_manager.hpp"

#include <fmt/format.h>

namespace fleece::daemon {
namespace {

using nlohmann::json;

Services& services_of(control::CommandContext& ctx) {
    return *static_cast<Services*>(ctx.services);
}

io::Task<Result<json>> blockdev_backup_command(control::CommandContext& ctx, const json& args) {
    Services& s = services_of(ctx);
    jobs::BackupOptions o;
    o.device = args.at("device").get<std::string>();
    o.target = args.at("target").get<std::string>();
    o.sync = args.at("sync").get<std::string>();
    o.job.id = args.value("job-id", o.device);
    o.job.speed = args.value("speed", std::uint64_t{0});
    o.job.auto_finalize = args.value("auto-finalize", true);
    o.job.auto_dismiss = args.value("auto-dismiss", true);
    for (const char* key : {"on-source-error", "on-target-error"})
        if (args.contains(key) && args[key] != "report")
            co_return make_error(fmt::format("{}: only 'report' is supported yet", key));
    o.bitmap = args.value("bitmap", "");
    o.bitmap_mode = args.value("bitmap-mode", "");
    for (const char* key : {"compress", "discard-source"})
        if (args.contains(key) && args[key] != false)
            co_return make_error(fmt::format("blockdev-backup: '{}' is not supported yet", key));
    if (args.contains("x-perf")) {
        const json& perf = args["x-perf"];
        o.max_workers = perf.value("max-workers", 64u);
        o.max_chunk = perf.value("max-chunk", std::uint64_t{0});
        o.min_cluster_size = perf.value("min-cluster-size", std::uint64_t{0});
    }
    if (s.jobs->find(o.job.id))
        co_return make_error(fmt::format("Job ID '{}' already in use", o.job.id));
    auto job = jobs::BackupJob::create(*s.graph, o, ctx.emit_event);
    if (!job) co_return job.error();
    if (Status st = s.jobs->start(std::move(*job)); !st) co_return st.error();
    co_return json::object();
}

io::Task<Result<json>> query_jobs_command(control::CommandContext& ctx, const json&) {
    co_return services_of(ctx).jobs->query_jobs();
}

io::Task<Result<json>> query_block_jobs_command(control::CommandContext& ctx, const json&) {
    co_return services_of(ctx).jobs->query_block_jobs();
}

// One handler per verb; the key is "id" for job-* and "device" for block-job-*.
template <Status (jobs::Job::*Verb)(), const char* Key>
io::Task<Result<json>> verb_command(control::CommandContext& ctx, const json& args) {
    auto job = services_of(ctx).jobs->lookup(args.at(Key).get<std::string>());
    if (!job) co_return job.error();
    Status st = ((*job)->*Verb)();
    if (!st) co_return st.error();
    co_return json::object();
}

io::Task<Result<json>> set_speed_command(control::CommandContext& ctx, const json& args) {
    auto job = services_of(ctx).jobs->lookup(args.at("device").get<std::string>());
    if (!job) co_return job.error();
    const json& speed = args.at("speed");
    if (!speed.is_number_integer() || speed.get<std::int64_t>() < 0)
        co_return make_error("Parameter 'speed' expects a value in range [0, 9223372036854775807]");
    Status st = (*job)->set_speed(speed.get<std::uint64_t>());
    if (!st) co_return st.error();
    co_return json::object();
}

constexpr char id_key[] = "id";
constexpr char device_key[] = "device";

} // namespace

void register_job_commands(control::CommandRegistry& registry) {
    using control::ArgType;
    registry.add({"blockdev-backup",
                  "Starts a backup job from one node to another",
                  {{"job-id", ArgType::str, false},
                   {"device", ArgType::str, true},
                   {"target", ArgType::str, true},
                   {"sync", ArgType::str, true},
                   {"speed", ArgType::integer, false},
                   {"bitmap", ArgType::str, false},
                   {"bitmap-mode", ArgType::str, false},
                   {"compress", ArgType::boolean, false},
                   {"on-source-error", ArgType::str, false},
                   {"on-target-error", ArgType::str, false},
                   {"auto-finalize", ArgType::boolean, false},
                   {"auto-dismiss", ArgType::boolean, false},
                   {"filter-node-name", ArgType::str, false},
                   {"discard-source", ArgType::boolean, false},
                   {"x-perf", ArgType::object, false}},
                  false,
                  blockdev_backup_command});
    registry.add({"query-jobs", "Lists jobs", {}, false, query_jobs_command});
    registry.add({"query-block-jobs", "Lists block jobs", {}, false, query_block_jobs_command});
    registry.add({"job-pause",
                  "Pauses a job",
                  {{"id", ArgType::str, true}},
                  false,
                  verb_command<&jobs::Job::pause, id_key>});
    registry.add({"job-resume",
                  "Resumes a job",
                  {{"id", ArgType::str, true}},
                  false,
                  verb_command<&jobs::Job::resume, id_key>});
    registry.add({"job-cancel",
                  "Cancels a job",
                  {{"id", ArgType::str, true}},
                  false,
                  verb_command<&jobs::Job::cancel, id_key>});
    registry.add({"job-finalize",
                  "Finalizes a pending job",
                  {{"id", ArgType::str, true}},
                  false,
                  verb_command<&jobs::Job::finalize, id_key>});
    registry.add({"job-dismiss",
                  "Dismisses a concluded job",
                  {{"id", ArgType::str, true}},
                  false,
                  verb_command<&jobs::Job::dismiss, id_key>});
    registry.add({"block-job-cancel",
                  "Cancels a block job",
                  {{"device", ArgType::str, true}, {"force", ArgType::boolean, false}},
                  false,
                  verb_command<&jobs::Job::cancel, device_key>});
    registry.add({"block-job-pause",
                  "Pauses a block job",
                  {{"device", ArgType::str, true}},
                  false,
                  verb_command<&jobs::Job::pause, device_key>});
    registry.add({"block-job-resume",
                  "Resumes a block job",
                  {{"device", ArgType::str, true}},
                  false,
                  verb_command<&jobs::Job::resume, device_key>});
    registry.add({"block-job-set-speed",
                  "Changes a block job's speed limit",
                  {{"device", ArgType::str, true}, {"speed", ArgType::integer, true}},
                  false,
                  set_speed_command});
}

} // namespace fleece::daemon
