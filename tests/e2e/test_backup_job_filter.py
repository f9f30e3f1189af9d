"""The backup job's own copy-before-write filter (inserted when the source has writers):
- it honours on-cbw-error and fleeced's x-cbw-timeout (QEMU's blockdev-backup has no timeout
  for its filter), shown with a slow nbdkit target: a guest write whose copy outlives the
  timeout fails (break-guest-write) or breaks the backup instead (break-snapshot);
- the job's event sequence (JOB_STATUS_CHANGE statuses and BLOCK_JOB_* events, drain pause
  pairs included, research/qemu-fleecing.md §4.2) is the same as qemu-storage-daemon 7.2's,
  for a source with and without a writer."""

import os
import shutil
import subprocess
import time

import pytest

from backup_testlib import job_events, names
from fleece_testlib import FLEECED, Daemon, QmpError, make_raw, qemu_io

MiB = 1 << 20
QSD = shutil.which('qemu-storage-daemon')


@pytest.fixture
def slow_target(tmp_path):
    """nbdkit memory disk whose writes take 3 s: every copy outlives a 1 s timeout."""
    sock = str(tmp_path / 'slow.sock')
    p = subprocess.Popen(['nbdkit', '--exit-with-parent', '-f', '-U', sock, '--filter=delay',
                          'memory', '4M', 'delay-write=3'])
    deadline = time.monotonic() + 20
    while not os.path.exists(sock):
        assert p.poll() is None and time.monotonic() < deadline, 'nbdkit did not start'
        time.sleep(0.05)
    yield sock
    p.terminate()
    p.wait(timeout=20)


def guest_with_slow_target(tmp_path, sock):
    disk = str(tmp_path / 'disk.raw')
    make_raw(disk, 4 * MiB)
    qemu_io(disk, 'write -P 0x5a 0 4M')
    d = Daemon(tmp_path)
    q = d.qmp
    q.execute('blockdev-add', driver='file', filename=disk, **{'node-name': 'disk'})
    q.execute('blockdev-add', driver='raw', **{'node-name': 'tgt'},
              file={'driver': 'nbd', 'server': {'type': 'unix', 'path': sock}})
    nbd = str(tmp_path / 'nbd.sock')
    q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': nbd}})
    q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True, **{'node-name': 'disk'})
    return d, 'nbd+unix:///guest?socket=' + nbd


def start_backup(q, policy):
    # speed=1 and 64 KiB chunks: the job copies one chunk at offset 0 and then waits, so the
    # guest's write at 3 MiB is copied by the filter alone.
    q.execute('blockdev-backup', device='disk', target='tgt', sync='full', speed=1,
              **{'job-id': 'bk', 'on-cbw-error': policy, 'x-cbw-timeout': 1,
                 'x-perf': {'max-chunk': 65536}})


def test_job_filter_timeout_break_guest_write(tmp_path, slow_target):
    d, guest = guest_with_slow_target(tmp_path, slow_target)
    q = d.qmp
    try:
        start_backup(q, 'break-guest-write')
        out = qemu_io(guest, 'write -P 0x11 3M 64k', check=False)
        assert 'write failed' in out, out  # ETIMEDOUT, sent as an NBD error
        qemu_io(guest, 'read -P 0x5a 3M 64k', read_only=True)  # nothing was written
        assert [j['status'] for j in q.execute('query-jobs')] == ['running']
        q.execute('job-cancel', id='bk')
        job_events(q, 'bk', lambda ev: ev['event'] == 'JOB_STATUS_CHANGE' and ev['data']['status'] == 'null')
        qemu_io(guest, 'write -P 0x12 3M 64k', 'read -P 0x12 3M 64k')  # filter gone
    finally:
        assert d.stop() == 0


def test_job_filter_timeout_break_snapshot(tmp_path, slow_target):
    d, guest = guest_with_slow_target(tmp_path, slow_target)
    q = d.qmp
    try:
        start_backup(q, 'break-snapshot')
        qemu_io(guest, 'write -P 0x11 3M 64k', 'read -P 0x11 3M 64k')  # the guest is not failed
        q.execute('block-job-set-speed', device='bk', speed=0)
        seen = job_events(q, 'bk', lambda ev: ev['event'] == 'BLOCK_JOB_COMPLETED')
        assert 'Permission denied' in seen[-1]['data'].get('error', ''), seen[-1]
        qemu_io(guest, 'write -P 0x13 0 64k', 'read -P 0x13 0 64k')
    finally:
        assert d.stop() == 0


def test_x_cbw_timeout_is_checked(tmp_path, slow_target):
    d, _ = guest_with_slow_target(tmp_path, slow_target)
    try:
        for bad in (-1, 'x'):
            with pytest.raises(QmpError) as e:
                d.qmp.execute('blockdev-backup', device='disk', target='tgt', sync='full',
                              **{'x-cbw-timeout': bad})
            assert 'x-cbw-timeout' in e.value.desc
        assert d.qmp.execute('query-jobs') == []
    finally:
        assert d.stop() == 0


def event_sequence(binary, work, with_writer):
    work.mkdir()
    disk, target = str(work / 'disk.raw'), str(work / 'target.raw')
    make_raw(disk, 4 * MiB)
    make_raw(target, 4 * MiB)
    qemu_io(disk, 'write -P 0x33 0 4M')
    d = Daemon(work, binary=binary)
    try:
        q = d.qmp
        q.execute('blockdev-add', driver='file', filename=disk, **{'node-name': 'disk'})
        q.execute('blockdev-add', driver='file', filename=target, **{'node-name': 'target'})
        if with_writer:
            q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': str(work / 'nbd.sock')}})
            q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True,
                      **{'node-name': 'disk'})
        q.execute('blockdev-backup', device='disk', target='target', sync='full', **{'job-id': 'bk'})
        seen = job_events(q, 'bk', lambda ev: ev['event'] == 'JOB_STATUS_CHANGE' and ev['data']['status'] == 'null')
        if with_writer:
            q.execute('block-export-del', id='guest')
        q.execute('blockdev-del', **{'node-name': 'target'})
        q.execute('blockdev-del', **{'node-name': 'disk'})
    finally:
        assert d.stop() == 0
    qemu_io(target, 'read -P 0x33 0 4M', read_only=True)
    return names(seen)


@pytest.mark.parametrize('with_writer', [False, True])
def test_event_sequence_matches_qemu_storage_daemon(tmp_path, with_writer):
    assert QSD, 'qemu-storage-daemon (Debian qemu-system-common) is required'
    theirs = event_sequence(QSD, tmp_path / 'qsd', with_writer)
    ours = event_sequence(FLEECED, tmp_path / 'fleeced', with_writer)
    # §4.2: blockdev-backup drains the source while it prepares, so 7.2 reports a
    # paused/running pair right after the job starts running.
    assert theirs[:4] == ['created', 'running', 'paused', 'running'], theirs
    assert ours == theirs
