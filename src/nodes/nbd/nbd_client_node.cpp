// NBD client node. libnbd owns the protocol; we own the event loop. Two pump coroutines
// move bytes: the reader always waits for the socket to become readable and lets libnbd
// parse replies; the writer runs only while libnbd has queued output. Each request waits
// on its own completion callback, so many requests are in flight on one connection.

#include "nodes/nbd/nbd_client_node.hpp"

#include "io/file_io.hpp"
#include "util/log.hpp"

#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <libnbd.h>
#include <poll.h>

namespace fleece::nodes {
namespace {

// One outstanding libnbd command; lives in the awaiting coroutine's frame.
struct Completion {
    int error = 0;
    bool done = false;
    std::coroutine_handle<> waiter;
    block::BlockStatus* status = nullptr; // block-status only

    static int on_complete(void* self, int* error) {
        auto* c = static_cast<Completion*>(self);
        c->error = *error;
        c->done = true;
        if (c->waiter) io::EventLoop::current().post(c->waiter);
        return 1; // retire the command
    }
    static int on_extent(void* self, const char* context, std::uint64_t, std::uint32_t* entries,
                         std::size_t count, int*) {
        auto* c = static_cast<Completion*>(self);
        if (std::strcmp(context, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0 || count < 2 || !c->status)
            return 0;
        c->status->length = entries[0];
        const std::uint32_t flags = entries[1];
        c->status->flags = block::status_allocated;
        if (!(flags & LIBNBD_STATE_HOLE)) c->status->flags |= block::status_data;
        if (flags & LIBNBD_STATE_ZERO) c->status->flags |= block::status_zero;
        return 0;
    }
    nbd_completion_callback callback() { return {on_complete, this, nullptr}; }
    nbd_extent_callback extent_callback() { return {on_extent, this, nullptr}; }

    auto wait() {
        struct Awaiter {
            Completion* c;
            bool await_ready() const noexcept { return c->done; }
            void await_suspend(std::coroutine_handle<> h) { c->waiter = h; }
            void await_resume() const noexcept {}
        };
        return Awaiter{this};
    }
};

class NbdClientNode final : public block::Node {
  public:
    NbdClientNode(std::string name, nbd_handle* h, std::string description)
        : Node(std::move(name), "nbd"), h_(h), description_(std::move(description)) {
        set_size(static_cast<std::uint64_t>(nbd_get_size(h_)));
        caps_.write = nbd_is_read_only(h_) == 0;
        read_only_ = !caps_.write;
        caps_.flush = nbd_can_flush(h_) == 1;
        caps_.fua = nbd_can_fua(h_) == 1;
        caps_.trim = nbd_can_trim(h_) == 1;
        caps_.zero = nbd_can_zero(h_) == 1;
        caps_.fast_zero = nbd_can_fast_zero(h_) == 1;
        caps_.block_status = nbd_can_meta_context(h_, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
        const std::int64_t max = nbd_get_block_size(h_, LIBNBD_SIZE_MAXIMUM);
        limits_.max_transfer =
            max > 0 ? static_cast<std::uint32_t>(std::min<std::int64_t>(max, 32 << 20)) : 32u << 20;
        const std::int64_t min = nbd_get_block_size(h_, LIBNBD_SIZE_MINIMUM);
        limits_.request_alignment = min > 0 ? static_cast<std::uint32_t>(min) : 1;
        fd_ = nbd_aio_get_fd(h_);
    }
    ~NbdClientNode() override {
        if (h_) nbd_close(h_);
    }

    std::string filename() const override { return description_; }

    io::Task<void> close() override {
        if (!reading_) co_return;
        nbd_aio_disconnect(h_, 0);
        kick_writer();
        while (pumps_ > 0)
            co_await pumps_done_.wait();
    }

  protected:
    io::Task<std::error_code> do_read(std::uint64_t offset, std::span<std::byte> buf,
                                      block::ReqFlags) override {
        Completion c;
        const auto r = nbd_aio_pread(h_, buf.data(), buf.size(), offset, c.callback(), 0);
        co_return co_await finish(r, c, "read");
    }
    io::Task<std::error_code> do_write(std::uint64_t offset, std::span<const std::byte> buf,
                                       block::ReqFlags flags) override {
        Completion c;
        const std::uint32_t f = (flags & block::req_fua) && caps_.fua ? LIBNBD_CMD_FLAG_FUA : 0;
        const auto r = nbd_aio_pwrite(h_, buf.data(), buf.size(), offset, c.callback(), f);
        co_return co_await finish(r, c, "write");
    }
    io::Task<std::error_code> do_write_zeroes(std::uint64_t offset, std::uint64_t length,
                                              block::ReqFlags flags) override {
        if (!caps_.zero) co_return co_await Node::do_write_zeroes(offset, length, flags);
        std::uint32_t f = 0;
        if (!(flags & block::req_may_unmap)) f |= LIBNBD_CMD_FLAG_NO_HOLE;
        if ((flags & block::req_fua) && caps_.fua) f |= LIBNBD_CMD_FLAG_FUA;
        if (flags & block::req_no_fallback) {
            if (!caps_.fast_zero) co_return block::errno_code(ENOTSUP);
            f |= LIBNBD_CMD_FLAG_FAST_ZERO;
        }
        Completion c;
        const auto r = nbd_aio_zero(h_, length, offset, c.callback(), f);
        co_return co_await finish(r, c, "write-zeroes");
    }
    io::Task<std::error_code> do_discard(std::uint64_t offset, std::uint64_t length) override {
        if (!caps_.trim) co_return std::error_code{};
        Completion c;
        const auto r = nbd_aio_trim(h_, length, offset, c.callback(), 0);
        co_return co_await finish(r, c, "discard");
    }
    io::Task<std::error_code> do_flush() override {
        if (!caps_.flush) co_return std::error_code{};
        Completion c;
        const auto r = nbd_aio_flush(h_, c.callback(), 0);
        co_return co_await finish(r, c, "flush");
    }
    io::Task<block::BlockStatus> do_block_status(std::uint64_t offset,
                                                 std::uint64_t length) override {
        block::BlockStatus s;
        s.length = length;
        if (!caps_.block_status) co_return s;
        Completion c;
        c.status = &s;
        s.length = 0;
        const std::uint64_t count = std::min<std::uint64_t>(length, 1u << 30);
        const auto r =
            nbd_aio_block_status(h_, count, offset, c.extent_callback(), c.callback(), 0);
        s.error = co_await finish(r, c, "block-status");
        if (!s.error && (s.length == 0 || s.length > length)) {
            s.length = length; // server answered nothing usable: assume data
            s.flags = block::status_data | block::status_allocated;
        }
        co_return s;
    }

  private:
    io::Task<std::error_code> finish(std::int64_t issued, Completion& c, const char* what) {
        if (issued < 0) {
            const int e = nbd_get_errno() ? nbd_get_errno() : EIO;
            log::warn("nbd node '{}': {} failed: {}", name(), what, nbd_get_error());
            co_return block::errno_code(e);
        }
        if (!reading_) {
            // Started with the first request, so a node refused by the graph (and destroyed
            // without close) never leaves a pump behind.
            reading_ = true;
            io::EventLoop::current().spawn(read_pump());
        }
        kick_writer();
        co_await c.wait();
        if (c.error) co_return block::errno_code(c.error);
        co_return std::error_code{};
    }

    void kick_writer() {
        if (!writing_ && (nbd_aio_get_direction(h_) & LIBNBD_AIO_DIRECTION_WRITE)) {
            writing_ = true;
            io::EventLoop::current().spawn(write_pump());
        }
    }

    io::Task<void> read_pump() {
        ++pumps_;
        while (!nbd_aio_is_closed(h_) && !nbd_aio_is_dead(h_)) {
            const std::int64_t ev = co_await io::poll(fd_, POLLIN);
            if (ev < 0 || nbd_aio_notify_read(h_) < 0) break;
            kick_writer();
        }
        fail_all();
        --pumps_;
        pumps_done_.notify_all();
    }

    io::Task<void> write_pump() {
        ++pumps_;
        while (!nbd_aio_is_closed(h_) && !nbd_aio_is_dead(h_) &&
               (nbd_aio_get_direction(h_) & LIBNBD_AIO_DIRECTION_WRITE)) {
            const std::int64_t ev = co_await io::poll(fd_, POLLOUT);
            if (ev < 0 || nbd_aio_notify_write(h_) < 0) break;
        }
        writing_ = false;
        --pumps_;
        pumps_done_.notify_all();
    }

    void fail_all() {
        if (nbd_aio_is_dead(h_))
            log::warn("nbd node '{}': connection lost: {}", name(), nbd_get_error());
    }

    nbd_handle* h_;
    std::string description_;
    int fd_ = -1;
    bool writing_ = false;
    bool reading_ = false;
    int pumps_ = 0;
    io::WaitQueue pumps_done_;
};

io::Task<Result<std::unique_ptr<block::Node>>>
open_nbd(OpenContext&, std::string node_name, const CommonOptions& common, OptionReader& opts) {
    const nlohmann::json* server = opts.required_raw("server");
    const std::string export_name = opts.string("export").value_or("");
    if (opts.string("tls-creds")) opts.fail("nbd: 'tls-creds' is not supported yet");
    opts.uint("reconnect-delay");
    opts.uint("open-timeout");
    if (!server) co_return make_error("Parameter 'server' is missing");
    OptionReader srv(*server, "server.");
    const std::string type = srv.required_string("type");
    std::string path, host, port;
    if (type == "unix")
        path = srv.required_string("path");
    else if (type == "inet") {
        host = srv.required_string("host");
        port = srv.required_string("port");
    } else {
        srv.fail(fmt::format("Parameter 'server.type' does not accept value '{}'", type));
    }
    if (Status st = srv.finish(); !st) co_return st.error();
    nbd_handle* h = nbd_create();
    if (!h) co_return make_error(fmt::format("nbd: {}", nbd_get_error()));
    nbd_set_export_name(h, export_name.c_str());
    nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION);
    // Connecting blocks the loop briefly; blockdev-add does the same in QEMU.
    const int r = type == "unix" ? nbd_connect_unix(h, path.c_str())
                                 : nbd_connect_tcp(h, host.c_str(), port.c_str());
    if (r < 0) {
        Error e =
            make_error(fmt::format("Failed to connect to NBD server {}: {}",
                                   type == "unix" ? path : host + ":" + port, nbd_get_error()));
        nbd_close(h);
        co_return e;
    }
    const std::string description = type == "unix"
                                        ? fmt::format("nbd+unix:///{}?socket={}", export_name, path)
                                        : fmt::format("nbd://{}:{}/{}", host, port, export_name);
    auto node = std::make_unique<NbdClientNode>(node_name, h, description);
    (void)common;
    co_return std::unique_ptr<block::Node>(std::move(node));
}

} // namespace

DriverSpec nbd_client_driver() {
    return {"nbd", "client of a remote NBD export (libnbd)", open_nbd};
}

} // namespace fleece::nodes
