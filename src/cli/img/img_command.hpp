#pragma once
// `fleece img ...`: offline image work with qemu-img's options, output and exit codes.

#include "cli/img/common.hpp"

namespace fleece::cli::img {

// Adds the `img` subcommand family to `app`; parsing sets `*action`.
void add_img_commands(CLI::App& app, Action* action);

} // namespace fleece::cli::img
