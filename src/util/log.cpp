#include "util/log.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>

namespace fleece::log {
namespace {
std::atomic<Level> g_level{Level::info};
const auto g_start = std::chrono::steady_clock::now();

const char* level_name(Level l) {
    switch (l) {
    case Level::debug:
        return "debug";
    case Level::info:
        return "info";
    case Level::warn:
        return "warning";
    case Level::error:
        return "error";
    }
    return "?";
}
} // namespace

void set_level(Level l) {
    g_level = l;
}
Level level() {
    return g_level.load(std::memory_order_relaxed);
}

void write(Level l, std::string_view message) {
    const double t =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - g_start).count();
    std::string line = fmt::format("[{:10.3f}] fleece {}: {}\n", t, level_name(l), message);
    std::fwrite(line.data(), 1, line.size(), stderr);
}

} // namespace fleece::log
