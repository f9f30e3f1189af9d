#include "block/graph.hpp"
#include "io/event_loop.hpp"

#include <cstring>
#include <gtest/gtest.h>
#include <vector>

namespace fleece::block {
namespace {

// An in-memory leaf node; each request takes one loop turn so requests overlap.
class MemNode final : public Node {
  public:
    MemNode(std::string name, std::uint64_t size) : Node(std::move(name), "memory"), data_(size) {
        set_size(size);
    }
    std::vector<std::byte> data_;
    int writes = 0;

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
        ++writes;
        co_return std::error_code{};
    }
    io::Task<std::error_code> do_flush() override { co_return std::error_code{}; }
};

// A filter that counts the writes passing through it.
class CountingFilter final : public FilterNode {
  public:
    CountingFilter(std::string name, Node& below) : FilterNode(std::move(name), "counter") {
        set_file(add_child(below, ChildRole::file, "file"));
    }
    int writes = 0;

  protected:
    io::Task<std::error_code> do_write(std::uint64_t off, std::span<const std::byte> buf,
                                       ReqFlags f) override {
        ++writes;
        co_return co_await FilterNode::do_write(off, buf, f);
    }
};

// A node that reads its child as a consistent snapshot and forbids other writers, like a
// backup source without a filter.
class ExclusiveReader final : public FilterNode {
  public:
    ExclusiveReader(std::string name, Node& below) : FilterNode(std::move(name), "reader") {
        set_file(add_child(below, ChildRole::file, "file"));
    }
    PermPair child_perms(const Child&, PermSet, PermSet) const override {
        return {perm_consistent_read, perm_consistent_read | perm_write_unchanged};
    }
};

struct User final : ChildParent {
    explicit User(std::string n) : name(std::move(n)) {}
    std::string name;
    std::string parent_description() const override { return "export '" + name + "'"; }
    std::string parent_name() const override { return name; }
    const char* parent_type() const override { return "block-backend"; }
};

// Attaches `user` to `node` the way a guest writer does.
Result<std::unique_ptr<Child>> attach_writer(Graph& g, User& user, Node& node) {
    return g.attach(user, node, perm_write | perm_consistent_read, perm_all);
}

// The set-up most tests share: an event loop and a graph holding one 64 KiB memory node.
class GraphWithDisk : public ::testing::Test {
  protected:
    io::EventLoop loop;
    Graph g;
    Node* disk = *g.add(std::make_unique<MemNode>("disk", 65536));
};
using Permissions = GraphWithDisk;

TEST_F(Permissions, WriteUnchangedIsSatisfiedByWriteButNotViceVersa) {
    User fleecer("fleecer");
    auto wu = g.attach(fleecer, *disk, perm_write_unchanged, perm_all);
    ASSERT_TRUE(wu.ok());
    std::vector<std::byte> buf(4096, std::byte{1});
    auto write = [](Child* c, std::vector<std::byte>* b, ReqFlags f) -> io::Task<std::error_code> {
        co_return co_await c->write(0, *b, f);
    };
    EXPECT_FALSE(loop.run_until_complete(write(wu->get(), &buf, req_write_unchanged)));
    EXPECT_EQ(loop.run_until_complete(write(wu->get(), &buf, 0)), errno_code(EPERM));
    User writer("guest");
    auto w = attach_writer(g, writer, *disk);
    ASSERT_TRUE(w.ok());
    EXPECT_FALSE(loop.run_until_complete(write(w->get(), &buf, req_write_unchanged)));
    g.detach(std::move(*w));
    g.detach(std::move(*wu));
}

TEST_F(Permissions, ConsistentReaderBlocksSecondWriterAndNamesBothUsers) {
    Node* reader = *g.add(std::make_unique<ExclusiveReader>("backup-src", *disk));
    User guest("guest");
    auto w = attach_writer(g, guest, *disk);
    ASSERT_FALSE(w.ok());
    const std::string msg = w.error().message;
    EXPECT_NE(msg.find("node 'disk'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'write'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("export 'guest'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("node 'backup-src'"), std::string::npos) << msg;
    // Refused changes leave the graph untouched.
    EXPECT_EQ(disk->parents().size(), 1u);
    EXPECT_EQ(disk->parents()[0]->perm(), perm_consistent_read);
    // A writer that only writes unchanged data is compatible with the reader.
    auto wu = g.attach(guest, *disk, perm_write_unchanged, perm_all);
    EXPECT_TRUE(wu.ok());
    g.detach(std::move(*wu));
    (void)reader;
}

TEST_F(Permissions, AddingANodeThatConflictsLeavesNoTrace) {
    User guest("guest");
    auto w = attach_writer(g, guest, *disk);
    ASSERT_TRUE(w.ok());
    auto r = g.add(std::make_unique<ExclusiveReader>("reader", *disk));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(g.find("reader"), nullptr);
    EXPECT_EQ(disk->parents().size(), 1u);
    auto dup = g.add(std::make_unique<MemNode>("disk", 1));
    ASSERT_FALSE(dup.ok());
    EXPECT_NE(dup.error().message.find("Duplicate"), std::string::npos);
    g.detach(std::move(*w));
}

TEST_F(GraphWithDisk, NodeWithUsersCannotBeDeleted) {
    ASSERT_TRUE(g.add(std::make_unique<CountingFilter>("f", *disk)).ok());
    Status st = loop.run_until_complete(g.remove("disk"));
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.error().message.find("node 'f'"), std::string::npos) << st.error().message;
    EXPECT_TRUE(loop.run_until_complete(g.remove("f")).ok());
    EXPECT_TRUE(loop.run_until_complete(g.remove("disk")).ok());
    EXPECT_TRUE(g.nodes().empty());
    EXPECT_FALSE(loop.run_until_complete(g.remove("nope")).ok());
}

TEST(Graph, CyclesAreRefused) {
    io::EventLoop loop;
    Graph g;
    Node* a = *g.add(std::make_unique<MemNode>("a", 4096));
    Node* f = *g.add(std::make_unique<CountingFilter>("f", *a));
    // Moving the users of f onto a would make a its own ancestor: f -> a, and nothing else.
    Status st = loop.run_until_complete(g.replace(*a, *f));
    EXPECT_TRUE(st.ok()); // f's own edge is skipped: nothing else used a
    EXPECT_EQ(a->parents().size(), 1u);
}

io::Task<void> guest_writer(Child* c, int count, int* done) {
    std::vector<std::byte> buf(512, std::byte{7});
    for (int i = 0; i < count; ++i) {
        auto e = co_await c->write(static_cast<std::uint64_t>(i % 64) * 512, buf, 0);
        EXPECT_FALSE(e);
        ++*done;
    }
}

io::Task<void> wait_for_writes(const int* done, int count) {
    while (*done < count)
        co_await io::EventLoop::current().yield();
}

// After 20 guest writes, puts a filter above the disk (for all its users, or for
// `only_edge` alone), lets 50 more writes through it, then takes it out again.
io::Task<void> insert_and_remove_filter(Graph* g, Node* disk, Child* only_edge, int* done) {
    co_await wait_for_writes(done, 20);
    Node* filter = *g->add(std::make_unique<CountingFilter>("filter", *disk));
    Status st;
    if (only_edge)
        st = co_await g->replace_child(*only_edge, *filter);
    else
        st = co_await g->replace(*disk, *filter);
    EXPECT_TRUE(st.ok());
    co_await wait_for_writes(done, *done + 50);
    // Take it out again: its users go back to the disk.
    if (only_edge)
        st = co_await g->replace_child(*only_edge, *disk);
    else
        st = co_await g->replace(*filter, *disk);
    EXPECT_TRUE(st.ok());
    EXPECT_TRUE((co_await g->remove("filter")).ok());
}

// 200 guest writes while a filter comes and goes under them: none may fail, all reach the
// disk, and the guest's edge ends on the disk again.
void expect_writes_survive_filter(io::EventLoop& loop, Graph& g, Node* disk, bool only_edge) {
    User guest("guest");
    auto edge = attach_writer(g, guest, *disk);
    ASSERT_TRUE(edge.ok());
    int done = 0;
    loop.spawn(guest_writer(edge->get(), 200, &done));
    Child* moved = only_edge ? edge->get() : nullptr;
    loop.run_until_complete(insert_and_remove_filter(&g, disk, moved, &done));
    loop.run_until_complete(wait_for_writes(&done, 200));
    EXPECT_EQ(&(*edge)->node(), disk);
    EXPECT_EQ(static_cast<MemNode*>(disk)->writes, 200);
    g.detach(std::move(*edge));
}

TEST_F(GraphWithDisk, LiveFilterInsertionMovesUsersWithoutFailingRequests) {
    expect_writes_survive_filter(loop, g, disk, /*only_edge=*/false);
}

io::Task<void> drain_while_writing(Graph* g, Node* disk, Child* edge, bool* ok) {
    int done = 0;
    io::EventLoop::current().spawn(guest_writer(edge, 100, &done));
    co_await io::EventLoop::current().yield();
    co_await io::EventLoop::current().yield();
    {
        DrainedSection drained = co_await g->drain(*disk);
        const int at = done;
        EXPECT_EQ(disk->in_flight(), 0u);
        for (int i = 0; i < 10; ++i)
            co_await io::EventLoop::current().yield();
        *ok = done == at && disk->in_flight() == 0; // nothing got through while drained
    }
    co_await wait_for_writes(&done, 100);
}

TEST_F(GraphWithDisk, DrainHoldsRequestsFromOutside) {
    User guest("guest");
    auto edge = attach_writer(g, guest, *disk);
    bool ok = false;
    loop.run_until_complete(drain_while_writing(&g, disk, edge->get(), &ok));
    EXPECT_TRUE(ok);
    g.detach(std::move(*edge));
}

TEST_F(GraphWithDisk, ReplaceChildMovesOneEdgeLiveWithoutFailingRequests) {
    expect_writes_survive_filter(loop, g, disk, /*only_edge=*/true);
}

TEST_F(GraphWithDisk, ReplaceChildRollsBackOnConflictSizeOrLoop) {
    Node* other = *g.add(std::make_unique<MemNode>("other", 65536));
    Node* small = *g.add(std::make_unique<MemNode>("small", 4096));
    User guest("guest");
    auto edge = attach_writer(g, guest, *disk);
    ASSERT_TRUE(edge.ok());
    // Size mismatch.
    Status st = loop.run_until_complete(g.replace_child(**edge, *small));
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.error().message.find("size"), std::string::npos) << st.error().message;
    // Conflict: an exclusive reader on `other` unshares write.
    Node* reader = *g.add(std::make_unique<ExclusiveReader>("reader", *other));
    User user2("backup");
    auto edge2 = g.attach(user2, *reader, perm_consistent_read, perm_all);
    ASSERT_TRUE(edge2.ok());
    st = loop.run_until_complete(g.replace_child(**edge, *other));
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(&(*edge)->node(), disk);
    EXPECT_EQ(disk->parents().size(), 1u);
    EXPECT_TRUE(other->parents().size() == 1u);
    // Loop: the reader's file edge pointed at the reader itself.
    st = loop.run_until_complete(g.replace_child(*reader->child("file"), *reader));
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(&reader->child("file")->node(), other);
    g.detach(std::move(*edge2));
    g.detach(std::move(*edge));
}

// Like copy-before-write: once it has a parent it writes its file and lets nobody else
// write there (a write bypassing it would escape it).
class BypassGuard final : public FilterNode {
  public:
    BypassGuard(std::string name, Node& below) : FilterNode(std::move(name), "guard") {
        set_file(add_child(below, ChildRole::file, "file"));
    }
    PermPair child_perms(const Child&, PermSet parent_perm, PermSet) const override {
        if (parent_perm == 0) return {0, perm_all};
        return {perm_consistent_read | perm_write, perm_consistent_read | perm_write_unchanged};
    }
};

TEST_F(GraphWithDisk, ReplaceChildrenMovesTwoWritersTogetherOrNotAtAll) {
    Node* guard = *g.add(std::make_unique<BypassGuard>("guard", *disk));
    User a("a"), b("b");
    auto ea = attach_writer(g, a, *disk);
    auto eb = attach_writer(g, b, *disk);
    ASSERT_TRUE(ea.ok() && eb.ok());
    // One alone conflicts with the other writer still on the disk; nothing moves.
    Status st = loop.run_until_complete(g.replace_child(**ea, *guard));
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.error().message.find("'write'"), std::string::npos) << st.error().message;
    EXPECT_EQ(&(*ea)->node(), disk);
    // An edge named twice is refused before anything moves.
    std::vector<std::pair<Child*, Node*>> twice{{ea->get(), guard}, {ea->get(), guard}};
    st = loop.run_until_complete(g.replace_children(twice));
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(&(*ea)->node(), disk);
    // Together: both on the guard, then both back.
    std::vector<std::pair<Child*, Node*>> on{{ea->get(), guard}, {eb->get(), guard}};
    st = loop.run_until_complete(g.replace_children(on));
    ASSERT_TRUE(st.ok()) << st.error().message;
    EXPECT_EQ(&(*ea)->node(), guard);
    EXPECT_EQ(&(*eb)->node(), guard);
    EXPECT_EQ(disk->parents().size(), 1u); // the guard's file edge only
    std::vector<std::pair<Child*, Node*>> back{{ea->get(), disk}, {eb->get(), disk}};
    st = loop.run_until_complete(g.replace_children(back));
    ASSERT_TRUE(st.ok()) << st.error().message;
    EXPECT_EQ(&(*ea)->node(), disk);
    EXPECT_EQ(&(*eb)->node(), disk);
    g.detach(std::move(*ea));
    g.detach(std::move(*eb));
}

} // namespace
} // namespace fleece::block

namespace fleece::block {
namespace {

// Records the flags each write reaches the driver with, and flushes.
class FuaRecorder final : public Node {
  public:
    explicit FuaRecorder(bool native_fua) : Node("rec", "recorder") {
        set_size(65536);
        caps_.fua = native_fua;
    }
    std::vector<std::string> log;

  protected:
    io::Task<std::error_code> do_read(std::uint64_t, std::span<std::byte>, ReqFlags) override {
        co_return std::error_code{};
    }
    io::Task<std::error_code> do_write(std::uint64_t, std::span<const std::byte>,
                                       ReqFlags f) override {
        log.push_back((f & req_fua) ? "write+fua" : "write");
        co_return std::error_code{};
    }
    io::Task<std::error_code> do_write_zeroes(std::uint64_t, std::uint64_t, ReqFlags f) override {
        log.push_back((f & req_fua) ? "zeroes+fua" : "zeroes");
        co_return std::error_code{};
    }
    io::Task<std::error_code> do_flush() override {
        log.push_back("flush");
        co_return std::error_code{};
    }
};

io::Task<void> fua_requests(Child* c) {
    std::vector<std::byte> buf(512);
    EXPECT_FALSE(co_await c->write(0, buf, req_fua));
    EXPECT_FALSE(co_await c->write_zeroes(0, 512, req_fua));
    EXPECT_FALSE(co_await c->write(0, buf, 0));
}

TEST(Fua, EmulatedByFlushWhenTheNodeLacksIt) {
    for (bool native : {false, true}) {
        io::EventLoop loop;
        Graph g;
        auto* rec = static_cast<FuaRecorder*>(*g.add(std::make_unique<FuaRecorder>(native)));
        User u("u");
        auto edge = attach_writer(g, u, *rec);
        ASSERT_TRUE(edge.ok());
        loop.run_until_complete(fua_requests(edge->get()));
        const std::vector<std::string> emulated{"write", "flush", "zeroes", "flush", "write"};
        const std::vector<std::string> passed{"write+fua", "zeroes+fua", "write"};
        EXPECT_EQ(rec->log, native ? passed : emulated);
        g.detach(std::move(*edge));
    }
}

} // namespace
} // namespace fleece::block
