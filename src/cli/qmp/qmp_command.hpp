#pragma once
// `fleece qmp`: send raw QMP commands to a running fleeced.

#include <CLI/CLI.hpp>
#include <functional>

namespace fleece::cli {

// Adds the `qmp` subcommand to `app`; parsing sets `*action`.
void add_qmp_command(CLI::App& app, std::function<int()>* action);

} // namespace fleece::cli
