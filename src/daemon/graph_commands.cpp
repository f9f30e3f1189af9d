#include "daemon/graph_commands.hpp"

namespace fleece::daemon {

namespace {
// Until the block graph lands no node can be created; say so instead of ignoring options.
Result<void> blockdev_add_unavailable(const nlohmann::json&) {
    return make_error("blockdev-add: not available");
}
} // namespace

void register_graph_commands(control::CommandRegistry&, Services& services) {
    services.blockdev_add = blockdev_add_unavailable;
}

} // namespace fleece::daemon
