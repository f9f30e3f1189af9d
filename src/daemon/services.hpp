#pragma once
// What the daemon offers to command handlers (reached through CommandContext::services).
// Modules fill in the hooks they own; the block graph will replace blockdev_add.

#include <functional>

#include <nlohmann/json.hpp>

#include "util/result.hpp"

namespace fleece::control {
class QmpServer;
}
namespace fleece::io {
class EventLoop;
}

namespace fleece::daemon {

struct Services {
    io::EventLoop* loop = nullptr;
    control::QmpServer* qmp = nullptr;
    // Adds one node from a --blockdev option or a blockdev-add command.
    std::function<Result<void>(const nlohmann::json&)> blockdev_add;
};

} // namespace fleece::daemon
