#include "nodes/snapshot_access/snapshot_access_node.hpp"

#include "block/snapshot_source.hpp"

#include <fmt/format.h>

namespace fleece::nodes {
namespace {

using namespace fleece::block;

class SnapshotAccessNode final : public Node {
  public:
    SnapshotAccessNode(std::string name, Node& file, SnapshotSource& src)
        : Node(std::move(name), "snapshot-access"), src_(src) {
        file_ = &add_child(file, ChildRole::file, "file");
        set_size(file.size());
        caps_.block_status = true;
        caps_.trim = true;
    }

    // The snapshot API bypasses the edge, so the edge needs nothing and forbids nothing:
    // the live disk below keeps changing, the snapshot does not.
    PermPair child_perms(const Child&, PermSet, PermSet) const override { return {0, perm_all}; }
    void refresh_from_children() override { set_size(file_->node().size()); }

  protected:
    io::Task<std::error_code> do_read(std::uint64_t offset, std::span<std::byte> buf,
                                      ReqFlags flags) override {
        if (flags != 0) co_return errno_code(ENOTSUP);
        co_return co_await src_.snapshot_read(offset, buf);
    }
    io::Task<std::error_code> do_write(std::uint64_t, std::span<const std::byte>,
                                       ReqFlags) override {
        co_return errno_code(ENOTSUP);
    }
    io::Task<std::error_code> do_write_zeroes(std::uint64_t, std::uint64_t, ReqFlags) override {
        co_return errno_code(ENOTSUP);
    }
    io::Task<std::error_code> do_discard(std::uint64_t offset, std::uint64_t length) override {
        co_return co_await src_.snapshot_discard(offset, length);
    }
    io::Task<std::error_code> do_flush() override { co_return std::error_code{}; }
    io::Task<BlockStatus> do_block_status(std::uint64_t offset, std::uint64_t length) override {
        co_return co_await src_.snapshot_block_status(offset, length);
    }

  private:
    Child* file_;
    SnapshotSource& src_;
};

io::Task<Result<std::unique_ptr<Node>>> open_snapshot_access(OpenContext& ctx,
                                                             std::string node_name,
                                                             const CommonOptions&,
                                                             OptionReader& opts) {
    const nlohmann::json* ref = opts.required_raw("file");
    if (Status st = opts.finish(); !st) co_return st.error();
    auto file = co_await resolve_ref(ctx, *ref, "file");
    if (!file) co_return file.error();
    auto* src = dynamic_cast<SnapshotSource*>(*file);
    if (!src)
        co_return make_error(
            fmt::format("Node '{}' of driver '{}' does not support snapshot access",
                        (*file)->name(), (*file)->driver()));
    co_return std::unique_ptr<Node>(std::make_unique<SnapshotAccessNode>(node_name, **file, *src));
}

} // namespace

DriverSpec snapshot_access_driver() {
    return {"snapshot-access", "reads the point-in-time view of a copy-before-write node",
            open_snapshot_access};
}

} // namespace fleece::nodes
