// libFuzzer target for the qcow2 metadata parser (nodes/qcow2/qcow2_format.hpp). The input
// is the start of an image file. Checked: parsing never crashes or reads out of bounds
// (ASan), an accepted version 3 header serialises and parses back to the same fields,
// and every 8-byte word decodes as an L2 entry and round-trips through the refcount
// accessors of every width. Violations abort.
//
// Link against fleece_nodes (and libFuzzer: -fsanitize=fuzzer).

#include "nodes/qcow2/qcow2_format.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <vector>

using namespace fleece::nodes::qcow2;

namespace {

void require(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "qcow2 header fuzz: invariant violated: %s\n", what);
        std::abort();
    }
}

void check_roundtrip(const Header& h, std::uint64_t file_size) {
    if (h.version != 3) return;
    auto bytes = serialize_header(h);
    if (!bytes) return; // e.g. does not fit in the first cluster after re-layout
    std::vector<std::byte> cluster(h.cluster_size());
    if (bytes->size() > cluster.size()) std::abort();
    std::copy(bytes->begin(), bytes->end(), cluster.begin());
    auto again = parse_header(cluster, file_size);
    require(again.ok(), "a serialised header parses");
    const Header& g = *again;
    require(g.size == h.size && g.cluster_bits == h.cluster_bits && g.l1_size == h.l1_size &&
                g.l1_table_offset == h.l1_table_offset &&
                g.refcount_table_offset == h.refcount_table_offset &&
                g.refcount_table_clusters == h.refcount_table_clusters &&
                g.incompatible_features == h.incompatible_features &&
                g.refcount_order == h.refcount_order && g.compression_type == h.compression_type,
            "header fields survive a round trip");
    require(g.backing_file == h.backing_file && g.backing_format == h.backing_format,
            "backing file and format survive a round trip");
    require(g.extensions.size() == h.extensions.size(), "extensions survive a round trip");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);
    // The claimed file size: the input itself, and a large file (tables inside it).
    for (std::uint64_t file_size : {std::uint64_t(size), std::uint64_t(1) << 40}) {
        auto h = parse_header(in, file_size);
        if (h) {
            check_roundtrip(*h, file_size);
            if (const HeaderExtension* e = h->find_extension(ext_bitmaps)) {
                auto b = parse_bitmaps_extension(*e);
                if (b) (void)parse_bitmap_directory(in, b->nb_bitmaps % 64);
            }
        }
    }
    std::uint64_t consumed = 0;
    (void)parse_snapshot_table(in, size > 0 ? data[0] % 8 : 0, &consumed);
    require(consumed <= size, "snapshot table length within the input");
    std::vector<std::byte> block(512);
    for (std::size_t off = 0; off + 8 <= size; off += 8) {
        const std::uint64_t w = fleece::load_be64(in.data() + off);
        for (std::uint32_t cb = min_cluster_bits; cb <= max_cluster_bits; ++cb) {
            const L2Entry e = decode_l2(w, cb, 3);
            if (e.kind == ClusterKind::compressed)
                require(compressed_last_cluster(e, cb) >= compressed_first_cluster(e, cb),
                        "compressed range is not empty");
        }
        for (std::uint32_t order = 0; order <= 6; ++order) {
            const std::uint64_t index = (w >> 8) % (512 * 8 >> order);
            const std::uint64_t v = w & max_refcount(order);
            set_refcount(block, index, order, v);
            require(get_refcount(block, index, order) == v, "refcount round trip");
        }
    }
    return 0;
}
