#include "io/event_loop.hpp"
#include "io/file_io.hpp"
#include "io/offload.hpp"
#include "io/socket.hpp"

#include <cstring>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <string>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

namespace fleece::io {
namespace {

class EventLoopTest : public ::testing::TestWithParam<BackendKind> {};

Task<int> add_one(int v) {
    co_return v + 1;
}
Task<int> chain(int depth) {
    int v = 0;
    for (int i = 0; i < depth; ++i)
        v = co_await add_one(v);
    co_return v;
}

TEST_P(EventLoopTest, AwaitChainsReturnValues) {
    EventLoop loop(GetParam());
    EXPECT_EQ(loop.run_until_complete(chain(2000)), 2000);
}

Task<void> throws() {
    co_await EventLoop::current().yield();
    throw std::runtime_error("boom");
}

TEST_P(EventLoopTest, ExceptionsPropagateToTheAwaiter) {
    EventLoop loop(GetParam());
    EXPECT_THROW(loop.run_until_complete(throws()), std::runtime_error);
}

Task<std::string> file_round_trip(std::string path) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
    std::string text = "hello, fleece";
    std::vector<std::byte> out(text.size());
    std::memcpy(out.data(), text.data(), text.size());
    const auto w = co_await pwrite_full(fd, out, 4096);
    EXPECT_EQ(w, static_cast<std::int64_t>(text.size()));
    EXPECT_EQ(co_await fdatasync(fd), 0);
    std::vector<std::byte> in(text.size());
    const auto r = co_await pread_full(fd, in, 4096);
    EXPECT_EQ(r, static_cast<std::int64_t>(text.size()));
    // Reading past the end returns 0 bytes, not an error.
    EXPECT_EQ(co_await pread(fd, in, 1 << 20), 0);
    ::close(fd);
    co_return std::string(reinterpret_cast<const char*>(in.data()), in.size());
}

TEST_P(EventLoopTest, FileReadWriteFsync) {
    EventLoop loop(GetParam());
    // One file per process: ctest runs the backend instances of this test in parallel.
    const std::string path =
        ::testing::TempDir() + "/fleece_loop_file." + std::to_string(::getpid());
    EXPECT_EQ(loop.run_until_complete(file_round_trip(path)), "hello, fleece");
    ::unlink(path.c_str());
}

Task<void> timed_sleep(std::chrono::milliseconds d, std::vector<int>* order, int id) {
    co_await sleep_for(d);
    order->push_back(id);
}

Task<void> sleepers(std::vector<int>* order) {
    EventLoop::current().spawn(timed_sleep(std::chrono::milliseconds(30), order, 3));
    EventLoop::current().spawn(timed_sleep(std::chrono::milliseconds(10), order, 1));
    EventLoop::current().spawn(timed_sleep(std::chrono::milliseconds(20), order, 2));
    co_await sleep_for(std::chrono::milliseconds(50));
}

TEST_P(EventLoopTest, TimersFireInDeadlineOrder) {
    EventLoop loop(GetParam());
    std::vector<int> order;
    const auto start = Clock::now();
    loop.run_until_complete(sleepers(&order));
    EXPECT_GE(Clock::now() - start, std::chrono::milliseconds(50));
    EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
}

Task<bool> cancelled_timer() {
    EventLoop::Timer timer(EventLoop::current());
    EventLoop::Timer other(EventLoop::current());
    // Cancel the long timer from a second coroutine after a short sleep.
    auto canceller = [](EventLoop::Timer* t) -> Task<void> {
        co_await sleep_for(std::chrono::milliseconds(5));
        t->cancel();
    };
    EventLoop::current().spawn(canceller(&timer));
    const bool expired = co_await timer.wait_for(std::chrono::seconds(30));
    co_return expired;
}

TEST_P(EventLoopTest, CancelledTimerWakesEarly) {
    EventLoop loop(GetParam());
    const auto start = Clock::now();
    EXPECT_FALSE(loop.run_until_complete(cancelled_timer()));
    EXPECT_LT(Clock::now() - start, std::chrono::seconds(10));
}

Task<bool> cancelled_twice() {
    EventLoop::Timer timer(EventLoop::current());
    // Both cancels run before the waiter resumes: the second one must be a no-op (it
    // used to erase the timer entry again).
    auto canceller = [](EventLoop::Timer* t) -> Task<void> {
        co_await sleep_for(std::chrono::milliseconds(5));
        t->cancel();
        t->cancel();
    };
    EventLoop::current().spawn(canceller(&timer));
    const bool expired = co_await timer.wait_for(std::chrono::seconds(30));
    timer.cancel(); // after the wake-up as well
    co_return expired;
}

TEST_P(EventLoopTest, CancellingTwiceIsHarmless) {
    EventLoop loop(GetParam());
    EXPECT_FALSE(loop.run_until_complete(cancelled_twice()));
}

Task<void> gather_writer(int fd, std::vector<std::byte>* head, std::vector<std::byte>* body) {
    const std::span<const std::byte> parts[3] = {*head, {}, *body};
    EXPECT_EQ(co_await write_all_gather(fd, parts), 0);
}

// A gathered write larger than the socket buffer: partial sendmsg calls resume in the
// middle of a part, and the reader sees every byte in order.
Task<bool> gather_roundtrip() {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    FileDescriptor a(sv[0]), b(sv[1]);
    std::vector<std::byte> head(13), body(3 << 20);
    for (std::size_t i = 0; i < head.size(); ++i)
        head[i] = static_cast<std::byte>(i + 1);
    for (std::size_t i = 0; i < body.size(); ++i)
        body[i] = static_cast<std::byte>((i * 7) & 0xff);
    EventLoop::current().spawn(gather_writer(a.get(), &head, &body));
    std::vector<std::byte> got(head.size() + body.size());
    EXPECT_EQ(co_await read_exact(b.get(), got), 0);
    co_return std::equal(head.begin(), head.end(), got.begin()) &&
        std::equal(body.begin(), body.end(), got.begin() + 13);
}

TEST_P(EventLoopTest, GatheredWriteSendsEveryPartInOrder) {
    EventLoop loop(GetParam());
    EXPECT_TRUE(loop.run_until_complete(gather_roundtrip()));
}

Task<std::string> socket_echo() {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    FileDescriptor a(sv[0]), b(sv[1]);
    // A large transfer forces EAGAIN on the writer and readiness waits on both sides.
    std::vector<std::byte> big(4 << 20, std::byte{0x5a});
    auto writer = [](int fd, std::vector<std::byte>* data) -> Task<void> {
        EXPECT_EQ(co_await write_all(fd, *data), 0);
    };
    EventLoop::current().spawn(writer(a.get(), &big));
    std::vector<std::byte> got(big.size());
    EXPECT_EQ(co_await read_exact(b.get(), got), 0);
    EXPECT_EQ(got, big);
    a.reset();
    std::byte one[1];
    EXPECT_EQ(co_await read_some(b.get(), one), 0); // EOF after the peer closed
    co_return "ok";
}

TEST_P(EventLoopTest, SocketsTransferLargeBuffers) {
    EventLoop loop(GetParam());
    EXPECT_EQ(loop.run_until_complete(socket_echo()), "ok");
}

Task<int> offloaded() {
    co_return co_await offload([] { return 6 * 7; });
}

TEST_P(EventLoopTest, OffloadRunsOnWorkerAndResumesOnLoop) {
    EventLoop loop(GetParam());
    EXPECT_EQ(loop.run_until_complete(offloaded()), 42);
}

INSTANTIATE_TEST_SUITE_P(Backends, EventLoopTest,
                         ::testing::Values(BackendKind::automatic, BackendKind::threads),
                         [](const auto& param_info) {
                             return param_info.param == BackendKind::threads ? "threads"
                                                                             : "automatic";
                         });

TEST(EventLoopBackend, AutomaticPrefersIoUring) {
    EventLoop loop(BackendKind::automatic);
    // io_uring is available on the CI machines; the fallback is covered by the suite above.
    EXPECT_EQ(loop.backend_name(), "io_uring");
}

} // namespace
} // namespace fleece::io
