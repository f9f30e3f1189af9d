// Feeds arbitrary bytes through the QMP stream splitter and session (with the built-in
// commands), the path every monitor client's input takes. Builtins never suspend, so one
// long-lived loop drives the tasks synchronously.

#include "control/builtin_commands.hpp"
#include "control/json_stream.hpp"
#include "control/qmp_session.hpp"
#include "io/event_loop.hpp"

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

using namespace fleece;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static io::EventLoop loop(io::BackendKind::threads);
    static control::CommandRegistry registry = [] {
        control::CommandRegistry r;
        control::register_builtin_commands(r);
        return r;
    }();
    control::CommandContext ctx;
    ctx.request_quit = [] {};
    control::QmpSession session(registry, ctx);
    // A small limit so the fuzzer reaches the oversize path with short inputs.
    control::JsonStreamSplitter splitter(4096);
    std::vector<control::StreamItem> items;
    splitter.feed(std::string_view(reinterpret_cast<const char*>(data), size), items);
    for (auto& item : items) {
        if (item.kind != control::StreamItem::Kind::message) continue;
        nlohmann::json reply = loop.run_until_complete(session.handle(std::move(item.text)));
        (void)reply.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
    return 0;
}
