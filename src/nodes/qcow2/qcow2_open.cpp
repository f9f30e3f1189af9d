// Opening a qcow2 node: options, metadata validation, the backing chain.
#include "nodes/qcow2/qcow2_node.hpp"
#include "nodes/qcow2/qcow2_node_impl.hpp"

#include <climits>
#include <cstdlib>
#include <fcntl.h>
#include <filesystem>
#include <fmt/format.h>
#include <unistd.h>

namespace fleece::nodes {
namespace {

using namespace qcow2;

// Real paths of the images being opened along the current backing chain (open runs on the
// loop thread; nested opens happen inside the parent's open), to refuse loops.
thread_local std::vector<std::string> chain_paths;

struct ChainEntry {
    explicit ChainEntry(std::string p) { chain_paths.push_back(std::move(p)); }
    ~ChainEntry() { chain_paths.pop_back(); }
    ChainEntry(const ChainEntry&) = delete;
    ChainEntry& operator=(const ChainEntry&) = delete;
};

std::string real_path(const std::string& p) {
    char buf[PATH_MAX];
    if (::realpath(p.c_str(), buf)) return buf;
    return p;
}

// Format of a backing file without a backing format in the header: QEMU probes it.
std::string probe_format(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return "raw";
    std::byte b[4] = {};
    const bool ok = ::pread(fd, b, 4, 0) == 4;
    ::close(fd);
    return ok && load_be32(b) == magic ? "qcow2" : "raw";
}

Error open_error(const std::string& file, const std::string& msg) {
    return make_error(fmt::format("Could not open '{}': {}", file, msg));
}

io::Task<Result<std::unique_ptr<block::Node>>> open_qcow2(OpenContext& ctx, std::string node_name,
                                                          const CommonOptions& common,
                                                          OptionReader& opts) {
    const nlohmann::json* file_ref = opts.required_raw("file");
    const nlohmann::json* backing_ref = opts.raw("backing");
    const std::optional<std::uint64_t> l2_cache_size = opts.uint("l2-cache-size");
    const std::optional<std::uint64_t> cache_size = opts.uint("cache-size");
    (void)opts.uint("refcount-cache-size"); // refcounts are always fully in memory
    (void)opts.uint("cache-clean-interval");
    const bool lazy = opts.boolean("lazy-refcounts").value_or(false);
    // QEMU's defaults: freed clusters a guest discard frees go down to the file only with
    // discard=unmap; snapshot operations always (there are none here); others never.
    const bool pass_request =
        opts.boolean("pass-discard-request").value_or(common.discard == "unmap");
    (void)opts.boolean("pass-discard-snapshot"); // no internal snapshot operations
    const bool pass_other = opts.boolean("pass-discard-other").value_or(false);
    if (Status st = opts.finish(); !st) co_return st.error();
    if (lazy) co_return make_error("qcow2: lazy-refcounts is not supported");
    if (l2_cache_size && cache_size && *l2_cache_size > *cache_size)
        co_return make_error("l2-cache-size may not exceed cache-size");

    // A file node defined inline gets discard=unmap unless it says otherwise (as in QEMU,
    // where a format driver's protocol child defaults to it: the format node decides what
    // reaches the file, through its own discard and pass-discard-* options). A node given
    // by name keeps its own setting.
    nlohmann::json inline_file;
    if (file_ref->is_object() && !file_ref->contains("discard")) {
        inline_file = *file_ref;
        inline_file["discard"] = "unmap";
        file_ref = &inline_file;
    }
    auto file_node = co_await resolve_ref(ctx, *file_ref, "file");
    if (!file_node) co_return file_node.error();
    block::Node& file = **file_node;
    const std::string fname = file.filename();
    const bool read_only = common.read_only;

    // Header and extensions: the first cluster (at most 2 MiB).
    std::vector<std::byte> first(std::min<std::uint64_t>(file.size(), 2u << 20));
    if (!first.empty())
        if (auto e = co_await file.read(0, first, 0))
            co_return open_error(fname, "reading the header: " + e.message());
    auto parsed = parse_header(first, file.size());
    if (!parsed) co_return open_error(fname, parsed.error().message);
    Header h = std::move(*parsed);
    const std::uint64_t cs = h.cluster_size();
    first.resize(std::min<std::uint64_t>(first.size(), cs));

    if (h.extended_l2())
        co_return open_error(fname, "qcow2: extended L2 entries are not supported");
    if (!read_only) {
        if (h.version < 3)
            co_return open_error(fname, "qcow2: version 2 images can only be opened read-only "
                                        "(upgrade with 'qemu-img amend -o compat=1.1')");
        if (h.corrupt())
            co_return open_error(fname, "qcow2: image is marked corrupt; open it read-only or "
                                        "repair it with 'qemu-img check -r all'");
        if (h.dirty())
            co_return open_error(fname, "qcow2: image has the dirty bit set (lazy refcounts); "
                                        "repair it with 'qemu-img check -r all'");
        if (h.nb_snapshots > 0)
            co_return open_error(fname, "qcow2: images with internal snapshots can only be "
                                        "opened read-only");
    }

    // L1 table.
    std::vector<std::uint64_t> l1(h.l1_size);
    if (h.l1_size) {
        std::vector<std::byte> raw(std::uint64_t(h.l1_size) * 8);
        if (auto e = co_await file.read(h.l1_table_offset, raw, 0))
            co_return open_error(fname, "reading the L1 table: " + e.message());
        for (std::uint64_t i = 0; i < l1.size(); ++i)
            l1[i] = load_be64(raw.data() + 8 * i);
    }

    // Refcount table and every refcount block.
    std::vector<std::byte> rt_raw(std::uint64_t(h.refcount_table_clusters) * cs);
    if (auto e = co_await file.read(h.refcount_table_offset, rt_raw, 0))
        co_return open_error(fname, "reading the refcount table: " + e.message());
    std::vector<std::uint64_t> table(rt_raw.size() / 8);
    std::vector<std::unique_ptr<Refcounts::Block>> blocks(table.size());
    for (std::uint64_t i = 0; i < table.size(); ++i) {
        const std::uint64_t e = load_be64(rt_raw.data() + 8 * i);
        table[i] = e;
        if (!e) continue;
        if (e & refcount_table_reserved_mask)
            co_return open_error(fname, fmt::format("qcow2: refcount table entry {} has reserved "
                                                    "bits set",
                                                    i));
        if ((e & (cs - 1)) || e > file.size() || cs > file.size() - e)
            co_return open_error(fname, fmt::format("qcow2: refcount block {} (offset {:#x}) is "
                                                    "unaligned or past the end of the file",
                                                    i, e));
        auto b = std::make_unique<Refcounts::Block>();
        b->offset = e;
        b->data.resize(cs);
        if (auto err = co_await file.read(e, b->data, 0))
            co_return open_error(fname, "reading a refcount block: " + err.message());
        blocks[i] = std::move(b);
    }
    auto rc = std::make_unique<Refcounts>(h, std::move(table), std::move(blocks));
    // The header cluster must be counted, or the allocator would hand it out.
    if (rc->get(0) == 0)
        co_return open_error(fname, "qcow2: refcount of the header cluster is 0 (corrupt "
                                    "refcounts; run 'qemu-img check -r all')");

    // Backing: a node given, none (null), or the file named in the header.
    block::Node* backing = nullptr;
    std::optional<ChainEntry> chain;
    if (fname.size()) chain.emplace(real_path(fname));
    if (backing_ref && !backing_ref->is_null()) {
        auto b = co_await resolve_ref(ctx, *backing_ref, "backing");
        if (!b) co_return b.error();
        backing = *b;
    } else if (!backing_ref && !h.backing_file.empty()) {
        std::filesystem::path p = h.backing_file;
        if (p.is_relative() && !fname.empty()) p = std::filesystem::path(fname).parent_path() / p;
        const std::string rp = real_path(p.string());
        for (const auto& c : chain_paths)
            if (c == rp)
                co_return open_error(fname, fmt::format("qcow2: loop in the backing chain: '{}' "
                                                        "is already part of it",
                                                        p.string()));
        if (chain_paths.size() > 64)
            co_return open_error(fname, "qcow2: backing chain is too long (more than 64 images)");
        const std::string fmt_name =
            h.backing_format.empty() ? probe_format(p.string()) : h.backing_format;
        if (fmt_name != "qcow2" && fmt_name != "raw")
            co_return open_error(fname,
                                 fmt::format("qcow2: unsupported backing format '{}'", fmt_name));
        nlohmann::json file_opts = nlohmann::json::object();
        file_opts["driver"] = "file";
        file_opts["filename"] = p.string();
        file_opts["read-only"] = true;
        nlohmann::json bopts = nlohmann::json::object();
        bopts["driver"] = fmt_name;
        bopts["read-only"] = true;
        bopts["file"] = file_opts;
        auto b = co_await resolve_ref(ctx, bopts, "backing");
        if (!b) co_return open_error(fname, "backing file: " + b.error().message);
        backing = *b;
    }

    NodeConfig cfg;
    const std::uint64_t cache_bytes = l2_cache_size.value_or(cache_size.value_or(1u << 20));
    cfg.l2_cache_tables = static_cast<std::size_t>(std::max<std::uint64_t>(2, cache_bytes / cs));
    cfg.read_only = read_only;
    cfg.discard_unmap = common.discard == "unmap";
    cfg.pass_discard_request = pass_request;
    cfg.pass_discard_other = pass_other;
    // Persistent bitmaps: loaded, and marked in use before the node takes any write.
    auto bitmaps = co_await open_bitmaps(file, h, first, read_only);
    if (!bitmaps) co_return open_error(fname, bitmaps.error().message);
    cfg.bitmaps = std::move(*bitmaps);
    cfg.header = std::move(h);
    cfg.header_bytes = std::move(first);
    cfg.l1 = std::move(l1);
    cfg.refcounts = std::move(rc);
    co_return std::unique_ptr<block::Node>(
        std::make_unique<Qcow2Node>(std::move(node_name), std::move(cfg), file, backing));
}

} // namespace

DriverSpec qcow2_driver() {
    return {"qcow2", "QEMU copy-on-write image format", open_qcow2};
}

} // namespace fleece::nodes
