#pragma once
// `img convert` as a function, for commands that copy an image's content (fleece restore).

#include <string>

namespace fleece::cli::img {

struct ConvertRequest {
    std::string source, source_format; // "" = probe
    std::string target, target_format = "raw";
    bool progress = false;
};

// Creates `target` and copies `source` (with its backing chain) into it, like
// `fleece img convert [-p] -O FMT SOURCE TARGET`. Errors go to stderr; returns the exit code.
int convert_image(const ConvertRequest& request);

} // namespace fleece::cli::img
