// libFuzzer target for the NBD codec: request headers, request validation, option headers
// and option payloads (NBD_OPT_INFO/GO, LIST/SET_META_CONTEXT).
//
// Input layout: byte 0 selects the parser, the rest is the message.
//   0: request header (28 bytes) + validation against a few export shapes
//   1: option header (16 bytes)
//   2: NBD_OPT_INFO / NBD_OPT_GO payload
//   3: NBD_OPT_LIST/SET_META_CONTEXT payload
//   other: all of the above on the same bytes
#include "nbd/codec.hpp"

#include <cstddef>
#include <cstdint>
#include <span>

using namespace fleece::nbd;

namespace {

void fuzz_request(std::span<const std::byte> d) {
    auto r = parse_request(d);
    if (!r) return;
    // Round trip must be exact.
    Bytes again = encode_request(*r);
    for (std::size_t i = 0; i < request_size; ++i)
        if (again[i] != d[i]) __builtin_trap();
    ExportParams shapes[3];
    shapes[0].size = 1ull << 30;
    shapes[0].transmission_flags = tflag_has_flags | tflag_send_flush | tflag_send_fua |
                                   tflag_send_trim | tflag_send_write_zeroes | tflag_send_fast_zero;
    shapes[0].structured_replies = true;
    shapes[0].base_allocation = true;
    shapes[1].size = 4096 + 17;
    shapes[1].min_block = 512;
    shapes[1].transmission_flags = tflag_has_flags | tflag_read_only;
    shapes[2].size = ~0ull;
    for (const ExportParams& p : shapes) {
        Validation v = validate_request(*r, p);
        if (v.fatal && v.error == err_none) __builtin_trap();
        if (v && r->type != cmd_disc && r->type != cmd_flush &&
            (r->offset > p.size || r->length > p.size - r->offset))
            __builtin_trap(); // accepted an out-of-range request
        if (v && r->type == cmd_write && r->length > p.max_payload) __builtin_trap();
    }
    Bytes out;
    encode_simple_reply(out, r->cookie, errno_to_nbd(static_cast<int>(r->length & 0xff)));
}

void fuzz_option_header(std::span<const std::byte> d) {
    auto h = parse_option_header(d);
    if (!h) return;
    Bytes again = encode_option_header(*h);
    for (std::size_t i = 0; i < option_header_size; ++i)
        if (again[i] != d[i]) __builtin_trap();
}

void fuzz_info(std::span<const std::byte> d) {
    auto r = parse_info_request(d);
    if (r && 4 + r->name.size() + 2 + 2 * r->infos.size() != d.size()) __builtin_trap();
}

void fuzz_meta(std::span<const std::byte> d) {
    auto r = parse_meta_context_request(d);
    if (!r) return;
    std::size_t n = 4 + r->export_name.size() + 4;
    for (const auto& q : r->queries)
        n += 4 + q.size();
    if (n != d.size()) __builtin_trap();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::span<const std::byte> d(reinterpret_cast<const std::byte*>(data + 1), size - 1);
    switch (data[0]) {
    case 0:
        fuzz_request(d);
        break;
    case 1:
        fuzz_option_header(d);
        break;
    case 2:
        fuzz_info(d);
        break;
    case 3:
        fuzz_meta(d);
        break;
    default:
        fuzz_request(d);
        fuzz_option_header(d);
        fuzz_info(d);
        fuzz_meta(d);
        break;
    }
    return 0;
}
