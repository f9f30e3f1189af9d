"""Dirty bitmaps end to end: the QMP commands against qemu-storage-daemon 7.2 (same script,
same replies), the qemu:dirty-bitmap NBD meta context, and a full + incremental push
backup chain taken with fleecing while a guest writes."""

import json
import os
import random
import shutil
import subprocess
import threading

import nbd
import pytest

from fleece_testlib import (FLEECED, Daemon, QmpError, clusters_of, dirty_bitmaps, dirty_map,
                            make_raw, nbd_uri, qemu_io)

QSD = shutil.which('qemu-storage-daemon')
K64 = 65536
MiB = 1 << 20


bitmaps_of = dirty_bitmaps


# ---- 1. The same QMP script against qemu-storage-daemon 7.2 and fleeced -----------------

SCRIPT = [
    ('block-dirty-bitmap-add', {'node': 'r', 'name': 'b0'}),
    ('block-dirty-bitmap-add', {'node': 'r', 'name': 'b0'}),
    ('block-dirty-bitmap-add', {'node': 'r', 'name': ''}),
    ('block-dirty-bitmap-add', {'node': 'nope', 'name': 'x'}),
    ('block-dirty-bitmap-add', {'node': 'r', 'name': 'g', 'granularity': 1000}),
    ('block-dirty-bitmap-add', {'node': 'r', 'name': 'g', 'granularity': 256}),
    ('block-dirty-bitmap-add', {'node': 'r', 'name': 'g', 'granularity': 1 << 32}),
    ('block-dirty-bitmap-add', {'node': 'r', 'name': 'big', 'granularity': 1 << 31}),
    ('block-dirty-bitmap-add', {'node': 'r', 'name': 'fine', 'granularity': 512,
                                'disabled': True}),
    ('block-dirty-bitmap-add', {'node': 'r', 'name': 'p', 'persistent': True}),
    ('block-dirty-bitmap-add', {'node': 'r', 'name': 'x' * 1024}),
    ('block-dirty-bitmap-add', {'node': 'other', 'name': 'o'}),
    ('block-dirty-bitmap-add', {'node': 'small', 'name': 's'}),
    ('write', None),
    ('block-dirty-bitmap-remove', {'node': 'r', 'name': 'zz'}),
    ('block-dirty-bitmap-clear', {'node': 'r', 'name': 'zz'}),
    ('block-dirty-bitmap-enable', {'node': 'r', 'name': 'zz'}),
    ('block-dirty-bitmap-merge', {'node': 'r', 'target': 'fine', 'bitmaps': ['b0']}),
    ('block-dirty-bitmap-merge', {'node': 'r', 'target': 'fine',
                                  'bitmaps': [{'node': 'other', 'name': 'o'}]}),
    ('block-dirty-bitmap-merge', {'node': 'r', 'target': 'fine',
                                  'bitmaps': [{'node': 'small', 'name': 's'}]}),
    ('block-dirty-bitmap-merge', {'node': 'r', 'target': 'fine', 'bitmaps': ['nope']}),
    ('block-dirty-bitmap-merge', {'node': 'r', 'target': 'nope', 'bitmaps': ['b0']}),
    ('block-dirty-bitmap-merge', {'node': 'r', 'target': 'fine',
                                  'bitmaps': [{'node': 'zz', 'name': 'o'}]}),
    ('block-dirty-bitmap-enable', {'node': 'r', 'name': 'fine'}),
    ('block-dirty-bitmap-disable', {'node': 'r', 'name': 'big'}),
    ('query', None),
    ('block-export-add', {'type': 'nbd', 'id': 'ro', 'node-name': 'r', 'name': 'ro',
                          'bitmaps': ['b0']}),
    ('block-export-add', {'type': 'nbd', 'id': 'ro', 'node-name': 'r', 'name': 'ro',
                          'bitmaps': ['zz']}),
    ('block-export-add', {'type': 'nbd', 'id': 'ro', 'node-name': 'r', 'name': 'ro',
                          'bitmaps': ['big']}),
    ('block-dirty-bitmap-clear', {'node': 'r', 'name': 'big'}),
    ('block-dirty-bitmap-remove', {'node': 'r', 'name': 'big'}),
    ('block-dirty-bitmap-enable', {'node': 'r', 'name': 'big'}),
    ('block-dirty-bitmap-merge', {'node': 'r', 'target': 'b0', 'bitmaps': ['big']}),
    ('block-dirty-bitmap-merge', {'node': 'r', 'target': 'big', 'bitmaps': ['b0']}),
    ('blockdev-backup', {'job-id': 'j', 'device': 'r', 'target': 'tgt', 'sync': 'incremental'}),
    ('blockdev-backup', {'job-id': 'j', 'device': 'r', 'target': 'tgt', 'sync': 'incremental',
                         'bitmap': 'b0', 'bitmap-mode': 'always'}),
    ('blockdev-backup', {'job-id': 'j', 'device': 'r', 'target': 'tgt', 'sync': 'bitmap',
                         'bitmap': 'b0'}),
    ('blockdev-backup', {'job-id': 'j', 'device': 'r', 'target': 'tgt', 'sync': 'full',
                         'bitmap-mode': 'never'}),
    ('blockdev-backup', {'job-id': 'j', 'device': 'r', 'target': 'tgt', 'sync': 'full',
                         'bitmap': 'b0', 'bitmap-mode': 'never'}),
    ('blockdev-backup', {'job-id': 'j', 'device': 'r', 'target': 'tgt', 'sync': 'none',
                         'bitmap': 'b0', 'bitmap-mode': 'on-success'}),
    ('blockdev-backup', {'job-id': 'j', 'device': 'r', 'target': 'tgt', 'sync': 'bitmap',
                         'bitmap': 'zz', 'bitmap-mode': 'always'}),
    ('blockdev-backup', {'job-id': 'j', 'device': 'r', 'target': 'tgt', 'sync': 'bitmap',
                         'bitmap': 'big', 'bitmap-mode': 'always'}),
    ('block-export-del', {'id': 'ro'}),
    ('block-dirty-bitmap-remove', {'node': 'r', 'name': 'big'}),
    ('block-dirty-bitmap-clear', {'node': 'r', 'name': 'fine'}),
    ('query', None),
    # transaction: a failing action rolls back the earlier ones; grouped is refused for
    # bitmap actions; a good one applies every action in order.
    ('transaction', {'actions': [
        {'type': 'block-dirty-bitmap-add', 'data': {'node': 'r', 'name': 't1'}},
        {'type': 'block-dirty-bitmap-disable', 'data': {'node': 'r', 'name': 'b0'}},
        {'type': 'block-dirty-bitmap-add', 'data': {'node': 'r', 'name': 't1'}}]}),
    ('transaction', {'actions': [
        {'type': 'block-dirty-bitmap-add', 'data': {'node': 'r', 'name': 't2'}}],
        'properties': {'completion-mode': 'grouped'}}),
    ('transaction', {'actions': [
        {'type': 'block-dirty-bitmap-add', 'data': {'node': 'r', 'name': 't3',
                                                    'disabled': True}},
        {'type': 'block-dirty-bitmap-merge', 'data': {'node': 'r', 'target': 't3',
                                                      'bitmaps': ['fine', 'b0']}},
        {'type': 'block-dirty-bitmap-clear', 'data': {'node': 'r', 'name': 'b0'}}]}),
    ('query', None),
]

# Writes through a writable export of r (the guest). No discard: QEMU does not record a
# discard that the node ignores (discard=ignore), fleeced records every discard (a safe
# over-approximation).
WRITES = ['write -P 0x11 0 512', 'write -P 0x22 70k 4k', 'write -z 1M 1',
          'write -P 0x33 3145727 2']


def run_script(binary, tmp_path, tag):
    work = tmp_path / tag
    work.mkdir()
    for name, size in (('disk', 4 * MiB), ('other', 4 * MiB), ('small', 1 * MiB),
                       ('tgt', 4 * MiB)):
        make_raw(str(work / (name + '.raw')), size)
    args = []
    for name in ('disk', 'other', 'small', 'tgt'):
        node = 'f' if name == 'disk' else name
        args += ['--blockdev', 'driver=file,node-name=%s,filename=%s' % (node, work / (name + '.raw'))]
    args += ['--blockdev', 'driver=raw,node-name=r,file=f']
    sock = str(work / 'nbd.sock')
    args += ['--nbd-server', 'addr.type=unix,addr.path=' + sock]
    d = Daemon(work, args, binary=binary)
    results = []
    try:
        q = d.qmp
        q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True,
                  **{'node-name': 'r'})
        for cmd, args in SCRIPT:
            if cmd == 'write':
                qemu_io(nbd_uri(sock, 'guest'), *WRITES)
                results.append(('write', None))
            elif cmd == 'query':
                results.append(('query', {n: bitmaps_of(q, n) for n in ('r', 'other', 'small')}))
            else:
                reply = q.command(cmd, **args)
                if 'error' in reply:
                    results.append((cmd, 'error: ' + reply['error']['desc']))
                else:
                    results.append((cmd, reply['return']))
    finally:
        d.stop()
    return results


def test_bitmap_commands_match_qemu_storage_daemon(tmp_path):
    assert QSD, 'qemu-storage-daemon is required'
    expected = run_script(QSD, tmp_path, 'qsd')
    got = run_script(None, tmp_path, 'fleeced')
    for (step, want), (_, have) in zip(expected, got):
        assert have == want, step
    # The script did exercise the interesting cases.
    assert ('blockdev-backup', 'error: Bitmap \'big\' is currently in use by another '
            'operation and cannot be used') in got
    before_txn = got[-5][1]
    assert {b['name'] for b in before_txn['r']} == {'b0', 'fine'}
    txn_failed, txn_grouped, txn_ok = got[-4][1], got[-3][1], got[-2][1]
    assert txn_failed.startswith('error:') and txn_grouped.startswith('error:'), got[-4:]
    assert txn_ok == {}, txn_ok
    final = {b['name']: b for b in got[-1][1]['r']}
    # t1 rolled back, t2 never made; b0 recording again (its disable was rolled back) and
    # then cleared by the good transaction; t3 holds what fine and b0 had.
    assert set(final) == {'b0', 'fine', 't3'}
    assert final['b0']['recording'] and final['b0']['count'] == 0
    assert not final['t3']['recording'] and final['t3']['count'] > 0


def test_all_bitmap_commands_are_registered(tmp_path):
    # The six commands are listed (they are also `transaction` actions, see above).
    d = Daemon(tmp_path)
    try:
        names = {c['name'] for c in d.qmp.execute('query-commands')}
        for verb in ('add', 'remove', 'clear', 'enable', 'disable', 'merge'):
            assert 'block-dirty-bitmap-' + verb in names
    finally:
        d.stop()


# ---- 2. qemu:dirty-bitmap over NBD marks exactly the written clusters -------------------

def test_nbd_dirty_bitmap_lists_exactly_the_written_clusters(tmp_path):
    disk = str(tmp_path / 'disk.raw')
    make_raw(disk, 64 * MiB)
    sock = str(tmp_path / 'nbd.sock')
    d = Daemon(tmp_path, ['--blockdev', 'driver=file,node-name=disk,filename=' + disk,
                          '--nbd-server', 'addr.type=unix,addr.path=' + sock])
    try:
        q = d.qmp
        q.execute('block-dirty-bitmap-add', node='disk', name='b0')
        q.execute('block-dirty-bitmap-add', node='disk', name='b4k', granularity=4096)
        q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True,
                  bitmaps=['b0', 'b4k'], **{'node-name': 'disk'})
        rng = random.Random(7)
        writes = []
        cmds = []
        for _ in range(40):
            off = rng.randrange(0, 64 * MiB - 300 * 1024)
            length = rng.choice([1, 512, 4096, 65536, 100000, 300 * 1024])
            writes.append((off, length))
            cmds.append('write -P %d %d %d' % (rng.randrange(1, 255), off, length))
        qemu_io(nbd_uri(sock, 'guest'), *cmds)
        uri = nbd_uri(sock, 'guest')
        assert clusters_of(dirty_map(uri, 'b0')) == clusters_of(writes)
        assert clusters_of(dirty_map(uri, 'b4k'), 4096) == clusters_of(writes, 4096)
        # query-named-block-nodes agrees, and exported bitmaps are busy.
        info = {b['name']: b for b in bitmaps_of(q, 'disk')}
        assert info['b0']['count'] == len(clusters_of(writes)) * K64
        assert info['b0']['busy'] and info['b0']['recording']
        # qemu-img map reads the same context through x-dirty-bitmap (dirty shows as
        # "data": false, QEMU's inverted encoding).
        out = subprocess.run(
            ['qemu-img', 'map', '--output=json', '--image-opts',
             'driver=nbd,server.type=unix,server.path=%s,export=guest,'
             'x-dirty-bitmap=qemu:dirty-bitmap:b0' % sock],
            capture_output=True, text=True, timeout=60, check=True).stdout
        mapped = [(e['start'], e['length']) for e in json.loads(out) if not e['data']]
        assert clusters_of(mapped) == clusters_of(writes)
        # Listing offers the contexts by namespace.
        h = nbd.NBD()
        h.set_opt_mode(True)
        h.connect_uri(uri)
        listed = []
        h.add_meta_context('qemu:dirty-bitmap:')
        h.opt_list_meta_context(lambda name: listed.append(name) or 0)
        h.opt_abort()
        assert sorted(listed) == ['qemu:dirty-bitmap:b0', 'qemu:dirty-bitmap:b4k']
        q.execute('block-export-del', id='guest')
        q.wait_event('BLOCK_EXPORT_DELETED')
        assert not any(b['busy'] for b in bitmaps_of(q, 'disk'))
    finally:
        d.stop()


# ---- 3. Full then incremental push backup with fleecing while a guest writes -----------

class Writer:
    """A guest writing random patterns through an NBD export until stopped."""

    def __init__(self, uri, size, seed):
        self.uri, self.size, self.rng = uri, size, random.Random(seed)
        self.stop_flag = threading.Event()
        self.writes = 0
        self.error = None
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self):
        try:
            h = nbd.NBD()
            h.connect_uri(self.uri)
            while not self.stop_flag.is_set():
                length = self.rng.choice([512, 4096, 65536, 200000])
                off = self.rng.randrange(0, self.size - length) // 512 * 512
                h.pwrite(bytes([self.rng.randrange(1, 256)]) * length, off)
                self.writes += 1
            h.flush()
            h.shutdown()
        except Exception as e:  # reported by stop()
            self.error = e

    def stop(self):
        self.stop_flag.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()
        assert self.error is None, self.error
        return self.writes


def read_file(path):
    with open(path, 'rb') as f:
        return f.read()


def fleece_and_push(q, sock, seed, target, sync, bitmap=None):
    """Fleecing setup, a guest writing through it, and a push backup of the snapshot."""
    q.execute('blockdev-add', driver='file', filename=target, **{'node-name': 'target'})
    cbw = {'driver': 'copy-before-write', 'node-name': 'fl-cbw', 'file': 'disk',
           'target': 'temp'}
    if bitmap:
        cbw['bitmap'] = {'node': 'disk', 'name': bitmap}
    q.execute('blockdev-add', **cbw)
    q.execute('blockdev-add', driver='snapshot-access', file='fl-cbw',
              **{'node-name': 'fl-access'})
    backup = {'job-id': 'push', 'device': 'fl-access', 'target': 'target', 'sync': sync,
              'speed': 4 * MiB}
    if bitmap:
        # The sync bitmap must live on the job's device (QEMU's rule).
        q.execute('block-dirty-bitmap-add', node='fl-access', name='b', granularity=K64,
                  disabled=True)
        q.execute('block-dirty-bitmap-merge', node='fl-access', target='b',
                  bitmaps=[{'node': 'disk', 'name': bitmap}])
        backup.update(bitmap='b')
    q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True,
              **{'node-name': 'fl-cbw'})
    writer = Writer(nbd_uri(sock, 'guest'), 16 * MiB, seed)
    try:
        q.execute('blockdev-backup', **backup)
        ev = q.wait_event('BLOCK_JOB_COMPLETED', timeout=300)
        assert 'error' not in ev['data'], ev
    finally:
        assert writer.stop() > 0
    q.execute('block-export-del', id='guest')
    q.wait_event('BLOCK_EXPORT_DELETED')
    for node in ('target', 'fl-access', 'fl-cbw'):
        q.execute('blockdev-del', **{'node-name': node})


def test_full_then_incremental_restores_the_second_snapshot(tmp_path):
    size = 16 * MiB
    disk = str(tmp_path / 'disk.raw')
    temp = str(tmp_path / 'temp.raw')
    full = str(tmp_path / 'full.raw')
    inc = str(tmp_path / 'inc.raw')
    for p in (disk, temp, full, inc):
        make_raw(p, size)
    qemu_io(disk, 'write -P 0x5a 0 %d' % size)
    sock = str(tmp_path / 'nbd.sock')
    d = Daemon(tmp_path, ['--blockdev', 'driver=file,node-name=disk,filename=' + disk,
                          '--blockdev', 'driver=file,node-name=temp,filename=%s,discard=unmap' % temp,
                          '--nbd-server', 'addr.type=unix,addr.path=' + sock])
    try:
        q = d.qmp
        # Snapshot point 1: the chain's bitmap starts recording with the full backup.
        q.execute('block-dirty-bitmap-add', node='disk', name='live')
        point1 = read_file(disk)
        fleece_and_push(q, sock, 1, full, 'full')
        assert read_file(full) == point1

        # Snapshot point 2 (guest stopped): freeze what changed since point 1.
        point2 = read_file(disk)
        assert point2 != point1
        changed = {i for i in range(size // K64)
                   if point1[i * K64:(i + 1) * K64] != point2[i * K64:(i + 1) * K64]}
        q.execute('block-dirty-bitmap-add', node='disk', name='frozen', disabled=True)
        q.execute('block-dirty-bitmap-merge', node='disk', target='frozen', bitmaps=['live'])
        q.execute('block-dirty-bitmap-clear', node='disk', name='live')
        fleece_and_push(q, sock, 2, inc, 'incremental', bitmap='frozen')

        # The frozen bitmap, read over NBD the way a restore tool would.
        q.execute('block-export-add', type='nbd', id='bm', name='bm', bitmaps=['frozen'],
                  **{'node-name': 'disk'})
        frozen = clusters_of(dirty_map(nbd_uri(sock, 'bm'), 'frozen'))
        q.execute('block-export-del', id='bm')
        # It covers every changed cluster (it may over-approximate: a rewrite with the
        # same data still counts).
        assert changed <= frozen
        live = {b['name']: b for b in bitmaps_of(q, 'disk')}['live']
        assert live['count'] > 0 and live['recording']  # writes after point 2
    finally:
        d.stop()

    # The increment holds only clusters of the bitmap.
    out = subprocess.run(['qemu-img', 'map', '--output=json', '-f', 'raw', inc],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    data = [(e['start'], e['length']) for e in json.loads(out) if e['data']]
    assert clusters_of(data) <= frozen
    # Restore: the full backup with the increment's clusters applied.
    restored = bytearray(read_file(full))
    inc_bytes = read_file(inc)
    for i in frozen:
        restored[i * K64:(i + 1) * K64] = inc_bytes[i * K64:(i + 1) * K64]
    assert bytes(restored) == point2


# ---- 4. Raw disks: persistent bitmaps in a sidecar; a crash makes them inconsistent -----

def raw_disk(tmp_path):
    """An 8 MiB raw disk and the NBD socket path for its daemon."""
    disk = str(tmp_path / 'disk.raw')
    make_raw(disk, 8 * MiB)
    return disk, str(tmp_path / 'nbd.sock')


def sidecar_daemon(tmp_path, disk, sock, **sidecar_args):
    # A killed daemon leaves its unix sockets behind; a service manager removes them.
    for name in ('qmp.sock', os.path.basename(sock)):
        if os.path.exists(str(tmp_path / name)):
            os.unlink(str(tmp_path / name))
    d = Daemon(tmp_path, ['--blockdev', 'driver=file,node-name=disk,filename=' + disk,
                          '--nbd-server', 'addr.type=unix,addr.path=' + sock])
    d.qmp.execute('x-block-dirty-bitmap-sidecar', node='disk', path=disk + '.bitmaps',
                  **sidecar_args)
    return d


def crash(d):
    d.proc.kill()
    d.proc.wait()
    d.log.close()


def assert_restart_loads_inconsistent(tmp_path, disk, sock, why, **sidecar_args):
    """Starts fleeced on the disk's sidecar: bitmap b0 loads inconsistent, and the daemon
    log says `why`."""
    d = sidecar_daemon(tmp_path, disk, sock, **sidecar_args)
    try:
        info = {b['name']: b for b in bitmaps_of(d.qmp, 'disk')}
        assert info['b0']['inconsistent'] is True
    finally:
        assert d.stop() == 0
    with open(str(tmp_path / 'fleeced.log')) as f:
        log = f.read()
    assert why in log, log


def sidecar_of(q, node):
    for n in q.execute('query-named-block-nodes', flat=True):
        if n['node-name'] == node:
            return n.get('x-bitmap-sidecar')
    return None


def guest_writes(q, sock, cmds):
    q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True,
              **{'node-name': 'disk'})
    qemu_io(nbd_uri(sock, 'guest'), *cmds)
    q.execute('block-export-del', id='guest')
    q.wait_event('BLOCK_EXPORT_DELETED')


def test_sidecar_survives_restart_and_crash_needs_full_backup(tmp_path):
    disk, sock = raw_disk(tmp_path)
    d = sidecar_daemon(tmp_path, disk, sock)
    try:
        q = d.qmp
        q.execute('block-dirty-bitmap-add', node='disk', name='b0', persistent=True)
        q.execute('block-dirty-bitmap-add', node='disk', name='tmp')  # not persistent
        guest_writes(q, sock, ['write -P 1 0 4k', 'write -P 2 3M 128k', 'write -P 3 5M 1'])
    finally:
        assert d.stop() == 0  # clean shutdown saves the sidecar
    d = sidecar_daemon(tmp_path, disk, sock)
    try:
        q = d.qmp
        info = {b['name']: b for b in bitmaps_of(q, 'disk')}
        assert set(info) == {'b0'}
        assert info['b0']['persistent'] and info['b0']['recording']
        assert 'inconsistent' not in info['b0']
        # A read-only export needs a disabled bitmap.
        q.execute('block-dirty-bitmap-disable', node='disk', name='b0')
        q.execute('block-export-add', type='nbd', id='bm', name='bm', bitmaps=['b0'],
                  **{'node-name': 'disk'})
        expected = clusters_of([(0, 4096), (3 * MiB, 128 * 1024), (5 * MiB, 1)])
        assert clusters_of(dirty_map(nbd_uri(sock, 'bm'), 'b0')) == expected
        q.execute('block-export-del', id='bm')
        q.wait_event('BLOCK_EXPORT_DELETED')
        q.execute('block-dirty-bitmap-enable', node='disk', name='b0')
        guest_writes(q, sock, ['write -P 4 7M 4k'])
        # Crash: the sidecar stays marked in use.
        d.proc.kill()
        d.proc.wait()
        # A crash leaves its unix sockets behind. Restarting over a stale QMP socket makes
        # the first QMP connection get reset (a daemon start-up issue outside this test's
        # subject, see the bitmaps branch report), so remove them as a service manager would.
        for name in ('qmp.sock', 'nbd.sock'):
            os.unlink(str(tmp_path / name))
    finally:
        d.stop()
    d = sidecar_daemon(tmp_path, disk, sock)
    try:
        q = d.qmp
        info = {b['name']: b for b in bitmaps_of(q, 'disk')}
        assert info['b0']['inconsistent'] is True
        target = str(tmp_path / 'target.raw')
        make_raw(target, 8 * MiB)
        q.execute('blockdev-add', driver='file', filename=target, **{'node-name': 'target'})
        with pytest.raises(QmpError) as e:
            q.execute('blockdev-backup', device='disk', target='target', sync='incremental',
                      bitmap='b0', **{'job-id': 'inc'})
        assert 'full backup' in e.value.desc
        with pytest.raises(QmpError):
            q.execute('block-dirty-bitmap-merge', node='disk', target='b0', bitmaps=[])
    finally:
        assert d.stop() == 0
    # A clean restart does not make it trustworthy again.
    d = sidecar_daemon(tmp_path, disk, sock)
    try:
        q = d.qmp
        info = {b['name']: b for b in bitmaps_of(q, 'disk')}
        assert info['b0']['inconsistent'] is True
        # The way out: drop it, start a new chain.
        q.execute('block-dirty-bitmap-remove', node='disk', name='b0')
        q.execute('block-dirty-bitmap-add', node='disk', name='b0', persistent=True)
    finally:
        assert d.stop() == 0


# ---- 5. Raw disks, write-ahead sidecar: a crash keeps the bitmaps exact -------------------

def test_write_ahead_sidecar_keeps_bitmaps_through_crashes(tmp_path):
    disk, sock = raw_disk(tmp_path)
    # Journal regions of one bitmap cluster: after a crash the bitmap is exact.
    wa = {'write-ahead': True, 'journal-granularity': K64}
    d = sidecar_daemon(tmp_path, disk, sock, **wa)
    try:
        q = d.qmp
        q.execute('block-dirty-bitmap-add', node='disk', name='b0', persistent=True,
                  granularity=K64)
        guest_writes(q, sock, ['write -P 1 0 4k', 'write -P 2 3M 128k', 'write -z 5M 64k'])
        side = sidecar_of(q, 'disk')
        assert side['write-ahead'] is True and side['path'] == disk + '.bitmaps'
        # Four clusters were written for the first time: each write waited for its marks
        # (the 128k write for two, in one sync).
        assert side['journal']['marked-regions'] == 4, side
        assert 1 <= side['journal']['syncs'] <= 3, side
        assert side['journal']['degraded'] is False
        crash(d)
    finally:
        d.stop()
    written = clusters_of([(0, 4096), (3 * MiB, 128 * 1024), (5 * MiB, 64 * 1024)])
    d = sidecar_daemon(tmp_path, disk, sock, **wa)
    try:
        q = d.qmp
        info = {b['name']: b for b in bitmaps_of(q, 'disk')}
        assert 'inconsistent' not in info['b0'], info
        assert info['b0']['recording'] and info['b0']['persistent']
        assert info['b0']['count'] == len(written) * K64
        q.execute('block-dirty-bitmap-disable', node='disk', name='b0')
        q.execute('block-export-add', type='nbd', id='bm', name='bm', bitmaps=['b0'],
                  **{'node-name': 'disk'})
        assert clusters_of(dirty_map(nbd_uri(sock, 'bm'), 'b0')) == written
        q.execute('block-export-del', id='bm')
        q.wait_event('BLOCK_EXPORT_DELETED')
        q.execute('block-dirty-bitmap-enable', node='disk', name='b0')
        # Cleared, written again, crashed: only the new write is left (the clear was saved
        # before the command returned).
        q.execute('block-dirty-bitmap-clear', node='disk', name='b0')
        guest_writes(q, sock, ['write -P 5 7M 4k'])
        crash(d)
    finally:
        d.stop()
    d = sidecar_daemon(tmp_path, disk, sock, **wa)
    try:
        info = {b['name']: b for b in bitmaps_of(d.qmp, 'disk')}
        assert 'inconsistent' not in info['b0'], info
        assert info['b0']['count'] == K64
        guest_writes(d.qmp, sock, ['write -P 6 1M 4k'])
        crash(d)
    finally:
        d.stop()
    # Without its journal a crashed sidecar cannot vouch for anything: inconsistent, and
    # the log says why.
    os.unlink(disk + '.bitmaps.journal')
    assert_restart_loads_inconsistent(tmp_path, disk, sock,
                                      'Cannot read change journal', **wa)


def test_write_ahead_sidecar_argument_errors(tmp_path):
    disk = str(tmp_path / 'disk.raw')
    make_raw(disk, 8 * MiB)
    d = Daemon(tmp_path, ['--blockdev', 'driver=file,node-name=disk,filename=' + disk])
    try:
        q = d.qmp
        for args, message in [
                ({'journal-granularity': K64}, "needs 'write-ahead': true"),
                ({'write-ahead': True, 'journal-granularity': 1000}, 'not a power of two'),
                ({'write-ahead': True, 'journal-granularity': 'big'}, 'expects uint64'),
                ({'write-ahead': 'yes'}, "'write-ahead'")]:
            with pytest.raises(QmpError) as e:
                q.execute('x-block-dirty-bitmap-sidecar', node='disk', path=disk + '.bitmaps',
                          **args)
            assert message in e.value.desc, (args, e.value.desc)
        assert not os.path.exists(disk + '.bitmaps')
        assert not os.path.exists(disk + '.bitmaps.journal')
        assert sidecar_of(q, 'disk') is None
        # A qcow2 node keeps its persistent bitmaps in the image: no sidecar.
        image = str(tmp_path / 'disk.qcow2')
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', image, '8M'], check=True)
        q.execute('blockdev-add', driver='qcow2', **{'node-name': 'q2', 'file': {
            'driver': 'file', 'filename': image}})
        with pytest.raises(QmpError) as e:
            q.execute('x-block-dirty-bitmap-sidecar', node='q2', path=image + '.bitmaps')
        assert "keeps persistent bitmaps in its image (qcow2)" in e.value.desc, e.value.desc
    finally:
        assert d.stop() == 0
    # The command-line form says which part is wrong, and fleeced does not start.
    for value, message in [('node=disk,path=%s.b,write-ahead=maybe' % disk, "'write-ahead'"),
                           ('path=%s.b' % disk, "'node' is missing"),
                           ('node=disk,path=%s.b,journal-granularity=1M' % disk,
                            "'journal-granularity' expects a number of bytes")]:
        p = subprocess.run([FLEECED, '--blockdev', 'driver=file,node-name=disk,filename=' + disk,
                            '--bitmap-sidecar', value], capture_output=True, text=True, timeout=30)
        assert p.returncode == 1 and '--bitmap-sidecar: ' in p.stderr and message in p.stderr, p


# ---- 6. A clean sidecar notices writes it could not see -------------------------------------

@pytest.mark.parametrize('write_ahead', [False, True], ids=['clean-shutdown', 'write-ahead'])
def test_sidecar_notices_writes_made_while_fleeced_was_not_watching(tmp_path, write_ahead):
    disk, sock = raw_disk(tmp_path)
    args = {'write-ahead': True} if write_ahead else {}
    d = sidecar_daemon(tmp_path, disk, sock, **args)
    try:
        d.qmp.execute('block-dirty-bitmap-add', node='disk', name='b0', persistent=True)
        guest_writes(d.qmp, sock, ['write -P 1 0 4k'])
    finally:
        assert d.stop() == 0
    # Nothing touched the disk: the next start trusts the bitmap.
    d = sidecar_daemon(tmp_path, disk, sock, **args)
    try:
        info = {b['name']: b for b in bitmaps_of(d.qmp, 'disk')}
        assert 'inconsistent' not in info['b0'] and info['b0']['count'] == K64
    finally:
        assert d.stop() == 0
    # Another program writes the disk while fleeced is stopped: no bitmap saw it.
    qemu_io(disk, 'write -P 9 6M 4k')
    assert_restart_loads_inconsistent(tmp_path, disk, sock,
                                      'the disk changed after the bitmaps were saved', **args)


def test_sidecar_attached_after_the_guest_wrote_loads_inconsistent(tmp_path):
    disk, sock = raw_disk(tmp_path)
    d = sidecar_daemon(tmp_path, disk, sock)
    try:
        d.qmp.execute('block-dirty-bitmap-add', node='disk', name='b0', persistent=True)
    finally:
        assert d.stop() == 0
    d = Daemon(tmp_path, ['--blockdev', 'driver=file,node-name=disk,filename=' + disk,
                          '--nbd-server', 'addr.type=unix,addr.path=' + sock])
    try:
        q = d.qmp
        guest_writes(q, sock, ['write -P 2 1M 4k'])  # before the sidecar: in no bitmap
        q.execute('x-block-dirty-bitmap-sidecar', node='disk', path=disk + '.bitmaps')
        info = {b['name']: b for b in bitmaps_of(q, 'disk')}
        assert info['b0']['inconsistent'] is True
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize('how', ['command', 'transaction'])
def test_a_bitmap_is_in_the_sidecar_when_its_command_returns(tmp_path, how):
    disk, sock = raw_disk(tmp_path)
    wa = {'write-ahead': True}
    d = sidecar_daemon(tmp_path, disk, sock, **wa)
    try:
        add = {'node': 'disk', 'name': 'b0', 'persistent': True}
        if how == 'command':
            d.qmp.execute('block-dirty-bitmap-add', **add)
        else:
            d.qmp.execute('transaction', actions=[{'type': 'block-dirty-bitmap-add',
                                                   'data': add}])
        crash(d)  # at once: only what the reply promised is on disk
    finally:
        d.stop()
    d = sidecar_daemon(tmp_path, disk, sock, **wa)
    try:
        info = {b['name']: b for b in bitmaps_of(d.qmp, 'disk')}
        assert 'b0' in info and 'inconsistent' not in info['b0'], info
    finally:
        assert d.stop() == 0
