#pragma once
// User-creatable objects (QEMU's --object and QMP object-add/object-del). The supported
// types are the TLS credentials tls-creds-x509 and tls-creds-psk (io/tls_creds.hpp).

#include "control/command_registry.hpp"

#include <nlohmann/json.hpp>

namespace fleece::daemon {

void register_object_commands(control::CommandRegistry& registry);
// Shared with the command line: `args` holds qom-type, id and the type's properties
// (strings from --object, typed values from QMP).
Status add_object(const nlohmann::json& args);

} // namespace fleece::daemon
