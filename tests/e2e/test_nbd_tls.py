"""NBD over TLS: fleeced's server with X.509 (certtool) and PSK (psktool) credentials,
reached by nbdinfo, qemu-io and qemu-img; plain clients refused; the nbd client node
reaching nbdkit --tls=require."""

import os
import subprocess

import pytest

from fleece_testlib import Daemon, QmpError, qemu_io, make_raw, run
import tls_certs

SIZE = 16 << 20


def start_tls_daemon(tmp_path, obj):
    disk = tmp_path / 'disk.raw'
    make_raw(disk, SIZE)
    sock = tmp_path / 'nbd.sock'
    d = Daemon(tmp_path, ['--object', obj,
                          '--blockdev', 'driver=file,node-name=f0,filename=%s' % disk,
                          '--nbd-server', 'addr.type=unix,addr.path=%s,tls-creds=tls0' % sock,
                          '--export', 'type=nbd,id=e0,node-name=f0,name=disk,writable=on'])
    return d, str(sock), str(disk)


def qemu_tls_io(obj, sock, *cmds, check=True):
    argv = ['qemu-io', '--object', obj, '--image-opts',
            'driver=nbd,server.type=unix,server.path=%s,export=disk,tls-creds=tc,'
            'tls-hostname=localhost' % sock]
    for c in cmds:
        argv += ['-c', c]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    out = p.stdout + p.stderr
    if check:
        assert p.returncode == 0 and 'failed' not in out and "can't open" not in out, out
    return out


def test_x509_clients_and_refusals(tmp_path):
    ca, server, client = tls_certs.make_x509(tmp_path / 'pki')
    d, sock, disk = start_tls_daemon(
        tmp_path, 'tls-creds-x509,id=tls0,dir=%s,endpoint=server,verify-peer=on' % server)
    try:
        uri = 'nbds+unix:///disk?socket=%s&tls-certificates=%s' % (sock, client)
        out = run('nbdinfo', uri).stdout
        assert 'with TLS' in out and 'export-size: %d' % SIZE in out
        cobj = 'tls-creds-x509,id=tc,dir=%s,endpoint=client' % client
        qemu_tls_io(cobj, sock, 'write -P 0x5c 1M 2M', 'read -P 0x5c 1M 2M', 'read -P 0 0 1M')
        # The data reached the file.
        with open(disk, 'rb') as f:
            f.seek(1 << 20)
            assert f.read(2 << 20) == b'\x5c' * (2 << 20)
        info = run('qemu-img', 'info', '--object', cobj, '--image-opts',
                   'driver=nbd,server.type=unix,server.path=%s,export=disk,tls-creds=tc,'
                   'tls-hostname=localhost' % sock).stdout
        assert 'virtual size: 16 MiB' in info
        # A plain client is refused by the TLS-only server ...
        p = run('qemu-img', 'info', '--image-opts',
                'driver=nbd,server.type=unix,server.path=%s,export=disk' % sock, check=False)
        assert p.returncode != 0 and 'TLS negotiation required' in p.stderr, p.stderr
        p = run('nbdinfo', 'nbd+unix:///disk?socket=%s' % sock, check=False)
        assert p.returncode != 0
        # ... and so is a TLS client without a certificate (verify-peer=on).
        nocert = tmp_path / 'nocert'
        nocert.mkdir()
        with open(os.path.join(ca, 'ca-cert.pem')) as src:
            (nocert / 'ca-cert.pem').write_text(src.read())
        p = run('nbdinfo', 'nbds+unix:///disk?socket=%s&tls-certificates=%s' % (sock, nocert),
                check=False)
        assert p.returncode != 0
        # A client trusting another CA refuses the server.
        _, _, other_client = tls_certs.make_x509(tmp_path / 'other')
        p = run('nbdinfo', 'nbds+unix:///disk?socket=%s&tls-certificates=%s' % (sock, other_client),
                check=False)
        assert p.returncode != 0
        # The daemon still serves good clients.
        assert run('nbdinfo', '--size', uri).stdout.strip() == str(SIZE)
    finally:
        assert d.stop() == 0


def test_psk(tmp_path):
    keys = tls_certs.make_psk(tmp_path / 'psk', 'alice')
    d, sock, _ = start_tls_daemon(tmp_path, 'tls-creds-psk,id=tls0,dir=%s,endpoint=server' % keys)
    try:
        psk = os.path.join(keys, 'keys.psk')
        uri = 'nbds+unix://alice@/disk?socket=%s&tls-psk-file=%s' % (sock, psk)
        assert run('nbdinfo', '--size', uri).stdout.strip() == str(SIZE)
        cobj = 'tls-creds-psk,id=tc,dir=%s,endpoint=client,username=alice' % keys
        qemu_tls_io(cobj, sock, 'write -P 0x31 0 1M', 'read -P 0x31 0 1M')
        # Unknown user or wrong key: refused.
        bad = tmp_path / 'bad.psk'
        bad.write_text('alice:' + '00' * 32 + '\n')
        p = run('nbdinfo', 'nbds+unix://alice@/disk?socket=%s&tls-psk-file=%s' % (sock, bad),
                check=False)
        assert p.returncode != 0
        p = run('nbdinfo', 'nbd+unix:///disk?socket=%s' % sock, check=False)
        assert p.returncode != 0
        assert run('nbdinfo', '--size', uri).stdout.strip() == str(SIZE)
    finally:
        assert d.stop() == 0


def test_qmp_object_add_and_errors(tmp_path):
    _, server, client = tls_certs.make_x509(tmp_path / 'pki')
    disk = tmp_path / 'disk.raw'
    make_raw(disk, SIZE)
    d = Daemon(tmp_path)
    try:
        q = d.qmp
        with pytest.raises(QmpError) as e:
            q.execute('object-add', **{'qom-type': 'tls-creds-x509', 'id': 'x',
                                       'dir': str(tmp_path / 'missing'), 'endpoint': 'server'})
        assert 'missing' in e.value.desc
        with pytest.raises(QmpError) as e:
            q.execute('object-add', **{'qom-type': 'tls-creds-x509', 'id': 'x', 'dir': client,
                                       'endpoint': 'server'})
        assert 'server-cert.pem' in e.value.desc
        with pytest.raises(QmpError) as e:
            q.execute('object-add', **{'qom-type': 'memory-backend-ram', 'id': 'm'})
        assert 'not supported' in e.value.desc
        q.execute('object-add', **{'qom-type': 'tls-creds-x509', 'id': 'tls0', 'dir': server,
                                   'endpoint': 'server', 'verify-peer': False})
        with pytest.raises(QmpError):
            q.execute('object-add', **{'qom-type': 'tls-creds-x509', 'id': 'tls0',
                                       'dir': server, 'endpoint': 'server'})
        sock = str(tmp_path / 'nbd.sock')
        with pytest.raises(QmpError) as e:
            q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': sock}},
                      **{'tls-creds': 'nope'})
        assert 'nope' in e.value.desc
        with pytest.raises(QmpError) as e:
            q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': sock}},
                      **{'tls-creds': 'tls0', 'tls-authz': 'authz0'})
        assert 'tls-authz' in e.value.desc
        q.execute('blockdev-add', driver='file', filename=str(disk), **{'node-name': 'f0'})
        q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': sock}},
                  **{'tls-creds': 'tls0'})
        q.execute('block-export-add', type='nbd', id='e0', name='disk',
                  **{'node-name': 'f0'})
        # verify-peer=off: a client with only the CA certificate gets in.
        nocert = tmp_path / 'nocert'
        nocert.mkdir()
        (nocert / 'ca-cert.pem').write_text(open(os.path.join(client, 'ca-cert.pem')).read())
        out = run('nbdinfo', '--size',
                  'nbds+unix:///disk?socket=%s&tls-certificates=%s' % (sock, nocert)).stdout
        assert out.strip() == str(SIZE)
        # Deleting the object does not disturb the running server (it keeps a reference).
        q.execute('object-del', id='tls0')
        with pytest.raises(QmpError):
            q.execute('object-del', id='tls0')
        assert run('nbdinfo', '--size', 'nbds+unix:///disk?socket=%s&tls-certificates=%s'
                   % (sock, nocert)).stdout.strip() == str(SIZE)
    finally:
        assert d.stop() == 0


def nbdkit_tls(tmp_path, *tls_args):
    sock = str(tmp_path / 'kit.sock')
    p = subprocess.Popen(['nbdkit', '-f', '--exit-with-parent', '--tls=require'] +
                         list(tls_args) + ['-U', sock, 'memory', '16M'],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(400):
        if os.path.exists(sock):
            break
        import time
        time.sleep(0.05)
    return p, sock


@pytest.mark.parametrize('kind', ['x509', 'psk'])
def test_client_node_to_nbdkit_tls(tmp_path, kind):
    if kind == 'x509':
        _, server, client = tls_certs.make_x509(tmp_path / 'pki')
        kit, ksock = nbdkit_tls(tmp_path, '--tls-certificates=%s' % server)
        obj = {'qom-type': 'tls-creds-x509', 'id': 'tc', 'dir': client, 'endpoint': 'client'}
        uri = 'nbds+unix:///?socket=%s&tls-certificates=%s' % (ksock, client)
    else:
        keys = tls_certs.make_psk(tmp_path / 'psk', 'bob')
        psk = os.path.join(keys, 'keys.psk')
        kit, ksock = nbdkit_tls(tmp_path, '--tls-psk=%s' % psk)
        obj = {'qom-type': 'tls-creds-psk', 'id': 'tc', 'dir': keys, 'endpoint': 'client',
               'username': 'bob'}
        uri = 'nbds+unix://bob@/?socket=%s&tls-psk-file=%s' % (ksock, psk)
    d = Daemon(tmp_path)
    try:
        q = d.qmp
        q.execute('object-add', **obj)
        # Without tls-creds the TLS-only nbdkit refuses the node.
        with pytest.raises(QmpError):
            q.execute('blockdev-add', driver='nbd', server={'type': 'unix', 'path': ksock},
                      **{'node-name': 'plain'})
        q.execute('blockdev-add', driver='nbd', server={'type': 'unix', 'path': ksock},
                  **{'node-name': 'r0', 'tls-creds': 'tc'})
        sock = str(tmp_path / 'nbd.sock')
        q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': sock}})
        q.execute('block-export-add', type='nbd', id='e0', writable=True, **{'node-name': 'r0'})
        qemu_io('nbd+unix:///r0?socket=%s' % sock, 'write -P 0x77 4M 1M', 'read -P 0x77 4M 1M')
        # Read back from nbdkit directly, over its own TLS.
        out_file = tmp_path / 'out.raw'
        run('nbdcopy', uri, str(out_file))
        data = out_file.read_bytes()
        assert data[4 << 20:5 << 20] == b'\x77' * (1 << 20)
        assert data[:4 << 20] == bytes(4 << 20)
    finally:
        assert d.stop() == 0
        kit.kill()
        kit.wait()


def test_tls_only_handshake_rules(tmp_path):
    import nbd_raw
    keys = tls_certs.make_psk(tmp_path / 'psk', 'alice')
    d, sock, _ = start_tls_daemon(tmp_path, 'tls-creds-psk,id=tls0,dir=%s,endpoint=server' % keys)
    try:
        # Before STARTTLS every option but STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD.
        c = nbd_raw.RawClient(sock)
        c.option(nbd_raw.OPT_LIST)
        assert c.option_reply()[1] == nbd_raw.REP_ERR_TLS_REQD
        c.option(nbd_raw.OPT_GO, b'\0\0\0\0\0\0')
        assert c.option_reply()[1] == nbd_raw.REP_ERR_TLS_REQD
        # EXPORT_NAME cannot be answered with an error: the connection closes.
        c.option(nbd_raw.OPT_EXPORT_NAME, b'disk')
        assert c.closed()
        c.close()
        # STARTTLS acknowledged, then garbage instead of a TLS ClientHello: closed.
        g = nbd_raw.RawClient(sock)
        g.option(nbd_raw.OPT_STARTTLS)
        assert g.option_reply()[1] == nbd_raw.REP_ACK
        g.s.sendall(b'\x00' * 200)
        assert g.closed()
        g.close()
        # A client that vanishes mid-handshake does not disturb anyone.
        v = nbd_raw.RawClient(sock)
        v.option(nbd_raw.OPT_STARTTLS)
        assert v.option_reply()[1] == nbd_raw.REP_ACK
        v.close()
        psk = os.path.join(keys, 'keys.psk')
        uri = 'nbds+unix://alice@/disk?socket=%s&tls-psk-file=%s' % (sock, psk)
        assert run('nbdinfo', '--size', uri).stdout.strip() == str(SIZE)
        assert 'TLS handshake failed' in open(os.path.join(d.workdir, 'fleeced.log')).read()
    finally:
        assert d.stop() == 0


def test_client_node_to_fleeced_tls(tmp_path):
    """Both of our sides over TLS: daemon B's nbd node reaches daemon A's TLS export."""
    _, server, client = tls_certs.make_x509(tmp_path / 'pki')
    a_dir = tmp_path / 'a'
    b_dir = tmp_path / 'b'
    a_dir.mkdir()
    b_dir.mkdir()
    a, a_sock, disk = start_tls_daemon(
        a_dir, 'tls-creds-x509,id=tls0,dir=%s,endpoint=server' % server)
    b = Daemon(b_dir, ['--object', 'tls-creds-x509,id=tc,dir=%s,endpoint=client' % client])
    try:
        q = b.qmp
        q.execute('blockdev-add', driver='nbd', export='disk', **{'node-name': 'r0'},
                  server={'type': 'unix', 'path': a_sock}, **{'tls-creds': 'tc'})
        node = [n for n in q.execute('query-named-block-nodes') if n['node-name'] == 'r0'][0]
        assert node['file'].startswith('nbds+unix:///disk')
        sock = str(b_dir / 'nbd.sock')
        q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': sock}})
        q.execute('block-export-add', type='nbd', id='e0', writable=True, **{'node-name': 'r0'})
        qemu_io('nbd+unix:///r0?socket=%s' % sock, 'write -P 0x4d 3M 1M', 'read -P 0x4d 3M 1M')
        with open(disk, 'rb') as f:
            f.seek(3 << 20)
            assert f.read(1 << 20) == b'\x4d' * (1 << 20)
        # Server credentials cannot be used by a client node.
        q.execute('object-add', **{'qom-type': 'tls-creds-x509', 'id': 'srv', 'dir': server,
                                   'endpoint': 'server', 'verify-peer': False})
        with pytest.raises(QmpError) as e:
            q.execute('blockdev-add', driver='nbd', export='disk', **{'node-name': 'r1'},
                      server={'type': 'unix', 'path': a_sock}, **{'tls-creds': 'srv'})
        assert 'client' in e.value.desc
    finally:
        assert b.stop() == 0
        assert a.stop() == 0
