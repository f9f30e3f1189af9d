#pragma once
// The node driver registry and blockdev-add. Every driver is one entry in the explicit list
// in registry.cpp: name, summary and an open function. Adding a driver touches its folder,
// one line in registry.cpp, one line in CMakeLists.txt and its docs/nodes/<name>.md page.

#include "block/graph.hpp"
#include "io/task.hpp"
#include "nodes/options.hpp"
#include "util/result.hpp"

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace fleece::nodes {

// Options every driver accepts (BlockdevOptionsBase in QEMU's schema).
struct CommonOptions {
    bool read_only = false;
    bool auto_read_only = false;
    bool force_share = false;
    std::string discard = "ignore";    // ignore | unmap
    std::string detect_zeroes = "off"; // off | on | unmap
    bool cache_direct = false;
    bool cache_no_flush = false;
};

struct OpenContext {
    block::Graph& graph;
    // Nodes created implicitly while opening (nested definitions), for rollback.
    std::vector<std::string> created;
};

// Resolves a BlockdevRef: a node-name string, or a nested object that creates an implicit
// node (named "#blockNNN") owned by the node being opened.
io::Task<Result<block::Node*>> resolve_ref(OpenContext& ctx, const nlohmann::json& ref,
                                           std::string what);

using OpenFunction = io::Task<Result<std::unique_ptr<block::Node>>> (*)(OpenContext& ctx,
                                                                        std::string node_name,
                                                                        const CommonOptions& common,
                                                                        OptionReader& opts);

struct DriverSpec {
    std::string_view name;
    std::string_view summary;
    OpenFunction open;
};

const std::vector<DriverSpec>& drivers();
const DriverSpec* find_driver(std::string_view name);

// blockdev-add: validates and opens a node (and its nested children) and adds it to the
// graph. On any error nothing is left behind.
io::Task<Result<block::Node*>> blockdev_add(block::Graph& graph, nlohmann::json options);

} // namespace fleece::nodes
