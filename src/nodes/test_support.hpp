#pragma once
// Helpers for driver tests: a scratch directory on a real file system (st_blocks and
// O_DIRECT need one), a user outside the graph, and synchronous wrappers around I/O.

#include "io/event_loop.hpp"
#include "nodes/registry.hpp"

#include <cstdio>
#include <cstdlib>
#include <fcntl.h>
#include <filesystem>
#include <gtest/gtest.h>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

namespace fleece::nodes::testing {

class ScratchDir {
  public:
    ScratchDir() {
        std::string tmpl =
            (std::filesystem::temp_directory_path() / "fleece-nodes-XXXXXX").string();
        if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
        path_ = tmpl;
    }
    ~ScratchDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    std::string file(const std::string& name, std::uint64_t size) const {
        const std::string p = (path_ / name).string();
        const int fd = ::open(p.c_str(), O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0600);
        EXPECT_GE(fd, 0);
        EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(size)), 0);
        ::close(fd);
        return p;
    }
    const std::filesystem::path& path() const { return path_; }

  private:
    std::filesystem::path path_;
};

struct TestUser final : block::ChildParent {
    std::string parent_description() const override { return "export 'test'"; }
    std::string parent_name() const override { return "test"; }
    const char* parent_type() const override { return "block-backend"; }
};

inline std::vector<std::byte> pattern(std::size_t n, unsigned seed) {
    std::vector<std::byte> v(n);
    for (std::size_t i = 0; i < n; ++i)
        v[i] = static_cast<std::byte>((i * 31 + seed) & 0xff);
    return v;
}

// Standard output of a shell command (a tool used as an oracle, e.g. qemu-img); the
// command must succeed.
inline std::string command_output(const std::string& command) {
    std::string out;
    FILE* p = ::popen(command.c_str(), "r");
    EXPECT_NE(p, nullptr) << command;
    if (!p) return out;
    char buf[4096];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;)
        out.append(buf, n);
    EXPECT_EQ(::pclose(p), 0) << command << ": " << out;
    return out;
}

inline std::uint64_t st_blocks(const std::string& path) {
    struct stat st {};
    EXPECT_EQ(::stat(path.c_str(), &st), 0);
    return static_cast<std::uint64_t>(st.st_blocks);
}

// A loop, a graph and a root edge with the given permissions on the node under test.
struct Harness {
    io::EventLoop loop;
    block::Graph graph;
    TestUser user;
    std::unique_ptr<block::Child> root;

    ~Harness() {
        if (root) graph.detach(std::move(root));
        loop.run_until_complete(graph.close_all());
    }
    Result<block::Node*> add(nlohmann::json options) {
        return loop.run_until_complete(blockdev_add(graph, std::move(options)));
    }
    Status attach(block::Node& n, block::PermSet perm) {
        auto c = graph.attach(user, n, perm, block::perm_all);
        if (!c) return c.error();
        root = std::move(*c);
        return {};
    }
    std::error_code read(std::uint64_t off, std::span<std::byte> buf, block::ReqFlags f = 0) {
        return loop.run_until_complete(root->read(off, buf, f));
    }
    std::error_code write(std::uint64_t off, std::span<const std::byte> buf,
                          block::ReqFlags f = 0) {
        return loop.run_until_complete(root->write(off, buf, f));
    }
    std::error_code write_zeroes(std::uint64_t off, std::uint64_t len, block::ReqFlags f = 0) {
        return loop.run_until_complete(root->write_zeroes(off, len, f));
    }
    std::error_code discard(std::uint64_t off, std::uint64_t len) {
        return loop.run_until_complete(root->discard(off, len));
    }
    std::error_code flush() { return loop.run_until_complete(root->flush()); }
    block::BlockStatus status(std::uint64_t off, std::uint64_t len) {
        return loop.run_until_complete(root->block_status(off, len));
    }
};

inline constexpr block::PermSet rw = block::perm_consistent_read | block::perm_write;

} // namespace fleece::nodes::testing
