#include "nbd/server.hpp"

#include "io/event_loop.hpp"
#include "nbd/connection.hpp"
#include "nbd/dirty_bitmap_context.hpp"

#include <algorithm>
#include <sys/socket.h>

namespace fleece::nbd {

NbdServer::NbdServer(block::Graph& graph) : graph_(graph) {}

NbdServer::~NbdServer() {
    // stop() detaches every export; a server that never got to stop() still gives its
    // edges back so the graph stays consistent.
    for (auto& e : exports_)
        if (e->child_) graph_.detach(std::move(e->child_));
}

Status NbdServer::start_listening(Result<io::FileDescriptor> fd) {
    if (stopped_) return make_error("NBD server is stopped");
    if (!fd) return fd.error();
    io::Gate::Holder hold = gate_.enter();
    if (!hold) return make_error("NBD server is stopping");
    const int raw = fd->get();
    listeners_.push_back(std::move(*fd));
    io::EventLoop::current().spawn(accept_loop(this, raw, std::move(hold)));
    return {};
}

Status NbdServer::listen_unix(const std::string& path) {
    return start_listening(io::listen_unix(path));
}

Status NbdServer::listen_tcp(const std::string& host, const std::string& port) {
    return start_listening(io::listen_tcp(host, port));
}

io::Task<void> NbdServer::accept_loop(NbdServer* server, int listen_fd, io::Gate::Holder hold) {
    while (!server->stopped_) {
        const int fd = co_await io::accept(listen_fd);
        if (server->stopped_) {
            if (fd >= 0) io::FileDescriptor close_it(fd);
            break;
        }
        if (fd < 0) {
            if (fd == -EINTR || fd == -ECONNABORTED || fd == -EMFILE || fd == -ENFILE ||
                fd == -ENOBUFS || fd == -ENOMEM) {
                co_await io::sleep_for(std::chrono::milliseconds(10));
                continue;
            }
            break; // listener shut down
        }
        io::FileDescriptor conn_fd(fd);
        if (server->max_connections_ != 0 &&
            server->connections_.size() >= server->max_connections_)
            continue; // closes conn_fd
        io::Gate::Holder conn_hold = server->gate_.enter();
        if (!conn_hold) break;
        auto conn = std::make_shared<Connection>(server, std::move(conn_fd));
        server->connections_.insert(conn.get());
        io::EventLoop::current().spawn(Connection::run(std::move(conn), std::move(conn_hold)));
    }
    hold.leave();
}

std::shared_ptr<Export> NbdServer::find_export(const std::string& name) const {
    for (const auto& e : exports_)
        if (!e->removing_ && e->name() == name) return e;
    if (name.empty()) {
        std::shared_ptr<Export> only;
        for (const auto& e : exports_) {
            if (e->removing_) continue;
            if (only) return nullptr;
            only = e;
        }
        return only;
    }
    return nullptr;
}

bool NbdServer::has_export(const std::string& id) const {
    return std::any_of(exports_.begin(), exports_.end(),
                       [&](const auto& e) { return e->options().id == id; });
}

Status NbdServer::add_export(ExportOptions opts) {
    if (stopped_) return make_error("NBD server is stopped");
    if (opts.id.empty()) return make_error("Export id must not be empty");
    if (opts.name.empty()) opts.name = opts.node_name;
    if (opts.name.size() > 4096) return make_error("Export name is too long");
    if (opts.description.size() > 4096) return make_error("Export description is too long");
    if (has_export(opts.id))
        return make_error("Block export id '" + opts.id + "' is already in use");
    for (const auto& e : exports_)
        if (e->name() == opts.name)
            return make_error("Block export name '" + opts.name + "' is already in use");
    block::Node* node = graph_.find(opts.node_name);
    if (!node)
        return Error{"GenericError",
                     "Cannot find device=" + opts.node_name + " nor node_name=" + opts.node_name};
    if (opts.writable && (node->read_only() || !node->caps().write))
        return make_error("Cannot export node '" + opts.node_name + "' writable: it is read-only");
    const block::PermSet perm =
        block::perm_consistent_read | (opts.writable ? block::perm_write : 0);
    auto bitmaps = claim_export_bitmaps(*node, opts.bitmaps, opts.writable);
    if (!bitmaps) return bitmaps.error();
    auto exp = std::make_shared<Export>(std::move(opts));
    auto child = graph_.attach(*exp, *node, perm, block::perm_all);
    if (!child) {
        release_export_bitmaps(*bitmaps);
        return child.error();
    }
    exp->child_ = std::move(*child);
    exp->bitmaps_ = std::move(*bitmaps);
    for (const block::DirtyBitmap* b : exp->bitmaps_)
        exp->contexts_.push_back(make_dirty_bitmap_context(b));
    exports_.push_back(std::move(exp));
    return {};
}

io::Task<Status> NbdServer::remove_export(std::string id) {
    auto it = std::find_if(exports_.begin(), exports_.end(),
                           [&](const auto& e) { return e->options().id == id; });
    if (it == exports_.end() || (*it)->removing_)
        co_return make_error("Export '" + id + "' is not found");
    std::shared_ptr<Export> exp = *it;
    exp->removing_ = true;
    for (Connection* c :
         std::vector<Connection*>(exp->connections_.begin(), exp->connections_.end()))
        c->shut_down();
    co_await exp->gate_.close();
    exports_.erase(std::find(exports_.begin(), exports_.end(), exp));
    release_export_bitmaps(exp->bitmaps_);
    exp->bitmaps_.clear();
    if (exp->child_) graph_.detach(std::move(exp->child_));
    co_return Status{};
}

std::vector<ExportInfo> NbdServer::query() const {
    std::vector<ExportInfo> out;
    for (const auto& e : exports_) {
        const auto& o = e->options();
        // The current node, not the one given at creation: blockdev-replace may move it.
        out.push_back(
            {o.id, e->node().name(), o.name, o.description, o.writable, e->connections_.size()});
    }
    return out;
}

io::Task<void> NbdServer::stop() {
    if (!stopped_) {
        stopped_ = true;
        for (auto& l : listeners_)
            ::shutdown(l.get(), SHUT_RDWR);
        for (Connection* c : std::vector<Connection*>(connections_.begin(), connections_.end()))
            c->shut_down();
    }
    co_await gate_.close();
    listeners_.clear();
    std::vector<std::string> ids;
    for (const auto& e : exports_)
        if (!e->removing_) ids.push_back(e->options().id);
    for (std::string& id : ids) {
        Status s = co_await remove_export(std::move(id));
        (void)s;
    }
}

} // namespace fleece::nbd
