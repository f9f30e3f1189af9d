"""qcow2 driver against QEMU: images made by qemu-img read identically through a fleeced
export, random writes match a raw mirror and leave `qemu-img check` clean, kill -9 never
corrupts an image, and corrupt images are refused with a message naming the problem."""
import os
import random
import signal
import threading

import nbd
import pytest

from fleece_testlib import Daemon, QmpError, qemu_io, run

MiB = 1 << 20


def qemu_img_check(path):
    """Returns (returncode, output): 0 clean, 2 corruptions, 3 leaks only."""
    p = run('qemu-img', 'check', path, check=False)
    return p.returncode, p.stdout + p.stderr


class Export:
    """fleeced serving one qcow2 image as NBD export 'e'."""

    def __init__(self, tmp_path, image, writable=False, **node_opts):
        self.sock = str(tmp_path / 'nbd.sock')
        self.daemon = Daemon(tmp_path)
        q = self.daemon.qmp
        opts = {'driver': 'qcow2', 'node-name': 'q0', 'read-only': not writable,
                'file': {'driver': 'file', 'filename': str(image)}}
        opts.update(node_opts)
        q.execute('blockdev-add', **opts)
        q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': self.sock}})
        q.execute('block-export-add', type='nbd', id='e', name='e', writable=writable,
                  **{'node-name': 'q0'})
        self.uri = 'nbd+unix:///e?socket=' + self.sock

    def close(self):
        q = self.daemon.qmp
        q.execute('block-export-del', id='e')
        q.execute('blockdev-del', **{'node-name': 'q0'})
        assert self.daemon.stop() == 0


def compare_export(tmp_path, image, reference=None):
    exp = Export(tmp_path, image)
    try:
        p = run('qemu-img', 'compare', exp.uri, str(reference or image), check=False)
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        exp.close()


def fill_with_qemu_io(image, cluster):
    # Data, partial clusters, zero clusters (with and without unmap) and discarded clusters.
    qemu_io(str(image), 'write -P 0x11 0 3M', 'write -P 0x22 %d 5000' % (5 * MiB + 123),
            'write -z 1M 512k', 'write -z -u 2M %d' % (4 * cluster),
            'discard %d %d' % (4 * MiB, 8 * cluster), 'write -P 0x33 %d 4096' % (9 * MiB),
            'write -P 0x44 %d %d' % (12 * MiB - 4096, 8192), fmt='qcow2')


@pytest.mark.parametrize('cluster', [4096, 65536, 2 * MiB])
def test_reads_match_qemu(tmp_path, cluster):
    img = tmp_path / 'img.qcow2'
    size = max(16 * MiB, 32 * cluster)
    run('qemu-img', 'create', '-f', 'qcow2', '-o', 'cluster_size=%d' % cluster, str(img), str(size))
    fill_with_qemu_io(img, cluster)
    compare_export(tmp_path, img)


def test_backing_chain_reads_match_qemu(tmp_path):
    base = tmp_path / 'base.qcow2'
    mid = tmp_path / 'mid.raw'
    top = tmp_path / 'top.qcow2'
    # A raw middle layer shorter than the top: reads past its end are zeroes.
    run('qemu-img', 'create', '-f', 'qcow2', str(base), '6M')
    qemu_io(str(base), 'write -P 1 0 6M', fmt='qcow2')
    run('qemu-img', 'create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', str(mid), '8M')
    qemu_io(str(mid), 'write -P 2 1M 1M', 'write -z 3M 64k', fmt='qcow2')
    run('qemu-img', 'create', '-f', 'qcow2', '-o', 'cluster_size=4096', '-b', 'mid.raw', '-F',
        'qcow2', str(top), '16M')
    qemu_io(str(top), 'write -P 3 1536k 4k', 'write -z 0 8k', 'discard 64k 64k', 'write -P 4 10M 1M',
            fmt='qcow2')
    compare_export(tmp_path, top)


def test_backing_null_reads_zeroes_for_unallocated(tmp_path):
    base = tmp_path / 'base.qcow2'
    top = tmp_path / 'top.qcow2'
    run('qemu-img', 'create', '-f', 'qcow2', str(base), '4M')
    qemu_io(str(base), 'write -P 1 0 4M', fmt='qcow2')
    run('qemu-img', 'create', '-f', 'qcow2', '-b', str(base), '-F', 'qcow2', str(top), '4M')
    qemu_io(str(top), 'write -P 2 1M 64k', fmt='qcow2')
    exp = Export(tmp_path, top, backing=None)
    try:
        qemu_io(exp.uri, 'read -P 0 0 1M', 'read -P 2 1M 64k', 'read -P 0 2M 2M', read_only=True)
    finally:
        exp.close()


@pytest.mark.parametrize('compression', ['zlib', 'zstd'])
def test_compressed_reads_match_qemu(tmp_path, compression):
    raw = tmp_path / 'src.raw'
    img = tmp_path / 'c.qcow2'
    with open(raw, 'wb') as f:
        rng = random.Random(5)
        for i in range(64):
            # Compressible text and incompressible noise, cluster by cluster.
            if i % 3 == 0:
                f.write(bytes(rng.getrandbits(8) for _ in range(65536)))
            elif i % 3 == 1:
                f.write((b'fleece %d ' % i) * (65536 // len(b'fleece %d ' % i)) + b'\0' * (65536 % len(b'fleece %d ' % i)))
            else:
                f.write(b'\0' * 65536)
    run('qemu-img', 'convert', '-c', '-O', 'qcow2', '-o', 'compression_type=' + compression,
        str(raw), str(img))
    out = run('qemu-img', 'check', str(img)).stdout
    assert 'compressed clusters' in out and '0.00% compressed' not in out, out
    compare_export(tmp_path, img, reference=raw)


def random_ops(h, mirror, size, cluster, count, seed):
    rng = random.Random(seed)
    for i in range(count):
        op = rng.choice(['write', 'write', 'write', 'zero', 'zero_unmap', 'discard'])
        off = rng.randrange(0, size // 512) * 512
        length = min(size - off, rng.choice([512, 4096, 8192, cluster, 3 * cluster + 1024]))
        if op == 'write':
            data = bytes([rng.randrange(1, 256)]) * length
            h.pwrite(data, off)
            mirror[off:off + length] = data
        elif op in ('zero', 'zero_unmap'):
            h.zero(length, off, 0 if op == 'zero_unmap' else nbd.CMD_FLAG_NO_HOLE)
            mirror[off:off + length] = bytes(length)
        else:
            # Whole clusters only, so the effect (zeroes, no backing) is defined.
            lo = (off + cluster - 1) // cluster * cluster
            hi = (off + length) // cluster * cluster
            if hi > lo:
                h.trim(hi - lo, lo)
                mirror[lo:hi] = bytes(hi - lo)
        if i % 100 == 99:
            h.flush()


@pytest.mark.parametrize('cluster', [4096, 65536])
def test_random_writes_match_raw_and_check_clean(tmp_path, cluster):
    size = 32 * MiB
    img = tmp_path / 'w.qcow2'
    raw = tmp_path / 'mirror.raw'
    run('qemu-img', 'create', '-f', 'qcow2', '-o', 'cluster_size=%d' % cluster, str(img), str(size))
    mirror = bytearray(size)
    exp = Export(tmp_path, img, writable=True, discard='unmap', **{'l2-cache-size': 4 * cluster})
    try:
        h = nbd.NBD()
        h.connect_uri(exp.uri)
        random_ops(h, mirror, size, cluster, 2000, seed=cluster)
        h.flush()
        h.shutdown()
        with open(raw, 'wb') as f:
            f.write(mirror)
        p = run('qemu-img', 'compare', exp.uri, str(raw), check=False)
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        exp.close()
    rc, out = qemu_img_check(str(img))
    assert rc == 0, out
    p = run('qemu-img', 'compare', '-f', 'qcow2', '-F', 'raw', str(img), str(raw), check=False)
    assert p.returncode == 0, p.stdout + p.stderr


BLOCK = 4096


def kill_9(exp, stop, writer):
    """Kills the daemon outright, then stops the writer thread (its requests fail)."""
    exp.daemon.proc.send_signal(signal.SIGKILL)
    exp.daemon.proc.wait()
    stop.set()
    writer.join(timeout=60)
    assert not writer.is_alive()


def check_survivors(tmp_path, img, durable, since_flush, what=''):
    """After a kill -9: the image has leaks at most, never corruption, and every block holds
    what it held at the last completed flush or one of the writes since. What survived
    becomes `durable`, the truth for the next round."""
    rc, out = qemu_img_check(str(img))
    assert rc in (0, 3), out
    assert 'ERROR' not in out, out
    dump = tmp_path / 'dump.raw'
    run('qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', str(img), str(dump))
    with open(dump, 'rb') as f:
        content = f.read()
    for b in set(durable) | set(since_flush):
        got = content[b * BLOCK:(b + 1) * BLOCK]
        allowed = {durable.get(b, 0)} | since_flush.get(b, set())
        found = [a for a in allowed if got == (bytes(BLOCK) if a == 0 else block_data(a))]
        assert found, '%sblock %d: %r... not one of %s' % (what, b, got[:8], sorted(allowed))
        durable[b] = found[0]
    dump.unlink()


def block_data(tag):
    return tag.to_bytes(8, 'little') * (BLOCK // 8)


@pytest.mark.parametrize('cluster', [4096, 65536])
def test_kill_9_never_corrupts(tmp_path, cluster):
    size = 16 * MiB
    nblocks = size // BLOCK
    img = tmp_path / 'k.qcow2'
    # Small L2 cache: commits also happen on eviction, not only on flush.
    run('qemu-img', 'create', '-f', 'qcow2', '-o', 'cluster_size=%d' % cluster, str(img), str(size))
    durable = {}   # block -> tag, as of the last completed flush
    rng = random.Random(9)
    tag = 1
    for rnd in range(4):
        exp = Export(tmp_path, img, writable=True, discard='unmap',
                     **{'l2-cache-size': 4 * cluster})
        since_flush = {}  # block -> set of tags written after the last completed flush
        stop = threading.Event()

        def writer():
            nonlocal tag
            h = nbd.NBD()
            h.connect_uri(exp.uri)
            pending = {}
            try:
                while not stop.is_set():
                    for _ in range(rng.randrange(1, 40)):
                        b = rng.randrange(nblocks)
                        tag += 1
                        since_flush.setdefault(b, set()).add(tag)
                        pending[b] = tag
                        if rng.random() < 0.1:
                            since_flush[b].add(0)
                            pending[b] = 0
                            h.zero(BLOCK, b * BLOCK, 0)
                        else:
                            h.pwrite(block_data(tag), b * BLOCK)
                    h.flush()
                    durable.update(pending)
                    pending.clear()
                    since_flush.clear()
            except nbd.Error:
                pass  # the daemon was killed

        t = threading.Thread(target=writer)
        t.start()
        # Let some flushes complete, then kill in the middle of the load.
        stop.wait(0.5 + rng.random())
        kill_9(exp, stop, t)
        exp.daemon.log.close()
        check_survivors(tmp_path, img, durable, since_flush)
    assert durable, "no flush completed before the kills"
    run('qemu-img', 'check', '-r', 'leaks', str(img), check=False)
    rc, out = qemu_img_check(str(img))
    assert rc == 0, out


@pytest.mark.parametrize('mix', ['writes', 'discards'])
@pytest.mark.parametrize('cluster', [4096, 65536])
def test_kill_9_under_allocating_write_storm(tmp_path, cluster, mix):
    """kill -9 while a pipelined writer (queue depth 32) allocates clusters as fast as it
    can: single blocks in fresh clusters, writes over several clusters, and discards that
    free clusters for reuse. Flushes are issued after draining, so the model is exact:
    every block holds its value as of the last completed flush or a later write.
    The file node has discard=unmap, so freed clusters are punched out of the file (after
    the L2 tables without them are durable); the 'discards' mix trims runs of up to 32
    clusters a third of the time, so the kills also land while holes are being punched
    and freed clusters are being reused by the writes around them."""
    size = 128 * MiB
    nblocks = size // BLOCK
    per_cluster = cluster // BLOCK
    img = tmp_path / 's.qcow2'
    run('qemu-img', 'create', '-f', 'qcow2', '-o', 'cluster_size=%d' % cluster, str(img), str(size))
    durable = {}   # block -> tag, as of the last completed flush
    rng = random.Random(17 + cluster + (mix == 'discards'))
    single, multi = (0.85, 0.95) if mix == 'writes' else (0.55, 0.67)
    state = {'tag': 1, 'flushes': 0, 'writes': 0}
    for rnd in range(4):
        exp = Export(tmp_path, img, writable=True, discard='unmap',
                     file={'driver': 'file', 'filename': str(img), 'discard': 'unmap'})
        since_flush = {}  # block -> set of tags (0 = zeroes) written after the last flush
        stop = threading.Event()

        def note(b, t):
            since_flush.setdefault(b, set()).add(t)

        def writer():
            h = nbd.NBD()
            h.connect_uri(exp.uri)
            inflight = [0]

            def done(err):
                inflight[0] -= 1
                return 1

            try:
                while not stop.is_set():
                    for _ in range(rng.randrange(50, 400)):
                        while inflight[0] >= 32:
                            h.poll(-1)
                        r = rng.random()
                        if r < single:    # one block somewhere: mostly a fresh cluster
                            b = rng.randrange(nblocks)
                            state['tag'] += 1
                            note(b, state['tag'])
                            buf = nbd.Buffer.from_bytearray(bytearray(block_data(state['tag'])))
                            h.aio_pwrite(buf, b * BLOCK, completion=done)
                        elif r < multi:   # over several clusters, unaligned at both ends
                            b = rng.randrange(nblocks - 3 * per_cluster - 2)
                            n = 2 * per_cluster + 2
                            data = bytearray()
                            for i in range(n):
                                state['tag'] += 1
                                note(b + i, state['tag'])
                                data += block_data(state['tag'])
                            h.aio_pwrite(nbd.Buffer.from_bytearray(data), b * BLOCK,
                                         completion=done)
                        else:             # free whole clusters (reused by later writes)
                            k = 1 if mix == 'writes' else rng.randrange(1, 33)
                            c = rng.randrange(size // cluster - k + 1)
                            for i in range(k * per_cluster):
                                note(c * per_cluster + i, 0)
                            h.aio_trim(k * cluster, c * cluster, completion=done)
                        inflight[0] += 1
                        state['writes'] += 1
                    while inflight[0]:
                        h.poll(-1)
                    h.flush()
                    state['flushes'] += 1
                    for b, tags in since_flush.items():
                        if len(tags) == 1:
                            durable[b] = next(iter(tags))
                            continue
                        # Overlapping commands in one batch: the one that landed last
                        # is what a read returns now.
                        got = h.pread(BLOCK, b * BLOCK)
                        found = [a for a in tags
                                 if got == (bytes(BLOCK) if a == 0 else block_data(a))]
                        assert found, 'block %d after flush: %r' % (b, got[:8])
                        durable[b] = found[0]
                    since_flush.clear()
            except nbd.Error:
                pass  # the daemon was killed
            except BaseException as e:  # a failed check: reported by the test thread
                errors.append(e)

        errors = []
        t = threading.Thread(target=writer)
        t.start()
        stop.wait(1 + rng.random())
        kill_9(exp, stop, t)
        assert not errors, errors
        exp.daemon.log.close()
        check_survivors(tmp_path, img, durable, since_flush, 'round %d ' % rnd)
    assert state['flushes'] > 0, "no flush completed before the kills"
    print('requests: %d, flushes: %d' % (state['writes'], state['flushes']))
    run('qemu-img', 'check', '-r', 'leaks', str(img), check=False)
    rc, out = qemu_img_check(str(img))
    assert rc == 0, out


def write_at(path, offset, data):
    with open(path, 'r+b') as f:
        f.seek(offset)
        f.write(data)


def corrupt_cases(tmp_path):
    def fresh(name, *extra):
        p = tmp_path / name
        run('qemu-img', 'create', '-f', 'qcow2', *extra, str(p), '4M')
        return p

    cases = []
    p = tmp_path / 'notqcow.raw'
    with open(p, 'wb') as f:
        f.write(b'\0' * 65536)
    cases.append((p, 'bad magic'))
    p = fresh('cbits.qcow2')
    write_at(p, 20, (30).to_bytes(4, 'big'))
    cases.append((p, 'cluster_bits'))
    p = fresh('l1.qcow2')
    write_at(p, 40, (1 << 40).to_bytes(8, 'big'))
    cases.append((p, 'L1 table'))
    p = fresh('rt.qcow2')
    write_at(p, 48, (1 << 40).to_bytes(8, 'big'))
    cases.append((p, 'refcount table'))
    p = fresh('order.qcow2')
    write_at(p, 96, (7).to_bytes(4, 'big'))
    cases.append((p, 'refcount_order'))
    p = fresh('rb.qcow2')
    write_at(p, 65536, (1 << 40).to_bytes(8, 'big'))   # refcount table entry 0
    cases.append((p, 'refcount block 0'))
    p = fresh('corrupt.qcow2')
    write_at(p, 72, (2).to_bytes(8, 'big'))            # incompatible: corrupt bit
    cases.append((p, 'marked corrupt'))
    # A loop in the backing chain: a -> b -> a.
    a = fresh('a.qcow2')
    b = tmp_path / 'b.qcow2'
    run('qemu-img', 'create', '-f', 'qcow2', '-b', 'a.qcow2', '-F', 'qcow2', str(b), '4M')
    run('qemu-img', 'rebase', '-u', '-f', 'qcow2', '-b', 'b.qcow2', '-F', 'qcow2', str(a))
    cases.append((a, 'loop in the backing chain'))
    return cases


def test_corrupt_images_refused_with_clear_error(tmp_path):
    d = Daemon(tmp_path)
    try:
        for path, expected in corrupt_cases(tmp_path):
            with pytest.raises(QmpError) as e:
                d.qmp.execute('blockdev-add', driver='qcow2', **{'node-name': 'bad'},
                              file={'driver': 'file', 'filename': str(path)})
            assert e.value.error_class == 'GenericError'
            assert expected in e.value.desc, (path, e.value.desc)
            assert str(path) in e.value.desc or 'b.qcow2' in e.value.desc, e.value.desc
            # Nothing left behind, the daemon keeps serving.
            names = [n['node-name'] for n in d.qmp.execute('query-named-block-nodes')]
            assert names == [], names
    finally:
        assert d.stop() == 0


def test_corrupt_image_opens_read_only(tmp_path):
    img = tmp_path / 'c.qcow2'
    run('qemu-img', 'create', '-f', 'qcow2', str(img), '4M')
    qemu_io(str(img), 'write -P 5 0 1M', fmt='qcow2')
    write_at(img, 72, (2).to_bytes(8, 'big'))
    exp = Export(tmp_path, img)
    try:
        qemu_io(exp.uri, 'read -P 5 0 1M', read_only=True)
    finally:
        exp.close()


def test_block_status_reports_data_zero_and_holes(tmp_path):
    img = tmp_path / 'm.qcow2'
    run('qemu-img', 'create', '-f', 'qcow2', str(img), '4M')
    qemu_io(str(img), 'write -P 1 0 64k', 'write -z 1M 64k', fmt='qcow2')
    exp = Export(tmp_path, img)
    try:
        h = nbd.NBD()
        h.add_meta_context('base:allocation')
        h.connect_uri(exp.uri)
        extents = []

        def cb(meta, offset, entries, err):
            for i in range(0, len(entries), 2):
                extents.append((entries[i], entries[i + 1]))
            return 0
        pos = 0
        while pos < 4 * MiB:
            extents.clear()
            h.block_status(4 * MiB - pos, pos, cb)
            length, flags = extents[0]
            if pos < 64 * 1024:
                assert flags == 0, (pos, flags)            # data
            elif 1 * MiB <= pos < 1 * MiB + 64 * 1024:
                assert flags & 2, (pos, flags)             # zero
            else:
                assert flags == 3, (pos, flags)            # hole, zero
            pos += length
        h.shutdown()
    finally:
        exp.close()
