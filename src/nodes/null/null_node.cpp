#include "nodes/null/null_node.hpp"

#include <cstring>

namespace fleece::nodes {
namespace {

class NullNode final : public block::Node {
  public:
    NullNode(std::string name, std::uint64_t size, bool read_zeroes)
        : Node(std::move(name), "null-co"), read_zeroes_(read_zeroes) {
        set_size(size);
        caps_.zero = caps_.fast_zero = caps_.trim = caps_.block_status = true;
        caps_.fua = true;
    }

  protected:
    io::Task<std::error_code> do_read(std::uint64_t, std::span<std::byte> buf,
                                      block::ReqFlags) override {
        if (read_zeroes_) std::memset(buf.data(), 0, buf.size());
        co_return std::error_code{};
    }
    io::Task<std::error_code> do_write(std::uint64_t, std::span<const std::byte>,
                                       block::ReqFlags) override {
        co_return std::error_code{};
    }
    io::Task<std::error_code> do_write_zeroes(std::uint64_t, std::uint64_t,
                                              block::ReqFlags) override {
        co_return std::error_code{};
    }
    io::Task<std::error_code> do_flush() override { co_return std::error_code{}; }
    io::Task<block::BlockStatus> do_block_status(std::uint64_t, std::uint64_t length) override {
        block::BlockStatus s;
        s.length = length;
        s.flags = read_zeroes_ ? (block::status_zero | block::status_allocated)
                               : block::status_data | block::status_allocated;
        co_return s;
    }

  private:
    bool read_zeroes_;
};

io::Task<Result<std::unique_ptr<block::Node>>> open_null(OpenContext&, std::string node_name,
                                                         const CommonOptions&, OptionReader& opts) {
    const std::uint64_t size = opts.uint("size").value_or(1ULL << 30);
    const bool read_zeroes = opts.boolean("read-zeroes").value_or(false);
    opts.uint("latency-ns"); // accepted for compatibility; requests complete at once
    co_return std::unique_ptr<block::Node>(
        std::make_unique<NullNode>(node_name, size, read_zeroes));
}

} // namespace

DriverSpec null_driver() {
    return {"null-co", "reads zeroes, discards writes (testing)", open_null};
}

} // namespace fleece::nodes
