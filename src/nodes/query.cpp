#include "nodes/query.hpp"

#include "block/bitmap_sidecar_store.hpp"
#include "nodes/copy_before_write/cbw_node.hpp"

#include <map>

namespace fleece::nodes {

using nlohmann::json;

json perm_list(block::PermSet perms) {
    json out = json::array();
    for (block::PermSet bit = 1; bit <= block::perm_resize; bit <<= 1)
        if (perms & bit) out.push_back(block::perm_name(bit));
    return out;
}

namespace {
int backing_depth(const block::Node& n) {
    const block::Child* b = n.child("backing");
    return b ? 1 + backing_depth(b->node()) : 0;
}

// BlockDirtyInfo list; QEMU omits the key when the node has no bitmaps.
json dirty_bitmaps_info(const block::Node& n) {
    json out = json::array();
    for (const auto& b : n.dirty_bitmaps().list()) {
        json info = {
            {"name", b->name()}, {"recording", b->recording()},     {"persistent", b->persistent()},
            {"busy", b->busy()}, {"granularity", b->granularity()}, {"count", b->count()}};
        if (b->inconsistent()) info["inconsistent"] = true;
        out.push_back(std::move(info));
    }
    return out;
}

// fleeced's own addition (QEMU has no such field): what copy-before-write cost the guest.
// Where a node's persistent bitmaps live outside its image, and what write-ahead cost.
json sidecar_info(const block::SidecarStore& store) {
    const block::SidecarInfo i = store.info();
    json j = {{"path", i.path}, {"write-ahead", i.write_ahead}, {"saves", i.saves}};
    if (i.write_ahead)
        j["journal"] = {{"degraded", i.degraded},
                        {"epoch", i.journal.epoch},
                        {"syncs", i.journal.syncs},
                        {"marked-regions", i.journal.marked},
                        {"waits", i.journal.waits}};
    return j;
}

json cbw_stats(const CbwNode& cbw) {
    const CbwStats& s = cbw.stats();
    return json{{"requests", s.requests},
                {"errors", s.errors},
                {"latency-total-ns", s.total_ns},
                {"latency-max-ns", s.max_ns},
                {"snapshot-broken", static_cast<bool>(cbw.snapshot_error())}};
}

json node_info(const block::Node& n) {
    json image = {{"virtual-size", n.size()}, {"filename", n.filename()}, {"format", n.driver()}};
    json info = json{
        {"node-name", n.name()},
        {"drv", n.driver()},
        {"file", n.filename()},
        {"ro", n.read_only()},
        {"encrypted", false},
        {"detect_zeroes", "off"},
        {"bps", 0},
        {"bps_rd", 0},
        {"bps_wr", 0},
        {"iops", 0},
        {"iops_rd", 0},
        {"iops_wr", 0},
        {"backing_file_depth", backing_depth(n)},
        {"write_threshold", 0},
        {"cache",
         {{"writeback", true}, {"direct", n.cache_direct()}, {"no-flush", n.cache_no_flush()}}},
        {"image", image}};
    if (!n.dirty_bitmaps().empty()) info["dirty-bitmaps"] = dirty_bitmaps_info(n);
    if (const auto* cbw = dynamic_cast<const CbwNode*>(&n)) info["x-cbw-stats"] = cbw_stats(*cbw);
    if (auto away = n.disconnected_for()) info["x-disconnected-for-ms"] = away->count();
    if (const auto* sidecar = dynamic_cast<const block::SidecarStore*>(n.external_bitmap_store()))
        info["x-bitmap-sidecar"] = sidecar_info(*sidecar);
    return info;
}
} // namespace

json query_named_block_nodes(const block::Graph& graph, bool flat) {
    (void)flat;
    json out = json::array();
    for (const block::Node* n : graph.nodes())
        out.push_back(node_info(*n));
    return out;
}

json debug_block_graph(const block::Graph& graph) {
    json nodes = json::array();
    json edges = json::array();
    std::map<const void*, int> ids;
    int next = 1;
    auto id_of = [&](const void* p) {
        auto [it, inserted] = ids.emplace(p, next);
        if (inserted) ++next;
        return it->second;
    };
    for (const block::Node* n : graph.nodes())
        nodes.push_back({{"id", id_of(n)}, {"type", "block-driver"}, {"name", n->name()}});
    for (const block::Node* n : graph.nodes()) {
        for (const block::Child* p : n->parents()) {
            block::ChildParent& parent = p->parent();
            if (!parent.as_node() && !ids.count(&parent))
                nodes.push_back({{"id", id_of(&parent)},
                                 {"type", parent.parent_type()},
                                 {"name", parent.parent_name()}});
            const void* parent_key = parent.as_node() ? static_cast<const void*>(parent.as_node())
                                                      : static_cast<const void*>(&parent);
            edges.push_back({{"parent", id_of(parent_key)},
                             {"child", id_of(n)},
                             {"name", p->name()},
                             {"perm", perm_list(p->perm())},
                             {"shared-perm", perm_list(p->shared())}});
        }
    }
    return json{{"nodes", nodes}, {"edges", edges}};
}

} // namespace fleece::nodes
