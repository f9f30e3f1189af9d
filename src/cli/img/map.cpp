// img map [-f FMT] [--output=human|json] FILE: the image's allocation, qemu-img style.

#include "cli/img/common.hpp"
#include "cli/img/image.hpp"

#include <cinttypes>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>

namespace fleece::cli::img {
namespace {

struct MapArgs {
    std::string format;
    std::string output = "human";
    std::string filename;
};

struct MapEntry {
    std::uint64_t start = 0, length = 0;
    std::uint32_t depth = 0; // qemu-img's: 0 = the image itself, 1 = its backing, ...
    bool present = false, zero = false, data = false;
    std::optional<std::uint64_t> offset;
    std::string file;

    // Adjacent entries with the same meaning are shown as one, as qemu-img does.
    bool continues(const MapEntry& prev) const {
        if (prev.depth != depth || prev.present != present || prev.zero != zero ||
            prev.data != data || prev.offset.has_value() != offset.has_value())
            return false;
        return !offset || *prev.offset + prev.length == *offset;
    }
};

void print_json(const std::vector<MapEntry>& entries) {
    std::cout << "[";
    for (std::size_t i = 0; i < entries.size(); ++i) {
        const MapEntry& e = entries[i];
        if (i) std::cout << ",\n";
        std::cout << "{ \"start\": " << e.start << ", \"length\": " << e.length
                  << ", \"depth\": " << e.depth << ", \"present\": " << std::boolalpha << e.present
                  << ", \"zero\": " << e.zero << ", \"data\": " << e.data;
        if (e.offset) std::cout << ", \"offset\": " << *e.offset;
        std::cout << "}";
    }
    std::cout << "]\n";
}

void print_human(const std::vector<MapEntry>& entries) {
    std::printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    for (const MapEntry& e : entries) {
        if (!e.data || !e.offset) continue;
        std::printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e.start, e.length,
                    *e.offset, e.file.c_str());
    }
    std::fflush(stdout);
}

io::Task<int> run_map(MapArgs a, Session* s) {
    // Built outside co_await: GCC 12 destroys a braced temporary argument twice.
    OpenRequest img_req{a.filename, a.format, false};
    auto img = co_await open_image(s, std::move(img_req));
    if (!img) co_return fail(img.error().message);
    Image& image = **img;
    const std::vector<block::Node*> chain = image.chain();
    const bool raw = image.format() == "raw";
    std::vector<MapEntry> entries;
    const std::uint64_t size = image.size();
    std::uint64_t pos = 0;
    while (pos < size) {
        const block::BlockStatus st = co_await image.io().block_status(pos, size - pos);
        if (st.error)
            co_return fail("block status failed at offset " + std::to_string(pos) + ": " +
                           st.error.message());
        const std::uint64_t n = std::min(st.length, size - pos);
        if (n == 0)
            co_return fail("block status made no progress at offset " + std::to_string(pos));
        MapEntry e;
        e.start = pos;
        e.length = n;
        e.present = st.depth != 0;
        // Unallocated everywhere: qemu-img reports the bottom of the chain.
        e.depth = st.depth == 0 ? static_cast<std::uint32_t>(chain.size() - 1) : st.depth - 1;
        e.zero = st.flags & block::status_zero;
        e.data = st.flags & block::status_data;
        if (st.offset != block::BlockStatus::no_offset)
            e.offset = st.offset;
        else if (raw)
            e.offset = pos; // raw over NBD: every byte maps to the same offset
        if (e.depth == 0)
            e.file = image.name();
        else if (e.depth < chain.size())
            e.file = chain[e.depth]->filename();
        if (!entries.empty() && e.continues(entries.back()))
            entries.back().length += n;
        else
            entries.push_back(std::move(e));
        pos += n;
    }
    if (a.output == "json")
        print_json(entries);
    else
        print_human(entries);
    co_return 0;
}

} // namespace

void add_map(CLI::App& img, Action* action) {
    auto a = std::make_shared<MapArgs>();
    CLI::App* cmd = img.add_subcommand("map", "Show where an image's data lives");
    cmd->add_option("-f", a->format, "Image format (default: probe)");
    add_output_option(*cmd, &a->output);
    cmd->add_option("filename", a->filename, "Image (path or NBD URI)")->required();
    cmd->callback([a, action] {
        *action = [a] {
            Session s;
            return run_and_close(s, run_map(*a, &s));
        };
    });
}

} // namespace fleece::cli::img
