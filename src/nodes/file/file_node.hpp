#pragma once
#include "nodes/registry.hpp"

namespace fleece::nodes {
// file: a regular file or a block device, accessed with positional I/O on the event loop's
// backend (io_uring or the thread pool). See docs/nodes/file.md.
DriverSpec file_driver();
} // namespace fleece::nodes
