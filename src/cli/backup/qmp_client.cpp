#include "cli/backup/qmp_client.hpp"

namespace fleece::cli {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

QmpClient::QmpClient(const std::string& socket_path, double reply_timeout_s)
    : conn_(socket_path), reply_timeout_(static_cast<long>(reply_timeout_s * 1000)) {
    if (!conn_.receive(Clock::now() + reply_timeout_))
        throw std::runtime_error("no QMP greeting from " + socket_path);
    execute("qmp_capabilities");
}

json QmpClient::execute(const std::string& command, const json& arguments) {
    json req;
    req["execute"] = command;
    req["id"] = ++next_id_;
    if (!arguments.empty()) req["arguments"] = arguments;
    conn_.send_line(req.dump());
    const auto deadline = Clock::now() + reply_timeout_;
    while (true) {
        auto msg = conn_.receive(deadline);
        if (!msg) {
            if (Clock::now() < deadline) continue; // interrupted by a signal: keep waiting
            throw std::runtime_error("fleeced did not answer '" + command + "' in time");
        }
        if (msg->contains("event")) {
            events_.push_back(std::move(*msg));
            continue;
        }
        if (msg->contains("error")) {
            const json& e = (*msg)["error"];
            throw QmpError(e.value("class", "GenericError"), e.value("desc", "unknown error"));
        }
        return msg->value("return", json::object());
    }
}

std::optional<json> QmpClient::next_event(std::chrono::milliseconds wait) {
    if (events_.empty()) {
        auto msg = conn_.receive(Clock::now() + wait);
        if (!msg) return std::nullopt;
        if (!msg->contains("event")) return std::nullopt; // stray reply: nothing is pending
        return msg;
    }
    json e = std::move(events_.front());
    events_.pop_front();
    return e;
}

} // namespace fleece::cli
