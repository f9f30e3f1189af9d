#pragma once
// Small helpers shared by the `fleece img` subcommands.

#include <CLI/CLI.hpp>
#include <functional>
#include <string>

namespace fleece::cli::img {

// The chosen subcommand's body; returns the process exit code.
using Action = std::function<int()>;

// Prints "fleece img: MESSAGE" to stderr and returns `code`.
int fail(const std::string& message, int code = 1);

// Subcommands, one file each.
void add_create(CLI::App& img, Action* action);
void add_info(CLI::App& img, Action* action);
void add_check(CLI::App& img, Action* action);
void add_map(CLI::App& img, Action* action);
void add_compare(CLI::App& img, Action* action);
void add_convert(CLI::App& img, Action* action);
void add_resize(CLI::App& img, Action* action);
void add_bitmap(CLI::App& img, Action* action);

// `--output=human|json` (qemu-img's spelling).
inline CLI::Option* add_output_option(CLI::App& cmd, std::string* output) {
    return cmd.add_option("--output", *output, "Output format: human or json")
        ->check(CLI::IsMember({"human", "json"}))
        ->default_val("human");
}

} // namespace fleece::cli::img
