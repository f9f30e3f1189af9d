#include "cli/img/qcow2_support.hpp"

#include "nodes/qcow2/qcow2_format.hpp"
#include "nodes/qcow2/qcow2_tools.hpp"
#include "util/align.hpp"
#include "util/blocking_io.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

namespace fleece::cli::img {

namespace q = fleece::nodes::qcow2;

Status qcow2_create(const std::string& path, const CreateSettings& s) {
    q::CreateOptions o;
    o.size = s.size.value_or(0);
    o.cluster_size = s.cluster_size;
    o.backing_file = s.backing_file;
    o.backing_format = s.backing_format;
    o.preallocate_metadata = s.preallocation == "metadata";
    return q::create_image(path, o);
}

Result<Qcow2Info> qcow2_info(const std::string& path) {
    auto r = q::read_image_info(path);
    if (!r) return r.error();
    const q::ImageInfo& i = *r;
    Qcow2Info out;
    out.virtual_size = i.virtual_size;
    out.cluster_size = i.cluster_size;
    out.backing_file = i.backing_file;
    out.backing_format = i.backing_format;
    out.dirty = i.dirty;
    nlohmann::ordered_json d;
    d["compat"] = i.version >= 3 ? "1.1" : "0.10";
    if (i.version >= 3) d["compression-type"] = i.compression_type;
    if (i.version >= 3) d["lazy-refcounts"] = i.lazy_refcounts;
    if (!i.bitmaps.empty()) {
        nlohmann::ordered_json bitmaps = nlohmann::ordered_json::array();
        for (const auto& b : i.bitmaps) {
            nlohmann::ordered_json flags = nlohmann::ordered_json::array();
            if (b.in_use) flags.push_back("in-use");
            if (b.auto_enabled) flags.push_back("auto");
            nlohmann::ordered_json entry;
            entry["flags"] = flags;
            entry["name"] = b.name;
            entry["granularity"] = b.granularity;
            bitmaps.push_back(entry);
        }
        d["bitmaps"] = bitmaps;
    }
    d["refcount-bits"] = i.refcount_bits;
    if (i.version >= 3) d["corrupt"] = i.corrupt;
    if (i.version >= 3) d["extended-l2"] = i.extended_l2;
    out.format_specific = d;
    return out;
}

Result<CheckReport> qcow2_check(const std::string& path, RepairMode mode) {
    const q::Repair repair = mode == RepairMode::none    ? q::Repair::none
                             : mode == RepairMode::leaks ? q::Repair::leaks
                                                         : q::Repair::all;
    auto r = q::check_image(path, repair);
    if (!r) return r.error();
    CheckReport c;
    c.corruptions = r->corruptions;
    c.leaks = r->leaks;
    c.corruptions_fixed = r->corruptions_fixed;
    c.leaks_fixed = r->leaks_fixed;
    c.check_errors = r->check_errors;
    c.image_end_offset = r->image_end_offset;
    c.total_clusters = r->total_clusters;
    c.allocated_clusters = r->allocated_clusters;
    c.fragmented_clusters = r->fragmented_clusters;
    c.compressed_clusters = r->compressed_clusters;
    c.messages = r->messages;
    return c;
}

namespace {

void put_be(std::byte* p, std::uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; --i) {
        p[i] = static_cast<std::byte>(v & 0xff);
        v >>= 8;
    }
}

struct Fd {
    int fd = -1;
    ~Fd() {
        if (fd >= 0) ::close(fd);
    }
};

Error os_error(const char* what, const std::string& path) {
    return make_error(fmt::format("Could not {} '{}': {}", what, path, std::strerror(errno)));
}

} // namespace

Status qcow2_grow(const std::string& path, std::uint64_t new_size) {
    Fd f;
    f.fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (f.fd < 0) return os_error("open", path);
    struct stat st {};
    if (::fstat(f.fd, &st) < 0) return os_error("stat", path);
    const auto file_size = static_cast<std::uint64_t>(st.st_size);
    std::vector<std::byte> first(std::min<std::uint64_t>(file_size, 2u << 20));
    if (::pread(f.fd, first.data(), first.size(), 0) != static_cast<ssize_t>(first.size()))
        return os_error("read", path);
    auto h = q::parse_header(first, file_size);
    if (!h) return h.error();
    if (h->corrupt() || h->dirty())
        return make_error(
            "The image is marked corrupt or dirty; repair it first (img check -r all)");
    if (h->nb_snapshots) return make_error("Can't resize an image which has snapshots");
    if (h->find_extension(q::ext_bitmaps))
        return make_error("Can't resize an image which has persistent bitmaps");
    if (new_size < h->size) return make_error("Shrinking qcow2 images is not supported yet");
    if (new_size > q::max_virtual_size) return make_error("Image size too large");
    const std::uint64_t cs = h->cluster_size();
    const std::uint64_t want_l1 = q::l1_entries_for(new_size, h->cluster_bits, h->extended_l2());
    if (want_l1 > h->l1_size) {
        // The L1 table grows in place inside the clusters it already owns; moving it to new
        // clusters (refcount updates) is not done offline yet.
        const std::uint64_t capacity = align_up(std::uint64_t{h->l1_size} * 8, cs) / 8;
        if (h->l1_table_offset == 0 || want_l1 > capacity)
            return make_error(fmt::format(
                "Growing this image needs a larger L1 table, which is not supported yet "
                "(largest size without it: {} bytes)",
                capacity * (h->l2_entries() * cs)));
        // Entries past l1_size are unused; make sure they read as "unallocated" before the
        // header makes them part of the table.
        std::vector<std::byte> zeroes((want_l1 - h->l1_size) * 8);
        if (!pwrite_all(f.fd, zeroes.data(), zeroes.size(), h->l1_table_offset + h->l1_size * 8) ||
            ::fdatasync(f.fd) < 0)
            return os_error("write", path);
    }
    // size (offset 24) and, if needed, l1_size (offset 36) are in the same sector.
    std::byte field[8];
    if (want_l1 > h->l1_size) {
        put_be(field, want_l1, 4);
        if (!pwrite_all(f.fd, field, 4, 36)) return os_error("write", path);
    }
    put_be(field, new_size, 8);
    if (!pwrite_all(f.fd, field, 8, 24) || ::fdatasync(f.fd) < 0) return os_error("write", path);
    return {};
}

} // namespace fleece::cli::img
