#include "nbd/codec.hpp"

#include <cerrno>

namespace fleece::nbd {

void put_u16(Bytes& out, std::uint16_t v) {
    out.resize(out.size() + 2);
    store_be16(out.data() + out.size() - 2, v);
}
void put_u32(Bytes& out, std::uint32_t v) {
    out.resize(out.size() + 4);
    store_be32(out.data() + out.size() - 4, v);
}
void put_u64(Bytes& out, std::uint64_t v) {
    out.resize(out.size() + 8);
    store_be64(out.data() + out.size() - 8, v);
}
void put_bytes(Bytes& out, std::string_view s) {
    const auto* p = reinterpret_cast<const std::byte*>(s.data());
    out.insert(out.end(), p, p + s.size());
}

std::optional<Request> parse_request(std::span<const std::byte> h) {
    if (h.size() < request_size || load_be32(h.data()) != request_magic) return std::nullopt;
    Request r;
    r.flags = load_be16(h.data() + 4);
    r.type = load_be16(h.data() + 6);
    r.cookie = load_be64(h.data() + 8);
    r.offset = load_be64(h.data() + 16);
    r.length = load_be32(h.data() + 24);
    return r;
}

Bytes encode_request(const Request& r) {
    Bytes out;
    put_u32(out, request_magic);
    put_u16(out, r.flags);
    put_u16(out, r.type);
    put_u64(out, r.cookie);
    put_u64(out, r.offset);
    put_u32(out, r.length);
    return out;
}

namespace {
bool in_range(const Request& r, const ExportParams& p) {
    return r.offset <= p.size && r.length <= p.size - r.offset;
}
bool aligned(const Request& r, const ExportParams& p) {
    if (p.min_block <= 1) return true;
    if (r.offset % p.min_block != 0) return false;
    // The tail of an export whose size is not a multiple of the block size is allowed.
    return r.length % p.min_block == 0 || r.offset + r.length == p.size;
}
} // namespace

Validation validate_request(const Request& r, const ExportParams& p) {
    const bool read_only = p.transmission_flags & tflag_read_only;
    std::uint16_t allowed = 0;
    bool ranged = true;
    switch (r.type) {
    case cmd_read:
        break;
    case cmd_write:
        allowed = cmd_flag_fua;
        break;
    case cmd_flush:
        ranged = false;
        break;
    case cmd_trim:
        allowed = cmd_flag_fua;
        break;
    case cmd_cache:
        break;
    case cmd_write_zeroes:
        allowed = cmd_flag_fua | cmd_flag_no_hole;
        if (p.transmission_flags & tflag_send_fast_zero) allowed |= cmd_flag_fast_zero;
        break;
    case cmd_block_status:
        allowed = cmd_flag_req_one;
        break;
    case cmd_disc:
        return {};
    default:
        return {err_inval, false};
    }
    if ((p.transmission_flags & tflag_send_fua) == 0)
        allowed &= static_cast<std::uint16_t>(~cmd_flag_fua);

    const bool has_payload = r.type == cmd_write;
    // Too big to buffer, but the payload length is known, so the connection can skip it
    // and carry on.
    if (has_payload && r.length > p.max_payload)
        return {p.structured_replies ? err_overflow : err_inval, false};
    if (r.flags & ~allowed) return {err_inval, false};
    if (read_only && (r.type == cmd_write || r.type == cmd_trim || r.type == cmd_write_zeroes))
        return {err_perm, false};
    if (r.type == cmd_trim && !(p.transmission_flags & tflag_send_trim)) return {err_inval, false};
    if (r.type == cmd_write_zeroes && !(p.transmission_flags & tflag_send_write_zeroes))
        return {err_inval, false};
    if (r.type == cmd_block_status && (!p.structured_replies || !p.base_allocation))
        return {err_inval, false};
    if (!ranged) return {};
    // The spec asks for ENOSPC when a write or write-zeroes goes past the end, EINVAL else.
    if (!in_range(r, p))
        return {(r.type == cmd_write || r.type == cmd_write_zeroes) ? err_nospc : err_inval, false};
    if (!aligned(r, p)) return {err_inval, false};
    if (r.type == cmd_read && r.length > p.max_payload)
        return {p.structured_replies ? err_overflow : err_inval, false};
    if (r.type == cmd_block_status && r.length == 0) return {err_inval, false};
    return {};
}

std::uint32_t errno_to_nbd(int err, bool fast_zero) {
    if (err < 0) err = -err;
    switch (err) {
    case 0:
        return err_none;
    case EPERM:
    case EROFS:
    case EACCES:
        return err_perm;
    case EIO:
        return err_io;
    case ENOMEM:
        return err_nomem;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
        return err_nospc;
    case EOVERFLOW:
        return err_overflow;
    case ENOTSUP:
        return fast_zero ? err_notsup : err_inval;
    case ESHUTDOWN:
        return err_shutdown;
    default:
        return err_inval;
    }
}

void encode_simple_reply(Bytes& out, std::uint64_t cookie, std::uint32_t error) {
    put_u32(out, simple_reply_magic);
    put_u32(out, error);
    put_u64(out, cookie);
}

void encode_structured_header(Bytes& out, std::uint16_t flags, std::uint16_t type,
                              std::uint64_t cookie, std::uint32_t length) {
    put_u32(out, structured_reply_magic);
    put_u16(out, flags);
    put_u16(out, type);
    put_u64(out, cookie);
    put_u32(out, length);
}

void encode_offset_data_header(Bytes& out, std::uint64_t cookie, std::uint64_t offset,
                               std::uint32_t data_length, bool done) {
    encode_structured_header(out, done ? reply_flag_done : 0, reply_type_offset_data, cookie,
                             8 + data_length);
    put_u64(out, offset);
}

void encode_offset_hole(Bytes& out, std::uint64_t cookie, std::uint64_t offset,
                        std::uint32_t length, bool done) {
    encode_structured_header(out, done ? reply_flag_done : 0, reply_type_offset_hole, cookie, 12);
    put_u64(out, offset);
    put_u32(out, length);
}

void encode_error_chunk(Bytes& out, std::uint64_t cookie, std::uint32_t error,
                        std::string_view message) {
    if (message.size() > 4096) message = message.substr(0, 4096);
    encode_structured_header(out, reply_flag_done, reply_type_error, cookie,
                             static_cast<std::uint32_t>(6 + message.size()));
    put_u32(out, error);
    put_u16(out, static_cast<std::uint16_t>(message.size()));
    put_bytes(out, message);
}

void encode_done_chunk(Bytes& out, std::uint64_t cookie) {
    encode_structured_header(out, reply_flag_done, reply_type_none, cookie, 0);
}

void encode_block_status(Bytes& out, std::uint64_t cookie, std::uint32_t context_id,
                         std::span<const Extent> extents, bool done) {
    encode_structured_header(out, done ? reply_flag_done : 0, reply_type_block_status, cookie,
                             static_cast<std::uint32_t>(4 + 8 * extents.size()));
    put_u32(out, context_id);
    for (const Extent& e : extents) {
        put_u32(out, e.length);
        put_u32(out, e.flags);
    }
}

std::optional<OptionHeader> parse_option_header(std::span<const std::byte> h) {
    if (h.size() < option_header_size || load_be64(h.data()) != opt_magic) return std::nullopt;
    return OptionHeader{load_be32(h.data() + 8), load_be32(h.data() + 12)};
}

Bytes encode_option_header(const OptionHeader& h) {
    Bytes out;
    put_u64(out, opt_magic);
    put_u32(out, h.option);
    put_u32(out, h.length);
    return out;
}

Bytes encode_greeting(std::uint16_t handshake_flags) {
    Bytes out;
    put_u64(out, nbd_magic);
    put_u64(out, opt_magic);
    put_u16(out, handshake_flags);
    return out;
}

void encode_option_reply(Bytes& out, std::uint32_t option, std::uint32_t type,
                         std::span<const std::byte> payload) {
    put_u64(out, opt_reply_magic);
    put_u32(out, option);
    put_u32(out, type);
    put_u32(out, static_cast<std::uint32_t>(payload.size()));
    out.insert(out.end(), payload.begin(), payload.end());
}

void encode_option_reply(Bytes& out, std::uint32_t option, std::uint32_t type,
                         std::string_view payload) {
    encode_option_reply(out, option, type,
                        std::span<const std::byte>(
                            reinterpret_cast<const std::byte*>(payload.data()), payload.size()));
}

Bytes rep_server_payload(std::string_view name, std::string_view description) {
    Bytes out;
    put_u32(out, static_cast<std::uint32_t>(name.size()));
    put_bytes(out, name);
    put_bytes(out, description);
    return out;
}

Bytes info_export_payload(std::uint64_t size, std::uint16_t flags) {
    Bytes out;
    put_u16(out, info_export);
    put_u64(out, size);
    put_u16(out, flags);
    return out;
}

Bytes info_string_payload(std::uint16_t type, std::string_view s) {
    Bytes out;
    put_u16(out, type);
    put_bytes(out, s);
    return out;
}

Bytes info_block_size_payload(std::uint32_t min, std::uint32_t preferred, std::uint32_t max) {
    Bytes out;
    put_u16(out, info_block_size);
    put_u32(out, min);
    put_u32(out, preferred);
    put_u32(out, max);
    return out;
}

Bytes meta_context_payload(std::uint32_t id, std::string_view name) {
    Bytes out;
    put_u32(out, id);
    put_bytes(out, name);
    return out;
}

Bytes export_name_reply(std::uint64_t size, std::uint16_t flags, bool no_zeroes) {
    Bytes out;
    put_u64(out, size);
    put_u16(out, flags);
    if (!no_zeroes) out.resize(out.size() + 124, std::byte{0});
    return out;
}

namespace {
// Reads a u32-length-prefixed string at `pos`; advances pos.
bool read_string(std::span<const std::byte> d, std::size_t& pos, std::string& out) {
    if (d.size() - pos < 4) return false;
    const std::uint32_t n = load_be32(d.data() + pos);
    pos += 4;
    if (n > d.size() - pos || n > 4096) return false;
    out.assign(reinterpret_cast<const char*>(d.data() + pos), n);
    pos += n;
    return true;
}
} // namespace

std::optional<InfoRequest> parse_info_request(std::span<const std::byte> d) {
    InfoRequest r;
    std::size_t pos = 0;
    if (!read_string(d, pos, r.name)) return std::nullopt;
    if (d.size() - pos < 2) return std::nullopt;
    const std::uint16_t n = load_be16(d.data() + pos);
    pos += 2;
    if (d.size() - pos != std::size_t{n} * 2) return std::nullopt;
    for (std::uint16_t i = 0; i < n; ++i, pos += 2)
        r.infos.push_back(load_be16(d.data() + pos));
    return r;
}

std::optional<MetaContextRequest> parse_meta_context_request(std::span<const std::byte> d) {
    MetaContextRequest r;
    std::size_t pos = 0;
    if (!read_string(d, pos, r.export_name)) return std::nullopt;
    if (d.size() - pos < 4) return std::nullopt;
    const std::uint32_t n = load_be32(d.data() + pos);
    pos += 4;
    // Each query takes at least 4 bytes; bound the count by what the data can hold.
    if (n > (d.size() - pos) / 4) return std::nullopt;
    for (std::uint32_t i = 0; i < n; ++i) {
        std::string q;
        if (!read_string(d, pos, q)) return std::nullopt;
        r.queries.push_back(std::move(q));
    }
    if (pos != d.size()) return std::nullopt;
    return r;
}

} // namespace fleece::nbd
