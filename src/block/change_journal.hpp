#pragma once
// The write-ahead change journal of a bitmap sidecar (ADR 0002, write-ahead mode).
//
// A coarse map of the regions a node's writes touched since its bitmaps were last saved,
// made durable *before* any write that touches a region not yet in it reaches the disk.
// After a crash, the saved bitmaps plus this map cover every change that can have reached
// the disk, so the bitmaps load consistent (over-approximated to whole regions) instead of
// inconsistent, and the next incremental backup is correct.
//
// Epochs. The file has two slots. A sidecar names the epoch its saved bitmaps start from;
// recovery ORs in every intact slot of that epoch or later, and refuses (inconsistent) when
// no intact slot holds that epoch. A save of the sidecar (a checkpoint) goes:
//   1. prepare_next_epoch(): the other slot, emptied and stamped epoch+1, durably. Marks
//      still go to the current slot; the current sidecar counts both slots.
//   2. with no suspension in between: take the bitmap snapshot, then switch_epoch(). A
//      write recorded before the snapshot is in it; one recorded after covers itself in
//      the new slot (Node records a write before it asks for cover).
//   3. write the sidecar naming epoch+1. Until that is durable the old sidecar still counts
//      the old slot, and marks waiting in it are still written.
//
// File layout (little-endian), per slot: a 4 KiB header page whose first sector holds
// "FLEECEWJ", u32 version 1, u32 0, u64 epoch, u64 disk size, u64 granularity, u32 crc32 of
// the preceding bytes; then the region bits, one per `granularity` bytes of the disk, in
// whole 4 KiB pages. A torn header only happens while its slot is being prepared, when no
// write relies on it yet.

#include "block/node.hpp"
#include "io/sync.hpp"
#include "util/result.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace fleece::block {

// 1 MiB regions: a first write to a region costs one journal sync (batched with all others
// waiting), and a crash over-approximates at most 1 MiB around each written byte.
inline constexpr std::uint64_t default_journal_granularity = 1ull << 20;

struct ChangeJournalStats {
    std::uint64_t syncs = 0;  // fdatasyncs of marks
    std::uint64_t marked = 0; // regions marked (first writes in an epoch)
    std::uint64_t waits = 0;  // changes that waited for a mark to become durable
    std::uint64_t epoch = 0;
};

class ChangeJournal {
  public:
    // Creates or replaces the file at `path`: slot 0 empty at `epoch`, slot 1 unused.
    static Result<std::unique_ptr<ChangeJournal>> create(const std::string& path,
                                                         std::uint64_t disk_size,
                                                         std::uint64_t granularity,
                                                         std::uint64_t epoch);
    // What a crash left: every region marked in the slots of `epoch` or later, as byte
    // ranges; an error (with the reason) when the journal cannot vouch for that epoch.
    struct Recovered {
        std::uint64_t granularity = 0;
        std::vector<std::uint64_t> words; // region bits, little-endian words
        std::uint64_t max_epoch = 0;      // the newest intact slot's epoch
    };
    static Result<Recovered> recover(const std::string& path, std::uint64_t disk_size,
                                     std::uint64_t epoch);

    ChangeJournal(const ChangeJournal&) = delete;
    ChangeJournal& operator=(const ChangeJournal&) = delete;
    ~ChangeJournal();

    // Whether every region of the range is durably marked in the current epoch.
    bool covers(std::uint64_t offset, std::uint64_t length) const;
    // Marks the range's regions and waits until a sync made them durable (batched: all
    // marks made while one sync runs share the next one). After an I/O error every cover
    // fails with it: the journal can no longer vouch.
    io::Task<std::error_code> cover(std::uint64_t offset, std::uint64_t length);
    // Marks without waiting, and waits for every mark made so far: a checkpoint marks the
    // changes in flight at its epoch switch (a clear may have taken them out of the bitmap
    // snapshot while they still go to the disk).
    void mark(std::uint64_t offset, std::uint64_t length);
    io::Task<std::error_code> wait_durable();

    io::Task<std::error_code> prepare_next_epoch();
    void switch_epoch(); // after prepare_next_epoch() succeeded
    std::uint64_t epoch() const { return epoch_; }
    std::uint64_t granularity() const { return granularity_; }
    std::error_code failure() const { return failed_; }
    ChangeJournalStats stats() const;
    // Fault injection (tests): the next sync fails with `ec`, as a full or failing disk would.
    void inject_failure(std::error_code ec) { injected_ = ec; }

    // Waits for the sync in progress (the node is drained; nothing marks any more).
    io::Task<void> close();

  private:
    ChangeJournal(int fd, std::uint64_t disk_size, std::uint64_t granularity, std::uint64_t epoch);
    struct PageWrite {
        std::uint64_t file_offset;
        std::uint64_t epoch;
        std::uint64_t page;
        std::vector<std::uint64_t> words;
    };
    std::uint64_t slot_offset(unsigned slot) const;
    PageWrite page_image(std::uint64_t page) const;
    std::uint64_t mark_regions(std::uint64_t offset, std::uint64_t length); // -> sync needed
    io::Task<std::error_code> wait_for_sync(std::uint64_t no);
    io::Task<void> sync_loop();

    int fd_;
    std::uint64_t disk_size_;
    std::uint64_t granularity_;
    std::uint64_t regions_;
    std::uint64_t pages_;
    std::uint64_t epoch_;
    unsigned slot_ = 0; // the current epoch's slot
    bool next_prepared_ = false;
    std::vector<std::uint64_t> image_;   // the current slot as it will be on disk
    std::vector<std::uint64_t> durable_; // the current slot's bits known durable
    std::vector<bool> page_dirty_;
    std::vector<std::uint64_t> dirty_pages_;
    std::vector<std::uint64_t> page_sync_no_; // the sync that writes a page's latest bits
    std::vector<PageWrite> carried_;          // dirty pages of the epoch before, still to write
    std::uint64_t syncs_started_ = 0;
    std::uint64_t syncs_done_ = 0;
    bool syncing_ = false;
    std::error_code failed_;
    std::error_code injected_;
    io::WaitQueue synced_;
    io::Event idle_;
    ChangeJournalStats stats_;
};

} // namespace fleece::block
