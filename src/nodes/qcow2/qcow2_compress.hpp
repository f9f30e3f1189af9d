#pragma once
// Compressed clusters: zlib (raw deflate stream, no zlib header) or zstd, selected by the
// header's compression_type. Pure CPU work on buffers; the node runs it on the offload pool.

#include <cstddef>
#include <cstdint>
#include <span>

namespace fleece::nodes::qcow2 {

// Fills all of `out` (one cluster) from the compressed bytes in `in`. Trailing bytes after
// the end of the compressed stream (sector padding) are ignored. False on corrupt data.
bool decompress_cluster(std::uint8_t compression_type, std::span<const std::byte> in,
                        std::span<std::byte> out);

// Compresses `in` into `out`; returns the compressed length, or 0 when the result would not
// be smaller than `out.size()` (the caller then stores the cluster uncompressed).
std::size_t compress_cluster(std::uint8_t compression_type, std::span<const std::byte> in,
                             std::span<std::byte> out);

} // namespace fleece::nodes::qcow2
