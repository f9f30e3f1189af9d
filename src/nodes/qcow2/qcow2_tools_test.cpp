// Offline tools against QEMU's own tools: images we create must pass `qemu-img check`,
// and our check must agree with QEMU on images QEMU made.
#include "nodes/qcow2/qcow2_format.hpp"
#include "nodes/qcow2/qcow2_tools.hpp"
#include "nodes/test_support.hpp"

#include <cstdio>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <span>

namespace fleece::nodes::qcow2 {
namespace {

using testing::ScratchDir;

CreateOptions opts(std::uint64_t size, std::uint32_t cluster_size = 65536) {
    CreateOptions o;
    o.size = size;
    o.cluster_size = cluster_size;
    return o;
}

int run(const std::string& cmd) {
    return std::system((cmd + " >/dev/null 2>&1").c_str());
}

// Damages an image on purpose: overwrites `bytes` at `offset` of the file.
void overwrite(const std::string& path, long offset, std::span<const unsigned char> bytes) {
    FILE* f = std::fopen(path.c_str(), "r+b");
    ASSERT_NE(f, nullptr) << path;
    std::fseek(f, offset, SEEK_SET);
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
}

TEST(Qcow2Tools, CreatedImagesPassQemuCheck) {
    ScratchDir dir;
    for (std::uint32_t cs : {512u, 4096u, 65536u, 2u << 20}) {
        for (bool prealloc : {false, true}) {
            const std::string p = (dir.path() / fmt::format("c{}-{}.qcow2", cs, prealloc)).string();
            CreateOptions o = opts(64ull << 20, cs);
            o.preallocate_metadata = prealloc;
            ASSERT_TRUE(create_image(p, o).ok());
            EXPECT_EQ(run("qemu-img check -f qcow2 " + p), 0) << p;
            auto r = check_image(p, Repair::none);
            ASSERT_TRUE(r.ok()) << r.error().message;
            EXPECT_EQ(r->corruptions, 0u) << p;
            EXPECT_EQ(r->leaks, 0u) << p;
            auto info = read_image_info(p);
            ASSERT_TRUE(info.ok());
            EXPECT_EQ(info->cluster_size, cs);
            EXPECT_EQ(info->virtual_size, 64ull << 20);
            EXPECT_EQ(info->refcount_bits, 16u);
            EXPECT_EQ(info->version, 3u);
        }
    }
}

nlohmann::json qemu_info(const std::string& path) {
    auto j = nlohmann::json::parse(testing::command_output("qemu-img info --output=json " + path));
    for (const char* k : {"filename", "actual-size", "full-backing-filename"})
        j.erase(k);
    return j;
}

TEST(Qcow2Tools, QemuImgInfoSameAsForQemuImages) {
    ScratchDir dir;
    for (std::uint32_t cs : {4096u, 65536u}) {
        const std::string ours = (dir.path() / "ours.qcow2").string();
        const std::string theirs = (dir.path() / "theirs.qcow2").string();
        CreateOptions o = opts(100 << 20, cs);
        o.backing_file = "base.img";
        o.backing_format = "raw";
        ASSERT_TRUE(create_image(ours, o).ok());
        ASSERT_EQ(run(fmt::format("qemu-img create -f qcow2 -u -o cluster_size={} -b base.img "
                                  "-F raw {} 100M",
                                  cs, theirs)),
                  0);
        EXPECT_EQ(qemu_info(ours), qemu_info(theirs)) << cs;
    }
}

TEST(Qcow2Tools, BackingFileRecorded) {
    ScratchDir dir;
    const std::string base = (dir.path() / "base.qcow2").string();
    const std::string top = (dir.path() / "top.qcow2").string();
    ASSERT_TRUE(create_image(base, opts(1 << 20)).ok());
    CreateOptions o = opts(1 << 20);
    o.backing_file = "base.qcow2";
    o.backing_format = "qcow2";
    ASSERT_TRUE(create_image(top, o).ok());
    auto info = read_image_info(top);
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->backing_file, "base.qcow2");
    EXPECT_EQ(info->backing_format, "qcow2");
    EXPECT_EQ(run("qemu-img check " + top), 0);
    EXPECT_EQ(run("qemu-io -c 'read -P 0 0 1M' " + top), 0);
}

TEST(Qcow2Tools, CheckAgreesWithQemuOnQemuImages) {
    ScratchDir dir;
    const std::string p = (dir.path() / "q.qcow2").string();
    ASSERT_EQ(run("qemu-img create -f qcow2 -o cluster_size=4096 " + p + " 16M"), 0);
    ASSERT_EQ(run("qemu-io -c 'write -P 1 0 1M' -c 'write -z 2M 64k' -c 'discard 0 64k' "
                  "-c 'write -P 2 8M 12k' " +
                  p),
              0);
    auto r = check_image(p, Repair::none);
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->corruptions, 0u);
    EXPECT_EQ(r->leaks, 0u);
    for (auto& m : r->messages)
        ADD_FAILURE() << m;
    EXPECT_EQ(r->allocated_clusters, (1024u - 64u + 12u) / 4);
}

TEST(Qcow2Tools, LeaksFoundAndRepaired) {
    ScratchDir dir;
    const std::string p = (dir.path() / "l.qcow2").string();
    ASSERT_TRUE(create_image(p, opts(1 << 20, 4096)).ok());
    // Over-count cluster 3 (the L1 table): refcount 2 in the refcount block at cluster 2.
    const unsigned char two[2] = {0, 2};
    ASSERT_NO_FATAL_FAILURE(overwrite(p, 2 * 4096 + 3 * 2, two));
    EXPECT_NE(run("qemu-img check " + p), 0);
    auto r = check_image(p, Repair::none);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->leaks, 1u);
    EXPECT_EQ(r->corruptions, 0u);
    auto fixed = check_image(p, Repair::leaks);
    ASSERT_TRUE(fixed.ok());
    EXPECT_EQ(fixed->leaks_fixed, 1u);
    EXPECT_EQ(run("qemu-img check " + p), 0);
}

TEST(Qcow2Tools, CorruptImagesNamed) {
    ScratchDir dir;
    const std::string p = (dir.path() / "bad.qcow2").string();
    ASSERT_TRUE(create_image(p, opts(1 << 20, 4096)).ok());
    // L1 table offset far past the end of the file.
    const unsigned char off[8] = {0, 0, 0, 1, 0, 0, 0, 0};
    ASSERT_NO_FATAL_FAILURE(overwrite(p, 40, off));
    auto r = check_image(p, Repair::none);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message.find("L1 table"), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find("past the end"), std::string::npos) << r.error().message;
}

} // namespace
} // namespace fleece::nodes::qcow2
