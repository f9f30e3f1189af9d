#pragma once
// QMP monitors on unix sockets. Each connection runs two coroutines: a reader that splits
// and executes requests in order, and a writer that drains the connection's outgoing queue,
// so events broadcast while a command runs are never interleaved inside a reply.

#include "control/command_registry.hpp"
#include "io/socket.hpp"
#include "io/sync.hpp"

#include <deque>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

namespace fleece::control {

struct QmpClient {
    // A client that stops reading is dropped once this much output waits for it, so it
    // cannot make the daemon's memory grow without bound (events keep coming).
    static constexpr std::size_t max_queued_bytes = 4u << 20;

    explicit QmpClient(int fd) : sock(fd) {}
    io::FileDescriptor sock;
    std::deque<std::string> outq;
    std::size_t queued_bytes = 0;
    io::WaitQueue wake; // writer waits here for outq or closed
    bool closed = false;
    // The client ended its input (half-close): the writer still sends what is queued, then
    // the connection ends, so `echo '{...}' | socat - UNIX:...` gets its replies.
    bool input_done = false;
    bool writing = false;
    bool command_mode = false; // only clients in command mode receive events
};

class QmpServer {
  public:
    // `ctx` is copied into every session; its emit_event is pointed at this server.
    QmpServer(const CommandRegistry& registry, CommandContext ctx);

    // Starts accepting on `listener` (detached on the current loop). The server must
    // outlive the loop's run().
    void serve(io::FileDescriptor listener);
    // Sends an event to every client in command mode.
    void emit_event(const std::string& name, const nlohmann::json& data);
    // True when no client has unsent output (used to let the quit reply go out).
    bool idle() const;
    std::size_t client_count() const { return clients_.size(); }

  private:
    friend io::Task<void> accept_loop(QmpServer* server, int listen_fd);
    friend io::Task<void> client_reader(QmpServer* server, std::shared_ptr<QmpClient> client);
    friend io::Task<void> client_writer(std::shared_ptr<QmpClient> client);

    const CommandRegistry& registry_;
    CommandContext ctx_;
    std::vector<io::FileDescriptor> listeners_;
    std::set<std::shared_ptr<QmpClient>> clients_;
};

// Queues one message (serialized with a CRLF, like QEMU) on a client.
void send_message(QmpClient& client, const nlohmann::json& message);

} // namespace fleece::control
