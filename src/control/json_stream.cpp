#include "control/json_stream.hpp"

namespace fleece::control {

namespace {
bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

// Characters that may appear outside strings inside a JSON value.
bool is_json_char(char c) {
    if (is_space(c) || (c >= '0' && c <= '9')) return true;
    switch (c) {
    case '{':
    case '}':
    case '[':
    case ']':
    case ',':
    case ':':
    case '"':
    case '\'':
    case '-':
    case '+':
    case '.':
    case 'e':
    case 'E':
    case 't':
    case 'r':
    case 'u':
    case 'f':
    case 'a':
    case 'l':
    case 's':
    case 'n':
        return true;
    default:
        return false;
    }
}
} // namespace

std::string qemu_json_to_standard(std::string_view text) {
    if (text.find('\'') == std::string_view::npos) return std::string(text);
    std::string out;
    out.reserve(text.size() + 8);
    char quote = 0; // inside a string opened by this quote
    for (std::size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if (!quote) {
            if (c == '"' || c == '\'') {
                quote = c;
                out.push_back('"');
            } else {
                out.push_back(c);
            }
        } else if (c == '\\' && i + 1 < text.size()) {
            const char next = text[++i];
            if (next == '\'') {
                out.push_back('\''); // \' is not a standard escape; the quote needs none
            } else {
                out.push_back('\\');
                out.push_back(next);
            }
        } else if (c == quote) {
            quote = 0;
            out.push_back('"');
        } else if (c == '"') {
            out += "\\\""; // a double quote inside a single-quoted string
        } else {
            out.push_back(c);
        }
    }
    return out;
}

void JsonStreamSplitter::reset() {
    buf_.clear();
    depth_ = 0;
    in_string_ = false;
    escape_ = false;
    invalid_ = false;
    in_scalar_ = false;
}

void JsonStreamSplitter::finish(std::vector<StreamItem>& out) {
    out.push_back(StreamItem{StreamItem::Kind::message, std::move(buf_)});
    reset();
}

void JsonStreamSplitter::feed(std::string_view bytes, std::vector<StreamItem>& out) {
    for (char c : bytes) {
        if (discarding_) {
            if (c == '\n') discarding_ = false;
            continue;
        }
        if (depth_ == 0 && !in_scalar_) {
            if (is_space(c)) continue; // whitespace between values
            buf_.push_back(c);
            if (c == '{' || c == '[')
                depth_ = 1;
            else if (c == '}' || c == ']')
                finish(out); // stray closer: let the parser report it
            else
                in_scalar_ = true;
            continue;
        }
        if (in_scalar_) {
            // A bare token has no nesting; it ends at whitespace or where a value begins.
            if (is_space(c) || c == '{' || c == '[') {
                finish(out);
                if (!is_space(c)) {
                    buf_.push_back(c);
                    depth_ = 1;
                }
                continue;
            }
            buf_.push_back(c);
        } else {
            if (c == '\n' && (in_string_ || invalid_)) {
                finish(out); // let the parser report the broken value
                continue;
            }
            buf_.push_back(c);
            if (in_string_) {
                if (escape_)
                    escape_ = false;
                else if (c == '\\')
                    escape_ = true;
                else if (c == quote_)
                    in_string_ = false;
            } else if (!is_json_char(c)) {
                invalid_ = true;
            } else if (c == '"' || c == '\'') {
                in_string_ = true;
                quote_ = c;
            } else if (c == '{' || c == '[') {
                ++depth_;
            } else if (c == '}' || c == ']') {
                if (--depth_ == 0) {
                    finish(out);
                    continue;
                }
            }
        }
        if (buf_.size() > limit_) {
            out.push_back(StreamItem{StreamItem::Kind::too_large, {}});
            reset();
            discarding_ = (c != '\n');
        }
    }
}

} // namespace fleece::control
