#pragma once
// BlockCopy: copies clusters from a source child to a target child exactly once, for the
// copy-before-write filter (synchronous calls with a timeout, ignoring the rate limit) and
// for the backup job (one long background call with a rate limit and cancellation). Once
// more only when the target lost them (checkpoints, below).
//
// State: the copy bitmap (set bit = cluster still to copy) and the in-flight lock table. A
// cluster is claimed by locking it, re-checking its bit under the lock and clearing it, so it
// is never copied twice. A caller whose range overlaps someone else's in-flight copy waits
// for it and re-checks the bitmap, because a failed copy sets its bits again.

#include "block/node.hpp"
#include "block/range_lock.hpp"
#include "io/buffer_pool.hpp"
#include "io/event_loop.hpp"
#include "io/sync.hpp"
#include "util/bitmap.hpp"

#include <chrono>
#include <cstdint>
#include <memory>
#include <system_error>

namespace fleece::block {

struct CopyOptions {
    bool ignore_ratelimit = false;
    std::chrono::nanoseconds timeout{0}; // 0 = none
    unsigned max_workers = 64;
    std::uint64_t max_chunk = 0; // 0 = default (1 MiB)
    // With a timeout: the node whose request this copy serves; a copy that outlives its
    // timeout stays counted in flight on it until it really ends (drain waits for it).
    Node* owner = nullptr;
};

class BlockCopy {
  public:
    static constexpr std::uint64_t default_cluster = 64 * 1024;
    static constexpr std::uint64_t default_chunk = 1024 * 1024;
    static constexpr std::uint64_t max_memory = 128ull * 1024 * 1024;
    // A chunk is copied through one buffer of at most this size, piece by piece.
    static constexpr std::uint64_t max_buffer = 1024 * 1024;

    // cluster = max(64 KiB, target cluster size, min_cluster_size).
    static std::uint64_t cluster_size_for(const Node& target, std::uint64_t min_cluster_size);

    // write_unchanged: target writes carry req_write_unchanged (fleecing target whose backing
    // is the source, so the copy does not change what the target reads as).
    BlockCopy(Child& source, Child& target, std::uint64_t cluster_size, bool write_unchanged);
    ~BlockCopy();
    BlockCopy(const BlockCopy&) = delete;
    BlockCopy& operator=(const BlockCopy&) = delete;

    std::uint64_t cluster_size() const { return cluster_; }
    std::uint64_t length() const { return length_; }
    Bitmap& copy_bitmap() { return bitmap_; }
    bool is_dirty(std::uint64_t offset) const { return bitmap_.get(offset / cluster_); }

    // Copies every dirty cluster overlapping [offset, offset+length) (clipped to the size).
    // Returns the first error of this call's own I/O, or ETIMEDOUT; a timed-out copy keeps
    // running in the background (close() waits for it).
    io::Task<std::error_code> copy(std::uint64_t offset, std::uint64_t length, CopyOptions opts);
    // Clears copy bits of whole clusters inside the range (nothing left to copy there).
    void reset(std::uint64_t offset, std::uint64_t length);

    // Progress: bytes copied so far, and copied + still to copy.
    std::uint64_t progress_done() const { return done_bytes_; }
    std::uint64_t progress_total() const;

    // Background loop for the backup job: copies everything dirty, rate limited.
    io::Task<std::error_code> copy_all_background(CopyOptions opts);
    void set_speed(std::uint64_t bytes_per_second); // 0 = unlimited; wakes a sleeping loop
    void cancel_background();                       // stop creating tasks, wake the loop

    // Waits for every copy, including timed-out ones still running.
    io::Task<void> close();

    // Backup job options. discard_source: after a chunk landed on the target, discard it on
    // the source (a snapshot-access node gives the fleecing space back); discard failures
    // are ignored, discard being advisory. compress: target writes carry
    // req_write_compressed and chunks are one cluster.
    void set_discard_source(bool on) { discard_source_ = on; }
    void set_compress(bool on);
    // Checkpoints, for a target that may lose acknowledged changes (Node::lost_changes(),
    // an NBD server that went away with its write cache) and a source that stays as it is,
    // so that anything lost can be copied again. Copied chunks stay "unflushed" until a
    // checkpoint's flush covers them, and only then does discard_source release them on the
    // source. The background loop checkpoints every `every_bytes` of unflushed data; the
    // job checkpoints once more at the end.
    void enable_checkpoints(std::uint64_t every_bytes);
    bool checkpoints() const { return checkpoint_every_ != 0; }
    // Flushes the target (after a checkpoint the background loop started, if one runs).
    // When the target lost changes meanwhile, every unflushed cluster is dirty again
    // (copied once more, its source still there) and the result is {}; else the flush's
    // error, with last_error_is_read() false. Progress counts the copies again (the total
    // grows).
    io::Task<std::error_code> checkpoint();
    // Whether the last failed background call failed on a source read (else a target write).
    bool last_error_is_read() const { return last_error_is_read_; }
    // sync=top: clears the bits of clusters the source does not allocate in its top layer;
    // a cluster that is only partly unallocated stays. Returns the first block-status error.
    io::Task<std::error_code> reset_unallocated(const bool* stop);

  private:
    struct Call;
    io::Task<std::error_code> run_call(std::uint64_t offset, std::uint64_t end,
                                       std::shared_ptr<Call> call);
    io::Task<void> run_detached(std::uint64_t offset, std::uint64_t end, std::shared_ptr<Call> call,
                                io::Gate::Holder hold);
    io::Task<void> worker(std::shared_ptr<Call> call, RangeLockTable::Guard claim);
    io::Task<std::error_code> copy_piece(std::uint64_t offset, std::uint64_t length,
                                         std::span<std::byte> buf, bool* error_is_read);
    io::Task<void> rate_limit(std::uint64_t bytes);
    io::Task<void> checkpoint_detached(io::Gate::Holder hold);
    io::Task<std::error_code> flush_and_release();

    Child& source_;
    Child& target_;
    std::uint64_t cluster_;
    std::uint64_t length_;
    ReqFlags target_write_flags() const;
    ReqFlags write_flags_;
    Bitmap bitmap_;
    // Chunks being copied hold exclusive locks; callers wait_idle() over their range.
    RangeLockTable in_flight_;
    std::uint64_t in_flight_bytes_ = 0;
    std::uint64_t done_bytes_ = 0;
    // Copy buffers: page-aligned, so O_DIRECT takes them without a bounce copy (and ext4
    // can write a fresh extent of the target without taking the inode lock exclusively,
    // which it needs for any O_DIRECT write whose memory is not block-aligned), and
    // recycled, so 1 MiB chunks do not mmap/munmap and fault in pages every time. The
    // pool's budget bounds the memory of all copies in flight.
    io::BufferPool buffers_{max_memory};
    io::Gate gate_;
    // Rate limiting (token bucket over 100 ms slices) and background cancellation.
    std::uint64_t speed_ = 0;
    io::Clock::time_point slice_start_{};
    std::uint64_t slice_bytes_ = 0;
    bool cancelled_ = false;
    bool discard_source_ = false;
    bool compress_ = false;
    bool last_error_is_read_ = false;
    std::uint64_t checkpoint_every_ = 0; // 0 = no checkpoints
    Bitmap unflushed_;                   // copied, not yet covered by a target flush
    std::uint64_t seen_lost_changes_ = 0;
    bool checkpoint_running_ = false;
    io::WaitQueue checkpoint_idle_;
    std::error_code checkpoint_error_;         // of a background checkpoint, for the loop
    io::EventLoop::Timer* sleeping_ = nullptr; // the rate-limit sleep, cancelled by a kick
};

} // namespace fleece::block
