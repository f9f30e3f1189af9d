#pragma once
// Graph: owns every node by name and performs every structural change as a transaction:
// apply the change, recompute all edge permissions, and either commit or roll back with a
// message that names the node, the permission and both users. The graph is small, so the
// recomputation is global and simple rather than incremental and clever.

#include "block/node.hpp"
#include "io/task.hpp"
#include "util/result.hpp"

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace fleece::block {

class Graph;

// Holds requests from outside the graph away from a set of nodes until end() (or
// destruction). Taken around every structural change that affects running I/O.
class DrainedSection {
  public:
    DrainedSection() = default;
    DrainedSection(DrainedSection&& o) noexcept : nodes_(std::move(o.nodes_)) { o.nodes_.clear(); }
    DrainedSection& operator=(DrainedSection&&) = delete;
    ~DrainedSection() { end(); }
    void end();

  private:
    friend class Graph;
    std::vector<Node*> nodes_;
};

class Graph {
  public:
    Graph() = default;
    ~Graph();
    Graph(const Graph&) = delete;
    Graph& operator=(const Graph&) = delete;

    Node* find(std::string_view name) const;
    // Nodes in insertion order (for queries).
    std::vector<Node*> nodes() const;
    // A fresh name for implicitly created nodes, QEMU style: "#block123".
    std::string generate_name();

    // Adds a node whose children were created by its driver. Fails, leaving the graph as
    // it was (and destroying the node), on a duplicate name, a cycle or a permission conflict.
    Result<Node*> add(std::unique_ptr<Node> node);
    // Deletes a node with no users; its implicitly created children go with it.
    io::Task<Status> remove(std::string name);

    // Edges from outside the graph (exports, jobs). The returned Child is owned by the
    // caller and must be given back to detach().
    Result<std::unique_ptr<Child>> attach(ChildParent& parent, Node& node, PermSet perm,
                                          PermSet shared, std::string edge_name = "root");
    void detach(std::unique_ptr<Child> child);
    // Change the permissions of an edge (e.g. an export turning writable); transactional.
    Status set_perms(Child& child, PermSet perm, PermSet shared);

    // Moves every parent of `from` (except edges coming from `to` itself, which is how a
    // filter sits on top of `from`) over to `to`, atomically and drained.
    io::Task<Status> replace(Node& from, Node& to);
    // Points one edge (an export's root, or a node's child) at `to` instead of its current
    // node, drained around both nodes so no request is in flight or fails while it moves.
    // The permissions of the whole graph are rechecked; on a conflict nothing changes.
    io::Task<Status> replace_child(Child& edge, Node& to);
    // Several edges at once, atomically: every edge moves, or (on a size mismatch, a loop
    // or a permission conflict) none does. Permissions are checked only for the final
    // graph, so two writers of one node can move together onto a filter that forbids
    // writes bypassing it. Each (edge, node) pair is one move; an edge may appear once.
    io::Task<Status> replace_children(std::vector<std::pair<Child*, Node*>> moves);

    // Quiesce `node` and all its ancestors, then wait until none has a request in flight.
    io::Task<DrainedSection> drain(Node& node);
    // Drain every node (shutdown).
    io::Task<DrainedSection> drain_all();
    // Drain, then close and destroy every node, parents first.
    io::Task<void> close_all();

    // Recompute every edge's permissions; on a conflict, restore and return the error.
    Status refresh_permissions();

  private:
    Status check_conflicts(std::vector<Node*>* order) const;
    Result<std::vector<Node*>> topological_order() const;
    void compute_perms(const std::vector<Node*>& order);
    void attach_children(Node& node);
    void detach_children(Node& node);
    static void link(Child& c);
    static void unlink(Child& c);

    std::map<std::string, std::unique_ptr<Node>, std::less<>> nodes_;
    std::vector<Node*> order_;
    unsigned next_id_ = 0;
};

} // namespace fleece::block
