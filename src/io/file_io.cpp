#include "io/file_io.hpp"

namespace fleece::io {

Task<std::int64_t> pread_full(int fd, std::span<std::byte> buf, std::uint64_t offset) {
    std::uint64_t done = 0;
    while (done < buf.size()) {
        const std::int64_t r = co_await pread(fd, buf.subspan(done), offset + done);
        if (r < 0) co_return r;
        if (r == 0) break; // end of file
        done += static_cast<std::uint64_t>(r);
    }
    co_return static_cast<std::int64_t>(done);
}

Task<std::int64_t> pwrite_full(int fd, std::span<const std::byte> buf, std::uint64_t offset) {
    std::uint64_t done = 0;
    while (done < buf.size()) {
        const std::int64_t r = co_await pwrite(fd, buf.subspan(done), offset + done);
        if (r < 0) co_return r;
        if (r == 0) co_return -5; // EIO: a zero-length write would loop forever
        done += static_cast<std::uint64_t>(r);
    }
    co_return static_cast<std::int64_t>(done);
}

} // namespace fleece::io
