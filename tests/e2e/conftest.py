"""Shared fixtures for end-to-end tests: start fleeced, talk QMP to it."""
import json
import os
import pathlib
import socket
import subprocess
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
FLEECED = os.environ.get("FLEECED", str(REPO / "build" / "bin" / "fleeced"))


class QmpClient:
    """A minimal blocking QMP client; reads one CRLF-terminated JSON message at a time."""

    def __init__(self, path, timeout=5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")
        self.greeting = self.recv()

    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def recv(self):
        line = self.file.readline()
        if not line:
            raise EOFError("connection closed")
        return json.loads(line)

    def recv_reply(self):
        """Next message that is not an event."""
        while True:
            msg = self.recv()
            if "event" not in msg:
                return msg

    def cmd(self, name, args=None, **extra):
        req = {"execute": name}
        if args is not None:
            req["arguments"] = args
        req.update(extra)
        self.send_raw(json.dumps(req).encode() + b"\n")
        return self.recv_reply()

    def negotiate(self):
        assert self.cmd("qmp_capabilities") == {"return": {}}
        return self

    def close(self):
        self.file.close()
        self.sock.close()


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


def wait_for_socket(path, proc=None, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("fleeced exited with %d" % proc.returncode)
        time.sleep(0.02)
    raise TimeoutError("socket %s did not appear" % path)


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
