#pragma once
// x-cbw-set-bitmap (a fleece extension, QMP command and `transaction` action): narrows a
// copy-before-write filter to the dirty clusters of a bitmap, as the filter's `bitmap`
// option does at open, but at the instant of the transaction. Given in the transaction that
// freezes the bitmap and moves the guest onto the filter, the snapshot point, the frozen
// set and the filter's copy set are one instant: no guest write falls between them (see
// docs/nodes/copy-before-write.md).

#include "control/command_registry.hpp"

namespace fleece::daemon {

void register_cbw_commands(control::CommandRegistry& registry);

} // namespace fleece::daemon
