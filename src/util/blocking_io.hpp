#pragma once
// Blocking whole-buffer file I/O for the places that work outside the event loop (image
// creation, offline tools, files written before a node takes requests). The data plane uses
// io/file_io.hpp instead.

#include "util/result.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace fleece {

// Writes all `len` bytes at `off`, retrying short writes and EINTR; false with errno set.
bool pwrite_all(int fd, const void* buf, std::size_t len, std::uint64_t off);
// The whole content of the file at `path`; nullopt with errno set.
std::optional<std::string> read_whole_file(const std::string& path);
// Replaces the file at `path` with `len` bytes, atomically and durably: written to
// `path`.tmp, fsynced, renamed over `path`, the directory fsynced. A crash leaves the old or
// the new file. `keep_open`: the new file's descriptor (read-write) instead of closing it.
Status replace_file_durably(const std::string& path, const void* data, std::size_t len,
                            int* keep_open = nullptr);

} // namespace fleece
