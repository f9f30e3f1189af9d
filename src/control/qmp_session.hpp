#pragma once
// One monitor connection's protocol state, independent of sockets so the fuzzer and the unit
// tests can drive it: turns one JSON text into the reply to send (if any), enforcing
// capabilities negotiation and the QMP request shape before dispatching.

#include "control/command_registry.hpp"
#include "io/task.hpp"

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace fleece::control {

// The greeting sent when a client connects.
nlohmann::json qmp_greeting();
// {"error": {"class": ..., "desc": ...}} plus "id" when the request had one.
nlohmann::json qmp_error(const Error& error, const nlohmann::json* id = nullptr);

class QmpSession {
  public:
    QmpSession(const CommandRegistry& registry, CommandContext ctx)
        : registry_(&registry), ctx_(std::move(ctx)) {}

    bool command_mode() const { return command_mode_; }
    // Handles one complete JSON text. The session must outlive the returned task.
    io::Task<nlohmann::json> handle(std::string text);
    // The reply for a message that exceeded the size limit.
    static nlohmann::json too_large_reply();

  private:
    io::Task<nlohmann::json> execute(nlohmann::json request);

    const CommandRegistry* registry_;
    CommandContext ctx_;
    bool command_mode_ = false;
};

} // namespace fleece::control
