#pragma once
// `fleece restore`: turns a backup chain (a full backup and its incrementals) into one
// image of the disk at the chain's newest point. See docs/user-guide.md.

#include <CLI/CLI.hpp>
#include <functional>

namespace fleece::cli {

// Adds the `restore` subcommand to `app`; parsing sets `*action`.
void add_restore_command(CLI::App& app, std::function<int()>* action);

} // namespace fleece::cli
