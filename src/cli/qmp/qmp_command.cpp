// fleece qmp: command-line QMP client. It sends a handful of messages over a blocking
// QmpConnection and exits.

#include "cli/qmp/qmp_command.hpp"

#include "cli/common/qmp_connection.hpp"

#include <chrono>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace fleece::cli {
namespace {

struct Runner {
    QmpConnection& conn;
    Clock::time_point deadline;
    std::string wait_event;
    bool seen_event = false;

    // Standard output carries only what was asked for (replies, and the awaited event), so
    // that it stays parseable by a script: other events that happen to arrive (a backup
    // job's status changes while a script polls query-block-exports) go to standard error.
    void print_event(const json& msg) {
        if (!wait_event.empty() && msg.value("event", "") == wait_event) {
            std::cout << msg.dump() << "\n";
            seen_event = true;
        } else {
            std::cerr << msg.dump() << "\n";
        }
    }
    // Reads until a reply (not an event) arrives.
    json reply() {
        while (true) {
            auto msg = conn.receive(deadline);
            if (!msg && Clock::now() < deadline) continue; // a signal interrupted the wait
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
    QmpConnection conn(socket_path);
    Runner r{conn, Clock::now() + std::chrono::milliseconds(static_cast<long>(timeout * 1000)),
             wait_event};
    r.reply(); // greeting
    conn.send_line(R"({"execute":"qmp_capabilities"})");
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
            conn.send_line(line);
            json reply = r.reply();
            std::cout << reply.dump() << "\n";
            ok = Runner::report(reply) && ok;
        }
    } else if (!command.empty()) {
        json req{{"execute", command}};
        if (!json_args.empty()) req["arguments"] = json::parse(json_args);
        conn.send_line(req.dump());
        json reply = r.reply();
        if (Runner::report(reply))
            std::cout << reply["return"].dump(2) << "\n";
        else
            ok = false;
    }
    while (!wait_event.empty() && !r.seen_event) {
        auto msg = conn.receive(r.deadline);
        if (!msg && Clock::now() < r.deadline) continue; // a signal interrupted the wait
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
    qmp->add_option("--wait-event", a->wait_event,
                    "Wait for this event before exiting and print it (other events go to stderr)");
    qmp->add_option("--timeout", a->timeout, "Seconds to wait for replies and events");
    qmp->callback([a, action] {
        *action = [a] {
            return run_qmp(a->socket_path, a->command, a->json_args, a->script, a->wait_event,
                           a->timeout);
        };
    });
}

} // namespace fleece::cli
