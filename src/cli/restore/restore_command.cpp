#include "cli/restore/restore_command.hpp"

#include "cli/img/convert.hpp"
#include "cli/restore/backup_chain.hpp"

#include <iostream>
#include <memory>
#include <sys/stat.h>
#include <unistd.h>

namespace fleece::cli {

namespace {

struct RestoreOptions {
    std::vector<std::string> files; // BACKUP... OUTPUT
    std::string format;
    bool progress = false;
    bool quiet = false;
};

int restore_error(const std::string& message) {
    std::cout.flush();
    std::cerr << "fleece restore: " << message << "\n";
    return 1;
}

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() &&
           s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

int run_restore(const RestoreOptions& o) {
    if (o.files.size() < 2)
        return restore_error("give the newest backup (or the chain, oldest first) and OUTPUT");
    const std::string output = o.files.back();
    const std::vector<std::string> backups(o.files.begin(), o.files.end() - 1);
    std::string format = o.format;
    if (format.empty()) format = ends_with(output, ".qcow2") ? "qcow2" : "raw";
    if (format != "raw" && format != "qcow2")
        return restore_error("-O must be raw or qcow2, not '" + format + "'");
    struct stat st {};
    if (::stat(output.c_str(), &st) == 0)
        return restore_error("output " + output +
                             " already exists: remove it or choose another path (a restore "
                             "never overwrites a file)");
    std::vector<ChainLink> chain;
    try {
        chain = backups.size() == 1 ? walk_chain(backups[0]) : check_chain_list(backups);
    } catch (const ChainError& e) {
        return restore_error(e.what());
    }
    for (const ChainLink& l : chain)
        if (l.path == output) return restore_error("output " + output + " is part of the chain");
    if (!o.quiet)
        std::cout << "chain verified (" << chain.size() << " backup"
                  << (chain.size() == 1 ? "" : "s") << ", " << chain.front().size
                  << " bytes): " << describe_chain(chain) << "\n"
                  << std::flush;
    img::ConvertRequest req;
    req.source = chain.back().path;
    req.source_format = chain.back().format;
    req.target = output;
    req.target_format = format;
    req.progress = o.progress;
    const int rc = img::convert_image(req);
    if (rc != 0) {
        ::unlink(output.c_str()); // a partial restore must not look like one
        return rc;
    }
    if (!o.quiet)
        std::cout << "restored " << output << " (" << format << ") = the disk at the point of "
                  << chain.back().path << "\n";
    return 0;
}

} // namespace

void add_restore_command(CLI::App& app, std::function<int()>* action) {
    auto o = std::make_shared<RestoreOptions>();
    CLI::App* sub = app.add_subcommand(
        "restore", "Write the disk at a backup's point in time from a full + incremental chain");
    sub->footer(
        "BACKUP is the newest backup of the chain you want to restore: its backing files\n"
        "(the incrementals before it, down to the full backup) are followed and checked.\n"
        "Or list the whole chain, oldest (the full backup) first. Every link is verified\n"
        "before anything is written: each backing file present, each the next one's backing,\n"
        "all of one virtual size. A broken chain is refused with a message naming the link.\n"
        "OUTPUT is created (never overwritten), raw or qcow2 (-O, or by .qcow2 extension).\n"
        "Example: fleece restore -p inc2.qcow2 disk-restored.raw");
    sub->add_option("files", o->files, "BACKUP... OUTPUT")->required()->expected(2, -1);
    sub->add_option("-O,--format", o->format,
                    "Output format: raw or qcow2 (default: qcow2 for a .qcow2 name, else raw)");
    sub->add_flag("-p,--progress", o->progress, "Show a progress bar");
    sub->add_flag("-q,--quiet", o->quiet, "Only errors");
    sub->callback([o, action] { *action = [o] { return run_restore(*o); }; });
}

} // namespace fleece::cli
