#include "cli/img/create_image.hpp"

#include "cli/img/qcow2_support.hpp"
#include "util/align.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>
#include <vector>

namespace fleece::cli::img {
namespace {

Error os_error(const std::string& what, const std::string& path) {
    return make_error(fmt::format("Could not {} '{}': {}", what, path, std::strerror(errno)));
}

Status create_raw(const std::string& filename, const CreateSettings& s) {
    const int fd = ::open(filename.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return os_error("create", filename);
    // Like qemu-img, raw images are a whole number of 512-byte sectors.
    const std::uint64_t size = align_up(*s.size, std::uint64_t{512});
    Status result;
    if (::ftruncate(fd, static_cast<off_t>(size)) < 0) {
        result = os_error("resize", filename);
    } else if (s.preallocation == "falloc" && size > 0) {
        if (const int e = ::posix_fallocate(fd, 0, static_cast<off_t>(size)); e != 0) {
            errno = e;
            result = os_error("preallocate", filename);
        }
    } else if (s.preallocation == "full") {
        std::vector<char> zeroes(1 << 20);
        for (std::uint64_t off = 0; off < size && result;) {
            const std::size_t n =
                static_cast<std::size_t>(std::min<std::uint64_t>(zeroes.size(), size - off));
            const ssize_t w = ::pwrite(fd, zeroes.data(), n, static_cast<off_t>(off));
            if (w <= 0) {
                result = os_error("preallocate", filename);
                break;
            }
            off += static_cast<std::uint64_t>(w);
        }
    }
    if (result && ::fsync(fd) < 0) result = os_error("sync", filename);
    ::close(fd);
    return result;
}

} // namespace

Status create_image(const std::string& filename, const CreateSettings& s) {
    if (s.format == "qcow2") return qcow2_create(filename, s);
    return create_raw(filename, s);
}

std::string backing_path(const std::string& image, const std::string& backing) {
    if (backing.empty() || backing[0] == '/' || backing.find("://") != std::string::npos)
        return backing;
    const std::size_t slash = image.rfind('/');
    if (slash == std::string::npos) return backing;
    return image.substr(0, slash + 1) + backing;
}

} // namespace fleece::cli::img
