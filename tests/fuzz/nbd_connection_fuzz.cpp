// libFuzzer target for the NBD server's connection state machine: the input is what a
// client sends after the server's greeting (client flags, options, then requests and their
// payloads), written into one end of a socket pair whose other end a real nbd::Connection
// serves, exactly as after accept(). Handshake, option negotiation (INFO/GO, LIST, meta
// contexts, STARTTLS), request validation, out-of-order completion and replies all run as
// in the daemon. The server's output is read and dropped.
//
// Input layout: byte 0 chooses the setup, the rest is the client's byte stream.
//   bit 0: TLS-only server (PSK credentials): only STARTTLS/ABORT are honoured, and after
//          STARTTLS the rest of the input is fed to the TLS handshake as garbage
//   bit 1: writable export
//   bits 4-7: seed for the memory node's random completion delays (0 = none)
// The export, named "disk", is a 1 MiB memory node with 4 KiB allocation granularity
// offering base:allocation and qemu:allocation-depth.
//
// Link against fleece_nbd and fleece_nodes (and libFuzzer: -fsanitize=fuzzer).

#include "block/graph.hpp"
#include "io/event_loop.hpp"
#include "io/socket.hpp"
#include "io/tls_creds.hpp"
#include "nbd/connection.hpp"
#include "nbd/server.hpp"
#include "nodes/testing/memory_node.hpp"
#include "util/log.hpp"

#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <span>
#include <sys/socket.h>
#include <unistd.h>

using namespace fleece;

namespace {

constexpr std::uint64_t export_size = 1 << 20;

// PSK credentials in a private temporary directory, made once per process.
std::shared_ptr<const io::TlsCreds> make_psk_creds() {
    char dir[] = "/tmp/fleece-nbd-fuzz-XXXXXX";
    if (!::mkdtemp(dir)) std::abort();
    const std::string keys = std::string(dir) + "/keys.psk";
    std::ofstream(keys) << "fuzz:0123456789abcdef0123456789abcdef\n";
    io::TlsCredsOptions opts;
    opts.id = "tls0";
    opts.type = io::TlsCredsType::psk;
    opts.dir = dir;
    auto creds = io::TlsCreds::create(opts);
    ::unlink(keys.c_str());
    ::rmdir(dir);
    if (!creds) {
        std::fprintf(stderr, "nbd_connection_fuzz: %s\n", creds.error().message.c_str());
        std::abort();
    }
    return std::move(creds).value();
}

io::Task<void> send_input(int fd, std::span<const std::byte> data, io::Gate::Holder hold) {
    (void)co_await io::write_all(fd, data);
    ::shutdown(fd, SHUT_WR); // the client is done: the server reads end of stream
    hold.leave();
}

io::Task<void> drain_output(int fd, io::Gate::Holder hold) {
    std::vector<std::byte> buf(64 * 1024);
    while (co_await io::read_some(fd, buf) > 0) {
    }
    hold.leave();
}

io::Task<void> serve_one(std::span<const std::byte> input, std::uint8_t setup,
                         std::shared_ptr<const io::TlsCreds> creds) {
    block::Graph graph;
    auto mem = std::make_unique<nodes::MemoryNode>("disk0", export_size, 4096);
    if (setup >> 4) mem->set_random_delay(setup >> 4, 3);
    if (!graph.add(std::move(mem))) std::abort();
    {
        nbd::NbdServer server(graph);
        if (setup & 1) server.set_tls_creds(std::move(creds));
        nbd::ExportOptions opts;
        opts.id = "e0";
        opts.node_name = "disk0";
        opts.name = "disk";
        opts.description = "fuzz";
        opts.writable = setup & 2;
        opts.allocation_depth = true;
        if (!server.add_export(opts)) std::abort();

        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
            std::abort();
        io::FileDescriptor client(sv[1]);
        io::Gate done;
        auto conn = std::make_shared<nbd::Connection>(&server, io::FileDescriptor(sv[0]));
        server.connection_started(conn.get());
        auto& loop = io::EventLoop::current();
        loop.spawn(nbd::Connection::run(std::move(conn), done.enter()));
        loop.spawn(send_input(client.get(), input, done.enter()));
        loop.spawn(drain_output(client.get(), done.enter()));
        co_await done.close();
        co_await server.stop();
    }
    co_await graph.close_all();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static io::EventLoop loop(io::BackendKind::threads);
    static const std::shared_ptr<const io::TlsCreds> psk = [] {
        std::signal(SIGPIPE, SIG_IGN);
        log::set_level(log::Level::error); // refused clients are expected, by the thousand
        return make_psk_creds();
    }();
    if (size == 0) return 0;
    const std::span<const std::byte> input(reinterpret_cast<const std::byte*>(data + 1), size - 1);
    loop.run_until_complete(serve_one(input, data[0], psk));
    return 0;
}
