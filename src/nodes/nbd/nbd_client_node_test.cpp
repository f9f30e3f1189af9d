// The nbd node against a real nbdkit server (memory plugin) on a unix socket.
#include "io/event_loop.hpp"
#include "nodes/registry.hpp"

#include <cstring>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <string>
#include <sys/stat.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

extern char** environ;

namespace fleece::nodes {
namespace {

using nlohmann::json;

class NbdkitServer {
  public:
    explicit NbdkitServer(const std::string& sock) {
        std::vector<std::string> args = {"nbdkit", "-f", "--exit-with-parent", "-U", sock,
                                         "memory", "16M"};
        std::vector<char*> argv;
        for (auto& a : args)
            argv.push_back(a.data());
        argv.push_back(nullptr);
        started_ = posix_spawnp(&pid_, "nbdkit", nullptr, nullptr, argv.data(), environ) == 0;
        struct stat st {};
        for (int i = 0; i < 200 && ::stat(sock.c_str(), &st) != 0; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ~NbdkitServer() {
        if (started_) {
            ::kill(pid_, SIGTERM);
            ::waitpid(pid_, nullptr, 0);
        }
    }
    bool started() const { return started_; }

  private:
    pid_t pid_ = -1;
    bool started_ = false;
};

struct TestUser final : block::ChildParent {
    std::string parent_description() const override { return "test"; }
    std::string parent_name() const override { return "test"; }
    const char* parent_type() const override { return "block-backend"; }
};

io::Task<void> exercise(block::Graph* g, std::string sock, TestUser* user) {
    // Built outside the co_await expression: GCC 12 miscompiles braced json lists there.
    json options = json::parse(R"({"driver": "nbd", "node-name": "remote", "export": ""})");
    options["server"] = json::parse(R"({"type": "unix"})");
    options["server"]["path"] = sock;
    auto node = co_await blockdev_add(*g, options);
    EXPECT_TRUE(node.ok()) << (node.ok() ? "" : node.error().message);
    if (!node.ok()) co_return;
    block::Node* n = *node;
    EXPECT_EQ(n->size(), 16u << 20);
    auto edge =
        g->attach(*user, *n, block::perm_write | block::perm_consistent_read, block::perm_all);
    EXPECT_TRUE(edge.ok());
    block::Child& c = **edge;
    std::vector<std::byte> data(1 << 20);
    for (std::size_t i = 0; i < data.size(); ++i)
        data[i] = static_cast<std::byte>(i * 7 + 1);
    EXPECT_FALSE(co_await c.write(1 << 20, data, block::req_fua));
    std::vector<std::byte> back(data.size());
    EXPECT_FALSE(co_await c.read(1 << 20, back));
    EXPECT_EQ(back, data);
    EXPECT_FALSE(co_await c.write_zeroes(1 << 20, 65536, 0));
    EXPECT_FALSE(co_await c.read(1 << 20, std::span(back.data(), 65536)));
    EXPECT_EQ(back[100], std::byte{0});
    EXPECT_FALSE(co_await c.discard(4 << 20, 65536));
    EXPECT_FALSE(co_await c.flush());
    auto st = co_await c.block_status(8 << 20, 1 << 20);
    EXPECT_FALSE(st.error);
    EXPECT_TRUE(st.flags & block::status_zero) << st.flags;
    // Past the end: refused before it reaches the wire.
    EXPECT_TRUE(co_await c.read(16 << 20, std::span(back.data(), 4096)));
    g->detach(std::move(*edge));
    co_await g->close_all();
}

TEST(NbdClientNode, TalksToNbdkit) {
    const std::string sock =
        ::testing::TempDir() + "/fleece_nbd_client_" + std::to_string(::getpid()) + ".sock";
    NbdkitServer server(sock);
    ASSERT_TRUE(server.started()) << "nbdkit (Debian package nbdkit) is required";
    io::EventLoop loop;
    block::Graph g;
    TestUser user;
    loop.run_until_complete(exercise(&g, sock, &user));
}

TEST(NbdClientNode, ConnectionFailureIsAClearError) {
    io::EventLoop loop;
    block::Graph g;
    auto r = loop.run_until_complete(
        blockdev_add(g, json{{"driver", "nbd"},
                             {"node-name", "x"},
                             {"server", {{"type", "unix"}, {"path", "/nonexistent/sock"}}}}));
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message.find("Failed to connect"), std::string::npos) << r.error().message;
    auto bad = loop.run_until_complete(blockdev_add(
        g, json{{"driver", "nbd"}, {"node-name", "y"}, {"server", {{"type", "vsock"}}}}));
    ASSERT_FALSE(bad.ok());
}

} // namespace
} // namespace fleece::nodes
