#pragma once
// Option strings in the two forms qemu-storage-daemon accepts: a JSON object
// ('{"driver": "file", ...}') or dotted key=value ('driver=file,cache.direct=on').
// key=value values stay strings, as in QEMU's keyval: the command schema decides later
// whether "4096" is a number or "on" a boolean.

#include "util/result.hpp"

#include <nlohmann/json.hpp>
#include <string_view>

namespace fleece::control {

// 'a.b=1,a.c=x,,y' -> {"a": {"b": "1", "c": "x,y"}}. Keys whose members are all 0..n-1
// become arrays. `implied_key`, when set, names the value of a leading element without '='
// (e.g. "backend" for '--chardev socket,id=x').
Result<nlohmann::json> parse_keyval(std::string_view text, std::string_view implied_key = {});

// JSON form when the text starts with '{', key=value otherwise.
Result<nlohmann::json> parse_keyval_or_json(std::string_view text);

} // namespace fleece::control
