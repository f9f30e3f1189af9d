// Simulation of the write-ahead bitmap sidecar (block/bitmap_sidecar_store.hpp) against
// kill -9: writers change a MemoryNode with reordered completions while a controller
// clears the bitmap, freezes it for a "backup" and ends that backup, and takes crash images
// (the sidecar and journal files as another process would find them) at random moments.
// Every image must load a consistent bitmap holding every cluster whose data may have
// reached the disk since the bitmap last let it go: a single missing cluster is an
// incremental backup that silently misses a change.

#include "block/bitmap_sidecar.hpp"
#include "block/bitmap_sidecar_store.hpp"
#include "io/event_loop.hpp"
#include "nodes/testing/memory_node.hpp"
#include "nodes/testing/sim_seeds.hpp"

#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <map>
#include <random>
#include <sstream>
#include <unistd.h>

namespace fleece::nodes {
namespace {

namespace fs = std::filesystem;
constexpr std::uint64_t K64 = 64 * 1024;
constexpr std::uint64_t MiB = 1024 * 1024;
constexpr std::uint64_t disk_size = 32 * MiB;
constexpr std::uint64_t clusters = disk_size / K64;

std::string slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

void spill(const std::string& path, const std::string& bytes) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << bytes;
}

void set_clusters(Bitmap& b, std::uint64_t offset, std::uint64_t length) {
    b.set_range(offset / K64, (offset + length - 1) / K64 - offset / K64 + 1);
}

// A node of the disk's size without data, to load crash images on (a MemoryNode would
// allocate the whole disk per image).
class BitmapsOnlyNode final : public block::Node {
  public:
    BitmapsOnlyNode() : Node("check", "bitmaps-only") { set_size(disk_size); }

  protected:
    io::Task<std::error_code> do_read(std::uint64_t, std::span<std::byte>,
                                      block::ReqFlags) override {
        co_return std::error_code{};
    }
    io::Task<std::error_code> do_write(std::uint64_t, std::span<const std::byte>,
                                       block::ReqFlags) override {
        co_return std::error_code{};
    }
    io::Task<std::error_code> do_flush() override { co_return std::error_code{}; }
};

struct CrashImage {
    std::string sidecar, journal;
    Bitmap must; // clusters the loaded bitmap has to hold
};

class Sim {
  public:
    Sim(std::uint64_t seed, std::uint64_t journal_granularity, fs::path dir)
        : seed_(seed), granularity_(journal_granularity), dir_(std::move(dir)),
          disk_("disk", disk_size, K64), rng_(seed) {
        disk_.set_random_delay(seed, 6);
        // The shadow: what may be on the disk since the bitmap last let it go.
        disk_.on_change([this](std::uint64_t offset, std::uint64_t length) {
            set_clusters(frozen_ ? shadow_succ_ : shadow_, offset, length);
            reached_.insert({offset, length});
        });
    }

    std::string sidecar() const { return (dir_ / "disk.bitmaps").string(); }

    io::Task<void> run() {
        block::SidecarOptions options{true, granularity_};
        Status st = block::SidecarStore::attach(disk_, sidecar(), options);
        EXPECT_TRUE(st) << st.error().message;
        if (!st) co_return;
        bitmap_ = *disk_.dirty_bitmaps().add("b", disk_size, K64);
        bitmap_->set_persistent(true);
        co_await disk_.external_bitmap_store()->wait_saved();
        for (int i = 0; i < writers; ++i)
            io::EventLoop::current().spawn(writer(i));
        while (writers_done_ < writers) {
            const unsigned turns = static_cast<unsigned>(rng_() % 40);
            for (unsigned t = 0; t < turns; ++t)
                co_await io::EventLoop::current().yield();
            act();
            if (rng_() % 8 == 0) co_await disk_.external_bitmap_store()->wait_saved();
        }
        take_image();
        co_await disk_.external_bitmap_store()->close();
        take_image(); // the clean save
    }

    std::vector<CrashImage>& images() { return images_; }

  private:
    static constexpr int writers = 4;
    static constexpr int ops_per_writer = 120;

    // Clusters of the changes that reached the driver and did not complete yet: they may
    // still land on the disk after a clear or a backup's end.
    Bitmap in_flight() const {
        Bitmap b(clusters);
        for (const auto& [offset, length] : reached_)
            set_clusters(b, offset, length);
        return b;
    }

    io::Task<void> writer(int id) {
        std::mt19937_64 rng(seed_ * 131 + static_cast<std::uint64_t>(id));
        std::vector<std::byte> buf(256 * 1024, std::byte{0x5a});
        for (int i = 0; i < ops_per_writer; ++i) {
            const std::uint64_t length = 512 * (1 + rng() % 512);
            const std::uint64_t offset = (rng() % ((disk_size - length) / 512)) * 512;
            const unsigned kind = static_cast<unsigned>(rng() % 10);
            const std::span<const std::byte> data = std::span(buf).first(length);
            std::error_code ec;
            if (kind < 7)
                ec = co_await disk_.write(offset, data, 0);
            else if (kind < 9)
                ec = co_await disk_.write_zeroes(offset, length, 0);
            else
                ec = co_await disk_.discard(offset, length);
            EXPECT_FALSE(ec) << ec.message();
            auto it = reached_.find({offset, length});
            if (it != reached_.end()) reached_.erase(it);
            // Besides the controller's images (how many depends on how fast the journal's
            // real syncs complete), a fixed number taken here, with other writes in flight.
            if (i % 40 == 39) take_image();
        }
        ++writers_done_;
    }

    void act() {
        const unsigned what = static_cast<unsigned>(rng_() % 10);
        if (what < 5) {
            take_image();
        } else if (what < 7) {
            if (bitmap_->frozen()) return;
            bitmap_->clear(); // block-dirty-bitmap-clear
            shadow_ = in_flight();
        } else if (what < 8) {
            if (bitmap_->frozen()) return;
            bitmap_->create_successor(); // a backup starts
            frozen_ = true;
        } else {
            if (!bitmap_->frozen()) return;
            frozen_ = false;
            if (rng_() % 3) {
                bitmap_->abdicate(); // the backup succeeded
                shadow_ = shadow_succ_;
                shadow_.merge(in_flight());
            } else {
                bitmap_->reclaim(); // it failed
                shadow_.merge(shadow_succ_);
            }
            shadow_succ_ = Bitmap(clusters);
        }
    }

    void take_image() {
        CrashImage image{slurp(sidecar()), slurp(sidecar() + ".journal"), shadow_};
        image.must.merge(shadow_succ_);
        images_.push_back(std::move(image));
    }

    std::uint64_t seed_;
    std::uint64_t granularity_;
    fs::path dir_;
    MemoryNode disk_;
    std::mt19937_64 rng_;
    block::DirtyBitmap* bitmap_ = nullptr;
    bool frozen_ = false;
    Bitmap shadow_{clusters}, shadow_succ_{clusters};
    std::multiset<std::pair<std::uint64_t, std::uint64_t>> reached_;
    int writers_done_ = 0;
    std::vector<CrashImage> images_;
};

// Loads a crash image on a fresh node and checks the bitmap; returns false on a miss.
bool check_image(const CrashImage& image, const fs::path& dir, std::uint64_t seed,
                 std::size_t index) {
    const std::string path = (dir / "check.bitmaps").string();
    spill(path, image.sidecar);
    spill(path + ".journal", image.journal);
    BitmapsOnlyNode disk;
    const block::SidecarOptions options{true, block::default_journal_granularity};
    Status st = block::SidecarStore::attach(disk, path, options);
    if (!st) {
        ADD_FAILURE() << "seed " << seed << " image " << index << ": " << st.error().message;
        return false;
    }
    const block::DirtyBitmap* b = disk.dirty_bitmaps().find("b");
    if (!b) {
        // Only before the bitmap's first save (the first image is taken after it).
        ADD_FAILURE() << "seed " << seed << " image " << index << ": bitmap missing";
        return false;
    }
    if (b->inconsistent()) {
        ADD_FAILURE() << "seed " << seed << " image " << index << ": inconsistent";
        return false;
    }
    for (std::uint64_t c = 0; c < clusters; ++c)
        if (image.must.get(c) && !b->bits().get(c)) {
            ADD_FAILURE() << "seed " << seed << " image " << index << ": cluster " << c
                          << " changed on the disk but is clean in the bitmap";
            return false;
        }
    return true;
}

void run_seed(std::uint64_t seed, std::uint64_t granularity) {
    // On tmpfs where there is one: the simulation is about the order of marks, saves and
    // writes, and a thousand real fsyncs per seed would only make it slow.
    const fs::path base =
        fs::is_directory("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
    const fs::path dir =
        base / ("fleece-wa-sim-" + std::to_string(::getpid()) + "-" + std::to_string(seed));
    fs::create_directories(dir);
    std::vector<CrashImage> images;
    {
        io::EventLoop loop;
        Sim sim(seed, granularity, dir);
        loop.run_until_complete(sim.run());
        images = std::move(sim.images());
    }
    EXPECT_GT(images.size(), 5u);
    for (std::size_t i = 0; i < images.size(); ++i)
        if (!check_image(images[i], dir, seed, i)) break;
    fs::remove_all(dir);
}

TEST(SidecarWriteAheadSim, EveryCrashImageHoldsEveryChangeThatMayHaveReachedTheDisk) {
    // Journal regions of one cluster (exact) and of 1 MiB (16 clusters per region).
    const testing::SeedRange seeds = testing::sim_seeds({1, 24});
    for (std::uint64_t seed = seeds.first; seed < seeds.end() && !HasFailure(); ++seed)
        run_seed(seed, seed % 2 ? K64 : MiB);
}

// A journal that fails (a full disk): the store falls back to clean-shutdown mode durably
// and the guest's writes go on; while even the sidecar cannot be written, they fail.
struct JournalFailure {
    MemoryNode disk{"disk", disk_size, K64};
    std::string dir;
    std::string path() const { return dir + "/disk.bitmaps"; }

    io::Task<void> run() {
        const block::SidecarOptions options{true, block::default_journal_granularity};
        Status st = block::SidecarStore::attach(disk, path(), options);
        EXPECT_TRUE(st);
        if (!st) co_return;
        auto* store = dynamic_cast<block::SidecarStore*>(disk.external_bitmap_store());
        block::DirtyBitmap* b = *disk.dirty_bitmaps().add("b", disk_size, K64);
        b->set_persistent(true);
        co_await store->wait_saved();
        std::vector<std::byte> buf(4096, std::byte{1});

        // The sidecar cannot be written either (its directory is gone): writes fail.
        store->journal()->inject_failure(std::make_error_code(std::errc::no_space_on_device));
        std::filesystem::rename(dir, dir + ".away");
        std::error_code ec = co_await disk.write(0, buf, 0);
        EXPECT_EQ(ec, std::make_error_code(std::errc::no_space_on_device));
        EXPECT_EQ(disk.writes(), 0u) << "nothing may reach the disk unaccounted for";
        EXPECT_FALSE(store->info().degraded);

        // Once it can be saved, the store falls back and the write goes through.
        std::filesystem::rename(dir + ".away", dir);
        ec = co_await disk.write(MiB, buf, 0);
        EXPECT_FALSE(ec) << ec.message();
        EXPECT_EQ(disk.writes(), 1u);
        EXPECT_TRUE(store->info().degraded);
        auto content = block::read_sidecar(path());
        EXPECT_TRUE(content && !content->clean && !content->write_ahead)
            << "after a crash now the bitmap must load inconsistent";
        // Later writes no longer wait for the journal.
        const std::uint64_t syncs = store->journal()->stats().syncs;
        ec = co_await disk.write(9 * MiB, buf, 0);
        EXPECT_FALSE(ec);
        EXPECT_EQ(store->journal()->stats().syncs, syncs);
        co_await store->close();
        content = block::read_sidecar(path());
        EXPECT_TRUE(content && content->clean) << "a clean shutdown still saves it";
    }
};

TEST(SidecarWriteAhead, AFailingJournalFallsBackToCleanShutdownMode) {
    const fs::path dir =
        fs::temp_directory_path() / ("fleece-wa-fail-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    {
        io::EventLoop loop;
        JournalFailure t;
        t.dir = dir.string();
        loop.run_until_complete(t.run());
    }
    fs::remove_all(dir);
}

} // namespace
} // namespace fleece::nodes
