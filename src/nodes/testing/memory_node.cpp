#include "nodes/testing/memory_node.hpp"

#include "io/event_loop.hpp"

#include <algorithm>
#include <cstring>

namespace fleece::nodes {

using namespace fleece::block;

MemoryNode::MemoryNode(std::string name, std::uint64_t size, std::uint32_t cluster_size)
    : Node(std::move(name), "memory"), data_(size) {
    set_size(size);
    caps_.zero = caps_.trim = caps_.block_status = true;
    limits_.cluster_size = cluster_size;
}

io::Task<void> MemoryNode::delay() {
    if (max_turns_ == 0) co_return;
    const unsigned turns = static_cast<unsigned>(rng_() % (max_turns_ + 1));
    for (unsigned i = 0; i < turns; ++i)
        co_await io::EventLoop::current().yield();
}

io::Task<std::error_code> MemoryNode::before_write(std::uint64_t offset, std::uint64_t bytes) {
    if (on_change_) on_change_(offset, bytes);
    co_await delay();
    if (write_latency_.count() > 0) co_await io::sleep_for(write_latency_);
    if (fail_errno_ && fail_count_ != 0) {
        if (fail_count_ > 0) --fail_count_;
        co_return errno_code(fail_errno_);
    }
    ++writes_;
    bytes_written_ += bytes;
    co_return std::error_code{};
}

io::Task<std::error_code> MemoryNode::do_read(std::uint64_t offset, std::span<std::byte> buf,
                                              ReqFlags) {
    if (read_latency_.count() > 0) co_await io::sleep_for(read_latency_);
    // Real storage may fetch any part of a request at any time: copy in two halves with a
    // delay in between, so a read racing with a write can come back torn.
    co_await delay();
    const std::size_t half = buf.size() / 2;
    std::memcpy(buf.data(), data_.data() + offset, half);
    co_await delay();
    std::memcpy(buf.data() + half, data_.data() + offset + half, buf.size() - half);
    co_return std::error_code{};
}

io::Task<std::error_code> MemoryNode::do_write(std::uint64_t offset, std::span<const std::byte> buf,
                                               ReqFlags) {
    if (auto ec = co_await before_write(offset, buf.size())) co_return ec;
    if (reinterpret_cast<std::uintptr_t>(buf.data()) % 4096 != 0) ++unaligned_buffer_writes_;
    std::memcpy(data_.data() + offset, buf.data(), buf.size());
    co_return std::error_code{};
}

io::Task<std::error_code> MemoryNode::do_write_zeroes(std::uint64_t offset, std::uint64_t length,
                                                      ReqFlags) {
    if (auto ec = co_await before_write(offset, length)) co_return ec;
    std::memset(data_.data() + offset, 0, length);
    co_return std::error_code{};
}

// Discard really drops the data (reads back zeroes), so tests notice a premature discard.
io::Task<std::error_code> MemoryNode::do_discard(std::uint64_t offset, std::uint64_t length) {
    if (auto ec = co_await before_write(offset, length)) co_return ec;
    std::memset(data_.data() + offset, 0, length);
    co_return std::error_code{};
}

io::Task<std::error_code> MemoryNode::do_flush() {
    if (!volatile_cache_) co_return std::error_code{};
    // Durable: what was written when the flush arrived (no more, however long it takes).
    std::vector<std::byte> covered = data_;
    const std::uint64_t lost_before = lost_changes_;
    co_await delay();
    if (lost_changes_ != accepted_lost_changes_) co_return errno_code(EIO);
    if (lost_changes_ == lost_before) durable_ = std::move(covered);
    co_return std::error_code{};
}

// Zero detection at 4 KiB granularity: the prefix that is uniformly zero or not.
io::Task<std::error_code> MemoryNode::do_truncate(std::uint64_t size, block::Prealloc) {
    data_.resize(size);
    set_size(size);
    co_return std::error_code{};
}

io::Task<BlockStatus> MemoryNode::do_block_status(std::uint64_t offset, std::uint64_t length) {
    co_await delay();
    constexpr std::uint64_t g = 4096;
    auto is_zero = [&](std::uint64_t off, std::uint64_t len) {
        return std::all_of(data_.begin() + off, data_.begin() + off + len,
                           [](std::byte b) { return b == std::byte{0}; });
    };
    const std::uint64_t end = offset + length;
    std::uint64_t pos = offset;
    std::uint64_t step = std::min(end, (pos / g + 1) * g) - pos;
    const bool zero = is_zero(pos, step);
    pos += step;
    while (pos < end) {
        step = std::min(end - pos, g);
        if (is_zero(pos, step) != zero) break;
        pos += step;
    }
    BlockStatus s;
    s.length = pos - offset;
    s.flags = zero ? (status_zero | status_allocated) : (status_data | status_allocated);
    co_return s;
}

} // namespace fleece::nodes
