"""Fleecing acceptance scenarios (research/qemu-fleecing.md §5.2, §5.4, §5.5) against fleeced
with qemu-io over NBD, for both fleecing schemes:
- snapshot-access: copy-before-write (CBW) into a raw fleecing file, snapshot-access on top,
  the snapshot-access node exported;
- backing (the seed's): a qcow2 fleecing image whose backing is the active disk, exported
  directly, and the CBW target is that image.
§5.2 image fleecing (patterns, overwrites, zero reads, cleanup, confirmed writes) and §5.5
(discards freeing fleecing space) run for both; §5.4 (CBW error and timeout policies, with
the fault-injection node and a slow nbdkit target) for snapshot-access, where the policy is
visible as snapshot read errors."""

import os
import subprocess

import pytest

from fleece_testlib import Daemon, QmpError, allocated, make_raw, qemu_io
from fleecing_layout import MiB, SIZE, PATTERNS, OVERWRITES, ZEROES, REMAINDER, reads, writes

KiB = 1024


def start_nbd(q, tmp):
    sock = str(tmp / 'nbd.sock')
    q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': sock}})
    return sock


def uri(sock, name):
    return 'nbd+unix:///%s?socket=%s' % (name, sock)


# ---- both schemes: the graph ---------------------------------------------------------------

SCHEMES = ['snapshot-access', 'backing']


class Fleecing:
    """A running daemon with the disk 'source' (patterns written), the guest export 'guest' on
    the CBW node, and the snapshot export 'snap' (the snapshot-access node, or the qcow2
    fleecing image itself in the backing scheme)."""

    def __init__(self, tmp_path, scheme, snap_writable=False, source_discard='ignore'):
        self.scheme = scheme
        self.source = str(tmp_path / 'source.raw')
        make_raw(self.source, SIZE)
        qemu_io(self.source, *writes(PATTERNS))
        if scheme == 'snapshot-access':
            self.temp = str(tmp_path / 'fleece.raw')
            make_raw(self.temp, SIZE)
        else:
            self.temp = str(tmp_path / 'fleece.qcow2')
            subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', self.source, '-F', 'raw',
                            self.temp, str(SIZE)], check=True)
        self.d = Daemon(tmp_path)
        q = self.q = self.d.qmp
        q.execute('blockdev-add', driver='file', filename=self.source, discard=source_discard,
                  **{'node-name': 'source'})
        if scheme == 'snapshot-access':
            q.execute('blockdev-add', driver='file', filename=self.temp, discard='unmap', **{'node-name': 'temp'})
        else:
            q.execute('blockdev-add', driver='qcow2', backing='source', discard='unmap', **{'node-name': 'temp'},
                      file={'driver': 'file', 'filename': self.temp, 'discard': 'unmap'})
        q.execute('blockdev-add', driver='copy-before-write', file='source', target='temp', **{'node-name': 'fl-cbw'})
        if scheme == 'snapshot-access':
            q.execute('blockdev-add', driver='snapshot-access', file='fl-cbw', discard='unmap',
                      **{'node-name': 'fl-access'})
            self.snap_node = 'fl-access'
        else:
            self.snap_node = 'temp'
        self.sock = start_nbd(q, tmp_path)
        q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True, **{'node-name': 'fl-cbw'})
        q.execute('block-export-add', type='nbd', id='snap', name='snap', writable=snap_writable,
                  **{'node-name': self.snap_node})
        self.guest = uri(self.sock, 'guest')
        self.snap = uri(self.sock, 'snap')

    def teardown(self):
        """§5.2 step 7: stop NBD, take the fleecing nodes out, close the disk."""
        q = self.q
        q.execute('nbd-server-stop')
        if self.scheme == 'snapshot-access':
            q.execute('blockdev-del', **{'node-name': 'fl-access'})
        q.execute('blockdev-del', **{'node-name': 'fl-cbw'})
        q.execute('blockdev-del', **{'node-name': 'temp'})
        q.execute('blockdev-del', **{'node-name': 'source'})
        assert self.d.stop() == 0


@pytest.fixture(params=SCHEMES)
def scheme(request, tmp_path):
    f = Fleecing(tmp_path, request.param)
    yield f
    if f.d.proc.poll() is None:
        f.d.stop()


# ---- §5.2: image fleecing, pulled over NBD -----------------------------------------------------


def test_image_fleecing_pull(scheme):
    f = scheme
    # Step 4: sanity, patterns and zeroes in the snapshot.
    qemu_io(f.snap, *reads(PATTERNS + ZEROES), read_only=True)
    # Step 5: the guest overwrites, through the CBW node.
    qemu_io(f.guest, *writes(OVERWRITES))
    # Step 6: the snapshot is unchanged, the guest sees its writes.
    qemu_io(f.snap, *reads(PATTERNS + ZEROES), read_only=True)
    qemu_io(f.guest, *reads(OVERWRITES + REMAINDER), read_only=True)
    # Step 7 and 8: clean up, then the writes are in the disk file itself.
    f.teardown()
    qemu_io(f.source, *reads(OVERWRITES + REMAINDER), read_only=True)
    if f.scheme == 'backing':
        # The copies are in the fleecing image, which is still a valid qcow2 over the disk.
        subprocess.run(['qemu-img', 'check', '-q', f.temp], check=True)
        qemu_io(f.temp, *reads(PATTERNS[:1]), read_only=True, fmt='qcow2')


def test_zero_reads_and_overwrites_of_zero_areas(scheme):
    f = scheme
    # Write-zeroes and discard by the guest also copy first; a pattern written into a zero
    # area copies zeroes (stored as zeroes or left unallocated), which the snapshot reads.
    qemu_io(f.guest, 'write -z 1M 64k', 'discard 32M 64k', 'write -P 0x44 40M 64k')
    qemu_io(f.snap, 'read -P 0xd5 1M 64k', 'read -P 0xdc 32M 64k', 'read -P 0 40M 64k', read_only=True)
    qemu_io(f.guest, 'read -P 0 1M 64k', 'read -P 0x44 40M 64k', read_only=True)


# ---- §5.5: discards through the snapshot ---------------------------------------------------


def start_fleecing(tmp_path, **cbw_options):
    source = str(tmp_path / 'source.raw')
    temp = str(tmp_path / 'fleece.raw')
    make_raw(source, SIZE)
    make_raw(temp, SIZE)
    qemu_io(source, *['write -P %s %s %s' % p for p in PATTERNS])
    d = Daemon(tmp_path)
    q = d.qmp
    q.execute('blockdev-add', driver='file', filename=source, **{'node-name': 'source'})
    q.execute('blockdev-add', driver='file', filename=temp, discard='unmap', **{'node-name': 'temp'})
    q.execute('blockdev-add', driver='copy-before-write', file='source', target='temp',
              **{'node-name': 'fl-cbw'}, **cbw_options)
    q.execute('blockdev-add', driver='snapshot-access', file='fl-cbw', discard='unmap', **{'node-name': 'fl-access'})
    sock = start_nbd(q, tmp_path)
    q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True, **{'node-name': 'fl-cbw'})
    q.execute('block-export-add', type='nbd', id='snap', name='snap', writable=True, **{'node-name': 'fl-access'})
    return d, temp, sock


@pytest.fixture
def fleece(tmp_path):
    # QEMU's exact copies, so the cluster counts are the research scenario's (copy-ahead,
    # fleeced's default, is checked on its own below).
    d, temp, sock = start_fleecing(tmp_path, **{'x-copy-window': 0})
    yield d, temp, sock
    d.stop()


def test_copy_ahead_saves_a_window_written_in_twice(tmp_path):
    d, temp, sock = start_fleecing(tmp_path)
    try:
        guest, snap = uri(sock, 'guest'), uri(sock, 'snap')
        qemu_io(guest, 'write -P 0x61 0 4k')
        assert allocated(temp) == 64 * KiB  # the first write in a window: its cluster only
        qemu_io(guest, 'write -P 0x62 300k 4k', 'write -P 0x63 32M 4k')
        # The second write in window 0 saved the rest of it (1 MiB in all); the first write
        # in window 32 its cluster only.
        assert allocated(temp) == MiB + 64 * KiB
        qemu_io(snap, *['read -P %s %s %s' % p for p in PATTERNS + ZEROES])
    finally:
        d.stop()


def test_snapshot_discard_frees_fleecing_space_and_stops_cbw(fleece):
    d, temp, sock = fleece
    guest, snap = uri(sock, 'guest'), uri(sock, 'snap')
    qemu_io(guest, *['write -P %s %s %s' % p for p in OVERWRITES])
    qemu_io(snap, *['read -P %s %s %s' % p for p in PATTERNS + ZEROES])
    # Six clusters were copied: 0, 0xf0000, 0x100000, 0x2000000, 0x2010000, 0x3fe0000. The
    # zero cluster 0x3fe0000 may be stored as a hole, so count what the data needs.
    before = allocated(temp)
    assert 5 * 64 * KiB <= before <= 6 * 64 * KiB, before

    # Aligned discard of cluster 0: unreadable afterwards, its neighbours are not.
    qemu_io(snap, 'discard 0 64k')
    out = qemu_io(snap, 'read 0 64k', check=False)
    assert 'read failed' in out, out
    qemu_io(snap, 'read -P 0 64k 64k', 'read -P 0xd5 1M 64k')
    assert allocated(temp) == before - 64 * KiB

    # The guest rewrites the discarded cluster: no copy any more, the image does not grow.
    qemu_io(guest, 'write -P 0x77 0 64k')
    assert allocated(temp) == before - 64 * KiB

    # An unaligned discard is shrunk to nothing: no crash, still readable.
    qemu_io(snap, 'discard 1M 32k', 'discard 0x100100 0x1ff00')
    qemu_io(snap, 'read -P 0xd5 1M 64k')

    # Discarding the whole snapshot frees everything; block status then fails.
    qemu_io(snap, 'discard 0 64M')
    assert allocated(temp) == 0
    p = subprocess.run(['nbdinfo', '--map', snap], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0, p.stdout
    out = qemu_io(snap, 'read 32M 64k', check=False)
    assert 'read failed' in out, out
    # The daemon still serves the guest.
    qemu_io(guest, 'read -P 0x77 0 64k', 'read -P 0xab 64k 0', 'read -P 0x1d 0x2008000 64k')


def test_backing_scheme_discard_equivalent(tmp_path):
    """§5.5's discards come from the snapshot reader through a writable snapshot-access export.
    In the backing scheme the snapshot is the fleecing image itself, which the CBW filter
    writes and keeps from every other writer, so that step does not apply: a writable export
    of it (and a push backup with discard-source from it) is refused with a clear message.
    What does apply is discard from the guest side: a guest discard is copied before it lands,
    the snapshot keeps the old data, and the copies are all the image holds."""
    f = Fleecing(tmp_path, 'backing', source_discard='unmap')
    try:
        with pytest.raises(QmpError) as e:
            f.q.execute('block-export-add', type='nbd', id='snapw', name='snapw', writable=True,
                        **{'node-name': 'temp'})
        assert "'write'" in e.value.desc and 'fl-cbw' in e.value.desc and 'temp' in e.value.desc
        target = str(tmp_path / 'target.raw')
        make_raw(target, SIZE)
        f.q.execute('blockdev-add', driver='file', filename=target, **{'node-name': 'target'})
        with pytest.raises(QmpError) as e:
            f.q.execute('blockdev-backup', device='temp', target='target', sync='full',
                        **{'job-id': 'bk', 'discard-source': True})
        assert "'write'" in e.value.desc and 'fl-cbw' in e.value.desc, e.value.desc
        assert f.q.execute('query-jobs') == []
        f.q.execute('blockdev-del', **{'node-name': 'target'})

        before = allocated(f.temp)
        qemu_io(f.guest, 'discard 0 64k', 'discard 32M 128k', 'write -z 0x3ff0000 64k')
        qemu_io(f.guest, 'read -P 0 0 64k', 'read -P 0 32M 128k', 'read -P 0 0x3ff0000 64k', read_only=True)
        qemu_io(f.snap, *reads(PATTERNS + ZEROES), read_only=True)
        # Copied: cluster 0, 32M and 32M+64k, 0x3ff0000 (the zero cluster may be a hole).
        grown = allocated(f.temp) - before
        assert 3 * 64 * KiB <= grown <= 4 * 64 * KiB + 64 * KiB, grown  # + one L2/refcount block
        f.teardown()
        # The guest's discards reached the disk; the image is a clean qcow2 with the copies.
        qemu_io(f.source, 'read -P 0 0 64k', 'read -P 0xd5 1M 64k', read_only=True)
        subprocess.run(['qemu-img', 'check', '-q', f.temp], check=True)
        qemu_io(f.temp, 'read -P 0x5d 0 64k', 'read -P 0xdc 32M 64k', read_only=True, fmt='qcow2')
    finally:
        if f.d.proc.poll() is None:
            f.d.stop()


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
