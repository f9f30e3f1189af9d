#pragma once
#include "nodes/registry.hpp"

namespace fleece::nodes {
// nbd: a client of a remote NBD export, on libnbd's asynchronous API driven by our loop.
DriverSpec nbd_client_driver();
} // namespace fleece::nodes
