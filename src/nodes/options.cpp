#include "nodes/options.hpp"

#include <charconv>
#include <fmt/format.h>

namespace fleece::nodes {

namespace {
const nlohmann::json& empty_object() {
    static const nlohmann::json empty = nlohmann::json::object();
    return empty;
}
} // namespace

OptionReader::OptionReader(const nlohmann::json& options, std::string prefix)
    : options_(options.is_object() ? options : empty_object()), prefix_(std::move(prefix)) {
    if (!options.is_object() && !options.is_null())
        fail(fmt::format("Invalid parameter type for '{}', expected: object",
                         prefix_.empty() ? "options" : prefix_.substr(0, prefix_.size() - 1)));
}

void OptionReader::fail(std::string message) {
    if (!error_) error_ = Error{"GenericError", std::move(message)};
}

const nlohmann::json* OptionReader::raw(const std::string& key) {
    known_.insert(key);
    auto it = options_.find(key);
    return it == options_.end() ? nullptr : &*it;
}

std::optional<std::string> OptionReader::string(const std::string& key) {
    const nlohmann::json* v = raw(key);
    if (!v) return std::nullopt;
    if (!v->is_string()) {
        fail(fmt::format("Invalid parameter type for '{}', expected: string", full(key)));
        return std::nullopt;
    }
    return v->get<std::string>();
}

std::optional<bool> OptionReader::boolean(const std::string& key) {
    const nlohmann::json* v = raw(key);
    if (!v) return std::nullopt;
    if (v->is_boolean()) return v->get<bool>();
    if (v->is_string()) {
        const auto s = v->get<std::string>();
        if (s == "on" || s == "true" || s == "yes") return true;
        if (s == "off" || s == "false" || s == "no") return false;
    }
    fail(fmt::format("Invalid parameter type for '{}', expected: boolean", full(key)));
    return std::nullopt;
}

std::optional<std::int64_t> OptionReader::integer(const std::string& key) {
    const nlohmann::json* v = raw(key);
    if (!v) return std::nullopt;
    if (v->is_number_integer()) return v->get<std::int64_t>();
    if (v->is_string()) {
        const auto s = v->get<std::string>();
        std::int64_t out = 0;
        auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
        if (ec == std::errc() && p == s.data() + s.size()) return out;
    }
    fail(fmt::format("Invalid parameter type for '{}', expected: integer", full(key)));
    return std::nullopt;
}

std::optional<std::uint64_t> OptionReader::uint(const std::string& key) {
    auto v = integer(key);
    if (!v) return std::nullopt;
    if (*v < 0) {
        fail(fmt::format("Parameter '{}' expects a non-negative integer", full(key)));
        return std::nullopt;
    }
    return static_cast<std::uint64_t>(*v);
}

std::optional<std::string> OptionReader::choice(const std::string& key,
                                                const std::vector<std::string>& choices) {
    auto v = string(key);
    if (!v) return std::nullopt;
    for (const auto& c : choices)
        if (c == *v) return v;
    fail(fmt::format("Parameter '{}' does not accept value '{}'", full(key), *v));
    return std::nullopt;
}

OptionReader OptionReader::object(const std::string& key) {
    // The reader keeps a reference to its options: both arms must be lvalues that outlive
    // it (a `json(nullptr)` arm made the whole conditional a temporary copy, left dangling).
    static const nlohmann::json absent;
    const nlohmann::json* v = raw(key);
    return OptionReader(v ? *v : absent, full(key) + ".");
}

std::string OptionReader::required_string(const std::string& key) {
    if (!options_.contains(key)) {
        known_.insert(key);
        fail(fmt::format("Parameter '{}' is missing", full(key)));
        return {};
    }
    return string(key).value_or("");
}

const nlohmann::json* OptionReader::required_raw(const std::string& key) {
    const nlohmann::json* v = raw(key);
    if (!v) fail(fmt::format("Parameter '{}' is missing", full(key)));
    return v;
}

Status OptionReader::finish() {
    if (error_) return *error_;
    for (auto it = options_.begin(); it != options_.end(); ++it)
        if (!known_.count(it.key()))
            return make_error(fmt::format("Parameter '{}' is unexpected", full(it.key())));
    return {};
}

} // namespace fleece::nodes
