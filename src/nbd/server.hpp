#pragma once
// NbdServer: an NBD server (fixed newstyle handshake, structured replies, base:allocation)
// exporting block nodes of a Graph. Everything runs on the EventLoop thread.
//
// API (what QMP nbd-server-start/stop and block-export-add/del/query map onto):
//
//   NbdServer server(graph);
//   server.set_max_connections(16);                  // 0 = unlimited (default)
//   server.set_handshake_max_seconds(10);            // 0 = no limit; 10 by default
//   Status s = server.listen_unix("/run/nbd.sock");  // or listen_tcp("127.0.0.1", "10809")
//   Status e = server.add_export({.id = "e0", .node_name = "disk0", .name = "disk0",
//                                 .description = "", .writable = false});
//   auto info = server.query();                      // one ExportInfo per export
//   Status r = co_await server.remove_export("e0");  // drops its clients, detaches
//   co_await server.stop();                          // closes listeners, clients, exports
//
// - add_export attaches to the node with perm = consistent-read (| write when writable)
//   and shares everything, like QEMU's block exports. Fails (GenericError) on a duplicate
//   id or NBD name, or DeviceNotFound-style errors for an unknown node; a permission
//   conflict reported by the graph is passed through.
// - Several listen_* calls are allowed (all sockets serve the same exports). listen_*
//   after stop() fails.
// - remove_export disconnects the export's clients, waits for their in-flight requests,
//   then detaches from the node. The export is invisible to new clients immediately.
// - stop() must be awaited before the server is destroyed if it ever listened.
// - Malformed clients only ever lose their own connection.

#include "block/graph.hpp"
#include "io/socket.hpp"
#include "io/sync.hpp"
#include "io/task.hpp"
#include "io/tls_creds.hpp"
#include "nbd/export.hpp"
#include "util/result.hpp"

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace fleece::nbd {

struct ExportInfo {
    std::string id;
    std::string node_name;
    std::string name;
    std::string description;
    bool writable = false;
    std::uint64_t connections = 0;
};

class NbdServer {
  public:
    explicit NbdServer(block::Graph& graph);
    ~NbdServer();
    NbdServer(const NbdServer&) = delete;
    NbdServer& operator=(const NbdServer&) = delete;

    Status listen_unix(const std::string& path);
    Status listen_tcp(const std::string& host, const std::string& port);
    // Further clients are refused (connection closed right after accept). 0 = unlimited.
    void set_max_connections(std::uint32_t n) { max_connections_ = n; }
    std::uint32_t max_connections() const { return max_connections_; }
    // A client that has not finished negotiating (reached transmission) this many seconds
    // after connecting is dropped, so silent clients cannot hold connection slots. 0 = no
    // limit. QEMU's handshake-max-seconds, with its default.
    void set_handshake_max_seconds(std::uint32_t s) { handshake_max_seconds_ = s; }
    std::uint32_t handshake_max_seconds() const { return handshake_max_seconds_; }
    // TLS-only server (clients must STARTTLS first); null = plain text. Set before listening.
    void set_tls_creds(std::shared_ptr<const io::TlsCreds> creds) { tls_creds_ = std::move(creds); }
    const std::shared_ptr<const io::TlsCreds>& tls_creds() const { return tls_creds_; }

    Status add_export(ExportOptions opts);
    io::Task<Status> remove_export(std::string id);
    std::vector<ExportInfo> query() const;
    bool has_export(const std::string& id) const;

    io::Task<void> stop();
    bool stopped() const { return stopped_; }
    std::uint64_t connection_count() const { return connections_.size(); }

    // Connection internals -------------------------------------------------------------
    // Export lookup by NBD name; "" selects an export named "" or else the only export.
    std::shared_ptr<Export> find_export(const std::string& name) const;
    const std::vector<std::shared_ptr<Export>>& exports() const { return exports_; }
    void connection_started(Connection* c) { connections_.insert(c); }
    void connection_finished(Connection* c) { connections_.erase(c); }

  private:
    static io::Task<void> accept_loop(NbdServer* server, int listen_fd, io::Gate::Holder hold);
    Status start_listening(Result<io::FileDescriptor> fd);

    block::Graph& graph_;
    std::vector<io::FileDescriptor> listeners_;
    std::vector<std::shared_ptr<Export>> exports_;
    std::set<Connection*> connections_;
    io::Gate gate_; // accept loops and connections
    std::uint32_t max_connections_ = 0;
    std::uint32_t handshake_max_seconds_ = 10;
    std::shared_ptr<const io::TlsCreds> tls_creds_;
    bool stopped_ = false;
};

} // namespace fleece::nbd
