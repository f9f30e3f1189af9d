#include "nodes/raw/raw_node.hpp"

#include "util/align.hpp"

#include <fmt/format.h>

namespace fleece::nodes {
namespace {

class RawNode final : public block::FilterNode {
  public:
    RawNode(std::string name, block::Node& child, std::uint64_t offset,
            std::optional<std::uint64_t> size, bool read_only)
        : FilterNode(std::move(name), "raw"), offset_(offset), fixed_size_(size) {
        read_only_ = read_only;
        set_file(add_child(child, block::ChildRole::file, "file"));
        refresh_from_children();
    }

    block::PermPair child_perms(const block::Child& c, block::PermSet parent_perm,
                                block::PermSet parent_shared) const override {
        block::PermPair pp = FilterNode::child_perms(c, parent_perm, parent_shared);
        // A window into the child is only meaningful while the child keeps its size.
        if (&c == &file() && windowed()) pp.shared &= ~block::perm_resize;
        return pp;
    }

    void refresh_from_children() override {
        FilterNode::refresh_from_children();
        const std::uint64_t child_size = file().node().size();
        const std::uint64_t avail = child_size > offset_ ? child_size - offset_ : 0;
        set_size(fixed_size_ ? std::min(*fixed_size_, avail) : avail);
        if (read_only_) caps_.write = false;
    }

  protected:
    io::Task<std::error_code> do_read(std::uint64_t offset, std::span<std::byte> buf,
                                      block::ReqFlags flags) override {
        return file().read(offset_ + offset, buf, flags);
    }
    io::Task<std::error_code> do_write(std::uint64_t offset, std::span<const std::byte> buf,
                                       block::ReqFlags flags) override {
        return file().write(offset_ + offset, buf, flags);
    }
    io::Task<std::error_code> do_write_zeroes(std::uint64_t offset, std::uint64_t length,
                                              block::ReqFlags flags) override {
        return file().write_zeroes(offset_ + offset, length, flags);
    }
    io::Task<std::error_code> do_discard(std::uint64_t offset, std::uint64_t length) override {
        return file().discard(offset_ + offset, length);
    }
    // do_flush: inherited, the window does not matter.
    io::Task<block::BlockStatus> do_block_status(std::uint64_t offset,
                                                 std::uint64_t length) override {
        return file().block_status(offset_ + offset, length);
    }

  private:
    bool windowed() const { return offset_ != 0 || fixed_size_.has_value(); }
    std::uint64_t offset_;
    std::optional<std::uint64_t> fixed_size_;
};

io::Task<Result<std::unique_ptr<block::Node>>>
open_raw(OpenContext& ctx, std::string node_name, const CommonOptions& common, OptionReader& opts) {
    const nlohmann::json* ref = opts.required_raw("file");
    const std::uint64_t offset = opts.uint("offset").value_or(0);
    const std::optional<std::uint64_t> size = opts.uint("size");
    if (Status st = opts.finish(); !st) co_return st.error();
    auto child = co_await resolve_ref(ctx, *ref, "file");
    if (!child) co_return child.error();
    block::Node& c = **child;
    // QEMU's wording for both checks (block/raw-format.c).
    if (offset > c.size())
        co_return make_error(
            fmt::format("The sum of offset ({}) and size ({}) has to be smaller or "
                        "equal to the  actual size of the containing file ({})",
                        offset, size.value_or(0), c.size()));
    if (size && *size > c.size() - offset)
        co_return make_error(
            fmt::format("The sum of offset ({}) and size ({}) has to be smaller or "
                        "equal to the  actual size of the containing file ({})",
                        offset, *size, c.size()));
    const std::uint32_t a = c.limits().request_alignment;
    if (!is_aligned(offset, a))
        co_return make_error(fmt::format("offset must be a multiple of {}", a));
    if (size && !is_aligned(*size, a))
        co_return make_error(fmt::format("size must be a multiple of {}", a));
    co_return std::unique_ptr<block::Node>(
        std::make_unique<RawNode>(std::move(node_name), c, offset, size, common.read_only));
}

} // namespace

DriverSpec raw_driver() {
    return {"raw", "raw image format, optionally a window of the child", open_raw};
}

} // namespace fleece::nodes
