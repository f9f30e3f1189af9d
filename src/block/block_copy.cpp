#include "block/block_copy.hpp"

#include "util/align.hpp"
#include "util/log.hpp"

#include <algorithm>
#include <vector>

namespace fleece::block {

// One copy() call: its own workers, its first error, and whether it was given up on.
struct BlockCopy::Call {
    explicit Call(unsigned workers) : worker_slots(workers) {}
    io::AsyncSemaphore worker_slots;
    unsigned running = 0;
    io::WaitQueue idle;
    std::error_code error;
    bool error_is_read = false;
    bool cancelled = false;
    const bool* external_cancel = nullptr; // the background loop's flag
    bool stopped() const { return cancelled || (external_cancel && *external_cancel); }
    bool ignore_ratelimit = true;
    std::uint64_t max_chunk = default_chunk;
    // Detached (timeout) calls report here.
    bool finished = false;
    std::error_code result;
    io::EventLoop::Timer* waiter = nullptr;
    Node* owner = nullptr;
};

std::uint64_t BlockCopy::cluster_size_for(const Node& target, std::uint64_t min_cluster_size) {
    return std::max(
        {default_cluster, std::uint64_t{target.limits().cluster_size}, min_cluster_size});
}

BlockCopy::BlockCopy(Child& source, Child& target, std::uint64_t cluster_size, bool write_unchanged)
    : source_(source), target_(target), cluster_(cluster_size), length_(source.node().size()),
      write_flags_(write_unchanged ? req_write_unchanged : 0),
      bitmap_(div_round_up(length_, cluster_size)) {
    bitmap_.set_all();
}

BlockCopy::~BlockCopy() {
    FLEECE_ASSERT(in_flight_.holders() == 0);
}

std::uint64_t BlockCopy::progress_total() const {
    return done_bytes_ + in_flight_bytes_ + std::min(bitmap_.count() * cluster_, length_);
}

void BlockCopy::reset(std::uint64_t offset, std::uint64_t length) {
    const std::uint64_t first = div_round_up(offset, cluster_);
    // The last cluster may be partial: a range reaching the disk end covers it.
    const std::uint64_t end =
        offset + length >= length_ ? bitmap_.size() : (offset + length) / cluster_;
    if (end > first) bitmap_.reset_range(first, end - first);
}

io::Task<std::error_code> BlockCopy::copy(std::uint64_t offset, std::uint64_t length,
                                          CopyOptions opts) {
    const std::uint64_t end = std::min(offset + length, length_);
    if (offset >= end) co_return std::error_code{};
    // Nothing left to copy and nobody copying here: what almost every guest write finds
    // once its clusters were copied, so it costs two range checks and nothing else.
    const std::uint64_t first_bit = offset / cluster_;
    if (bitmap_.none_set(first_bit, div_round_up(end, cluster_) - first_bit) &&
        !in_flight_.overlaps_holder(offset, end - offset))
        co_return std::error_code{};
    auto call = std::make_shared<Call>(std::max(1u, opts.max_workers));
    call->ignore_ratelimit = opts.ignore_ratelimit;
    if (opts.max_chunk) call->max_chunk = std::max(opts.max_chunk, cluster_);
    if (opts.timeout.count() == 0) {
        io::Gate::Holder hold = gate_.enter();
        co_return co_await run_call(offset, end, call);
    }
    // With a timeout the copy runs detached, so giving up on it does not cancel I/O that is
    // already on its way; the call just stops creating new chunks.
    io::Gate::Holder hold = gate_.enter();
    if (!hold) co_return errno_code(ESHUTDOWN);
    call->owner = opts.owner;
    if (call->owner) call->owner->background_work_started();
    io::EventLoop::current().spawn(run_detached(offset, end, call, std::move(hold)));
    io::EventLoop::Timer timer(io::EventLoop::current());
    if (!call->finished) {
        call->waiter = &timer;
        co_await timer.wait_for(opts.timeout);
        call->waiter = nullptr;
    }
    if (call->finished) co_return call->result;
    call->cancelled = true;
    co_return errno_code(ETIMEDOUT);
}

io::Task<void> BlockCopy::run_detached(std::uint64_t offset, std::uint64_t end,
                                       std::shared_ptr<Call> call, io::Gate::Holder hold) {
    call->result = co_await run_call(offset, end, call);
    call->finished = true;
    if (call->waiter) call->waiter->cancel();
    if (call->owner) call->owner->background_work_finished();
    hold.leave(); // close() waits for timed-out copies until here
}

io::Task<std::error_code> BlockCopy::run_call(std::uint64_t offset, std::uint64_t end,
                                              std::shared_ptr<Call> call) {
    const std::uint64_t first_bit = offset / cluster_;
    const std::uint64_t end_bit = div_round_up(end, cluster_);
    for (;;) {
        std::uint64_t bit = first_bit;
        while (!call->stopped() && !call->error) {
            io::AsyncSemaphore::Units slot = co_await call->worker_slots.acquire(1);
            // The bitmap may have changed while we waited for a slot: search again.
            bit = bitmap_.find_next_set(bit, end_bit);
            if (bit >= end_bit) break;
            const std::uint64_t max_bits =
                compress_ ? 1 : std::max<std::uint64_t>(1, call->max_chunk / cluster_);
            std::uint64_t stop = bitmap_.find_next_clear(bit, std::min(end_bit, bit + max_bits));
            const std::uint64_t chunk_off = bit * cluster_;
            const std::uint64_t chunk_len = std::min(stop * cluster_, length_) - chunk_off;
            if (!call->ignore_ratelimit && speed_) {
                co_await rate_limit(chunk_len);
                if (call->stopped()) break;
                // Re-check after sleeping: the clusters may have been copied meanwhile.
                if (!bitmap_.get(bit)) continue;
                stop = bitmap_.find_next_clear(bit, stop);
            }
            // Claim: lock, then re-check under the lock (another caller may have copied
            // or claimed part of it while we waited) and clear the bits, with no await
            // between the check and the clear.
            RangeLockTable::Guard claim =
                co_await in_flight_.lock(chunk_off, std::min(stop * cluster_, length_) - chunk_off,
                                         RangeLockTable::Mode::exclusive);
            if (!bitmap_.get(bit)) continue;
            stop = bitmap_.find_next_clear(bit, stop);
            const std::uint64_t len = std::min(stop * cluster_, length_) - chunk_off;
            if (len < claim.length()) in_flight_.shrink(claim, len);
            bitmap_.reset_range(bit, stop - bit);
            in_flight_bytes_ += len;
            ++call->running;
            slot.detach();
            io::EventLoop::current().spawn(worker(call, std::move(claim)));
            bit = stop;
        }
        while (call->running > 0)
            co_await call->idle.wait();
        if (call->error || call->stopped())
            co_return call->error ? call->error : errno_code(ECANCELED);
        // Someone else (the job, another guest write) may be copying part of our range;
        // wait for it and look again: if it failed, the bits are dirty again.
        co_await in_flight_.wait_idle(offset, end - offset);
        if (bitmap_.none_set(first_bit, end_bit - first_bit)) co_return std::error_code{};
    }
}

io::Task<void> BlockCopy::worker(std::shared_ptr<Call> call, RangeLockTable::Guard claim) {
    const std::uint64_t off = claim.offset(), len = claim.length();
    std::error_code ec;
    bool is_read = false;
    {
        // Whole clusters at least: a compressed cluster must reach the target in one write.
        const std::uint64_t buffer_size =
            std::min({len, std::max(max_buffer, cluster_), max_memory});
        io::Buffer buf = co_await buffers_.get(buffer_size);
        ec = co_await copy_piece(off, len, buf.span(), &is_read);
    }
    if (!ec && checkpoint_every_) {
        // Released (discard_source) at the checkpoint whose flush covers it.
        const std::uint64_t b = off / cluster_;
        unflushed_.set_range(b, div_round_up(off + len, cluster_) - b);
    } else if (!ec && discard_source_) {
        // The chunk is on the target: release it on the source (fleecing space). Advisory,
        // so a failure only means the space stays allocated until the fleecing ends.
        (void)co_await source_.discard(off, len);
    }
    in_flight_bytes_ -= len;
    if (ec) {
        // Failed clusters must be copied again by whoever comes next; set them before the
        // lock is released, so waiters re-checking the bitmap see them.
        const std::uint64_t b = off / cluster_;
        bitmap_.set_range(b, div_round_up(off + len, cluster_) - b);
        if (!call->error) {
            call->error = ec;
            call->error_is_read = is_read;
        }
    } else {
        done_bytes_ += len;
    }
    claim.release();
    call->worker_slots.release(1);
    if (--call->running == 0) call->idle.notify_all();
}

// Copies one claimed chunk, piece by piece along the source's block status, so zero areas
// become write-zeroes on the target instead of data.
io::Task<std::error_code> BlockCopy::copy_piece(std::uint64_t offset, std::uint64_t length,
                                                std::span<std::byte> buf, bool* error_is_read) {
    *error_is_read = false;
    const std::uint64_t end = offset + length;
    while (offset < end) {
        BlockStatus st = co_await source_.block_status(offset, end - offset);
        std::uint64_t n = end - offset;
        bool zero = false;
        if (!st.error && st.length > 0) {
            n = std::min(st.length, n);
            zero = (st.flags & status_zero) != 0;
        }
        if (!zero) n = std::min<std::uint64_t>(n, buf.size());
        const ReqFlags flags = target_write_flags();
        if (zero) {
            if (auto ec = co_await target_.write_zeroes(offset, n, flags & ~req_write_compressed))
                co_return ec;
        } else {
            if (auto ec = co_await source_.read(offset, buf.first(n))) {
                *error_is_read = true;
                co_return ec;
            }
            if (auto ec = co_await target_.write(offset, std::span<const std::byte>(buf.data(), n),
                                                 flags))
                co_return ec;
        }
        offset += n;
    }
    co_return std::error_code{};
}

ReqFlags BlockCopy::target_write_flags() const {
    // Decided per request, not at creation: the graph may change under us. A target edge
    // that holds only write-unchanged (a fleecing image backed by our source) can only take
    // write-unchanged requests, and they are exactly that: the copied clusters read the
    // same before and after.
    const PermSet p = target_.perm();
    if ((p & perm_write_unchanged) && !(p & perm_write)) return write_flags_ | req_write_unchanged;
    return write_flags_;
}

io::Task<void> BlockCopy::rate_limit(std::uint64_t bytes) {
    using namespace std::chrono_literals;
    for (;;) {
        if (speed_ == 0 || cancelled_) co_return;
        const auto now = io::Clock::now();
        if (now >= slice_start_ + 100ms) {
            slice_start_ = now;
            slice_bytes_ = 0;
        }
        // A slice allows speed/10 bytes; one chunk may overdraw it (else speed < chunk stalls).
        if (slice_bytes_ < std::max<std::uint64_t>(1, speed_ / 10)) {
            slice_bytes_ += bytes;
            co_return;
        }
        // Sleep long enough for the overdraft to be paid back at the configured speed.
        const auto debt = std::chrono::nanoseconds(
            static_cast<std::int64_t>((slice_bytes_ * 1'000'000'000ull) / speed_));
        io::EventLoop::Timer timer(io::EventLoop::current());
        sleeping_ = &timer;
        const bool expired =
            co_await timer.wait_until(slice_start_ + std::max<io::Clock::duration>(debt, 100ms));
        sleeping_ = nullptr;
        if (expired) {
            slice_start_ = io::Clock::now();
            slice_bytes_ = 0;
        }
    }
}

void BlockCopy::set_speed(std::uint64_t bytes_per_second) {
    speed_ = bytes_per_second;
    if (sleeping_) sleeping_->cancel();
}

void BlockCopy::cancel_background() {
    cancelled_ = true;
    if (sleeping_) sleeping_->cancel();
}

io::Task<std::error_code> BlockCopy::copy_all_background(CopyOptions opts) {
    cancelled_ = false;
    auto call = std::make_shared<Call>(std::max(1u, opts.max_workers));
    call->ignore_ratelimit = opts.ignore_ratelimit;
    call->external_cancel = &cancelled_;
    if (opts.max_chunk) call->max_chunk = std::max(opts.max_chunk, cluster_);
    io::Gate::Holder hold = gate_.enter();
    if (!hold) co_return errno_code(ESHUTDOWN);
    // Windows of 16 chunks keep each pass short, so a cancel is noticed between them too.
    std::error_code ec;
    for (std::uint64_t off = 0; off < length_ && !cancelled_; off += call->max_chunk * 16) {
        ec = co_await run_call(off, std::min(length_, off + call->max_chunk * 16), call);
        if (ec) {
            last_error_is_read_ = call->error_is_read;
            co_return ec;
        }
        // Checkpoints run beside the copies (a flush round trip must not stall them); one
        // at a time, and the one that failed ends the loop as a target error.
        if (checkpoint_error_) {
            ec = std::exchange(checkpoint_error_, {});
            last_error_is_read_ = false;
            co_return ec;
        }
        if (checkpoint_every_ && !checkpoint_running_ &&
            unflushed_.count() * cluster_ >= checkpoint_every_) {
            io::Gate::Holder cp_hold = gate_.enter();
            if (cp_hold) io::EventLoop::current().spawn(checkpoint_detached(std::move(cp_hold)));
        }
    }
    if (cancelled_) ec = errno_code(ECANCELED);
    co_return ec;
}

io::Task<void> BlockCopy::checkpoint_detached(io::Gate::Holder hold) {
    if (std::error_code ec = co_await checkpoint()) checkpoint_error_ = ec;
    hold.leave();
}

void BlockCopy::enable_checkpoints(std::uint64_t every_bytes) {
    checkpoint_every_ = std::max<std::uint64_t>(every_bytes, 1);
    unflushed_ = Bitmap(bitmap_.size());
    seen_lost_changes_ = target_.node().lost_changes();
}

io::Task<std::error_code> BlockCopy::checkpoint() {
    while (checkpoint_running_)
        co_await checkpoint_idle_.wait();
    // A background checkpoint that failed since the loop last looked fails this one.
    std::error_code ec = std::exchange(checkpoint_error_, {});
    if (!ec) {
        checkpoint_running_ = true;
        ec = co_await flush_and_release();
        checkpoint_running_ = false;
        checkpoint_idle_.notify_all();
    }
    if (ec) last_error_is_read_ = false;
    co_return ec;
}

io::Task<std::error_code> BlockCopy::flush_and_release() {
    // The flush covers the chunks acknowledged before it is issued: those unflushed now.
    Bitmap covered = unflushed_;
    std::error_code ec = co_await target_.flush();
    Node& target = target_.node();
    if (target.lost_changes() != seen_lost_changes_) {
        // Changes acknowledged since the last good checkpoint may be gone: copy every one
        // of them again (their source is still there: discards wait for checkpoints).
        seen_lost_changes_ = target.lost_changes();
        target.accept_lost_changes();
        const std::uint64_t bytes = unflushed_.count() * cluster_;
        log::warn("backup: the target lost up to {} bytes of acknowledged writes; copying "
                  "them again",
                  bytes);
        bitmap_.merge(unflushed_);
        unflushed_.reset_all();
        co_return std::error_code{};
    }
    if (ec) co_return ec;
    // Safe on the target now: release them on the source, one run of clusters at a time.
    const std::uint64_t n = covered.size();
    for (std::uint64_t b = covered.find_next_set(0); b < n; b = covered.find_next_set(b)) {
        const std::uint64_t e = covered.find_next_clear(b);
        unflushed_.reset_range(b, e - b);
        if (discard_source_) {
            const std::uint64_t off = b * cluster_;
            (void)co_await source_.discard(off, std::min(e * cluster_, length_) - off);
        }
        b = e;
    }
    co_return std::error_code{};
}

void BlockCopy::set_compress(bool on) {
    compress_ = on;
    if (on)
        write_flags_ |= req_write_compressed;
    else
        write_flags_ &= ~req_write_compressed;
}

io::Task<std::error_code> BlockCopy::reset_unallocated(const bool* stop) {
    std::uint64_t offset = 0;
    while (offset < length_ && !*stop) {
        // Not under the lock table: clearing a bit only means "nothing to copy", and a
        // cluster that a CBW copy holds is already clear.
        BlockStatus st = co_await source_.block_status(offset, length_ - offset);
        if (st.error) co_return st.error;
        const std::uint64_t n =
            st.length ? std::min(st.length, length_ - offset) : length_ - offset;
        if (!(st.flags & status_allocated)) reset(offset, n);
        offset += n;
    }
    co_return std::error_code{};
}

io::Task<void> BlockCopy::close() {
    cancelled_ = true;
    if (sleeping_) sleeping_->cancel();
    co_await gate_.close();
}

} // namespace fleece::block
