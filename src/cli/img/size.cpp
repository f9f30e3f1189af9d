#include "cli/img/size.hpp"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <fmt/format.h>

namespace fleece::cli::img {
namespace {

int suffix_shift(char c) {
    switch (std::toupper(static_cast<unsigned char>(c))) {
    case 'B':
        return 0;
    case 'K':
        return 10;
    case 'M':
        return 20;
    case 'G':
        return 30;
    case 'T':
        return 40;
    case 'P':
        return 50;
    case 'E':
        return 60;
    default:
        return -1;
    }
}

Error bad_size(std::string_view text) {
    return make_error(fmt::format("Invalid size '{}': {}", text, size_help));
}

} // namespace

Result<std::uint64_t> parse_size(std::string_view text) {
    if (text.empty()) return bad_size(text);
    if (text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
        std::uint64_t v = 0;
        for (char c : text.substr(2)) {
            if (!std::isxdigit(static_cast<unsigned char>(c))) return bad_size(text);
            if (v >> 60) return bad_size(text);
            const int d = std::isdigit(static_cast<unsigned char>(c))
                              ? c - '0'
                              : std::tolower(static_cast<unsigned char>(c)) - 'a' + 10;
            v = v * 16 + static_cast<std::uint64_t>(d);
        }
        if (v > static_cast<std::uint64_t>(INT64_MAX)) return bad_size(text);
        return v;
    }
    std::size_t i = 0;
    std::uint64_t whole = 0;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
        const std::uint64_t d = static_cast<std::uint64_t>(text[i] - '0');
        if (whole > (UINT64_MAX - d) / 10) return bad_size(text);
        whole = whole * 10 + d;
        ++i;
    }
    if (i == 0) return bad_size(text); // no digits (also rejects a sign)
    double fraction = 0;
    bool has_fraction = false;
    if (i < text.size() && text[i] == '.') {
        ++i;
        double scale = 0.1;
        const std::size_t start = i;
        while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
            fraction += (text[i] - '0') * scale;
            scale /= 10;
            ++i;
        }
        if (i == start) return bad_size(text);
        has_fraction = fraction > 0;
    }
    int shift = 0;
    if (i < text.size()) {
        shift = suffix_shift(text[i]);
        if (shift < 0 || i + 1 != text.size()) return bad_size(text);
    }
    // A fraction of a byte means nothing.
    if (has_fraction && shift == 0) return bad_size(text);
    if (shift > 0 && (whole >> (64 - shift)) != 0) return bad_size(text);
    std::uint64_t value = whole << shift;
    if (has_fraction) {
        const double extra = fraction * std::ldexp(1.0, shift);
        const auto add = static_cast<std::uint64_t>(extra);
        if (value > UINT64_MAX - add) return bad_size(text);
        value += add;
    }
    // qemu-img refuses sizes that do not fit an int64 (offsets are signed there).
    if (value > static_cast<std::uint64_t>(INT64_MAX)) return bad_size(text);
    return value;
}

Result<std::uint64_t> parse_resize(std::string_view text, std::uint64_t current) {
    if (!text.empty() && (text[0] == '+' || text[0] == '-')) {
        auto delta = parse_size(text.substr(1));
        if (!delta) return delta.error();
        if (text[0] == '+') {
            if (*delta > static_cast<std::uint64_t>(INT64_MAX) - current)
                return make_error("Image size would overflow");
            return current + *delta;
        }
        if (*delta > current) return make_error("New image size must be positive.");
        return current - *delta;
    }
    return parse_size(text);
}

std::string human_size(std::uint64_t bytes) {
    static const char* const units[] = {"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"};
    int unit = 0;
    // Switch to the next unit as soon as the number would need four digits.
    while (unit < 6 && static_cast<double>(bytes) >= 1000.0 * std::ldexp(1.0, 10 * unit))
        ++unit;
    const double v = static_cast<double>(bytes) / std::ldexp(1.0, 10 * unit);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%0.3g %sB", v, units[unit]);
    return buf;
}

} // namespace fleece::cli::img
