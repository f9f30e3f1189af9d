#pragma once
// The progress line of `img convert -p`, as qemu-img prints it: "    (12.34/100%)\r",
// redrawn at most every 100 ms, ending with 100% and a newline.

#include <chrono>
#include <cstdint>

namespace fleece::cli::img {

class Progress {
  public:
    explicit Progress(bool enabled, std::uint64_t total);
    // `done` bytes of `total` are finished.
    void update(std::uint64_t done);
    void finish();

  private:
    void draw(double percent);
    bool enabled_;
    std::uint64_t total_;
    double last_percent_ = -1;
    std::chrono::steady_clock::time_point last_draw_{};
    bool finished_ = false;
};

} // namespace fleece::cli::img
