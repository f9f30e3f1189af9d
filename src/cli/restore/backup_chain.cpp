#include "cli/restore/backup_chain.hpp"

#include "cli/img/create_image.hpp"
#include "nodes/qcow2/qcow2_tools.hpp"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <set>
#include <sys/stat.h>
#include <unistd.h>

namespace fleece::cli {

namespace {

constexpr std::size_t max_chain_length = 10000;

std::string real_path(const std::string& path) {
    char* r = ::realpath(path.c_str(), nullptr);
    if (!r) return path;
    std::string out = r;
    std::free(r);
    return out;
}

// Reads one image's header. `needed_by` names the overlay that points at it (for the
// message when it is missing).
ChainLink read_link(const std::string& path, const std::string& needed_by) {
    ChainLink l;
    l.path = path;
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        if (needed_by.empty()) throw ChainError("backup '" + path + "': " + std::strerror(errno));
        throw ChainError("broken chain: '" + needed_by + "' is an increment on top of '" + path +
                         "', which is missing (" + std::strerror(errno) +
                         "); restore needs every backup of the chain");
    }
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
        throw ChainError("backup '" + path + "' is not a file");
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw ChainError("cannot open backup '" + path + "': " + std::strerror(errno));
    char magic[4] = {};
    const bool qcow2 = ::pread(fd, magic, 4, 0) == 4 && std::memcmp(magic, "QFI\xfb", 4) == 0;
    off_t end = ::lseek(fd, 0, SEEK_END);
    ::close(fd);
    if (!qcow2) {
        l.format = "raw";
        l.size = end > 0 ? static_cast<std::uint64_t>(end) : 0;
        return l;
    }
    auto info = nodes::qcow2::read_image_info(path);
    if (!info) throw ChainError("backup '" + path + "': " + info.error().message);
    if (info->corrupt)
        throw ChainError("backup '" + path + "' is marked corrupt (qemu-img check it)");
    l.format = "qcow2";
    l.size = info->virtual_size;
    l.backing_file = info->backing_file;
    l.backing_format = info->backing_format;
    return l;
}

void check_pair(const ChainLink& overlay, const ChainLink& base) {
    if (overlay.size != base.size)
        throw ChainError("broken chain: '" + overlay.path + "' is " + std::to_string(overlay.size) +
                         " bytes but the backup it builds on, '" + base.path + "', is " +
                         std::to_string(base.size) + " bytes: they are not backups of one disk");
    if (!overlay.backing_format.empty() && overlay.backing_format != base.format)
        throw ChainError("broken chain: '" + overlay.path + "' expects its backing file '" +
                         base.path + "' in " + overlay.backing_format + " format, but it is " +
                         base.format);
}

} // namespace

std::vector<ChainLink> walk_chain(const std::string& newest) {
    std::vector<ChainLink> newest_first{read_link(newest, "")};
    std::set<std::string> seen{real_path(newest)};
    while (!newest_first.back().backing_file.empty()) {
        const ChainLink& top = newest_first.back();
        if (top.backing_file.find("://") != std::string::npos)
            throw ChainError("backup '" + top.path + "' is backed by '" + top.backing_file +
                             "', not a local file: give the chain as a list of files");
        const std::string path = img::backing_path(top.path, top.backing_file);
        if (!seen.insert(real_path(path)).second || newest_first.size() > max_chain_length)
            throw ChainError("broken chain: '" + top.path + "' is backed by '" + path +
                             "', which is already part of the chain (a loop)");
        ChainLink base = read_link(path, top.path);
        check_pair(top, base);
        newest_first.push_back(std::move(base));
    }
    return {newest_first.rbegin(), newest_first.rend()};
}

std::vector<ChainLink> check_chain_list(const std::vector<std::string>& oldest_first) {
    if (oldest_first.empty()) throw ChainError("no backup given");
    std::vector<ChainLink> chain;
    std::set<std::string> seen;
    for (std::size_t i = 0; i < oldest_first.size(); ++i) {
        const std::string& path = oldest_first[i];
        ChainLink l = read_link(path, "");
        if (!seen.insert(real_path(path)).second)
            throw ChainError("backup '" + path + "' is listed twice");
        if (i == 0) {
            if (!l.backing_file.empty())
                throw ChainError("the first backup of the list, '" + path +
                                 "', is an increment (backed by '" + l.backing_file +
                                 "'), not a full backup: list the chain oldest first, starting "
                                 "with the full backup");
        } else {
            const ChainLink& prev = chain.back();
            if (l.backing_file.empty())
                throw ChainError("broken chain: '" + path +
                                 "' is a full backup, not an increment "
                                 "on top of '" +
                                 prev.path + "'");
            const std::string named = img::backing_path(path, l.backing_file);
            if (real_path(named) != real_path(prev.path)) {
                struct stat st {};
                const bool exists = ::stat(named.c_str(), &st) == 0;
                throw ChainError("broken chain: '" + path + "' is an increment on top of '" +
                                 named + "'" + (exists ? "" : " (missing)") +
                                 ", not on top of the backup listed before it, '" + prev.path +
                                 "': a backup is missing from the list or the order is wrong "
                                 "(oldest first)");
            }
            check_pair(l, prev);
        }
        chain.push_back(std::move(l));
    }
    return chain;
}

std::string describe_chain(const std::vector<ChainLink>& chain) {
    std::string out;
    for (const ChainLink& l : chain) {
        if (!out.empty()) out += " <- ";
        out += l.path + " (" + l.format + ")";
    }
    return out;
}

} // namespace fleece::cli
