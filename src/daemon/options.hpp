#pragma once
// The qemu-storage-daemon compatible command line.

#include "util/result.hpp"

#include <optional>
#include <string>
#include <vector>

namespace fleece::daemon {

struct ChardevOption {
    std::string id;
    std::string path;
};

struct Options {
    std::vector<ChardevOption> chardevs;
    std::vector<std::string> monitors;  // chardev ids
    std::vector<std::string> blockdevs; // raw option strings, parsed when applied
    std::vector<std::string> nbd_servers;
    std::vector<std::string> exports;
    std::vector<std::string> objects; // --object, created before the block nodes
    // --bitmap-sidecar, attached after the block nodes and before the exports (fleeced's
    // own option: x-block-dirty-bitmap-sidecar before any guest can write)
    std::vector<std::string> bitmap_sidecars;
    std::string pidfile;
    bool daemonize = false;
    bool help = false;
    bool version = false;
};

// Parses argv (without argv[0]). Both "--opt value" and "--opt=value" are accepted.
Result<Options> parse_options(const std::vector<std::string>& args);
// Checks that every monitor names a chardev.
Status check_options(const Options& options);

const char* usage_text();

// QEMU's boolean spellings in key=value options ("on", "off", "yes", "no", ...); nullopt
// for anything else.
std::optional<bool> parse_on_off(const std::string& text);

} // namespace fleece::daemon
