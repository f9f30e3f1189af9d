#pragma once
// A chain of backups as `fleece backup` writes them: a full backup (raw or qcow2) and
// incrementals, each a qcow2 overlay whose backing file is the backup before it. Before a
// restore reads it, the chain is checked link by link so that a broken chain is named, not
// silently restored as wrong data.

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace fleece::cli {

struct ChainLink {
    std::string path;           // as given, or as resolved from the overlay's backing name
    std::string format;         // raw | qcow2 (probed)
    std::uint64_t size = 0;     // virtual size
    std::string backing_file;   // as stored in the header ("" for the full backup)
    std::string backing_format; // as stored ("" when the header has none)
};

// A broken chain; the message names the link.
struct ChainError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Follows the backing files from `newest` down to the full backup. Returns the chain
// oldest first. Throws ChainError for a missing backing file, a size mismatch, a backing
// format that does not match the file, a loop, or an unreadable image.
std::vector<ChainLink> walk_chain(const std::string& newest);

// Checks a chain given as a list, oldest (the full backup) first: every element after the
// first must name the element before it as its backing file. Returns the links.
std::vector<ChainLink> check_chain_list(const std::vector<std::string>& oldest_first);

// "full.raw (raw) <- inc1.qcow2 <- inc2.qcow2"
std::string describe_chain(const std::vector<ChainLink>& chain);

} // namespace fleece::cli
