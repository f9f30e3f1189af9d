"""Shared fixtures for end-to-end tests: start fleeced, talk QMP to it."""
import os
import pathlib
import subprocess

import pytest

from fleece_testlib import QmpClient, wait_for_socket  # noqa: F401 (re-exported for tests)

REPO = pathlib.Path(__file__).resolve().parents[2]
FLEECED = os.environ.get("FLEECED", str(REPO / "build" / "bin" / "fleeced"))


class Daemon:
    def __init__(self, proc, sock_path, pidfile, stderr_path):
        self.proc = proc
        self.sock_path = sock_path
        self.pidfile = pidfile
        self.stderr_path = stderr_path

    def client(self):
        return QmpClient(self.sock_path)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_daemon(tmp_path, extra_args=()):
    """Starts fleeced with one QMP monitor in tmp_path; other test files pass extra args."""
    sock_path = tmp_path / "qmp.sock"
    pidfile = tmp_path / "fleeced.pid"
    stderr_path = tmp_path / "fleeced.log"
    args = [FLEECED,
            "--chardev", "socket,id=mon0,path=%s,server=on,wait=off" % sock_path,
            "--monitor", "chardev=mon0,mode=control",
            "--pidfile", str(pidfile), *extra_args]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(stderr_path, "wb"))
    wait_for_socket(sock_path, proc)
    return Daemon(proc, sock_path, pidfile, stderr_path)


@pytest.fixture
def daemon_factory(tmp_path):
    started = []

    def make(*extra_args):
        d = start_daemon(tmp_path, extra_args)
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory()
