#pragma once
#include "nodes/registry.hpp"

namespace fleece::nodes {
// raw: the raw image format over a `file` child, optionally a window [offset, offset+size)
// of it. See docs/nodes/raw.md.
DriverSpec raw_driver();
} // namespace fleece::nodes
