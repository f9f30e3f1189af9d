#pragma once
// `-o key=value,...` option strings of `img create` and `img convert`, parsed into the
// settings of a new image (qemu-img's option names).

#include "util/result.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace fleece::cli::img {

struct CreateSettings {
    std::string format;                // raw | qcow2
    std::optional<std::uint64_t> size; // from the SIZE argument or -o size=
    std::string backing_file;          // qcow2 only
    std::string backing_format;
    std::uint64_t cluster_size = 65536;
    std::string preallocation = "off"; // raw: off|falloc|full; qcow2: off|metadata
};

// Splits "a=1,b=2" (",," stands for a literal comma, as in QEMU) into key/value pairs.
Result<std::vector<std::pair<std::string, std::string>>> split_options(const std::string& text);

// Applies every -o string to `s` (whose format is set), checking names and values.
Status apply_create_options(CreateSettings& s, const std::vector<std::string>& option_strings);

// The "Formatting 'F', fmt=..." line qemu-img prints.
std::string formatting_line(const std::string& filename, const CreateSettings& s);

} // namespace fleece::cli::img
