#pragma once
// Metadata contexts (NBD_OPT_SET_META_CONTEXT, NBD_CMD_BLOCK_STATUS). Each context an export
// offers is one MetaContext: a name and a per-range query. The connection does the rest
// (listing, selection, ids, one BLOCK_STATUS chunk per selected context, REQ_ONE, the
// extent limit), so a new context is one class plus one line in Export::build_contexts().
//
//   base:allocation       always offered (hole / zero bits from the node's block status)
//   qemu:allocation-depth export option allocation-depth (0 = unallocated, 1 = this node,
//                         2 = its backing, ...)

#include "block/node.hpp"
#include "io/task.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <system_error>

namespace fleece::nbd {

struct MetaExtent {
    std::error_code error;
    std::uint64_t length = 0; // of the prefix of the queried range that has `flags`; > 0
    std::uint32_t flags = 0;  // the context's 32-bit status value
};

class MetaContext {
  public:
    virtual ~MetaContext() = default;
    virtual const std::string& name() const = 0;
    // Status of [offset, offset + length) from `offset` on: may answer a shorter prefix.
    virtual io::Task<MetaExtent> query(block::Child& child, std::uint64_t offset,
                                       std::uint64_t length) = 0;
};

std::shared_ptr<MetaContext> make_base_allocation_context();
std::shared_ptr<MetaContext> make_allocation_depth_context();

} // namespace fleece::nbd
