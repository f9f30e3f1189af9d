#pragma once
// What `fleece backup` needs to know about the daemon's block graph: the node to back up,
// who uses it (the edges the copy-before-write filter must be put under), and a canonical
// form of the whole graph to check that it was restored exactly.

#include "cli/backup/qmp_client.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace fleece::cli {

struct NodeInfo {
    std::string name, driver, filename;
    std::uint64_t size = 0;
};

// One user of a node: an export's root edge or a node's named child edge.
struct ParentEdge {
    bool is_export = false;
    std::string export_id;               // is_export
    std::string parent_node, child_name; // !is_export
    bool writes = false;                 // holds the write permission

    std::string describe() const;
    // blockdev-replace arguments pointing this edge at `new_child`.
    nlohmann::json replace_args(const std::string& new_child) const;
};

std::vector<NodeInfo> list_nodes(QmpClient& qmp);

// Users of `node`, writers first (they must move first: once the filter has a parent it
// forbids writes that bypass it). Throws when a user cannot be moved (a job, say).
std::vector<ParentEdge> find_parents(QmpClient& qmp, const std::string& node);

// The graph as sorted (parent, edge, child) triples plus node names: equal before and
// after a backup when everything was restored.
nlohmann::json graph_fingerprint(QmpClient& qmp);

} // namespace fleece::cli
