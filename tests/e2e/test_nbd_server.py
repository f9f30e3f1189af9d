"""fleeced's NBD server against real clients: nbdinfo, nbdcopy, qemu-io, qemu-img, fio's
nbd engine, python3-libnbd in non-strict mode for the error codes, and a raw socket for
what libnbd will not send."""

import errno
import json
import os
import threading

import nbd
import pytest

from fleece_testlib import Daemon, qemu_io, make_raw, run
import nbd_raw

SIZE = 64 << 20


@pytest.fixture
def server(tmp_path):
    """disk (writable, allocation-depth), ro (read-only view of the same file), direct
    (O_DIRECT file: advertises a minimum block size > 1)."""
    disk = tmp_path / 'disk.raw'
    make_raw(disk, SIZE)
    qemu_io(str(disk), 'write -P 0x41 1M 1M', 'write -P 0x42 10M 4k')
    direct = tmp_path / 'direct.raw'
    make_raw(direct, 4 << 20)
    sock = str(tmp_path / 'nbd.sock')
    d = Daemon(tmp_path, [
        '--blockdev', 'driver=file,node-name=f0,filename=%s' % disk,
        '--blockdev', 'driver=file,node-name=fd,filename=%s,cache.direct=on' % direct,
        '--nbd-server', 'addr.type=unix,addr.path=%s' % sock,
        '--export', 'type=nbd,id=e0,node-name=f0,name=disk,writable=on,'
                    'description=the test disk,allocation-depth=on',
        '--export', 'type=nbd,id=e1,node-name=f0,name=ro',
        '--export', 'type=nbd,id=e2,node-name=fd,name=direct,writable=on'])
    d.sock = sock
    d.disk = str(disk)
    d.uri = lambda name: 'nbd+unix:///%s?socket=%s' % (name, sock)
    yield d
    assert d.stop() == 0


def test_nbdinfo(server):
    out = run('nbdinfo', '--list', server.uri('')).stdout
    for name in ('export="disk"', 'export="ro"', 'export="direct"', 'description: the test disk'):
        assert name in out, out
    info = json.loads(run('nbdinfo', '--json', server.uri('disk')).stdout)
    e = info['exports'][0]
    assert info['protocol'] == 'newstyle-fixed' and info['TLS'] is False
    assert e['export-size'] == SIZE and e['is_read_only'] is False
    assert e['can_multi_conn'] and e['can_flush'] and e['can_fua'] and e['can_trim']
    assert e['can_zero'] and e['can_cache'] and e['can_fast_zero']
    assert e['block_size_maximum'] == 32 << 20
    assert sorted(e['contexts']) == ['base:allocation', 'qemu:allocation-depth']
    assert run('nbdinfo', '--size', server.uri('disk')).stdout.strip() == str(SIZE)
    assert run('nbdinfo', '--can', 'write', server.uri('disk'), check=False).returncode == 0
    assert run('nbdinfo', '--can', 'write', server.uri('ro'), check=False).returncode != 0
    assert run('nbdinfo', '--is', 'read-only', server.uri('ro'), check=False).returncode == 0
    assert run('nbdinfo', '--can', 'multi-conn', server.uri('disk'), check=False).returncode == 0
    ro = json.loads(run('nbdinfo', '--json', server.uri('ro')).stdout)['exports'][0]
    assert ro['contexts'] == ['base:allocation']  # allocation-depth only where asked
    direct = json.loads(run('nbdinfo', '--json', server.uri('direct')).stdout)['exports'][0]
    assert direct['block_size_minimum'] > 1
    # --map: data where written, holes elsewhere; allocation-depth: all local (raw file).
    m = json.loads(run('nbdinfo', '--map', '--json', server.uri('disk')).stdout)
    data = [(x['offset'], x['length']) for x in m if not x['type'] & 1]
    assert data == [(1 << 20, 1 << 20), (10 << 20, 4096)], m
    assert sum(x['length'] for x in m) == SIZE
    depth = json.loads(run('nbdinfo', '--map=qemu:allocation-depth', '--json',
                           server.uri('disk')).stdout)
    assert depth == [{'offset': 0, 'length': SIZE, 'type': 1, 'description': 'local'}], depth


def test_qemu_clients(server, tmp_path):
    uri = server.uri('disk')
    qemu_io(uri, 'write -P 0x61 2M 512k', 'write -z 2M 64k', 'read -P 0 2M 64k',
            'read -P 0x61 2112k 448k', 'discard 3M 1M', 'read -P 0 3M 1M',
            'aio_write -P 0x62 5M 64k', 'aio_write -P 0x63 6M 64k', 'aio_flush',
            'read -P 0x62 5M 64k', 'read -P 0x63 6M 64k', 'write -f -P 0x64 7M 4k',
            'read -P 0x64 7M 4k')
    # The export and the file agree; qemu-img convert both ways.
    assert 'Images are identical' in run('qemu-img', 'compare', '-f', 'raw', '-F', 'raw',
                                         server.disk, uri).stdout
    out = tmp_path / 'out.qcow2'
    run('qemu-img', 'convert', '-O', 'qcow2', uri, str(out))
    assert 'Images are identical' in run('qemu-img', 'compare', '-F', 'raw', str(out),
                                         server.disk).stdout
    assert 'virtual size: 64 MiB' in run('qemu-img', 'info', uri).stdout
    mp = run('qemu-img', 'map', '--output=json', uri).stdout
    assert any(x['data'] and x['start'] == 1 << 20 for x in json.loads(mp))


def test_nbdcopy_both_ways(server, tmp_path):
    src = tmp_path / 'src.raw'
    with open(src, 'wb') as f:
        f.write(os.urandom(SIZE // 2))
        f.truncate(SIZE)
    # Into the export (nbdcopy uses several connections since CAN_MULTI_CONN is set).
    run('nbdcopy', '--flush', '--connections=4', str(src), server.uri('disk'))
    assert 'Images are identical' in run('qemu-img', 'compare', '-f', 'raw', '-F', 'raw',
                                         str(src), server.uri('disk')).stdout
    # And back out of it.
    back = tmp_path / 'back.raw'
    run('nbdcopy', '--connections=4', server.uri('ro'), str(back))
    assert back.read_bytes() == src.read_bytes()


def test_fio_verify(server):
    run('fio', '--name=verify', '--ioengine=nbd', '--uri=' + server.uri('disk'),
        '--rw=randwrite', '--bs=4k', '--iodepth=16', '--size=16M', '--offset=32M',
        '--verify=crc32c', '--verify_state_save=0', '--do_verify=1', '--verify_fatal=1', '--output-format=terse')
    run('fio', '--name=seq', '--ioengine=nbd', '--uri=' + server.uri('disk'),
        '--rw=write', '--bs=1M', '--iodepth=4', '--size=16M', '--offset=16M',
        '--verify=crc32c', '--verify_state_save=0', '--do_verify=1', '--verify_fatal=1', '--output-format=terse')


def nonstrict(uri, contexts=()):
    h = nbd.NBD()
    h.set_strict_mode(0)  # let bad requests reach the server
    for c in contexts:
        h.add_meta_context(c)
    h.connect_uri(uri)
    return h


def expect_errno(e, fn, *args, **kw):
    with pytest.raises(nbd.Error) as err:
        fn(*args, **kw)
    assert err.value.errnum == e, (err.value.string, err.value.errnum)


def test_libnbd_error_codes(server):
    h = nonstrict(server.uri('disk'), ('base:allocation', 'qemu:allocation-depth'))
    expect_errno(errno.EINVAL, h.pread, 8, SIZE - 4)              # read past the end
    expect_errno(errno.ENOSPC, h.pwrite, b'x' * 8, SIZE - 4)      # write past the end
    expect_errno(errno.ENOSPC, h.zero, 4096, SIZE)                # zero past the end
    expect_errno(errno.EINVAL, h.trim, 4096, SIZE)                # trim past the end
    expect_errno(errno.EINVAL, h.cache, 4096, SIZE)
    expect_errno(errno.EOVERFLOW, h.pread, (32 << 20) + 4096, 0)  # above the maximum
    expect_errno(errno.EINVAL, h.pread, 512, 0, flags=1 << 7)     # unknown flag
    expect_errno(errno.EINVAL, h.pwrite, b'x' * 512, 0, flags=nbd.CMD_FLAG_REQ_ONE)
    assert h.pread(4096, 1 << 20) == b'\x41' * 4096               # still serving
    # FUA, flush, cache, zero with NO_HOLE, and block status with REQ_ONE.
    h.pwrite(b'\x55' * 4096, 8 << 20, flags=nbd.CMD_FLAG_FUA)
    h.flush()
    h.cache(1 << 20, 0)
    h.zero(4096, 8 << 20, flags=nbd.CMD_FLAG_NO_HOLE)
    assert h.pread(4096, 8 << 20) == bytes(4096)
    try:
        h.zero(1 << 20, 12 << 20, flags=nbd.CMD_FLAG_FAST_ZERO)
        assert h.pread(4096, 12 << 20) == bytes(4096)
    except nbd.Error as e:
        assert e.errnum == errno.ENOTSUP  # "not fast": the only error FAST_ZERO may give
    seen = []

    def extents(ctx, offset, entries, err):
        seen.append((ctx, list(entries)))
        return 0
    h.block_status(SIZE, 0, extents, flags=nbd.CMD_FLAG_REQ_ONE)
    got = dict(seen)
    assert got['base:allocation'] == [1 << 20, 3]          # one extent: the leading hole
    assert len(got['qemu:allocation-depth']) == 2          # one extent, local (depth 1)
    assert got['qemu:allocation-depth'][1] == 1
    h.shutdown()

    ro = nonstrict(server.uri('ro'))
    expect_errno(errno.EPERM, ro.pwrite, b'x' * 512, 0)
    expect_errno(errno.EPERM, ro.zero, 512, 0)
    expect_errno(errno.EPERM, ro.trim, 512, 0)
    assert ro.pread(4096, 1 << 20) == b'\x41' * 4096

    dio = nonstrict(server.uri('direct'))
    align = dio.get_block_size(nbd.SIZE_MINIMUM)
    assert align > 1
    expect_errno(errno.EINVAL, dio.pread, 100, 1)                 # unaligned
    expect_errno(errno.EINVAL, dio.pwrite, b'x' * 100, 0)
    dio.pwrite(b'\x17' * align, align)
    assert dio.pread(align, align) == b'\x17' * align

    # An oversized write: EOVERFLOW, its payload skipped, the connection goes on.
    big = nonstrict(server.uri('disk'))
    expect_errno(errno.EOVERFLOW, big.pwrite, b'x' * ((32 << 20) + 4096), 0)
    assert big.pread(4096, 1 << 20) == b'\x41' * 4096


def test_raw_protocol(server):
    # Unknown command: EINVAL, and the connection continues.
    c = nbd_raw.RawClient(server.sock)
    c.go('disk')
    c.request(99, 0, 512, cookie=7)
    assert c.simple_reply() == (errno.EINVAL, 7)
    c.request(3, 0, 0, cookie=8)  # FLUSH
    assert c.simple_reply() == (0, 8)
    # Garbage instead of a request: this connection closes ...
    c.s.sendall(os.urandom(64))
    assert c.closed()
    c.close()
    # ... garbage in the handshake too ...
    g = nbd_raw.RawClient(server.sock)
    g.s.sendall(b'\xff' * 100)
    assert g.closed()
    g.close()
    # ... while everyone else is served.
    assert run('nbdinfo', '--size', server.uri('disk')).stdout.strip() == str(SIZE)
    # OPT_ABORT is acknowledged; STARTTLS on a plain server is refused by policy.
    a = nbd_raw.RawClient(server.sock)
    a.option(nbd_raw.OPT_STARTTLS)
    assert a.option_reply()[1] == nbd_raw.REP_ERR_POLICY
    a.option(nbd_raw.OPT_ABORT)
    assert a.option_reply()[1] == nbd_raw.REP_ACK
    assert a.closed()
    a.close()
    # The oldest way in: NBD_OPT_EXPORT_NAME, size and flags in its reply.
    e = nbd_raw.RawClient(server.sock)
    e.option(nbd_raw.OPT_EXPORT_NAME, b'disk')
    import struct
    size, flags = struct.unpack('>QH', e.recv(10))
    assert size == SIZE and flags & 1
    e.request(0, 1 << 20, 8, cookie=9)
    assert e.simple_reply() == (0, 9) and e.recv(8) == b'\x41' * 8
    e.request(2, 0, 0)  # DISC
    assert e.closed()
    e.close()
    # An unknown export name with EXPORT_NAME closes the connection.
    u = nbd_raw.RawClient(server.sock)
    u.option(nbd_raw.OPT_EXPORT_NAME, b'nope')
    assert u.closed()
    u.close()


def test_max_connections(tmp_path):
    disk = tmp_path / 'disk.raw'
    make_raw(disk, 1 << 20)
    sock = str(tmp_path / 'nbd.sock')
    d = Daemon(tmp_path, ['--blockdev', 'driver=file,node-name=f0,filename=%s' % disk,
                          '--nbd-server', 'addr.type=unix,addr.path=%s,max-connections=1' % sock,
                          '--export', 'type=nbd,id=e0,node-name=f0,name=disk'])
    try:
        uri = 'nbd+unix:///disk?socket=%s' % sock
        first = nbd.NBD()
        first.connect_uri(uri)
        assert run('nbdinfo', '--size', uri, check=False).returncode != 0
        first.shutdown()
        del first
        # Once the first client is gone, the next one gets in.
        for _ in range(100):
            if run('nbdinfo', '--size', uri, check=False).returncode == 0:
                break
            threading.Event().wait(0.05)
        assert run('nbdinfo', '--size', uri).stdout.strip() == str(1 << 20)
    finally:
        assert d.stop() == 0
