// fleeced: the backup daemon. Parses a qemu-storage-daemon style command line, serves QMP
// monitors and (later) the block graph, all on one event loop.

#include "block/graph.hpp"
#include "control/builtin_commands.hpp"
#include "control/keyval.hpp"
#include "control/qmp_server.hpp"
#include "control/version.hpp"
#include "daemon/bitmap_commands.hpp"
#include "daemon/cbw_commands.hpp"
#include "daemon/export_commands.hpp"
#include "daemon/graph_commands.hpp"
#include "daemon/job_commands.hpp"
#include "daemon/object_commands.hpp"
#include "daemon/options.hpp"
#include "daemon/process.hpp"
#include "daemon/services.hpp"
#include "io/event_loop.hpp"
#include "io/file_io.hpp"
#include "jobs/job_manager.hpp"
#include "nbd/server.hpp"
#include "util/log.hpp"

#include <chrono>
#include <cstdio>
#include <poll.h>
#include <sys/signalfd.h>
#include <unistd.h>

namespace fleece::daemon {
namespace {

io::Task<void> watch_signals(int fd, io::EventLoop* loop) {
    while (true) {
        const std::int64_t r = co_await io::poll(fd, POLLIN);
        if (r < 0) continue;
        signalfd_siginfo info{};
        if (::read(fd, &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
            log::info("received signal {}, shutting down", info.ssi_signo);
            loop->stop();
            co_return;
        }
    }
}

// Lets the reply to 'quit' (and anything queued before it) reach the clients before the
// loop stops; gives up after a second so a client that never reads cannot block exit.
io::Task<void> stop_when_flushed(Services* services) {
    for (int i = 0; i < 100 && !services->qmp->idle(); ++i)
        co_await io::sleep_for(std::chrono::milliseconds(10));
    services->loop->stop();
}

// Clean shutdown: stop jobs, close exports, then drain, flush and close every node.
io::Task<void> shut_down(Services* services) {
    co_await services->jobs->cancel_all();
    if (services->nbd_server) {
        co_await services->nbd_server->stop();
        services->nbd_server.reset();
    }
    // Closing a node saves its bitmap sidecar, after the node is drained.
    co_await services->graph->close_all();
}

// --bitmap-sidecar node=N,path=P[,write-ahead=on][,journal-granularity=BYTES] as the
// arguments of x-block-dirty-bitmap-sidecar (keyval values are strings).
Result<nlohmann::json> sidecar_args_from_keyval(const std::string& raw) {
    auto kv = control::parse_keyval(raw, "");
    if (!kv) return kv.error();
    nlohmann::json args = nlohmann::json::object();
    for (auto& [key, value] : kv->items()) {
        if (!value.is_string()) return make_error("invalid parameter '" + key + "'");
        const std::string v = value.get<std::string>();
        if (key == "node" || key == "path") {
            args[key] = v;
        } else if (key == "write-ahead") {
            const std::optional<bool> on = parse_on_off(v);
            if (!on) return make_error("parameter 'write-ahead' expects 'on' or 'off'");
            args[key] = *on;
        } else if (key == "journal-granularity") {
            if (v.empty() || v.size() > 18 ||
                v.find_first_not_of("0123456789") != std::string::npos)
                return make_error("parameter 'journal-granularity' expects a number of bytes");
            args[key] = std::stoull(v);
        } else {
            return make_error("unknown parameter '" + key + "'");
        }
    }
    for (const char* required : {"node", "path"})
        if (!args.contains(required))
            return make_error(std::string("parameter '") + required + "' is missing");
    return args;
}

// Applies --nbd-server and --export in that order, after the --blockdev options.
Status apply_exports(Services& services, const Options& options) {
    for (const auto& raw : options.nbd_servers) {
        auto args = control::parse_keyval_or_json(raw);
        if (!args) return make_error("--nbd-server: " + args.error().message);
        if (Status st = start_nbd_server(services, args.value()); !st)
            return make_error("--nbd-server: " + st.error().message);
    }
    for (const auto& raw : options.exports) {
        auto args = control::parse_keyval_or_json(raw);
        if (!args) return make_error("--export: " + args.error().message);
        if (Status st = add_export(services, args.value()); !st)
            return make_error("--export: " + st.error().message);
    }
    return {};
}

int fail(const std::string& msg) {
    std::fprintf(stderr, "%s\n", msg.c_str());
    return 1;
}

int run(const Options& options) {
    if (options.daemonize)
        daemonize_start(); // before the loop exists: io_uring must not cross a fork

    io::EventLoop loop;
    block::Graph graph;
    jobs::JobManager job_manager;
    Services services;
    services.loop = &loop;
    services.graph = &graph;
    services.jobs = &job_manager;

    control::CommandRegistry registry;
    control::register_builtin_commands(registry);
    register_graph_commands(registry, services);
    register_export_commands(registry);
    register_job_commands(registry);
    register_bitmap_commands(registry);
    register_cbw_commands(registry);
    register_object_commands(registry);

    control::CommandContext ctx;
    ctx.services = &services;
    ctx.request_quit = [&services] { services.loop->spawn(stop_when_flushed(&services)); };
    control::QmpServer qmp(registry, ctx);
    services.qmp = &qmp;

    auto sigfd = open_termination_signalfd();
    if (!sigfd) return fail("fleeced: " + sigfd.error().message);

    for (const auto& raw : options.objects) {
        auto args = control::parse_keyval(raw, "qom-type");
        if (!args) return fail("fleeced: --object: " + args.error().message);
        if (Status st = add_object(args.value()); !st)
            return fail("fleeced: --object: " + st.error().message);
    }
    for (const auto& raw : options.blockdevs) {
        auto opts = control::parse_keyval_or_json(raw);
        if (!opts) return fail("fleeced: --blockdev: " + opts.error().message);
        if (Status st = services.blockdev_add(opts.value()); !st)
            return fail("fleeced: --blockdev: " + st.error().message);
    }
    for (const auto& raw : options.bitmap_sidecars) {
        auto args = sidecar_args_from_keyval(raw);
        if (!args) return fail("fleeced: --bitmap-sidecar: " + args.error().message);
        if (Status st = attach_sidecar(*services.graph, args.value()); !st)
            return fail("fleeced: --bitmap-sidecar: " + st.error().message);
    }
    if (Status st = apply_exports(services, options); !st)
        return fail("fleeced: " + st.error().message);

    std::vector<std::string> socket_paths;
    for (const auto& chardev_id : options.monitors) {
        for (const auto& c : options.chardevs) {
            if (c.id != chardev_id) continue;
            auto listener = io::listen_unix(c.path, 0600);
            if (!listener)
                return fail("fleeced: --chardev " + c.id + ": " + listener.error().message);
            qmp.serve(std::move(listener.value()));
            socket_paths.push_back(c.path);
        }
    }

    if (!options.pidfile.empty())
        if (Status st = write_pidfile(options.pidfile); !st)
            return fail("fleeced: " + st.error().message);

    loop.spawn(watch_signals(sigfd->get(), &loop));
    if (options.daemonize) daemonize_ready();
    log::info("fleeced ready");
    loop.run();
    loop.run_until_complete(shut_down(&services));

    for (const auto& path : socket_paths)
        ::unlink(path.c_str());
    if (!options.pidfile.empty()) ::unlink(options.pidfile.c_str());
    std::fflush(nullptr);
    // The monitor coroutines are parked in polls that will never complete; tearing the loop
    // down would only wait for them, so leave without running destructors.
    std::_Exit(0);
}

} // namespace
} // namespace fleece::daemon

int main(int argc, char** argv) {
    using namespace fleece::daemon;
    auto options = parse_options(std::vector<std::string>(argv + 1, argv + argc));
    if (!options) {
        std::fprintf(stderr, "%s\n", options.error().message.c_str());
        return 1;
    }
    if (options->help) {
        std::fputs(usage_text(), stdout);
        return 0;
    }
    if (options->version) {
        std::printf("fleeced version %d.%d.%d (%s)\n", fleece::control::qemu_major,
                    fleece::control::qemu_minor, fleece::control::qemu_micro,
                    fleece::control::package_string);
        return 0;
    }
    if (auto st = check_options(options.value()); !st) {
        std::fprintf(stderr, "%s\n", st.error().message.c_str());
        return 1;
    }
    return run(options.value());
}
