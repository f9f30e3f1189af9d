// fleece: the command-line tool. This file only dispatches; each subcommand family lives
// in its own folder (qmp/, img/, backup/, restore/).

#include "cli/backup/backup_command.hpp"
#include "cli/img/img_command.hpp"
#include "cli/qmp/qmp_command.hpp"
#include "cli/restore/restore_command.hpp"

#include <CLI/CLI.hpp>
#include <cstring>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

namespace {

// `img resize FILE -1G` would read "-1G" as an option: like qemu-img, a last argument that
// looks like a negative size is taken as the size.
std::vector<char*> with_negative_size_fixed(int argc, char** argv) {
    std::vector<char*> args(argv, argv + argc);
    static char separator[] = "--";
    if (argc >= 4 && std::strcmp(argv[1], "img") == 0 && std::strcmp(argv[2], "resize") == 0) {
        const char* last = argv[argc - 1];
        const bool already = std::strcmp(argv[argc - 2], "--") == 0;
        if (!already && last[0] == '-' && last[1] >= '0' && last[1] <= '9')
            args.insert(args.end() - 1, separator);
    }
    return args;
}

} // namespace

int main(int argc, char** argv) {
    CLI::App app{"fleece: offline image tool and client for the fleeced backup daemon"};
    app.require_subcommand(1);
    std::function<int()> action;
    fleece::cli::add_qmp_command(app, &action);
    fleece::cli::img::add_img_commands(app, &action);
    fleece::cli::add_backup_command(app, &action);
    fleece::cli::add_restore_command(app, &action);
    std::vector<char*> args = with_negative_size_fixed(argc, argv);
    try {
        app.parse(static_cast<int>(args.size()), args.data());
    } catch (const CLI::ParseError& e) {
        // Help and version exit 0; usage errors exit 1, like qemu-img.
        const int rc = app.exit(e);
        return rc == 0 ? 0 : 1;
    }
    try {
        return action ? action() : 1;
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}
