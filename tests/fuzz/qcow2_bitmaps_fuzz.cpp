// libFuzzer target for the qcow2 bitmaps extension codec (nodes/qcow2/qcow2_bitmaps.hpp).
// The input is a bitmap directory preceded by 8 bytes of parameters (entry count, cluster
// bits, disk size). Checked: parsing never crashes or reads out of bounds (ASan); an
// accepted directory reads the same through the lenient reader of the offline tools,
// serialises to the same bytes it was parsed from (modulo padding contents) and parses
// back to the same entries; bitmap tables and data clusters
// round-trip. Violations abort.
//
// Link against fleece_nodes (and libFuzzer: -fsanitize=fuzzer).

#include "nodes/qcow2/qcow2_bitmaps.hpp"

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
        std::fprintf(stderr, "qcow2 bitmaps fuzz: invariant violated: %s\n", what);
        std::abort();
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 8) return 0;
    const std::uint32_t nb = data[0] % 8;
    DirectoryLimits lim;
    lim.cluster_bits = min_cluster_bits + data[1] % (max_cluster_bits - min_cluster_bits + 1);
    lim.disk_size = (std::uint64_t(data[2]) << 32 | std::uint64_t(data[3]) << 24 |
                     std::uint64_t(data[4]) << 16) >>
                    (data[5] % 32);
    lim.file_size = std::uint64_t(1) << 40;
    std::span<const std::byte> dir(reinterpret_cast<const std::byte*>(data) + 8, size - 8);

    auto parsed = parse_bitmap_dir(dir, nb, lim);
    auto lenient = parse_bitmap_directory(dir, nb);
    if (parsed) {
        require(parsed->size() == nb, "entry count");
        require(lenient.ok() && lenient->size() == nb, "the lenient reader accepts it too");
        for (std::size_t i = 0; i < parsed->size(); ++i)
            require((*lenient)[i] == (*parsed)[i], "both readers see the same entries");
        const std::vector<std::byte> again = serialize_bitmap_dir(*parsed);
        require(again.size() == dir.size(), "serialised size equals the parsed size");
        auto reparsed = parse_bitmap_dir(again, nb, lim);
        require(reparsed.ok(), "a serialised directory parses");
        for (std::size_t i = 0; i < parsed->size(); ++i) {
            const QBitmap& a = (*parsed)[i];
            const QBitmap& b = (*reparsed)[i];
            require(a.name == b.name && a.flags == b.flags && a.table_offset == b.table_offset &&
                        a.table_size == b.table_size && a.granularity_bits == b.granularity_bits &&
                        a.extra_data == b.extra_data,
                    "entries survive a round trip");
        }
    }
    // Any 8-byte words as a bitmap table.
    auto table = parse_bitmap_table(dir.first(dir.size() & ~std::size_t(7)), lim.cluster_bits,
                                    lim.file_size);
    if (table)
        require(serialize_bitmap_table(*table).size() == (dir.size() & ~std::size_t(7)),
                "table round trip");
    // The input as a data cluster of 512 bytes.
    std::vector<std::byte> cluster(512);
    for (std::size_t i = 0; i < cluster.size() && i < dir.size(); ++i)
        cluster[i] = dir[i];
    std::vector<std::uint64_t> words(64, 0);
    load_bitmap_cluster(words, 0, cluster);
    std::vector<std::byte> back(512);
    store_bitmap_cluster(words, 0, back);
    require(back == cluster, "data cluster round trip");
    return 0;
}
