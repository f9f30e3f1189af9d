#pragma once
#include "nodes/registry.hpp"

namespace fleece::nodes {
// qcow2: QEMU's copy-on-write image format over a `file` child, with an optional `backing`
// child. See docs/nodes/qcow2.md (including the crash-safe metadata update order).
DriverSpec qcow2_driver();
} // namespace fleece::nodes
