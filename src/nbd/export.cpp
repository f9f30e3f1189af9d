#include "nbd/export.hpp"

#include "nbd/protocol.hpp"

#include <algorithm>

namespace fleece::nbd {

std::uint16_t Export::transmission_flags() const {
    const block::Caps& caps = node().caps();
    std::uint16_t f = tflag_has_flags | tflag_send_flush | tflag_send_fua | tflag_can_multi_conn |
                      tflag_send_cache;
    if (!opts_.writable) {
        f |= tflag_read_only;
    } else {
        f |= tflag_send_trim | tflag_send_write_zeroes;
        if (caps.fast_zero) f |= tflag_send_fast_zero;
    }
    return f;
}

std::uint32_t Export::min_block() const {
    return std::max<std::uint32_t>(1, node().limits().request_alignment);
}

std::uint32_t Export::preferred_block() const {
    return std::max<std::uint32_t>(min_block(), preferred_block_size);
}

std::uint32_t Export::max_block() const {
    std::uint32_t m = max_payload;
    const std::uint32_t node_max = node().limits().max_transfer;
    if (node_max != 0 && node_max < m && node_max >= preferred_block()) m = node_max;
    return m;
}

void Export::build_contexts() {
    contexts_.push_back(make_base_allocation_context());
    if (opts_.allocation_depth) contexts_.push_back(make_allocation_depth_context());
}

} // namespace fleece::nbd
