#pragma once
// A blocking QMP client for `fleece backup`: commands and replies in order, events queued
// on the side so the caller can poll them between commands. Blocking sockets on purpose:
// the CLI drives one conversation and needs none of the daemon's event loop.

#include <chrono>
#include <deque>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>

namespace fleece::cli {

// An error reply from the daemon: class and desc as QMP sent them.
class QmpError : public std::runtime_error {
  public:
    QmpError(std::string cls, std::string desc)
        : std::runtime_error(desc), error_class(std::move(cls)) {}
    std::string error_class;
};

class QmpClient {
  public:
    // Connects, reads the greeting and negotiates capabilities; throws on failure.
    explicit QmpClient(const std::string& socket_path, double reply_timeout_s = 60);
    ~QmpClient();
    QmpClient(const QmpClient&) = delete;
    QmpClient& operator=(const QmpClient&) = delete;

    // Sends a command and returns its "return" value; throws QmpError for an error reply
    // and std::runtime_error when the daemon goes away or does not answer in time.
    nlohmann::json execute(const std::string& command,
                           const nlohmann::json& arguments = nlohmann::json::object());

    // The next event, waiting up to `wait` for one to arrive.
    std::optional<nlohmann::json> next_event(std::chrono::milliseconds wait);

  private:
    void send_line(const std::string& text);
    // Reads one message; nullopt when `deadline` passed first.
    std::optional<nlohmann::json> receive(std::chrono::steady_clock::time_point deadline);

    int fd_ = -1;
    std::string buf_;
    std::deque<nlohmann::json> events_;
    std::chrono::milliseconds reply_timeout_;
    unsigned next_id_ = 0;
};

} // namespace fleece::cli
