#include "nbd/codec.hpp"

#include <cerrno>
#include <gtest/gtest.h>

using namespace fleece::nbd;
using fleece::load_be16;
using fleece::load_be32;
using fleece::load_be64;

namespace {
std::span<const std::byte> sp(const Bytes& b) {
    return {b.data(), b.size()};
}
ExportParams params() {
    ExportParams p;
    p.size = 1 << 20;
    p.transmission_flags = tflag_has_flags | tflag_send_flush | tflag_send_fua | tflag_send_trim |
                           tflag_send_write_zeroes;
    p.structured_replies = true;
    p.base_allocation = true;
    return p;
}
Request req(std::uint16_t type, std::uint64_t off, std::uint32_t len, std::uint16_t flags = 0) {
    Request r;
    r.type = type;
    r.offset = off;
    r.length = len;
    r.flags = flags;
    r.cookie = 0x1122334455667788ull;
    return r;
}
} // namespace

TEST(NbdCodec, RequestRoundTrip) {
    Request r = req(cmd_write, 0x123456789aull, 4096, cmd_flag_fua);
    Bytes b = encode_request(r);
    ASSERT_EQ(b.size(), request_size);
    EXPECT_EQ(load_be32(b.data()), request_magic);
    auto p = parse_request(sp(b));
    ASSERT_TRUE(p);
    EXPECT_EQ(p->type, cmd_write);
    EXPECT_EQ(p->flags, cmd_flag_fua);
    EXPECT_EQ(p->cookie, r.cookie);
    EXPECT_EQ(p->offset, r.offset);
    EXPECT_EQ(p->length, 4096u);
}

TEST(NbdCodec, RequestBadMagicOrShort) {
    Bytes b = encode_request(req(cmd_read, 0, 1));
    EXPECT_FALSE(parse_request(std::span(b.data(), 27)));
    b[0] = std::byte{0};
    EXPECT_FALSE(parse_request(sp(b)));
}

TEST(NbdCodec, Validation) {
    const ExportParams p = params();
    EXPECT_TRUE(validate_request(req(cmd_read, 0, 4096), p));
    EXPECT_TRUE(validate_request(req(cmd_write, (1 << 20) - 1, 1, cmd_flag_fua), p));
    EXPECT_EQ(validate_request(req(cmd_read, (1 << 20) - 1, 2), p).error, err_inval);
    EXPECT_EQ(validate_request(req(cmd_read, ~0ull, 2), p).error, err_inval);
    EXPECT_EQ(validate_request(req(cmd_write, (1 << 20) - 1, 2), p).error, err_nospc);
    EXPECT_EQ(validate_request(req(cmd_write_zeroes, 1 << 20, 1), p).error, err_nospc);
    EXPECT_EQ(validate_request(req(cmd_trim, 1 << 20, 1), p).error, err_inval);
    EXPECT_EQ(validate_request(req(cmd_read, 0, 1, cmd_flag_fua), p).error, err_inval);
    EXPECT_EQ(validate_request(req(cmd_read, 0, 1, cmd_flag_df), p).error, err_inval);
    EXPECT_EQ(validate_request(req(99, 0, 1), p).error, err_inval);
    EXPECT_TRUE(validate_request(req(cmd_write_zeroes, 0, 4096, cmd_flag_no_hole), p));
    // FAST_ZERO only when advertised.
    EXPECT_EQ(validate_request(req(cmd_write_zeroes, 0, 4096, cmd_flag_fast_zero), p).error,
              err_inval);
    ExportParams fz = p;
    fz.transmission_flags |= tflag_send_fast_zero;
    EXPECT_TRUE(validate_request(req(cmd_write_zeroes, 0, 4096, cmd_flag_fast_zero), fz));
    EXPECT_TRUE(validate_request(req(cmd_block_status, 0, 1 << 20, cmd_flag_req_one), p));
    EXPECT_EQ(validate_request(req(cmd_block_status, 0, 0), p).error, err_inval);
    ExportParams nometa = p;
    nometa.base_allocation = false;
    EXPECT_EQ(validate_request(req(cmd_block_status, 0, 512), nometa).error, err_inval);
    EXPECT_TRUE(validate_request(req(cmd_flush, 0, 0), p));
    EXPECT_TRUE(validate_request(req(cmd_disc, 0, 0), p));
}

TEST(NbdCodec, ValidationReadOnlyAndSizes) {
    ExportParams p = params();
    p.transmission_flags |= tflag_read_only;
    EXPECT_EQ(validate_request(req(cmd_write, 0, 512), p).error, err_perm);
    EXPECT_EQ(validate_request(req(cmd_trim, 0, 512), p).error, err_perm);
    EXPECT_EQ(validate_request(req(cmd_write_zeroes, 0, 512), p).error, err_perm);
    p = params();
    p.size = 1ull << 40;
    auto v = validate_request(req(cmd_write, 0, max_payload + 1), p);
    EXPECT_EQ(v.error, err_overflow);
    EXPECT_FALSE(v.fatal); // the connection reads and drops the payload, then goes on
    v = validate_request(req(cmd_read, 0, max_payload + 1), p);
    EXPECT_EQ(v.error, err_overflow);
    EXPECT_FALSE(v.fatal);
    p.structured_replies = false;
    EXPECT_EQ(validate_request(req(cmd_read, 0, max_payload + 1), p).error, err_inval);
    // Large trims and zeroes carry no payload and are fine.
    EXPECT_TRUE(validate_request(req(cmd_trim, 0, 0xffffffffu), p));
}

TEST(NbdCodec, ValidationAlignment) {
    ExportParams p = params();
    p.min_block = 512;
    p.size = 4096 + 100;
    EXPECT_TRUE(validate_request(req(cmd_read, 512, 1024), p));
    EXPECT_EQ(validate_request(req(cmd_read, 1, 512), p).error, err_inval);
    EXPECT_EQ(validate_request(req(cmd_read, 512, 100), p).error, err_inval);
    EXPECT_TRUE(validate_request(req(cmd_read, 4096, 100), p)); // unaligned tail
}

TEST(NbdCodec, ErrnoMapping) {
    EXPECT_EQ(errno_to_nbd(EPERM), err_perm);
    EXPECT_EQ(errno_to_nbd(EROFS), err_perm);
    EXPECT_EQ(errno_to_nbd(-EIO), err_io);
    EXPECT_EQ(errno_to_nbd(ENOMEM), err_nomem);
    EXPECT_EQ(errno_to_nbd(ENOSPC), err_nospc);
    EXPECT_EQ(errno_to_nbd(EDQUOT), err_nospc);
    EXPECT_EQ(errno_to_nbd(EFBIG), err_nospc);
    EXPECT_EQ(errno_to_nbd(EOVERFLOW), err_overflow);
    EXPECT_EQ(errno_to_nbd(ESHUTDOWN), err_shutdown);
    EXPECT_EQ(errno_to_nbd(ENOTSUP), err_inval);
    EXPECT_EQ(errno_to_nbd(ENOTSUP, true), err_notsup);
    EXPECT_EQ(errno_to_nbd(EBADF), err_inval);
}

TEST(NbdCodec, Replies) {
    Bytes b;
    encode_simple_reply(b, 7, err_io);
    ASSERT_EQ(b.size(), simple_reply_size);
    EXPECT_EQ(load_be32(b.data()), simple_reply_magic);
    EXPECT_EQ(load_be32(b.data() + 4), err_io);
    EXPECT_EQ(load_be64(b.data() + 8), 7u);

    b.clear();
    encode_offset_data_header(b, 9, 4096, 512, true);
    ASSERT_EQ(b.size(), structured_reply_header_size + 8);
    EXPECT_EQ(load_be32(b.data()), structured_reply_magic);
    EXPECT_EQ(load_be16(b.data() + 4), reply_flag_done);
    EXPECT_EQ(load_be16(b.data() + 6), reply_type_offset_data);
    EXPECT_EQ(load_be64(b.data() + 8), 9u);
    EXPECT_EQ(load_be32(b.data() + 16), 512u + 8);
    EXPECT_EQ(load_be64(b.data() + 20), 4096u);

    b.clear();
    encode_error_chunk(b, 3, err_inval, "bad");
    EXPECT_EQ(load_be16(b.data() + 6), reply_type_error);
    EXPECT_EQ(load_be32(b.data() + 16), 9u);
    EXPECT_EQ(load_be32(b.data() + 20), err_inval);
    EXPECT_EQ(load_be16(b.data() + 24), 3u);

    b.clear();
    const Extent ex[] = {{4096, 0}, {8192, state_hole | state_zero}};
    encode_block_status(b, 5, 1, ex, true);
    ASSERT_EQ(b.size(), 20u + 4 + 16);
    EXPECT_EQ(load_be32(b.data() + 16), 20u);
    EXPECT_EQ(load_be32(b.data() + 20), 1u);
    EXPECT_EQ(load_be32(b.data() + 32), 8192u);
    EXPECT_EQ(load_be32(b.data() + 36), 3u);
}

TEST(NbdCodec, OptionsAndHandshake) {
    Bytes g = encode_greeting(flag_fixed_newstyle | flag_no_zeroes);
    ASSERT_EQ(g.size(), 18u);
    EXPECT_EQ(load_be64(g.data()), nbd_magic);
    EXPECT_EQ(load_be64(g.data() + 8), opt_magic);
    EXPECT_EQ(load_be16(g.data() + 16), 3u);

    Bytes h = encode_option_header({opt_go, 12});
    auto oh = parse_option_header(sp(h));
    ASSERT_TRUE(oh);
    EXPECT_EQ(oh->option, opt_go);
    EXPECT_EQ(oh->length, 12u);
    h[3] = std::byte{0};
    EXPECT_FALSE(parse_option_header(sp(h)));

    Bytes r;
    encode_option_reply(r, opt_list, rep_server, sp(rep_server_payload("disk", "d")));
    EXPECT_EQ(load_be64(r.data()), opt_reply_magic);
    EXPECT_EQ(load_be32(r.data() + 8), opt_list);
    EXPECT_EQ(load_be32(r.data() + 12), rep_server);
    EXPECT_EQ(load_be32(r.data() + 16), 4u + 4 + 1);

    EXPECT_EQ(export_name_reply(1, 2, true).size(), 10u);
    EXPECT_EQ(export_name_reply(1, 2, false).size(), 134u);
    EXPECT_EQ(info_export_payload(1, 2).size(), 12u);
    EXPECT_EQ(info_block_size_payload(1, 4096, max_payload).size(), 14u);
}

TEST(NbdCodec, InfoRequest) {
    Bytes d;
    put_u32(d, 4);
    put_bytes(d, "disk");
    put_u16(d, 2);
    put_u16(d, info_name);
    put_u16(d, info_block_size);
    auto r = parse_info_request(sp(d));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->name, "disk");
    ASSERT_EQ(r->infos.size(), 2u);
    EXPECT_EQ(r->infos[1], info_block_size);
    d.pop_back();
    EXPECT_FALSE(parse_info_request(sp(d)));
    Bytes bad;
    put_u32(bad, 100);
    EXPECT_FALSE(parse_info_request(sp(bad)));
}

TEST(NbdCodec, MetaContextRequest) {
    Bytes d;
    put_u32(d, 0);
    put_u32(d, 2);
    put_u32(d, 15);
    put_bytes(d, "base:allocation");
    put_u32(d, 5);
    put_bytes(d, "qemu:");
    auto r = parse_meta_context_request(sp(d));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->export_name, "");
    ASSERT_EQ(r->queries.size(), 2u);
    EXPECT_EQ(r->queries[0], "base:allocation");
    d.push_back(std::byte{0});
    EXPECT_FALSE(parse_meta_context_request(sp(d)));
    Bytes huge;
    put_u32(huge, 0);
    put_u32(huge, 0xffffffffu);
    EXPECT_FALSE(parse_meta_context_request(sp(huge)));
}
