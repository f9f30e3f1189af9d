#pragma once
// One NBD export: a named view of a block node, attached to it by a root edge.

#include "block/graph.hpp"
#include "block/node.hpp"
#include "io/sync.hpp"
#include "nbd/meta_context.hpp"

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace fleece::nbd {

struct ExportOptions {
    std::string id;          // unique export id (block-export-add "id")
    std::string node_name;   // the node to export
    std::string name;        // NBD export name; empty = same as node_name
    std::string description; // NBD_INFO_DESCRIPTION / NBD_REP_SERVER text
    bool writable = false;
    bool allocation_depth = false;         // offer the qemu:allocation-depth meta context
    std::vector<std::string> bitmaps = {}; // offer qemu:dirty-bitmap:NAME for each (see
                                           // dirty_bitmap_context.hpp)
};

class Connection;

class Export final : public block::ChildParent {
  public:
    explicit Export(ExportOptions opts) : opts_(std::move(opts)) { build_contexts(); }

    const ExportOptions& options() const { return opts_; }
    const std::string& name() const { return opts_.name; }
    block::Child& child() const { return *child_; }
    block::Node& node() const { return child_->node(); }
    std::uint64_t size() const { return child_->node().size(); }

    // Transmission flags advertised to clients, from the node's capabilities.
    std::uint16_t transmission_flags() const;
    // NBD_INFO_BLOCK_SIZE values.
    std::uint32_t min_block() const;
    std::uint32_t preferred_block() const;
    std::uint32_t max_block() const;

    // Meta contexts this export offers; a context's id on the wire is its index + 1.
    const std::vector<std::shared_ptr<MetaContext>>& meta_contexts() const { return contexts_; }

    // ChildParent
    std::string parent_description() const override { return "export '" + opts_.id + "'"; }
    std::string parent_name() const override { return opts_.id; }
    const char* parent_type() const override { return "block-backend"; }

  private:
    // The one place that decides which contexts an export offers (qemu:dirty-bitmap:NAME
    // contexts for the export's bitmaps go here too).
    void build_contexts();

    // The exported dirty bitmaps: busy while the export exists, released on removal.
    std::vector<block::DirtyBitmap*> bitmaps_;

    friend class NbdServer;
    friend class Connection;
    ExportOptions opts_;
    std::vector<std::shared_ptr<MetaContext>> contexts_;
    std::unique_ptr<block::Child> child_;
    io::Gate gate_; // one holder per connection using the export
    std::set<Connection*> connections_;
    bool removing_ = false;
};

} // namespace fleece::nbd
