#pragma once
// Blocking whole-buffer file I/O for the places that work outside the event loop (image
// creation, offline tools, files written before a node takes requests). The data plane uses
// io/file_io.hpp instead.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace fleece {

// Writes all `len` bytes at `off`, retrying short writes and EINTR; false with errno set.
bool pwrite_all(int fd, const void* buf, std::size_t len, std::uint64_t off);
// The whole content of the file at `path`; nullopt with errno set.
std::optional<std::string> read_whole_file(const std::string& path);

} // namespace fleece
