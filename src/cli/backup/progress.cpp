#include "cli/backup/progress.hpp"

#include <cstdio>
#include <iostream>
#include <unistd.h>

namespace fleece::cli {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string human_bytes(double bytes) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024 && u < 4) {
        bytes /= 1024;
        ++u;
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
    return buf;
}

namespace {
std::string human_duration(double s) {
    if (s < 0) return "--:--";
    const long t = static_cast<long>(s + 0.5);
    char buf[32];
    if (t >= 3600)
        std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else
        std::snprintf(buf, sizeof buf, "%02ld:%02ld", t / 60, t % 60);
    return buf;
}
double avg_us(const ProgressSample& s) {
    return s.cbw_count
               ? static_cast<double>(s.cbw_total_ns) / 1e3 / static_cast<double>(s.cbw_count)
               : 0;
}

// "1.2 ms", "850 us", "3.1 s"
std::string human_latency(double us) {
    char buf[32];
    if (us >= 1e6)
        std::snprintf(buf, sizeof buf, "%.1f s", us / 1e6);
    else if (us >= 1e3)
        std::snprintf(buf, sizeof buf, "%.1f ms", us / 1e3);
    else
        std::snprintf(buf, sizeof buf, "%.0f us", us);
    return buf;
}

// The end of a progress line: what fleecing costs the guest, and a target that is away.
std::string status_tail(const ProgressSample& s) {
    std::string t = "CBW " + std::to_string(s.cbw_count);
    if (s.cbw_count)
        t += " (avg " + human_latency(avg_us(s)) + ", max " +
             human_latency(static_cast<double>(s.cbw_max_ns) / 1e3) + ")";
    if (s.cbw_errors) t += " " + std::to_string(s.cbw_errors) + " failed";
    // Why the rate fell to nothing: the job waits for its target (--target-reconnect).
    if (s.target_away_ms >= 0)
        t += "  TARGET AWAY " + human_duration(static_cast<double>(s.target_away_ms) / 1e3) +
             ", waiting for it";
    return t;
}
} // namespace

json ProgressReporter::cbw_json() const {
    return json{{"cbw-count", last_.cbw_count},
                {"cbw-errors", last_.cbw_errors},
                {"cbw-latency-avg-us", avg_us(last_)},
                {"cbw-latency-max-us", static_cast<double>(last_.cbw_max_ns) / 1e3}};
}

ProgressReporter::ProgressReporter(bool json_lines)
    : json_(json_lines), tty_(!json_lines && ::isatty(STDOUT_FILENO)), start_(Clock::now()),
      last_plain_(start_) {}

double ProgressReporter::elapsed_s() const {
    return std::chrono::duration<double>(Clock::now() - start_).count();
}

void ProgressReporter::emit_json(json j) {
    j["time"] = elapsed_s();
    std::cout << j.dump() << std::endl;
}

void ProgressReporter::finish_bar() {
    if (bar_drawn_) std::cout << "\n";
    bar_drawn_ = false;
}

void ProgressReporter::step(const std::string& event, const std::string& text, json details) {
    if (json_) {
        details["event"] = event;
        details["message"] = text;
        emit_json(std::move(details));
        return;
    }
    finish_bar();
    std::cout << text << std::endl;
}

void ProgressReporter::warning(const std::string& text) {
    if (json_) {
        json j;
        j["event"] = "warning";
        j["message"] = text;
        emit_json(std::move(j));
        return;
    }
    finish_bar();
    std::cerr << "warning: " << text << std::endl;
}

// Rate over the last ~5 s: responsive to a target that slows down, not jumpy.
double ProgressReporter::rate_bps(Clock::time_point now, std::uint64_t done) {
    window_.emplace_back(now, done);
    while (window_.size() > 2 && now - window_.front().first > std::chrono::seconds(5))
        window_.pop_front();
    const double dt = std::chrono::duration<double>(now - window_.front().first).count();
    if (dt <= 0) return 0;
    return static_cast<double>(done - window_.front().second) / dt;
}

void ProgressReporter::progress(const ProgressSample& s) {
    const auto now = Clock::now();
    peak_fleecing_ = std::max(peak_fleecing_, s.fleecing_bytes);
    last_ = s;
    const double rate = rate_bps(now, s.done);
    const double eta =
        rate > 0 ? static_cast<double>(s.total - std::min(s.total, s.done)) / rate : -1;
    if (json_) {
        json j;
        j["event"] = "progress";
        j["offset"] = s.done;
        j["len"] = s.total;
        j["rate"] = static_cast<std::uint64_t>(rate);
        j["eta"] = eta;
        j["fleecing-bytes"] = s.fleecing_bytes;
        if (s.target_away_ms >= 0) j["target-away-s"] = static_cast<double>(s.target_away_ms) / 1e3;
        j.update(cbw_json());
        emit_json(std::move(j));
        return;
    }
    const double frac = s.total ? static_cast<double>(s.done) / static_cast<double>(s.total) : 0;
    char line[512];
    if (tty_) {
        std::string bar(30, ' ');
        for (int i = 0; i < static_cast<int>(frac * 30); ++i)
            bar[static_cast<std::size_t>(i)] = '#';
        std::snprintf(
            line, sizeof line, "\r[%s] %5.1f%%  %s / %s  %s/s  ETA %s  fleecing %s  %s \033[K",
            bar.c_str(), frac * 100, human_bytes(static_cast<double>(s.done)).c_str(),
            human_bytes(static_cast<double>(s.total)).c_str(), human_bytes(rate).c_str(),
            human_duration(eta).c_str(), human_bytes(static_cast<double>(s.fleecing_bytes)).c_str(),
            status_tail(s).c_str());
        std::cout << line << std::flush;
        bar_drawn_ = true;
        return;
    }
    if (now - last_plain_ < std::chrono::seconds(2)) return;
    last_plain_ = now;
    std::snprintf(line, sizeof line, "progress %5.1f%%  %s / %s  %s/s  fleecing %s  %s", frac * 100,
                  human_bytes(static_cast<double>(s.done)).c_str(),
                  human_bytes(static_cast<double>(s.total)).c_str(), human_bytes(rate).c_str(),
                  human_bytes(static_cast<double>(s.fleecing_bytes)).c_str(),
                  status_tail(s).c_str());
    std::cout << line << std::endl;
}

void ProgressReporter::summary(bool ok, const std::string& text, json details) {
    if (json_) {
        details["event"] = "summary";
        details["ok"] = ok;
        details["message"] = text;
        emit_json(std::move(details));
        return;
    }
    finish_bar();
    (ok ? std::cout : std::cerr) << text << std::endl;
}

} // namespace fleece::cli
