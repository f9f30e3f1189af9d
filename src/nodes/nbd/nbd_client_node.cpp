// NBD client node. libnbd owns the protocol; we own the event loop. Two pump coroutines
// move bytes: the reader always waits for the socket to become readable and lets libnbd
// parse replies; the writer runs only while libnbd has queued output. Each request waits
// on its own completion callback, so many requests are in flight on one connection.

#include "nodes/nbd/nbd_client_node.hpp"

#include "io/file_io.hpp"
#include "io/tls_creds.hpp"
#include "util/log.hpp"

#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <functional>
#include <libnbd.h>
#include <memory>
#include <poll.h>
#include <sys/socket.h>

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

// libnbd's last error message on this thread (it may have none).
std::string last_error() {
    const char* e = nbd_get_error();
    return e ? e : "unknown error";
}

// Where and how to connect; kept so a dropped connection can be reopened identically.
struct ConnectSpec {
    std::string type; // "unix" or "inet"
    std::string path, host, port;
    std::string export_name;
    std::shared_ptr<io::TlsCreds> tls; // client-endpoint credentials, or null

    std::string where() const { return type == "unix" ? path : host + ":" + port; }
};

// A libnbd handle configured from `spec` (not connected yet).
nbd_handle* new_handle(const ConnectSpec& spec) {
    nbd_handle* h = nbd_create();
    if (!h) return nullptr;
    nbd_set_export_name(h, spec.export_name.c_str());
    nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION);
    if (spec.tls) {
        const io::TlsCredsOptions& t = spec.tls->options();
        nbd_set_tls(h, LIBNBD_TLS_REQUIRE);
        if (t.type == io::TlsCredsType::x509) {
            // libnbd reads ca-cert.pem, client-cert.pem and client-key.pem like QEMU.
            nbd_set_tls_certificates(h, t.dir.c_str());
            nbd_set_tls_verify_peer(h, t.verify_peer);
        } else {
            nbd_set_tls_psk_file(h, (t.dir + "/keys.psk").c_str());
            nbd_set_tls_username(h, t.username.empty() ? "qemu" : t.username.c_str());
        }
    }
    return h;
}

// Connects `h` without blocking the loop: libnbd's asynchronous connect (including the TLS
// handshake and option negotiation), driven by polling the socket in libnbd's direction.
// `shutdown_fd` receives the socket so close() can interrupt a connect in progress.
io::Task<Status> connect_async(nbd_handle* h, ConnectSpec spec, int* shutdown_fd) {
    const int r = spec.type == "unix"
                      ? nbd_aio_connect_unix(h, spec.path.c_str())
                      : nbd_aio_connect_tcp(h, spec.host.c_str(), spec.port.c_str());
    if (r < 0) co_return make_error(last_error());
    while (nbd_aio_is_connecting(h)) {
        const int fd = nbd_aio_get_fd(h);
        if (fd < 0) co_return make_error(last_error());
        *shutdown_fd = fd;
        const unsigned dir = nbd_aio_get_direction(h);
        const int events = ((dir & LIBNBD_AIO_DIRECTION_READ) ? POLLIN : 0) |
                           ((dir & LIBNBD_AIO_DIRECTION_WRITE) ? POLLOUT : 0);
        const std::int64_t ev = co_await io::poll(fd, events ? events : POLLIN);
        *shutdown_fd = -1;
        if (ev < 0) co_return make_error(std::strerror(static_cast<int>(-ev)));
        int n = 0;
        if ((dir & LIBNBD_AIO_DIRECTION_WRITE) && (ev & (POLLOUT | POLLERR | POLLHUP)))
            n = nbd_aio_notify_write(h);
        else
            n = nbd_aio_notify_read(h);
        if (n < 0) co_return make_error(last_error());
    }
    if (!nbd_aio_is_ready(h)) co_return make_error(last_error());
    co_return Status{};
}

// One connection: the handle and its socket. Shared by the pumps and by the requests in
// flight on it, so the handle of a dropped connection is closed after the last user.
struct Conn {
    explicit Conn(nbd_handle* handle) : h(handle), fd(nbd_aio_get_fd(handle)) {}
    ~Conn() { nbd_close(h); }
    Conn(const Conn&) = delete;
    bool alive() const { return !nbd_aio_is_closed(h) && !nbd_aio_is_dead(h); }
    nbd_handle* h;
    int fd;
    bool reading = false;
    bool writing = false;
    // Changes the server acknowledged on this connection without FUA, and how many of them
    // a successful flush covered: the rest sit in the server's write cache, and are lost
    // if the server went away with the connection.
    std::uint64_t acked_changes = 0;
    std::uint64_t flushed_changes = 0;
};

// What a command does to the server's data, for the write-cache bookkeeping above.
enum class Effect { none, change, flush };
// A write with FUA is durable when acknowledged: it cannot be lost with the cache.
Effect effect_of(std::uint32_t nbd_flags) {
    return (nbd_flags & LIBNBD_CMD_FLAG_FUA) ? Effect::none : Effect::change;
}

class NbdClientNode final : public block::Node {
  public:
    NbdClientNode(std::string name, nbd_handle* h, ConnectSpec spec, std::string description,
                  std::uint64_t reconnect_delay)
        : Node(std::move(name), "nbd"), conn_(std::make_shared<Conn>(h)), spec_(std::move(spec)),
          description_(std::move(description)), reconnect_delay_(reconnect_delay),
          deadline_timer_(io::EventLoop::current()), retry_timer_(io::EventLoop::current()) {
        set_size(static_cast<std::uint64_t>(nbd_get_size(h)));
        caps_.write = nbd_is_read_only(h) == 0;
        read_only_ = !caps_.write;
        caps_.flush = nbd_can_flush(h) == 1;
        caps_.fua = nbd_can_fua(h) == 1;
        caps_.trim = nbd_can_trim(h) == 1;
        caps_.zero = nbd_can_zero(h) == 1;
        caps_.fast_zero = nbd_can_fast_zero(h) == 1;
        caps_.block_status = nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
        const std::int64_t max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
        limits_.max_transfer =
            max > 0 ? static_cast<std::uint32_t>(std::min<std::int64_t>(max, 32 << 20)) : 32u << 20;
        const std::int64_t min = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
        limits_.request_alignment = min > 0 ? static_cast<std::uint32_t>(min) : 1;
    }

    std::string filename() const override { return description_; }

    bool may_lose_acknowledged_changes() const override { return caps_.flush; }
    std::uint64_t lost_changes() const override { return lost_changes_; }
    void accept_lost_changes() override { accepted_lost_changes_ = lost_changes_; }
    std::optional<std::chrono::milliseconds> disconnected_for() const override {
        if (conn_) return std::nullopt;
        return std::chrono::duration_cast<std::chrono::milliseconds>(io::Clock::now() -
                                                                     disconnected_at_);
    }
    void cancel_in_flight() override {
        if (conn_) return; // requests on a live connection end as the server answers
        fail_after_ = io::Clock::now();
        reconnected_.notify_all();
    }

    io::Task<void> close() override {
        closing_ = true;
        deadline_timer_.cancel();
        retry_timer_.cancel();
        if (connecting_fd_ >= 0) ::shutdown(connecting_fd_, SHUT_RDWR);
        reconnected_.notify_all();
        if (conn_ && conn_->reading) {
            nbd_aio_disconnect(conn_->h, 0);
            kick_writer(conn_);
        }
        while (tasks_ > 0)
            co_await tasks_done_.wait();
        conn_.reset();
    }

  protected:
    io::Task<std::error_code> do_read(std::uint64_t offset, std::span<std::byte> buf,
                                      block::ReqFlags) override {
        co_return co_await run(
            [&](nbd_handle* h, Completion& c) {
                return nbd_aio_pread(h, buf.data(), buf.size(), offset, c.callback(), 0);
            },
            "read");
    }
    io::Task<std::error_code> do_write(std::uint64_t offset, std::span<const std::byte> buf,
                                       block::ReqFlags flags) override {
        const std::uint32_t f = (flags & block::req_fua) && caps_.fua ? LIBNBD_CMD_FLAG_FUA : 0;
        co_return co_await run(
            [&](nbd_handle* h, Completion& c) {
                return nbd_aio_pwrite(h, buf.data(), buf.size(), offset, c.callback(), f);
            },
            "write", effect_of(f));
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
        co_return co_await run(
            [&](nbd_handle* h, Completion& c) {
                return nbd_aio_zero(h, length, offset, c.callback(), f);
            },
            "write-zeroes", effect_of(f));
    }
    io::Task<std::error_code> do_discard(std::uint64_t offset, std::uint64_t length) override {
        if (!caps_.trim) co_return std::error_code{};
        co_return co_await run(
            [&](nbd_handle* h, Completion& c) {
                return nbd_aio_trim(h, length, offset, c.callback(), 0);
            },
            "discard", Effect::change);
    }
    io::Task<std::error_code> do_flush() override {
        if (!caps_.flush) co_return std::error_code{};
        std::error_code ec = co_await run(
            [&](nbd_handle* h, Completion& c) { return nbd_aio_flush(h, c.callback(), 0); },
            "flush", Effect::flush);
        // A flush on a new connection cannot vouch for what the old server cached and lost:
        // every flush fails from then on, unless the writer accepted the loss (it wrote
        // everything again), so that a backup never completes over such a gap. Checked
        // after the flush too, since the drop may have happened while it ran.
        if (!ec && lost_changes_ != accepted_lost_changes_) ec = block::errno_code(EIO);
        co_return ec;
    }
    io::Task<block::BlockStatus> do_block_status(std::uint64_t offset,
                                                 std::uint64_t length) override {
        block::BlockStatus s;
        s.length = length;
        if (!caps_.block_status) co_return s;
        const std::uint64_t count = std::min<std::uint64_t>(length, 1u << 30);
        s.error = co_await run(
            [&](nbd_handle* h, Completion& c) {
                s.length = 0;
                c.status = &s;
                return nbd_aio_block_status(h, count, offset, c.extent_callback(), c.callback(), 0);
            },
            "block-status");
        if (!s.error && (s.length == 0 || s.length > length)) {
            s.length = length; // server answered nothing usable: assume data
            s.flags = block::status_data | block::status_allocated;
        }
        co_return s;
    }

  private:
    using Issue = std::function<std::int64_t(nbd_handle*, Completion&)>;

    // Issues one command and waits for it. A command caught by a dropped connection is
    // issued again on the next connection, as long as the reconnection comes within
    // reconnect-delay seconds of the drop; after that, requests fail with EIO at once.
    io::Task<std::error_code> run(Issue issue, const char* what, Effect effect = Effect::none) {
        while (true) {
            if (!conn_) {
                if (closing_ || io::Clock::now() >= fail_after_) {
                    log::warn("nbd node '{}': {} failed: not connected to {}", name(), what,
                              spec_.where());
                    co_return block::errno_code(EIO);
                }
                co_await reconnected_.wait(); // reconnection, deadline or close
                continue;
            }
            std::shared_ptr<Conn> conn = conn_;
            Completion c;
            const std::uint64_t acked_before = conn->acked_changes;
            const std::int64_t r = issue(conn->h, c);
            if (r < 0) {
                const int e = nbd_get_errno() ? nbd_get_errno() : EIO;
                if (!conn->alive()) {
                    lost(conn);
                    continue;
                }
                log::warn("nbd node '{}': {} failed: {}", name(), what, last_error());
                co_return block::errno_code(e);
            }
            start_pumps(conn);
            co_await c.wait();
            if (c.error && !conn->alive()) {
                lost(conn);
                continue;
            }
            if (c.error) co_return block::errno_code(c.error);
            if (effect == Effect::change) ++conn->acked_changes;
            if (effect == Effect::flush)
                conn->flushed_changes = std::max(conn->flushed_changes, acked_before);
            co_return std::error_code{};
        }
    }

    void start_pumps(const std::shared_ptr<Conn>& conn) {
        if (!conn->reading) {
            // Started with the first request, so a node refused by the graph (and destroyed
            // without close) never leaves a pump behind.
            conn->reading = true;
            spawn_task(read_pump(conn));
        }
        kick_writer(conn);
    }

    void kick_writer(const std::shared_ptr<Conn>& conn) {
        if (!conn->writing && (nbd_aio_get_direction(conn->h) & LIBNBD_AIO_DIRECTION_WRITE)) {
            conn->writing = true;
            spawn_task(write_pump(conn));
        }
    }

    void spawn_task(io::Task<void> t) {
        ++tasks_;
        io::EventLoop::current().spawn(std::move(t));
    }
    void task_done() {
        --tasks_;
        tasks_done_.notify_all();
    }

    io::Task<void> read_pump(std::shared_ptr<Conn> conn) {
        while (conn->alive()) {
            const std::int64_t ev = co_await io::poll(conn->fd, POLLIN);
            if (ev < 0 || nbd_aio_notify_read(conn->h) < 0) break;
            kick_writer(conn);
        }
        if (!closing_) {
            log::warn("nbd node '{}': connection lost: {}", name(), last_error());
            lost(conn);
        }
        task_done();
    }

    io::Task<void> write_pump(std::shared_ptr<Conn> conn) {
        while (conn->alive() && (nbd_aio_get_direction(conn->h) & LIBNBD_AIO_DIRECTION_WRITE)) {
            const std::int64_t ev = co_await io::poll(conn->fd, POLLOUT);
            if (ev < 0 || nbd_aio_notify_write(conn->h) < 0) break;
        }
        conn->writing = false;
        task_done();
    }

    // The connection `conn` is gone: start reconnecting (once per connection) and give
    // waiting requests reconnect-delay seconds.
    void lost(const std::shared_ptr<Conn>& conn) {
        if (conn_ != conn || closing_) return;
        if (caps_.flush && conn->acked_changes > conn->flushed_changes) {
            lost_changes_ += conn->acked_changes - conn->flushed_changes;
            log::warn("nbd node '{}': the connection dropped with {} acknowledged changes not "
                      "yet flushed; the server may have lost them, so flushes fail until "
                      "the writer wrote them again (a backup job with an immutable source "
                      "does; otherwise re-add the node and write again)",
                      name(), conn->acked_changes - conn->flushed_changes);
        }
        conn_.reset();
        disconnected_at_ = io::Clock::now();
        fail_after_ = disconnected_at_ + std::chrono::seconds(reconnect_delay_);
        spawn_task(reconnect_loop());
        if (reconnect_delay_ > 0) spawn_task(wake_at_deadline());
    }

    io::Task<void> wake_at_deadline() {
        if (!deadline_timer_.armed()) (void)co_await deadline_timer_.wait_until(fail_after_);
        reconnected_.notify_all();
        task_done();
    }

    // Reconnects in the background (as QEMU does, whatever reconnect-delay says), one
    // attempt a second, until it succeeds or the node closes.
    io::Task<void> reconnect_loop() {
        int attempts = 0;
        while (!closing_) {
            nbd_handle* h = new_handle(spec_);
            Status st = make_error(last_error());
            if (h) st = co_await connect_async(h, spec_, &connecting_fd_); // no co_await in ?:
            if (st && !closing_ && static_cast<std::uint64_t>(nbd_get_size(h)) != size())
                st = make_error("export size changed");
            if (st && !closing_) {
                conn_ = std::make_shared<Conn>(h);
                log::info("nbd node '{}': reconnected to {}", name(), spec_.where());
                deadline_timer_.cancel();
                reconnected_.notify_all();
                break;
            }
            if (h) nbd_close(h);
            if (!closing_) {
                // The first failure is worth a warning; the retries once a second are not.
                if (attempts++ == 0)
                    log::warn("nbd node '{}': reconnect failed: {}", name(), st.error().message);
                else
                    log::debug("nbd node '{}': reconnect failed: {}", name(), st.error().message);
                (void)co_await retry_timer_.wait_for(std::chrono::seconds(1));
            }
        }
        reconnected_.notify_all();
        task_done();
    }

    std::shared_ptr<Conn> conn_; // null while disconnected
    ConnectSpec spec_;
    std::string description_;
    std::uint64_t reconnect_delay_;
    io::Clock::time_point fail_after_{};
    io::Clock::time_point disconnected_at_{};
    io::WaitQueue reconnected_;
    io::EventLoop::Timer deadline_timer_;
    io::EventLoop::Timer retry_timer_;
    int connecting_fd_ = -1;
    bool closing_ = false;
    // Changes acknowledged but not flushed when their connection dropped, and how many of
    // them the writer accepted (see lost(), do_flush() and Node::lost_changes()).
    std::uint64_t lost_changes_ = 0;
    std::uint64_t accepted_lost_changes_ = 0;
    int tasks_ = 0; // pumps and background coroutines; close() waits for them
    io::WaitQueue tasks_done_;
};

io::Task<Result<std::unique_ptr<block::Node>>>
open_nbd(OpenContext&, std::string node_name, const CommonOptions& common, OptionReader& opts) {
    const nlohmann::json* server = opts.required_raw("server");
    ConnectSpec spec;
    spec.export_name = opts.string("export").value_or("");
    const std::optional<std::string> tls_id = opts.string("tls-creds");
    if (opts.string("tls-hostname")) opts.fail("nbd: 'tls-hostname' is not supported");
    const std::uint64_t reconnect_delay = opts.uint("reconnect-delay").value_or(0);
    const std::uint64_t open_timeout = opts.uint("open-timeout").value_or(0);
    if (!server) co_return make_error("Parameter 'server' is missing");
    OptionReader srv(*server, "server.");
    spec.type = srv.required_string("type");
    if (spec.type == "unix")
        spec.path = srv.required_string("path");
    else if (spec.type == "inet") {
        spec.host = srv.required_string("host");
        spec.port = srv.required_string("port");
    } else {
        srv.fail(fmt::format("Parameter 'server.type' does not accept value '{}'", spec.type));
    }
    if (Status st = srv.finish(); !st) co_return st.error();
    if (tls_id) {
        auto creds = io::find_tls_creds(*tls_id, false);
        if (!creds) co_return creds.error();
        spec.tls = *creds;
    }
    // open-timeout: keep trying for that many seconds (once a second); 0 = one attempt.
    const io::Clock::time_point give_up = io::Clock::now() + std::chrono::seconds(open_timeout);
    nbd_handle* h = nullptr;
    while (true) {
        h = new_handle(spec);
        if (!h) co_return make_error(fmt::format("nbd: {}", last_error()));
        int ignored_fd = -1;
        Status st = co_await connect_async(h, spec, &ignored_fd);
        if (st) break;
        nbd_close(h);
        if (io::Clock::now() >= give_up)
            co_return make_error(fmt::format("Failed to connect to NBD server {}: {}", spec.where(),
                                             st.error().message));
        co_await io::sleep_for(std::chrono::seconds(1));
    }
    const std::string description =
        spec.type == "unix" ? fmt::format("nbd{}+unix:///{}?socket={}", spec.tls ? "s" : "",
                                          spec.export_name, spec.path)
                            : fmt::format("nbd{}://{}:{}/{}", spec.tls ? "s" : "", spec.host,
                                          spec.port, spec.export_name);
    auto node = std::make_unique<NbdClientNode>(node_name, h, std::move(spec), description,
                                                reconnect_delay);
    (void)common;
    co_return std::unique_ptr<block::Node>(std::move(node));
}

} // namespace

DriverSpec nbd_client_driver() {
    return {"nbd", "client of a remote NBD export (libnbd)", open_nbd};
}

} // namespace fleece::nodes
