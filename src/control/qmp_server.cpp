#include "control/qmp_server.hpp"

#include "control/json_stream.hpp"
#include "control/qmp_session.hpp"
#include "io/event_loop.hpp"
#include "util/log.hpp"

#include <chrono>
#include <span>
#include <sys/socket.h>

namespace fleece::control {

using nlohmann::json;

void send_message(QmpClient& client, const json& message) {
    if (client.closed) return;
    // Replace invalid UTF-8 instead of throwing: an id echoed back may contain anything.
    std::string text = message.dump(-1, ' ', false, json::error_handler_t::replace) + "\r\n";
    if (client.queued_bytes + text.size() > QmpClient::max_queued_bytes) {
        log::warn("qmp: dropping a client that does not read its replies ({} bytes queued)",
                  client.queued_bytes);
        client.closed = true;
        client.outq.clear();
        client.queued_bytes = 0;
        // Wakes the reader (read returns 0) and a writer blocked on a full socket.
        ::shutdown(client.sock.get(), SHUT_RDWR);
        client.wake.notify_all();
        return;
    }
    client.queued_bytes += text.size();
    client.outq.push_back(std::move(text));
    client.wake.notify_one();
}

QmpServer::QmpServer(const CommandRegistry& registry, CommandContext ctx)
    : registry_(registry), ctx_(std::move(ctx)) {
    ctx_.registry = &registry_;
    ctx_.emit_event = [this](const std::string& name, const json& data) { emit_event(name, data); };
}

io::Task<void> client_writer(std::shared_ptr<QmpClient> client) {
    while (true) {
        while (client->outq.empty() && !client->closed && !client->input_done)
            co_await client->wake.wait();
        if (client->closed || client->outq.empty()) break;
        std::string msg = std::move(client->outq.front());
        client->outq.pop_front();
        client->queued_bytes -= msg.size();
        client->writing = true;
        const int rc = co_await io::write_all(client->sock.get(),
                                              std::as_bytes(std::span(msg.data(), msg.size())));
        client->writing = false;
        if (rc < 0) {
            client->closed = true;
            break;
        }
    }
    client->outq.clear();
    client->queued_bytes = 0;
}

io::Task<void> client_reader(QmpServer* server, std::shared_ptr<QmpClient> client) {
    QmpSession session(server->registry_, server->ctx_);
    JsonStreamSplitter splitter;
    std::vector<StreamItem> items;
    std::vector<std::byte> buf(64 * 1024);
    send_message(*client, qmp_greeting());
    while (!client->closed) {
        const std::int64_t n = co_await io::read_some(client->sock.get(), buf);
        if (n <= 0) break;
        items.clear();
        splitter.feed(std::string_view(reinterpret_cast<const char*>(buf.data()),
                                       static_cast<std::size_t>(n)),
                      items);
        for (auto& item : items) {
            // Plain statements, not ?: : GCC 12 miscompiles co_await inside a conditional
            // expression (the temporary is destroyed twice).
            json reply;
            if (item.kind == StreamItem::Kind::too_large)
                reply = QmpSession::too_large_reply();
            else
                reply = co_await session.handle(std::move(item.text));
            client->command_mode = session.command_mode();
            send_message(*client, reply);
        }
    }
    // The writer still flushes the replies already queued (a client may half-close right
    // after its last request), then ends the connection.
    client->input_done = true;
    client->wake.notify_all();
    server->clients_.erase(client);
}

io::Task<void> accept_loop(QmpServer* server, int listen_fd) {
    while (true) {
        const int fd = co_await io::accept(listen_fd);
        if (fd < 0) {
            log::warn("qmp: accept failed: {}", -fd);
            co_await io::sleep_for(std::chrono::milliseconds(100));
            continue;
        }
        auto client = std::make_shared<QmpClient>(fd);
        server->clients_.insert(client);
        io::EventLoop::current().spawn(client_writer(client));
        io::EventLoop::current().spawn(client_reader(server, client));
    }
}

void QmpServer::serve(io::FileDescriptor listener) {
    const int fd = listener.get();
    listeners_.push_back(std::move(listener));
    io::EventLoop::current().spawn(accept_loop(this, fd));
}

void QmpServer::emit_event(const std::string& name, const json& data) {
    const auto now = std::chrono::system_clock::now().time_since_epoch();
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(now).count();
    json event{{"event", name},
               {"data", data},
               {"timestamp", {{"seconds", us / 1000000}, {"microseconds", us % 1000000}}}};
    for (const auto& client : clients_)
        if (client->command_mode) send_message(*client, event);
}

bool QmpServer::idle() const {
    for (const auto& client : clients_)
        if (!client->closed && (!client->outq.empty() || client->writing)) return false;
    return true;
}

} // namespace fleece::control
