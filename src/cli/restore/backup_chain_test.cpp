// Chain verification of `fleece restore` on images made with the qcow2 driver's tools.

#include "cli/restore/backup_chain.hpp"
#include "nodes/qcow2/qcow2_tools.hpp"

#include <cstdlib>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

namespace fleece::cli {
namespace {

constexpr std::uint64_t MiB = 1 << 20;

class BackupChainTest : public ::testing::Test {
  protected:
    void SetUp() override {
        std::string tmpl = ::testing::TempDir() + "/fleece_chain_XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
        dir_ = tmpl;
        const int fd = ::open(path("full.raw").c_str(), O_CREAT | O_WRONLY, 0600);
        ASSERT_GE(fd, 0);
        ASSERT_EQ(::ftruncate(fd, 4 * MiB), 0);
        ::close(fd);
        overlay("inc1.qcow2", "full.raw", "raw");
        overlay("inc2.qcow2", "inc1.qcow2", "qcow2");
    }
    void TearDown() override {
        const std::string cmd = "rm -rf '" + dir_ + "'";
        ASSERT_EQ(std::system(cmd.c_str()), 0);
    }
    std::string path(const std::string& name) const { return dir_ + "/" + name; }
    void overlay(const std::string& name, const std::string& backing, const std::string& format,
                 std::uint64_t size = 4 * MiB) {
        nodes::qcow2::CreateOptions o;
        o.size = size;
        o.backing_file = backing;
        o.backing_format = format;
        ASSERT_TRUE(nodes::qcow2::create_image(path(name), o));
    }
    template <class F> std::string error_of(F&& f) {
        try {
            f();
        } catch (const ChainError& e) {
            return e.what();
        }
        return "";
    }
    std::string dir_;
};

TEST_F(BackupChainTest, WalksFromTheNewestToTheFullBackup) {
    const auto chain = walk_chain(path("inc2.qcow2"));
    ASSERT_EQ(chain.size(), 3u);
    EXPECT_EQ(chain[0].path, path("full.raw"));
    EXPECT_EQ(chain[0].format, "raw");
    EXPECT_EQ(chain[1].path, path("inc1.qcow2"));
    EXPECT_EQ(chain[2].format, "qcow2");
    EXPECT_EQ(chain[2].size, 4 * MiB);
    EXPECT_EQ(walk_chain(path("full.raw")).size(), 1u);
    EXPECT_EQ(check_chain_list({path("full.raw"), path("inc1.qcow2"), path("inc2.qcow2")}).size(),
              3u);
}

TEST_F(BackupChainTest, NamesTheBrokenLink) {
    ASSERT_EQ(::unlink(path("inc1.qcow2").c_str()), 0);
    const std::string e = error_of([&] { walk_chain(path("inc2.qcow2")); });
    EXPECT_NE(e.find("inc2.qcow2' is an increment on top of"), std::string::npos) << e;
    EXPECT_NE(e.find("inc1.qcow2', which is missing"), std::string::npos) << e;
}

TEST_F(BackupChainTest, ListsMustBeOldestFirstWithoutGaps) {
    EXPECT_NE(error_of([&] {
                  check_chain_list({path("full.raw"), path("inc2.qcow2")});
              }).find("not on top of the backup listed before it"),
              std::string::npos);
    EXPECT_NE(error_of([&] {
                  check_chain_list({path("inc1.qcow2"), path("full.raw")});
              }).find("not a full backup"),
              std::string::npos);
    EXPECT_NE(error_of([&] {
                  check_chain_list({path("full.raw"), path("inc1.qcow2"), path("inc1.qcow2")});
              }).find("listed twice"),
              std::string::npos);
}

TEST_F(BackupChainTest, SizeAndFormatMismatches) {
    overlay("big.qcow2", "full.raw", "raw", 8 * MiB);
    EXPECT_NE(error_of([&] { walk_chain(path("big.qcow2")); }).find("8388608 bytes"),
              std::string::npos);
    overlay("fmt.qcow2", "full.raw", "qcow2");
    EXPECT_NE(error_of([&] { walk_chain(path("fmt.qcow2")); }).find("in qcow2 format"),
              std::string::npos);
}

} // namespace
} // namespace fleece::cli
