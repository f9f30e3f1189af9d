// libFuzzer target for a whole QMP monitor session with the daemon's real command table:
// bytes arrive in chunks as a socket would deliver them, the stream splitter cuts them into
// JSON texts, the session enforces capabilities negotiation and the request envelope, and
// commands dispatch into a fresh block graph, job manager and NBD server state (blockdev-
// add/del, bitmaps, transactions, backup jobs, exports ...). Every input starts from an
// empty daemon, so a crash reproduces from its input alone.
//
// Checked on every reply: it is an object with exactly one of "return" / "error" (plus the
// request's "id", echoed unchanged), errors carry a string class and description, and
// before negotiation nothing but qmp_capabilities succeeds. Violations abort.
//
// The fuzzer must not touch the host: members naming host resources (filename, path, dir,
// host, port, fd) are renamed before dispatch, so file nodes, NBD listeners, TLS
// directories and bitmap sidecars are refused as unknown or missing arguments instead.
//
// Input layout: byte 0 chooses the setup, the rest is the client's byte stream.
//   bit 0: send qmp_capabilities first (so short inputs reach the commands)
//   bits 1-3: read size in which the stream is fed (1, 2, 3, 7, 16, 64, 512, all)

#include "block/graph.hpp"
#include "control/builtin_commands.hpp"
#include "control/json_stream.hpp"
#include "control/qmp_session.hpp"
#include "daemon/bitmap_commands.hpp"
#include "daemon/export_commands.hpp"
#include "daemon/graph_commands.hpp"
#include "daemon/job_commands.hpp"
#include "daemon/object_commands.hpp"
#include "daemon/services.hpp"
#include "io/event_loop.hpp"
#include "io/tls_creds.hpp"
#include "jobs/job_manager.hpp"
#include "nbd/server.hpp"
#include "util/log.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

using namespace fleece;
using nlohmann::json;

namespace {

void require(bool ok, const char* what, const json& detail) {
    if (ok) return;
    std::fprintf(stderr, "qmp_session_fuzz: %s: %s\n", what,
                 detail.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
    std::abort();
}

// Renames members that would let a command reach host files or sockets.
bool defuse(json& v) {
    bool changed = false;
    if (v.is_object()) {
        static const char* const host_keys[] = {"filename", "path", "dir", "host", "port", "fd"};
        for (const char* key : host_keys) {
            auto it = v.find(key);
            if (it == v.end()) continue;
            json moved = std::move(*it);
            v.erase(key);
            v[std::string("x-fuzz-") + key] = std::move(moved);
            changed = true;
        }
        for (auto& [key, member] : v.items())
            changed = defuse(member) || changed;
    } else if (v.is_array()) {
        for (auto& member : v)
            changed = defuse(member) || changed;
    }
    return changed;
}

struct Daemon {
    block::Graph graph;
    jobs::JobManager jobs;
    daemon::Services services;
    Daemon(io::EventLoop& loop) {
        services.loop = &loop;
        services.graph = &graph;
        services.jobs = &jobs;
    }
};

const control::CommandRegistry& real_registry() {
    // The handlers reach the daemon through CommandContext::services; only the --blockdev
    // hook captures the Services given here, and the fuzzer never calls it.
    static daemon::Services unused;
    static const control::CommandRegistry registry = [] {
        control::CommandRegistry r;
        control::register_builtin_commands(r);
        daemon::register_graph_commands(r, unused);
        daemon::register_export_commands(r);
        daemon::register_job_commands(r);
        daemon::register_bitmap_commands(r);
        daemon::register_object_commands(r);
        return r;
    }();
    return registry;
}

void check_reply(const json& request, bool parsed, const json& reply, bool negotiated_before,
                 bool is_caps) {
    require(reply.is_object(), "reply is an object", reply);
    const bool ok = reply.contains("return");
    require(ok != reply.contains("error"), "exactly one of return/error", reply);
    for (const auto& [key, value] : reply.items())
        require(key == "return" || key == "error" || key == "id", "no other members", reply);
    if (!ok) {
        const json& e = reply["error"];
        require(e.is_object() && e.size() == 2 && e.contains("class") && e["class"].is_string() &&
                    e.contains("desc") && e["desc"].is_string(),
                "error has class and desc", reply);
    }
    if (parsed && request.is_object() && request.contains("id"))
        require(reply.contains("id") && reply["id"] == request["id"], "id echoed", reply);
    else
        require(!reply.contains("id"), "no id without one in the request", reply);
    if (!negotiated_before && !is_caps) require(!ok, "nothing succeeds before negotiation", reply);
}

io::Task<void> shut_down(Daemon* d) {
    co_await d->jobs.cancel_all();
    if (d->services.nbd_server) {
        co_await d->services.nbd_server->stop();
        d->services.nbd_server.reset();
    }
    co_await d->graph.close_all();
}

std::size_t read_size(std::uint8_t setup) {
    static const std::size_t sizes[] = {1, 2, 3, 7, 16, 64, 512, ~std::size_t(0)};
    return sizes[(setup >> 1) & 7];
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static io::EventLoop loop(io::BackendKind::threads);
    static const bool quiet = [] {
        log::set_level(log::Level::error); // failing commands are expected, by the thousand
        return true;
    }();
    (void)quiet;
    const control::CommandRegistry& registry = real_registry();
    // FLEECE_FUZZ_VERBOSE=1 prints every reply (to check what a seed reaches).
    static const bool verbose = std::getenv("FLEECE_FUZZ_VERBOSE") != nullptr;
    if (size == 0) return 0;
    const std::uint8_t setup = data[0];
    std::string stream(reinterpret_cast<const char*>(data + 1), size - 1);
    if (setup & 1) stream.insert(0, "{\"execute\": \"qmp_capabilities\"}\n");

    Daemon d(loop);
    control::CommandContext ctx;
    ctx.registry = &registry;
    ctx.services = &d.services;
    ctx.request_quit = [] {};
    ctx.emit_event = [](const std::string& name, const json& event_data) {
        require(!name.empty(), "event has a name", event_data);
        (void)event_data.dump(-1, ' ', false, json::error_handler_t::replace);
    };
    control::QmpSession session(registry, ctx);
    // A small limit so short inputs reach the oversize path.
    control::JsonStreamSplitter splitter(4096);
    std::vector<control::StreamItem> items;
    const std::size_t chunk = read_size(setup);
    for (std::size_t pos = 0; pos < stream.size(); pos += chunk) {
        items.clear();
        splitter.feed(std::string_view(stream).substr(pos, chunk), items);
        for (auto& item : items) {
            if (item.kind == control::StreamItem::Kind::too_large) {
                const json reply = control::QmpSession::too_large_reply();
                check_reply(json(), false, reply, true, false);
                continue;
            }
            json request = json::parse(control::qemu_json_to_standard(item.text), nullptr, false);
            const bool parsed = !request.is_discarded();
            if (parsed && defuse(request))
                item.text = request.dump(-1, ' ', false, json::error_handler_t::replace);
            const bool negotiated_before = session.command_mode();
            const char* exec_key = parsed && request.is_object() && request.contains("exec-oob")
                                       ? "exec-oob"
                                       : "execute";
            const bool is_caps = parsed && request.is_object() &&
                                 request.value(exec_key, json()) == "qmp_capabilities";
            const json reply = loop.run_until_complete(session.handle(std::move(item.text)));
            check_reply(request, parsed, reply, negotiated_before, is_caps);
            const std::string text = reply.dump(-1, ' ', false, json::error_handler_t::replace);
            if (verbose) std::fprintf(stderr, "%s\n", text.substr(0, 300).c_str());
        }
    }
    loop.run_until_complete(shut_down(&d));
    io::tls_creds_objects().clear();
    return 0;
}
