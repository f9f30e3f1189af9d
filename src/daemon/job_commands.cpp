// QMP commands for jobs: blockdev-backup (a one-action transaction), query-jobs,
// query-block-jobs and the job verbs; also registers the blockdev-backup transaction action.

#include "daemon/job_commands.hpp"

#include "daemon/transaction.hpp"
#include "jobs/backup_job.hpp"
#include "jobs/job_manager.hpp"
#include "nodes/copy_before_write/cbw_node.hpp"
#include "util/assert.hpp"

#include <fmt/format.h>

namespace fleece::daemon {
namespace {

using nlohmann::json;

Services& services_of(control::CommandContext& ctx) {
    return *static_cast<Services*>(ctx.services);
}

// The blockdev-backup arguments, shared by the command and the transaction action.
std::vector<control::ArgSpec> backup_schema() {
    using control::ArgType;
    return {{"job-id", ArgType::str, false},
            {"device", ArgType::str, true},
            {"target", ArgType::str, true},
            {"sync", ArgType::str, true},
            {"speed", ArgType::integer, false},
            {"bitmap", ArgType::str, false},
            {"bitmap-mode", ArgType::str, false},
            {"compress", ArgType::boolean, false},
            {"on-source-error", ArgType::str, false},
            {"on-target-error", ArgType::str, false},
            {"on-cbw-error", ArgType::str, false},
            {"x-cbw-timeout", ArgType::integer, false},
            {"auto-finalize", ArgType::boolean, false},
            {"auto-dismiss", ArgType::boolean, false},
            {"filter-node-name", ArgType::str, false},
            {"discard-source", ArgType::boolean, false},
            {"x-perf", ArgType::object, false}};
}

Result<std::uint64_t> non_negative(const json& args, const char* key, std::uint64_t dflt) {
    if (!args.contains(key)) return dflt;
    const json& v = args[key];
    if (!v.is_number_integer() || v.get<std::int64_t>() < 0)
        return make_error(
            fmt::format("Parameter '{}' expects a value in range [0, 9223372036854775807]", key));
    return v.get<std::uint64_t>();
}

Result<jobs::BackupOptions> parse_backup_options(const json& args) {
    jobs::BackupOptions o;
    o.device = args.at("device").get<std::string>();
    o.target = args.at("target").get<std::string>();
    const std::string sync = args.at("sync").get<std::string>();
    const std::optional<jobs::SyncMode> mode = jobs::parse_sync_mode(sync);
    if (!mode) return make_error(fmt::format("Parameter 'sync' does not accept value '{}'", sync));
    o.sync = *mode;
    o.bitmap = args.value("bitmap", std::string());
    o.bitmap_mode = args.value("bitmap-mode", std::string());
    o.job.id = args.value("job-id", o.device);
    auto speed = non_negative(args, "speed", 0);
    if (!speed) return speed.error();
    o.job.speed = *speed;
    o.job.auto_finalize = args.value("auto-finalize", true);
    o.job.auto_dismiss = args.value("auto-dismiss", true);
    o.filter_node_name = args.value("filter-node-name", std::string());
    o.compress = args.value("compress", false);
    o.discard_source = args.value("discard-source", false);
    for (const char* key : {"on-source-error", "on-target-error"}) {
        if (!args.contains(key)) continue;
        auto a = jobs::parse_error_action(args[key].get<std::string>());
        if (!a)
            return make_error(fmt::format(
                "Parameter '{}' does not accept value '{}' (report, ignore, enospc, stop, auto)",
                key, args[key].get<std::string>()));
        (std::string_view(key) == "on-source-error" ? o.on_source_error : o.on_target_error) = *a;
    }
    if (args.contains("on-cbw-error")) {
        const std::string v = args["on-cbw-error"].get<std::string>();
        if (v != "break-guest-write" && v != "break-snapshot")
            return make_error(fmt::format("Parameter 'on-cbw-error' does not accept value '{}' "
                                          "(break-guest-write, break-snapshot)",
                                          v));
        o.cbw_break_guest_write = v == "break-guest-write";
    }
    // fleeced's own (QEMU's blockdev-backup has no timeout for its filter): the
    // copy-before-write node's cbw-timeout, in seconds, for the filter the job inserts.
    auto cbw_timeout = non_negative(args, "x-cbw-timeout", 0);
    if (!cbw_timeout) return cbw_timeout.error();
    if (*cbw_timeout > 1'000'000'000ull)
        return make_error("Parameter 'x-cbw-timeout' is too large");
    o.cbw_timeout_s = *cbw_timeout;
    if (args.contains("x-perf")) {
        const json& perf = args["x-perf"];
        for (const auto& [key, value] : perf.items()) {
            if (key == "use-copy-range") {
                if (!value.is_boolean())
                    return make_error("Parameter 'x-perf.use-copy-range' expects boolean");
                continue;
            }
            if (key != "max-workers" && key != "max-chunk" && key != "min-cluster-size")
                return make_error(fmt::format("Parameter 'x-perf.{}' is unexpected", key));
            if (!value.is_number_integer() || value.get<std::int64_t>() < 0)
                return make_error(
                    fmt::format("Parameter 'x-perf.{}' expects a non-negative integer", key));
        }
        if (perf.contains("max-workers")) {
            const auto w = perf["max-workers"].get<std::int64_t>();
            if (w < 1 || w > 0x7fffffff)
                return make_error("max-workers must be between 1 and 2147483647");
            o.max_workers = static_cast<unsigned>(w);
        }
        o.max_chunk = perf.value("max-chunk", std::uint64_t{0});
        o.min_cluster_size = perf.value("min-cluster-size", std::uint64_t{0});
    }
    return o;
}

// The job's own copy-before-write filter, for a source that has writers.
Result<jobs::BackupFilter> make_backup_filter(const jobs::BackupFilterRequest& req) {
    nodes::CbwConfig cfg;
    cfg.on_error = req.break_guest_write ? nodes::OnCbwError::break_guest_write
                                         : nodes::OnCbwError::break_snapshot;
    cfg.min_cluster_size = req.min_cluster_size;
    cfg.timeout = std::chrono::seconds(req.timeout_s);
    auto node = std::make_unique<nodes::CbwNode>(req.name, *req.source, *req.target, cfg);
    nodes::CbwNode* raw = node.get();
    jobs::BackupFilter f;
    f.copy = &raw->block_copy();
    f.snapshot_error = [raw] { return raw->snapshot_error(); };
    f.node = std::move(node);
    return f;
}

// blockdev-backup as a transaction action: prepare creates the job and inserts its
// filter, commit starts it, abort takes everything out again.
class BackupAction final : public TransactionAction {
  public:
    explicit BackupAction(jobs::BackupOptions o) : options_(std::move(o)) {}

    io::Task<Status> prepare(TransactionContext* ctx) override {
        Services& s = *ctx->services;
        const std::string id = options_.job.id;
        if (s.jobs->find(id) || ctx->job_ids.count(id))
            co_return make_error(fmt::format("Job ID '{}' already in use", id));
        auto job = jobs::BackupJob::create(*s.graph, options_, ctx->command->emit_event,
                                           make_backup_filter);
        if (!job) co_return job.error();
        job_ = std::move(*job);
        Status st = co_await job_->insert();
        if (!st) {
            co_await job_->abandon();
            job_.reset();
            co_return st;
        }
        ctx->job_ids.insert(id);
        co_return Status{};
    }

    void commit(TransactionContext* ctx) override {
        if (ctx->group) job_->set_txn(ctx->group);
        job_->mark_started_drained(); // run_transaction drains the graph around commit
        Status st = ctx->services->jobs->start(std::move(job_));
        FLEECE_ASSERT(st.ok()); // the id was checked in prepare, with the graph drained
    }

    io::Task<void> abort(TransactionContext*) override {
        if (job_) co_await job_->abandon();
        job_.reset();
    }

  private:
    jobs::BackupOptions options_;
    std::unique_ptr<jobs::BackupJob> job_;
};

Result<std::unique_ptr<TransactionAction>> backup_action(const json& data) {
    auto o = parse_backup_options(data);
    if (!o) return o.error();
    return std::unique_ptr<TransactionAction>(std::make_unique<BackupAction>(std::move(*o)));
}

io::Task<Result<json>> blockdev_backup_command(control::CommandContext& ctx, const json& args) {
    auto action = backup_action(args);
    if (!action) co_return action.error();
    std::vector<std::unique_ptr<TransactionAction>> actions;
    actions.push_back(std::move(*action));
    Status st = co_await run_transaction(&ctx, std::move(actions), false);
    if (!st) co_return st.error();
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
    registry.add({"blockdev-backup", "Starts a backup job from one node to another",
                  backup_schema(), false, blockdev_backup_command});
    register_transaction_action({"blockdev-backup", backup_schema(), true, backup_action});
    register_transaction_commands(registry);
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
