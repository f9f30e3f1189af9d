// Component tests: NbdServer on a unix socket, driven by libnbd from a client thread while
// the test thread runs the event loop.
#include "block/graph.hpp"
#include "io/event_loop.hpp"
#include "nbd/codec.hpp"
#include "nbd/server.hpp"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <gtest/gtest.h>
#include <libnbd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <thread>
#include <unistd.h>

using namespace fleece;
using namespace fleece::block;
using fleece::nbd::ExportOptions;
using fleece::nbd::NbdServer;

namespace {

constexpr std::uint64_t kBlock = 4096;

// In-memory node that tracks allocation per 4 KiB block, so block status has holes.
class MemNode final : public Node {
  public:
    MemNode(std::string name, std::uint64_t size)
        : Node(std::move(name), "memory"), data_(size), alloc_((size + kBlock - 1) / kBlock) {
        set_size(size);
        caps_.trim = true;
        caps_.zero = true;
        caps_.fast_zero = true;
        caps_.block_status = true;
    }
    std::vector<std::byte> data_;
    std::vector<bool> alloc_;
    int flushes = 0;

  protected:
    io::Task<std::error_code> do_read(std::uint64_t off, std::span<std::byte> buf,
                                      ReqFlags) override {
        co_await io::EventLoop::current().yield();
        std::memcpy(buf.data(), data_.data() + off, buf.size());
        co_return std::error_code{};
    }
    io::Task<std::error_code> do_write(std::uint64_t off, std::span<const std::byte> buf,
                                       ReqFlags) override {
        co_await io::EventLoop::current().yield();
        std::memcpy(data_.data() + off, buf.data(), buf.size());
        for (std::uint64_t b = off / kBlock; b * kBlock < off + buf.size(); ++b)
            alloc_[b] = true;
        co_return std::error_code{};
    }
    io::Task<std::error_code> do_write_zeroes(std::uint64_t off, std::uint64_t len,
                                              ReqFlags flags) override {
        std::memset(data_.data() + off, 0, len);
        punch(off, len, flags & req_may_unmap);
        co_return std::error_code{};
    }
    io::Task<std::error_code> do_discard(std::uint64_t off, std::uint64_t len) override {
        std::memset(data_.data() + off, 0, len);
        punch(off, len, true);
        co_return std::error_code{};
    }
    io::Task<std::error_code> do_flush() override {
        ++flushes;
        co_return std::error_code{};
    }
    io::Task<BlockStatus> do_block_status(std::uint64_t off, std::uint64_t len) override {
        BlockStatus bs;
        const std::uint64_t first = off / kBlock;
        const bool a = alloc_[first];
        std::uint64_t end = (first + 1) * kBlock;
        while (end < off + len && alloc_[end / kBlock] == a)
            end += kBlock;
        bs.length = std::min(end, off + len) - off;
        bs.flags = a ? (status_data | status_allocated) : status_zero;
        co_return bs;
    }

  private:
    void punch(std::uint64_t off, std::uint64_t len, bool unmap) {
        for (std::uint64_t b = off / kBlock; b * kBlock < off + len; ++b) {
            const bool whole = b * kBlock >= off && (b + 1) * kBlock <= off + len;
            if (unmap && whole)
                alloc_[b] = false;
            else
                alloc_[b] = true;
        }
    }
};

io::Task<void> wait_flag(std::atomic<bool>* flag) {
    while (!flag->load())
        co_await io::sleep_for(std::chrono::milliseconds(1));
}

struct Fixture {
    io::EventLoop loop;
    Graph graph;
    MemNode* node = nullptr;
    std::unique_ptr<NbdServer> server;
    std::string dir;
    std::string sock;

    Fixture() {
        char tmpl[] = "/tmp/fleece-nbd-XXXXXX";
        dir = ::mkdtemp(tmpl);
        sock = dir + "/nbd.sock";
        auto n = graph.add(std::make_unique<MemNode>("mem0", 1 << 20));
        EXPECT_TRUE(n.ok());
        node = static_cast<MemNode*>(*n);
        server = std::make_unique<NbdServer>(graph);
        EXPECT_TRUE(server->listen_unix(sock).ok());
    }
    ~Fixture() {
        loop.run_until_complete(server->stop());
        server.reset();
        loop.run_until_complete(graph.close_all());
        std::filesystem::remove_all(dir);
    }
    // Runs `client` on a thread while the loop serves it.
    void run_client(std::function<void()> client) {
        std::atomic<bool> done{false};
        std::thread t([&] {
            client();
            done = true;
        });
        loop.run_until_complete(wait_flag(&done));
        t.join();
    }
    nbd_handle* connect(const char* name, bool meta = true) {
        nbd_handle* h = nbd_create();
        EXPECT_NE(h, nullptr);
        nbd_set_export_name(h, name);
        if (meta) nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION);
        if (nbd_connect_unix(h, sock.c_str()) == -1) {
            ADD_FAILURE() << "connect: " << nbd_get_error();
            nbd_close(h);
            return nullptr;
        }
        return h;
    }
    // A plain socket to the server, past its 18-byte greeting, for clients that speak the
    // protocol by hand (libnbd would not misbehave); -1 when that fails.
    int connect_raw() const {
        const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, sock.c_str(), sizeof addr.sun_path - 1);
        char greet[18];
        if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
            ::recv(fd, greet, sizeof greet, MSG_WAITALL) != 18) {
            ::close(fd);
            return -1;
        }
        return fd;
    }
};

struct ExtentCollector {
    std::vector<std::uint32_t> entries;
    static int cb(void* user, const char* ctx, std::uint64_t, std::uint32_t* e, std::size_t n,
                  int*) {
        auto* self = static_cast<ExtentCollector*>(user);
        if (std::strcmp(ctx, LIBNBD_CONTEXT_BASE_ALLOCATION) == 0) self->entries.assign(e, e + n);
        return 0;
    }
};

} // namespace

TEST(NbdServer, ReadWriteZeroTrimFlushBlockStatus) {
    Fixture f;
    ASSERT_TRUE(f.server->add_export({"e0", "mem0", "disk", "test disk", true}).ok());
    f.run_client([&] {
        nbd_handle* h = f.connect("disk");
        ASSERT_NE(h, nullptr);
        EXPECT_EQ(nbd_get_size(h), 1 << 20);
        EXPECT_EQ(nbd_get_structured_replies_negotiated(h), 1);
        EXPECT_EQ(nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION), 1);
        EXPECT_EQ(nbd_is_read_only(h), 0);
        EXPECT_EQ(nbd_can_flush(h), 1);
        EXPECT_EQ(nbd_can_fua(h), 1);
        EXPECT_EQ(nbd_can_trim(h), 1);
        EXPECT_EQ(nbd_can_zero(h), 1);
        EXPECT_EQ(nbd_can_fast_zero(h), 1);
        EXPECT_EQ(nbd_can_multi_conn(h), 1);
        EXPECT_EQ(nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED), 4096);
        EXPECT_EQ(nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM), 32 << 20);

        std::vector<char> w(8192), r(8192);
        for (std::size_t i = 0; i < w.size(); ++i)
            w[i] = static_cast<char>(i * 7 + 1);
        EXPECT_EQ(nbd_pwrite(h, w.data(), w.size(), 0, 0), 0);
        EXPECT_EQ(nbd_pwrite(h, w.data(), 4096, 65536, LIBNBD_CMD_FLAG_FUA), 0);
        EXPECT_EQ(nbd_pread(h, r.data(), r.size(), 0, 0), 0);
        EXPECT_EQ(w, r);

        ExtentCollector ex;
        EXPECT_EQ(nbd_block_status(h, 131072, 0, {ExtentCollector::cb, &ex, nullptr}, 0), 0);
        ASSERT_EQ(ex.entries.size(), 8u);
        EXPECT_EQ(ex.entries[0], 8192u);
        EXPECT_EQ(ex.entries[1], 0u);
        EXPECT_EQ(ex.entries[2], 65536u - 8192);
        EXPECT_EQ(ex.entries[3], LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO);
        EXPECT_EQ(ex.entries[4], 4096u);
        EXPECT_EQ(ex.entries[5], 0u);
        EXPECT_EQ(ex.entries[6], 65536u - 4096);
        EXPECT_EQ(ex.entries[7], LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO);

        ExtentCollector one;
        EXPECT_EQ(nbd_block_status(h, 131072, 4096, {ExtentCollector::cb, &one, nullptr},
                                   LIBNBD_CMD_FLAG_REQ_ONE),
                  0);
        ASSERT_EQ(one.entries.size(), 2u);
        EXPECT_EQ(one.entries[0], 4096u);

        EXPECT_EQ(nbd_zero(h, 4096, 0, 0), 0);
        EXPECT_EQ(nbd_zero(h, 4096, 65536, LIBNBD_CMD_FLAG_NO_HOLE | LIBNBD_CMD_FLAG_FAST_ZERO), 0);
        EXPECT_EQ(nbd_pread(h, r.data(), 4096, 0, 0), 0);
        EXPECT_TRUE(std::all_of(r.begin(), r.begin() + 4096, [](char c) { return c == 0; }));
        EXPECT_EQ(nbd_trim(h, 4096, 4096, 0), 0);
        EXPECT_EQ(nbd_flush(h, 0), 0);
        EXPECT_EQ(nbd_cache(h, 4096, 0, 0), 0);

        ExtentCollector after;
        EXPECT_EQ(nbd_block_status(h, 131072, 0, {ExtentCollector::cb, &after, nullptr}, 0), 0);
        ASSERT_GE(after.entries.size(), 4u);
        EXPECT_EQ(after.entries[0], 65536u); // 0..8K punched, hole up to 64K
        EXPECT_EQ(after.entries[1], LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO);
        EXPECT_EQ(after.entries[2], 4096u); // NO_HOLE zeroing keeps the block allocated
        EXPECT_EQ(after.entries[3], 0u);

        EXPECT_EQ(nbd_shutdown(h, 0), 0);
        nbd_close(h);
    });
    EXPECT_GE(f.node->flushes, 2);
}

TEST(NbdServer, ManyRequestsInFlight) {
    Fixture f;
    ASSERT_TRUE(f.server->add_export({"e0", "mem0", "disk", "", true}).ok());
    f.run_client([&] {
        nbd_handle* h = f.connect("disk");
        ASSERT_NE(h, nullptr);
        std::vector<std::vector<char>> bufs(64, std::vector<char>(16384));
        for (std::size_t i = 0; i < bufs.size(); ++i) {
            std::fill(bufs[i].begin(), bufs[i].end(), static_cast<char>(i + 1));
            EXPECT_GE(nbd_aio_pwrite(h, bufs[i].data(), bufs[i].size(), i * 16384, {}, 0), 0);
        }
        while (nbd_aio_in_flight(h) > 0)
            ASSERT_GE(nbd_poll(h, -1), 0);
        std::vector<std::vector<char>> rd(64, std::vector<char>(16384));
        for (std::size_t i = 0; i < rd.size(); ++i)
            EXPECT_GE(nbd_aio_pread(h, rd[i].data(), rd[i].size(), i * 16384, {}, 0), 0);
        while (nbd_aio_in_flight(h) > 0)
            ASSERT_GE(nbd_poll(h, -1), 0);
        EXPECT_EQ(rd, bufs);
        nbd_close(h);
    });
}

TEST(NbdServer, OutOfRangeAndReadOnly) {
    Fixture f;
    ASSERT_TRUE(f.server->add_export({"ro", "mem0", "ro", "", false}).ok());
    f.run_client([&] {
        nbd_handle* h = f.connect("ro");
        ASSERT_NE(h, nullptr);
        nbd_set_strict_mode(h, 0); // let the server do the checking
        EXPECT_EQ(nbd_is_read_only(h), 1);
        char buf[4096] = {};
        EXPECT_EQ(nbd_pread(h, buf, sizeof buf, (1 << 20) - 10, 0), -1);
        EXPECT_EQ(nbd_get_errno(), EINVAL);
        EXPECT_EQ(nbd_pwrite(h, buf, sizeof buf, 0, 0), -1);
        EXPECT_EQ(nbd_get_errno(), EPERM);
        // The connection survives errors.
        EXPECT_EQ(nbd_pread(h, buf, sizeof buf, 0, 0), 0);
        nbd_close(h);
    });
}

TEST(NbdServer, OptionListInfoAndDefaultExport) {
    Fixture f;
    ASSERT_TRUE(f.server->add_export({"e0", "mem0", "a", "first", false}).ok());
    f.run_client([&] {
        nbd_handle* h = nbd_create();
        nbd_set_opt_mode(h, true);
        ASSERT_EQ(nbd_connect_unix(h, f.sock.c_str()), 0);
        std::vector<std::string> names;
        auto cb = [](void* user, const char* name, const char* desc) {
            static_cast<std::vector<std::string>*>(user)->push_back(std::string(name) + "=" + desc);
            return 0;
        };
        EXPECT_EQ(nbd_opt_list(h, {cb, &names, nullptr}), 1);
        EXPECT_EQ(names, std::vector<std::string>{"a=first"});
        nbd_set_export_name(h, "nope");
        EXPECT_EQ(nbd_opt_info(h), -1);
        nbd_set_export_name(h, "");
        nbd_set_full_info(h, true);
        EXPECT_EQ(nbd_opt_go(h), 0); // "" selects the only export
        char* d = nbd_get_export_description(h);
        EXPECT_STREQ(d, "first");
        free(d);
        char* n = nbd_get_canonical_export_name(h);
        EXPECT_STREQ(n, "a");
        free(n);
        EXPECT_EQ(nbd_get_size(h), 1 << 20);
        nbd_close(h);
    });
}

TEST(NbdServer, NoStructuredRepliesAndOldExportName) {
    Fixture f;
    ASSERT_TRUE(f.server->add_export({"e0", "mem0", "disk", "", true}).ok());
    f.run_client([&] {
        nbd_handle* h = nbd_create();
        nbd_set_request_structured_replies(h, false);
        nbd_set_export_name(h, "disk");
        ASSERT_EQ(nbd_connect_unix(h, f.sock.c_str()), 0);
        EXPECT_EQ(nbd_get_structured_replies_negotiated(h), 0);
        char w[512], r[512];
        std::memset(w, 0x5a, sizeof w);
        EXPECT_EQ(nbd_pwrite(h, w, sizeof w, 512, 0), 0);
        EXPECT_EQ(nbd_pread(h, r, sizeof r, 512, 0), 0);
        EXPECT_EQ(std::memcmp(w, r, sizeof w), 0);
        nbd_close(h);
    });
}

TEST(NbdServer, GarbageClientDoesNotHurtOthers) {
    Fixture f;
    ASSERT_TRUE(f.server->add_export({"e0", "mem0", "disk", "", true}).ok());
    f.run_client([&] {
        const int fd = f.connect_raw();
        ASSERT_GE(fd, 0);
        const unsigned char flags[4] = {0, 0, 0, 3};
        ASSERT_EQ(::send(fd, flags, 4, MSG_NOSIGNAL), 4);
        char junk[64];
        std::memset(junk, 0xab, sizeof junk);
        ::send(fd, junk, sizeof junk, MSG_NOSIGNAL);
        char c;
        EXPECT_LE(::recv(fd, &c, 1, 0), 0); // server hung up
        ::close(fd);

        nbd_handle* h = f.connect("disk");
        ASSERT_NE(h, nullptr);
        char buf[512];
        EXPECT_EQ(nbd_pread(h, buf, sizeof buf, 0, 0), 0);
        nbd_close(h);
    });
}

namespace {
io::Task<void> remove_when(NbdServer* s, std::atomic<bool>* connected, std::atomic<bool>* removed,
                           std::atomic<bool>* done) {
    co_await wait_flag(connected);
    Status st = co_await s->remove_export("e0");
    EXPECT_TRUE(st.ok());
    *removed = true;
    co_await wait_flag(done);
}
} // namespace

TEST(NbdServer, RemoveExportDisconnectsClients) {
    Fixture f;
    ASSERT_TRUE(f.server->add_export({"e0", "mem0", "disk", "", true}).ok());
    EXPECT_FALSE(f.server->add_export({"e0", "mem0", "other", "", true}).ok());
    EXPECT_FALSE(f.server->add_export({"e1", "nosuch", "x", "", true}).ok());
    std::atomic<bool> connected{false}, removed{false}, done{false};
    std::thread t([&] {
        nbd_handle* h = f.connect("disk");
        connected = true;
        while (!removed)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        char buf[512];
        EXPECT_EQ(nbd_pread(h, buf, sizeof buf, 0, 0), -1);
        nbd_close(h);
        done = true;
    });
    f.loop.run_until_complete(remove_when(f.server.get(), &connected, &removed, &done));
    t.join();
    EXPECT_TRUE(f.server->query().empty());
    EXPECT_TRUE(f.node->parents().empty());
}

TEST(NbdServer, MaxConnections) {
    Fixture f;
    f.server->set_max_connections(1);
    ASSERT_TRUE(f.server->add_export({"e0", "mem0", "disk", "", true}).ok());
    f.run_client([&] {
        nbd_handle* h1 = f.connect("disk");
        ASSERT_NE(h1, nullptr);
        nbd_handle* h2 = nbd_create();
        nbd_set_export_name(h2, "disk");
        EXPECT_EQ(nbd_connect_unix(h2, f.sock.c_str()), -1);
        nbd_close(h2);
        char buf[512];
        EXPECT_EQ(nbd_pread(h1, buf, sizeof buf, 0, 0), 0);
        nbd_close(h1);
    });
}

TEST(NbdServer, QemuIo) {
    // A missing tool fails the test (the house rule: no skips).
    ASSERT_EQ(::access("/usr/bin/qemu-io", X_OK), 0) << "qemu-io not installed";
    Fixture f;
    ASSERT_TRUE(f.server->add_export({"e0", "mem0", "disk", "", true}).ok());
    f.run_client([&] {
        const std::string uri = "nbd+unix:///disk?socket=" + f.sock;
        const std::string cmd = "/usr/bin/qemu-io -f raw '" + uri +
                                "' -c 'write -P 0x5a 4096 64k' -c 'read -P 0x5a 4096 64k'"
                                " -c 'write -z 4096 4k' -c 'read -P 0 4096 4k'"
                                " -c 'discard 8192 4k' -c 'flush' -c 'map' > " +
                                f.dir + "/qemu-io.log 2>&1";
        EXPECT_EQ(std::system(cmd.c_str()), 0);
    });
    EXPECT_EQ(static_cast<int>(f.node->data_[4096 + 4096 + 4096 + 100]), 0x5a);
}

TEST(NbdServer, OversizedWritePayloadIsSkipped) {
    Fixture f;
    ASSERT_TRUE(f.server->add_export({"e0", "mem0", "disk", "", true}).ok());
    f.run_client([&] {
        const int fd = f.connect_raw();
        ASSERT_GE(fd, 0);
        nbd::Bytes out;
        nbd::put_u32(out, nbd::client_flag_fixed_newstyle | nbd::client_flag_no_zeroes);
        nbd::Bytes oh = nbd::encode_option_header({nbd::opt_export_name, 4});
        out.insert(out.end(), oh.begin(), oh.end());
        nbd::put_bytes(out, "disk");
        nbd::Request r;
        r.type = nbd::cmd_write;
        r.cookie = 42;
        r.length = nbd::max_payload + 1;
        nbd::Bytes rq = nbd::encode_request(r);
        out.insert(out.end(), rq.begin(), rq.end());
        // The payload follows; the server reads and drops it, then answers and goes on.
        out.resize(out.size() + r.length, std::byte{0x7f});
        nbd::Request flush;
        flush.type = nbd::cmd_flush;
        flush.cookie = 43;
        nbd::Bytes fq = nbd::encode_request(flush);
        out.insert(out.end(), fq.begin(), fq.end());
        ASSERT_EQ(::send(fd, out.data(), out.size(), MSG_NOSIGNAL),
                  static_cast<ssize_t>(out.size()));
        std::byte reply[10 + 16 + 16];
        ASSERT_EQ(::recv(fd, reply, sizeof reply, MSG_WAITALL), static_cast<ssize_t>(sizeof reply));
        EXPECT_EQ(load_be64(reply), 1u << 20); // export size
        EXPECT_EQ(load_be32(reply + 10), nbd::simple_reply_magic);
        EXPECT_EQ(load_be32(reply + 14), nbd::err_inval); // no structured replies: EINVAL
        EXPECT_EQ(load_be64(reply + 18), 42u);
        EXPECT_EQ(load_be32(reply + 26), nbd::simple_reply_magic);
        EXPECT_EQ(load_be32(reply + 30), nbd::err_none);
        EXPECT_EQ(load_be64(reply + 34), 43u);
        ::close(fd);

        nbd_handle* h = f.connect("disk");
        ASSERT_NE(h, nullptr);
        std::vector<char> big(32 << 20);
        EXPECT_EQ(nbd_pread(h, big.data(), big.size(), 0, 0), -1); // past 1 MiB end
        EXPECT_EQ(nbd_pread(h, big.data(), 1 << 20, 0, 0), 0);
        nbd_close(h);
    });
}
