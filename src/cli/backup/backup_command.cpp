#include "cli/backup/backup_command.hpp"

namespace fleece::cli {

BackupCommand::BackupCommand(CLI::App& app) {
    sub_ = app.add_subcommand(
        "backup",
        "Push backup with fleecing of a node of a running fleeced.\n"
        "Inserts a copy-before-write filter live under every user of NODE (the snapshot\n"
        "point), keeps old data in a fleecing image on fast local storage, pushes the\n"
        "point-in-time view to TARGET, then restores the graph and deletes what it added.\n"
        "Exit status 0 only when the target holds the complete point-in-time copy.");
    BackupOptions& o = opts_;
    sub_->add_option("--qmp", o.qmp_socket, "QMP unix socket of fleeced")->required();
    sub_->add_option("--node", o.node, "Node to back up (node-name)")->required();
    sub_->add_option("--target", o.target,
                     "nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, nbds://... "
                     "(needs --tls-creds), or a local file to create (raw, or qcow2 by "
                     ".qcow2 extension / --target-format)")
        ->required();
    sub_->add_option("--target-format", o.target_format, "Format of a local target: raw|qcow2");
    sub_->add_option("--tls-creds", o.tls_creds,
                     "Id of a tls-creds object in fleeced, for nbds:// targets");
    sub_->add_option("--fleecing", o.fleecing_path,
                     "Directory (or exact file) for the fleecing image; default: next to the "
                     "disk's file, else $TMPDIR or /var/tmp");
    sub_->add_option("--fleecing-format", o.fleecing_format, "raw|qcow2 (default raw, sparse)");
    sub_->add_option("--sync", o.sync, "full|incremental (incremental needs --bitmap)");
    sub_->add_option("--bitmap", o.bitmap, "Dirty bitmap for --sync incremental");
    sub_->add_option("--speed", o.speed, "Rate limit of the backup job in bytes/s (0 = none)");
    sub_->add_option("--on-cbw-error", o.on_cbw_error,
                     "break-snapshot (default: a failed copy fails the backup, never the "
                     "guest) or break-guest-write (fail the guest's write instead)");
    sub_->add_option("--cbw-timeout", o.cbw_timeout_s,
                     "Seconds a guest write may wait for its copy-before-write (default 45, 0 = "
                     "no limit)");
    sub_->add_flag("--json", o.json, "JSON lines instead of a progress bar");
}

int BackupCommand::run() {
    return run_backup(opts_);
}

std::unique_ptr<BackupCommand> add_backup_subcommand(CLI::App& app) {
    return std::make_unique<BackupCommand>(app);
}

} // namespace fleece::cli
