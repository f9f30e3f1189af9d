#include "cli/backup/qmp_client.hpp"

#include <cerrno>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace fleece::cli {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

QmpClient::QmpClient(const std::string& socket_path, double reply_timeout_s)
    : reply_timeout_(static_cast<long>(reply_timeout_s * 1000)) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (socket_path.size() >= sizeof addr.sun_path)
        throw std::runtime_error("QMP socket path is too long: " + socket_path);
    socket_path.copy(addr.sun_path, socket_path.size());
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0 || ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
        throw std::runtime_error("cannot connect to the QMP socket " + socket_path +
                                 " (is fleeced running?)");
    if (!receive(Clock::now() + reply_timeout_))
        throw std::runtime_error("no QMP greeting from " + socket_path);
    execute("qmp_capabilities");
}

QmpClient::~QmpClient() {
    if (fd_ >= 0) ::close(fd_);
}

void QmpClient::send_line(const std::string& text) {
    const std::string data = text + "\n";
    std::size_t done = 0;
    while (done < data.size()) {
        const ssize_t n = ::send(fd_, data.data() + done, data.size() - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) throw std::runtime_error("the QMP connection to fleeced was closed");
        done += static_cast<std::size_t>(n);
    }
}

std::optional<json> QmpClient::receive(Clock::time_point deadline) {
    while (true) {
        const auto nl = buf_.find('\n');
        if (nl != std::string::npos) {
            std::string line = buf_.substr(0, nl);
            buf_.erase(0, nl + 1);
            if (line.find_first_not_of(" \r\t") == std::string::npos) continue;
            return json::parse(line);
        }
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) return std::nullopt;
        pollfd p{fd_, POLLIN, 0};
        const int r = ::poll(&p, 1, static_cast<int>(left.count()));
        // A signal (Ctrl-C) interrupts the wait: report "nothing yet" so the caller can react.
        if (r < 0 && errno == EINTR) return std::nullopt;
        if (r <= 0) continue;
        char tmp[65536];
        const ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) throw std::runtime_error("the QMP connection to fleeced was closed");
        buf_.append(tmp, static_cast<std::size_t>(n));
    }
}

json QmpClient::execute(const std::string& command, const json& arguments) {
    json req;
    req["execute"] = command;
    req["id"] = ++next_id_;
    if (!arguments.empty()) req["arguments"] = arguments;
    send_line(req.dump());
    const auto deadline = Clock::now() + reply_timeout_;
    while (true) {
        auto msg = receive(deadline);
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
        auto msg = receive(Clock::now() + wait);
        if (!msg) return std::nullopt;
        if (!msg->contains("event")) return std::nullopt; // stray reply: nothing is pending
        return msg;
    }
    json e = std::move(events_.front());
    events_.pop_front();
    return e;
}

} // namespace fleece::cli
