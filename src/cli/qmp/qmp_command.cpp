// fleece qmp: command-line QMP client. Blocking sockets on purpose: it sends a handful of
// messages and exits, so it needs none of the daemon's event loop.

#include "cli/qmp/qmp_command.hpp"

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <poll.h>
#include <string>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace fleece::cli {
namespace {

class Connection {
  public:
    explicit Connection(const std::string& path) {
        fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        if (fd_ < 0 || path.size() >= sizeof addr.sun_path)
            throw std::runtime_error("cannot connect to " + path);
        path.copy(addr.sun_path, path.size());
        if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
            throw std::runtime_error("cannot connect to " + path);
    }
    ~Connection() { ::close(fd_); }

    void send(const std::string& text) {
        std::string data = text + "\n";
        std::size_t done = 0;
        while (done < data.size()) {
            const ssize_t n = ::send(fd_, data.data() + done, data.size() - done, MSG_NOSIGNAL);
            if (n <= 0) throw std::runtime_error("connection closed while sending");
            done += static_cast<std::size_t>(n);
        }
    }

    // Next message; nullopt when the deadline passed.
    std::optional<json> receive(Clock::time_point deadline) {
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
            if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
            char tmp[65536];
            const ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
            if (n <= 0) throw std::runtime_error("connection closed by the daemon");
            buf_.append(tmp, static_cast<std::size_t>(n));
        }
    }

  private:
    int fd_ = -1;
    std::string buf_;
};

struct Runner {
    Connection& conn;
    Clock::time_point deadline;
    std::string wait_event;
    bool seen_event = false;

    void print_event(const json& msg) {
        std::cout << msg.dump() << "\n";
        if (!wait_event.empty() && msg.value("event", "") == wait_event) seen_event = true;
    }
    // Reads until a reply (not an event) arrives.
    json reply() {
        while (true) {
            auto msg = conn.receive(deadline);
            if (!msg) throw std::runtime_error("timed out waiting for a reply");
            if (msg->contains("event"))
                print_event(*msg);
            else
                return *msg;
        }
    }
    // Prints an error reply to stderr; returns false for errors.
    static bool report(const json& r) {
        if (r.contains("error")) {
            std::cerr << "error: " << r["error"].value("class", "?") << ": "
                      << r["error"].value("desc", "") << "\n";
            return false;
        }
        return true;
    }
};

int run_qmp(const std::string& socket_path, const std::string& command,
            const std::string& json_args, const std::string& script, const std::string& wait_event,
            double timeout) {
    Connection conn(socket_path);
    Runner r{conn, Clock::now() + std::chrono::milliseconds(static_cast<long>(timeout * 1000)),
             wait_event};
    r.reply(); // greeting
    conn.send(R"({"execute":"qmp_capabilities"})");
    if (!Runner::report(r.reply())) return 1;
    bool ok = true;
    if (!script.empty()) {
        std::ifstream file;
        std::istream* in = &std::cin;
        if (script != "-") {
            file.open(script);
            if (!file) throw std::runtime_error("cannot open " + script);
            in = &file;
        }
        std::string line;
        while (std::getline(*in, line)) {
            if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
            conn.send(line);
            json reply = r.reply();
            std::cout << reply.dump() << "\n";
            ok = Runner::report(reply) && ok;
        }
    } else if (!command.empty()) {
        json req{{"execute", command}};
        if (!json_args.empty()) req["arguments"] = json::parse(json_args);
        conn.send(req.dump());
        json reply = r.reply();
        if (Runner::report(reply))
            std::cout << reply["return"].dump(2) << "\n";
        else
            ok = false;
    }
    while (!wait_event.empty() && !r.seen_event) {
        auto msg = conn.receive(r.deadline);
        if (!msg) {
            std::cerr << "error: timed out waiting for event " << wait_event << "\n";
            return 1;
        }
        if (msg->contains("event")) r.print_event(*msg);
    }
    return ok ? 0 : 1;
}

} // namespace

void add_qmp_command(CLI::App& app, std::function<int()>* action) {
    auto* qmp = app.add_subcommand("qmp", "Send QMP commands (capabilities are negotiated first)");
    struct Args {
        std::string socket_path, command, json_args, script, wait_event;
        double timeout = 30;
    };
    auto a = std::make_shared<Args>();
    qmp->add_option("--socket", a->socket_path, "QMP unix socket")->required();
    qmp->add_option("command", a->command, "Command to execute");
    qmp->add_option("args", a->json_args, "Arguments as a JSON object");
    qmp->add_option("--script", a->script, "File of raw QMP messages, one per line ('-' = stdin)");
    qmp->add_option("--wait-event", a->wait_event, "Wait for this event before exiting");
    qmp->add_option("--timeout", a->timeout, "Seconds to wait for replies and events");
    qmp->callback([a, action] {
        *action = [a] {
            return run_qmp(a->socket_path, a->command, a->json_args, a->script, a->wait_event,
                           a->timeout);
        };
    });
}

} // namespace fleece::cli
