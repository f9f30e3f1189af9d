#pragma once
// A blocking QMP client for `fleece backup`: commands and replies in order, events queued
// on the side so the caller can poll them between commands (over a QmpConnection).

#include "cli/common/qmp_connection.hpp"

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

    // Sends a command and returns its "return" value; throws QmpError for an error reply
    // and std::runtime_error when the daemon goes away or does not answer in time.
    nlohmann::json execute(const std::string& command,
                           const nlohmann::json& arguments = nlohmann::json::object());

    // The next event, waiting up to `wait` for one to arrive.
    std::optional<nlohmann::json> next_event(std::chrono::milliseconds wait);

  private:
    QmpConnection conn_;
    std::deque<nlohmann::json> events_;
    std::chrono::milliseconds reply_timeout_;
    unsigned next_id_ = 0;
};

} // namespace fleece::cli
