#include "cli/common/qmp_connection.hpp"

#include <cerrno>
#include <poll.h>
#include <stdexcept>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace fleece::cli {

using nlohmann::json;

QmpConnection::QmpConnection(const std::string& socket_path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (socket_path.size() >= sizeof addr.sun_path)
        throw std::runtime_error("QMP socket path is too long: " + socket_path);
    socket_path.copy(addr.sun_path, socket_path.size());
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0 || ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
        throw std::runtime_error("cannot connect to the QMP socket " + socket_path +
                                 " (is fleeced running?)");
}

QmpConnection::~QmpConnection() {
    if (fd_ >= 0) ::close(fd_);
}

void QmpConnection::send_line(const std::string& text) {
    const std::string data = text + "\n";
    std::size_t done = 0;
    while (done < data.size()) {
        const ssize_t n = ::send(fd_, data.data() + done, data.size() - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) throw std::runtime_error("the QMP connection to fleeced was closed");
        done += static_cast<std::size_t>(n);
    }
}

std::optional<json> QmpConnection::receive(Clock::time_point deadline) {
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
        if (r < 0 && errno == EINTR) return std::nullopt;
        if (r <= 0) continue;
        char tmp[65536];
        const ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) throw std::runtime_error("the QMP connection to fleeced was closed");
        buf_.append(tmp, static_cast<std::size_t>(n));
    }
}

} // namespace fleece::cli
