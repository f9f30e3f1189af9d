#pragma once
// NBD wire constants (fixed newstyle handshake, transmission phase, structured replies).
// All values are big-endian on the wire.

#include <cstdint>

namespace fleece::nbd {

// Handshake
inline constexpr std::uint64_t nbd_magic = 0x4e42444d41474943ull; // "NBDMAGIC"
inline constexpr std::uint64_t opt_magic = 0x49484156454f5054ull; // "IHAVEOPT"
inline constexpr std::uint64_t opt_reply_magic = 0x0003e889045565a9ull;

inline constexpr std::uint16_t flag_fixed_newstyle = 1u << 0;
inline constexpr std::uint16_t flag_no_zeroes = 1u << 1;
inline constexpr std::uint32_t client_flag_fixed_newstyle = 1u << 0;
inline constexpr std::uint32_t client_flag_no_zeroes = 1u << 1;

// Options
inline constexpr std::uint32_t opt_export_name = 1;
inline constexpr std::uint32_t opt_abort = 2;
inline constexpr std::uint32_t opt_list = 3;
inline constexpr std::uint32_t opt_peek_export = 4;
inline constexpr std::uint32_t opt_starttls = 5;
inline constexpr std::uint32_t opt_info = 6;
inline constexpr std::uint32_t opt_go = 7;
inline constexpr std::uint32_t opt_structured_reply = 8;
inline constexpr std::uint32_t opt_list_meta_context = 9;
inline constexpr std::uint32_t opt_set_meta_context = 10;
inline constexpr std::uint32_t opt_extended_headers = 11;

// Option replies
inline constexpr std::uint32_t rep_ack = 1;
inline constexpr std::uint32_t rep_server = 2;
inline constexpr std::uint32_t rep_info = 3;
inline constexpr std::uint32_t rep_meta_context = 4;
inline constexpr std::uint32_t rep_flag_error = 1u << 31;
inline constexpr std::uint32_t rep_err_unsup = rep_flag_error | 1;
inline constexpr std::uint32_t rep_err_policy = rep_flag_error | 2;
inline constexpr std::uint32_t rep_err_invalid = rep_flag_error | 3;
inline constexpr std::uint32_t rep_err_platform = rep_flag_error | 4;
inline constexpr std::uint32_t rep_err_tls_reqd = rep_flag_error | 5;
inline constexpr std::uint32_t rep_err_unknown = rep_flag_error | 6;
inline constexpr std::uint32_t rep_err_shutdown = rep_flag_error | 7;
inline constexpr std::uint32_t rep_err_block_size_reqd = rep_flag_error | 8;
inline constexpr std::uint32_t rep_err_too_big = rep_flag_error | 9;

// Info types (NBD_OPT_INFO / NBD_OPT_GO)
inline constexpr std::uint16_t info_export = 0;
inline constexpr std::uint16_t info_name = 1;
inline constexpr std::uint16_t info_description = 2;
inline constexpr std::uint16_t info_block_size = 3;

// Transmission flags
inline constexpr std::uint16_t tflag_has_flags = 1u << 0;
inline constexpr std::uint16_t tflag_read_only = 1u << 1;
inline constexpr std::uint16_t tflag_send_flush = 1u << 2;
inline constexpr std::uint16_t tflag_send_fua = 1u << 3;
inline constexpr std::uint16_t tflag_rotational = 1u << 4;
inline constexpr std::uint16_t tflag_send_trim = 1u << 5;
inline constexpr std::uint16_t tflag_send_write_zeroes = 1u << 6;
inline constexpr std::uint16_t tflag_send_df = 1u << 7;
inline constexpr std::uint16_t tflag_can_multi_conn = 1u << 8;
inline constexpr std::uint16_t tflag_send_resize = 1u << 9;
inline constexpr std::uint16_t tflag_send_cache = 1u << 10;
inline constexpr std::uint16_t tflag_send_fast_zero = 1u << 11;

// Requests
inline constexpr std::uint32_t request_magic = 0x25609513u;
inline constexpr std::uint32_t simple_reply_magic = 0x67446698u;
inline constexpr std::uint32_t structured_reply_magic = 0x668e33efu;

inline constexpr std::uint16_t cmd_read = 0;
inline constexpr std::uint16_t cmd_write = 1;
inline constexpr std::uint16_t cmd_disc = 2;
inline constexpr std::uint16_t cmd_flush = 3;
inline constexpr std::uint16_t cmd_trim = 4;
inline constexpr std::uint16_t cmd_cache = 5;
inline constexpr std::uint16_t cmd_write_zeroes = 6;
inline constexpr std::uint16_t cmd_block_status = 7;

inline constexpr std::uint16_t cmd_flag_fua = 1u << 0;
inline constexpr std::uint16_t cmd_flag_no_hole = 1u << 1;
inline constexpr std::uint16_t cmd_flag_df = 1u << 2;
inline constexpr std::uint16_t cmd_flag_req_one = 1u << 3;
inline constexpr std::uint16_t cmd_flag_fast_zero = 1u << 4;

// Errors (transmission phase)
inline constexpr std::uint32_t err_none = 0;
inline constexpr std::uint32_t err_perm = 1;
inline constexpr std::uint32_t err_io = 5;
inline constexpr std::uint32_t err_nomem = 12;
inline constexpr std::uint32_t err_inval = 22;
inline constexpr std::uint32_t err_nospc = 28;
inline constexpr std::uint32_t err_overflow = 75;
inline constexpr std::uint32_t err_notsup = 95;
inline constexpr std::uint32_t err_shutdown = 108;

// Structured replies
inline constexpr std::uint16_t reply_flag_done = 1u << 0;
inline constexpr std::uint16_t reply_type_none = 0;
inline constexpr std::uint16_t reply_type_offset_data = 1;
inline constexpr std::uint16_t reply_type_offset_hole = 2;
inline constexpr std::uint16_t reply_type_block_status = 5;
inline constexpr std::uint16_t reply_type_error = (1u << 15) | 1;
inline constexpr std::uint16_t reply_type_error_offset = (1u << 15) | 2;

// base:allocation states
inline constexpr std::uint32_t state_hole = 1u << 0;
inline constexpr std::uint32_t state_zero = 1u << 1;

// Sizes
inline constexpr std::size_t request_size = 28;
inline constexpr std::size_t simple_reply_size = 16;
inline constexpr std::size_t structured_reply_header_size = 20;
inline constexpr std::size_t option_header_size = 16;
inline constexpr std::uint32_t max_payload = 32u << 20;       // largest read/write/request
inline constexpr std::uint32_t max_option_length = 64u << 10; // larger options are refused
inline constexpr std::uint32_t preferred_block_size = 4096;

inline constexpr const char* meta_base_allocation = "base:allocation";
inline constexpr std::uint32_t meta_id_base_allocation = 1;
inline constexpr const char* meta_allocation_depth = "qemu:allocation-depth";

} // namespace fleece::nbd
