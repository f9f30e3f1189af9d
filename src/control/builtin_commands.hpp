#pragma once
// Commands every monitor has, whatever the block graph offers.

#include "control/command_registry.hpp"

namespace fleece::control {

void register_builtin_commands(CommandRegistry& registry);

} // namespace fleece::control
