"""A QMP client that sends commands but never reads its replies is dropped once its
queued output passes the per-client bound; the daemon keeps serving everyone else."""

import json
import socket
import time

from fleece_testlib import Daemon, Qmp


def test_client_that_never_reads_is_dropped(tmp_path):
    d = Daemon(tmp_path)
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(d.qmp_path)
        s.settimeout(60)
        request = (json.dumps({'execute': 'qmp_capabilities'}) + '\n').encode()
        request += (json.dumps({'execute': 'query-commands'}) + '\n').encode() * 20000
        try:
            s.sendall(request)  # about 16 MiB of replies (800 bytes each), none read
        except (BrokenPipeError, ConnectionResetError):
            pass  # already dropped
        # Now read: the daemon must end the connection before it sent every reply.
        received = b''
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(1 << 16)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        replies = received.count(b'"return"')
        assert replies < 20001, 'the client was never dropped'
        s.close()
        # Everyone else is still served.
        other = Qmp(d.qmp_path)
        assert other.execute('query-version')['qemu']['major'] == 7
        assert d.qmp.execute('query-version')['qemu']['major'] == 7
    finally:
        assert d.stop() == 0
    log = open(tmp_path / 'fleeced.log').read()
    assert 'dropping a client that does not read its replies' in log, log
