"""`fleece img` against qemu-img: same output fields, same exit codes, same data."""

import json
import os
import shutil
import subprocess
import time

import pytest

from fleece_testlib import FLEECE, allocated, make_raw, qemu_io

MiB = 1 << 20


def run(argv, cwd=None):
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=cwd)


def fleece_img(*args, cwd=None):
    return run([FLEECE, 'img', *args], cwd=cwd)


def qemu_img(*args, cwd=None):
    return run(['qemu-img', *args], cwd=cwd)


def ok(p):
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def info_json(tool, path, *extra):
    p = ok((fleece_img if tool == 'fleece' else qemu_img)('info', '--output=json', *extra, path))
    return json.loads(p.stdout)


def map_json(tool, path, *extra):
    p = ok((fleece_img if tool == 'fleece' else qemu_img)('map', '--output=json', *extra, path))
    return json.loads(p.stdout)



def write_mixed(path, fmt='raw'):
    """Data, a written-zero range, and holes."""
    qemu_io(path, 'write -P 0x11 0 1M', 'write -P 0x22 3M 64k', 'write -z 5M 1M',
            'write -P 0 6M 128k', 'write -P 0x33 9M 4k', 'write -P 0x44 10M 512', fmt=fmt)


class NbdServer:
    """qemu-nbd exporting one image on a unix socket."""

    def __init__(self, tmp_path, image, fmt='raw', read_only=True, name='nbd'):
        self.sock = str(tmp_path / (name + '.sock'))
        argv = ['qemu-nbd', '-t', '-k', self.sock, '-f', fmt, '-x', 'disk']
        if read_only:
            argv.append('-r')
        self.proc = subprocess.Popen(argv + [str(image)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.sock):
            assert self.proc.poll() is None, 'qemu-nbd exited'
            assert time.monotonic() < deadline, 'qemu-nbd did not start'
            time.sleep(0.02)
        self.uri = 'nbd+unix:///disk?socket=' + self.sock

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def nbd_servers(tmp_path):
    started = []

    def start(*args, **kwargs):
        s = NbdServer(tmp_path, *args, **kwargs)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


# --- create ---------------------------------------------------------------------------

def test_create_raw_like_qemu_img(tmp_path):
    mine, theirs = str(tmp_path / 'mine.raw'), str(tmp_path / 'theirs.raw')
    p = ok(fleece_img('create', '-f', 'raw', mine, '10M'))
    q = ok(qemu_img('create', '-f', 'raw', theirs, '10M'))
    assert p.stdout.replace(mine, 'X') == q.stdout.replace(theirs, 'X')
    a, b = info_json('qemu', mine), info_json('qemu', theirs)
    for key in ('virtual-size', 'format', 'dirty-flag'):
        assert a[key] == b[key], key
    assert set(a) == set(b)
    assert os.path.getsize(mine) == 10 * MiB


def test_create_sizes_round_to_sectors(tmp_path):
    for text, size in [('1000', 1024), ('1.5M', 1572864), ('64k', 65536), ('0', 0)]:
        path = str(tmp_path / ('s%s.raw' % text))
        ok(fleece_img('create', '-f', 'raw', path, text))
        assert os.path.getsize(path) == size, text
        assert info_json('qemu', path)['virtual-size'] == size


def test_create_preallocation_full_allocates(tmp_path):
    path = str(tmp_path / 'full.raw')
    ok(fleece_img('create', '-f', 'raw', '-o', 'preallocation=full', path, '4M'))
    assert allocated(path) >= 4 * MiB


@pytest.mark.parametrize('args, message', [
    (['-f', 'raw', 'X', '12Q'], 'Invalid image size'),
    (['-f', 'raw', 'X', '-5'], None),
    (['-f', 'raw', 'X', 'big'], 'Invalid image size'),
    (['-f', 'foo', 'X', '1M'], "Unknown file format 'foo'"),
    (['-f', 'raw', 'X'], 'needs a size'),
    (['-f', 'raw', '-o', 'cluster_size=4k', 'X', '1M'], "'cluster_size'"),
    (['-f', 'qcow2', '-o', 'cluster_size=3k', 'X', '1M'], 'power of two'),
    (['-f', 'raw', '-b', 'base.raw', 'X', '1M'], 'Backing file not supported'),
])
def test_create_bad_input(tmp_path, args, message):
    path = str(tmp_path / 'bad.img')
    p = fleece_img('create', *[path if a == 'X' else a for a in args])
    assert p.returncode == 1, p.stdout + p.stderr
    if message:
        assert message in p.stderr
    assert not os.path.exists(path)


def test_create_in_missing_directory_fails(tmp_path):
    p = fleece_img('create', '-f', 'raw', str(tmp_path / 'no' / 'x.raw'), '1M')
    assert p.returncode == 1
    assert 'No such file or directory' in p.stderr


# --- info -----------------------------------------------------------------------------

def test_info_raw_same_as_qemu_img(tmp_path):
    path = str(tmp_path / 'a.raw')
    make_raw(path, 12 * MiB)
    write_mixed(path)
    assert info_json('fleece', path) == info_json('qemu', path)
    assert info_json('fleece', path, '-f', 'raw') == info_json('qemu', path, '-f', 'raw')
    assert ok(fleece_img('info', path)).stdout == ok(qemu_img('info', '-f', 'raw', path)).stdout
    chain = json.loads(ok(fleece_img('info', '--output=json', '--backing-chain', path)).stdout)
    assert chain == json.loads(ok(qemu_img('info', '--output=json', '--backing-chain', path)).stdout)


def test_info_over_nbd(tmp_path, nbd_servers):
    path = str(tmp_path / 'a.raw')
    make_raw(path, 9 * MiB)
    srv = nbd_servers(path)
    j = info_json('fleece', srv.uri)
    assert j['virtual-size'] == 9 * MiB and j['format'] == 'raw'
    assert 'actual-size' not in j
    assert 'disk size: unavailable' in ok(fleece_img('info', srv.uri)).stdout


def test_info_errors(tmp_path):
    p = fleece_img('info', str(tmp_path / 'missing.img'))
    assert p.returncode == 1
    assert "Could not open '%s'" % (tmp_path / 'missing.img') in p.stderr
    assert 'No such file or directory' in p.stderr
    path = str(tmp_path / 'a.raw')
    make_raw(path, MiB)
    p = fleece_img('info', '-f', 'vmdk', path)
    assert p.returncode == 1 and "Unknown driver 'vmdk'" in p.stderr
    p = fleece_img('info', '--output=xml', path)
    assert p.returncode == 1
    p = fleece_img('info', 'nbd+unix:///x?socket=%s' % (tmp_path / 'none.sock'))
    assert p.returncode == 1 and 'Could not open' in p.stderr


# --- check ----------------------------------------------------------------------------

def test_check_raw_is_unsupported_like_qemu_img(tmp_path):
    path = str(tmp_path / 'a.raw')
    make_raw(path, MiB)
    p, q = fleece_img('check', path), qemu_img('check', '-f', 'raw', path)
    assert p.returncode == q.returncode == 63
    assert 'does not support checks' in p.stderr


# --- map ------------------------------------------------------------------------------

def test_map_raw_same_as_qemu_img(tmp_path):
    path = str(tmp_path / 'a.raw')
    make_raw(path, 12 * MiB)
    write_mixed(path)
    assert map_json('fleece', path) == map_json('qemu', path, '-f', 'raw')
    assert ok(fleece_img('map', path)).stdout == ok(qemu_img('map', '-f', 'raw', path)).stdout


def test_map_over_nbd_same_as_qemu_img(tmp_path, nbd_servers):
    path = str(tmp_path / 'a.raw')
    make_raw(path, 12 * MiB)
    write_mixed(path)
    srv = nbd_servers(path)
    mine = map_json('fleece', srv.uri)
    theirs = map_json('qemu', srv.uri)
    assert mine == theirs


# --- compare --------------------------------------------------------------------------

def compare_both(a, b, *flags):
    p = fleece_img('compare', *flags, a, b)
    q = qemu_img('compare', *flags, a, b)
    assert p.returncode == q.returncode, (p.stdout + p.stderr, q.stdout + q.stderr)
    return p, q


def test_compare_agrees_with_qemu_img(tmp_path):
    a, b = str(tmp_path / 'a.raw'), str(tmp_path / 'b.raw')
    make_raw(a, 8 * MiB)
    make_raw(b, 8 * MiB)
    p, q = compare_both(a, b, '-f', 'raw', '-F', 'raw')
    assert p.returncode == 0 and p.stdout == q.stdout == 'Images are identical.\n'
    # Same content, different allocation: still identical.
    qemu_io(a, 'write -P 0 1M 1M')
    qemu_io(a, 'write -P 0x5a 4M 64k')
    qemu_io(b, 'write -P 0x5a 4M 64k')
    p, q = compare_both(a, b, '-f', 'raw', '-F', 'raw')
    assert p.returncode == 0
    qemu_io(b, 'write -P 0x5b 0x401200 512')
    p, q = compare_both(a, b, '-f', 'raw', '-F', 'raw')
    assert p.returncode == 1 and p.stdout == q.stdout == 'Content mismatch at offset 4198912!\n'
    # A single differing byte in the middle of a sector is reported at the sector.
    qemu_io(a, 'write -P 0x5b 0x401200 512', 'write -P 0x01 0x7ff0ff 1')
    p, q = compare_both(a, b, '-f', 'raw', '-F', 'raw')
    assert p.returncode == 1 and p.stdout == q.stdout


def test_compare_sizes_like_qemu_img(tmp_path):
    a, c = str(tmp_path / 'a.raw'), str(tmp_path / 'c.raw')
    make_raw(a, 4 * MiB)
    make_raw(c, 8 * MiB)
    p, q = compare_both(a, c, '-f', 'raw', '-F', 'raw')
    assert p.returncode == 0 and p.stdout == q.stdout
    p, q = compare_both(a, c, '-f', 'raw', '-F', 'raw', '-s')
    assert p.returncode == 1 and p.stdout == q.stdout == 'Strict mode: Image size mismatch!\n'
    qemu_io(c, 'write -P 7 0x600100 4k')
    p, q = compare_both(a, c, '-f', 'raw', '-F', 'raw')
    assert p.returncode == 1 and p.stdout == q.stdout
    p, q = compare_both(c, a, '-f', 'raw', '-F', 'raw')
    assert p.returncode == 1 and p.stdout == q.stdout


def test_compare_errors_exit_2(tmp_path):
    a = str(tmp_path / 'a.raw')
    make_raw(a, MiB)
    p, _ = compare_both(a, str(tmp_path / 'missing.raw'))
    assert p.returncode == 2 and 'Could not open' in p.stderr
    p = fleece_img('compare', '-f', 'nosuch', a, a)
    assert p.returncode == 2


def test_compare_over_nbd(tmp_path, nbd_servers):
    a, b = str(tmp_path / 'a.raw'), str(tmp_path / 'b.raw')
    make_raw(a, 12 * MiB)
    write_mixed(a)
    shutil.copyfile(a, b)
    srv = nbd_servers(b)
    assert ok(fleece_img('compare', a, srv.uri)).stdout == 'Images are identical.\n'
    qemu_io(b, 'write -P 0x99 11M 4k')
    p = fleece_img('compare', a, srv.uri)
    assert p.returncode == 1 and 'Content mismatch at offset %d!' % (11 * MiB) in p.stdout


# --- convert --------------------------------------------------------------------------

def test_convert_raw_to_raw_is_identical_and_sparse(tmp_path):
    src, dst = str(tmp_path / 'src.raw'), str(tmp_path / 'dst.raw')
    make_raw(src, 64 * MiB)
    write_mixed(src)
    # Allocated zeroes in the source must become holes too.
    qemu_io(src, 'write -P 0 20M 8M')
    ok(fleece_img('convert', '-f', 'raw', '-O', 'raw', src, dst))
    assert ok(qemu_img('compare', '-f', 'raw', '-F', 'raw', src, dst)).returncode == 0
    assert os.path.getsize(dst) == 64 * MiB
    assert allocated(dst) < allocated(src)
    assert allocated(dst) <= 2 * MiB
    # Same allocation as qemu-img's own conversion of the same image.
    ref = str(tmp_path / 'ref.raw')
    ok(qemu_img('convert', '-f', 'raw', '-O', 'raw', src, ref))
    assert map_json('fleece', dst) == map_json('qemu', ref, '-f', 'raw')


def test_convert_progress_and_parallelism(tmp_path):
    src, dst = str(tmp_path / 'src.raw'), str(tmp_path / 'dst.raw')
    make_raw(src, 40 * MiB)
    qemu_io(src, 'write -P 0x3c 0 33M')
    for m in ('1', '16'):
        # Bytes: text mode would turn the carriage returns into newlines.
        p = subprocess.run([FLEECE, 'img', 'convert', '-p', '-m', m, '-O', 'raw', src, dst],
                           capture_output=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert p.stdout.startswith(b'    (0.00/100%)\r')
        assert p.stdout.endswith(b'    (100.00/100%)\r\n')
        ok(qemu_img('compare', '-f', 'raw', '-F', 'raw', src, dst))
    # qemu-img convert's default cache mode: no flush, same data.
    ok(fleece_img('convert', '-t', 'unsafe', '-O', 'raw', src, dst))
    ok(qemu_img('compare', '-f', 'raw', '-F', 'raw', src, dst))
    assert fleece_img('convert', '-t', 'directsync', '-O', 'raw', src, dst).returncode == 1


def test_convert_existing_target_with_n_overwrites_stale_data(tmp_path):
    src, dst = str(tmp_path / 'src.raw'), str(tmp_path / 'dst.raw')
    make_raw(src, 16 * MiB)
    write_mixed(src)
    make_raw(dst, 16 * MiB)
    qemu_io(dst, 'write -P 0xee 0 16M')  # stale data where the source has holes
    ok(fleece_img('convert', '-n', '-f', 'raw', '-O', 'raw', src, dst))
    ok(qemu_img('compare', '-f', 'raw', '-F', 'raw', src, dst))
    small = str(tmp_path / 'small.raw')
    make_raw(small, MiB)
    p = fleece_img('convert', '-n', '-O', 'raw', src, small)
    assert p.returncode == 1 and 'smaller than the source' in p.stderr


def test_convert_between_nbd_exports(tmp_path, nbd_servers):
    src, dst = str(tmp_path / 'src.raw'), str(tmp_path / 'dst.raw')
    make_raw(src, 24 * MiB)
    write_mixed(src)
    make_raw(dst, 24 * MiB)
    s = nbd_servers(src, name='src')
    d = nbd_servers(dst, read_only=False, name='dst')
    local = str(tmp_path / 'local.raw')
    ok(fleece_img('convert', '-O', 'raw', s.uri, local))
    ok(qemu_img('compare', '-f', 'raw', '-F', 'raw', src, local))
    ok(fleece_img('convert', '-n', '-O', 'raw', local, d.uri))
    d.stop()
    ok(qemu_img('compare', '-f', 'raw', '-F', 'raw', src, dst))
    p = fleece_img('convert', '-O', 'raw', local, d.uri)
    assert p.returncode == 1 and '-n' in p.stderr


def test_convert_bad_input(tmp_path):
    src = str(tmp_path / 'src.raw')
    make_raw(src, MiB)
    p = fleece_img('convert', '-O', 'raw', str(tmp_path / 'missing.raw'), str(tmp_path / 'o.raw'))
    assert p.returncode == 1 and 'Could not open' in p.stderr
    assert not os.path.exists(tmp_path / 'o.raw')
    p = fleece_img('convert', '-O', 'vdi', src, str(tmp_path / 'o.raw'))
    assert p.returncode == 1 and "Unknown file format 'vdi'" in p.stderr
    p = fleece_img('convert', '-c', '-O', 'raw', src, str(tmp_path / 'o.raw'))
    assert p.returncode == 1 and 'Compression not supported' in p.stderr


# --- resize ---------------------------------------------------------------------------

def test_resize_raw(tmp_path):
    path = str(tmp_path / 'a.raw')
    make_raw(path, 10 * MiB)
    qemu_io(path, 'write -P 0x61 0 1M', 'write -P 0x62 9M 1M')
    assert ok(fleece_img('resize', path, '+2M')).stdout == 'Image resized.\n'
    assert info_json('qemu', path)['virtual-size'] == 12 * MiB
    p = fleece_img('resize', path, '-4M')
    assert p.returncode == 1 and '--shrink' in p.stderr
    assert os.path.getsize(path) == 12 * MiB
    ok(fleece_img('resize', '--shrink', path, '-4M'))
    assert info_json('qemu', path)['virtual-size'] == 8 * MiB
    ok(fleece_img('resize', '-f', 'raw', path, '1G'))
    assert info_json('qemu', path)['virtual-size'] == 1 << 30
    qemu_io(path, 'read -P 0x61 0 1M', 'read -P 0 8M 8M')
    ok(fleece_img('resize', '--shrink', path, '1000'))
    assert os.path.getsize(path) == 1024


def test_resize_bad_input(tmp_path):
    path = str(tmp_path / 'a.raw')
    make_raw(path, MiB)
    for size in ('abc', '-2M', '+1Q'):
        p = fleece_img('resize', '--shrink', path, size)
        assert p.returncode == 1, size
        assert p.stderr.strip(), size
    assert os.path.getsize(path) == MiB
    p = fleece_img('resize', str(tmp_path / 'missing.raw'), '1G')
    assert p.returncode == 1 and 'Could not open' in p.stderr


# --- qcow2 ----------------------------------------------------------------------------

def set_refcount(path, cluster_index, value, grow_file=False):
    """Overwrites one 16-bit refcount of a qcow2 image (to make leaks and corruptions)."""
    import struct
    with open(path, 'r+b') as f:
        hdr = f.read(104)
        cluster_size = 1 << struct.unpack('>I', hdr[20:24])[0]
        refcount_table = struct.unpack('>Q', hdr[48:56])[0]
        assert struct.unpack('>I', hdr[96:100])[0] == 4
        per_block = cluster_size // 2
        f.seek(refcount_table + 8 * (cluster_index // per_block))
        block = struct.unpack('>Q', f.read(8))[0]
        assert block
        if grow_file:
            f.truncate((cluster_index + 1) * cluster_size)
        f.seek(block + 2 * (cluster_index % per_block))
        f.write(struct.pack('>H', value))


def without(d, *keys):
    return {k: v for k, v in d.items() if k not in keys}


def coverage(entries):
    """A map without host offsets, adjacent entries of the same kind merged: what the
    guest sees and what is allocated, whatever the layout of the image file."""
    out = []
    for e in entries:
        e = without(e, 'offset')
        if out and without(out[-1], 'start', 'length') == without(e, 'start', 'length'):
            out[-1]['length'] += e['length']
        else:
            out.append(e)
    return out


@pytest.mark.parametrize('options', [[], ['-o', 'cluster_size=4k'], ['-o', 'cluster_size=2M'],
                                     ['-o', 'cluster_size=512'],
                                     ['-o', 'preallocation=metadata'],
                                     ['-o', 'cluster_size=4k,preallocation=metadata']])
def test_create_qcow2_like_qemu_img(tmp_path, options):
    mine, theirs = str(tmp_path / 'mine.qcow2'), str(tmp_path / 'theirs.qcow2')
    p = ok(fleece_img('create', '-f', 'qcow2', *options, mine, '256M'))
    q = ok(qemu_img('create', '-f', 'qcow2', *options, theirs, '256M'))
    assert p.stdout.replace(mine, 'X') == q.stdout.replace(theirs, 'X')
    ok(qemu_img('check', mine))
    a, b = info_json('qemu', mine), info_json('qemu', theirs)
    assert without(a, 'filename', 'actual-size') == without(b, 'filename', 'actual-size')
    # Preallocated metadata may be laid out differently in the file; the mapping is the same.
    assert coverage(map_json('qemu', mine)) == coverage(map_json('qemu', theirs))


def test_create_qcow2_with_backing_like_qemu_img(tmp_path):
    ok(qemu_img('create', '-f', 'qcow2', str(tmp_path / 'base.qcow2'), '64M'))
    # Relative backing names are relative to the new image; the size comes from the backing.
    p = ok(fleece_img('create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2',
                      str(tmp_path / 'mine.qcow2')))
    q = ok(qemu_img('create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2',
                    str(tmp_path / 'theirs.qcow2')))
    assert p.stdout.replace('mine', 'X') == q.stdout.replace('theirs', 'X')
    mine = str(tmp_path / 'mine.qcow2')
    ok(qemu_img('check', mine))
    a = info_json('qemu', mine, '--backing-chain')
    b = info_json('qemu', str(tmp_path / 'theirs.qcow2'), '--backing-chain')
    assert [without(x, 'filename', 'actual-size') for x in a] == \
        [without(x, 'filename', 'actual-size') for x in b]
    p = fleece_img('create', '-f', 'qcow2', '-b', 'missing.qcow2', '-F', 'qcow2',
                   str(tmp_path / 'x.qcow2'))
    assert p.returncode == 1 and 'missing.qcow2' in p.stderr


def make_chain(tmp_path):
    """base.qcow2 <- top.qcow2 with data, zero clusters and holes in both."""
    base, top = str(tmp_path / 'base.qcow2'), str(tmp_path / 'top.qcow2')
    ok(qemu_img('create', '-f', 'qcow2', base, '64M'))
    qemu_io(base, 'write -P 0x0b 0 4M', 'write -P 0x0c 16M 1M', 'write -z 20M 1M', fmt='qcow2')
    ok(qemu_img('create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', top))
    qemu_io(top, 'write -P 0x1a 1M 1M', 'write -z 3M 512k', 'write -P 0x1b 30M 64k',
            'write -P 0x1c 40M 4k', 'write -P 0x1d 50M 3M', fmt='qcow2')
    return base, top


def test_info_qcow2_same_as_qemu_img(tmp_path):
    base, top = make_chain(tmp_path)
    for args in ([], ['--backing-chain']):
        for path in (top, base):
            p = ok(fleece_img('info', '--output=json', *args, path))
            q = ok(qemu_img('info', '--output=json', *args, path))
            assert json.loads(p.stdout) == json.loads(q.stdout)
            p = ok(fleece_img('info', *args, path))
            q = ok(qemu_img('info', *args, path))
            assert p.stdout == q.stdout
    # Relative to the working directory too.
    p = ok(fleece_img('info', '--output=json', '--backing-chain', 'top.qcow2', cwd=tmp_path))
    q = ok(qemu_img('info', '--output=json', '--backing-chain', 'top.qcow2', cwd=tmp_path))
    assert json.loads(p.stdout) == json.loads(q.stdout)


def test_map_qcow2_same_as_qemu_img(tmp_path):
    base, top = make_chain(tmp_path)
    for path in (top, base):
        assert map_json('fleece', path) == map_json('qemu', path)
    assert ok(fleece_img('map', 'top.qcow2', cwd=tmp_path)).stdout == \
        ok(qemu_img('map', 'top.qcow2', cwd=tmp_path)).stdout


def test_check_qcow2_like_qemu_img(tmp_path):
    path = str(tmp_path / 'a.qcow2')
    ok(fleece_img('create', '-f', 'qcow2', path, '64M'))
    qemu_io(path, 'write -P 1 0 128k', 'write -P 2 10M 64k', fmt='qcow2')
    p, q = fleece_img('check', path), qemu_img('check', path)
    assert p.returncode == q.returncode == 0
    assert p.stdout == q.stdout
    assert json.loads(ok(fleece_img('check', '--output=json', path)).stdout) == \
        json.loads(ok(qemu_img('check', '--output=json', path)).stdout)
    # Two leaked clusters past the end of the data: exit code 3.
    clusters = os.path.getsize(path) // 65536
    set_refcount(path, clusters + 1, 1, grow_file=True)
    set_refcount(path, clusters + 2, 1, grow_file=True)
    p, q = fleece_img('check', path), qemu_img('check', path)
    assert p.returncode == q.returncode == 3, p.stdout + p.stderr
    assert p.stdout == q.stdout
    pj = fleece_img('check', '--output=json', path)
    qj = qemu_img('check', '--output=json', path)
    assert pj.returncode == qj.returncode == 3
    assert json.loads(pj.stdout) == json.loads(qj.stdout)
    p = fleece_img('check', '-r', 'leaks', path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert 'The following inconsistencies were found and repaired' in p.stdout
    assert qemu_img('check', path).returncode == 0
    qemu_io(path, 'read -P 1 0 128k', 'read -P 2 10M 64k', fmt='qcow2')


def test_check_qcow2_corruption_exit_2(tmp_path):
    path = str(tmp_path / 'a.qcow2')
    ok(qemu_img('create', '-f', 'qcow2', path, '64M'))
    qemu_io(path, 'write -P 1 0 128k', fmt='qcow2')
    set_refcount(path, 5, 0)  # a data cluster now has refcount 0
    p, q = fleece_img('check', path), qemu_img('check', path)
    assert p.returncode == q.returncode == 2, p.stdout + p.stderr
    assert 'errors were found on the image' in p.stdout
    pj = fleece_img('check', '--output=json', path)
    assert pj.returncode == 2 and json.loads(pj.stdout)['corruptions'] > 0


def test_corrupt_qcow2_is_refused_clearly(tmp_path):
    good = str(tmp_path / 'good.qcow2')
    ok(qemu_img('create', '-f', 'qcow2', good, '64M'))
    bad = str(tmp_path / 'bad.qcow2')
    with open(good, 'rb') as f, open(bad, 'wb') as g:
        g.write(f.read(100))
    for cmd in (['info'], ['map'], ['check'], ['convert', '-O', 'raw'], ['compare']):
        extra = [str(tmp_path / 'out.raw')] if cmd[0] == 'convert' else \
            [good] if cmd[0] == 'compare' else []
        p = fleece_img(*cmd, bad, *extra)
        want = 2 if cmd[0] == 'compare' else 1
        assert p.returncode == want, (cmd, p.stdout, p.stderr)
        assert "'%s'" % bad in p.stderr and 'qcow2' in p.stderr, (cmd, p.stderr)


def test_convert_raw_qcow2_round_trip(tmp_path):
    src = str(tmp_path / 'src.raw')
    make_raw(src, 64 * MiB)
    write_mixed(src)
    qemu_io(src, 'write -P 0 20M 8M', 'write -P 0x77 40M 5M')
    q2 = str(tmp_path / 'mid.qcow2')
    ok(fleece_img('convert', '-f', 'raw', '-O', 'qcow2', src, q2))
    ok(qemu_img('check', q2))
    ok(qemu_img('compare', '-f', 'raw', '-F', 'qcow2', src, q2))
    assert fleece_img('compare', src, q2).returncode == 0
    ref = str(tmp_path / 'ref.qcow2')
    ok(qemu_img('convert', '-f', 'raw', '-O', 'qcow2', src, ref))
    # Same allocation as qemu-img's conversion (host offsets may differ: writes run in
    # parallel), and no more space.
    assert coverage(map_json('fleece', q2)) == coverage(map_json('qemu', ref))
    assert map_json('fleece', q2) == map_json('qemu', q2)
    assert os.path.getsize(q2) <= os.path.getsize(ref) + 65536
    back = str(tmp_path / 'back.raw')
    ok(fleece_img('convert', '-O', 'raw', q2, back))
    ok(qemu_img('compare', '-f', 'raw', '-F', 'raw', src, back))
    assert allocated(back) < 12 * MiB


def test_convert_qcow2_chain_to_raw_and_qcow2_options(tmp_path):
    base, top = make_chain(tmp_path)
    out = str(tmp_path / 'flat.raw')
    ok(fleece_img('convert', '-O', 'raw', top, out))
    ok(qemu_img('compare', '-F', 'raw', top, out))
    q2 = str(tmp_path / 'flat.qcow2')
    ok(fleece_img('convert', '-O', 'qcow2', '-o', 'cluster_size=4k', top, q2))
    ok(qemu_img('check', q2))
    ok(qemu_img('compare', top, q2))
    assert info_json('qemu', q2)['cluster-size'] == 4096
    p = fleece_img('convert', '-O', 'qcow2', '-o', 'cluster_size=5k', top, str(tmp_path / 'x.qcow2'))
    assert p.returncode == 1 and 'power of two' in p.stderr


def test_compare_qcow2_agrees_with_qemu_img(tmp_path):
    base, top = make_chain(tmp_path)
    flat = str(tmp_path / 'flat.raw')
    ok(qemu_img('convert', '-O', 'raw', top, flat))
    p, q = compare_both(top, flat)
    assert p.returncode == 0 and p.stdout == q.stdout
    qemu_io(flat, 'write -P 0x55 0x3100000 512')
    p, q = compare_both(top, flat)
    assert p.returncode == 1 and p.stdout == q.stdout
    p, q = compare_both(top, base)
    assert p.returncode == 1 and p.stdout == q.stdout


def test_resize_qcow2(tmp_path):
    path = str(tmp_path / 'a.qcow2')
    ok(fleece_img('create', '-f', 'qcow2', path, '64M'))
    qemu_io(path, 'write -P 0x61 63M 1M', fmt='qcow2')
    assert ok(fleece_img('resize', path, '+1G')).stdout == 'Image resized.\n'
    assert info_json('qemu', path)['virtual-size'] == (1 << 30) + 64 * MiB
    ok(qemu_img('check', path))
    qemu_io(path, 'read -P 0x61 63M 1M', 'read -P 0 64M 1M', 'write -P 0x62 1G 1M', fmt='qcow2')
    ok(qemu_img('check', path))
    p = fleece_img('resize', '--shrink', path, '-1M')
    assert p.returncode == 1 and 'not supported' in p.stderr
    p = fleece_img('resize', path, '-1M')
    assert p.returncode == 1 and '--shrink' in p.stderr
