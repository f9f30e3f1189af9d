#pragma once
// Creating a new image file (img create, img convert without -n).

#include "cli/img/create_options.hpp"
#include "util/result.hpp"

#include <string>

namespace fleece::cli::img {

// Writes a new, empty image of s.size at `filename` (replacing any file there).
Status create_image(const std::string& filename, const CreateSettings& s);

// The path of a backing file as seen from the image that names it: relative names are
// relative to that image's directory.
std::string backing_path(const std::string& image, const std::string& backing);

} // namespace fleece::cli::img
