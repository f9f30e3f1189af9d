#pragma once
// Sizes as qemu-img spells them: "1G", "512k", "1.5M", "4096", "0x1000"; and the human
// form qemu-img prints ("1 GiB", "196 KiB", "1.5 MiB").

#include "util/result.hpp"

#include <cstdint>
#include <string>
#include <string_view>

namespace fleece::cli::img {

// A non-negative size: decimal (a fraction allowed when a unit suffix follows) or hex
// integer, with an optional suffix B, k/K, M, G, T, P, E (powers of 1024).
Result<std::uint64_t> parse_size(std::string_view text);

// A resize argument: "+SIZE" / "-SIZE" are relative to `current`, "SIZE" is absolute.
Result<std::uint64_t> parse_resize(std::string_view text, std::uint64_t current);

// The text qemu-img prints after a bad size.
inline constexpr const char* size_help =
    "Invalid image size specified. You may use k, M, G, T, P or E suffixes for "
    "kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.";

// Three significant digits in the largest binary unit that keeps the number below 1000.
std::string human_size(std::uint64_t bytes);

} // namespace fleece::cli::img
