#pragma once
// Splits a byte stream into JSON texts without parsing them. A client may send several
// objects on one line or one object over many reads, so the splitter tracks nesting (aware
// of strings and escapes) and hands out each complete top-level value. Memory is bounded:
// a value longer than the limit is reported once and the rest of it, up to the next
// newline, is dropped as it arrives instead of being buffered.
// A value that cannot be JSON (a raw newline inside a string, a character no JSON token
// has) ends at the next newline, so one bad line does not swallow the requests after it.

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace fleece::control {

struct StreamItem {
    enum class Kind { message, too_large };
    Kind kind = Kind::message;
    std::string text; // the raw JSON text for `message`
};

// QEMU's JSON parser also accepts 'single-quoted' strings (in which a double quote needs
// no escape) and the escape \' in any string. Rewrites such a text into standard JSON;
// anything else is returned unchanged, so the parser still reports what is broken.
std::string qemu_json_to_standard(std::string_view text);

class JsonStreamSplitter {
  public:
    static constexpr std::size_t default_limit = 1024 * 1024;
    explicit JsonStreamSplitter(std::size_t limit = default_limit) : limit_(limit) {}

    // Consumes `bytes` and appends every completed item to `out`.
    void feed(std::string_view bytes, std::vector<StreamItem>& out);
    // Bytes of the value currently being collected.
    std::size_t pending() const { return buf_.size(); }

  private:
    void finish(std::vector<StreamItem>& out);
    void reset();

    std::size_t limit_;
    std::string buf_;
    int depth_ = 0;
    bool in_string_ = false;
    char quote_ = '"'; // the quote that opened the current string
    bool escape_ = false;
    bool invalid_ = false;   // the current value can no longer be valid JSON
    bool in_scalar_ = false; // a bare top-level token (garbage or scalar), ends at whitespace
    bool discarding_ = false;
};

} // namespace fleece::control
