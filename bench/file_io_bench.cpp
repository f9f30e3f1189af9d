// file_io_bench: drive fleece's `file` node (default) or its bare I/O core with an fio-like
// workload on one file and print the result as one JSON line.
//
//   fleece_file_io_bench --file PATH --rw randread|randwrite|read|write
//                        [--bs BYTES] [--qd N] [--runtime SECONDS] [--no-direct]
//                        [--target node|core] [--track-reads]
//
// --target node (default): the file node is opened with blockdev-add, exactly as fleeced
//   opens it ({"driver":"file","cache":{"direct":true},"aio":"io_uring"}), and every request
//   enters through a root Child edge, the way an export or a job calls it: permission and
//   range checks, drain accounting, dirty bitmaps, the O_DIRECT write ordering and read
//   tracking are all on the measured path.
// --target core: io::pread_full/io::pwrite_full on the fd, no block layer.
// --track-reads: the node tracks reads as it does while a copy-before-write filter sits on
//   it; the requests still come through the root edge, like a guest's reads of its disk.
//
// `--qd N` starts N coroutines on the one loop thread; each loops "take an offset, await
// one request" until the runtime is over, so N requests are in flight at any time, like
// fio's iodepth. Each request goes through a Task (pread_full/pwrite_full), the way the
// file node will issue them, so coroutine frame recycling is part of what is measured.
// The backend is io_uring unless FLEECE_IO_BACKEND=threads forces the thread-pool fallback.
//
// Buffers come from the BufferPool (4096-aligned), like the NBD server's. No registered
// buffers or files: fio's io_uring engine does not use them unless asked (fixedbufs=0,
// registerfiles=0, sqthread_poll=0), and the comparison script runs fio with its defaults.
// "cpu_us_per_op" is this process's user+system CPU time per request (getrusage), which the
// machine's load distorts far less than IOPS.

#include "io/buffer_pool.hpp"
#include "io/event_loop.hpp"
#include "io/file_io.hpp"
#include "io/sync.hpp"
#include "io/task.hpp"
#include "nodes/registry.hpp"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <new>
#include <string>
#include <string_view>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

// Count heap allocations so the result can report allocations per request.
namespace {
std::atomic<std::uint64_t> g_allocations{0};
}
void* operator new(std::size_t size) {
    g_allocations.fetch_add(1, std::memory_order_relaxed);
    if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
    std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
    std::free(p);
}

namespace {

using fleece::io::Buffer;
using fleece::io::BufferPool;
using fleece::io::Clock;
using fleece::io::EventLoop;
using fleece::io::Gate;
using fleece::io::Task;

enum class Pattern { random, sequential };

struct Options {
    std::string file;
    std::string rw = "randread";
    std::uint64_t bs = 4096;
    unsigned qd = 32;
    double runtime_s = 5.0;
    bool direct = true;
    std::string target = "node";
    bool track_reads = false;
};

// Stands for an export: the parent of the root edge the requests enter through.
struct BenchUser final : fleece::block::ChildParent {
    std::string parent_description() const override { return "export 'bench'"; }
    std::string parent_name() const override { return "bench"; }
    const char* parent_type() const override { return "block-backend"; }
};

struct Bench {
    int fd = -1;
    fleece::block::Child* edge = nullptr; // set: go through the node
    bool write = false;
    Pattern pattern = Pattern::random;
    std::uint64_t bs = 0;
    std::uint64_t blocks = 0; // file size / bs
    std::uint64_t next_block = 0;
    Clock::time_point deadline;
    std::uint64_t ops = 0;
    std::uint64_t bytes = 0;
    std::int64_t first_error = 0;
};

std::uint64_t xorshift(std::uint64_t& s) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
}

std::uint64_t next_offset(Bench* b, std::uint64_t& rng) {
    if (b->pattern == Pattern::random) return (xorshift(rng) % b->blocks) * b->bs;
    const std::uint64_t block = b->next_block;
    b->next_block = (block + 1) % b->blocks;
    return block * b->bs;
}

// One in-flight slot: loops until the deadline, one request at a time.
Task<void> worker(Bench* b, BufferPool* pool, unsigned id, Gate::Holder holder) {
    Buffer buf = co_await pool->get(b->bs);
    std::memset(buf.data(), 0x5a ^ static_cast<int>(id), buf.size());
    std::uint64_t rng = 0x9e3779b97f4a7c15ull * (id + 1);
    while (Clock::now() < b->deadline && b->first_error == 0) {
        const std::uint64_t offset = next_offset(b, rng);
        std::int64_t r = static_cast<std::int64_t>(b->bs);
        if (b->edge) {
            std::error_code ec;
            if (b->write)
                ec = co_await b->edge->write(offset, buf.span());
            else
                ec = co_await b->edge->read(offset, buf.span());
            if (ec) r = -ec.value();
        } else if (b->write) {
            r = co_await fleece::io::pwrite_full(b->fd, buf.span(), offset);
        } else {
            r = co_await fleece::io::pread_full(b->fd, buf.span(), offset);
        }
        if (r != static_cast<std::int64_t>(b->bs)) {
            b->first_error = r < 0 ? r : -EIO;
            break;
        }
        ++b->ops;
        b->bytes += b->bs;
    }
    holder.leave();
}

Task<void> run_workers(Bench* b, unsigned qd) {
    BufferPool pool(static_cast<std::size_t>(qd) * BufferPool::alignment *
                    ((b->bs + BufferPool::alignment - 1) / BufferPool::alignment) * 2);
    Gate gate;
    for (unsigned i = 0; i < qd; ++i)
        EventLoop::current().spawn(worker(b, &pool, i, gate.enter()));
    co_await gate.close();
}

[[noreturn]] void usage(const char* argv0) {
    std::fprintf(stderr,
                 "usage: %s --file PATH --rw randread|randwrite|read|write [--bs BYTES] "
                 "[--qd N] [--runtime SECONDS] [--no-direct] [--target node|core] "
                 "[--track-reads]\n",
                 argv0);
    std::exit(2);
}

Options parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) usage(argv[0]);
            return argv[++i];
        };
        if (a == "--file")
            o.file = value();
        else if (a == "--rw")
            o.rw = value();
        else if (a == "--bs")
            o.bs = std::strtoull(value(), nullptr, 0);
        else if (a == "--qd")
            o.qd = static_cast<unsigned>(std::strtoul(value(), nullptr, 0));
        else if (a == "--runtime")
            o.runtime_s = std::strtod(value(), nullptr);
        else if (a == "--no-direct")
            o.direct = false;
        else if (a == "--target")
            o.target = value();
        else if (a == "--track-reads")
            o.track_reads = true;
        else
            usage(argv[0]);
    }
    if (o.file.empty() || o.bs == 0 || o.bs % 512 != 0 || o.qd == 0 || o.runtime_s <= 0)
        usage(argv[0]);
    if (o.rw != "randread" && o.rw != "randwrite" && o.rw != "read" && o.rw != "write")
        usage(argv[0]);
    if (o.target != "node" && o.target != "core") usage(argv[0]);
    return o;
}

} // namespace

int main(int argc, char** argv) {
    const Options o = parse(argc, argv);

    Bench b;
    b.write = o.rw == "randwrite" || o.rw == "write";
    b.pattern = o.rw.starts_with("rand") ? Pattern::random : Pattern::sequential;
    b.bs = o.bs;
    b.fd = ::open(o.file.c_str(),
                  (b.write ? O_RDWR : O_RDONLY) | O_CLOEXEC | (o.direct ? O_DIRECT : 0));
    if (b.fd < 0) {
        std::fprintf(stderr, "open %s: %s\n", o.file.c_str(), std::strerror(errno));
        return 1;
    }
    struct stat st {};
    if (::fstat(b.fd, &st) != 0 || static_cast<std::uint64_t>(st.st_size) < o.bs) {
        std::fprintf(stderr, "%s: file smaller than one block\n", o.file.c_str());
        return 1;
    }
    b.blocks = static_cast<std::uint64_t>(st.st_size) / o.bs;

    EventLoop loop;
    fleece::block::Graph graph;
    BenchUser user;
    std::unique_ptr<fleece::block::Child> root;
    fleece::block::Node* node = nullptr;
    if (o.target == "node") {
        ::close(b.fd);
        b.fd = -1;
        nlohmann::json cache = {{"direct", o.direct}, {"no-flush", false}};
        nlohmann::json options = {{"driver", "file"},   {"node-name", "bench-file"},
                                  {"filename", o.file}, {"aio", "io_uring"},
                                  {"cache", cache},     {"read-only", !b.write}};
        auto added = loop.run_until_complete(fleece::nodes::blockdev_add(graph, options));
        if (!added) {
            std::fprintf(stderr, "blockdev-add: %s\n", added.error().message.c_str());
            return 1;
        }
        node = *added;
        const fleece::block::PermSet perm =
            fleece::block::perm_consistent_read | (b.write ? fleece::block::perm_write : 0);
        auto edge = graph.attach(user, *node, perm, fleece::block::perm_all);
        if (!edge) {
            std::fprintf(stderr, "attach: %s\n", edge.error().message.c_str());
            return 1;
        }
        root = std::move(*edge);
        b.edge = root.get();
        if (o.track_reads) node->track_reads(true);
    }

    rusage ru0{};
    ::getrusage(RUSAGE_SELF, &ru0);
    const auto start = Clock::now();
    b.deadline = start + std::chrono::duration_cast<Clock::duration>(
                             std::chrono::duration<double>(o.runtime_s));
    const std::uint64_t allocs_before = g_allocations.load();
    loop.run_until_complete(run_workers(&b, o.qd));
    const std::uint64_t allocs = g_allocations.load() - allocs_before;
    const double secs = std::chrono::duration<double>(Clock::now() - start).count();
    rusage ru1{};
    ::getrusage(RUSAGE_SELF, &ru1);
    auto tv_us = [](const timeval& t) { return t.tv_sec * 1e6 + t.tv_usec; };
    const double cpu_us =
        tv_us(ru1.ru_utime) - tv_us(ru0.ru_utime) + tv_us(ru1.ru_stime) - tv_us(ru0.ru_stime);
    if (root) {
        if (o.track_reads) node->track_reads(false);
        graph.detach(std::move(root));
        loop.run_until_complete(graph.close_all());
    } else {
        ::close(b.fd);
    }

    if (b.first_error != 0) {
        std::fprintf(stderr, "I/O error: %s\n", std::strerror(static_cast<int>(-b.first_error)));
        return 1;
    }
    const double iops = static_cast<double>(b.ops) / secs;
    const double mb_s = static_cast<double>(b.bytes) / secs / 1e6;
    const double per_op = b.ops ? 1.0 / static_cast<double>(b.ops) : 0.0;
    std::printf("{\"tool\":\"fleece\",\"target\":\"%s\",\"backend\":\"%.*s\",\"rw\":\"%s\","
                "\"bs\":%llu,\"qd\":%u,\"direct\":%s,\"track_reads\":%s,\"seconds\":%.3f,"
                "\"ops\":%llu,\"iops\":%.0f,\"mb_s\":%.1f,\"cpu_us_per_op\":%.2f,"
                "\"allocs_per_op\":%.4f}\n",
                o.target.c_str(), static_cast<int>(loop.backend_name().size()),
                loop.backend_name().data(), o.rw.c_str(), static_cast<unsigned long long>(o.bs),
                o.qd, o.direct ? "true" : "false", o.track_reads ? "true" : "false", secs,
                static_cast<unsigned long long>(b.ops), iops, mb_s, cpu_us * per_op,
                static_cast<double>(allocs) * per_op);
    return 0;
}
