#pragma once
// Pure encoding and decoding of NBD messages: no I/O, no state. Used by the connection
// code and exercised directly by unit tests and the fuzz target.

#include "nbd/protocol.hpp"
#include "util/endian.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace fleece::nbd {

using Bytes = std::vector<std::byte>;

// Append big-endian integers / raw bytes (reading them back: load_be* in util/endian.hpp).
void put_u16(Bytes& out, std::uint16_t v);
void put_u32(Bytes& out, std::uint32_t v);
void put_u64(Bytes& out, std::uint64_t v);
void put_bytes(Bytes& out, std::string_view s);

// ---- Transmission phase ----------------------------------------------------------------

struct Request {
    std::uint16_t flags = 0;
    std::uint16_t type = 0;
    std::uint64_t cookie = 0;
    std::uint64_t offset = 0;
    std::uint32_t length = 0;
};

// Parses a 28-byte request header; nullopt when the buffer is short or the magic is wrong
// (the connection must then be closed).
std::optional<Request> parse_request(std::span<const std::byte> header);
Bytes encode_request(const Request& r); // for tests and the fuzzer round trip

// What the server negotiated for one connection, as needed to validate requests.
struct ExportParams {
    std::uint64_t size = 0;
    std::uint16_t transmission_flags = 0; // as advertised
    std::uint32_t min_block = 1;          // advertised minimum block size (power of two)
    std::uint32_t max_payload = nbd::max_payload;
    bool structured_replies = false;
    bool base_allocation = false; // base:allocation meta context selected
};

struct Validation {
    std::uint32_t error = err_none; // NBD error to send, 0 when valid
    bool fatal = false;             // close the connection after replying (unused today)
    explicit operator bool() const { return error == err_none; }
};

// Checks a request against the export: command known, flags valid for the command and
// advertised, range inside the export, alignment, payload size.
Validation validate_request(const Request& r, const ExportParams& p);

// errno -> NBD error. ENOTSUP maps to NBD_ENOTSUP only when fast_zero is set (otherwise
// EINVAL, because only FAST_ZERO requests may see ENOTSUP).
std::uint32_t errno_to_nbd(int err, bool fast_zero = false);

void encode_simple_reply(Bytes& out, std::uint64_t cookie, std::uint32_t error);
void encode_structured_header(Bytes& out, std::uint16_t flags, std::uint16_t type,
                              std::uint64_t cookie, std::uint32_t length);
// OFFSET_DATA header and offset; the caller appends data_length bytes.
void encode_offset_data_header(Bytes& out, std::uint64_t cookie, std::uint64_t offset,
                               std::uint32_t data_length, bool done);
void encode_offset_hole(Bytes& out, std::uint64_t cookie, std::uint64_t offset,
                        std::uint32_t length, bool done);
void encode_error_chunk(Bytes& out, std::uint64_t cookie, std::uint32_t error,
                        std::string_view message = {});
void encode_done_chunk(Bytes& out, std::uint64_t cookie); // NBD_REPLY_TYPE_NONE + DONE

struct Extent {
    std::uint32_t length;
    std::uint32_t flags;
};
void encode_block_status(Bytes& out, std::uint64_t cookie, std::uint32_t context_id,
                         std::span<const Extent> extents, bool done);

// ---- Handshake -------------------------------------------------------------------------

struct OptionHeader {
    std::uint32_t option = 0;
    std::uint32_t length = 0;
};
// Parses the 16-byte option header; nullopt when short or the magic is wrong.
std::optional<OptionHeader> parse_option_header(std::span<const std::byte> header);
Bytes encode_option_header(const OptionHeader& h); // for tests / fuzzer

// The server greeting (NBDMAGIC, IHAVEOPT, handshake flags).
Bytes encode_greeting(std::uint16_t handshake_flags);

void encode_option_reply(Bytes& out, std::uint32_t option, std::uint32_t type,
                         std::span<const std::byte> payload = {});
void encode_option_reply(Bytes& out, std::uint32_t option, std::uint32_t type,
                         std::string_view payload);
Bytes rep_server_payload(std::string_view name, std::string_view description);
Bytes info_export_payload(std::uint64_t size, std::uint16_t flags);
Bytes info_string_payload(std::uint16_t type, std::string_view s); // NAME / DESCRIPTION
Bytes info_block_size_payload(std::uint32_t min, std::uint32_t preferred, std::uint32_t max);
Bytes meta_context_payload(std::uint32_t id, std::string_view name);
// Reply to NBD_OPT_EXPORT_NAME: size, flags and (without NO_ZEROES) 124 zero bytes.
Bytes export_name_reply(std::uint64_t size, std::uint16_t flags, bool no_zeroes);

// NBD_OPT_INFO / NBD_OPT_GO data.
struct InfoRequest {
    std::string name;
    std::vector<std::uint16_t> infos;
};
std::optional<InfoRequest> parse_info_request(std::span<const std::byte> data);

// NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data.
struct MetaContextRequest {
    std::string export_name;
    std::vector<std::string> queries;
};
std::optional<MetaContextRequest> parse_meta_context_request(std::span<const std::byte> data);

} // namespace fleece::nbd
