#pragma once
// MemoryNode: an in-memory node for tests (no driver, built directly). It can delay each
// request by a random number of loop turns from a seeded RNG, so completions reorder
// deterministically, and it can inject write errors and slow reads and writes.

#include "block/node.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

namespace fleece::nodes {

class MemoryNode final : public block::Node {
  public:
    MemoryNode(std::string name, std::uint64_t size, std::uint32_t cluster_size = 0);

    std::vector<std::byte>& data() { return data_; }
    // Every request first yields 0..max_turns loop turns, chosen by the seeded RNG.
    void set_random_delay(std::uint64_t seed, unsigned max_turns) {
        rng_.seed(seed);
        max_turns_ = max_turns;
    }
    // Writes, write-zeroes and discards fail with `error` (0 = off); `count` < 0 = forever.
    void fail_writes(int error, int count = -1) {
        fail_errno_ = error;
        fail_count_ = count;
    }
    void set_write_latency(std::chrono::nanoseconds d) { write_latency_ = d; }
    // Called when a write, write-zeroes or discard reaches the driver (before its delay):
    // from here on its data may be on the disk.
    void on_change(std::function<void(std::uint64_t, std::uint64_t)> f) {
        on_change_ = std::move(f);
    }
    void set_read_latency(std::chrono::nanoseconds d) { read_latency_ = d; }
    // A volatile write cache, as an NBD server has one: a flush makes what was written
    // before it durable, and lose_cache() goes back to the durable data, as a server that
    // went away with its cache; flushes then fail until the loss is accepted
    // (Node::lost_changes()).
    void set_volatile_cache() {
        volatile_cache_ = true;
        durable_ = data_;
    }
    void lose_cache() {
        data_ = durable_;
        ++lost_changes_;
    }
    bool may_lose_acknowledged_changes() const override { return volatile_cache_; }
    std::uint64_t lost_changes() const override { return lost_changes_; }
    void accept_lost_changes() override { accepted_lost_changes_ = lost_changes_; }
    std::uint64_t writes() const { return writes_; }
    std::uint64_t bytes_written() const { return bytes_written_; } // data + zeroes
    // Data writes whose buffer is not page aligned (O_DIRECT would need a bounce copy).
    std::uint64_t unaligned_buffer_writes() const { return unaligned_buffer_writes_; }

  protected:
    io::Task<std::error_code> do_read(std::uint64_t offset, std::span<std::byte> buf,
                                      block::ReqFlags flags) override;
    io::Task<std::error_code> do_write(std::uint64_t offset, std::span<const std::byte> buf,
                                       block::ReqFlags flags) override;
    io::Task<std::error_code> do_write_zeroes(std::uint64_t offset, std::uint64_t length,
                                              block::ReqFlags flags) override;
    io::Task<std::error_code> do_discard(std::uint64_t offset, std::uint64_t length) override;
    io::Task<std::error_code> do_flush() override;
    io::Task<std::error_code> do_truncate(std::uint64_t size, block::Prealloc) override;
    io::Task<block::BlockStatus> do_block_status(std::uint64_t offset,
                                                 std::uint64_t length) override;

  private:
    io::Task<void> delay();
    io::Task<std::error_code> before_write(std::uint64_t offset, std::uint64_t bytes);

    std::vector<std::byte> data_;
    std::function<void(std::uint64_t, std::uint64_t)> on_change_;
    std::mt19937_64 rng_{0};
    unsigned max_turns_ = 0;
    int fail_errno_ = 0;
    int fail_count_ = 0;
    std::chrono::nanoseconds write_latency_{0};
    std::chrono::nanoseconds read_latency_{0};
    std::uint64_t writes_ = 0;
    std::uint64_t bytes_written_ = 0;
    std::uint64_t unaligned_buffer_writes_ = 0;
    bool volatile_cache_ = false;
    std::vector<std::byte> durable_;
    std::uint64_t lost_changes_ = 0;
    std::uint64_t accepted_lost_changes_ = 0;
};

} // namespace fleece::nodes
