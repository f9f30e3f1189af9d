// Fallback backend: file operations run on a thread pool, socket readiness uses poll(2) on
// the loop thread. Slower than io_uring but works wherever plain system calls do.

#include "io/event_loop.hpp"
#include "io/thread_pool.hpp"
#include "util/assert.hpp"

#include <cerrno>
#include <fcntl.h>
#include <mutex>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <vector>

namespace fleece::io {
namespace {

constexpr std::size_t file_threads = 32;

std::int64_t run_blocking(const IoOp& op) {
    long r = 0;
    switch (op.opcode) {
    case IoOpcode::read:
        r = ::pread(op.fd, op.buffer, op.length, static_cast<off_t>(op.offset));
        break;
    case IoOpcode::write:
        r = ::pwrite(op.fd, op.buffer, op.length, static_cast<off_t>(op.offset));
        break;
    case IoOpcode::fsync:
        r = ::fsync(op.fd);
        break;
    case IoOpcode::fdatasync:
        r = ::fdatasync(op.fd);
        break;
    case IoOpcode::fallocate:
        r = ::fallocate(op.fd, op.mode, static_cast<off_t>(op.offset),
                        static_cast<off_t>(op.length));
        break;
    case IoOpcode::poll:
        FLEECE_ASSERT(false);
    }
    return r < 0 ? -errno : r;
}

class ThreadBackend final : public Backend {
  public:
    explicit ThreadBackend(EventLoop& loop)
        : loop_(loop), pool_(file_threads), event_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
        FLEECE_ASSERT(event_fd_ >= 0);
    }
    ~ThreadBackend() override { ::close(event_fd_); }

    std::string_view name() const override { return "threads"; }

    void submit(IoOp* op) override {
        ++in_flight_;
        if (op->opcode == IoOpcode::poll) {
            polls_.push_back(op);
            return;
        }
        pool_.execute([this, op] {
            op->result = run_blocking(*op);
            {
                std::lock_guard<std::mutex> guard(mutex_);
                done_.push_back(op);
            }
            wakeup();
        });
    }

    void wait(std::int64_t timeout_ns) override {
        std::vector<pollfd> fds;
        fds.reserve(polls_.size() + 1);
        fds.push_back({event_fd_, POLLIN, 0});
        for (IoOp* op : polls_)
            fds.push_back({op->fd, static_cast<short>(op->mode), 0});
        int timeout_ms = -1;
        if (timeout_ns >= 0) timeout_ms = static_cast<int>((timeout_ns + 999999) / 1000000);
        const int n = ::poll(fds.data(), fds.size(), timeout_ms);
        if (n > 0) complete_polls(fds);
        std::uint64_t value = 0;
        [[maybe_unused]] ssize_t r = ::read(event_fd_, &value, sizeof value);
        std::vector<IoOp*> done;
        {
            std::lock_guard<std::mutex> guard(mutex_);
            done.swap(done_);
        }
        for (IoOp* op : done) {
            --in_flight_;
            loop_.post(op->waiter);
        }
    }

    void wakeup() override {
        const std::uint64_t one = 1;
        [[maybe_unused]] ssize_t n = ::write(event_fd_, &one, sizeof one);
    }

    std::size_t in_flight() const override { return in_flight_; }

  private:
    void complete_polls(const std::vector<pollfd>& fds) {
        std::vector<IoOp*> still;
        for (std::size_t i = 0; i < polls_.size(); ++i) {
            IoOp* op = polls_[i];
            if (fds[i + 1].revents != 0) {
                op->result = fds[i + 1].revents;
                --in_flight_;
                loop_.post(op->waiter);
            } else {
                still.push_back(op);
            }
        }
        polls_.swap(still);
    }

    EventLoop& loop_;
    ThreadPool pool_;
    int event_fd_;
    std::mutex mutex_;
    std::vector<IoOp*> done_;
    std::vector<IoOp*> polls_;
    std::size_t in_flight_ = 0;
};

} // namespace

std::unique_ptr<Backend> make_thread_backend(EventLoop& loop) {
    return std::make_unique<ThreadBackend>(loop);
}

} // namespace fleece::io
