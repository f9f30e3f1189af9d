#include "nbd/connection.hpp"

#include "io/event_loop.hpp"
#include "nbd/server.hpp"

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

io::Task<void> Connection::run(std::shared_ptr<Connection> self, io::Gate::Holder server_hold) {
    try {
        if (co_await self->handshake()) co_await self->transmission();
    } catch (const std::exception&) {
        // A connection problem never takes the daemon down.
    }
    self->broken_ = true;
    co_await self->requests_.close();
    if (self->export_) self->export_->connections_.erase(self.get());
    self->export_hold_.leave();
    self->server_->connection_finished(self.get());
    self->fd_.reset();
    server_hold.leave();
}

io::Task<bool> Connection::send(Bytes bytes) {
    if (broken_) co_return false;
    const int r = co_await io::write_all(fd_.get(), as_bytes(bytes));
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
        if (co_await io::read_exact(fd_.get(), std::span(scratch.data(), n)) < 0) co_return false;
        length -= n;
    }
    co_return true;
}

// ---- Handshake -------------------------------------------------------------------------

io::Task<bool> Connection::handshake() {
    if (!co_await send(encode_greeting(flag_fixed_newstyle | flag_no_zeroes))) co_return false;
    std::byte cf[4];
    if (co_await io::read_exact(fd_.get(), cf) < 0) co_return false;
    const std::uint32_t client_flags = get_u32(cf);
    // Unknown client flags: the spec says to close; we accept the known ones only.
    if (client_flags & ~(client_flag_fixed_newstyle | client_flag_no_zeroes)) co_return false;
    no_zeroes_ = client_flags & client_flag_no_zeroes;
    while (!broken_) {
        std::byte hdr[option_header_size];
        if (co_await io::read_exact(fd_.get(), hdr) < 0) co_return false;
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
    if (h.length > 0 && co_await io::read_exact(fd_.get(), data) < 0) co_return Next::close;

    switch (h.option) {
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
    const std::vector<std::string> offered = exp->meta_contexts();
    std::vector<std::string> matched;
    if (req->queries.empty()) {
        if (!set) matched = offered;
    } else {
        for (const std::string& q : req->queries) {
            for (const std::string& c : offered) {
                // LIST accepts a namespace query ("base:") meaning every context in it.
                const bool hit =
                    q == c || (!set && !q.empty() && q.back() == ':' && c.rfind(q, 0) == 0);
                if (hit && std::find(matched.begin(), matched.end(), c) == matched.end())
                    matched.push_back(c);
            }
        }
    }
    if (set) {
        base_allocation_ = false;
        meta_export_ = exp->name();
    }
    for (const std::string& c : matched) {
        const std::uint32_t id = c == meta_base_allocation ? meta_id_base_allocation : 0;
        if (set && c == meta_base_allocation) base_allocation_ = true;
        if (!co_await send_option_reply(option, rep_meta_context, meta_context_payload(id, c)))
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
    if (meta_export_ != exp->name()) base_allocation_ = false;
    params_.size = exp->size();
    params_.transmission_flags = exp->transmission_flags();
    params_.min_block = exp->min_block();
    params_.max_payload = exp->max_block();
    params_.structured_replies = structured_;
    params_.base_allocation = base_allocation_;
    co_return true;
}

// ---- Transmission ----------------------------------------------------------------------

io::Task<void> Connection::transmission() {
    while (!broken_) {
        std::byte hdr[request_size];
        if (co_await io::read_exact(fd_.get(), hdr) < 0) break;
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
            if (req->type == cmd_write && co_await io::read_exact(fd_.get(), buf.span()) < 0) break;
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
    if (co_await io::write_all(fd_.get(), as_bytes(head)) < 0 ||
        (!data.empty() && co_await io::write_all(fd_.get(), data) < 0))
        shut_down();
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
    std::error_code ec;
    if (req.length > 0) ec = co_await export_->child().read(req.offset, buf.span());
    if (ec) {
        co_await reply_error(req, errno_to_nbd(ec.value()));
        co_return;
    }
    Bytes head;
    std::span<const std::byte> data;
    if (req.length > 0) data = std::span<const std::byte>(buf.data(), req.length);
    if (structured_) {
        if (req.length == 0)
            encode_done_chunk(head, req.cookie);
        else
            encode_offset_data_header(head, req.cookie, req.offset, req.length, true);
    } else {
        encode_simple_reply(head, req.cookie, err_none);
    }
    co_await write_locked(std::move(head), data);
}

io::Task<void> Connection::do_block_status(Request req) {
    constexpr std::size_t max_extents = 1024;
    std::vector<Extent> extents;
    std::uint64_t offset = req.offset;
    const std::uint64_t end = req.offset + req.length;
    const bool one = req.flags & cmd_flag_req_one;
    while (offset < end) {
        block::BlockStatus bs = co_await export_->child().block_status(offset, end - offset);
        if (bs.error) {
            if (extents.empty()) {
                co_await reply_error(req, errno_to_nbd(bs.error.value()));
                co_return;
            }
            break;
        }
        if (bs.length == 0) break;
        const std::uint64_t len = std::min(bs.length, end - offset);
        std::uint32_t flags = 0;
        if (!(bs.flags & block::status_data)) flags |= state_hole;
        if (bs.flags & block::status_zero) flags |= state_zero;
        if (!extents.empty() && extents.back().flags == flags)
            extents.back().length += static_cast<std::uint32_t>(len);
        else
            extents.push_back({static_cast<std::uint32_t>(len), flags});
        offset += len;
        if (one || extents.size() >= max_extents) break;
    }
    if (extents.empty()) {
        co_await reply_error(req, err_io);
        co_return;
    }
    if (one) extents.resize(1);
    Bytes out;
    encode_block_status(out, req.cookie, meta_id_base_allocation, extents, true);
    co_await write_locked(std::move(out), {});
}

} // namespace fleece::nbd
