#include "block/bitmap_sidecar_store.hpp"

#include "block/bitmap_sidecar.hpp"
#include "io/offload.hpp"
#include "util/align.hpp"
#include "util/log.hpp"

#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <unistd.h>

namespace fleece::block {

namespace {

std::string journal_path(const std::string& sidecar) {
    return sidecar + ".journal";
}

} // namespace

SidecarStore::SidecarStore(Node& node, std::string path, std::unique_ptr<ChangeJournal> journal)
    : node_(node), path_(std::move(path)), journal_(std::move(journal)) {
    idle_.set();
}

SidecarStore::~SidecarStore() {
    node_.dirty_bitmaps().set_change_listener({});
}

Status SidecarStore::attach(Node& node, const std::string& path, SidecarOptions options) {
    if (node.external_bitmap_store())
        return make_error(fmt::format("Node '{}' already has a bitmap sidecar", node.name()));
    if (node.supports_persistent_bitmaps())
        return make_error(fmt::format("Node '{}' keeps persistent bitmaps in its image ({}); a "
                                      "sidecar is for nodes that cannot (raw files, block "
                                      "devices)",
                                      node.name(), node.driver()));
    const bool exists = ::access(path.c_str(), F_OK) == 0;
    if (!exists && errno != ENOENT)
        return make_error(
            fmt::format("Cannot access bitmap sidecar '{}': {}", path, std::strerror(errno)));
    SidecarContent content;
    content.clean = true;
    if (exists) {
        auto read = read_sidecar(path);
        if (!read) return read.error();
        content = std::move(*read);
        if (content.disk_size != node.size())
            return make_error(fmt::format("Bitmap sidecar '{}' is for a disk of {} bytes, node "
                                          "'{}' has {}",
                                          path, content.disk_size, node.name(), node.size()));
        for (const auto& e : content.bitmaps)
            if (node.dirty_bitmaps().find(e.name))
                return make_error("Bitmap already exists: " + e.name);
    }
    // Saved clean, but the disk file changed since (written while fleeced was not running,
    // or by this daemon before the sidecar was attached): those writes are in no bitmap.
    bool changed_offline = false;
    if (content.clean && content.identity) {
        const std::optional<DiskIdentity> now = node.disk_identity();
        if (now && *now != *content.identity) {
            changed_offline = true;
            log::warn("bitmap sidecar '{}': the disk changed after the bitmaps were saved (size "
                      "{} -> {}, mtime {} -> {} ns), so they may miss writes and load "
                      "inconsistent",
                      path, content.identity->size, now->size, content.identity->mtime_ns,
                      now->mtime_ns);
        }
    }
    // Left in use by a process that died: with a journal, the saved bits plus the regions it
    // marked cover every change since the save; without one (or a journal that cannot vouch
    // for that save) the bitmaps may miss changes and load inconsistent.
    std::optional<ChangeJournal::Recovered> recovered;
    std::uint64_t last_epoch = content.journal_epoch;
    if (!content.clean && content.write_ahead) {
        auto r = ChangeJournal::recover(journal_path(path), node.size(), content.journal_epoch);
        if (r) {
            last_epoch = std::max(last_epoch, r->max_epoch);
            recovered = std::move(*r);
        } else {
            log::warn("bitmap sidecar '{}': {}; its bitmaps load inconsistent", path,
                      r.error().message);
        }
    }
    // The new journal first: if it cannot be made, nothing on disk changed. (A crash between
    // it and the sidecar below leaves an old in-use sidecar whose epoch the new journal does
    // not hold: inconsistent, never a silent miss.)
    const std::uint64_t epoch = last_epoch + 1;
    std::unique_ptr<ChangeJournal> journal;
    if (options.write_ahead) {
        auto j = ChangeJournal::create(journal_path(path), node.size(), options.journal_granularity,
                                       epoch);
        if (!j) return j.error();
        journal = std::move(*j);
    }
    std::vector<DirtyBitmap*> added;
    for (auto& e : content.bitmaps) {
        auto b = node.dirty_bitmaps().add(e.name, node.size(), e.granularity);
        if (!b) {
            for (DirtyBitmap* a : added)
                node.dirty_bitmaps().remove(a);
            return b.error();
        }
        added.push_back(*b);
        Bitmap bits((*b)->bits().size());
        bits.load_words(e.words);
        (*b)->restore_bits(std::move(bits));
        // A bitmap that was recording took the changes the journal marked.
        if (recovered && e.enabled && !e.inconsistent) {
            Bitmap regions(div_round_up(node.size(), recovered->granularity));
            regions.load_words(recovered->words);
            (*b)->merge_bits(regions, recovered->granularity);
        }
        (*b)->set_persistent(true);
        (*b)->set_enabled(e.enabled);
        (*b)->set_inconsistent(e.inconsistent || changed_offline || !(content.clean || recovered));
    }
    // In use from now on, durably, before the node takes another write.
    if (Status st = write_sidecar(path, node.size(), node.dirty_bitmaps(),
                                  SidecarState{false, options.write_ahead, epoch, std::nullopt});
        !st) {
        for (DirtyBitmap* a : added)
            node.dirty_bitmaps().remove(a);
        return st;
    }
    if (!options.write_ahead) ::unlink(journal_path(path).c_str()); // named by no sidecar now
    auto* store = new SidecarStore(node, path, std::move(journal));
    store->sidecar_epoch_ = epoch;
    if (store->journal_)
        store->in_flight_.assign(div_round_up(node.size(), options.journal_granularity), 0);
    node.set_external_bitmap_store(std::unique_ptr<ExternalBitmapStore>(store));
    node.dirty_bitmaps().set_change_listener([store] { store->bitmaps_changed(); });
    return {};
}

bool SidecarStore::change_starts(std::uint64_t offset, std::uint64_t length) {
    if (!journal_) return true;
    const std::uint64_t g = journal_->granularity();
    for (std::uint64_t r = offset / g; r <= (offset + length - 1) / g; ++r)
        ++in_flight_[r];
    return degraded_ || journal_->covers(offset, length);
}

void SidecarStore::change_ends(std::uint64_t offset, std::uint64_t length) {
    if (!journal_) return;
    const std::uint64_t g = journal_->granularity();
    for (std::uint64_t r = offset / g; r <= (offset + length - 1) / g; ++r)
        --in_flight_[r];
}

io::Task<std::error_code> SidecarStore::cover(std::uint64_t offset, std::uint64_t length) {
    // The journal stays alive after a fallback: other changes may still wait inside it.
    const std::error_code ec = co_await journal_->cover(offset, length);
    if (!ec || degraded_) co_return std::error_code{};
    const bool fell_back = co_await fall_back(ec);
    if (fell_back) co_return std::error_code{};
    co_return ec;
}

void SidecarStore::bitmaps_changed() {
    ++changes_;
    if (saving_ || closing_) return;
    saving_ = true;
    idle_.reset();
    io::EventLoop::current().spawn(save_loop());
}

io::Task<Status> SidecarStore::save(SidecarState state) {
    std::vector<unsigned char> bytes = encode_sidecar(node_.size(), node_.dirty_bitmaps(), state);
    const Status st = co_await write(std::move(bytes));
    co_return st;
}

io::Task<Status> SidecarStore::write(std::vector<unsigned char> bytes) {
    // The file work runs on the offload pool; the job is a local (GCC 12 mishandles a
    // capturing lambda temporary inside a co_await expression).
    auto job = [path = path_, bytes = std::move(bytes)] { return write_file_durably(path, bytes); };
    const Status st = co_await io::offload(std::move(job));
    co_return st;
}

// A checkpoint per round (block/change_journal.hpp): prepare the journal's next epoch, take
// the bitmaps and switch epochs in one step, save the sidecar naming the new epoch.
io::Task<void> SidecarStore::save_loop() {
    while (saved_ < changes_ && !closing_) {
        const std::uint64_t seen = changes_;
        io::AsyncMutex::Guard guard = co_await file_.lock();
        const bool advance = journal_ && !degraded_ && sidecar_epoch_ == journal_->epoch();
        if (advance) {
            const std::error_code ec = co_await journal_->prepare_next_epoch();
            if (ec) {
                guard.unlock();
                co_await fall_back(ec); // the next round saves in the mode it leaves
                continue;
            }
            journal_->switch_epoch();
            // Changes in flight now may have been cleared from the bitmaps before they
            // reach the disk (and recorded again only after): the new epoch holds them,
            // durably before the sidecar that drops the old epoch.
            const std::uint64_t g = journal_->granularity();
            for (std::uint64_t r = 0; r < in_flight_.size(); ++r)
                if (in_flight_[r] > 0) journal_->mark(r * g, g);
        }
        // No suspension since the switch: this is the bitmaps at the epoch boundary. After
        // a failed save (no switch) it is a later state, complete for the current epoch.
        const bool write_ahead = journal_ && !degraded_;
        const SidecarState state{false, write_ahead, write_ahead ? journal_->epoch() : 0,
                                 std::nullopt};
        std::vector<unsigned char> bytes =
            encode_sidecar(node_.size(), node_.dirty_bitmaps(), state);
        if (advance) {
            const std::error_code ec = co_await journal_->wait_durable();
            if (ec) {
                guard.unlock();
                co_await fall_back(ec);
                continue;
            }
        }
        const Status st = co_await write(std::move(bytes));
        if (!st) {
            log::error("bitmap sidecar '{}': {} (the previous save stays valid)", path_,
                       st.error().message);
            ++failed_saves_;
            saved_queue_.notify_all();
            break;
        }
        sidecar_epoch_ = state.journal_epoch;
        saved_ = seen;
        ++saves_;
        saved_queue_.notify_all();
    }
    saving_ = false;
    idle_.set();
}

io::Task<bool> SidecarStore::fall_back(std::error_code why) {
    io::AsyncMutex::Guard guard = co_await file_.lock();
    if (degraded_) co_return true;
    log::error("bitmap sidecar '{}': the change journal failed ({}); falling back to "
               "clean-shutdown mode: after a crash the bitmaps load inconsistent",
               path_, why.message());
    // (GCC 12: no braced initialisers inside a co_await expression.)
    const SidecarState in_use{false, false, 0, std::nullopt};
    const Status st = co_await save(in_use);
    if (!st) {
        log::error("bitmap sidecar '{}': {}; writes to node '{}' fail until it can be saved", path_,
                   st.error().message, node_.name());
        co_return false;
    }
    degraded_ = true;
    co_return true;
}

io::Task<void> SidecarStore::wait_saved() {
    const std::uint64_t target = changes_;
    const std::uint64_t failures = failed_saves_;
    if (saved_ < target && !saving_ && !closing_) {
        // A save failed earlier and nothing has changed since: try again.
        saving_ = true;
        idle_.reset();
        io::EventLoop::current().spawn(save_loop());
    }
    while (saved_ < target && failed_saves_ == failures && !closing_)
        co_await saved_queue_.wait();
}

io::Task<void> SidecarStore::close() {
    closing_ = true;
    saved_queue_.notify_all();
    co_await idle_.wait();
    if (journal_) co_await journal_->close();
    io::AsyncMutex::Guard guard = co_await file_.lock();
    // The node is drained: these are the final bitmaps, and the disk's size and mtime as
    // they are now (checked at the next attach).
    const SidecarState clean{true, false, 0, node_.disk_identity()};
    const Status st = co_await save(clean);
    if (!st)
        log::error("bitmap sidecar '{}': {}; its bitmaps load inconsistent at the next start",
                   path_, st.error().message);
    node_.dirty_bitmaps().set_change_listener({});
}

SidecarInfo SidecarStore::info() const {
    SidecarInfo i;
    i.path = path_;
    i.write_ahead = journal_ != nullptr;
    i.degraded = degraded_;
    if (journal_) i.journal = journal_->stats();
    i.saves = saves_;
    return i;
}

} // namespace fleece::block
