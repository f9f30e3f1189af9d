#include "cli/img/create_options.hpp"

#include "cli/img/size.hpp"

#include <fmt/format.h>

namespace fleece::cli::img {

Result<std::vector<std::pair<std::string, std::string>>> split_options(const std::string& text) {
    std::vector<std::pair<std::string, std::string>> out;
    std::string item;
    std::vector<std::string> items;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == ',') {
            if (i + 1 < text.size() && text[i + 1] == ',') {
                item += ',';
                ++i;
                continue;
            }
            items.push_back(item);
            item.clear();
            continue;
        }
        item += text[i];
    }
    items.push_back(item);
    for (const std::string& it : items) {
        if (it.empty()) continue;
        const std::size_t eq = it.find('=');
        if (eq == std::string::npos || eq == 0)
            return make_error(fmt::format("Invalid option '{}': expected key=value", it));
        out.emplace_back(it.substr(0, eq), it.substr(eq + 1));
    }
    return out;
}

namespace {

bool is_power_of_two(std::uint64_t v) {
    return v != 0 && (v & (v - 1)) == 0;
}

Status apply_one(CreateSettings& s, const std::string& key, const std::string& value) {
    const bool qcow2 = s.format == "qcow2";
    if (key == "size") {
        auto v = parse_size(value);
        if (!v) return v.error();
        s.size = *v;
        return {};
    }
    if (key == "preallocation") {
        const bool ok = qcow2 ? (value == "off" || value == "metadata")
                              : (value == "off" || value == "falloc" || value == "full");
        if (!ok)
            return make_error(fmt::format("Parameter 'preallocation' does not accept value '{}' "
                                          "for format '{}'",
                                          value, s.format));
        s.preallocation = value;
        return {};
    }
    if (qcow2 && key == "cluster_size") {
        auto v = parse_size(value);
        if (!v) return v.error();
        if (!is_power_of_two(*v) || *v < 512 || *v > (2u << 20))
            return make_error("Cluster size must be a power of two between 512 and 2048k");
        s.cluster_size = *v;
        return {};
    }
    if (qcow2 && key == "backing_file") {
        s.backing_file = value;
        return {};
    }
    if (qcow2 && key == "backing_fmt") {
        s.backing_format = value;
        return {};
    }
    // Settings we only support at their default value: accepted when they ask for it.
    if (qcow2 &&
        ((key == "compat" && (value == "1.1" || value == "v3")) ||
         (key == "refcount_bits" && value == "16") || (key == "lazy_refcounts" && value == "off") ||
         (key == "extended_l2" && value == "off") ||
         (key == "compression_type" && value == "zlib")))
        return {};
    return make_error(fmt::format("Invalid parameter '{}' (or value '{}') for format '{}'", key,
                                  value, s.format));
}

} // namespace

Status apply_create_options(CreateSettings& s, const std::vector<std::string>& option_strings) {
    for (const std::string& text : option_strings) {
        auto pairs = split_options(text);
        if (!pairs) return pairs.error();
        for (const auto& [k, v] : *pairs)
            if (Status st = apply_one(s, k, v); !st) return st;
    }
    return {};
}

std::string formatting_line(const std::string& filename, const CreateSettings& s) {
    const std::uint64_t size = s.size.value_or(0);
    if (s.format == "raw") {
        std::string line = fmt::format("Formatting '{}', fmt=raw size={}", filename, size);
        if (s.preallocation != "off") line += " preallocation=" + s.preallocation;
        return line;
    }
    std::string line = fmt::format("Formatting '{}', fmt=qcow2 cluster_size={} extended_l2=off",
                                   filename, s.cluster_size);
    if (s.preallocation != "off") line += " preallocation=" + s.preallocation;
    line += fmt::format(" compression_type=zlib size={}", size);
    if (!s.backing_file.empty()) line += " backing_file=" + s.backing_file;
    if (!s.backing_format.empty()) line += " backing_fmt=" + s.backing_format;
    line += " lazy_refcounts=off refcount_bits=16";
    return line;
}

} // namespace fleece::cli::img
