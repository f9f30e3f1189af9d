"""discard-source (QEMU >= 9.1): a push backup from the snapshot-access node releases each
chunk from the fleecing image once it is on the target, so the fleecing file's allocated
size (`du`) falls while the job runs and ends near zero; the target is still exact."""

import pytest

from backup_testlib import MiB, copy_file, discard_source_backup, qemu_img_compare, random_fill
from backup_testlib import env  # noqa: F401 - the fixture the tests take
from fleece_testlib import allocated, make_raw, qemu_io

SIZE = 64 * MiB


def test_discard_source_releases_fleecing_space_while_the_job_runs(env):
    d, tmp, procs = env
    q = d.qmp
    disk = str(tmp / 'disk.raw')
    random_fill(disk, SIZE)
    at_start = str(tmp / 'at-start.raw')
    copy_file(disk, at_start)
    fleece = str(tmp / 'fleece.raw')
    make_raw(fleece, SIZE)
    q.execute('blockdev-add', driver='file', filename=disk, **{'node-name': 'disk'})
    q.execute('blockdev-add', driver='file', filename=fleece, discard='unmap', **{'node-name': 'temp'})
    q.execute('blockdev-add', driver='copy-before-write', file='disk', target='temp', **{'node-name': 'cbw'})
    q.execute('blockdev-add', driver='snapshot-access', file='cbw', discard='unmap', **{'node-name': 'snap'})
    sock = str(tmp / 'nbd.sock')
    q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': sock}})
    q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True, **{'node-name': 'cbw'})
    # The guest overwrites the whole disk: every old cluster goes to the fleecing image.
    qemu_io('nbd+unix:///guest?socket=' + sock, 'write -P 0x42 0 64M')
    full = allocated(fleece)
    assert full >= SIZE - MiB, full
    srv, samples = discard_source_backup(q, tmp, fleece, SIZE)
    procs.append(srv)
    # Fell while the job ran (several distinct, decreasing levels), and ends near zero.
    assert min(samples) < full * 3 // 4, (full, samples)
    assert len(set(samples)) >= 3, samples
    assert all(b <= a for a, b in zip(samples, samples[1:])), samples
    assert allocated(fleece) <= MiB, allocated(fleece)
    q.execute('blockdev-del', **{'node-name': 'target'})
    out = str(tmp / 'out.raw')
    srv.copy_to(out)
    qemu_img_compare(at_start, out)
    # The guest's data is intact on the disk.
    qemu_io(disk, 'read -P 0x42 0 64M', read_only=True)


def test_discard_source_is_refused_for_a_written_disk(env):
    d, tmp, procs = env
    q = d.qmp
    disk = str(tmp / 'disk.raw')
    make_raw(disk, SIZE)
    target = str(tmp / 'target.raw')
    make_raw(target, SIZE)
    q.execute('blockdev-add', driver='file', filename=disk, **{'node-name': 'disk'})
    q.execute('blockdev-add', driver='file', filename=target, **{'node-name': 'target'})
    sock = str(tmp / 'nbd.sock')
    q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': sock}})
    q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True, **{'node-name': 'disk'})
    from fleece_testlib import QmpError
    with pytest.raises(QmpError) as e:
        q.execute('blockdev-backup', device='disk', target='target', sync='full', **{'discard-source': True})
    assert 'discard-source' in e.value.desc and 'writers' in e.value.desc
    assert q.execute('query-jobs') == []
