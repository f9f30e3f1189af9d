// img info [-f FMT] [--output=human|json] [--backing-chain] FILE

#include "cli/img/common.hpp"
#include "cli/img/create_image.hpp"
#include "cli/img/image.hpp"
#include "cli/img/qcow2_support.hpp"
#include "cli/img/size.hpp"

#include <iostream>
#include <memory>
#include <set>
#include <sys/stat.h>

namespace fleece::cli::img {
namespace {

using ordered_json = nlohmann::ordered_json;

struct InfoArgs {
    std::string format;
    std::string output = "human";
    bool backing_chain = false;
    std::string filename;
};

struct Described {
    ordered_json info;
    std::string next; // full path of the backing file, "" at the end of the chain
    std::string next_format;
};

// What qemu-img info shows for one image. The image is opened through the block layer
// (which validates it) without its backing chain; qcow2 header details come from the
// qcow2 tool API.
io::Task<Result<Described>> describe(Session* s, std::string name, std::string format) {
    OpenRequest req{name, format, false};
    auto loc = parse_location(name);
    if (format.empty() && loc && !loc->nbd) {
        // Probe first so that qcow2 can be opened without its backing chain.
        auto probed = co_await probe_image_format(s, name);
        if (!probed) co_return probed.error();
        req.format = *probed;
    }
    if (req.format == "qcow2") req.format_options["backing"] = nullptr;
    auto img = co_await open_image(s, req);
    if (!img) co_return img.error();
    const std::string fmt = (*img)->format();
    const bool nbd = (*img)->nbd();

    Described d;
    ordered_json& j = d.info;
    Qcow2Info q;
    if (fmt == "qcow2") {
        auto qi = qcow2_info(name);
        if (!qi) co_return make_error("Could not open '" + name + "': " + qi.error().message);
        q = *qi;
        if (!q.backing_format.empty()) j["backing-filename-format"] = q.backing_format;
    }
    j["virtual-size"] = (*img)->size();
    j["filename"] = name;
    if (fmt == "qcow2") j["cluster-size"] = q.cluster_size;
    j["format"] = fmt;
    struct stat st {};
    if (!nbd && ::stat(name.c_str(), &st) == 0)
        j["actual-size"] = static_cast<std::uint64_t>(st.st_blocks) * 512;
    if (fmt == "qcow2") {
        j["format-specific"] = ordered_json{{"type", "qcow2"}, {"data", q.format_specific}};
        if (!q.backing_file.empty()) {
            d.next = backing_path(name, q.backing_file);
            d.next_format = q.backing_format;
            j["full-backing-filename"] = d.next;
            j["backing-filename"] = q.backing_file;
        }
    }
    if (!nbd) j["dirty-flag"] = q.dirty;
    co_return d;
}

void print_specific(const ordered_json& data, int indent) {
    for (const auto& [key, value] : data.items()) {
        std::string label = key;
        for (char& c : label)
            if (c == '-') c = ' ';
        std::cout << std::string(static_cast<std::size_t>(indent), ' ') << label << ":";
        if (value.is_array()) {
            std::cout << "\n";
            std::size_t index = 0;
            for (const auto& item : value) {
                std::cout << std::string(static_cast<std::size_t>(indent + 4), ' ') << "["
                          << index++ << "]:";
                if (item.is_object()) {
                    std::cout << "\n";
                    print_specific(item, indent + 8);
                } else {
                    std::cout << " " << (item.is_string() ? item.get<std::string>() : item.dump())
                              << "\n";
                }
            }
        } else if (value.is_string()) {
            std::cout << " " << value.get<std::string>() << "\n";
        } else {
            std::cout << " " << value.dump() << "\n";
        }
    }
}

void print_human(const ordered_json& j) {
    std::cout << "image: " << j["filename"].get<std::string>() << "\n";
    std::cout << "file format: " << j["format"].get<std::string>() << "\n";
    const auto size = j["virtual-size"].get<std::uint64_t>();
    std::cout << "virtual size: " << human_size(size) << " (" << size << " bytes)\n";
    std::cout << "disk size: "
              << (j.contains("actual-size") ? human_size(j["actual-size"].get<std::uint64_t>())
                                            : std::string("unavailable"))
              << "\n";
    if (j.contains("cluster-size"))
        std::cout << "cluster_size: " << j["cluster-size"].get<std::uint64_t>() << "\n";
    if (j.contains("backing-filename")) {
        const auto b = j["backing-filename"].get<std::string>();
        const auto full = j["full-backing-filename"].get<std::string>();
        std::cout << "backing file: " << b;
        if (full != b) std::cout << " (actual path: " << full << ")";
        std::cout << "\n";
        if (j.contains("backing-filename-format"))
            std::cout << "backing file format: " << j["backing-filename-format"].get<std::string>()
                      << "\n";
    }
    if (j.value("dirty-flag", false)) std::cout << "cleanly shut down: no\n";
    if (j.contains("format-specific")) {
        std::cout << "Format specific information:\n";
        print_specific(j["format-specific"]["data"], 4);
    }
}

io::Task<int> run_info(InfoArgs a, Session* s) {
    ordered_json list = ordered_json::array();
    std::string name = a.filename, format = a.format;
    std::set<std::string> seen;
    while (!name.empty()) {
        if (!seen.insert(name).second)
            co_return fail("Backing file '" + name + "' creates an infinite loop.");
        auto d = co_await describe(s, name, format);
        if (!d) co_return fail(d.error().message);
        list.push_back(d->info);
        if (!a.backing_chain) break;
        name = d->next;
        format = d->next_format;
    }
    if (a.output == "json") {
        std::cout << (a.backing_chain ? list : list[0]).dump(4) << "\n";
    } else {
        for (std::size_t i = 0; i < list.size(); ++i) {
            if (i) std::cout << "\n";
            print_human(list[i]);
        }
    }
    co_return 0;
}

} // namespace

void add_info(CLI::App& img, Action* action) {
    auto a = std::make_shared<InfoArgs>();
    CLI::App* cmd = img.add_subcommand("info", "Show an image's format, size and settings");
    cmd->add_option("-f", a->format, "Image format (default: probe)");
    add_output_option(*cmd, &a->output);
    cmd->add_flag("--backing-chain", a->backing_chain, "Show every image of the backing chain");
    cmd->add_option("filename", a->filename, "Image (path or NBD URI)")->required();
    cmd->callback([a, action] {
        *action = [a] {
            Session s;
            return run_and_close(s, run_info(*a, &s));
        };
    });
}

} // namespace fleece::cli::img
