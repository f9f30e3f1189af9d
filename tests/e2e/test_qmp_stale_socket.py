"""The QMP unix socket at start: a socket file left by a daemon killed with SIGKILL (nobody
listens on it) is replaced, so a restarted daemon is reachable at the same path; a socket
that a live process listens on is left alone and the new daemon refuses to start, naming
the path."""

import os
import signal
import socket
import subprocess
import time

from fleece_testlib import FLEECED, Qmp


def start(path, log):
    return subprocess.Popen([FLEECED, '--chardev', 'socket,id=qmp0,path=%s,server=on,wait=off' % path,
                             '--monitor', 'chardev=qmp0'], stdout=log, stderr=subprocess.STDOUT)


def wait_listening(path, proc, timeout=20):
    """Until a connect succeeds (a stale file refuses connections until it is replaced)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, 'fleeced exited with %s' % proc.returncode
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            return
        except (ConnectionRefusedError, FileNotFoundError):
            assert time.monotonic() < deadline, 'fleeced never listened on ' + path
            time.sleep(0.02)
        finally:
            s.close()


def test_socket_left_by_kill_9_is_replaced(tmp_path):
    path = str(tmp_path / 'qmp.sock')
    log = open(str(tmp_path / 'fleeced.log'), 'w')
    first = start(path, log)
    wait_listening(path, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert os.path.exists(path)  # what kill -9 leaves
    with socket.socket(socket.AF_UNIX) as s:  # nobody listens on it
        try:
            s.connect(path)
            assert False, 'the stale socket accepted a connection'
        except ConnectionRefusedError:
            pass
    second = start(path, log)
    try:
        wait_listening(path, second)  # the stale file refused; this one accepts
        q = Qmp(path)
        assert 'qemu' in q.execute('query-version')
        q.execute('quit')
        assert second.wait(timeout=20) == 0
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
        log.close()


def test_socket_of_a_live_process_is_not_taken(tmp_path):
    path = str(tmp_path / 'qmp.sock')
    owner = socket.socket(socket.AF_UNIX)
    owner.bind(path)
    owner.listen(4)
    with open(str(tmp_path / 'fleeced.log'), 'w') as log:
        proc = start(path, log)
        rc = proc.wait(timeout=20)
    out = open(str(tmp_path / 'fleeced.log')).read()
    assert rc != 0, out
    assert path in out and 'another process is listening' in out, out
    # The owner still has its socket: a client reaches it.
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(path)
        conn, _ = owner.accept()
        conn.close()
    owner.close()
