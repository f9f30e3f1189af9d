#include "control/keyval.hpp"

#include <algorithm>
#include <cctype>
#include <string>
#include <vector>

namespace fleece::control {

using nlohmann::json;

namespace {

std::vector<std::string> split_dots(const std::string& key) {
    std::vector<std::string> parts;
    std::size_t start = 0;
    while (true) {
        const std::size_t dot = key.find('.', start);
        parts.push_back(key.substr(start, dot - start));
        if (dot == std::string::npos) break;
        start = dot + 1;
    }
    return parts;
}

bool valid_key_part(const std::string& part) {
    return !part.empty() && std::all_of(part.begin(), part.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
    });
}

Status insert(json& root, const std::string& key, std::string value) {
    const std::vector<std::string> parts = split_dots(key);
    json* node = &root;
    std::string prefix;
    for (std::size_t i = 0; i < parts.size(); ++i) {
        if (!valid_key_part(parts[i])) return make_error("Invalid parameter '" + key + "'");
        prefix += (i ? "." : "") + parts[i];
        const bool last = i + 1 == parts.size();
        auto it = node->find(parts[i]);
        if (last) {
            if (it != node->end() && it->is_object())
                return make_error("Parameters '" + prefix + ".*' used inconsistently");
            (*node)[parts[i]] = std::move(value); // a repeated key overrides, as in QEMU
            return {};
        }
        if (it == node->end())
            it = node->emplace(parts[i], json::object()).first;
        else if (!it->is_object())
            return make_error("Parameters '" + prefix + ".*' used inconsistently");
        node = &*it;
    }
    return {};
}

// Objects whose keys are exactly 0..n-1 are lists ('server.0.host=...').
void convert_lists(json& node) {
    if (!node.is_object()) return;
    for (auto& [k, v] : node.items())
        convert_lists(v);
    if (node.empty()) return;
    for (std::size_t i = 0; i < node.size(); ++i)
        if (!node.contains(std::to_string(i))) return;
    json list = json::array();
    for (std::size_t i = 0; i < node.size(); ++i)
        list.push_back(std::move(node[std::to_string(i)]));
    node = std::move(list);
}

} // namespace

Result<json> parse_keyval(std::string_view text, std::string_view implied_key) {
    json root = json::object();
    std::size_t pos = 0;
    bool first = true;
    while (pos < text.size()) {
        // Key up to '=' or ','.
        std::size_t key_end = pos;
        while (key_end < text.size() && text[key_end] != '=' && text[key_end] != ',')
            ++key_end;
        std::string key(text.substr(pos, key_end - pos));
        std::string value;
        const bool has_value = key_end < text.size() && text[key_end] == '=';
        if (!has_value) {
            if (!(first && !implied_key.empty()))
                return make_error("Expected '=' after parameter '" + key + "'");
            value = std::move(key);
            key = std::string(implied_key);
            pos = key_end;
        } else {
            // Value up to a single ','; ',,' is an escaped comma.
            pos = key_end + 1;
            while (pos < text.size()) {
                if (text[pos] == ',') {
                    if (pos + 1 < text.size() && text[pos + 1] == ',') {
                        value.push_back(',');
                        pos += 2;
                        continue;
                    }
                    break;
                }
                value.push_back(text[pos++]);
            }
        }
        if (Status st = insert(root, key, std::move(value)); !st) return st.error();
        if (pos < text.size()) ++pos; // the separating ','
        first = false;
    }
    convert_lists(root);
    return root;
}

Result<json> parse_keyval_or_json(std::string_view text) {
    const std::size_t start = text.find_first_not_of(" \t\r\n");
    if (start != std::string_view::npos && text[start] == '{') {
        json j = json::parse(text, nullptr, false);
        if (j.is_discarded() || !j.is_object())
            return make_error("JSON parse error in option '" + std::string(text) + "'");
        return j;
    }
    return parse_keyval(text);
}

} // namespace fleece::control
