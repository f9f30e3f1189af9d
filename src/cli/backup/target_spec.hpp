#pragma once
// Where `fleece backup` pushes to: an NBD URI or a local file, turned into the
// blockdev-add arguments of the target node.

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace fleece::cli {

struct TargetSpec {
    enum class Kind { nbd, file } kind = Kind::file;
    std::string text;           // as the user gave it
    std::string path;           // file: the image path
    std::string format = "raw"; // file: raw | qcow2
    bool exists = false;        // file: already there (a block device or an image to reuse)
    std::string backing_file;   // file, qcow2: the previous backup (incremental overlay)
    std::string backing_format; // its format (raw | qcow2)
    std::uint64_t backing_size = 0;
    nlohmann::json server;   // nbd: SocketAddress (unix path or inet host/port)
    std::string export_name; // nbd
    std::string tls_creds;   // nbds: the tls-creds object id in fleeced
    // nbd: seconds requests wait for the server to come back after the connection dropped
    // (the node's reconnect-delay; 0 = they fail at once).
    std::uint64_t reconnect_delay_s = 0;
};

// Parses TARGET; throws std::runtime_error with a message naming the problem.
//   nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, nbds://..., nbds+unix://...
//   anything else is a local path; `format` is "", "raw" or "qcow2" ("" = by extension).
TargetSpec parse_target(const std::string& text, const std::string& format,
                        const std::string& tls_creds);

// Makes the local target `t` a qcow2 overlay of the previous backup `base` (an incremental):
// checks that `base` is there, probes its format and size, and records it as the backing
// file (by its name when both are in one directory, so the chain can be moved as a whole;
// else by its absolute path). Throws with a message naming the problem.
void make_overlay_target(TargetSpec& t, const std::string& base);

// Creates the local target image of `size` bytes (raw: sparse file; qcow2: empty image).
// Returns true when a file was created (so a failed backup may remove it).
bool create_target_image(const TargetSpec& t, std::uint64_t size);

// The blockdev-add arguments for the target node called `node_name`.
nlohmann::json target_blockdev(const TargetSpec& t, const std::string& node_name);

} // namespace fleece::cli
