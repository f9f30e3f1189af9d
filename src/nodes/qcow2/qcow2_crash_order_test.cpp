// The metadata write order of the qcow2 node, checked against a model of what a crash can
// leave on disk. The node runs over a file node that keeps two images: `latest` (every
// write that reached it) and `durable` (what the last completed flush covered; writes
// between flushes may land in any order, or not at all). After every write and every
// flush the model takes the worst case: any L1 and L2 table as in either image, refcounts
// as in either image. It then checks that every cluster such a table can point to (data,
// compressed data, L2 tables) has a non-zero refcount in both images, and that the data
// of every data cluster it can point to was written before the last completed flush.
// Random concurrent allocating writes, overwrites, zero writes and discards run over it
// with completions reordered; the durable image must at the end pass `qemu-img check`
// (leaks allowed) and read back exactly what was written before the last flush.
// Discards the node passes down (pass-discard-request) punch a hole in both images at
// once (the worst case: a hole may be durable before any flush), and the clusters lose
// their "written" status, so an L2 entry in either image that still names one is caught.
#include "block/graph.hpp"
#include "nodes/qcow2/qcow2_format.hpp"
#include "nodes/qcow2/qcow2_tools.hpp"
#include "nodes/test_support.hpp"
#include "util/align.hpp"

#include <fmt/format.h>
#include <fstream>
#include <gtest/gtest.h>
#include <random>
#include <set>

namespace fleece::nodes {
namespace {

using nlohmann::json;
using namespace testing;
using namespace qcow2;

constexpr std::uint64_t KiB = 1024, MiB = 1 << 20;

using Image = std::vector<std::byte>;

std::uint64_t be64_at(const Image& img, std::uint64_t off) {
    return off + 8 <= img.size() ? load_be64(img.data() + off) : 0;
}

std::uint64_t refcount_in(const Image& img, const Header& h, std::uint64_t cluster) {
    const std::uint64_t cs = h.cluster_size();
    const std::uint64_t idx = cluster / h.refblock_entries();
    if (idx * 8 >= std::uint64_t{h.refcount_table_clusters} * cs) return 0;
    const std::uint64_t block = be64_at(img, h.refcount_table_offset + idx * 8) & ~0x1ffull;
    if (block == 0 || block + cs > img.size()) return 0;
    return get_refcount(std::span(img).subspan(block, cs), cluster % h.refblock_entries(),
                        h.refcount_order);
}

Result<Header> header_of(const Image& img) {
    return parse_header(std::span(img).first(std::min<std::size_t>(img.size(), 64 * KiB)),
                        img.size());
}

// The crash check. `written` holds the host clusters with a data write completed before
// the last completed flush. Returns the first violation, or "" when there is none.
std::string find_violation(const Image& durable, const Image& latest,
                           const std::set<std::uint64_t>& written) {
    auto hd = header_of(durable), hl = header_of(latest);
    if (!hd || !hl) return "unreadable header";
    const Header& h = *hd;
    const std::uint32_t cb = h.cluster_bits;
    const std::uint64_t cs = h.cluster_size();
    auto counted = [&](std::uint64_t cluster) {
        return refcount_in(durable, *hd, cluster) > 0 && refcount_in(latest, *hl, cluster) > 0;
    };
    // Every L2 table either image's L1 can name.
    std::set<std::uint64_t> l2_tables;
    for (const Image* img : {&durable, &latest})
        for (std::uint64_t i = 0; i < h.l1_size; ++i)
            if (const std::uint64_t off = be64_at(*img, h.l1_table_offset + 8 * i) & offset_mask)
                l2_tables.insert(off);
    for (std::uint64_t t : l2_tables) {
        if (!counted(t >> cb)) return fmt::format("L2 table at {:#x} has refcount 0", t);
        for (const Image* img : {&durable, &latest})
            for (std::uint64_t i = 0; i < cs / 8; ++i) {
                const std::uint64_t raw = be64_at(*img, t + 8 * i);
                const L2Entry e = decode_l2(raw, cb, h.version);
                if (e.reserved_bits || e.misaligned) return fmt::format("bad L2 entry {:#x}", raw);
                std::uint64_t first = 0, last = 0;
                if (e.kind == ClusterKind::normal || e.kind == ClusterKind::zero_allocated) {
                    first = last = e.host_offset >> cb;
                } else if (e.kind == ClusterKind::compressed) {
                    first = compressed_first_cluster(e, cb);
                    last = compressed_last_cluster(e, cb);
                } else {
                    continue;
                }
                for (std::uint64_t c = first; c <= last; ++c) {
                    if (!counted(c))
                        return fmt::format("L2 entry {:#x} (table {:#x} index {}) names cluster "
                                           "{} whose refcount may be 0 on disk",
                                           raw, t, i, c);
                    if (e.kind != ClusterKind::zero_allocated && !written.count(c))
                        return fmt::format("L2 entry {:#x} (table {:#x} index {}) names cluster "
                                           "{} whose data is not durable",
                                           raw, t, i, c);
                }
            }
    }
    return "";
}

// What the model found; shared with the test because the graph may destroy the node when
// it closes.
struct ModelResults {
    Image durable;
    std::vector<std::string> violations;
    std::uint64_t checks = 0;
    std::uint64_t discarded_bytes = 0; // holes the qcow2 node punched in the file
};

// The file below the qcow2 node, with the two images and the check after every change.
class CrashModelNode final : public block::Node {
  public:
    CrashModelNode(Image image, std::uint64_t seed, std::shared_ptr<ModelResults> results)
        : Node("crash-model", "crash-model"), latest_(image), durable_(std::move(image)),
          rng_(seed), results_(std::move(results)) {
        set_size(latest_.size());
        results_->durable = durable_;
        caps_.trim = true; // like a file node with discard=unmap
    }

  protected:
    io::Task<std::error_code> do_read(std::uint64_t off, std::span<std::byte> buf,
                                      block::ReqFlags) override {
        co_await delay();
        std::memcpy(buf.data(), latest_.data() + off, buf.size());
        co_return std::error_code{};
    }
    io::Task<std::error_code> do_write(std::uint64_t off, std::span<const std::byte> buf,
                                       block::ReqFlags) override {
        // The bytes may land at once; the write only counts as done when it completes.
        std::memcpy(latest_.data() + off, buf.data(), buf.size());
        check();
        co_await delay();
        for (std::uint64_t c = off >> cb_; c <= (off + buf.size() - 1) >> cb_; ++c)
            completed_.insert(c);
        co_return std::error_code{};
    }
    io::Task<std::error_code> do_flush() override {
        const Image snapshot = latest_;
        const std::set<std::uint64_t> done = completed_;
        co_await delay();
        durable_ = snapshot;
        durable_.resize(latest_.size());
        written_.insert(done.begin(), done.end());
        results_->durable = durable_;
        check();
        co_return std::error_code{};
    }
    io::Task<std::error_code> do_discard(std::uint64_t off, std::uint64_t len) override {
        co_await delay();
        // Whole clusters only (the node discards cluster runs): their data is gone.
        std::memset(latest_.data() + off, 0, len);
        std::memset(durable_.data() + off, 0, len);
        for (std::uint64_t c = off >> cb_; c <= (off + len - 1) >> cb_; ++c) {
            completed_.erase(c);
            written_.erase(c);
        }
        results_->durable = durable_;
        results_->discarded_bytes += len;
        check();
        co_return std::error_code{};
    }
    io::Task<std::error_code> do_truncate(std::uint64_t size, block::Prealloc) override {
        latest_.resize(size);
        durable_.resize(size); // new space reads as zeroes either way
        set_size(size);
        co_return std::error_code{};
    }

  private:
    io::Task<void> delay() {
        const unsigned turns = static_cast<unsigned>(rng_() % 4);
        for (unsigned i = 0; i < turns; ++i)
            co_await io::EventLoop::current().yield();
    }
    void check() {
        if (cb_ == 0) {
            auto h = header_of(latest_);
            if (!h) return;
            cb_ = h->cluster_bits;
        }
        ++results_->checks;
        if (auto v = find_violation(durable_, latest_, written_); !v.empty())
            results_->violations.push_back(v);
    }

    Image latest_, durable_;
    std::set<std::uint64_t> completed_; // host clusters with a completed data write
    std::set<std::uint64_t> written_;   // ... completed before the last completed flush
    std::mt19937_64 rng_;
    std::uint32_t cb_ = 0;
    std::shared_ptr<ModelResults> results_;
};

Image fresh_image(const ScratchDir& dir, std::uint64_t size, std::uint32_t cluster) {
    const std::string p = (dir.path() / "model.qcow2").string();
    CreateOptions o;
    o.size = size;
    o.cluster_size = cluster;
    EXPECT_TRUE(create_image(p, o).ok());
    std::ifstream in(p, std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    Image img(bytes.size());
    std::memcpy(img.data(), bytes.data(), bytes.size());
    return img;
}

struct Op {
    enum Kind { write, zeroes, zeroes_unmap, discard } kind;
    std::uint64_t off, len;
    unsigned seed;
};

io::Task<void> run_op(block::Child* c, Op op, int* left, int* errors) {
    std::error_code e;
    if (op.kind == Op::write) {
        const auto data = pattern(op.len, op.seed);
        e = co_await c->write(op.off, std::span<const std::byte>(data));
    } else if (op.kind == Op::discard) {
        e = co_await c->discard(op.off, op.len);
    } else {
        e = co_await c->write_zeroes(op.off, op.len,
                                     op.kind == Op::zeroes_unmap ? block::req_may_unmap : 0);
    }
    if (e) ++*errors;
    --*left;
}

io::Task<void> wait_zero(io::EventLoop* loop, int* left) {
    while (*left > 0)
        co_await loop->yield();
}

void apply(std::vector<std::byte>& model, const Op& op) {
    if (op.kind == Op::write) {
        const auto d = pattern(op.len, op.seed);
        std::memcpy(model.data() + op.off, d.data(), d.size());
    } else if (op.kind == Op::discard) {
        // Whole clusters read as zeroes afterwards; partial ones keep their data.
    } else {
        std::memset(model.data() + op.off, 0, op.len);
    }
}

// Runs the random ops over a qcow2 node on a CrashModelNode, closes the node and writes
// the durable image to `durable_path`.
void run_ops(Harness& h, const ScratchDir& dir, std::uint64_t size, std::uint32_t cluster,
             std::uint64_t l2_cache, std::uint64_t seed, int rounds, std::vector<std::byte>& model,
             std::vector<std::byte>& flushed_model, const std::string& durable_path) {
    auto results = std::make_shared<ModelResults>();
    auto model_node =
        std::make_unique<CrashModelNode>(fresh_image(dir, size, cluster), seed, results);
    ASSERT_TRUE(h.graph.add(std::move(model_node)).ok());
    auto n = h.add(json{{"driver", "qcow2"},
                        {"node-name", "q0"},
                        {"discard", "unmap"},
                        {"backing", nullptr},
                        {"l2-cache-size", l2_cache},
                        {"file", "crash-model"}});
    ASSERT_TRUE(n.ok()) << n.error().message;
    ASSERT_TRUE(h.attach(**n, rw).ok());

    std::mt19937_64 rng(seed);
    constexpr unsigned slots = 8; // concurrent ops per round, on disjoint slots
    const std::uint64_t slot = size / slots;
    for (int round = 0; round < rounds; ++round) {
        int left = 0, errors = 0;
        std::vector<Op> ops;
        for (unsigned s = 0; s < slots; ++s) {
            if (rng() % 4 == 0) continue;
            Op op{};
            const unsigned k = static_cast<unsigned>(rng() % 16);
            op.kind = k < 11   ? Op::write
                      : k < 13 ? Op::zeroes
                      : k < 15 ? Op::zeroes_unmap
                               : Op::discard;
            // Up to four clusters, often unaligned (partial first/last clusters).
            op.len = 1 + rng() % (4 * cluster);
            if (rng() % 2) op.len = align_up(op.len, cluster);
            op.off = s * slot + rng() % (slot - op.len);
            if (rng() % 2) op.off = align_down(op.off, cluster);
            op.seed = static_cast<unsigned>(rng());
            ops.push_back(op);
            ++left;
            h.loop.spawn(run_op(h.root.get(), op, &left, &errors));
        }
        h.loop.run_until_complete(wait_zero(&h.loop, &left));
        ASSERT_EQ(errors, 0) << "round " << round;
        for (const Op& op : ops) {
            apply(model, op);
            // A discard of whole clusters: they read as zeroes now.
            if (op.kind == Op::discard) {
                const std::uint64_t lo = align_up(op.off, cluster);
                const std::uint64_t hi = align_down(op.off + op.len, cluster);
                if (hi > lo) std::memset(model.data() + lo, 0, hi - lo);
            }
        }
        if (rng() % 5 == 0) {
            ASSERT_FALSE(h.flush());
            flushed_model = model;
        }
        ASSERT_TRUE(results->violations.empty())
            << "round " << round << ": " << results->violations.front();
    }
    ASSERT_FALSE(h.flush());
    flushed_model = model;
    EXPECT_TRUE(results->violations.empty());
    EXPECT_GT(results->checks, 100u);
    EXPECT_GT(results->discarded_bytes, 0u); // the discards reached the file

    // Close (its final commits are checked too), then keep the durable image.
    h.graph.detach(std::move(h.root));
    h.loop.run_until_complete(h.graph.close_all());
    EXPECT_TRUE(results->violations.empty()) << results->violations.front();
    std::ofstream out(durable_path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(results->durable.data()),
              static_cast<std::streamsize>(results->durable.size()));
}

void run_model(std::uint64_t size, std::uint32_t cluster, std::uint64_t l2_cache,
               std::uint64_t seed, int rounds) {
    ScratchDir dir;
    std::vector<std::byte> model(size), flushed_model;
    const std::string p = (dir.path() / "durable.qcow2").string();
    {
        Harness h;
        run_ops(h, dir, size, cluster, l2_cache, seed, rounds, model, flushed_model, p);
    }
    if (::testing::Test::HasFatalFailure()) return;
    // The durable image: consistent for QEMU (leaks at most) and holding every flushed
    // write. qemu-img check exits 0 when clean, 3 with leaked clusters only.
    EXPECT_EQ(
        std::system(("qemu-img check -q " + p + " >/dev/null 2>&1; r=$?; test $r -eq 0 -o $r -eq 3")
                        .c_str()),
        0);
    Harness r;
    auto rn = r.add(json{{"driver", "qcow2"},
                         {"node-name", "r0"},
                         {"read-only", true},
                         {"backing", nullptr},
                         {"file", {{"driver", "file"}, {"filename", p}, {"read-only", true}}}});
    ASSERT_TRUE(rn.ok()) << rn.error().message;
    ASSERT_TRUE(r.attach(**rn, block::perm_consistent_read).ok());
    std::vector<std::byte> back(size);
    ASSERT_FALSE(r.read(0, back));
    EXPECT_TRUE(back == flushed_model);
}

TEST(Qcow2CrashOrder, CheckerSeesAnEntryWithoutRefcount) {
    ScratchDir dir;
    Image img = fresh_image(dir, 4 * MiB, 4096);
    auto h = header_of(img);
    ASSERT_TRUE(h.ok());
    EXPECT_EQ(find_violation(img, img, {}), "");
    // L1 entry 0 -> an L2 table in a cluster past the end, entry 0 -> a data cluster:
    // neither has a refcount, and the data was never written.
    Image bad = img;
    const std::uint64_t l2 = align_up(img.size(), 4096);
    bad.resize(l2 + 2 * 4096);
    store_be64(bad.data() + h->l1_table_offset, l2 | entry_copied);
    store_be64(bad.data() + l2, (l2 + 4096) | entry_copied);
    EXPECT_NE(find_violation(img, bad, {}).find("refcount 0"), std::string::npos);
}

TEST(Qcow2CrashOrder, RandomConcurrentOps4k) {
    for (std::uint64_t seed = 1; seed <= 3; ++seed)
        run_model(4 * MiB, 4096, 2 * 4096, seed, 60);
}

TEST(Qcow2CrashOrder, RandomConcurrentOpsTinyAndLargeClusters) {
    // 512-byte clusters: one L2 table maps 32 KiB and the cache holds 2, so most writes
    // commit to make room in the cache; a refcount block maps only 128 KiB, so new
    // refcount blocks (and refcount table entries) are added as the file grows.
    run_model(12 * MiB, 512, 1024, 7, 40);
    run_model(8 * MiB, 65536, 2 * 65536, 9, 40);
}

} // namespace
} // namespace fleece::nodes
