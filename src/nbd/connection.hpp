#pragma once
// Internal: one client connection (handshake, then the transmission phase).

#include "io/buffer_pool.hpp"
#include "io/socket.hpp"
#include "io/stream.hpp"
#include "io/sync.hpp"
#include "io/task.hpp"
#include "nbd/codec.hpp"
#include "nbd/export.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace fleece::nbd {

class NbdServer;

class Connection : public std::enable_shared_from_this<Connection> {
  public:
    // Bytes of request payload (reads and writes) a connection may have in flight.
    static constexpr std::size_t max_in_flight_bytes = 64u << 20;

    Connection(NbdServer* server, io::FileDescriptor fd)
        : server_(server), fd_(std::move(fd)),
          stream_(std::make_unique<io::SocketStream>(fd_.get())) {}

    // Runs the connection to its end; owns `self`'s lifetime.
    static io::Task<void> run(std::shared_ptr<Connection> self, io::Gate::Holder server_hold);

    // Wake the reader so the connection winds down (remove_export, stop).
    void shut_down();

  private:
    enum class Next { again, transmission, close };
    io::Task<bool> handshake();
    static io::Task<void> handshake_watchdog(std::shared_ptr<Connection> self,
                                             std::uint32_t seconds, io::Gate::Holder hold);
    void end_handshake_timer();
    io::Task<Next> handle_option(OptionHeader h);
    io::Task<bool> send(Bytes bytes);
    io::Task<bool> send_option_reply(std::uint32_t option, std::uint32_t type, Bytes payload = {});
    io::Task<bool> discard_input(std::uint64_t length);
    io::Task<Next> option_starttls(Bytes data);
    io::Task<Next> option_info(std::uint32_t option, Bytes data);
    io::Task<Next> option_meta(std::uint32_t option, Bytes data);
    io::Task<bool> enter_transmission(std::shared_ptr<Export> exp);
    io::Task<void> transmission();
    static io::Task<void> handle_request(std::shared_ptr<Connection> self, Request req,
                                         io::Buffer payload, io::Gate::Holder hold);
    io::Task<void> do_read(Request req, io::Buffer buf);
    io::Task<void> do_sparse_read(Request req, io::Buffer buf);
    io::Task<void> do_block_status(Request req);
    io::Task<void> reply_simple(std::uint64_t cookie, std::uint32_t error);
    io::Task<void> reply_error(const Request& req, std::uint32_t error);
    io::Task<void> write_locked(Bytes head, std::span<const std::byte> data);

    NbdServer* server_;
    io::FileDescriptor fd_;
    std::unique_ptr<io::Stream> stream_; // the socket, or the TLS session after STARTTLS
    bool tls_ = false;                   // STARTTLS completed
    std::shared_ptr<Export> export_;
    io::Gate::Holder export_hold_;
    ExportParams params_;
    bool no_zeroes_ = false;
    bool structured_ = false;
    // Contexts chosen by SET_META_CONTEXT, with their wire ids.
    std::vector<std::pair<std::uint32_t, std::shared_ptr<MetaContext>>> selected_;
    std::string meta_export_; // export name the selection was made for
    bool broken_ = false;
    io::EventLoop::Timer handshake_timer_{io::EventLoop::current()}; // see handshake_watchdog
    bool handshake_over_ = false;
    io::AsyncMutex write_mutex_;
    io::BufferPool buffers_{max_in_flight_bytes};
    io::Gate requests_;
};

} // namespace fleece::nbd
