#include "nbd/connection.hpp"

#include "io/event_loop.hpp"
#include "io/tls_stream.hpp"
#include "nbd/server.hpp"
#include "util/log.hpp"

#include <algorithm>
#include <cerrno>
#include <sys/socket.h>

namespace fleece::nbd {

namespace {
std::span<const std::byte> as_bytes(const Bytes& b) {
    return {b.data(), b.size()};
}
} // namespace

void Connection::shut_down() {
    broken_ = true;
    if (fd_) ::shutdown(fd_.get(), SHUT_RDWR);
}

// Drops the client if the handshake is still going on after `seconds`; run() cancels the
// timer as soon as it is over, whichever way.
io::Task<void> Connection::handshake_watchdog(std::shared_ptr<Connection> self,
                                              std::uint32_t seconds, io::Gate::Holder hold) {
    // The handshake can end before this coroutine first runs (a client whose bytes are
    // already there is served without suspending); its cancel() then found no armed timer,
    // and waiting would keep the closed connection (and its socket) alive for `seconds`.
    if (self->handshake_over_) {
        hold.leave();
        co_return;
    }
    const bool expired = co_await self->handshake_timer_.wait_for(std::chrono::seconds(seconds));
    // The timer may fire in the same loop turn the handshake ends: check it is still on.
    if (expired && !self->handshake_over_) {
        log::info("nbd: dropping a client that did not finish the handshake within {} s", seconds);
        self->shut_down(); // its pending read fails and handshake() returns
    }
    hold.leave();
}

void Connection::end_handshake_timer() {
    if (handshake_over_) return;
    handshake_over_ = true;
    handshake_timer_.cancel();
}

io::Task<void> Connection::run(std::shared_ptr<Connection> self, io::Gate::Holder server_hold) {
    if (const std::uint32_t limit = self->server_->handshake_max_seconds(); limit > 0) {
        if (io::Gate::Holder h = self->requests_.enter())
            io::EventLoop::current().spawn(handshake_watchdog(self, limit, std::move(h)));
    }
    try {
        const bool negotiated = co_await self->handshake();
        self->end_handshake_timer();
        if (negotiated) co_await self->transmission();
    } catch (const std::exception&) {
        // A connection problem never takes the daemon down.
    }
    self->end_handshake_timer(); // if handshake() threw
    self->broken_ = true;
    co_await self->requests_.close();
    if (self->export_) self->export_->connections_.erase(self.get());
    self->export_hold_.leave();
    self->server_->connection_finished(self.get());
    self->stream_.reset();
    self->fd_.reset();
    server_hold.leave();
}

io::Task<bool> Connection::send(Bytes bytes) {
    if (broken_) co_return false;
    const int r = co_await stream_->write_all(as_bytes(bytes));
    if (r < 0) {
        shut_down();
        co_return false;
    }
    co_return true;
}

io::Task<bool> Connection::send_option_reply(std::uint32_t option, std::uint32_t type,
                                             Bytes payload) {
    Bytes out;
    encode_option_reply(out, option, type, as_bytes(payload));
    co_return co_await send(std::move(out));
}

io::Task<bool> Connection::discard_input(std::uint64_t length) {
    std::vector<std::byte> scratch(std::min<std::uint64_t>(length, 64 * 1024));
    while (length > 0) {
        const std::size_t n =
            static_cast<std::size_t>(std::min<std::uint64_t>(length, scratch.size()));
        if (co_await stream_->read_exact(std::span(scratch.data(), n)) < 0) co_return false;
        length -= n;
    }
    co_return true;
}

// ---- Handshake -------------------------------------------------------------------------

io::Task<bool> Connection::handshake() {
    if (!co_await send(encode_greeting(flag_fixed_newstyle | flag_no_zeroes))) co_return false;
    std::byte cf[4];
    if (co_await stream_->read_exact(cf) < 0) co_return false;
    const std::uint32_t client_flags = load_be32(cf);
    // Unknown client flags: the spec says to close; we accept the known ones only.
    if (client_flags & ~(client_flag_fixed_newstyle | client_flag_no_zeroes)) co_return false;
    no_zeroes_ = client_flags & client_flag_no_zeroes;
    while (!broken_) {
        std::byte hdr[option_header_size];
        if (co_await stream_->read_exact(hdr) < 0) co_return false;
        auto h = parse_option_header(hdr);
        if (!h) co_return false;
        const Next next = co_await handle_option(*h);
        if (next == Next::close) co_return false;
        if (next == Next::transmission) co_return true;
    }
    co_return false;
}

io::Task<Connection::Next> Connection::handle_option(OptionHeader h) {
    if (h.length > max_option_length) {
        if (h.option == opt_export_name) co_return Next::close; // no way to reply with an error
        if (!co_await discard_input(h.length)) co_return Next::close;
        co_return co_await send_option_reply(h.option, rep_err_too_big) ? Next::again : Next::close;
    }
    Bytes data(h.length);
    if (h.length > 0 && co_await stream_->read_exact(data) < 0) co_return Next::close;

    // With TLS credentials the server is TLS-only (FORCEDTLS): before the upgrade, only
    // STARTTLS and ABORT are honoured.
    if (server_->tls_creds() && !tls_ && h.option != opt_starttls && h.option != opt_abort) {
        if (h.option == opt_export_name) co_return Next::close; // no way to reply an error
        co_return co_await send_option_reply(h.option, rep_err_tls_reqd) ? Next::again
                                                                         : Next::close;
    }
    switch (h.option) {
    case opt_starttls:
        co_return co_await option_starttls(std::move(data));
    case opt_export_name: {
        std::string name(reinterpret_cast<const char*>(data.data()), data.size());
        auto exp = server_->find_export(name);
        if (!exp) co_return Next::close;
        if (!co_await enter_transmission(exp)) co_return Next::close;
        if (!co_await send(export_name_reply(exp->size(), exp->transmission_flags(), no_zeroes_)))
            co_return Next::close;
        co_return Next::transmission;
    }
    case opt_abort:
        (void)co_await send_option_reply(h.option, rep_ack);
        co_return Next::close;
    case opt_list: {
        if (!data.empty())
            co_return co_await send_option_reply(h.option, rep_err_invalid) ? Next::again
                                                                            : Next::close;
        for (const auto& e : server_->exports()) {
            if (e->removing_) continue;
            if (!co_await send_option_reply(
                    h.option, rep_server, rep_server_payload(e->name(), e->options().description)))
                co_return Next::close;
        }
        co_return co_await send_option_reply(h.option, rep_ack) ? Next::again : Next::close;
    }
    case opt_info:
    case opt_go:
        co_return co_await option_info(h.option, std::move(data));
    case opt_structured_reply: {
        std::uint32_t rep = rep_ack;
        if (!data.empty())
            rep = rep_err_invalid;
        else
            structured_ = true;
        co_return co_await send_option_reply(h.option, rep) ? Next::again : Next::close;
    }
    case opt_list_meta_context:
    case opt_set_meta_context:
        co_return co_await option_meta(h.option, std::move(data));
    default:
        co_return co_await send_option_reply(h.option, rep_err_unsup) ? Next::again : Next::close;
    }
}

io::Task<Connection::Next> Connection::option_starttls(Bytes data) {
    std::uint32_t rep = rep_ack;
    if (!data.empty() || tls_)
        rep = rep_err_invalid;
    else if (!server_->tls_creds())
        rep = rep_err_policy;
    if (!co_await send_option_reply(opt_starttls, rep)) co_return Next::close;
    if (rep != rep_ack) co_return Next::again;
    auto tls = co_await io::TlsStream::server_handshake(fd_.get(), server_->tls_creds());
    if (!tls) {
        log::warn("NBD client refused: {}", tls.error().message);
        co_return Next::close;
    }
    stream_ = std::move(*tls);
    tls_ = true;
    // Everything negotiated in clear text is forgotten, as the spec asks.
    structured_ = false;
    selected_.clear();
    meta_export_.clear();
    co_return Next::again;
}

io::Task<Connection::Next> Connection::option_info(std::uint32_t option, Bytes data) {
    auto req = parse_info_request(data);
    if (!req)
        co_return co_await send_option_reply(option, rep_err_invalid) ? Next::again : Next::close;
    auto exp = server_->find_export(req->name);
    if (!exp)
        co_return co_await send_option_reply(option, rep_err_unknown) ? Next::again : Next::close;
    if (!co_await send_option_reply(option, rep_info,
                                    info_export_payload(exp->size(), exp->transmission_flags())))
        co_return Next::close;
    const auto wants = [&](std::uint16_t t) {
        return std::find(req->infos.begin(), req->infos.end(), t) != req->infos.end();
    };
    if (wants(info_name) &&
        !co_await send_option_reply(option, rep_info, info_string_payload(info_name, exp->name())))
        co_return Next::close;
    if (wants(info_description) && !exp->options().description.empty() &&
        !co_await send_option_reply(
            option, rep_info, info_string_payload(info_description, exp->options().description)))
        co_return Next::close;
    if (!co_await send_option_reply(
            option, rep_info,
            info_block_size_payload(exp->min_block(), exp->preferred_block(), exp->max_block())))
        co_return Next::close;
    if (option == opt_info)
        co_return co_await send_option_reply(option, rep_ack) ? Next::again : Next::close;
    if (!co_await enter_transmission(exp))
        co_return co_await send_option_reply(option, rep_err_shutdown) ? Next::again : Next::close;
    co_return co_await send_option_reply(option, rep_ack) ? Next::transmission : Next::close;
}

io::Task<Connection::Next> Connection::option_meta(std::uint32_t option, Bytes data) {
    const bool set = option == opt_set_meta_context;
    if (!structured_)
        co_return co_await send_option_reply(option, rep_err_invalid) ? Next::again : Next::close;
    auto req = parse_meta_context_request(data);
    if (!req)
        co_return co_await send_option_reply(option, rep_err_invalid) ? Next::again : Next::close;
    auto exp = server_->find_export(req->export_name);
    if (!exp)
        co_return co_await send_option_reply(option, rep_err_unknown) ? Next::again : Next::close;
    const auto& offered = exp->meta_contexts();
    std::vector<std::uint32_t> matched; // indexes into `offered`
    for (std::uint32_t i = 0; i < offered.size(); ++i) {
        const std::string& c = offered[i]->name();
        bool hit = req->queries.empty() && !set; // LIST with no query: everything
        for (const std::string& q : req->queries)
            // LIST accepts a namespace query ("base:", "qemu:") meaning every context in it.
            hit = hit || q == c || (!set && !q.empty() && q.back() == ':' && c.rfind(q, 0) == 0);
        if (hit) matched.push_back(i);
    }
    if (set) {
        selected_.clear();
        meta_export_ = exp->name();
    }
    for (std::uint32_t i : matched) {
        if (set) selected_.push_back({i + 1, offered[i]});
        if (!co_await send_option_reply(option, rep_meta_context,
                                        meta_context_payload(set ? i + 1 : 0, offered[i]->name())))
            co_return Next::close;
    }
    co_return co_await send_option_reply(option, rep_ack) ? Next::again : Next::close;
}

io::Task<bool> Connection::enter_transmission(std::shared_ptr<Export> exp) {
    io::Gate::Holder hold = exp->gate_.enter();
    if (!hold || exp->removing_) co_return false;
    export_hold_ = std::move(hold);
    export_ = exp;
    exp->connections_.insert(this);
    if (meta_export_ != exp->name()) selected_.clear();
    params_.size = exp->size();
    params_.transmission_flags = exp->transmission_flags();
    params_.min_block = exp->min_block();
    params_.max_payload = exp->max_block();
    params_.structured_replies = structured_;
    params_.base_allocation = !selected_.empty(); // BLOCK_STATUS needs a selected context
    co_return true;
}

// ---- Transmission ----------------------------------------------------------------------

io::Task<void> Connection::transmission() {
    // Pipelined request headers then come in with one recv for several.
    if (!tls_) stream_->enable_read_ahead();
    while (!broken_) {
        std::byte hdr[request_size];
        if (co_await stream_->read_exact(hdr) < 0) break;
        auto req = parse_request(hdr);
        if (!req) break; // bad magic: we cannot find the next request
        if (req->type == cmd_disc) break;
        params_.size = export_->size();
        const Validation v = validate_request(*req, params_);
        if (!v) {
            if (v.fatal) {
                co_await reply_error(*req, v.error);
                break;
            }
            if (req->type == cmd_write && !co_await discard_input(req->length)) break;
            co_await reply_error(*req, v.error);
            continue;
        }
        io::Buffer buf;
        if ((req->type == cmd_read || req->type == cmd_write) && req->length > 0) {
            buf = co_await buffers_.get(req->length);
            if (req->type == cmd_write && co_await stream_->read_exact(buf.span()) < 0) break;
        }
        io::Gate::Holder hold = requests_.enter();
        if (!hold) break;
        io::EventLoop::current().spawn(
            handle_request(shared_from_this(), *req, std::move(buf), std::move(hold)));
    }
    broken_ = true;
}

io::Task<void> Connection::write_locked(Bytes head, std::span<const std::byte> data) {
    auto guard = co_await write_mutex_.lock();
    if (broken_ && !fd_) co_return;
    // Header and payload in one system call.
    const std::span<const std::byte> parts[2] = {as_bytes(head), data};
    if (co_await stream_->write_gather(parts) < 0) shut_down();
}

io::Task<void> Connection::reply_simple(std::uint64_t cookie, std::uint32_t error) {
    Bytes out;
    encode_simple_reply(out, cookie, error);
    co_await write_locked(std::move(out), {});
}

io::Task<void> Connection::reply_error(const Request& req, std::uint32_t error) {
    if (structured_ && (req.type == cmd_read || req.type == cmd_block_status)) {
        Bytes out;
        encode_error_chunk(out, req.cookie, error);
        co_await write_locked(std::move(out), {});
    } else {
        co_await reply_simple(req.cookie, error);
    }
}

io::Task<void> Connection::handle_request(std::shared_ptr<Connection> self, Request req,
                                          io::Buffer payload, io::Gate::Holder hold) {
    block::Child& child = self->export_->child();
    std::error_code ec;
    bool fast_zero = false;
    switch (req.type) {
    case cmd_read:
        co_await self->do_read(req, std::move(payload));
        co_return;
    case cmd_block_status:
        co_await self->do_block_status(req);
        co_return;
    case cmd_write: {
        const block::ReqFlags f = (req.flags & cmd_flag_fua) ? block::req_fua : 0;
        if (req.length > 0)
            ec = co_await child.write(req.offset, std::span<const std::byte>(payload.span()), f);
        else if (f)
            ec = co_await child.flush();
        break;
    }
    case cmd_flush:
        ec = co_await child.flush();
        break;
    case cmd_trim:
        if (req.length > 0) ec = co_await child.discard(req.offset, req.length);
        if (!ec && (req.flags & cmd_flag_fua)) ec = co_await child.flush();
        break;
    case cmd_write_zeroes: {
        block::ReqFlags f = 0;
        if (req.flags & cmd_flag_fua) f |= block::req_fua;
        if (!(req.flags & cmd_flag_no_hole)) f |= block::req_may_unmap;
        if (req.flags & cmd_flag_fast_zero) {
            f |= block::req_no_fallback;
            fast_zero = true;
        }
        if (req.length > 0) ec = co_await child.write_zeroes(req.offset, req.length, f);
        break;
    }
    case cmd_cache:
        break;
    default:
        ec = block::errno_code(EINVAL);
        break;
    }
    payload.reset(); // (FUA on writes: the block layer flushes nodes without native FUA)
    co_await self->reply_simple(req.cookie, ec ? errno_to_nbd(ec.value(), fast_zero) : err_none);
    hold.leave();
}

io::Task<void> Connection::do_read(Request req, io::Buffer buf) {
    if (structured_ && req.length > 0) {
        co_await do_sparse_read(req, std::move(buf));
        co_return;
    }
    std::error_code ec;
    if (req.length > 0) ec = co_await export_->child().read(req.offset, buf.span());
    if (ec) {
        co_await reply_error(req, errno_to_nbd(ec.value()));
        co_return;
    }
    Bytes head;
    std::span<const std::byte> data;
    if (req.length > 0) data = std::span<const std::byte>(buf.data(), req.length);
    if (structured_)
        encode_done_chunk(head, req.cookie);
    else
        encode_simple_reply(head, req.cookie, err_none);
    co_await write_locked(std::move(head), data);
}

// Structured read: the node's block status splits the range into zero parts, sent as
// OFFSET_HOLE chunks without being read, and data parts, read and sent as OFFSET_DATA.
// The status is taken before the data is read, the same order a plain read of a range
// being written concurrently could observe.
io::Task<void> Connection::do_sparse_read(Request req, io::Buffer buf) {
    struct Segment {
        std::uint64_t offset;
        std::uint64_t length;
        bool hole;
    };
    constexpr std::size_t max_segments = 64; // beyond that, the rest goes out as data
    constexpr std::uint64_t min_hole = 4096; // smaller zero runs are not worth a chunk
    std::vector<Segment> segs;
    const std::uint64_t end = req.offset + req.length;
    std::uint64_t offset = req.offset;
    while (offset < end && segs.size() + 1 < max_segments) {
        const block::BlockStatus bs = co_await export_->child().block_status(offset, end - offset);
        if (bs.error || bs.length == 0) break;
        const std::uint64_t len = std::min(bs.length, end - offset);
        const bool hole = (bs.flags & block::status_zero) && len >= min_hole;
        if (!segs.empty() && segs.back().hole == hole)
            segs.back().length += len;
        else
            segs.push_back({offset, len, hole});
        offset += len;
    }
    if (offset < end) {
        if (!segs.empty() && !segs.back().hole)
            segs.back().length += end - offset;
        else
            segs.push_back({offset, end - offset, false});
    }
    for (const Segment& s : segs) {
        if (s.hole) continue;
        const std::error_code ec = co_await export_->child().read(
            s.offset, buf.span().subspan(s.offset - req.offset, s.length));
        if (ec) {
            co_await reply_error(req, errno_to_nbd(ec.value()));
            co_return;
        }
    }
    // Every chunk's header and data go out in one gathered write: one header buffer with
    // all headers, and the parts pointing into it and into the read buffer.
    static_assert(2 * max_segments <= io::max_gather_parts);
    Bytes heads;
    std::vector<std::pair<std::size_t, std::size_t>> head_at; // offset and length in `heads`
    head_at.reserve(segs.size());
    for (std::size_t i = 0; i < segs.size(); ++i) {
        const Segment& s = segs[i];
        const bool done = i + 1 == segs.size();
        const std::size_t before = heads.size();
        if (s.hole)
            encode_offset_hole(heads, req.cookie, s.offset, static_cast<std::uint32_t>(s.length),
                               done);
        else
            encode_offset_data_header(heads, req.cookie, s.offset,
                                      static_cast<std::uint32_t>(s.length), done);
        head_at.emplace_back(before, heads.size() - before);
    }
    std::vector<std::span<const std::byte>> parts;
    parts.reserve(2 * segs.size());
    for (std::size_t i = 0; i < segs.size(); ++i) {
        const Segment& s = segs[i];
        parts.emplace_back(heads.data() + head_at[i].first, head_at[i].second);
        if (!s.hole) parts.emplace_back(buf.data() + (s.offset - req.offset), s.length);
    }
    auto guard = co_await write_mutex_.lock();
    if (broken_ && !fd_) co_return;
    if (co_await stream_->write_gather(parts) < 0) shut_down();
}

io::Task<void> Connection::do_block_status(Request req) {
    // One chunk per selected context; all but the last without the DONE flag. Each
    // context's extents cover a prefix of the range (just one extent with REQ_ONE).
    constexpr std::size_t max_extents = 1024;
    const bool one = req.flags & cmd_flag_req_one;
    const std::uint64_t end = req.offset + req.length;
    Bytes out;
    for (std::size_t k = 0; k < selected_.size(); ++k) {
        MetaContext& ctx = *selected_[k].second;
        std::vector<Extent> extents;
        std::uint64_t offset = req.offset;
        while (offset < end) {
            const MetaExtent e = co_await ctx.query(export_->child(), offset, end - offset);
            if (e.error) {
                if (extents.empty()) {
                    co_await reply_error(req, errno_to_nbd(e.error.value()));
                    co_return;
                }
                break;
            }
            if (e.length == 0) break;
            const std::uint64_t len = std::min(e.length, end - offset);
            if (!extents.empty() && extents.back().flags == e.flags)
                extents.back().length += static_cast<std::uint32_t>(len);
            else
                extents.push_back({static_cast<std::uint32_t>(len), e.flags});
            offset += len;
            if (one || extents.size() >= max_extents) break;
        }
        if (extents.empty()) {
            co_await reply_error(req, err_io);
            co_return;
        }
        encode_block_status(out, req.cookie, selected_[k].first, extents,
                            k + 1 == selected_.size());
    }
    co_await write_locked(std::move(out), {});
}

} // namespace fleece::nbd
