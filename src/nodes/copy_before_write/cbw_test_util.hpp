#pragma once
// Shared fixture for the copy-before-write tests: source and fleece target in memory,
// a CBW node with a guest edge on top, and snapshot-access with a reader edge.

#include "block/graph.hpp"
#include "io/event_loop.hpp"
#include "nodes/copy_before_write/cbw_node.hpp"
#include "nodes/registry.hpp"
#include "nodes/testing/memory_node.hpp"

#include <cstring>
#include <functional>
#include <gtest/gtest.h>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

namespace fleece::nodes::testing {

struct User final : block::ChildParent {
    explicit User(std::string n) : name(std::move(n)) {}
    std::string name;
    std::string parent_description() const override { return "export '" + name + "'"; }
    std::string parent_name() const override { return name; }
    const char* parent_type() const override { return "block-backend"; }
};

inline std::vector<std::byte> pattern(std::uint64_t len, int p) {
    return std::vector<std::byte>(len, std::byte(p));
}

inline io::Task<std::error_code> write_pattern(block::Child* c, std::uint64_t off,
                                               std::uint64_t len, int p) {
    std::vector<std::byte> buf = pattern(len, p);
    co_return co_await c->write(off, buf);
}
inline io::Task<std::error_code> write_zeroes(block::Child* c, std::uint64_t off,
                                              std::uint64_t len) {
    co_return co_await c->write_zeroes(off, len);
}
inline io::Task<std::error_code> discard(block::Child* c, std::uint64_t off, std::uint64_t len) {
    co_return co_await c->discard(off, len);
}
// Reads [off, off+len) and compares it with pattern p; returns the error, or EILSEQ on a
// mismatch ("Pattern verification failed").
inline io::Task<std::error_code> read_pattern(block::Child* c, std::uint64_t off, std::uint64_t len,
                                              int p) {
    std::vector<std::byte> buf(len);
    if (auto ec = co_await c->read(off, buf)) co_return ec;
    if (buf != pattern(len, p)) co_return block::errno_code(EILSEQ);
    co_return std::error_code{};
}

struct Fleece {
    io::EventLoop loop;
    block::Graph g;
    MemoryNode* src = nullptr;
    MemoryNode* tgt = nullptr;
    CbwNode* cbw = nullptr;
    block::Node* sa = nullptr;
    User guest{"guest"};
    User reader{"reader"};
    std::unique_ptr<block::Child> gc, rc;

    // before_open runs on the source before the filter opens (e.g. to add a dirty bitmap).
    explicit Fleece(std::uint64_t size, nlohmann::json cbw_extra = nlohmann::json::object(),
                    std::function<void(MemoryNode&)> before_open = {}) {
        src = static_cast<MemoryNode*>(*g.add(std::make_unique<MemoryNode>("source", size)));
        tgt = static_cast<MemoryNode*>(*g.add(std::make_unique<MemoryNode>("temp", size)));
        if (before_open) before_open(*src);
        open(std::move(cbw_extra));
    }
    void open(nlohmann::json cbw_extra) {
        nlohmann::json o = {{"driver", "copy-before-write"},
                            {"node-name", "fl-cbw"},
                            {"file", "source"},
                            {"target", "temp"}};
        o.update(cbw_extra);
        auto n = loop.run_until_complete(blockdev_add(g, o));
        if (!n) throw std::runtime_error(n.error().message);
        cbw = static_cast<CbwNode*>(*n);
        auto a = loop.run_until_complete(blockdev_add(
            g, {{"driver", "snapshot-access"}, {"node-name", "fl-access"}, {"file", "fl-cbw"}}));
        if (!a) throw std::runtime_error(a.error().message);
        sa = *a;
        gc = std::move(*g.attach(guest, *cbw, block::perm_write | block::perm_consistent_read,
                                 block::perm_all));
        // Writable like a pull client's NBD export, so that snapshot discards are allowed.
        rc = std::move(*g.attach(reader, *sa, block::perm_consistent_read | block::perm_write,
                                 block::perm_all));
    }
    ~Fleece() {
        if (gc) g.detach(std::move(gc));
        if (rc) g.detach(std::move(rc));
        loop.run_until_complete(g.close_all());
    }
    void fill(std::uint64_t off, std::uint64_t len, int p) {
        std::memset(src->data().data() + off, p, len);
    }
    std::error_code run(io::Task<std::error_code> t) {
        return loop.run_until_complete(std::move(t));
    }
};

} // namespace fleece::nodes::testing
