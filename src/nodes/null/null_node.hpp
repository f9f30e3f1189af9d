#pragma once
#include "nodes/registry.hpp"

namespace fleece::nodes {
// null-co: reads return zeroes (or garbage with read-zeroes=off), writes are discarded.
DriverSpec null_driver();
} // namespace fleece::nodes
