"""fio writes random data through the guest export while nbdcopy pulls the snapshot export;
the copy must equal the disk at the snapshot point. 20 runs with different seeds, for both
fleecing schemes: snapshot-access over the copy-before-write filter, and the seed's scheme
(the snapshot is a qcow2 fleecing image whose backing is the live disk; QEMU 7.2 refuses
that graph with a permission conflict)."""

import filecmp
import os
import shutil
import subprocess
import time

import pytest

from fleece_testlib import Daemon, make_raw

MiB = 1 << 20
SIZE = 4 * MiB
RUNS = 20


def one_run(tmp_path, seed, scheme):
    work = tmp_path / ('run%02d' % seed)
    work.mkdir()
    disk = str(work / 'disk.raw')
    temp = str(work / ('fleece.raw' if scheme == 'snapshot-access' else 'fleece.qcow2'))
    expected = str(work / 'expected.raw')
    copy = str(work / 'copy.raw')
    with open(disk, 'wb') as f:
        f.write(os.urandom(SIZE))
    if scheme == 'snapshot-access':
        make_raw(temp, SIZE)
    else:
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', disk, '-F', 'raw', temp],
                       check=True)
    shutil.copyfile(disk, expected)  # the snapshot point: before any guest write

    d = Daemon(work)
    fio = None
    try:
        q = d.qmp
        q.execute('blockdev-add', driver='file', filename=disk, **{'node-name': 'disk'})
        if scheme == 'snapshot-access':
            q.execute('blockdev-add', driver='file', filename=temp, **{'node-name': 'temp'})
            snapshot = 'fl-access'
        else:
            q.execute('blockdev-add', driver='qcow2', backing='disk', **{'node-name': 'temp'},
                      file={'driver': 'file', 'filename': temp})
            snapshot = 'temp'
        q.execute('blockdev-add', driver='copy-before-write', file='disk', target='temp', **{'node-name': 'fl-cbw'})
        if scheme == 'snapshot-access':
            q.execute('blockdev-add', driver='snapshot-access', file='fl-cbw', **{'node-name': 'fl-access'})
        sock = str(work / 'nbd.sock')
        q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': sock}})
        q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True, **{'node-name': 'fl-cbw'})
        q.execute('block-export-add', type='nbd', id='snap', name='snap', **{'node-name': snapshot})

        fio = subprocess.Popen(
            ['fio', '--name=guest', '--ioengine=nbd', '--uri=nbd+unix:///guest?socket=' + sock,
             '--rw=randwrite', '--bsrange=4k-64k', '--iodepth=8', '--size=%d' % SIZE,
             '--io_size=%d' % (3 * SIZE), '--rate=12m', '--randseed=%d' % (seed + 1),
             '--refill_buffers', '--norandommap', '--output=' + str(work / 'fio.log')],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        # Start pulling once the guest's writes have begun to trigger copies.
        deadline = time.monotonic() + 60
        base_blocks = os.stat(temp).st_blocks  # qcow2 metadata, or 0 for raw
        while os.stat(temp).st_blocks == base_blocks:
            assert fio.poll() is None, open(work / 'fio.log').read()
            assert time.monotonic() < deadline, 'no copy-before-write happened'
            time.sleep(0.01)
        subprocess.run(['nbdcopy', '--requests=4', '--request-size=65536',
                        'nbd+unix:///snap?socket=' + sock, copy],
                       check=True, timeout=120, capture_output=True)
        assert fio.wait(timeout=120) == 0, open(work / 'fio.log').read()
        fio = None
    finally:
        if fio is not None:
            fio.kill()
            fio.wait()
        assert d.stop() == 0
    assert filecmp.cmp(copy, expected, shallow=False), 'seed %d: snapshot copy differs' % seed
    # The guest did change the disk (else the comparison proves nothing).
    assert not filecmp.cmp(disk, expected, shallow=False)
    shutil.rmtree(work)


@pytest.mark.parametrize('scheme', ['snapshot-access', 'backing'])
@pytest.mark.parametrize('seed', range(RUNS))
def test_nbdcopy_of_snapshot_under_fio_writes(tmp_path, seed, scheme):
    assert shutil.which('fio') and shutil.which('nbdcopy') and shutil.which('qemu-img')
    one_run(tmp_path, seed, scheme)
