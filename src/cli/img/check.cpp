// img check [-f FMT] [-r leaks|all] [--output=human|json] FILE
// Exit codes as qemu-img: 0 clean, 1 check not completed, 2 corruptions, 3 leaks only,
// 63 format without checks (raw).

#include "cli/img/common.hpp"
#include "cli/img/image.hpp"
#include "cli/img/qcow2_support.hpp"

#include <cstdio>
#include <iostream>
#include <memory>

namespace fleece::cli::img {
namespace {

using ordered_json = nlohmann::ordered_json;

struct CheckArgs {
    std::string format;
    std::string repair;
    std::string output = "human";
    std::string filename;
};

io::Task<Result<std::string>> find_format(Session* s, std::string name, std::string format) {
    if (!format.empty()) {
        if (!known_format(format))
            co_return make_error("Could not open '" + name + "': Unknown driver '" + format + "'");
        co_return format;
    }
    co_return co_await probe_image_format(s, name);
}

void print_human(const CheckReport& r) {
    if (r.corruptions_fixed || r.leaks_fixed) {
        std::cout << "The following inconsistencies were found and repaired:\n\n"
                  << "    " << r.leaks_fixed << " leaked clusters\n"
                  << "    " << r.corruptions_fixed << " corruptions\n\n"
                  << "Double checking the fixed image now...\n";
    }
    if (!r.corruptions && !r.leaks && !r.check_errors)
        std::cout << "No errors were found on the image.\n";
    if (r.corruptions)
        std::cout << "\n"
                  << r.corruptions << " errors were found on the image.\n"
                  << "Data may be corrupted, or further writes to the image may corrupt it.\n";
    if (r.leaks)
        std::cout << "\n"
                  << r.leaks << " leaked clusters were found on the image.\n"
                  << "This means waste of disk space, but no harm to data.\n";
    if (r.check_errors)
        std::cout << "\n" << r.check_errors << " internal errors have occurred during the check.\n";
    if (r.total_clusters && r.allocated_clusters) {
        const auto pct = [&](std::uint64_t part, std::uint64_t whole) {
            return whole ? 100.0 * static_cast<double>(part) / static_cast<double>(whole) : 0.0;
        };
        char line[256];
        std::snprintf(line, sizeof line,
                      "%llu/%llu = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed "
                      "clusters",
                      static_cast<unsigned long long>(r.allocated_clusters),
                      static_cast<unsigned long long>(r.total_clusters),
                      pct(r.allocated_clusters, r.total_clusters),
                      pct(r.fragmented_clusters, r.allocated_clusters),
                      pct(r.compressed_clusters, r.allocated_clusters));
        std::cout << line << "\n";
    }
    if (r.image_end_offset) std::cout << "Image end offset: " << r.image_end_offset << "\n";
}

ordered_json to_json(const CheckReport& r, const std::string& filename) {
    ordered_json j;
    if (r.image_end_offset) j["image-end-offset"] = r.image_end_offset;
    j["total-clusters"] = r.total_clusters;
    if (r.corruptions) j["corruptions"] = r.corruptions;
    if (r.leaks) j["leaks"] = r.leaks;
    j["check-errors"] = r.check_errors;
    if (r.corruptions_fixed) j["corruptions-fixed"] = r.corruptions_fixed;
    if (r.leaks_fixed) j["leaks-fixed"] = r.leaks_fixed;
    j["allocated-clusters"] = r.allocated_clusters;
    if (r.fragmented_clusters) j["fragmented-clusters"] = r.fragmented_clusters;
    if (r.compressed_clusters) j["compressed-clusters"] = r.compressed_clusters;
    j["filename"] = filename;
    j["format"] = "qcow2";
    return j;
}

int run_check(const CheckArgs& a) {
    RepairMode mode = RepairMode::none;
    if (a.repair == "leaks") mode = RepairMode::leaks;
    if (a.repair == "all") mode = RepairMode::all;
    std::string format;
    {
        Session s;
        auto f = run_and_close(s, find_format(&s, a.filename, a.format));
        if (!f) return fail(f.error().message);
        format = *f;
    }
    if (format != "qcow2") return fail("This image format does not support checks", 63);
    auto loc = parse_location(a.filename);
    if (!loc || loc->nbd) return fail("Checking an image over NBD is not supported", 1);
    auto r = qcow2_check(a.filename, mode);
    if (!r) return fail("Could not check '" + a.filename + "': " + r.error().message, 1);
    if (r->leaks_fixed || r->corruptions_fixed) {
        // Like qemu-img, what is reported after a repair is a fresh check of the result.
        auto again = qcow2_check(a.filename, RepairMode::none);
        if (!again)
            return fail("Could not check '" + a.filename + "': " + again.error().message, 1);
        again->leaks_fixed = r->leaks_fixed;
        again->corruptions_fixed = r->corruptions_fixed;
        again->messages.insert(again->messages.begin(), r->messages.begin(), r->messages.end());
        r = std::move(again);
    }
    for (const std::string& m : r->messages)
        std::cerr << m << "\n";
    std::cerr.flush();
    if (a.output == "json")
        std::cout << to_json(*r, a.filename).dump(4) << "\n";
    else
        print_human(*r);
    if (r->check_errors) return 1;
    if (r->corruptions) return 2;
    if (r->leaks) return 3;
    return 0;
}

} // namespace

void add_check(CLI::App& img, Action* action) {
    auto a = std::make_shared<CheckArgs>();
    CLI::App* cmd = img.add_subcommand("check", "Check (and repair) an image's metadata");
    cmd->add_option("-f", a->format, "Image format (default: probe)");
    cmd->add_option("-r", a->repair, "Repair: leaks or all")
        ->check(CLI::IsMember({"leaks", "all"}));
    add_output_option(*cmd, &a->output);
    cmd->add_option("filename", a->filename, "Image")->required();
    cmd->callback([a, action] { *action = [a] { return run_check(*a); }; });
}

} // namespace fleece::cli::img
