#include "block/change_journal.hpp"

#include "io/file_io.hpp"
#include "util/align.hpp"
#include "util/blocking_io.hpp"
#include "util/endian.hpp"
#include "util/log.hpp"

#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <unistd.h>
#include <utility>

namespace fleece::block {

namespace {

constexpr std::uint64_t page_size = 4096;
constexpr std::uint64_t bits_per_page = page_size * 8;
constexpr std::uint64_t words_per_page = page_size / 8;
constexpr char magic[8] = {'F', 'L', 'E', 'E', 'C', 'E', 'W', 'J'};
constexpr std::uint32_t version = 1;
constexpr std::size_t header_bytes = 8 + 4 + 4 + 8 + 8 + 8; // then the u64 checksum

std::uint64_t fnv1a(const unsigned char* p, std::size_t n) {
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (std::size_t i = 0; i < n; ++i) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

std::vector<unsigned char> header_page(std::uint64_t epoch, std::uint64_t disk_size,
                                       std::uint64_t granularity) {
    std::vector<unsigned char> page(page_size, 0);
    std::memcpy(page.data(), magic, sizeof magic);
    store_le32(page.data() + 8, version);
    store_le64(page.data() + 16, epoch);
    store_le64(page.data() + 24, disk_size);
    store_le64(page.data() + 32, granularity);
    store_le64(page.data() + header_bytes, fnv1a(page.data(), header_bytes));
    return page;
}

struct SlotHeader {
    std::uint64_t epoch = 0, disk_size = 0, granularity = 0;
};

std::optional<SlotHeader> parse_header(const unsigned char* p) {
    if (std::memcmp(p, magic, sizeof magic) != 0 || load_le32(p + 8) != version) return {};
    if (load_le64(p + header_bytes) != fnv1a(p, header_bytes)) return {};
    SlotHeader h{load_le64(p + 16), load_le64(p + 24), load_le64(p + 32)};
    if (h.granularity < 512 || !is_power_of_two(h.granularity)) return {};
    return h;
}

std::uint64_t region_count(std::uint64_t disk_size, std::uint64_t granularity) {
    return div_round_up(disk_size, granularity);
}
std::uint64_t page_count(std::uint64_t regions) {
    return std::max<std::uint64_t>(1, div_round_up(regions, bits_per_page));
}
std::uint64_t slot_span(std::uint64_t pages) {
    return page_size * (1 + pages);
}

Error errno_error(const std::string& what, const std::string& path) {
    return make_error(fmt::format("{} '{}': {}", what, path, std::strerror(errno)));
}

} // namespace

ChangeJournal::ChangeJournal(int fd, std::uint64_t disk_size, std::uint64_t granularity,
                             std::uint64_t epoch)
    : fd_(fd), disk_size_(disk_size), granularity_(granularity),
      regions_(region_count(disk_size, granularity)), pages_(page_count(regions_)), epoch_(epoch),
      image_(pages_ * words_per_page, 0), durable_(pages_ * words_per_page, 0),
      page_dirty_(pages_, false), page_sync_no_(pages_, 0) {
    idle_.set();
}

ChangeJournal::~ChangeJournal() {
    ::close(fd_);
}

Result<std::unique_ptr<ChangeJournal>> ChangeJournal::create(const std::string& path,
                                                             std::uint64_t disk_size,
                                                             std::uint64_t granularity,
                                                             std::uint64_t epoch) {
    if (granularity < 512 || !is_power_of_two(granularity))
        return make_error(fmt::format("Journal granularity {} is not a power of two of at "
                                      "least 512 bytes",
                                      granularity));
    const std::uint64_t pages = page_count(region_count(disk_size, granularity));
    // Written whole to a temporary file and renamed, so the old journal stays intact until
    // the new one is complete; every page exists, so marks later overwrite in place and
    // their syncs allocate nothing.
    std::vector<unsigned char> image(2 * slot_span(pages), 0);
    const auto h0 = header_page(epoch, disk_size, granularity);
    std::memcpy(image.data(), h0.data(), h0.size()); // slot 1 stays all zero: no header
    int fd = -1;
    if (Status st = replace_file_durably(path, image.data(), image.size(), &fd); !st)
        return make_error("Change journal: " + st.error().message);
    return std::unique_ptr<ChangeJournal>(new ChangeJournal(fd, disk_size, granularity, epoch));
}

Result<ChangeJournal::Recovered>
ChangeJournal::recover(const std::string& path, std::uint64_t disk_size, std::uint64_t epoch) {
    const std::optional<std::string> file = read_whole_file(path);
    if (!file) return errno_error("Cannot read change journal", path);
    const auto* data = reinterpret_cast<const unsigned char*>(file->data());
    // Two slots of equal size; either header may be torn (its slot was being prepared) or
    // absent (never used), so the geometry comes from the file size and any intact header.
    const std::uint64_t span = file->size() / 2;
    if (file->size() < 2 * page_size || file->size() % (2 * page_size) != 0)
        return make_error(fmt::format("Change journal '{}' is truncated", path));
    Recovered out;
    for (unsigned slot = 0; slot < 2 && out.granularity == 0; ++slot) {
        const auto h = parse_header(data + slot * span);
        if (!h) continue;
        if (h->disk_size != disk_size)
            return make_error(fmt::format("Change journal '{}' is for a disk of {} bytes, not {}",
                                          path, h->disk_size, disk_size));
        out.granularity = h->granularity;
    }
    if (out.granularity == 0)
        return make_error(fmt::format("Change journal '{}' is damaged", path));
    const std::uint64_t regions = region_count(disk_size, out.granularity);
    if (slot_span(page_count(regions)) != span)
        return make_error(
            fmt::format("Change journal '{}' does not match a disk of {} bytes", path, disk_size));
    out.words.assign(div_round_up(regions, 64), 0);
    bool holds_epoch = false;
    for (unsigned slot = 0; slot < 2; ++slot) {
        const unsigned char* base = data + slot * span;
        auto h = parse_header(base);
        if (!h || h->disk_size != disk_size || h->granularity != out.granularity) continue;
        out.max_epoch = std::max(out.max_epoch, h->epoch);
        if (h->epoch < epoch) continue;
        holds_epoch = holds_epoch || h->epoch == epoch;
        for (std::size_t w = 0; w < out.words.size(); ++w)
            out.words[w] |= load_le64(base + page_size + 8 * w);
    }
    if (!holds_epoch)
        return make_error(
            fmt::format("Change journal '{}' holds no intact record of epoch {}", path, epoch));
    // Bits past the disk's last region are not regions.
    if (regions % 64) out.words.back() &= (1ull << (regions % 64)) - 1;
    return out;
}

std::uint64_t ChangeJournal::slot_offset(unsigned slot) const {
    return slot * slot_span(pages_);
}

bool ChangeJournal::covers(std::uint64_t offset, std::uint64_t length) const {
    if (length == 0) return true;
    const std::uint64_t last = std::min(offset + length - 1, disk_size_ - 1) / granularity_;
    for (std::uint64_t r = offset / granularity_; r <= last; ++r)
        if (!(durable_[r / 64] >> (r % 64) & 1)) return false;
    return true;
}

ChangeJournal::PageWrite ChangeJournal::page_image(std::uint64_t page) const {
    PageWrite w{slot_offset(slot_) + page_size * (1 + page), epoch_, page, {}};
    w.words.assign(image_.begin() + static_cast<std::ptrdiff_t>(page * words_per_page),
                   image_.begin() + static_cast<std::ptrdiff_t>((page + 1) * words_per_page));
    return w;
}

io::Task<std::error_code> ChangeJournal::cover(std::uint64_t offset, std::uint64_t length) {
    if (failed_) co_return failed_;
    ++stats_.waits;
    const std::uint64_t need = mark_regions(offset, length);
    co_return co_await wait_for_sync(need);
}

void ChangeJournal::mark(std::uint64_t offset, std::uint64_t length) {
    if (!failed_) mark_regions(offset, length);
}

io::Task<std::error_code> ChangeJournal::wait_durable() {
    // Every mark is either picked by a sync already started or on a dirty page (carried or
    // not) that the next one writes.
    const bool pending = !dirty_pages_.empty() || !carried_.empty();
    co_return co_await wait_for_sync(syncs_started_ + (pending ? 1 : 0));
}

std::uint64_t ChangeJournal::mark_regions(std::uint64_t offset, std::uint64_t length) {
    // The sync a change needs: the next one for a region marked now, else the one that
    // writes (or wrote) the latest image of the region's page.
    std::uint64_t need = 0;
    const std::uint64_t last = std::min(offset + length - 1, disk_size_ - 1) / granularity_;
    for (std::uint64_t r = offset / granularity_; r <= last; ++r) {
        const std::uint64_t page = r / bits_per_page;
        std::uint64_t& word = image_[r / 64];
        const std::uint64_t bit = 1ull << (r % 64);
        if (!(word & bit)) {
            word |= bit;
            ++stats_.marked;
            if (!page_dirty_[page]) {
                page_dirty_[page] = true;
                dirty_pages_.push_back(page);
            }
            page_sync_no_[page] = syncs_started_ + 1;
        }
        need = std::max(need, page_sync_no_[page]);
    }
    if (!syncing_ && (!dirty_pages_.empty() || !carried_.empty())) {
        syncing_ = true;
        idle_.reset();
        io::EventLoop::current().spawn(sync_loop());
    }
    return need;
}

io::Task<std::error_code> ChangeJournal::wait_for_sync(std::uint64_t no) {
    while (syncs_done_ < no && !failed_)
        co_await synced_.wait();
    co_return failed_;
}

io::Task<void> ChangeJournal::sync_loop() {
    while (!failed_ && (!dirty_pages_.empty() || !carried_.empty())) {
        const std::uint64_t no = ++syncs_started_;
        std::vector<PageWrite> writes = std::move(carried_);
        carried_.clear();
        for (std::uint64_t page : dirty_pages_) {
            writes.push_back(page_image(page));
            page_dirty_[page] = false;
        }
        dirty_pages_.clear();
        std::error_code ec = std::exchange(injected_, {});
        for (const PageWrite& w : writes) {
            if (ec) break;
            // Little-endian on disk whatever the host, as recover() reads it.
            std::vector<unsigned char> le(8 * w.words.size());
            for (std::size_t i = 0; i < w.words.size(); ++i)
                store_le64(le.data() + 8 * i, w.words[i]);
            const auto bytes = std::as_bytes(std::span(le));
            const std::int64_t n = co_await io::pwrite_full(fd_, bytes, w.file_offset);
            if (n < 0) ec = std::error_code(static_cast<int>(-n), std::generic_category());
        }
        if (!ec) {
            const int r = co_await io::fdatasync(fd_);
            if (r < 0) ec = std::error_code(-r, std::generic_category());
        }
        ++stats_.syncs;
        if (ec) {
            log::error("change journal: {}: changes of the disk can no longer be vouched for",
                       ec.message());
            failed_ = ec;
        } else {
            for (const PageWrite& w : writes) {
                if (w.epoch != epoch_) continue; // an earlier epoch's slot
                for (std::uint64_t i = 0; i < words_per_page; ++i)
                    durable_[w.page * words_per_page + i] |= w.words[i];
            }
        }
        syncs_done_ = no;
        synced_.notify_all();
    }
    syncing_ = false;
    idle_.set();
}

io::Task<std::error_code> ChangeJournal::prepare_next_epoch() {
    if (failed_) co_return failed_;
    const unsigned next = 1 - slot_;
    std::vector<unsigned char> slot(slot_span(pages_), 0);
    const auto h = header_page(epoch_ + 1, disk_size_, granularity_);
    std::memcpy(slot.data(), h.data(), h.size());
    const std::int64_t n =
        co_await io::pwrite_full(fd_, std::as_bytes(std::span(slot)), slot_offset(next));
    if (n < 0) co_return std::error_code(static_cast<int>(-n), std::generic_category());
    const int r = co_await io::fdatasync(fd_);
    if (r < 0) co_return std::error_code(-r, std::generic_category());
    next_prepared_ = true;
    co_return std::error_code{};
}

void ChangeJournal::switch_epoch() {
    FLEECE_ASSERT(next_prepared_);
    next_prepared_ = false;
    // Marks not yet picked by a sync still matter until the sidecar of the new epoch is
    // durable: the next sync writes them to the old slot.
    for (std::uint64_t page : dirty_pages_) {
        carried_.push_back(page_image(page));
        page_dirty_[page] = false;
    }
    dirty_pages_.clear();
    slot_ = 1 - slot_;
    ++epoch_;
    std::fill(image_.begin(), image_.end(), 0);
    std::fill(durable_.begin(), durable_.end(), 0);
    if (!carried_.empty() && !syncing_) {
        syncing_ = true;
        idle_.reset();
        io::EventLoop::current().spawn(sync_loop());
    }
}

ChangeJournalStats ChangeJournal::stats() const {
    ChangeJournalStats s = stats_;
    s.epoch = epoch_;
    return s;
}

io::Task<void> ChangeJournal::close() {
    co_await idle_.wait();
}

} // namespace fleece::block
