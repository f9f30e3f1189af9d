"""A qcow2 image shrinks on disk when clusters are discarded (QEMU's pass-discard-request):
through an NBD export, and as the fleecing image of a push backup with discard-source, the
file's allocated size (st_blocks) falls; `qemu-img check` stays clean and the data that
was not discarded reads back (through fleeced and with QEMU's tools afterwards)."""

import subprocess

import pytest

from backup_testlib import (MiB, copy_file, discard_source_backup, job_events, qemu_img_compare,
                            random_fill, until_status)
from fleece_testlib import Daemon, QmpError, allocated, qemu_io


def qemu_img(*argv):
    p = subprocess.run(['qemu-img'] + list(argv), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_nbd_discard_shrinks_the_image_file(tmp_path):
    size = 64 * MiB
    img = str(tmp_path / 'd.qcow2')
    qemu_img('create', '-q', '-f', 'qcow2', img, str(size))
    qemu_io(img, 'write -P 0x11 0 64M', fmt='qcow2')
    full = allocated(img)
    assert full >= size, full
    d = Daemon(tmp_path)
    try:
        q = d.qmp
        # The inline file node gets discard=unmap by default, as in QEMU.
        q.execute('blockdev-add', driver='qcow2', discard='unmap',
                  file={'driver': 'file', 'filename': img}, **{'node-name': 'q0'})
        sock = str(tmp_path / 'nbd.sock')
        q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': sock}})
        q.execute('block-export-add', type='nbd', id='e', name='e', writable=True,
                  **{'node-name': 'q0'})
        uri = 'nbd+unix:///e?socket=' + sock
        qemu_io(uri, 'discard 8M 32M')
        # Gone from the file while the daemon still runs (no flush asked for).
        assert allocated(img) <= full - 31 * MiB, (full, allocated(img))
        qemu_io(uri, 'read -P 0x11 0 8M', 'read -P 0 8M 32M', 'read -P 0x11 40M 24M')
        # The freed space is reused by new writes, which read back.
        qemu_io(uri, 'write -P 0x22 12M 4M', 'flush')
        qemu_io(uri, 'read -P 0x22 12M 4M', 'read -P 0 16M 24M')
        q.execute('block-export-del', id='e')
        q.execute('blockdev-del', **{'node-name': 'q0'})
    finally:
        assert d.stop() == 0
    out = qemu_img('check', img)
    assert 'No errors were found' in out, out
    assert allocated(img) <= full - 27 * MiB, (full, allocated(img))
    qemu_io(img, 'read -P 0x11 0 8M', 'read -P 0 8M 4M', 'read -P 0x22 12M 4M',
            'read -P 0 16M 24M', 'read -P 0x11 40M 24M', fmt='qcow2', read_only=True)


@pytest.mark.parametrize('backing', [False, True])
def test_discard_source_backup_shrinks_a_qcow2_fleecing_image(tmp_path, backing):
    """The push backup with fleecing of issue 6, with a qcow2 fleecing image (opened with
    discard=unmap over a file node with discard=unmap): every chunk the job has pushed is
    discarded on the snapshot, so the image gives its clusters back to the file system
    while the job runs and ends with only its metadata allocated. Also when the image's
    backing is the disk (as QEMU's image-fleecing test builds it; the filter then holds only
    write-unchanged on it, and its discards used to fail with EPERM, releasing nothing)."""
    size = 64 * MiB
    d = Daemon(tmp_path)
    srv = None
    try:
        q = d.qmp
        disk = str(tmp_path / 'disk.raw')
        random_fill(disk, size)
        at_start = str(tmp_path / 'at-start.raw')
        copy_file(disk, at_start)
        fleece = str(tmp_path / 'fleece.qcow2')
        qemu_img('create', '-q', '-f', 'qcow2', *(['-b', disk, '-F', 'raw'] if backing else []),
                 fleece, str(size))
        q.execute('blockdev-add', driver='file', filename=disk, **{'node-name': 'disk'})
        q.execute('blockdev-add', driver='file', filename=fleece, discard='unmap',
                  **{'node-name': 'fleece-file'})
        q.execute('blockdev-add', driver='qcow2', file='fleece-file', discard='unmap',
                  backing='disk' if backing else None, **{'node-name': 'temp'})
        q.execute('blockdev-add', driver='copy-before-write', file='disk', target='temp',
                  **{'node-name': 'cbw'})
        q.execute('blockdev-add', driver='snapshot-access', file='cbw', **{'node-name': 'snap'})
        sock = str(tmp_path / 'nbd.sock')
        q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': sock}})
        q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True,
                  **{'node-name': 'cbw'})
        # The guest overwrites the whole disk: every old cluster goes to the fleecing image.
        qemu_io('nbd+unix:///guest?socket=' + sock, 'write -P 0x42 0 64M')
        full = allocated(fleece)
        assert full >= size, full
        srv, samples = discard_source_backup(q, tmp_path, fleece, size)
        end = allocated(fleece)
        print('fleecing image: full %d MiB, samples %s MiB, end %d KiB' % (
            full // MiB, [s // MiB for s in samples], end // 1024))
        # Fell while the job ran (several distinct, decreasing levels; a metadata write
        # into a part of a cluster that was a hole may add a few KiB) and ends with at
        # most the metadata and the last batch not yet given back (1 MiB).
        assert min(samples) < full * 3 // 4, (full, samples)
        assert len(set(samples)) >= 3, samples
        assert all(b <= a + 64 * 1024 for a, b in zip(samples, samples[1:])), samples
        assert end <= 2 * MiB, end
        q.execute('blockdev-del', **{'node-name': 'target'})
        out = str(tmp_path / 'out.raw')
        srv.copy_to(out)
        qemu_img_compare(at_start, out)
        qemu_io(disk, 'read -P 0x42 0 64M', read_only=True)
    finally:
        assert d.stop() == 0
        if srv:
            srv.stop()
    out = qemu_img('check', fleece)
    assert 'No errors were found' in out, out


def test_discard_source_from_the_fleecing_image_itself_says_what_to_do(tmp_path):
    """The seed's scheme backs up the fleecing image itself, which only its copy-before-write
    filter may write, so discard-source is refused; the message names the conflict and the
    way that works (a snapshot-access node on the filter, tested above)."""
    size = 16 * MiB
    d = Daemon(tmp_path)
    try:
        q = d.qmp
        disk = str(tmp_path / 'disk.raw')
        random_fill(disk, size)
        fleece = str(tmp_path / 'fleece.qcow2')
        qemu_img('create', '-q', '-f', 'qcow2', '-b', disk, '-F', 'raw', fleece, str(size))
        target = str(tmp_path / 'target.raw')
        with open(target, 'wb') as f:
            f.truncate(size)
        q.execute('blockdev-add', driver='file', filename=disk, **{'node-name': 'disk'})
        q.execute('blockdev-add', driver='qcow2', discard='unmap', backing='disk',
                  file={'driver': 'file', 'filename': fleece}, **{'node-name': 'temp'})
        q.execute('blockdev-add', driver='copy-before-write', file='disk', target='temp',
                  **{'node-name': 'fl-cbw'})
        q.execute('blockdev-add', driver='file', filename=target, **{'node-name': 'target'})
        with pytest.raises(QmpError) as e:
            q.execute('blockdev-backup', device='temp', target='target', sync='full',
                      **{'job-id': 'bk', 'discard-source': True})
        assert "'write'" in e.value.desc and 'fl-cbw' in e.value.desc, e.value.desc
        assert 'snapshot-access' in e.value.desc, e.value.desc
        assert q.execute('query-jobs') == []
        # Without discard-source the same backup runs.
        q.execute('blockdev-backup', device='temp', target='target', sync='full',
                  **{'job-id': 'bk'})
        evs = job_events(q, 'bk', until_status('null'))
        done = [e['data'] for e in evs if e['event'] == 'BLOCK_JOB_COMPLETED'][0]
        assert 'error' not in done, done
        q.execute('blockdev-del', **{'node-name': 'target'})
    finally:
        assert d.stop() == 0
    qemu_img_compare(disk, target)
