"""NBD server handshake-max-seconds: a client that connects and never finishes negotiating
is dropped, and its connection slot is given back (max-connections)."""

import socket
import subprocess
import time

import nbd
from fleece_testlib import Daemon, make_raw

GREETING = 8 + 8 + 2  # NBDMAGIC, IHAVEOPT, handshake flags
GENEROUS = 60  # seconds; a bound on "eventually", not a timing assertion


def silent_client(sock_path):
    """Connects, reads the server's greeting, then says nothing."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    s.settimeout(GENEROUS)
    got = b''
    while len(got) < GREETING:
        chunk = s.recv(GREETING - len(got))
        assert chunk, 'server closed before its greeting'
        got += chunk
    assert got.startswith(b'NBDMAGICIHAVEOPT')
    return s


def wait_closed_by_server(s):
    """True once the server closed the connection; the recv timeout is the bound."""
    try:
        return s.recv(1) == b''
    except ConnectionResetError:
        return True


def nbdinfo_size(uri):
    return subprocess.run(['nbdinfo', '--size', uri], capture_output=True, text=True)


def test_silent_client_is_dropped_and_frees_its_slot(tmp_path):
    disk = tmp_path / 'disk.raw'
    make_raw(disk, 1 << 20)
    sock = str(tmp_path / 'nbd.sock')
    d = Daemon(tmp_path, ['--blockdev', 'driver=file,node-name=f0,filename=%s' % disk,
                          '--nbd-server',
                          'addr.type=unix,addr.path=%s,max-connections=1,'
                          'handshake-max-seconds=1' % sock,
                          '--export', 'type=nbd,id=e0,node-name=f0,name=disk'])
    try:
        uri = 'nbd+unix:///disk?socket=%s' % sock
        s = silent_client(sock)
        # While it holds the only slot, nobody else gets in.
        assert nbdinfo_size(uri).returncode != 0
        assert wait_closed_by_server(s)
        s.close()
        # The slot is free again (the server may need a moment to finish the connection).
        deadline = time.monotonic() + GENEROUS
        while nbdinfo_size(uri).returncode != 0:
            assert time.monotonic() < deadline, 'slot never freed'
            time.sleep(0.1)
        assert nbdinfo_size(uri).stdout.strip() == str(1 << 20)
        # A client that finishes its handshake is not dropped by the limit: it can still
        # read well after the limit passed.
        h = nbd.NBD()
        h.connect_uri(uri)
        time.sleep(2.5)
        assert h.pread(512, 0) == bytes(512)
        h.shutdown()
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0


def test_handshake_max_seconds_over_qmp(tmp_path):
    disk = tmp_path / 'disk.raw'
    make_raw(disk, 1 << 20)
    sock = str(tmp_path / 'nbd.sock')
    d = Daemon(tmp_path, ['--blockdev', 'driver=file,node-name=f0,filename=%s' % disk])
    try:
        bad = d.qmp.command('nbd-server-start', addr={'type': 'unix', 'data': {'path': sock}},
                            **{'handshake-max-seconds': -1})
        assert bad['error']['class'] == 'GenericError'
        assert 'handshake-max-seconds' in bad['error']['desc']
        d.qmp.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': sock}},
                      **{'handshake-max-seconds': 1})
        d.qmp.execute('block-export-add', type='nbd', id='e0', **{'node-name': 'f0'})
        s = silent_client(sock)
        assert wait_closed_by_server(s)
        s.close()
        # 0 turns the limit off (not waited for here: that would be a timing test); the
        # server starts and serves.
        d.qmp.execute('nbd-server-stop')
        d.qmp.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': sock}},
                      **{'handshake-max-seconds': 0})
        d.qmp.execute('block-export-add', type='nbd', id='e0', **{'node-name': 'f0'})
        r = nbdinfo_size('nbd+unix:///f0?socket=%s' % sock)
        assert r.returncode == 0 and r.stdout.strip() == str(1 << 20), r.stderr
    finally:
        assert d.stop() == 0


def test_failed_handshake_closes_before_the_limit(tmp_path):
    """A client whose bad handshake bytes are already queued when the server starts on it
    fails without the server suspending: the watchdog must not then hold the finished
    connection (and its socket) open until handshake-max-seconds. Regression: each such
    client stayed connected for the whole limit."""
    disk = tmp_path / 'disk.raw'
    make_raw(disk, 1 << 20)
    sock = str(tmp_path / 'nbd.sock')
    d = Daemon(tmp_path, ['--blockdev', 'driver=file,node-name=f0,filename=%s' % disk,
                          '--nbd-server',
                          'addr.type=unix,addr.path=%s,handshake-max-seconds=300' % sock,
                          '--export', 'type=nbd,id=e0,node-name=f0,name=disk'])
    try:
        for _ in range(20):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(sock)
            s.sendall(b'\xff\xff\xff\xff')  # unknown client flags, sent before reading
            s.shutdown(socket.SHUT_WR)
            s.settimeout(GENEROUS)  # far below the 300 s limit
            got = b''
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            assert got.startswith(b'NBDMAGICIHAVEOPT')
            s.close()
    finally:
        assert d.stop() == 0
