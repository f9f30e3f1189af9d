#pragma once
// How `fleece backup` tells the user what happens: a redrawn progress bar on a terminal,
// plain lines otherwise, or JSON lines (--json) for scripts.

#include <chrono>
#include <cstdint>
#include <deque>
#include <nlohmann/json.hpp>
#include <string>

namespace fleece::cli {

struct ProgressSample {
    std::uint64_t done = 0, total = 0;
    std::uint64_t fleecing_bytes = 0; // allocated size of the fleecing image
    // Guest requests that waited for a copy-before-write, and their wait (x-cbw-stats).
    std::uint64_t cbw_count = 0, cbw_errors = 0;
    std::uint64_t cbw_total_ns = 0, cbw_max_ns = 0;
    // How long an NBD target has been unreachable (its node's x-disconnected-for-ms); -1
    // while it is connected.
    std::int64_t target_away_ms = -1;
};

class ProgressReporter {
  public:
    explicit ProgressReporter(bool json_lines);

    // A step of the backup ("snapshot", "cleanup", ...) with details; `text` for humans.
    void step(const std::string& event, const std::string& text,
              nlohmann::json details = nlohmann::json::object());
    void warning(const std::string& text);
    void progress(const ProgressSample& s);
    // Ends the bar line; called before any other output once progress was drawn.
    void finish_bar();
    void summary(bool ok, const std::string& text, nlohmann::json details);

    double elapsed_s() const;
    std::uint64_t peak_fleecing_bytes() const { return peak_fleecing_; }
    // The last sample's copy-before-write figures, for the summary.
    nlohmann::json cbw_json() const;

  private:
    void emit_json(nlohmann::json j);
    double rate_bps(std::chrono::steady_clock::time_point now, std::uint64_t done);

    bool json_;
    bool tty_;
    bool bar_drawn_ = false;
    std::chrono::steady_clock::time_point start_, last_plain_;
    std::deque<std::pair<std::chrono::steady_clock::time_point, std::uint64_t>> window_;
    std::uint64_t peak_fleecing_ = 0;
    ProgressSample last_;
};

std::string human_bytes(double bytes);

} // namespace fleece::cli
