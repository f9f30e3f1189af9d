#pragma once
// `fleece backup`: a push backup with fleecing of a node of a running fleeced, in one
// command. See docs/user-guide.md.

#include <CLI/CLI.hpp>
#include <cstdint>
#include <memory>
#include <string>

namespace fleece::cli {

struct BackupOptions {
    std::string qmp_socket, node, target, target_format, tls_creds;
    std::string fleecing_path, fleecing_format = "raw";
    std::string sync = "full", bitmap;
    std::uint64_t speed = 0;
    std::string on_cbw_error = "break-snapshot";
    std::uint64_t cbw_timeout_s = 45;
    bool json = false;
};

class BackupCommand {
  public:
    explicit BackupCommand(CLI::App& app);
    bool selected() const { return sub_->parsed(); }
    int run();

  private:
    CLI::App* sub_;
    BackupOptions opts_;
};

// Registers the subcommand; main() calls run() on it when it was chosen.
std::unique_ptr<BackupCommand> add_backup_subcommand(CLI::App& app);

// The body, separate from option parsing (exit status: 0 only for a complete backup).
int run_backup(const BackupOptions& opts);

} // namespace fleece::cli
