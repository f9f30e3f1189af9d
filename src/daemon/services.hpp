#pragma once
// What the daemon offers to command handlers (reached through CommandContext::services).
// Modules fill in the hooks they own; the block graph will replace blockdev_add.

#include "util/result.hpp"

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>

namespace fleece::control {
class QmpServer;
}
namespace fleece::io {
class EventLoop;
}
namespace fleece::block {
class Graph;
}
namespace fleece::nbd {
class NbdServer;
}
namespace fleece::jobs {
class JobManager;
}

namespace fleece::daemon {

struct Services {
    io::EventLoop* loop = nullptr;
    control::QmpServer* qmp = nullptr;
    block::Graph* graph = nullptr;
    jobs::JobManager* jobs = nullptr;
    std::unique_ptr<nbd::NbdServer> nbd_server; // while nbd-server-start is in effect
    // Adds one node from a --blockdev option or a blockdev-add command.
    std::function<Result<void>(const nlohmann::json&)> blockdev_add;
};

} // namespace fleece::daemon
