"""Live filter insertion with blockdev-replace: a guest keeps writing through its NBD export
while a copy-before-write filter is put under the export and taken out again. No guest
write fails, and the snapshot holds the disk as it was at the insertion point."""

import struct
import threading
import time

import nbd
import pytest

from fleece_testlib import Daemon, QmpError, make_raw, qemu_io

KiB = 1024
SIZE = 4 * 1024 * KiB
SLOT = 64 * KiB          # one slot per copy cluster
SLOTS = SIZE // SLOT
BLOCK = 4 * KiB          # the guest writes the first 4 KiB of a slot


def block_for(generation):
    return struct.pack('<Q', generation) * (BLOCK // 8)


def generation_of(data):
    (gen,) = struct.unpack_from('<Q', data)
    assert data == struct.pack('<Q', gen) * (BLOCK // 8), 'torn block'
    return gen


class GuestWriter(threading.Thread):
    """Writes generation k into slot k % SLOTS, one request at a time, logging times."""

    def __init__(self, uri):
        super().__init__(daemon=True)
        self.h = nbd.NBD()
        self.h.connect_uri(uri)
        self.log = []  # (generation, slot, start, end)
        self.errors = []
        self.stop = threading.Event()

    def run(self):
        gen = 1
        try:
            while not self.stop.is_set():
                slot = gen % SLOTS
                start = time.monotonic()
                self.h.pwrite(block_for(gen), slot * SLOT)
                self.log.append((gen, slot, start, time.monotonic()))
                gen += 1
        except Exception as e:  # noqa: BLE001 - any failure is a test failure
            self.errors.append(repr(e))
        finally:
            self.h.shutdown()

    def wait_for_writes(self, count, timeout=60):
        target = len(self.log) + count
        deadline = time.monotonic() + timeout
        while len(self.log) < target:
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, 'guest writer stalled'
            time.sleep(0.01)


@pytest.fixture
def guest(tmp_path):
    disk = str(tmp_path / 'disk.raw')
    temp = str(tmp_path / 'fleece.raw')
    make_raw(disk, SIZE)
    make_raw(temp, SIZE)
    d = Daemon(tmp_path)
    q = d.qmp
    q.execute('blockdev-add', driver='file', filename=disk, **{'node-name': 'disk'})
    q.execute('blockdev-add', driver='file', filename=temp, discard='unmap', **{'node-name': 'temp'})
    sock = str(tmp_path / 'nbd.sock')
    q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': sock}})
    q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True, **{'node-name': 'disk'})
    yield d, sock
    d.stop()


def export_node(q, export_id):
    for e in q.execute('query-block-exports'):
        if e['id'] == export_id:
            return e['node-name']
    raise AssertionError('no export ' + export_id)


def test_insert_and_remove_cbw_under_a_writing_guest(guest):
    d, sock = guest
    q = d.qmp
    writer = GuestWriter('nbd+unix:///guest?socket=' + sock)
    writer.start()
    try:
        writer.wait_for_writes(200)
        q.execute('blockdev-add', driver='copy-before-write', file='disk', target='temp', **{'node-name': 'fl-cbw'})
        t0 = time.monotonic()
        q.execute('blockdev-replace', **{'parent-type': 'export', 'id': 'guest', 'new-child': 'fl-cbw'})
        t1 = time.monotonic()
        assert export_node(q, 'guest') == 'fl-cbw'
        q.execute('blockdev-add', driver='snapshot-access', file='fl-cbw', **{'node-name': 'fl-access'})
        q.execute('block-export-add', type='nbd', id='snap', name='snap', **{'node-name': 'fl-access'})
        writer.wait_for_writes(300)  # several rounds over every slot: all are copied

        snap = nbd.NBD()
        snap.connect_uri('nbd+unix:///snap?socket=' + sock)
        snapshot = [generation_of(snap.pread(BLOCK, s * SLOT)) for s in range(SLOTS)]
        snap.shutdown()

        # Take the filter out again, guest still writing.
        q.execute('block-export-del', id='snap')
        q.execute('blockdev-del', **{'node-name': 'fl-access'})
        q.execute('blockdev-replace', **{'parent-type': 'export', 'id': 'guest', 'new-child': 'disk'})
        assert export_node(q, 'guest') == 'disk'
        q.execute('blockdev-del', **{'node-name': 'fl-cbw'})
        writer.wait_for_writes(200)
    finally:
        writer.stop.set()
        writer.join(30)
    assert not writer.errors, writer.errors

    # Every slot of the snapshot holds a generation the disk had at the insertion point:
    # at least the last write that ended before the command was sent, and none that
    # started after its reply.
    for slot in range(SLOTS):
        done_before = [g for g, s, start, end in writer.log if s == slot and end < t0]
        started_before = {g for g, s, start, end in writer.log if s == slot and start < t1}
        lower = max(done_before, default=0)
        assert snapshot[slot] >= lower, (slot, snapshot[slot], lower)
        assert snapshot[slot] == 0 or snapshot[slot] in started_before, (slot, snapshot[slot])
    # The live disk holds the last write of each slot.
    last = {}
    for g, s, _, _ in writer.log:
        last[s] = g
    h = nbd.NBD()
    h.connect_uri('nbd+unix:///guest?socket=' + sock)
    for slot, g in last.items():
        assert generation_of(h.pread(BLOCK, slot * SLOT)) == g
    h.shutdown()


def test_removal_is_refused_while_a_snapshot_reader_needs_the_filter(guest):
    d, _ = guest
    q = d.qmp
    q.execute('blockdev-add', driver='copy-before-write', file='disk', target='temp', **{'node-name': 'fl-cbw'})
    q.execute('blockdev-replace', **{'parent-type': 'export', 'id': 'guest', 'new-child': 'fl-cbw'})
    q.execute('blockdev-add', driver='snapshot-access', file='fl-cbw', **{'node-name': 'fl-access'})
    # With the snapshot alive, nobody may write the disk except through the filter.
    with pytest.raises(QmpError) as e:
        q.execute('blockdev-replace', **{'parent-type': 'export', 'id': 'guest', 'new-child': 'disk'})
    assert "'write'" in e.value.desc and "'disk'" in e.value.desc, e.value.desc
    assert export_node(q, 'guest') == 'fl-cbw'


def test_bad_replace_requests_get_clear_errors(guest, tmp_path):
    d, sock = guest
    q = d.qmp
    small = str(tmp_path / 'small.raw')
    make_raw(small, SIZE // 2)
    q.execute('blockdev-add', driver='file', filename=small, **{'node-name': 'small'})
    cases = [
        ({'parent-type': 'export', 'id': 'nope', 'new-child': 'temp'}, "Export 'nope'"),
        ({'parent-type': 'export', 'id': 'guest', 'new-child': 'nope'}, "node-name='nope'"),
        ({'parent-type': 'export', 'id': 'guest', 'new-child': 'small'}, 'size'),
        ({'parent-type': 'qdev', 'new-child': 'temp'}, 'qdev'),
        ({'parent-type': 'bogus', 'new-child': 'temp'}, 'bogus'),
        ({'parent-type': 'driver', 'parent': 'disk', 'child': 'file', 'new-child': 'temp'}, "no child named 'file'"),
    ]
    for args, needle in cases:
        with pytest.raises(QmpError) as e:
            q.execute('blockdev-replace', **args)
        assert needle in e.value.desc, (args, e.value.desc)
    # A loop is refused: the filter cannot become its own file's parent's child.
    q.execute('blockdev-add', driver='raw', file='disk', **{'node-name': 'fmt'})
    q.execute('blockdev-add', driver='copy-before-write', file='fmt', target='temp', **{'node-name': 'fl-cbw'})
    with pytest.raises(QmpError) as e:
        q.execute('blockdev-replace', **{'parent-type': 'driver', 'parent': 'fmt', 'child': 'file', 'new-child': 'fl-cbw'})
    assert 'loop' in e.value.desc, e.value.desc
    # The daemon still serves the guest.
    qemu_io('nbd+unix:///guest?socket=' + sock, 'write -P 7 0 4k', 'read -P 7 0 4k')


def test_filter_under_a_format_node_via_driver_edge(guest, tmp_path):
    """parent-type driver: insert the filter between a raw format node and its file."""
    d, sock = guest
    q = d.qmp
    q.execute('block-export-del', id='guest')
    q.execute('blockdev-add', driver='raw', file='disk', **{'node-name': 'fmt'})
    q.execute('block-export-add', type='nbd', id='g2', name='g2', writable=True, **{'node-name': 'fmt'})
    uri = 'nbd+unix:///g2?socket=' + sock
    qemu_io(uri, 'write -P 0x11 0 64k')
    q.execute('blockdev-add', driver='copy-before-write', file='disk', target='temp', **{'node-name': 'fl-cbw'})
    q.execute('blockdev-replace', **{'parent-type': 'driver', 'parent': 'fmt', 'child': 'file', 'new-child': 'fl-cbw'})
    q.execute('blockdev-add', driver='snapshot-access', file='fl-cbw', **{'node-name': 'fl-access'})
    q.execute('block-export-add', type='nbd', id='snap', name='snap', **{'node-name': 'fl-access'})
    qemu_io(uri, 'write -P 0x22 0 64k')
    qemu_io('nbd+unix:///snap?socket=' + sock, 'read -P 0x11 0 64k', read_only=True)
    qemu_io(uri, 'read -P 0x22 0 64k', read_only=True)
