#include "nodes/qcow2/qcow2_compress.hpp"

#include "nodes/qcow2/qcow2_format.hpp"

#include <zlib.h>
#include <zstd.h>

namespace fleece::nodes::qcow2 {
namespace {

bool inflate_raw(std::span<const std::byte> in, std::span<std::byte> out) {
    z_stream s{};
    // Raw deflate (negative window bits); the largest window also reads streams made with
    // a smaller one (QEMU uses 4 KiB windows).
    if (inflateInit2(&s, -15) != Z_OK) return false;
    s.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(in.data()));
    s.avail_in = static_cast<uInt>(in.size());
    s.next_out = reinterpret_cast<Bytef*>(out.data());
    s.avail_out = static_cast<uInt>(out.size());
    const int r = inflate(&s, Z_FINISH);
    const bool full = s.avail_out == 0;
    inflateEnd(&s);
    // Z_BUF_ERROR with a full output: the stream is longer than a cluster's worth or we
    // stopped at the padding; either way the cluster is complete.
    return full && (r == Z_STREAM_END || r == Z_BUF_ERROR || r == Z_OK);
}

bool zstd_decompress(std::span<const std::byte> in, std::span<std::byte> out) {
    ZSTD_DCtx* ctx = ZSTD_createDCtx();
    if (!ctx) return false;
    ZSTD_inBuffer ib{in.data(), in.size(), 0};
    ZSTD_outBuffer ob{out.data(), out.size(), 0};
    bool ok = true;
    while (ob.pos < ob.size) {
        const std::size_t r = ZSTD_decompressStream(ctx, &ob, &ib);
        if (ZSTD_isError(r)) {
            ok = false;
            break;
        }
        if (ib.pos == ib.size && ob.pos < ob.size && r != 0) {
            ok = false; // truncated input
            break;
        }
        if (r == 0 && ob.pos < ob.size && ib.pos == ib.size) {
            ok = false; // stream ended short of a cluster
            break;
        }
    }
    ZSTD_freeDCtx(ctx);
    return ok && ob.pos == ob.size;
}

} // namespace

bool decompress_cluster(std::uint8_t type, std::span<const std::byte> in,
                        std::span<std::byte> out) {
    if (type == compression_zstd) return zstd_decompress(in, out);
    return inflate_raw(in, out);
}

std::size_t compress_cluster(std::uint8_t type, std::span<const std::byte> in,
                             std::span<std::byte> out) {
    if (type == compression_zstd) {
        const std::size_t r = ZSTD_compress(out.data(), out.size(), in.data(), in.size(), 1);
        if (ZSTD_isError(r) || r >= out.size()) return 0;
        return r;
    }
    z_stream s{};
    if (deflateInit2(&s, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        return 0;
    s.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(in.data()));
    s.avail_in = static_cast<uInt>(in.size());
    s.next_out = reinterpret_cast<Bytef*>(out.data());
    s.avail_out = static_cast<uInt>(out.size());
    const int r = deflate(&s, Z_FINISH);
    const std::size_t n = out.size() - s.avail_out;
    deflateEnd(&s);
    if (r != Z_STREAM_END || n >= out.size()) return 0;
    return n;
}

} // namespace fleece::nodes::qcow2
