#include "cli/backup/block_graph.hpp"

#include <algorithm>
#include <map>

namespace fleece::cli {

using nlohmann::json;

std::string ParentEdge::describe() const {
    if (is_export) return "export '" + export_id + "'";
    return "node '" + parent_node + "' (child '" + child_name + "')";
}

json ParentEdge::replace_args(const std::string& new_child) const {
    json a;
    if (is_export) {
        a["parent-type"] = "export";
        a["id"] = export_id;
    } else {
        a["parent-type"] = "driver";
        a["parent"] = parent_node;
        a["child"] = child_name;
    }
    a["new-child"] = new_child;
    return a;
}

std::vector<NodeInfo> list_nodes(QmpClient& qmp) {
    std::vector<NodeInfo> out;
    for (const json& n : qmp.execute("query-named-block-nodes")) {
        NodeInfo info;
        info.name = n.value("node-name", "");
        info.driver = n.value("drv", "");
        info.filename = n.value("file", "");
        if (n.contains("image")) info.size = n["image"].value("virtual-size", std::uint64_t{0});
        out.push_back(std::move(info));
    }
    return out;
}

namespace {

struct GraphVertex {
    std::string type, name;
};

std::map<int, GraphVertex> vertices_of(const json& graph) {
    std::map<int, GraphVertex> v;
    for (const json& n : graph.at("nodes"))
        v[n.at("id").get<int>()] = {n.value("type", ""), n.value("name", "")};
    return v;
}

bool has_perm(const json& perms, const char* name) {
    for (const json& p : perms)
        if (p.is_string() && p.get<std::string>() == name) return true;
    return false;
}

} // namespace

std::vector<ParentEdge> find_parents(QmpClient& qmp, const std::string& node) {
    const json graph = qmp.execute("x-debug-query-block-graph");
    const auto vertices = vertices_of(graph);
    std::map<std::string, std::string> export_node; // export id -> node name
    for (const json& e : qmp.execute("query-block-exports"))
        export_node[e.value("id", "")] = e.value("node-name", "");
    std::vector<ParentEdge> out;
    for (const json& e : graph.at("edges")) {
        const GraphVertex& child = vertices.at(e.at("child").get<int>());
        if (child.type != "block-driver" || child.name != node) continue;
        const GraphVertex& parent = vertices.at(e.at("parent").get<int>());
        ParentEdge edge;
        edge.writes = has_perm(e.value("perm", json::array()), "write");
        if (parent.type == "block-driver") {
            edge.parent_node = parent.name;
            edge.child_name = e.value("name", "");
        } else if (parent.type == "block-backend" && export_node.count(parent.name)) {
            edge.is_export = true;
            edge.export_id = parent.name;
        } else if (parent.type == "block-job") {
            throw std::runtime_error("node '" + node + "' is in use by job '" + parent.name +
                                     "': wait for it to finish (fleece qmp query-jobs)");
        } else {
            throw std::runtime_error("node '" + node + "' has a user that cannot be moved live: " +
                                     parent.type + " '" + parent.name + "'");
        }
        out.push_back(std::move(edge));
    }
    std::stable_sort(out.begin(), out.end(), [](const ParentEdge& a, const ParentEdge& b) {
        return a.writes && !b.writes;
    });
    return out;
}

json graph_fingerprint(QmpClient& qmp) {
    const json graph = qmp.execute("x-debug-query-block-graph");
    const auto vertices = vertices_of(graph);
    std::vector<std::string> names, edges;
    for (const auto& [id, v] : vertices)
        names.push_back(v.type + ":" + v.name);
    for (const json& e : graph.at("edges")) {
        const GraphVertex& p = vertices.at(e.at("parent").get<int>());
        const GraphVertex& c = vertices.at(e.at("child").get<int>());
        edges.push_back(p.type + ":" + p.name + " -" + e.value("name", "") + "-> " + c.name + " " +
                        e.value("perm", json::array()).dump() + " " +
                        e.value("shared-perm", json::array()).dump());
    }
    std::sort(names.begin(), names.end());
    std::sort(edges.begin(), edges.end());
    return json{{"nodes", names}, {"edges", edges}};
}

} // namespace fleece::cli
