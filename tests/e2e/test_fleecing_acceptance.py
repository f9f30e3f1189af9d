"""Fleecing acceptance scenarios (research/qemu-fleecing.md §5.4, §5.5) against fleeced with
qemu-io over NBD: snapshot discards freeing fleecing space, and the copy-before-write error
and timeout policies with the fault-injection node and a slow nbdkit target."""

import os
import subprocess

import pytest

from fleece_testlib import Daemon, make_raw, qemu_io
from fleecing_layout import MiB, SIZE, PATTERNS, OVERWRITES, ZEROES

KiB = 1024


def usage(path):
    return os.stat(path).st_blocks * 512


def start_nbd(q, tmp):
    sock = str(tmp / 'nbd.sock')
    q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': sock}})
    return sock


def uri(sock, name):
    return 'nbd+unix:///%s?socket=%s' % (name, sock)


# ---- §5.5: discards through the snapshot ---------------------------------------------------


@pytest.fixture
def fleece(tmp_path):
    source = str(tmp_path / 'source.raw')
    temp = str(tmp_path / 'fleece.raw')
    make_raw(source, SIZE)
    make_raw(temp, SIZE)
    qemu_io(source, *['write -P %s %s %s' % p for p in PATTERNS])
    d = Daemon(tmp_path)
    q = d.qmp
    q.execute('blockdev-add', driver='file', filename=source, **{'node-name': 'source'})
    q.execute('blockdev-add', driver='file', filename=temp, discard='unmap', **{'node-name': 'temp'})
    q.execute('blockdev-add', driver='copy-before-write', file='source', target='temp', **{'node-name': 'fl-cbw'})
    q.execute('blockdev-add', driver='snapshot-access', file='fl-cbw', discard='unmap', **{'node-name': 'fl-access'})
    sock = start_nbd(q, tmp_path)
    q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True, **{'node-name': 'fl-cbw'})
    q.execute('block-export-add', type='nbd', id='snap', name='snap', writable=True, **{'node-name': 'fl-access'})
    yield d, temp, sock
    d.stop()


def test_snapshot_discard_frees_fleecing_space_and_stops_cbw(fleece):
    d, temp, sock = fleece
    guest, snap = uri(sock, 'guest'), uri(sock, 'snap')
    qemu_io(guest, *['write -P %s %s %s' % p for p in OVERWRITES])
    qemu_io(snap, *['read -P %s %s %s' % p for p in PATTERNS + ZEROES])
    # Six clusters were copied: 0, 0xf0000, 0x100000, 0x2000000, 0x2010000, 0x3fe0000. The
    # zero cluster 0x3fe0000 may be stored as a hole, so count what the data needs.
    before = usage(temp)
    assert 5 * 64 * KiB <= before <= 6 * 64 * KiB, before

    # Aligned discard of cluster 0: unreadable afterwards, its neighbours are not.
    qemu_io(snap, 'discard 0 64k')
    out = qemu_io(snap, 'read 0 64k', check=False)
    assert 'read failed' in out, out
    qemu_io(snap, 'read -P 0 64k 64k', 'read -P 0xd5 1M 64k')
    assert usage(temp) == before - 64 * KiB

    # The guest rewrites the discarded cluster: no copy any more, the image does not grow.
    qemu_io(guest, 'write -P 0x77 0 64k')
    assert usage(temp) == before - 64 * KiB

    # An unaligned discard is shrunk to nothing: no crash, still readable.
    qemu_io(snap, 'discard 1M 32k', 'discard 0x100100 0x1ff00')
    qemu_io(snap, 'read -P 0xd5 1M 64k')

    # Discarding the whole snapshot frees everything; block status then fails.
    qemu_io(snap, 'discard 0 64M')
    assert usage(temp) == 0
    p = subprocess.run(['nbdinfo', '--map', snap], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0, p.stdout
    out = qemu_io(snap, 'read 32M 64k', check=False)
    assert 'read failed' in out, out
    # The daemon still serves the guest.
    qemu_io(guest, 'read -P 0x77 0 64k', 'read -P 0xab 64k 0', 'read -P 0x1d 0x2008000 64k')


def test_zero_reads_and_overwrites_of_zero_areas(fleece):
    d, temp, sock = fleece
    guest, snap = uri(sock, 'guest'), uri(sock, 'snap')
    qemu_io(guest, 'write -z 1M 64k', 'discard 32M 64k', 'write -P 0x44 40M 64k')
    qemu_io(snap, 'read -P 0xd5 1M 64k', 'read -P 0xdc 32M 64k', 'read -P 0 40M 64k', read_only=True)
    qemu_io(guest, 'read -P 0 1M 64k', 'read -P 0x44 40M 64k', read_only=True)


# ---- §5.4: CBW errors and timeouts -----------------------------------------------------------

def cbw_graph(tmp_path, policy, target_def, timeout=None):
    source = str(tmp_path / 'source.raw')
    make_raw(source, MiB)
    qemu_io(source, 'write -P 0x5a 0 1M')
    d = Daemon(tmp_path)
    q = d.qmp
    q.execute('blockdev-add', driver='file', filename=source, **{'node-name': 'source'})
    q.execute('blockdev-add', **target_def)
    cbw = {'driver': 'copy-before-write', 'file': 'source', 'target': 'tgt',
           'node-name': 'fl-cbw', 'on-cbw-error': policy}
    if timeout is not None:
        cbw['cbw-timeout'] = timeout
    q.execute('blockdev-add', **cbw)
    q.execute('blockdev-add', driver='snapshot-access', file='fl-cbw', **{'node-name': 'fl-access'})
    sock = start_nbd(q, tmp_path)
    q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True, **{'node-name': 'fl-cbw'})
    q.execute('block-export-add', type='nbd', id='snap', name='snap', **{'node-name': 'fl-access'})
    return d, sock


def failing_target(tmp_path):
    temp = str(tmp_path / 'temp.raw')
    make_raw(temp, MiB)
    return {'driver': 'fault-injection', 'node-name': 'tgt',
            'file': {'driver': 'file', 'filename': temp},
            'rules': [{'operation': 'write', 'errno': 5, 'once': True}]}


def test_cbw_error_break_snapshot(tmp_path):
    d, sock = cbw_graph(tmp_path, 'break-snapshot', failing_target(tmp_path))
    try:
        out = qemu_io(uri(sock, 'guest'), 'write -P 0x11 0 1M')
        assert 'wrote 1048576/1048576' in out
        out = qemu_io(uri(sock, 'snap'), 'read 0 1M', read_only=True, check=False)
        assert 'read failed' in out, out
        # Later writes are not stalled or failed by the broken snapshot.
        qemu_io(uri(sock, 'guest'), 'write -P 0x12 0 64k', 'read -P 0x12 0 64k')
    finally:
        d.stop()


def test_cbw_error_break_guest_write(tmp_path):
    d, sock = cbw_graph(tmp_path, 'break-guest-write', failing_target(tmp_path))
    try:
        out = qemu_io(uri(sock, 'guest'), 'write -P 0x11 0 1M', check=False)
        assert 'write failed: Input/output error' in out, out
        qemu_io(uri(sock, 'snap'), 'read -P 0x5a 0 1M', read_only=True)
        # The failed write left the disk alone; a retry (the rule fired once) succeeds.
        qemu_io(uri(sock, 'guest'), 'read -P 0x5a 0 1M', read_only=True)
        qemu_io(uri(sock, 'guest'), 'write -P 0x11 0 1M')
        qemu_io(uri(sock, 'snap'), 'read -P 0x5a 0 1M', read_only=True)
    finally:
        d.stop()


@pytest.fixture
def slow_target(tmp_path):
    """nbdkit memory disk whose writes take 3 s (the delay filter): a slow fleecing target."""
    sock = str(tmp_path / 'slow.sock')
    pidfile = str(tmp_path / 'nbdkit.pid')
    p = subprocess.Popen(['nbdkit', '--exit-with-parent', '-f', '-U', sock, '-P', pidfile,
                          '--filter=delay', 'memory', '1M', 'delay-write=3'])
    for _ in range(200):
        if os.path.exists(pidfile):
            break
        p.poll()
        assert p.returncode is None, 'nbdkit exited'
        subprocess.run(['sleep', '0.05'])
    yield {'driver': 'raw', 'node-name': 'tgt',
           'file': {'driver': 'nbd', 'server': {'type': 'unix', 'path': sock}}}
    p.terminate()
    p.wait(timeout=20)


def test_cbw_timeout_break_guest_write(tmp_path, slow_target):
    d, sock = cbw_graph(tmp_path, 'break-guest-write', slow_target, timeout=1)
    try:
        out = qemu_io(uri(sock, 'guest'), 'write -P 0x11 0 512k', check=False)
        assert 'write failed' in out, out
        qemu_io(uri(sock, 'snap'), 'read -P 0x5a 0 1M', read_only=True)
        qemu_io(uri(sock, 'guest'), 'read -P 0x5a 0 1M', read_only=True)
    finally:
        # Stopping waits for the timed-out copy still in flight on the slow target.
        assert d.stop() == 0


def test_cbw_timeout_break_snapshot(tmp_path, slow_target):
    d, sock = cbw_graph(tmp_path, 'break-snapshot', slow_target, timeout=1)
    try:
        qemu_io(uri(sock, 'guest'), 'write -P 0x11 0 512k', 'write -P 0x22 512k 512k')
        out = qemu_io(uri(sock, 'snap'), 'read 0 1M', read_only=True, check=False)
        assert 'read failed' in out, out
        qemu_io(uri(sock, 'guest'), 'read -P 0x11 0 512k', 'read -P 0x22 512k 512k', read_only=True)
    finally:
        assert d.stop() == 0
