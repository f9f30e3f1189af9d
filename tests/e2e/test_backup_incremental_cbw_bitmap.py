"""`fleece backup --sync incremental` narrows its copy-before-write filter to the increment.

The frozen increment bitmap is handed to the filter (x-cbw-set-bitmap) in the transaction
that freezes it and moves the guest onto the filter. So while the job runs, guest writes to
clusters outside the increment cost no copy (x-cbw-stats `requests` stays 0, the fleecing
image stays empty), writes inside it are copied, and the restored chain is the disk at the
snapshot point. Without the narrowing every first write to any cluster was copied."""

import glob
import os
import random
import shutil
import subprocess

from fleece_testlib import Daemon, qemu_io
from test_backup_chain import Backup, assert_restores_to, set_job_speed

MiB = 1 << 20
K64 = 65536


class Guest:
    """fleeced serving disk.raw as the writable NBD export `guest` (bitmaps in a sidecar)."""

    def __init__(self, tmp_path, size):
        self.dir = tmp_path
        self.disk = str(tmp_path / 'disk.raw')
        self.size = size
        with open(self.disk, 'wb') as f:
            f.write(random.Random(5).randbytes(size))
        self.sock = str(tmp_path / 'nbd.sock')
        self.d = Daemon(tmp_path, ['--blockdev', 'driver=file,node-name=disk,filename=' + self.disk,
                                   '--nbd-server', 'addr.type=unix,addr.path=' + self.sock])
        self.q = self.d.qmp
        self.q.execute('x-block-dirty-bitmap-sidecar', node='disk',
                       path=self.disk + '.fleece-bitmaps')
        self.q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True,
                       **{'node-name': 'disk'})

    @property
    def uri(self):
        return 'nbd+unix:///guest?socket=' + self.sock

    def write(self, *commands):
        """Guest I/O through the export (qemu-io over NBD)."""
        qemu_io(self.uri, *commands)

    def cbw_stats(self):
        nodes = [n for n in self.q.execute('query-named-block-nodes')
                 if n['node-name'].startswith('fleece-backup-') and n['node-name'].endswith('-cbw')]
        assert len(nodes) == 1, [n['node-name'] for n in nodes]
        return nodes[0]['x-cbw-stats']

    def fleecing_allocated(self):
        files = glob.glob(os.path.join(str(self.dir), 'fleece-backup-*.fleecing'))
        assert len(files) == 1, files
        return os.stat(files[0]).st_blocks * 512


def test_incremental_copies_only_the_increment_and_restores_the_snapshot(tmp_path):
    size = 16 * MiB
    g = Guest(tmp_path, size)
    full, inc = str(tmp_path / 'full.raw'), str(tmp_path / 'inc.qcow2')
    expected = str(tmp_path / 'expected.raw')
    try:
        # The chain starts: a full backup and the bitmap `inc`.
        b = Backup(g, '--target', full, '--bitmap', 'inc')
        assert b.finish() == 0, (b.seen, b.stderr)

        # The increment: 1 MiB at 1 MiB (16 clusters), which the held job may still copy as
        # its first chunk, and 4 clusters at 14 MiB, which it reaches only at full speed.
        g.write('write -P 0x11 1M 1M', 'write -P 0x12 14M 256k')
        inside = {1 * MiB + i * K64 for i in range(16)} | {14 * MiB + i * K64 for i in range(4)}
        shutil.copyfile(g.disk, expected)  # the guest is idle: this is the snapshot point

        b = Backup(g, '--speed', '1', '--target', inc, '--sync', 'incremental',
                   '--bitmap', 'inc', '--base', full)  # speed 1 holds the job
        b.wait_for('started')
        assert g.cbw_stats()['requests'] == 0

        # Guest writes outside the increment: writes and write-zeroes, over 5 MiB in all.
        g.write('write -P 0x21 4M 4M', 'write -z 9M 512k', 'write -P 0x22 12M 4k',
                'write -P 0x23 0 64k', 'write -P 0x24 15M 1M')
        stats = g.cbw_stats()
        assert stats['requests'] == 0, ('guest writes outside the increment were copied', stats)
        assert stats['errors'] == 0
        assert g.fleecing_allocated() == 0, g.fleecing_allocated()

        # Writes inside the increment are copied (old data first), once per cluster. The
        # second one in the 1 MiB window takes the increment's last cluster there along
        # (copy-ahead), and nothing outside the increment (the allocation below).
        g.write('write -P 0x31 14M 128k', 'write -P 0x32 14M 4k', 'write -P 0x33 14464k 64k')
        stats = g.cbw_stats()
        assert stats['requests'] == 2 and stats['errors'] == 0, stats
        # One straddling the increment's edge (14592k): its cluster inside is already saved.
        g.write('write -P 0x34 14528k 128k')
        assert g.cbw_stats()['requests'] == 2
        allocated = g.fleecing_allocated()
        assert 4 * K64 <= allocated < 1 * MiB, allocated

        set_job_speed(g.q, 0)
        assert b.finish() == 0, (b.seen, b.stderr)
        s = b.summary
        assert s['ok'] and s['sync'] == 'incremental' and s['cbw-count'] == 2, s
        assert s['dirty-bytes'] == len(inside) * K64 and s['bytes'] == len(inside) * K64, s

        # The chain restores to the disk at the snapshot point, not to what the guest wrote.
        assert_restores_to(inc, expected, str(tmp_path / 'restored.raw'))
        p = subprocess.run(['qemu-img', 'compare', '-f', 'raw', '-F', 'raw', expected, g.disk],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 1, p.stdout + p.stderr  # the guest did change the disk since
        assert g.q.execute('query-jobs') == []
    finally:
        g.d.stop()


def test_x_cbw_set_bitmap_over_qmp_errors_abort_and_use(tmp_path):
    """The QMP side of x-cbw-set-bitmap on hand-made filters: clear errors, an aborted
    transaction leaves the filter copying everything, and a used filter is refused."""
    size = 4 * MiB
    g = Guest(tmp_path, size)
    q = g.q
    try:
        q.execute('block-dirty-bitmap-add', node='disk', name='frozen')
        g.write('write -P 0x11 1M 64k')  # the only dirty cluster
        q.execute('block-dirty-bitmap-disable', node='disk', name='frozen')
        for n in ('a', 'b'):
            make = str(tmp_path / ('temp-%s.raw' % n))
            with open(make, 'wb') as f:
                f.truncate(size)
            q.execute('blockdev-add', driver='file', filename=make, **{'node-name': 'temp-' + n})
            q.execute('blockdev-add', driver='copy-before-write', file='disk', target='temp-' + n,
                      **{'node-name': 'cbw-' + n})
        frozen = {'node': 'disk', 'name': 'frozen'}

        def error(**args):
            r = q.command('x-cbw-set-bitmap', **args)
            assert 'error' in r and r['error']['class'] == 'GenericError', r
            return r['error']['desc']

        assert "'disk' is not a copy-before-write filter" in error(node='disk', bitmap=frozen)
        assert error(node='cbw-a', bitmap={'node': 'disk', 'name': 'nope'}) == \
            "Dirty bitmap 'nope' not found"
        assert error(node='nope', bitmap=frozen) == "Node 'nope' not found"
        assert 'bitmap' in error(node='cbw-a')

        # A transaction whose later action fails changes nothing: cbw-a still copies all.
        r = q.command('transaction', actions=[
            {'type': 'x-cbw-set-bitmap', 'data': {'node': 'cbw-a', 'bitmap': frozen}},
            {'type': 'block-dirty-bitmap-add', 'data': {'node': 'disk', 'name': 'frozen'}}])
        assert 'error' in r, r

        def stats(node):
            return [n['x-cbw-stats'] for n in q.execute('query-named-block-nodes')
                    if n['node-name'] == node][0]

        def move_guest(node):
            q.execute('blockdev-replace', **{'parent-type': 'export', 'id': 'guest',
                                             'new-child': node})

        move_guest('cbw-a')
        g.write('write -P 0x21 3M 64k')  # outside the bitmap, copied by an unnarrowed filter
        assert stats('cbw-a')['requests'] == 1
        move_guest('disk')

        # Narrowed (command form) before use: only the frozen cluster is copied.
        q.execute('x-cbw-set-bitmap', node='cbw-b', bitmap=frozen)
        move_guest('cbw-b')
        g.write('write -P 0x31 3M 64k', 'write -P 0x32 0 4k')
        assert stats('cbw-b')['requests'] == 0
        g.write('write -P 0x33 1M 4k')
        assert stats('cbw-b')['requests'] == 1
        # Used now: refused, and cbw-a (used too) as well.
        for n in ('cbw-a', 'cbw-b'):
            assert 'is already in use' in error(node=n, bitmap=frozen)
        move_guest('disk')
        # A backup job's own filter (the disk has a writer, so blockdev-backup inserts one)
        # serves the job's copy set: refused.
        q.execute('blockdev-add', driver='null-co', size=size, **{'node-name': 'sink'})
        q.execute('blockdev-backup', device='disk', target='sink', sync='none',
                  **{'job-id': 'bk', 'filter-node-name': 'job-filter'})
        assert 'is already in use' in error(node='job-filter', bitmap=frozen)
        q.execute('job-cancel', id='bk')
        q.wait_event('BLOCK_JOB_CANCELLED')
        # The daemon serves on: the bitmap was not made busy by any of this.
        q.execute('block-dirty-bitmap-remove', node='disk', name='frozen')
    finally:
        g.d.stop()
