#include "block/change_journal.hpp"
#include "io/event_loop.hpp"

#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <unistd.h>
#include <vector>

namespace fleece::block {
namespace {

constexpr std::uint64_t MiB = 1024 * 1024;

std::string temp_path(const char* name) {
    return (std::filesystem::temp_directory_path() /
            (std::string("fleece-journal-") + std::to_string(::getpid()) + "-" + name))
        .string();
}

bool region_set(const ChangeJournal::Recovered& r, std::uint64_t region) {
    return (r.words[region / 64] >> (region % 64)) & 1;
}

struct CoverMany {
    ChangeJournal* journal;
    int done = 0;
    io::Task<void> one(std::uint64_t offset) {
        const std::error_code ec = co_await journal->cover(offset, 4096);
        EXPECT_FALSE(ec);
        ++done;
    }
    io::Task<void> run() {
        // 64 changes in 32 regions at once: one sync carries many marks.
        for (std::uint64_t i = 0; i < 64; ++i)
            io::EventLoop::current().spawn(one((i % 32) * MiB + i * 4096));
        while (done < 64)
            co_await io::EventLoop::current().yield();
    }
};

TEST(ChangeJournal, CoverIsDurableBeforeItReturnsAndSyncsAreShared) {
    const std::string path = temp_path("cover");
    io::EventLoop loop;
    auto j = ChangeJournal::create(path, 64 * MiB, MiB, 7);
    ASSERT_TRUE(j) << j.error().message;
    ChangeJournal& journal = **j;
    EXPECT_FALSE(journal.covers(0, 1));
    CoverMany many{&journal};
    loop.run_until_complete(many.run());
    const ChangeJournalStats s = journal.stats();
    EXPECT_EQ(s.marked, 32u);
    EXPECT_LT(s.syncs, 16u) << "marks made while a sync runs share the next one";
    EXPECT_TRUE(journal.covers(0, 32 * MiB));
    EXPECT_FALSE(journal.covers(32 * MiB, 1));
    // What another process finds after a crash now: the 32 regions, nothing else.
    auto r = ChangeJournal::recover(path, 64 * MiB, 7);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->granularity, MiB);
    for (std::uint64_t region = 0; region < 64; ++region)
        EXPECT_EQ(region_set(*r, region), region < 32) << region;
    loop.run_until_complete(journal.close());
    std::remove(path.c_str());
}

struct EpochSteps {
    ChangeJournal* journal;
    io::Task<void> run(const std::string& path) {
        EXPECT_FALSE(co_await journal->cover(0, 1));          // epoch 1, region 0
        EXPECT_FALSE(co_await journal->prepare_next_epoch()); // slot 1 = epoch 2, empty
        // A sidecar naming epoch 1 counts both slots; one naming 2 only the new one.
        journal->switch_epoch();
        EXPECT_FALSE(journal->covers(0, 1)) << "every epoch starts empty";
        EXPECT_FALSE(co_await journal->cover(5 * MiB, 1)); // epoch 2, region 5
        journal->mark(9 * MiB, 1);                         // marked without waiting
        EXPECT_FALSE(co_await journal->wait_durable());
        auto from1 = ChangeJournal::recover(path, 16 * MiB, 1);
        auto from2 = ChangeJournal::recover(path, 16 * MiB, 2);
        EXPECT_TRUE(from1 && from2);
        if (!from1 || !from2) co_return;
        EXPECT_TRUE(region_set(*from1, 0) && region_set(*from1, 5) && region_set(*from1, 9));
        EXPECT_FALSE(region_set(*from2, 0));
        EXPECT_TRUE(region_set(*from2, 5) && region_set(*from2, 9));
        EXPECT_EQ(from2->max_epoch, 2u);
        // Epoch 3 reuses slot 0: a sidecar still naming epoch 1 can no longer be vouched for.
        EXPECT_FALSE(co_await journal->prepare_next_epoch());
        journal->switch_epoch();
        EXPECT_FALSE(ChangeJournal::recover(path, 16 * MiB, 1));
        EXPECT_TRUE(ChangeJournal::recover(path, 16 * MiB, 2));
        // A torn header of the other slot (as if a crash hit its preparation) does not
        // hide the slot a sidecar of epoch 3 needs.
        {
            std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
            f.seekp(2 * 4096 + 20); // slot 1 (one header page, one bit page per slot)
            f.put('\x55');
        }
        EXPECT_TRUE(ChangeJournal::recover(path, 16 * MiB, 3));
        EXPECT_FALSE(ChangeJournal::recover(path, 16 * MiB, 2));
        co_await journal->close();
    }
};

TEST(ChangeJournal, EpochsHandOverWithoutAGap) {
    const std::string path = temp_path("epochs");
    io::EventLoop loop;
    auto j = ChangeJournal::create(path, 16 * MiB, MiB, 1);
    ASSERT_TRUE(j) << j.error().message;
    EpochSteps steps{j->get()};
    loop.run_until_complete(steps.run(path));
    std::remove(path.c_str());
}

struct CoverOne {
    ChangeJournal* journal;
    std::uint64_t offset;
    io::Task<void> run() {
        EXPECT_FALSE(co_await journal->cover(offset, 1));
        co_await journal->close();
    }
};

TEST(ChangeJournal, RegionBitsAreLittleEndianOnDisk) {
    // The file is read by recover() on whatever host comes next, and by tools: region r is
    // bit r % 8 of byte r / 8 of the slot's first bit page, independent of the host order.
    const std::string path = temp_path("layout");
    io::EventLoop loop;
    auto j = ChangeJournal::create(path, 256 * MiB, MiB, 1);
    ASSERT_TRUE(j) << j.error().message;
    CoverOne one{j->get(), 73 * MiB}; // region 73: byte 9, bit 1
    loop.run_until_complete(one.run());
    std::ifstream f(path, std::ios::binary);
    std::vector<char> page(4096);
    f.seekg(4096); // slot 0: a header page, then the bit page
    ASSERT_TRUE(f.read(page.data(), static_cast<std::streamsize>(page.size())));
    for (std::size_t i = 0; i < page.size(); ++i)
        EXPECT_EQ(static_cast<unsigned char>(page[i]), i == 9 ? 0x02 : 0x00) << "byte " << i;
    std::remove(path.c_str());
}

TEST(ChangeJournal, RecoveryRefusesWhatItCannotVouchFor) {
    const std::string path = temp_path("refuse");
    ASSERT_TRUE(ChangeJournal::create(path, 16 * MiB, MiB, 4));
    EXPECT_TRUE(ChangeJournal::recover(path, 16 * MiB, 4));
    // Marks of epoch 3 would be in a slot of epoch 3: without it nothing covers them.
    EXPECT_FALSE(ChangeJournal::recover(path, 16 * MiB, 3));
    auto newer = ChangeJournal::recover(path, 16 * MiB, 5);
    ASSERT_FALSE(newer);
    EXPECT_NE(newer.error().message.find("epoch 5"), std::string::npos) << newer.error().message;
    auto size = ChangeJournal::recover(path, 32 * MiB, 4);
    ASSERT_FALSE(size);
    EXPECT_NE(size.error().message.find("disk of 16777216 bytes"), std::string::npos);
    // Also when the other disk would need a journal of another size: the header says why.
    auto big = ChangeJournal::recover(path, 64ull << 30, 4);
    ASSERT_FALSE(big);
    EXPECT_NE(big.error().message.find("is for a disk of 16777216 bytes, not 68719476736"),
              std::string::npos)
        << big.error().message;
    // A torn header (a bit flipped in slot 0's first sector) voids the slot.
    {
        std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
        f.seekp(20);
        f.put('\x55');
    }
    EXPECT_FALSE(ChangeJournal::recover(path, 16 * MiB, 4));
    std::remove(path.c_str());
    auto missing = ChangeJournal::recover(path, 16 * MiB, 4);
    ASSERT_FALSE(missing);
    EXPECT_NE(missing.error().message.find("Cannot read change journal"), std::string::npos);
    EXPECT_FALSE(ChangeJournal::create(path, 16 * MiB, 1000, 1)) << "not a power of two";
}

} // namespace
} // namespace fleece::block
