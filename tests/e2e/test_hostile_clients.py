"""Thousands of random, mutated and truncated messages leave the daemon serving.

Against a real fleeced, several QMP connections send random bytes, mutations of valid
commands and truncated messages (some connections are closed in the middle of a message),
and many NBD connections send random and truncated handshakes and, after a valid
handshake, random, mutated and truncated requests. Afterwards the daemon is alive, a fresh
QMP client gets correct replies, and an NBD client that was connected all along (libnbd)
still reads the right data. Every random choice comes from a fixed seed."""

import json
import random
import selectors
import socket
import struct
import time

import nbd
import pytest

from fleece_testlib import Daemon, Qmp, qemu_io, make_raw
import nbd_raw

SIZE = 4 << 20
QMP_CONNECTIONS = 8
QMP_MESSAGES_PER_CONNECTION = 500
NBD_HANDSHAKES = 1500
NBD_REQUEST_CONNECTIONS = 60
NBD_REQUESTS_PER_CONNECTION = 60
HANG_GUARD = 60  # seconds a single connection may take before the test calls it a hang

# ---- byte-level mutations ---------------------------------------------------------------


def mutate(rng, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:  # flip bits of one byte
            b[min(pos, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:  # insert a random byte
            b.insert(pos, rng.randrange(256))
        elif op == 2 and b:  # delete a run
            del b[pos:pos + rng.randint(1, 8)]
        elif op == 3:  # insert a character that matters to the parser
            b.insert(pos, rng.choice(b'{}[]":,\\ \n\x00\xff'))
        elif op == 4 and b:  # duplicate a run
            end = min(len(b), pos + rng.randint(1, 16))
            b[pos:pos] = b[pos:end]
        elif op == 5 and b:  # overwrite a byte with an extreme value
            b[min(pos, len(b) - 1)] = rng.choice((0x00, 0x7f, 0x80, 0xff))
    return bytes(b)


def truncate(rng, data: bytes) -> bytes:
    return data[:rng.randrange(len(data))] if data else data


def random_bytes(rng, n):
    return rng.randbytes(n)


class Blaster:
    """One connection that writes `data` while draining whatever the server sends, so
    neither side can block on a full socket buffer. close_early: close right after the
    last byte (without reading); otherwise half-close and read to the server's EOF."""

    def __init__(self, path=None, sock=None, received=b''):
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(path)
        self.sock = sock
        self.sock.setblocking(False)
        self.received = bytearray(received)

    def run(self, data: bytes, close_early=False):
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        deadline = time.monotonic() + HANG_GUARD
        view = memoryview(data)
        sent = 0
        eof = False
        shut = False
        try:
            while not eof:
                if sent == len(data) and not shut:
                    if close_early:
                        return
                    try:
                        self.sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    shut = True
                    sel.modify(self.sock, selectors.EVENT_READ)
                remaining = deadline - time.monotonic()
                assert remaining > 0, 'a connection hung (server neither read nor closed)'
                for _, mask in sel.select(remaining):
                    if mask & selectors.EVENT_READ:
                        try:
                            chunk = self.sock.recv(1 << 20)
                        except (BlockingIOError, InterruptedError):
                            chunk = None
                        except ConnectionResetError:
                            chunk = b''
                        if chunk == b'':
                            eof = True
                        elif chunk:
                            self.received += chunk
                    if mask & selectors.EVENT_WRITE and sent < len(data):
                        try:
                            sent += self.sock.send(view[sent:sent + 65536])
                        except (BlockingIOError, InterruptedError):
                            pass
                        except (BrokenPipeError, ConnectionResetError):
                            # The server gave up on us (bad magic, unknown flags): fine.
                            sent = len(data)
                            shut = True
                            sel.modify(self.sock, selectors.EVENT_READ)
        finally:
            sel.close()
            self.sock.close()


# ---- QMP --------------------------------------------------------------------------------


def valid_qmp_commands(rng):
    n = rng.randrange(16)
    m = rng.randrange(4)
    return [
        {'execute': 'qmp_capabilities'},
        {'execute': 'query-version', 'id': rng.randrange(1 << 31)},
        {'execute': 'query-commands'},
        {'execute': 'query-named-block-nodes'},
        {'execute': 'query-named-block-nodes', 'arguments': {'flat': True}},
        {'execute': 'x-debug-query-block-graph', 'id': 'g%d' % n},
        {'execute': 'query-block-exports'},
        {'execute': 'query-jobs'},
        {'execute': 'query-block-jobs'},
        {'execute': 'blockdev-add',
         'arguments': {'driver': 'null-co', 'node-name': 'h%d' % n, 'size': 1 << 20}},
        {'execute': 'blockdev-add', 'arguments': {'driver': 'raw', 'node-name': 'hr%d' % n,
                                                  'file': 'h%d' % m}},
        {'execute': 'blockdev-del', 'arguments': {'node-name': 'h%d' % n}},
        {'execute': 'blockdev-del', 'arguments': {'node-name': 'hr%d' % n}},
        {'execute': 'blockdev-del', 'arguments': {'node-name': 'f0'}},  # in use: refused
        {'execute': 'block-dirty-bitmap-add', 'arguments': {'node': 'h%d' % m, 'name': 'b%d' % n}},
        {'execute': 'block-dirty-bitmap-remove',
         'arguments': {'node': 'h%d' % m, 'name': 'b%d' % n}},
        {'execute': 'no-such-command', 'id': [n, {'x': None}]},
        {'exec-oob': 'query-version', 'id': n},
    ]


def hostile_qmp_stream(rng, count):
    """`count` messages: valid, mutated, truncated or random, newline-separated or not."""
    parts = []
    for _ in range(count):
        msg = json.dumps(rng.choice(valid_qmp_commands(rng))).encode()
        kind = rng.randrange(10)
        if kind < 3:
            pass
        elif kind < 6:
            msg = mutate(rng, msg)
        elif kind < 8:
            msg = truncate(rng, msg)
        else:
            msg = random_bytes(rng, rng.randrange(1, 200))
        parts.append(msg + (b'\n' if rng.random() < 0.8 else b''))
    return b''.join(parts)


def check_qmp_output(data: bytes):
    """Every complete line the server sent is a QMP greeting, reply or event."""
    lines = data.split(b'\n')
    for line in lines[:-1]:
        if not line.strip():
            continue
        msg = json.loads(line)
        assert isinstance(msg, dict), line
        assert len({'QMP', 'return', 'error', 'event'} & msg.keys()) == 1, line
        if 'error' in msg:
            assert isinstance(msg['error']['class'], str) and msg['error']['desc'], line
    return len(lines) - 1


# ---- NBD --------------------------------------------------------------------------------

REQ = struct.Struct('>IHHQQI')


def opt(option, payload=b''):
    return struct.pack('>QII', nbd_raw.IHAVEOPT, option, len(payload)) + payload


def go_payload(name, infos=()):
    return (struct.pack('>I', len(name)) + name.encode() + struct.pack('>H', len(infos))
            + b''.join(struct.pack('>H', i) for i in infos))


def meta_payload(name, queries):
    return (struct.pack('>I', len(name)) + name.encode() + struct.pack('>I', len(queries))
            + b''.join(struct.pack('>I', len(q)) + q.encode() for q in queries))


def valid_handshake(rng, name):
    parts = [struct.pack('>I', 3)]
    if rng.random() < 0.7:
        parts.append(opt(8))  # STRUCTURED_REPLY
        parts.append(opt(10, meta_payload(name, ['base:allocation', 'qemu:allocation-depth'])))
    if rng.random() < 0.3:
        parts.append(opt(nbd_raw.OPT_LIST))
    if rng.random() < 0.3:
        parts.append(opt(6, go_payload(name, [0, 1, 2, 3])))  # INFO
    parts.append(opt(nbd_raw.OPT_GO, go_payload(name, [rng.randrange(4)])))
    return b''.join(parts)


def random_request(rng, cookie, size):
    kind = rng.choice((0, 0, 0, 1, 1, 3, 4, 5, 6, 7, 7, rng.randrange(1 << 16)))
    flags = rng.choice((0, 0, 1, 2, 4, 8, 16, rng.randrange(1 << 16)))
    if rng.random() < 0.8:
        offset = rng.randrange(size)
        length = rng.choice((0, 1, 512, 4096, 65536, rng.randrange(1, size - offset + 1)))
    else:
        offset = rng.choice((size, size - 1, 1 << 63, (1 << 64) - 1, rng.randrange(1 << 64)))
        length = rng.choice((1, 33 << 20, (1 << 32) - 1, rng.randrange(1 << 32)))
    head = REQ.pack(nbd_raw.REQUEST_MAGIC, flags, kind, cookie, offset, length)
    # Payload for writes, up to a bound (a longer claimed length is cut by the stream end).
    payload = random_bytes(rng, min(length, 4096)) if kind == 1 else b''
    return head + payload


def hostile_handshake(rng):
    name = rng.choice(('ro', 'scratch', '', 'nope'))
    kind = rng.randrange(5)
    if kind == 0:
        return random_bytes(rng, rng.randrange(1, 300))
    if kind == 1:
        return truncate(rng, valid_handshake(rng, name))
    if kind == 2:
        return mutate(rng, valid_handshake(rng, name))
    if kind == 3:  # option header claiming a long payload, then too little of it
        return struct.pack('>I', 3) + struct.pack('>QII', nbd_raw.IHAVEOPT,
                                                  rng.randrange(1 << 32), rng.randrange(1 << 32))
    # a valid handshake followed by a few random options
    extra = b''.join(opt(rng.randrange(16), random_bytes(rng, rng.randrange(40)))
                     for _ in range(rng.randrange(1, 6)))
    return struct.pack('>I', 3) + extra + valid_handshake(rng, name)[4:]


def hostile_requests(rng, count):
    name = rng.choice(('ro', 'scratch'))
    parts = [valid_handshake(rng, name)]
    for i in range(count):
        req = random_request(rng, i, SIZE)
        kind = rng.randrange(10)
        if kind < 5:
            parts.append(req)
        elif kind < 8:
            parts.append(mutate(rng, req))
        elif kind < 9:
            parts.append(truncate(rng, req))
        else:
            parts.append(random_bytes(rng, rng.randrange(1, 64)))
    return b''.join(parts)


# ---- the test ---------------------------------------------------------------------------


@pytest.fixture
def daemon(tmp_path):
    disk = tmp_path / 'disk.raw'
    make_raw(disk, SIZE)
    qemu_io(str(disk), 'write -P 0x5a 0 1M', 'write -P 0xa5 2M 64k')
    scratch = tmp_path / 'scratch.raw'
    make_raw(scratch, SIZE)
    sock = str(tmp_path / 'nbd.sock')
    d = Daemon(tmp_path, [
        '--blockdev', 'driver=file,node-name=f0,filename=%s' % disk,
        '--blockdev', 'driver=file,node-name=f1,filename=%s' % scratch,
        '--nbd-server', 'addr.type=unix,addr.path=%s' % sock,
        '--export', 'type=nbd,id=e0,node-name=f0,name=ro,allocation-depth=on',
        '--export', 'type=nbd,id=e1,node-name=f1,name=scratch,writable=on'])
    d.nbd_sock = sock
    yield d
    assert d.stop() == 0


def expected_disk():
    data = bytearray(SIZE)
    data[0:1 << 20] = b'\x5a' * (1 << 20)
    data[2 << 20:(2 << 20) + 65536] = b'\xa5' * 65536
    return bytes(data)


def read_all(h):
    return b''.join(h.pread(1 << 20, off) for off in range(0, SIZE, 1 << 20))


def test_hostile_clients_leave_the_daemon_serving(daemon):
    expected = expected_disk()
    # An NBD client connected before the storm, kept through it.
    keeper = nbd.NBD()
    keeper.set_export_name('ro')
    keeper.add_meta_context('base:allocation')
    keeper.connect_unix(daemon.nbd_sock)
    assert read_all(keeper) == expected

    # QMP: several connections, each negotiating, checking one reply, then the storm;
    # every other connection is cut in the middle of a message.
    rng = random.Random(20261201)
    replies = 0
    for c in range(QMP_CONNECTIONS):
        q = Qmp(daemon.qmp_path)
        assert q.execute('query-version')['qemu']['major'] == 7
        stream = hostile_qmp_stream(rng, QMP_MESSAGES_PER_CONNECTION)
        cut = c % 2 == 1
        if cut:
            stream += json.dumps({'execute': 'query-version'}).encode()[:rng.randrange(1, 20)]
        b = Blaster(sock=q.sock, received=q.buf)
        b.run(stream, close_early=cut)
        replies += check_qmp_output(bytes(b.received))
        assert daemon.proc.poll() is None, 'fleeced died during QMP connection %d' % c
    assert replies > 0

    # NBD handshakes: random, truncated, mutated; a quarter closed without reading.
    rng = random.Random(42)
    for i in range(NBD_HANDSHAKES):
        Blaster(daemon.nbd_sock).run(hostile_handshake(rng), close_early=i % 4 == 0)
    assert daemon.proc.poll() is None, 'fleeced died during the NBD handshakes'

    # NBD requests after a valid handshake: random, mutated, truncated.
    rng = random.Random(7)
    answered = 0
    for i in range(NBD_REQUEST_CONNECTIONS):
        b = Blaster(daemon.nbd_sock)
        b.run(hostile_requests(rng, NBD_REQUESTS_PER_CONNECTION), close_early=i % 3 == 0)
        answered += len(b.received) > 18 + 20  # more than the greeting and one option reply
    assert daemon.proc.poll() is None, 'fleeced died during the NBD requests'
    assert answered > 0

    # Still serving: the old NBD client reads the same data, a new one too ...
    assert read_all(keeper) == expected
    keeper.shutdown()
    fresh = nbd.NBD()
    fresh.set_export_name('ro')
    fresh.connect_unix(daemon.nbd_sock)
    assert read_all(fresh) == expected
    fresh.shutdown()
    # ... and a fresh QMP client gets correct replies.
    q = Qmp(daemon.qmp_path)
    assert q.execute('query-version')['qemu'] == {'major': 7, 'minor': 2, 'micro': 0}
    names = {n['node-name'] for n in q.execute('query-named-block-nodes')}
    assert {'f0', 'f1'} <= names
    exports = sorted((e['id'], e['node-name']) for e in q.execute('query-block-exports'))
    assert exports == [('e0', 'f0'), ('e1', 'f1')]
    reply = q.command('blockdev-del', **{'node-name': 'f0'})
    assert reply['error']['class'] == 'GenericError'
    reply = q.raw('{"execute": "no-such-command"}')
    assert reply['error']['class'] == 'CommandNotFound'
    assert q.raw('{"execute": ]}')['error']['class'] == 'GenericError'
    assert q.execute('query-version')['qemu']['major'] == 7


def test_replies_reach_a_client_that_half_closes(tmp_path):
    """A client may send its requests and shut down its side at once (echo ... | socat):
    every reply queued before the end of its input still arrives, then the connection ends."""
    d = Daemon(tmp_path)
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(HANG_GUARD)
        s.connect(d.qmp_path)
        requests = [{'execute': 'qmp_capabilities'}] + [
            {'execute': 'query-commands', 'id': i} for i in range(50)]
        s.sendall(b''.join(json.dumps(r).encode() + b'\n' for r in requests))
        s.shutdown(socket.SHUT_WR)
        data = b''
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            data += chunk
        s.close()
        lines = [json.loads(line) for line in data.splitlines() if line.strip()]
        assert 'QMP' in lines[0]
        assert lines[1] == {'return': {}}
        assert [m['id'] for m in lines[2:]] == list(range(50))
        assert all(isinstance(m['return'], list) for m in lines[2:])
    finally:
        assert d.stop() == 0
