#include "cli/backup/backup_command.hpp"

namespace fleece::cli {

void add_backup_command(CLI::App& app, std::function<int()>* action) {
    CLI::App* sub =
        app.add_subcommand("backup", "Push backup with fleecing of a node of a running fleeced");
    sub->footer(
        "Inserts a copy-before-write filter live under every user of NODE (the snapshot\n"
        "point), keeps old data in a fleecing image on fast local storage, pushes the\n"
        "point-in-time view to TARGET, then restores the graph and deletes what it added.\n"
        "Exit status: 0 only when the target holds the complete point-in-time copy and the\n"
        "graph was restored; 1 on failure; 128+N when stopped by signal N (Ctrl-C cancels\n"
        "the job and cleans up).\n\n"
        "Incremental chains:\n"
        "  fleece backup ... --target full.raw --bitmap daily\n"
        "  fleece backup ... --target inc1.qcow2 --sync incremental --bitmap daily --base "
        "full.raw\n"
        "  fleece backup ... --target inc2.qcow2 --sync incremental --bitmap daily --base "
        "inc1.qcow2\n"
        "  fleece restore inc2.qcow2 disk-at-inc2.raw\n"
        "An inconsistent bitmap (fleeced crashed) makes an incremental fail with exit 1 and\n"
        "the advice to take a full backup. See docs/user-guide.md.");
    auto opts = std::make_shared<BackupOptions>();
    BackupOptions& o = *opts;
    sub->add_option("--qmp", o.qmp_socket, "QMP unix socket of fleeced")->required();
    sub->add_option("--node", o.node, "Node to back up (node-name)")->required();
    sub->add_option("--target", o.target,
                    "nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, nbds://... "
                    "(needs --tls-creds), or a local file to create (raw, or qcow2 by "
                    ".qcow2 extension / --target-format)")
        ->required();
    sub->add_option("--target-format", o.target_format, "Format of a local target: raw|qcow2");
    sub->add_option("--tls-creds", o.tls_creds,
                    "Id of a tls-creds object in fleeced, for nbds:// targets");
    sub->add_option("--fleecing", o.fleecing_path,
                    "Directory (or exact file) for the fleecing image; default: next to the "
                    "disk's file, else $TMPDIR or /var/tmp");
    sub->add_option("--fleecing-format", o.fleecing_format, "raw|qcow2 (default raw, sparse)");
    sub->add_option("--sync", o.sync,
                    "full (default) or incremental: only what changed since the previous "
                    "backup of the chain (needs --bitmap)");
    sub->add_option("--bitmap", o.bitmap,
                    "Dirty bitmap NAME on NODE that tracks changes between backups. With "
                    "--sync full it is created (or reset) at the snapshot point, persistent "
                    "where the node can store it; --sync incremental backs up its clusters "
                    "and resets it. A failed backup keeps every change in it.");
    sub->add_option("--base", o.base,
                    "For --sync incremental to a local file: the previous backup of the chain "
                    "(full or incremental); TARGET is created as a qcow2 overlay backed by it. "
                    "For an NBD target, export such an overlay yourself.");
    sub->add_option("--speed", o.speed,
                    "Rate limit of the backup job in bytes/s, e.g. 50M (0 = none)")
        ->transform(CLI::AsSizeValue(false));
    sub->add_option("--on-cbw-error", o.on_cbw_error,
                    "break-snapshot (default: a failed copy fails the backup, never the "
                    "guest) or break-guest-write (fail the guest's write instead)");
    sub->add_option("--cbw-timeout", o.cbw_timeout_s,
                    "Seconds a guest write may wait for its copy-before-write (default 45, 0 = "
                    "no limit)");
    sub->add_option("--copy-window", o.copy_window,
                    "Copy-ahead window of the copy-before-write filter (default 1M): a guest "
                    "write that has to copy, where an earlier write already copied a cluster "
                    "of the same window, copies the whole window at once. 0 = copy only the "
                    "clusters each write touches, as QEMU does (less fleecing space for "
                    "sparse writers, more waits for the guest)")
        ->transform(CLI::AsSizeValue(false));
    sub->add_option("--target-reconnect", o.target_reconnect_s,
                    "Seconds an NBD target may be away (connection dropped, server "
                    "restarting) before the backup fails (default 120, 0 = fail at once). "
                    "The guest is not affected meanwhile: the fleecing image keeps the old "
                    "data. Writes the server acknowledged but may have lost with its cache "
                    "are copied again.");
    sub->add_flag("--json", o.json, "JSON lines instead of a progress bar");
    sub->callback([opts, action] { *action = [opts] { return run_backup(*opts); }; });
}

} // namespace fleece::cli
