#include "cli/img/qcow2_support.hpp"

// The qcow2 driver is developed on its own branch; until it is merged this file builds
// without it and says so at run time.
#if __has_include("nodes/qcow2/qcow2_tools.hpp")
#include "nodes/qcow2/qcow2_tools.hpp"
#define FLEECE_HAVE_QCOW2_TOOLS 1
#endif

namespace fleece::cli::img {

#ifndef FLEECE_HAVE_QCOW2_TOOLS

namespace {
Error missing() {
    return make_error("qcow2 support is not built into this fleece yet");
}
} // namespace

Status qcow2_create(const std::string&, const CreateSettings&) {
    return missing();
}
Result<Qcow2Info> qcow2_info(const std::string&) {
    return missing();
}
Result<CheckReport> qcow2_check(const std::string&, RepairMode) {
    return missing();
}

#else

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
    if (!i.bitmap_names.empty()) {
        nlohmann::ordered_json bitmaps = nlohmann::ordered_json::array();
        for (const auto& name : i.bitmap_names)
            bitmaps.push_back({{"name", name}});
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

#endif

} // namespace fleece::cli::img
