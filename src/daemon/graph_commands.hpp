#pragma once
// Seam for the block graph: registers blockdev-add/-del and friends and fills in the
// graph hooks of Services.

#include "control/command_registry.hpp"
#include "daemon/services.hpp"

namespace fleece::daemon {

void register_graph_commands(control::CommandRegistry& registry, Services& services);

} // namespace fleece::daemon
