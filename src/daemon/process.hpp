#pragma once
// Process plumbing for the daemon: detaching, the pidfile and termination signals.

#include "io/socket.hpp"
#include "util/result.hpp"

#include <string>

namespace fleece::daemon {

// Forks. The parent blocks until the child calls notify_ready() (then exits 0) or the child
// dies first (then exits 1), so "fleeced --daemonize && use the socket" is race-free.
// Returns in the child only.
void daemonize_start();
// Child side: tell the waiting parent we are serving and detach from its terminal.
void daemonize_ready();

Status write_pidfile(const std::string& path);

// Blocks SIGTERM/SIGINT for the process and returns a signalfd that reports them; the
// loop polls it so shutdown runs as ordinary code on the loop thread.
Result<io::FileDescriptor> open_termination_signalfd();

} // namespace fleece::daemon
