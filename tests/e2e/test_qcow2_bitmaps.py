"""Persistent dirty bitmaps in qcow2 images (QEMU's bitmaps extension): bitmaps made by
qemu-img / qemu-storage-daemon load in fleeced, bitmaps fleeced stores load in QEMU, a
kill -9 leaves them inconsistent (never silently used), and `fleece img bitmap` behaves
like `qemu-img bitmap`."""

import json
import os
import random
import shutil
import subprocess

import pytest

from fleece_testlib import (FLEECE, FLEECED, Daemon, QmpError, clusters_of, dirty_bitmaps, dirty_map,
                            nbd_uri, qemu_io, run)

QSD = shutil.which('qemu-storage-daemon')
K64 = 65536
MiB = 1 << 20


def bitmaps_of(q, node):
    return {b['name']: b for b in dirty_bitmaps(q, node) or []}


def image_bitmaps(path):
    info = json.loads(run('qemu-img', 'info', '--output=json', '-U', path).stdout)
    return info['format-specific']['data'].get('bitmaps')


def check_clean(path):
    p = run('qemu-img', 'check', path, check=False)
    assert p.returncode == 0, p.stdout + p.stderr


def start(binary, work, image, sock):
    """fleeced or qemu-storage-daemon (same command line) with qcow2 node `disk`."""
    os.makedirs(str(work), exist_ok=True)
    for name in ('qmp.sock',):
        if os.path.exists(os.path.join(str(work), name)):
            os.unlink(os.path.join(str(work), name))
    if os.path.exists(sock):
        os.unlink(sock)
    assert binary, 'qemu-storage-daemon is required'
    return Daemon(work, ['--blockdev', 'driver=file,node-name=f,filename=' + image,
                         '--blockdev', 'driver=qcow2,node-name=disk,file=f',
                         '--nbd-server', 'addr.type=unix,addr.path=' + sock], binary=binary)


def guest_writes(q, sock, cmds):
    q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True,
              **{'node-name': 'disk'})
    qemu_io(nbd_uri(sock, 'guest'), *cmds)
    q.execute('block-export-del', id='guest')
    q.wait_event('BLOCK_EXPORT_DELETED')


def exported_map(q, sock, name):
    """The bitmap's dirty extents through a read-only export (the bitmap disabled first)."""
    q.execute('block-dirty-bitmap-disable', node='disk', name=name)
    q.execute('block-export-add', type='nbd', id='bm', name='bm', bitmaps=[name],
              **{'node-name': 'disk'})
    try:
        return dirty_map(nbd_uri(sock, 'bm'), name)
    finally:
        q.execute('block-export-del', id='bm')
        q.wait_event('BLOCK_EXPORT_DELETED')


WRITES = ['write -P 1 0 4k', 'write -P 2 3M 128k', 'write -P 3 5M 1', 'write -z 6M 64k',
          'write -P 4 8388607 1']
WRITTEN = [(0, 4096), (3 * MiB, 128 * 1024), (5 * MiB, 1), (6 * MiB, K64), (8 * MiB - 1, 1)]


def test_qemu_bitmaps_load_in_fleeced(tmp_path):
    img = str(tmp_path / 'disk.qcow2')
    run('qemu-img', 'create', '-f', 'qcow2', img, '8M')
    run('qemu-img', 'bitmap', '--add', img, 'b0')
    run('qemu-img', 'bitmap', '--add', '-g', '4096', '--disable', img, 'fine')
    sock = str(tmp_path / 'nbd.sock')
    # Bits set by QEMU itself: guest writes through qemu-storage-daemon.
    d = start(QSD, tmp_path / 'qsd', img, sock)
    try:
        guest_writes(d.qmp, sock, WRITES)
        qsd_map = exported_map(d.qmp, sock, 'b0')
        d.qmp.execute('block-dirty-bitmap-enable', node='disk', name='b0')
    finally:
        assert d.stop() == 0
    # And by qemu-img: merge b0 into the disabled 'fine'.
    run('qemu-img', 'bitmap', '--merge', 'b0', img, 'fine')
    assert clusters_of(qsd_map) == clusters_of(WRITTEN)

    d = start(FLEECED, tmp_path / 'fl', img, sock)
    try:
        q = d.qmp
        info = bitmaps_of(q, 'disk')
        assert set(info) == {'b0', 'fine'}
        assert info['b0']['persistent'] and info['b0']['recording']
        assert info['fine']['persistent'] and not info['fine']['recording']
        assert info['fine']['granularity'] == 4096 and info['b0']['granularity'] == K64
        assert 'inconsistent' not in info['b0']
        # While open, the image says the bitmaps are in use.
        assert all('in-use' in b['flags'] for b in image_bitmaps(img))
        assert exported_map(q, sock, 'b0') == qsd_map
        # Merged from the 64 KiB b0: whole 64 KiB clusters at 4 KiB granularity.
        assert exported_map(q, sock, 'fine') == qsd_map
    finally:
        assert d.stop() == 0
    assert {b['name']: b['flags'] for b in image_bitmaps(img)} == {'b0': [], 'fine': []}
    check_clean(img)


def test_fleeced_bitmaps_load_in_qemu(tmp_path):
    img = str(tmp_path / 'disk.qcow2')
    run('qemu-img', 'create', '-f', 'qcow2', img, '8M')
    sock = str(tmp_path / 'nbd.sock')
    fleeced = FLEECED
    d = start(fleeced, tmp_path / 'fl', img, sock)
    try:
        q = d.qmp
        q.execute('block-dirty-bitmap-add', node='disk', name='p', persistent=True)
        q.execute('block-dirty-bitmap-add', node='disk', name='g4k', persistent=True,
                  granularity=4096, disabled=True)
        q.execute('block-dirty-bitmap-add', node='disk', name='gone', persistent=True)
        q.execute('block-dirty-bitmap-add', node='disk', name='tmp')  # not persistent
        guest_writes(q, sock, WRITES)
        q.execute('block-dirty-bitmap-remove', node='disk', name='gone')
        fleeced_map = exported_map(q, sock, 'p')
        q.execute('block-dirty-bitmap-enable', node='disk', name='p')
    finally:
        assert d.stop() == 0
    assert clusters_of(fleeced_map) == clusters_of(WRITTEN)
    assert image_bitmaps(img) == [
        {'flags': ['auto'], 'name': 'p', 'granularity': K64},
        {'flags': [], 'name': 'g4k', 'granularity': 4096}]
    check_clean(img)

    d = start(QSD, tmp_path / 'qsd', img, sock)
    try:
        info = bitmaps_of(d.qmp, 'disk')
        assert set(info) == {'p', 'g4k'}
        assert exported_map(d.qmp, sock, 'p') == fleeced_map
        assert exported_map(d.qmp, sock, 'g4k') == []
        d.qmp.execute('block-dirty-bitmap-enable', node='disk', name='p')
    finally:
        assert d.stop() == 0

    # A restart of fleeced: exactly the written regions at bitmap granularity.
    d = start(fleeced, tmp_path / 'fl2', img, sock)
    try:
        m = exported_map(d.qmp, sock, 'p')
        assert m == fleeced_map
        assert clusters_of(m) == clusters_of(WRITTEN)
        # Without a writer, a remove reaches the image at close.
        d.qmp.execute('block-dirty-bitmap-remove', node='disk', name='p')
    finally:
        assert d.stop() == 0
    assert image_bitmaps(img) == [{'flags': [], 'name': 'g4k', 'granularity': 4096}]
    check_clean(img)


def test_kill_9_makes_bitmaps_inconsistent_never_silently_used(tmp_path):
    img = str(tmp_path / 'disk.qcow2')
    run('qemu-img', 'create', '-f', 'qcow2', img, '8M')
    target = str(tmp_path / 'target.qcow2')
    run('qemu-img', 'create', '-f', 'qcow2', target, '8M')
    sock = str(tmp_path / 'nbd.sock')
    rng = random.Random(7)
    d = start(FLEECED, tmp_path / 'setup', img, sock)
    try:
        d.qmp.execute('block-dirty-bitmap-add', node='disk', name='b', persistent=True)
    finally:
        assert d.stop() == 0
    assert image_bitmaps(img) == [{'flags': ['auto'], 'name': 'b', 'granularity': K64}]
    # Each round: writes, kill -9, restart (inconsistent, refused), remove + add, clean stop.
    for rnd in range(20):
        d = start(FLEECED, tmp_path / ('r%d' % rnd), img, sock)
        try:
            q = d.qmp
            info = bitmaps_of(q, 'disk')
            assert 'inconsistent' not in info['b'] and info['b']['recording']
            cmds = ['write -P %d %d %d' % (rng.randrange(256), rng.randrange(8 * MiB - 65536),
                                           rng.randrange(1, 65536)) for _ in range(8)]
            guest_writes(q, sock, cmds)
        finally:
            d.proc.kill()
            d.proc.wait()
            d.log.close()
        # Never a reference to a free cluster: at most leaks (exit code 3).
        p = run('qemu-img', 'check', img, check=False)
        assert p.returncode in (0, 3), p.stdout + p.stderr
        assert image_bitmaps(img) == [{'flags': ['in-use', 'auto'], 'name': 'b',
                                       'granularity': K64}]
        d = start(FLEECED, tmp_path / ('s%d' % rnd), img, sock)
        try:
            q = d.qmp
            info = bitmaps_of(q, 'disk')
            # The image was in use at the crash: the bitmap may miss writes.
            assert info['b']['inconsistent'] is True
            assert not info['b']['recording']
            q.execute('blockdev-add', driver='qcow2', **{'node-name': 'tgt'},
                      file={'driver': 'file', 'filename': target})
            with pytest.raises(QmpError) as e:
                q.execute('blockdev-backup', device='disk', target='tgt', sync='incremental',
                          bitmap='b', **{'job-id': 'inc'})
            assert 'full backup' in e.value.desc
            # With a writer (the guest's export) a remove takes it out of the image at once.
            q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True,
                      **{'node-name': 'disk'})
            q.execute('block-dirty-bitmap-remove', node='disk', name='b')
            assert image_bitmaps(img) is None
            q.execute('block-export-del', id='guest')
            q.wait_event('BLOCK_EXPORT_DELETED')
            q.execute('block-dirty-bitmap-add', node='disk', name='b', persistent=True)
            # A new chain works again.
            guest_writes(q, sock, ['write -P 9 %d 4k' % (rng.randrange(2048) * 4096)])
            q.execute('blockdev-backup', device='disk', target='tgt', sync='incremental',
                      bitmap='b', **{'job-id': 'inc'})
            ev = q.wait_event('BLOCK_JOB_COMPLETED')
            assert 'error' not in ev['data'], ev
            assert bitmaps_of(q, 'disk')['b']['count'] == 0
            q.execute('blockdev-del', **{'node-name': 'tgt'})
        finally:
            assert d.stop() == 0
        check_clean(img)
    d = start(FLEECED, tmp_path / 'last', img, sock)
    try:
        guest_writes(d.qmp, sock, ['write -P 1 0 4k'])
    finally:
        d.proc.kill()
        d.proc.wait()
        d.log.close()
    # After the crashes QEMU agrees: the bitmap is inconsistent.
    run('qemu-img', 'check', '-r', 'leaks', img, check=False)
    d = start(QSD, tmp_path / 'qsd', img, sock)
    try:
        assert bitmaps_of(d.qmp, 'disk')['b']['inconsistent'] is True
    finally:
        assert d.stop() == 0


# ---- fleece img bitmap against qemu-img bitmap -------------------------------------------

def qemu_nbd_map(tmp_path, img, bitmap):
    """A bitmap's dirty extents as qemu-nbd (QEMU's own loader) exports it."""
    sock = str(tmp_path / 'qnbd.sock')
    if os.path.exists(sock):
        os.unlink(sock)
    proc = subprocess.Popen(['qemu-nbd', '-r', '-f', 'qcow2', '-B', bitmap, '-k', sock, img],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        from fleece_testlib import wait_for_socket
        wait_for_socket(sock, None)
        return dirty_map('nbd+unix:///?socket=' + sock, bitmap)
    finally:
        proc.wait(timeout=30)  # without -t it ends when the client disconnects


STEPS = [
    ['--add', 'b0'],
    ['--add', '-g', '4096', '--disable', 'fine'],
    ['--add', 'b0'],                       # duplicate
    ['--add', '-g', '1000', 'odd'],        # bad granularity
    ['--remove', 'nope'],                  # unknown bitmap
    ['--clear', 'nope'],
    ['--enable', 'nope'],
    ['--merge', 'nope', 'b0'],
    [],                                    # no operation
    ['--merge', 'src', '-b', '{src}', '-F', 'qcow2', 'b0'],
    ['--merge', 'src', '-b', '{src}', '-F', 'qcow2', 'fine'],
    ['--disable', 'b0'],
    ['--enable', 'fine'],
    ['--add', 'tmp'],
    ['--merge', 'b0', 'tmp'],
    ['--clear', 'b0'],
    ['--remove', 'tmp'],
    # Operations run in command-line order.
    ['--add', '--disable', 'x'],
    ['--enable', '--disable', 'x'],
    ['--disable', '--enable', 'x'],
    ['--disable', '--add', 'y'],
]


def test_img_bitmap_matches_qemu_img(tmp_path):
    base = str(tmp_path / 'base.qcow2')
    run('qemu-img', 'create', '-f', 'qcow2', base, '8M')
    src = str(tmp_path / 'src.qcow2')
    run('qemu-img', 'create', '-f', 'qcow2', src, '8M')
    run('qemu-img', 'bitmap', '--add', src, 'src')
    sock = str(tmp_path / 'nbd.sock')
    d = start(QSD, tmp_path / 'qsd', src, sock)
    try:
        guest_writes(d.qmp, sock, WRITES)
    finally:
        assert d.stop() == 0
    a = str(tmp_path / 'qemu.qcow2')
    b = str(tmp_path / 'fleece.qcow2')
    shutil.copy(base, a)
    shutil.copy(base, b)
    for step in STEPS:
        args = [x.replace('{src}', src) for x in step]
        # FILE BITMAP come last for both tools; the bitmap name is the last word.
        if args:
            opts, name = args[:-1], args[-1]
        else:
            opts, name = [], 'b0'
        pq = run('qemu-img', 'bitmap', *opts, a, name, check=False)
        pf = run(FLEECE, 'img', 'bitmap', *opts, b, name, check=False)
        assert pq.returncode == pf.returncode, (step, pq.stderr, pf.stderr)
        if pq.returncode:
            # Same reason (the text after "failed:" is QEMU's QMP message).
            if 'failed: ' in pq.stderr:
                assert pq.stderr.split('failed: ', 1)[1].strip() == \
                    pf.stderr.split('failed: ', 1)[1].strip(), (step, pq.stderr, pf.stderr)
        assert image_bitmaps(a) == image_bitmaps(b), step
        check_clean(b)
    assert [x['name'] for x in image_bitmaps(b)] == ['b0', 'fine', 'x']
    for name in ('b0', 'fine', 'x'):
        assert qemu_nbd_map(tmp_path, a, name) == qemu_nbd_map(tmp_path, b, name), name
    # The merged bits themselves: b0 was cleared, fine holds src at 4 KiB granularity.
    assert clusters_of(qemu_nbd_map(tmp_path, b, 'fine')) == clusters_of(WRITTEN)
    # fleece img info lists them like qemu-img info.
    fi = json.loads(run(FLEECE, 'img', 'info', '--output=json', b).stdout)
    assert fi['format-specific']['data']['bitmaps'] == image_bitmaps(b)
    qh = run('qemu-img', 'info', b).stdout
    fh = run(FLEECE, 'img', 'info', b).stdout
    section = lambda out: out[out.index('    bitmaps:'):out.index('    refcount bits')]
    assert section(qh) == section(fh)
    # Not a qcow2 image: persistent bitmaps are not supported (same exit code).
    raw = str(tmp_path / 'disk.raw')
    run('qemu-img', 'create', '-f', 'raw', raw, '1M')
    pq = run('qemu-img', 'bitmap', '--add', '-f', 'raw', raw, 'b', check=False)
    pf = run(FLEECE, 'img', 'bitmap', '--add', '-f', 'raw', raw, 'b', check=False)
    assert pq.returncode == pf.returncode == 1
    assert "Can't store persistent bitmaps to" in pf.stderr


# ---- other opens: blockdev-del, read-only, stale and corrupt extensions ------------------

def test_blockdev_del_stores_and_read_only_open_never_touches_the_image(tmp_path):
    img = str(tmp_path / 'disk.qcow2')
    run('qemu-img', 'create', '-f', 'qcow2', img, '8M')
    sock = str(tmp_path / 'nbd.sock')
    d = Daemon(tmp_path / 'fl', ['--nbd-server', 'addr.type=unix,addr.path=' + sock]) \
        if os.makedirs(str(tmp_path / 'fl')) is None else None
    try:
        q = d.qmp
        q.execute('blockdev-add', driver='qcow2', **{'node-name': 'disk'},
                  file={'driver': 'file', 'filename': img})
        q.execute('block-dirty-bitmap-add', node='disk', name='b', persistent=True)
        guest_writes(q, sock, WRITES)
        q.execute('blockdev-del', **{'node-name': 'disk'})
        assert image_bitmaps(img) == [{'flags': ['auto'], 'name': 'b', 'granularity': K64}]
        check_clean(img)
        # Read-only: loaded read-only, the image stays byte for byte the same.
        before = open(img, 'rb').read()
        q.execute('blockdev-add', driver='qcow2', **{'node-name': 'disk'}, **{'read-only': True},
                  file={'driver': 'file', 'filename': img, 'read-only': True})
        info = bitmaps_of(q, 'disk')['b']
        assert info['persistent'] and 'inconsistent' not in info
        with pytest.raises(QmpError) as e:
            q.execute('block-dirty-bitmap-clear', node='disk', name='b')
        assert 'readonly' in e.value.desc
        with pytest.raises(QmpError) as e:
            q.execute('block-dirty-bitmap-add', node='disk', name='n', persistent=True)
        assert "Can't store persistent bitmaps to disk" in e.value.desc
        q.execute('block-export-add', type='nbd', id='bm', name='bm', bitmaps=['b'],
                  **{'node-name': 'disk'})
        assert clusters_of(dirty_map(nbd_uri(sock, 'bm'), 'b')) == clusters_of(WRITTEN)
        q.execute('block-export-del', id='bm')
        q.wait_event('BLOCK_EXPORT_DELETED')
        q.execute('blockdev-del', **{'node-name': 'disk'})
        assert open(img, 'rb').read() == before
    finally:
        assert d.stop() == 0


def set_autoclear(path, value):
    with open(path, 'r+b') as f:
        f.seek(88)
        f.write(value.to_bytes(8, 'big'))


def test_extension_left_by_a_program_without_bitmap_support_is_dropped_like_qemu(tmp_path):
    sock = str(tmp_path / 'nbd.sock')
    results = {}
    for tag, binary in (('qemu', QSD), ('fleece', FLEECED)):
        img = str(tmp_path / (tag + '.qcow2'))
        run('qemu-img', 'create', '-f', 'qcow2', img, '8M')
        run('qemu-img', 'bitmap', '--add', img, 'b0')
        set_autoclear(img, 0)  # as an old qemu-img would leave it after writing
        assert image_bitmaps(img) is None  # qemu-img info ignores it already
        d = start(binary, tmp_path / tag, img, sock)
        try:
            results[tag] = bitmaps_of(d.qmp, 'disk')
        finally:
            assert d.stop() == 0
        assert image_bitmaps(img) is None
        set_autoclear(img, 1)  # the extension itself is gone, not only ignored
        assert image_bitmaps(img) is None
        set_autoclear(img, 0)
        # At most the old bitmap's clusters leak (repairable), never a corruption.
        p = run('qemu-img', 'check', img, check=False)
        assert p.returncode in (0, 3), p.stdout
        results[tag + '-check'] = p.returncode
    assert results['fleece'] == results['qemu'] == {}
    assert results['fleece-check'] == results['qemu-check']


def test_corrupt_bitmap_directory_is_refused_with_the_problem_named(tmp_path):
    img = str(tmp_path / 'disk.qcow2')
    run('qemu-img', 'create', '-f', 'qcow2', img, '8M')
    run('qemu-img', 'bitmap', '--add', img, 'b0')
    data = open(img, 'rb').read()
    hl = int.from_bytes(data[100:104], 'big')
    off = hl
    while True:
        t, ln = int.from_bytes(data[off:off + 4], 'big'), int.from_bytes(data[off + 4:off + 8], 'big')
        assert t != 0
        if t == 0x23852875:
            dir_off = int.from_bytes(data[off + 24:off + 32], 'big')
            break
        off += 8 + ((ln + 7) & ~7)
    with open(img, 'r+b') as f:
        f.seek(dir_off + 16)
        f.write(bytes([7]))  # type 7: unknown
    os.makedirs(str(tmp_path / 'fl'))
    d = Daemon(tmp_path / 'fl')
    try:
        with pytest.raises(QmpError) as e:
            d.qmp.execute('blockdev-add', driver='qcow2', **{'node-name': 'disk'},
                          file={'driver': 'file', 'filename': img})
        assert "bitmap 0 'b0': unknown type 7" in e.value.desc, e.value.desc
        assert d.qmp.execute('query-named-block-nodes') == []
    finally:
        assert d.stop() == 0
    p = run(FLEECE, 'img', 'info', img, check=False)
    assert p.returncode == 1
