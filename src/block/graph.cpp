#include "block/graph.hpp"

#include "util/assert.hpp"

#include <algorithm>
#include <fmt/format.h>
#include <set>
#include <unordered_map>

namespace fleece::block {

void DrainedSection::end() {
    for (Node* n : nodes_) {
        FLEECE_ASSERT(n->quiesce_counter_ > 0);
        if (--n->quiesce_counter_ == 0) n->quiesce_ended_.notify_all();
    }
    nodes_.clear();
}

Graph::~Graph() {
    // Tests may drop a graph without close_all(); unlink edges so no Child dangles.
    for (auto it = order_.rbegin(); it != order_.rend(); ++it)
        detach_children(**it);
    for (Node* n : order_)
        for (Child* p : std::vector<Child*>(n->parents_))
            unlink(*p);
}

Node* Graph::find(std::string_view name) const {
    auto it = nodes_.find(name);
    return it == nodes_.end() ? nullptr : it->second.get();
}

std::vector<Node*> Graph::nodes() const {
    return order_;
}

std::string Graph::generate_name() {
    std::string name;
    do {
        name = fmt::format("#block{:03}", next_id_++);
    } while (find(name));
    return name;
}

void Graph::link(Child& c) {
    FLEECE_ASSERT(!c.attached_);
    c.node_->parents_.push_back(&c);
    c.attached_ = true;
}

void Graph::unlink(Child& c) {
    FLEECE_ASSERT(c.attached_);
    auto& ps = c.node_->parents_;
    ps.erase(std::find(ps.begin(), ps.end(), &c));
    c.attached_ = false;
}

void Graph::attach_children(Node& node) {
    for (auto& c : node.children_)
        link(*c);
}

void Graph::detach_children(Node& node) {
    for (auto& c : node.children_)
        if (c->attached_) unlink(*c);
}

Result<std::vector<Node*>> Graph::topological_order() const {
    // Kahn's algorithm over node->child edges; parents come before their children.
    std::unordered_map<const Node*, std::size_t> node_parents;
    for (Node* n : order_) {
        std::size_t count = 0;
        for (Child* p : n->parents_)
            count += p->parent_->as_node() != nullptr;
        node_parents[n] = count;
    }
    std::vector<Node*> out;
    for (Node* n : order_)
        if (node_parents[n] == 0) out.push_back(n);
    for (std::size_t i = 0; i < out.size(); ++i)
        for (auto& c : out[i]->children_)
            if (c->attached_ && --node_parents[c->node_] == 0) out.push_back(c->node_);
    if (out.size() != order_.size())
        return make_error("the change would create a loop in the block graph");
    return out;
}

void Graph::compute_perms(const std::vector<Node*>& order) {
    for (Node* n : order) {
        PermSet perm = 0;
        PermSet shared = perm_all;
        for (Child* p : n->parents_) {
            perm |= p->perm_;
            shared &= p->shared_;
        }
        for (auto& c : n->children_) {
            if (!c->attached_) continue;
            const PermPair pp = n->child_perms(*c, perm, shared);
            c->perm_ = pp.perm;
            c->shared_ = pp.shared;
        }
    }
}

namespace {
std::string user_description(const Child& c) {
    return fmt::format("{} (as '{}')", c.parent().parent_description(), c.name());
}
} // namespace

Status Graph::check_conflicts(std::vector<Node*>* order) const {
    for (Node* n : *order) {
        PermSet wanted = 0;
        for (Child* p : n->parents_)
            wanted |= p->perm_;
        if (n->read_only_ && (wanted & perm_write)) {
            for (Child* p : n->parents_)
                if (p->perm_ & perm_write)
                    return make_error(
                        fmt::format("Block node '{}' is read-only: 'write' is taken by {}",
                                    n->name(), user_description(*p)));
        }
        for (Child* a : n->parents_) {
            for (Child* b : n->parents_) {
                if (a == b) continue;
                const PermSet conflict = a->perm_ & ~b->shared_;
                if (conflict == 0) continue;
                return make_error(fmt::format(
                    "Permission conflict on node '{}': '{}' is taken by {} and unshared by {}",
                    n->name(), perm_name(conflict), user_description(*a), user_description(*b)));
            }
        }
    }
    return {};
}

Status Graph::refresh_permissions() {
    auto order = topological_order();
    if (!order) return order.error();
    // Remember every computed edge so a refused change leaves no trace.
    std::vector<std::pair<Child*, PermPair>> saved;
    for (Node* n : order_)
        for (auto& c : n->children_)
            saved.push_back({c.get(), {c->perm_, c->shared_}});
    compute_perms(*order);
    Status st = check_conflicts(&*order);
    if (!st) {
        for (auto& [c, pp] : saved) {
            c->perm_ = pp.perm;
            c->shared_ = pp.shared;
        }
    }
    return st;
}

Result<Node*> Graph::add(std::unique_ptr<Node> node) {
    if (find(node->name()))
        return make_error(fmt::format("Duplicate nodes with node-name='{}'", node->name()));
    Node* raw = node.get();
    nodes_.emplace(raw->name(), std::move(node));
    order_.push_back(raw);
    attach_children(*raw);
    raw->refresh_from_children();
    Status st = refresh_permissions();
    if (!st) {
        detach_children(*raw);
        order_.pop_back();
        nodes_.erase(nodes_.find(raw->name()));
        return st.error();
    }
    return raw;
}

io::Task<Status> Graph::remove(std::string name) {
    Node* node = find(name);
    if (!node)
        co_return Error{"GenericError",
                        fmt::format("Failed to find node with node-name='{}'", name)};
    if (!node->parents_.empty())
        co_return make_error(fmt::format("Node '{}' is busy: it is used by {}", name,
                                         user_description(*node->parents_.front())));
    {
        DrainedSection drained = co_await drain(*node);
        // Re-check: a user may have attached while we waited for the drain.
        if (!node->parents_.empty())
            co_return make_error(fmt::format("Node '{}' is busy: it is used by {}", name,
                                             user_description(*node->parents_.front())));
        co_await node->close_with_store();
        drained.end();
    }
    std::vector<Node*> implicit_children;
    for (auto& c : node->children_)
        if (c->node_->implicit()) implicit_children.push_back(c->node_);
    detach_children(*node);
    order_.erase(std::find(order_.begin(), order_.end(), node));
    nodes_.erase(nodes_.find(name));
    (void)refresh_permissions(); // removing users can only relax permissions
    for (Node* child : implicit_children)
        if (find(child->name()) && child->parents_.empty()) (void)co_await remove(child->name());
    co_return Status{};
}

Result<std::unique_ptr<Child>> Graph::attach(ChildParent& parent, Node& node, PermSet perm,
                                             PermSet shared, std::string edge_name) {
    auto child = std::make_unique<Child>(&parent, &node, ChildRole::root, std::move(edge_name),
                                         perm, shared);
    link(*child);
    Status st = refresh_permissions();
    if (!st) {
        unlink(*child);
        return st.error();
    }
    return child;
}

void Graph::detach(std::unique_ptr<Child> child) {
    unlink(*child);
    (void)refresh_permissions();
}

Status Graph::set_perms(Child& child, PermSet perm, PermSet shared) {
    const PermPair old{child.perm_, child.shared_};
    child.perm_ = perm;
    child.shared_ = shared;
    Status st = refresh_permissions();
    if (!st) {
        child.perm_ = old.perm;
        child.shared_ = old.shared;
    }
    return st;
}

io::Task<Status> Graph::replace(Node& from, Node& to) {
    DrainedSection drained = co_await drain(from);
    std::vector<Child*> moved;
    for (Child* p : std::vector<Child*>(from.parents_)) {
        if (p->parent_->as_node() == &to) continue;
        unlink(*p);
        p->node_ = &to;
        link(*p);
        moved.push_back(p);
    }
    Status st = refresh_permissions();
    if (!st) {
        for (Child* p : moved) {
            unlink(*p);
            p->node_ = &from;
            link(*p);
        }
        (void)refresh_permissions();
    }
    co_return st;
}

io::Task<Status> Graph::replace_child(Child& edge, Node& to) {
    std::vector<std::pair<Child*, Node*>> moves{{&edge, &to}};
    co_return co_await replace_children(std::move(moves));
}

io::Task<Status> Graph::replace_children(std::vector<std::pair<Child*, Node*>> moves) {
    std::vector<Node*> from;
    std::set<Child*> edges;
    for (const auto& [edge, to] : moves) {
        if (!edges.insert(edge).second)
            co_return make_error(
                fmt::format("{} is named twice in one replacement", user_description(*edge)));
        Node& f = *edge->node_;
        if (&f != to && f.size() != to->size())
            co_return make_error(
                fmt::format("Node '{}' has size {} but node '{}' (used by {}) has size {}",
                            to->name(), to->size(), f.name(), user_description(*edge), f.size()));
        from.push_back(&f);
    }
    // Drain every node involved, so no request is in flight on an edge while it moves.
    std::vector<DrainedSection> drained;
    for (std::size_t i = 0; i < moves.size(); ++i) {
        drained.push_back(co_await drain(*from[i]));
        drained.push_back(co_await drain(*moves[i].second));
    }
    for (std::size_t i = 0; i < moves.size(); ++i)
        if (moves[i].first->node_ != from[i])
            co_return make_error("an edge changed while it was drained");
    auto relink = [](Child& edge, Node& node) {
        if (edge.node_ == &node) return;
        unlink(edge);
        edge.node_ = &node;
        link(edge);
    };
    for (const auto& [edge, to] : moves)
        relink(*edge, *to);
    // One check for the final graph (a cycle shows up as a conflict here too).
    Status st = refresh_permissions();
    if (!st) {
        for (std::size_t i = moves.size(); i-- > 0;)
            relink(*moves[i].first, *from[i]);
        (void)refresh_permissions();
        co_return st;
    }
    for (const auto& [edge, to] : moves)
        if (Node* parent = edge->parent_->as_node()) parent->refresh_from_children();
    co_return st;
}

io::Task<DrainedSection> Graph::drain(Node& node) {
    DrainedSection section;
    std::set<Node*> seen;
    std::vector<Node*> todo{&node};
    while (!todo.empty()) {
        Node* n = todo.back();
        todo.pop_back();
        if (!seen.insert(n).second) continue;
        ++n->quiesce_counter_;
        section.nodes_.push_back(n);
        for (Child* p : n->parents_)
            if (Node* pn = p->parent_->as_node()) todo.push_back(pn);
    }
    for (bool busy = true; busy;) {
        busy = false;
        for (Node* n : section.nodes_) {
            while (n->in_flight_ > 0) {
                busy = true;
                co_await n->idle_.wait();
            }
        }
    }
    co_return section;
}

io::Task<DrainedSection> Graph::drain_all() {
    DrainedSection section;
    for (Node* n : order_) {
        ++n->quiesce_counter_;
        section.nodes_.push_back(n);
    }
    for (bool busy = true; busy;) {
        busy = false;
        for (Node* n : section.nodes_)
            while (n->in_flight_ > 0) {
                busy = true;
                co_await n->idle_.wait();
            }
    }
    co_return section;
}

io::Task<void> Graph::close_all() {
    {
        DrainedSection drained = co_await drain_all();
        auto order = topological_order();
        FLEECE_ASSERT(order.ok());
        for (Node* n : *order)
            co_await n->close_with_store();
    }
    while (!order_.empty()) {
        auto order = topological_order();
        Node* top = order->front();
        for (Child* p : std::vector<Child*>(top->parents_))
            unlink(*p); // edges from exports or jobs that were not shut down
        detach_children(*top);
        order_.erase(std::find(order_.begin(), order_.end(), top));
        nodes_.erase(nodes_.find(top->name()));
    }
}

} // namespace fleece::block
