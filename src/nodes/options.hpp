#pragma once
// OptionReader: typed access to a node's blockdev-add options, with QEMU's rules and
// wording. Options arrive either typed (QMP JSON) or as strings (the --blockdev key=value
// form), so booleans accept true/false and "on"/"off", and integers accept numbers and
// numeric strings. Every key must be consumed: finish() reports the first unexpected one.

#include "util/result.hpp"

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace fleece::nodes {

class OptionReader {
  public:
    explicit OptionReader(const nlohmann::json& options, std::string prefix = "");

    // Each getter marks the key as known. On a type error it records the first error.
    std::optional<std::string> string(const std::string& key);
    std::optional<bool> boolean(const std::string& key);
    std::optional<std::uint64_t> uint(const std::string& key);
    std::optional<std::int64_t> integer(const std::string& key);
    // One of `choices`, or an error naming them.
    std::optional<std::string> choice(const std::string& key,
                                      const std::vector<std::string>& choices);
    // A raw value (e.g. a BlockdevRef: node name or nested options).
    const nlohmann::json* raw(const std::string& key);
    // A nested object such as "cache": returns a reader for it (empty if absent).
    OptionReader object(const std::string& key);
    // Required string (records "Parameter 'X' is missing").
    std::string required_string(const std::string& key);
    const nlohmann::json* required_raw(const std::string& key);

    // Mark keys handled elsewhere (driver, node-name, ...).
    void ignore(const std::string& key) { known_.insert(key); }
    void fail(std::string message);
    // The first error, or an "unexpected parameter" error for keys nobody asked for.
    Status finish();

  private:
    std::string full(const std::string& key) const { return prefix_ + key; }
    const nlohmann::json& options_;
    std::string prefix_;
    std::set<std::string> known_;
    std::optional<Error> error_;
};

} // namespace fleece::nodes
