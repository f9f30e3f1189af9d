"""`fleece img` against qemu-img: same output fields, same exit codes, same data."""

import json
import os
import shutil
import subprocess
import time

import pytest

from fleece_testlib import ROOT, make_raw, qemu_io

FLEECE = os.environ.get('FLEECE', os.path.join(ROOT, 'build', 'bin', 'fleece'))
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


def allocated_bytes(path):
    return os.stat(path).st_blocks * 512


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
    assert allocated_bytes(path) >= 4 * MiB


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
    assert allocated_bytes(dst) < allocated_bytes(src)
    assert allocated_bytes(dst) <= 2 * MiB
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
