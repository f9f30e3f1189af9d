#pragma once
#include "nodes/registry.hpp"

namespace fleece::nodes {
// snapshot-access: exposes the point-in-time view of a SnapshotSource (copy-before-write)
// as a read-only node; discards drop areas from the snapshot.
DriverSpec snapshot_access_driver();
} // namespace fleece::nodes
