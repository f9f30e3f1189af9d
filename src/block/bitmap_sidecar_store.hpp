#pragma once
// A node's persistent dirty bitmaps kept in a sidecar file (ADR 0002), for nodes that cannot
// store them in their image (raw files, block devices).
//
// Clean-shutdown mode: the sidecar is marked in use while the node runs and saved clean when
// the node leaves the graph; after a crash its bitmaps load inconsistent ("take a full
// backup").
//
// Write-ahead mode: a change journal (block/change_journal.hpp) next to the sidecar,
// `<sidecar>.journal`, durably marks each region before the first write of it reaches the
// disk, and the sidecar is saved (a checkpoint, in the background) after every change of
// the bitmaps other than a recorded write: add, remove, clear, a backup's freeze and end.
// After a crash the bitmaps load consistent: the saved bits plus the journal's regions.
// Should the journal fail (full or broken disk), the store durably falls back to
// clean-shutdown mode and the guest's writes go on; if even that fails, they fail (the user
// asked for bitmaps that never miss a change).

#include "block/bitmap_sidecar.hpp"
#include "block/change_journal.hpp"
#include "block/node.hpp"
#include "io/sync.hpp"
#include "util/result.hpp"

#include <string>

namespace fleece::block {

struct SidecarOptions {
    bool write_ahead = false;
    std::uint64_t journal_granularity = default_journal_granularity;
};

// What query-named-block-nodes shows about a node's sidecar.
struct SidecarInfo {
    std::string path;
    bool write_ahead = false;   // asked for
    bool degraded = false;      // write-ahead fell back to clean-shutdown after an error
    ChangeJournalStats journal; // zero without a journal
    std::uint64_t saves = 0;    // sidecar saves since attached
};

class SidecarStore final : public ExternalBitmapStore {
  public:
    // Loads the sidecar at `path` (if it exists) into the node's bitmaps, marks it in use
    // durably and, in write-ahead mode, starts a fresh journal; then installs itself as the
    // node's external bitmap store. Blocking file I/O: call before the node takes writes.
    static Status attach(Node& node, const std::string& path, SidecarOptions options);

    ~SidecarStore() override;

    bool change_starts(std::uint64_t offset, std::uint64_t length) override;
    io::Task<std::error_code> cover(std::uint64_t offset, std::uint64_t length) override;
    void change_ends(std::uint64_t offset, std::uint64_t length) override;
    io::Task<void> wait_saved() override;
    io::Task<void> close() override;

    SidecarInfo info() const;
    ChangeJournal* journal() { return journal_.get(); } // null in clean-shutdown mode

  private:
    SidecarStore(Node& node, std::string path, std::unique_ptr<ChangeJournal> journal);
    void bitmaps_changed();
    io::Task<void> save_loop();
    io::Task<Status> save(SidecarState state); // with file_ held
    io::Task<Status> write(std::vector<unsigned char> bytes);
    io::Task<bool> fall_back(std::error_code why);

    Node& node_;
    std::string path_;
    std::unique_ptr<ChangeJournal> journal_; // null in clean-shutdown mode
    // Changes between change_starts() and change_ends(), per journal region: a checkpoint
    // marks these regions in its new epoch.
    std::vector<std::uint32_t> in_flight_;
    bool degraded_ = false;
    bool closing_ = false;
    // The journal epoch the durable sidecar names: a new epoch may only be prepared when
    // it is the current one (preparing overwrites the slot before it).
    std::uint64_t sidecar_epoch_ = 0;
    std::uint64_t changes_ = 0; // bitmap changes seen
    std::uint64_t saved_ = 0;   // changes covered by a durable save
    std::uint64_t saves_ = 0;
    std::uint64_t failed_saves_ = 0;
    bool saving_ = false;
    io::Event idle_;
    io::WaitQueue saved_queue_;
    io::AsyncMutex file_; // one writer of the sidecar at a time
};

} // namespace fleece::block
