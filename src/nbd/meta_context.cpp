#include "nbd/meta_context.hpp"

#include "block/graph.hpp"
#include "nbd/protocol.hpp"

namespace fleece::nbd {

namespace {

class BaseAllocation final : public MetaContext {
  public:
    const std::string& name() const override { return name_; }
    io::Task<MetaExtent> query(block::Child& child, std::uint64_t offset,
                               std::uint64_t length) override {
        const block::BlockStatus bs = co_await child.block_status(offset, length);
        MetaExtent e;
        e.error = bs.error;
        e.length = bs.length;
        if (!(bs.flags & block::status_data)) e.flags |= state_hole;
        if (bs.flags & block::status_zero) e.flags |= state_zero;
        co_return e;
    }

  private:
    std::string name_ = meta_base_allocation;
};

class AllocationDepth final : public MetaContext {
  public:
    const std::string& name() const override { return name_; }
    io::Task<MetaExtent> query(block::Child& child, std::uint64_t offset,
                               std::uint64_t length) override {
        // The block layer reports which layer of a backing chain answered in `depth`
        // (0 when no layer has the range).
        const block::BlockStatus bs = co_await child.block_status(offset, length);
        MetaExtent e;
        e.error = bs.error;
        e.length = bs.length;
        e.flags = bs.depth;
        co_return e;
    }

  private:
    std::string name_ = meta_allocation_depth;
};

} // namespace

std::shared_ptr<MetaContext> make_base_allocation_context() {
    return std::make_shared<BaseAllocation>();
}

std::shared_ptr<MetaContext> make_allocation_depth_context() {
    return std::make_shared<AllocationDepth>();
}

} // namespace fleece::nbd
