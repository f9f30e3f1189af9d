#pragma once
// `fleece backup`: a push backup with fleecing of a node of a running fleeced, in one
// command. See docs/user-guide.md.

#include <CLI/CLI.hpp>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace fleece::cli {

struct BackupOptions {
    std::string qmp_socket, node, target, target_format, tls_creds;
    std::string fleecing_path, fleecing_format = "raw";
    std::string sync = "full", bitmap, base;
    std::uint64_t speed = 0;
    std::string on_cbw_error = "break-snapshot";
    std::uint64_t cbw_timeout_s = 45;
    std::optional<std::uint64_t> copy_window; // unset: the filter's default (1 MiB)
    std::uint64_t target_reconnect_s = 120;
    bool json = false;
};

// Adds the `backup` subcommand to `app`; parsing sets `*action`.
void add_backup_command(CLI::App& app, std::function<int()>* action);

// The body, separate from option parsing (exit status: 0 only for a complete backup).
int run_backup(const BackupOptions& opts);

} // namespace fleece::cli
