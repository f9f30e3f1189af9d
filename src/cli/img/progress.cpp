#include "cli/img/progress.hpp"

#include <cstdio>

namespace fleece::cli::img {

Progress::Progress(bool enabled, std::uint64_t total) : enabled_(enabled), total_(total) {
    if (enabled_) draw(0);
}

void Progress::update(std::uint64_t done) {
    if (!enabled_ || finished_) return;
    const double percent =
        total_ ? 100.0 * static_cast<double>(done) / static_cast<double>(total_) : 100.0;
    const auto now = std::chrono::steady_clock::now();
    // Redrawing costs a write(2) to the terminal: only when it changed and not too often.
    if (percent - last_percent_ < 0.01 || now - last_draw_ < std::chrono::milliseconds(100)) return;
    draw(percent);
}

void Progress::finish() {
    if (!enabled_ || finished_) return;
    finished_ = true;
    draw(100);
    std::printf("\n");
    std::fflush(stdout);
}

void Progress::draw(double percent) {
    last_percent_ = percent;
    last_draw_ = std::chrono::steady_clock::now();
    std::printf("    (%3.2f/100%%)\r", percent);
    std::fflush(stdout);
}

} // namespace fleece::cli::img
