#pragma once
// Test support for RangeLockTable (used by range_lock_test.cpp and the fuzz target):
//  - RangeLockModel: a deliberately naive reference of the locking rules, recomputed from
//    scratch after every operation;
//  - run_range_lock_scenario(): many coroutines lock/try_lock/wait_idle/shrink/unlock
//    random ranges on a real table while the model shadows every step. It checks that
//    (a) no two conflicting holders are ever held at once, (b) every request is granted
//    (the run ends), (c) grants respect FIFO among conflicting requests, and that the
//    table's holder/waiter counts and overlaps_holder() agree with the model throughout.
// Not part of the engine; header-only so the fuzzer needs nothing but fleece_block.

#include "block/range_lock.hpp"
#include "io/event_loop.hpp"
#include "io/task.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace fleece::block::testing {

class RangeLockModel {
  public:
    enum class Kind { shared, exclusive, idle };
    enum class State { pending, granted, done };
    struct Req {
        std::uint64_t offset;
        std::uint64_t length;
        Kind kind;
        State state;
    };

    static bool conflict(const Req& a, const Req& b) {
        if (a.length == 0 || b.length == 0) return false;
        if (a.offset + a.length <= b.offset || b.offset + b.length <= a.offset) return false;
        return !(a.kind == Kind::shared && b.kind == Kind::shared);
    }

    // A request queued behind everything so far; returns its id (ids are request order).
    std::size_t request(std::uint64_t offset, std::uint64_t length, Kind kind) {
        reqs_.push_back({offset, length, kind, State::pending});
        settle();
        return reqs_.size() - 1;
    }
    // try_lock: granted only if it would not wait. Returns the id or -1.
    long try_request(std::uint64_t offset, std::uint64_t length, Kind kind) {
        const Req r{offset, length, kind, State::pending};
        for (const Req& o : reqs_)
            if (o.state != State::done && conflict(o, r)) return -1;
        reqs_.push_back(r);
        reqs_.back().state = State::granted;
        return static_cast<long>(reqs_.size() - 1);
    }
    void release(std::size_t id) {
        reqs_.at(id).state = State::done;
        settle();
    }
    void shrink(std::size_t id, std::uint64_t length) {
        reqs_.at(id).length = length;
        settle();
    }
    const Req& req(std::size_t id) const { return reqs_.at(id); }
    std::size_t count(State s) const {
        std::size_t n = 0;
        for (const Req& r : reqs_)
            n += r.state == s;
        return n;
    }
    bool overlaps_holder(std::uint64_t offset, std::uint64_t length) const {
        const Req probe{offset, length, Kind::exclusive, State::pending};
        for (const Req& r : reqs_)
            if (r.state == State::granted && conflict(r, probe)) return true;
        return false;
    }

  private:
    // The rule, literally: a pending request is granted iff it conflicts with no granted
    // request and no earlier pending request. Repeat until nothing changes.
    void settle() {
        std::vector<std::size_t> live; // requests not done, in request order
        for (std::size_t i = 0; i < reqs_.size(); ++i)
            if (reqs_[i].state != State::done) live.push_back(i);
        bool changed = true;
        while (changed) {
            changed = false;
            for (std::size_t i : live) {
                if (reqs_[i].state != State::pending) continue;
                bool blocked = false;
                for (std::size_t j : live) {
                    if (j == i || !conflict(reqs_[i], reqs_[j])) continue;
                    if (reqs_[j].state == State::granted ||
                        (reqs_[j].state == State::pending && j < i)) {
                        blocked = true;
                        break;
                    }
                }
                if (!blocked) {
                    reqs_[i].state = reqs_[i].kind == Kind::idle ? State::done : State::granted;
                    changed = true;
                }
            }
        }
    }
    std::vector<Req> reqs_;
};

// Source of choices: uint64_t next(uint64_t bound) returns a value in [0, bound).
template <class Source> struct Scenario {
    Source* src = nullptr;
    RangeLockTable* table = nullptr;
    RangeLockModel model;
    // Observed independently of the model, from what the coroutines saw.
    std::vector<bool> resumed; // by request id
    std::vector<std::size_t> observed_holders;
    std::string error;
    int running = 0;
    std::uint64_t space = 64 * 1024;

    void fail(const std::string& what) {
        if (error.empty()) error = what;
    }
    void pick_range(std::uint64_t* offset, std::uint64_t* length) {
        static constexpr std::uint64_t units[] = {1, 512, 4096, 16384};
        const std::uint64_t unit = units[src->next(4)];
        const std::uint64_t slots = space / unit;
        *offset = src->next(slots) * unit;
        if (src->next(20) == 0) {
            *length = 0;
            return;
        }
        const std::uint64_t max_len = std::min<std::uint64_t>(slots - *offset / unit, 8);
        *length = (1 + src->next(max_len)) * unit;
    }
    void check_sync(const char* where) {
        using S = RangeLockModel::State;
        if (table->holders() != model.count(S::granted))
            fail(std::string(where) + ": holders " + std::to_string(table->holders()) +
                 " != model " + std::to_string(model.count(S::granted)));
        if (table->waiters() != model.count(S::pending))
            fail(std::string(where) + ": waiters " + std::to_string(table->waiters()) +
                 " != model " + std::to_string(model.count(S::pending)));
        std::uint64_t off = 0, len = 0;
        pick_range(&off, &len);
        if (table->overlaps_holder(off, len) != model.overlaps_holder(off, len))
            fail(std::string(where) + ": overlaps_holder disagrees");
    }
    void note_request(std::size_t id) {
        if (resumed.size() <= id) resumed.resize(id + 1, false);
    }
    // (a) and (c), from observations only.
    void on_granted(std::size_t id, bool holds) {
        using K = RangeLockModel::Kind;
        const auto& me = model.req(id);
        for (std::size_t j = 0; j < id; ++j) {
            // A conflicting earlier lock request must have been granted first. (Earlier
            // wait_idle calls are left to the model check: they hold nothing, so a later
            // request may legitimately slip in between their grant and their resumption.)
            const auto& other = model.req(j);
            if (!resumed[j] && other.kind != K::idle && RangeLockModel::conflict(other, me))
                fail("FIFO violated: request " + std::to_string(id) + " granted before " +
                     std::to_string(j));
        }
        resumed[id] = true;
        if (!holds) return;
        for (std::size_t h : observed_holders)
            if (RangeLockModel::conflict(model.req(h), me))
                fail("conflicting holders " + std::to_string(h) + " and " + std::to_string(id));
        observed_holders.push_back(id);
    }
    void on_released(std::size_t id) {
        std::erase(observed_holders, id);
        model.release(id);
    }
};

template <class Source> io::Task<void> scenario_worker(Scenario<Source>* s, int ops) {
    using K = RangeLockModel::Kind;
    using S = RangeLockModel::State;
    auto& loop = io::EventLoop::current();
    for (int op = 0; op < ops && s->error.empty(); ++op) {
        for (std::uint64_t n = s->src->next(4); n > 0; --n)
            co_await loop.yield();
        std::uint64_t off = 0, len = 0;
        s->pick_range(&off, &len);
        const std::uint64_t what = s->src->next(10);
        if (what == 0) { // wait_idle
            const std::size_t id = s->model.request(off, len, K::idle);
            s->note_request(id);
            co_await s->table->wait_idle(off, len);
            if (s->model.req(id).state != S::done)
                s->fail("wait_idle returned before the model allowed it");
            s->on_granted(id, false);
            s->check_sync("wait_idle");
            continue;
        }
        const bool excl = s->src->next(3) == 0;
        const auto mode = excl ? RangeLockTable::Mode::exclusive : RangeLockTable::Mode::shared;
        const K kind = excl ? K::exclusive : K::shared;
        RangeLockTable::Guard guard;
        std::size_t id = 0;
        if (what == 1) { // try_lock
            const long mid = s->model.try_request(off, len, kind);
            auto g = s->table->try_lock(off, len, mode);
            if (g.has_value() != (mid >= 0)) {
                s->fail("try_lock disagrees with the model");
                if (g) g->release();
                continue;
            }
            if (!g) {
                s->check_sync("try_lock failed");
                continue;
            }
            id = static_cast<std::size_t>(mid);
            s->note_request(id);
            guard = std::move(*g);
        } else {
            id = s->model.request(off, len, kind);
            s->note_request(id);
            guard = co_await s->table->lock(off, len, mode);
            if (s->model.req(id).state != S::granted)
                s->fail("lock granted before the model allowed it");
        }
        if (guard.offset() != off || guard.length() != len || !guard.held())
            s->fail("guard range wrong");
        s->on_granted(id, true);
        s->check_sync("granted");
        for (std::uint64_t n = s->src->next(6); n > 0; --n)
            co_await loop.yield();
        if (len > 0 && s->src->next(4) == 0) {
            const std::uint64_t new_len = s->src->next(len + 1);
            s->table->shrink(guard, new_len);
            s->model.shrink(id, new_len);
            s->check_sync("shrink");
            for (std::uint64_t n = s->src->next(3); n > 0; --n)
                co_await loop.yield();
        }
        if (s->src->next(2) == 0)
            guard.release();
        else
            guard = RangeLockTable::Guard(); // move-assign drops the old lock
        s->on_released(id);
        if (guard.held()) s->fail("guard still held after release");
        s->check_sync("released");
    }
    --s->running;
}

// Runs one scenario on the current loop; returns "" or the first failure.
template <class Source>
io::Task<std::string> run_range_lock_scenario(Source* src, int workers, int ops) {
    auto table = std::make_unique<RangeLockTable>();
    auto sp = std::make_unique<Scenario<Source>>();
    Scenario<Source>& s = *sp;
    s.src = src;
    s.table = table.get();
    s.running = workers;
    for (int w = 0; w < workers; ++w)
        io::EventLoop::current().spawn(scenario_worker(sp.get(), ops));
    // (b): a correct table lets every worker finish; bound the turns to detect deadlock.
    const long max_turns = 100000L + 64L * workers * ops;
    long turns = 0;
    while (s.running > 0 && turns++ < max_turns)
        co_await io::EventLoop::current().yield();
    if (s.running > 0) {
        // Stuck coroutines still reference the table and the scenario: leak both on purpose.
        s.fail("deadlock: " + std::to_string(s.running) + " workers never finished");
        (void)table.release();
        co_return sp.release()->error;
    }
    if (table->holders() != 0 || table->waiters() != 0) s.fail("table not empty at the end");
    if (s.model.count(RangeLockModel::State::pending) != 0 ||
        s.model.count(RangeLockModel::State::granted) != 0)
        s.fail("model not empty at the end");
    co_return s.error;
}

} // namespace fleece::block::testing
