#pragma once
// JSON views of the graph in QEMU's shapes: query-named-block-nodes (BlockDeviceInfo) and
// x-debug-query-block-graph (XDbgBlockGraph).

#include "block/graph.hpp"

#include <nlohmann/json.hpp>

namespace fleece::nodes {

nlohmann::json query_named_block_nodes(const block::Graph& graph, bool flat = true);
nlohmann::json debug_block_graph(const block::Graph& graph);
// QEMU's list spelling of a permission set: ["write", "consistent-read"].
nlohmann::json perm_list(block::PermSet perms);

} // namespace fleece::nodes
