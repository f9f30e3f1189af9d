#include "util/blocking_io.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fmt/format.h>
#include <unistd.h>

namespace fleece {

bool pwrite_all(int fd, const void* buf, std::size_t len, std::uint64_t off) {
    const auto* p = static_cast<const char*>(buf);
    while (len > 0) {
        const ssize_t n = ::pwrite(fd, p, len, static_cast<off_t>(off));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return false;
        if (n == 0) {
            errno = EIO;
            return false;
        }
        p += n;
        len -= static_cast<std::size_t>(n);
        off += static_cast<std::uint64_t>(n);
    }
    return true;
}

std::optional<std::string> read_whole_file(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return std::nullopt;
    std::string data;
    char buf[65536];
    for (;;) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            const int saved = errno;
            ::close(fd);
            errno = saved;
            return std::nullopt;
        }
        if (n == 0) break;
        data.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fd);
    return data;
}

Status replace_file_durably(const std::string& path, const void* data, std::size_t len,
                            int* keep_open) {
    const std::string tmp = path + ".tmp";
    auto failed = [](const char* what, const std::string& p, int fd) {
        const Error e =
            make_error(fmt::format("Cannot {} '{}': {}", what, p, std::strerror(errno)));
        if (fd >= 0) ::close(fd);
        return e;
    };
    const int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return failed("create", tmp, -1);
    if (!pwrite_all(fd, data, len, 0)) return failed("write", tmp, fd);
    if (::fsync(fd) != 0) return failed("sync", tmp, fd);
    if (::rename(tmp.c_str(), path.c_str()) != 0) return failed("replace", path, fd);
    // The rename itself must be durable before the caller relies on the new file.
    const std::filesystem::path parent = std::filesystem::path(path).parent_path();
    const std::string dir = parent.empty() ? std::string(".") : parent.string();
    if (const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
    }
    if (keep_open)
        *keep_open = fd;
    else
        ::close(fd);
    return {};
}

} // namespace fleece
