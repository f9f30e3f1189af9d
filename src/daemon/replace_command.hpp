#pragma once
// blockdev-replace: points one existing edge (an export's root, or a node's child) at
// another node, live. This is how a filter such as copy-before-write is put under an NBD
// export that is serving a guest, and taken out again.

#include "control/command_registry.hpp"

namespace fleece::daemon {

void register_replace_command(control::CommandRegistry& registry);

} // namespace fleece::daemon
