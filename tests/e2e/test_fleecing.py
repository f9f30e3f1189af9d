"""QEMU's image-fleecing scenarios (research/qemu-fleecing.md §5.2, §5.3) against fleeced:
the snapshot-access scheme, pulled over NBD and pushed by a backup job."""


import pytest

from fleece_testlib import Daemon, QmpError, make_raw, qemu_io
from fleecing_layout import SIZE, PATTERNS, OVERWRITES, ZEROES, REMAINDER, reads, writes


@pytest.fixture
def fleecing(tmp_path):
    source = str(tmp_path / 'source.raw')
    temp = str(tmp_path / 'fleece.raw')
    make_raw(source, SIZE)
    make_raw(temp, SIZE)
    qemu_io(source, *writes(PATTERNS))
    d = Daemon(tmp_path)
    q = d.qmp
    q.execute('blockdev-add', driver='file', filename=source, **{'node-name': 'source'})
    q.execute('blockdev-add', driver='file', filename=temp, discard='unmap', **{'node-name': 'temp'})
    q.execute('blockdev-add', driver='copy-before-write', file='source', target='temp', **{'node-name': 'fl-cbw'})
    q.execute('blockdev-add', driver='snapshot-access', file='fl-cbw', discard='unmap', **{'node-name': 'fl-access'})
    nbd_sock = str(tmp_path / 'nbd.sock')
    q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': nbd_sock}})
    q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True, **{'node-name': 'fl-cbw'})
    yield d, source, temp, nbd_sock, tmp_path
    d.stop()


def guest_uri(sock):
    return 'nbd+unix:///guest?socket=' + sock


def test_pull_snapshot_is_unchanged_by_guest_writes(fleecing):
    d, source, temp, sock, _ = fleecing
    d.qmp.execute('block-export-add', type='nbd', id='snap', name='snap', **{'node-name': 'fl-access'})
    snap = 'nbd+unix:///snap?socket=' + sock
    qemu_io(snap, *reads(PATTERNS + ZEROES), read_only=True)
    qemu_io(guest_uri(sock), *writes(OVERWRITES))
    qemu_io(snap, *reads(PATTERNS + ZEROES), read_only=True)
    # The guest's writes reached the disk.
    qemu_io(guest_uri(sock), *reads(OVERWRITES + REMAINDER), read_only=True)


def test_writes_to_the_snapshot_are_refused(fleecing):
    d, _, _, sock, _ = fleecing
    d.qmp.execute('block-export-add', type='nbd', id='snap', name='snap', writable=True, **{'node-name': 'fl-access'})
    out = qemu_io('nbd+unix:///snap?socket=' + sock, 'write -P 1 0 4k', check=False)
    assert 'write failed' in out, out


def test_second_writer_on_the_disk_is_refused(fleecing):
    d, _, _, _, _ = fleecing
    with pytest.raises(QmpError) as e:
        d.qmp.execute('block-export-add', type='nbd', id='bad', name='bad', writable=True, **{'node-name': 'source'})
    assert "'write'" in e.value.desc and 'source' in e.value.desc


def test_push_backup_holds_the_point_in_time(fleecing):
    d, source, _, sock, tmp = fleecing
    target = str(tmp / 'target.raw')
    make_raw(target, SIZE)
    q = d.qmp
    q.execute('blockdev-add', driver='file', filename=target, **{'node-name': 'target'})
    q.execute('blockdev-backup', device='fl-access', target='target', sync='full', speed=1, **{'job-id': 'push-backup'})
    qemu_io(guest_uri(sock), *writes(OVERWRITES))
    assert len(q.execute('query-block-jobs')) == 1  # CBW happened while the job ran
    q.execute('block-job-set-speed', device='push-backup', speed=0)
    ev = q.wait_event('BLOCK_JOB_COMPLETED')
    assert ev['data']['device'] == 'push-backup'
    assert ev['data']['len'] == SIZE and ev['data']['offset'] == SIZE
    assert 'error' not in ev['data']
    q.execute('blockdev-del', **{'node-name': 'target'})
    qemu_io(target, *reads(PATTERNS + ZEROES), read_only=True)
    qemu_io(guest_uri(sock), *reads(OVERWRITES + REMAINDER), read_only=True)
