#include "daemon/process.hpp"

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

namespace fleece::daemon {

namespace {
int g_ready_fd = -1;
}

void daemonize_start() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) {
        std::perror("fleeced: pipe");
        std::exit(1);
    }
    const pid_t pid = ::fork();
    if (pid < 0) {
        std::perror("fleeced: fork");
        std::exit(1);
    }
    if (pid > 0) {
        ::close(fds[1]);
        char c = 0;
        ssize_t n;
        do {
            n = ::read(fds[0], &c, 1);
        } while (n < 0 && errno == EINTR);
        // EOF without the ready byte: the child failed and has printed why.
        if (n != 1) {
            int status = 0;
            ::waitpid(pid, &status, 0);
            std::_Exit(1);
        }
        std::_Exit(0);
    }
    ::close(fds[0]);
    g_ready_fd = fds[1];
    ::setsid();
}

void daemonize_ready() {
    if (g_ready_fd < 0) return;
    const int null = ::open("/dev/null", O_RDWR);
    if (null >= 0) {
        ::dup2(null, STDIN_FILENO);
        ::dup2(null, STDOUT_FILENO);
        ::dup2(null, STDERR_FILENO);
        if (null > STDERR_FILENO) ::close(null);
    }
    const char c = 1;
    [[maybe_unused]] ssize_t n = ::write(g_ready_fd, &c, 1);
    ::close(g_ready_fd);
    g_ready_fd = -1;
}

Status write_pidfile(const std::string& path) {
    FILE* f = std::fopen(path.c_str(), "w");
    if (!f) return make_error("cannot write pidfile '" + path + "': " + std::strerror(errno));
    std::fprintf(f, "%d\n", static_cast<int>(::getpid()));
    if (std::fclose(f) != 0)
        return make_error("cannot write pidfile '" + path + "': " + std::strerror(errno));
    return {};
}

Result<io::FileDescriptor> open_termination_signalfd() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    if (::sigprocmask(SIG_BLOCK, &set, nullptr) != 0)
        return make_error(std::string("sigprocmask: ") + std::strerror(errno));
    const int fd = ::signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0) return make_error(std::string("signalfd: ") + std::strerror(errno));
    return io::FileDescriptor(fd);
}

} // namespace fleece::daemon
