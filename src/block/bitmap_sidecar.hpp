#pragma once
// Bitmap sidecar files: persistent dirty bitmaps for nodes that cannot store them in their
// image (raw files, block devices), in the "clean-shutdown" mode of ADR 0002.
//
// - Attaching loads the sidecar's bitmaps and at once rewrites it marked in-use (durably)
//   before the node takes further writes.
// - A clean shutdown writes the bitmaps and marks the file clean.
// - A sidecar still marked in-use at load time means the previous process died without
//   saving (kill -9, power loss): its bitmaps load as inconsistent, so every incremental
//   backup with them is refused ("take a full backup") instead of silently missing writes.
//
// Format (little-endian): "FLEECEBM", u32 version (1 or 2), u32 state (0 clean, 1 in use),
// u64 disk size, [version 2: u32 flags (1 = write-ahead, 2 = disk identity follows), u64
// journal epoch, u64 identity size, i64 identity mtime in ns], u32 bitmap
// count, then per bitmap: u32 name length, name, u64 granularity, u8 flags (1 enabled,
// 2 inconsistent), u64 word count, the 64-bit words. Written to a temporary file, fsynced and
// renamed over the old one, so a crash leaves either the old or the new file.
//
// Write-ahead mode (block/bitmap_sidecar_store.hpp): an in-use sidecar names the epoch of its
// change journal (block/change_journal.hpp) from which its bitmaps are complete.

#include "block/dirty_bitmap.hpp"
#include "block/node.hpp"
#include "util/result.hpp"

#include <string>

namespace fleece::block {

struct SidecarContent {
    bool clean = false;
    std::uint64_t disk_size = 0;
    bool write_ahead = false;
    std::uint64_t journal_epoch = 0;
    // The disk file's size and mtime at the clean save: the disk must still have them.
    std::optional<DiskIdentity> identity;
    struct Entry {
        std::string name;
        std::uint64_t granularity = 0;
        bool enabled = true;
        bool inconsistent = false; // stays so until the user removes the bitmap
        std::vector<std::uint64_t> words;
    };
    std::vector<Entry> bitmaps;
};

// Reads a sidecar; an error names the problem (missing file, bad magic, truncation).
Result<SidecarContent> read_sidecar(const std::string& path);
// The file's bytes for `bitmaps` (the persistent ones) in the given state.
struct SidecarState {
    bool clean = false;
    bool write_ahead = false;
    std::uint64_t journal_epoch = 0;
    std::optional<DiskIdentity> identity; // with a clean save
};
std::vector<unsigned char> encode_sidecar(std::uint64_t disk_size, const DirtyBitmaps& bitmaps,
                                          SidecarState state);
// Replaces the file at `path` with `bytes`, atomically and durably (blocking).
Status write_file_durably(const std::string& path, const std::vector<unsigned char>& bytes);
// Both in one (blocking).
Status write_sidecar(const std::string& path, std::uint64_t disk_size, const DirtyBitmaps& bitmaps,
                     SidecarState state);

} // namespace fleece::block
