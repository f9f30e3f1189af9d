#pragma once
// The offline qcow2 operations `fleece img` needs (create, header info, check), on top of
// the qcow2 driver's tool API (nodes/qcow2/qcow2_tools.hpp). Data operations go through
// the block layer instead (image.hpp).

#include "cli/img/create_options.hpp"
#include "util/result.hpp"

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace fleece::cli::img {

Status qcow2_create(const std::string& path, const CreateSettings& s);

struct Qcow2Info {
    std::uint64_t virtual_size = 0;
    std::uint64_t cluster_size = 0;
    std::string backing_file;
    std::string backing_format;
    bool dirty = false;
    nlohmann::ordered_json format_specific; // qemu-img's "format-specific"."data" object
};
Result<Qcow2Info> qcow2_info(const std::string& path);

enum class RepairMode { none, leaks, all };
struct CheckReport {
    std::uint64_t corruptions = 0, leaks = 0, corruptions_fixed = 0, leaks_fixed = 0;
    std::uint64_t check_errors = 0;
    std::uint64_t image_end_offset = 0;
    std::uint64_t total_clusters = 0, allocated_clusters = 0, fragmented_clusters = 0,
                  compressed_clusters = 0;
    std::vector<std::string> messages;
};
Result<CheckReport> qcow2_check(const std::string& path, RepairMode mode);

// Grows the virtual size in place (header, and the L1 table inside its clusters).
Status qcow2_grow(const std::string& path, std::uint64_t new_size);

} // namespace fleece::cli::img
