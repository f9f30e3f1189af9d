#pragma once
// The line transport of a QMP client: a blocking unix-socket connection that sends one
// JSON message per line and reads messages back with a deadline. Blocking on purpose: the
// CLI drives one conversation and needs none of the daemon's event loop. `fleece qmp`
// uses it raw (it relays a script's lines); `fleece backup` wraps it in QmpClient.

#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace fleece::cli {

class QmpConnection {
  public:
    using Clock = std::chrono::steady_clock;

    // Connects; throws std::runtime_error naming the socket (and asking whether fleeced
    // runs) when it cannot.
    explicit QmpConnection(const std::string& socket_path);
    ~QmpConnection();
    QmpConnection(const QmpConnection&) = delete;
    QmpConnection& operator=(const QmpConnection&) = delete;

    // Sends `text` and a newline; throws when the daemon closed the connection.
    void send_line(const std::string& text);
    // The next message. nullopt when `deadline` passed first, or when a signal (Ctrl-C)
    // interrupted the wait, so the caller can react; throws when the daemon closed the
    // connection or sent a line that is not JSON.
    std::optional<nlohmann::json> receive(Clock::time_point deadline);

  private:
    int fd_ = -1;
    std::string buf_;
};

} // namespace fleece::cli
