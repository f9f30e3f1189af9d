#pragma once
// QMP commands for the NBD server and exports (nbd-server-start/stop, block-export-*).

#include "control/command_registry.hpp"
#include "daemon/services.hpp"

#include <nlohmann/json.hpp>

namespace fleece::daemon {

void register_export_commands(control::CommandRegistry& registry);
// Shared with the command line (--nbd-server, --export).
Status start_nbd_server(Services& services, const nlohmann::json& args);
Status add_export(Services& services, const nlohmann::json& args);

} // namespace fleece::daemon
