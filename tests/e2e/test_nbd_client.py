"""The nbd client node: reconnection after the server went away (reconnect-delay),
failing fast without it, and open-timeout waiting for a server that starts late."""

import os
import subprocess
import time

import nbd
import pytest

from backup_testlib import CachingTarget, job_events, until_status
from fleece_testlib import Daemon, QmpError, qemu_io


def start_nbdkit(sock, size='16M'):
    if os.path.exists(sock):
        os.unlink(sock)
    p = subprocess.Popen(['nbdkit', '-f', '-U', sock, 'memory', size],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not os.path.exists(sock):
        assert time.monotonic() < deadline, 'nbdkit did not start'
        time.sleep(0.02)
    return p


def wait_log(d, text, timeout=30, count=1):
    deadline = time.monotonic() + timeout
    path = os.path.join(d.workdir, 'fleeced.log')
    while open(path).read().count(text) < count:
        assert time.monotonic() < deadline, 'no %r in the log' % text
        time.sleep(0.05)


def export_remote(d, tmp_path, kit_sock, **node_opts):
    q = d.qmp
    q.execute('blockdev-add', driver='nbd', server={'type': 'unix', 'path': kit_sock},
              **{'node-name': 'r0'}, **node_opts)
    sock = str(tmp_path / 'nbd.sock')
    q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': sock}})
    q.execute('block-export-add', type='nbd', id='e0', writable=True, **{'node-name': 'r0'})
    return 'nbd+unix:///r0?socket=%s' % sock


def test_reconnect_within_delay(tmp_path):
    kit_sock = str(tmp_path / 'kit.sock')
    kit = start_nbdkit(kit_sock)
    d = Daemon(tmp_path)
    try:
        uri = export_remote(d, tmp_path, kit_sock, **{'reconnect-delay': 60})
        qemu_io(uri, 'write -P 0x5a 0 64k', 'read -P 0x5a 0 64k')
        kit.kill()
        kit.wait()
        wait_log(d, 'connection lost')
        # A read issued while the server is away waits for the reconnection ...
        reader = subprocess.Popen(['qemu-io', '-f', 'raw', '-c', 'read -P 0 0 64k', uri],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_log(d, 'reconnect failed')
        assert reader.poll() is None
        kit = start_nbdkit(kit_sock)  # a new, empty server
        out, _ = reader.communicate(timeout=60)
        # ... and then succeeds (the new memory server reads zeroes).
        assert reader.returncode == 0 and 'read 65536/65536' in out, out
        wait_log(d, 'reconnected')
        qemu_io(uri, 'write -P 0x33 1M 64k', 'read -P 0x33 1M 64k')
    finally:
        assert d.stop() == 0
        kit.kill()
        kit.wait()


def test_no_reconnect_delay_fails_fast_and_recovers(tmp_path):
    kit_sock = str(tmp_path / 'kit.sock')
    kit = start_nbdkit(kit_sock)
    d = Daemon(tmp_path)
    try:
        uri = export_remote(d, tmp_path, kit_sock)
        qemu_io(uri, 'write -P 0x11 0 64k')
        kit.kill()
        kit.wait()
        wait_log(d, 'connection lost')
        out = qemu_io(uri, 'read 0 64k', check=False)
        assert 'Input/output error' in out, out
        # The daemon keeps serving, and the node reconnects in the background.
        assert d.qmp.execute('query-block-exports')[0]['id'] == 'e0'
        kit = start_nbdkit(kit_sock)
        wait_log(d, 'reconnected')
        qemu_io(uri, 'write -P 0x22 0 64k', 'read -P 0x22 0 64k')
    finally:
        assert d.stop() == 0
        kit.kill()
        kit.wait()


def test_open_timeout(tmp_path):
    kit_sock = str(tmp_path / 'kit.sock')
    d = Daemon(tmp_path)
    kit = None
    try:
        q = d.qmp
        with pytest.raises(QmpError) as e:
            q.execute('blockdev-add', driver='nbd', server={'type': 'unix', 'path': kit_sock},
                      **{'node-name': 'r0'})
        assert 'Failed to connect to NBD server' in e.value.desc
        # With open-timeout the node keeps trying; start the server once it is waiting.
        q.sock.sendall(b'{"execute": "blockdev-add", "id": "late", "arguments": '
                       b'{"driver": "nbd", "node-name": "r0", "open-timeout": 60, '
                       b'"server": {"type": "unix", "path": "%s"}}}\n' % kit_sock.encode())
        time.sleep(1.5)
        kit = start_nbdkit(kit_sock)
        while True:
            reply = q._recv_any()
            if reply.get('id') == 'late':
                break
        assert 'return' in reply, reply
        nodes = [n['node-name'] for n in q.execute('query-named-block-nodes')]
        assert 'r0' in nodes
    finally:
        assert d.stop() == 0
        if kit:
            kit.kill()
            kit.wait()


def test_upstreams_errors_and_delay(tmp_path):
    """The node in front of qemu-nbd (data checked with qemu-img compare), nbdkit's delay
    filter (slow but correct) and error filter (the server's errno comes through)."""
    disk = tmp_path / 'up.raw'
    with open(disk, 'wb') as f:
        f.write(os.urandom(4 << 20))
        f.truncate(16 << 20)
    qn_sock = str(tmp_path / 'qn.sock')
    qn = subprocess.Popen(['qemu-nbd', '-f', 'raw', '--socket=' + qn_sock, '--persistent',
                           '--shared=4', str(disk)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    slow_sock = str(tmp_path / 'slow.sock')
    err_sock = str(tmp_path / 'err.sock')
    slow = subprocess.Popen(['nbdkit', '-f', '-U', slow_sock, '--filter=delay', 'memory', '16M',
                             'rdelay=10ms', 'wdelay=10ms'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bad = subprocess.Popen(['nbdkit', '-f', '-U', err_sock, '--filter=error', 'memory', '16M',
                            'error-pread=EIO', 'error-pread-rate=100%', 'error-trim=ENOSPC',
                            'error-trim-rate=100%'],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for s in (qn_sock, slow_sock, err_sock):
        deadline = time.monotonic() + 20
        while not os.path.exists(s):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    d = Daemon(tmp_path)
    try:
        q = d.qmp
        for name, s in (('qn', qn_sock), ('slow', slow_sock), ('bad', err_sock)):
            q.execute('blockdev-add', driver='nbd', server={'type': 'unix', 'path': s},
                      **{'node-name': name})
        sock = str(tmp_path / 'nbd.sock')
        q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': sock}})
        for name in ('qn', 'slow', 'bad'):
            q.execute('block-export-add', type='nbd', id=name, writable=True,
                      **{'node-name': name})
        uri = lambda n: 'nbd+unix:///%s?socket=%s' % (n, sock)
        assert 'Images are identical' in subprocess.run(
            ['qemu-img', 'compare', '-f', 'raw', '-F', 'raw', str(disk), uri('qn')],
            capture_output=True, text=True, timeout=120).stdout
        qemu_io(uri('slow'), 'aio_write -P 0x21 0 64k', 'aio_write -P 0x22 64k 64k',
                'aio_flush', 'read -P 0x21 0 64k', 'read -P 0x22 64k 64k')
        qemu_io(uri('bad'), 'write -P 0x23 0 64k')  # writes are not failed by the filter
        out = qemu_io(uri('bad'), 'read 0 64k', check=False)
        assert 'Input/output error' in out, out
        out = qemu_io(uri('bad'), 'discard 0 64k', check=False)
        assert 'No space left on device' in out, out
        # The node and the daemon are still fine.
        qemu_io(uri('slow'), 'read -P 0x21 0 64k')
        assert len(q.execute('query-block-exports')) == 3
    finally:
        assert d.stop() == 0
        for p in (qn, slow, bad):
            p.kill()
            p.wait()


def test_a_drop_never_hides_changes_the_server_may_have_lost(tmp_path):
    """The server acknowledged a write but had not flushed it when it went away: the new
    connection cannot vouch for it, so every later flush fails (a drop after a flush
    costs nothing)."""
    kit_sock = str(tmp_path / 'kit.sock')
    kit = start_nbdkit(kit_sock)
    d = Daemon(tmp_path)
    h = nbd.NBD()
    try:
        uri = export_remote(d, tmp_path, kit_sock, **{'reconnect-delay': 60})
        h.connect_uri(uri)
        assert h.can_flush()
        h.pwrite(b'\x5a' * 65536, 0)
        h.flush()
        for restart in range(2):
            kit.kill()
            kit.wait()
            kit = start_nbdkit(kit_sock)
            wait_log(d, 'reconnected', count=restart + 1)
            if restart == 0:
                # Everything was flushed before the drop: the node carries on.
                h.pwrite(b'\x33' * 65536, 1 << 20)
                h.flush()
                h.pwrite(b'\x44' * 65536, 2 << 20)  # acknowledged, not flushed
        wait_log(d, 'acknowledged changes not yet flushed')
        for _ in range(2):  # and not only once
            with pytest.raises(nbd.Error) as e:
                h.flush()
            assert e.value.errno == 'EIO', e.value
    finally:
        h.shutdown()
        assert d.stop() == 0
        kit.kill()
        kit.wait()


def backup_through_a_target_crash(tmp_path, guest_export):
    """Backs up a 32 MiB disk at 4 MiB/s to a CachingTarget (reconnect-delay 60), crashes
    and restarts the target once 20 MiB were copied, then lets the job finish. Returns the
    disk's path, the target and the job's BLOCK_JOB_COMPLETED data."""
    size = 32 << 20
    disk = str(tmp_path / 'disk.raw')
    with open(disk, 'wb') as f:
        f.write(os.urandom(size))
    target = CachingTarget(tmp_path, size)
    d = Daemon(tmp_path)
    q = d.qmp
    try:
        q.execute('blockdev-add', driver='file', filename=disk, **{'node-name': 'disk'})
        if guest_export:  # a writer on the disk: the job inserts its own filter
            sock = str(tmp_path / 'nbd.sock')
            q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': sock}})
            q.execute('block-export-add', type='nbd', id='g', writable=True, **{'node-name': 'disk'})
        q.execute('blockdev-add', driver='nbd', server={'type': 'unix', 'path': target.sock},
                  **{'node-name': 'r0', 'reconnect-delay': 60})
        q.execute('blockdev-backup', device='disk', target='r0', sync='full', speed=4 << 20,
                  **{'job-id': 'bk'})
        deadline = time.monotonic() + 60
        while q.execute('query-jobs')[0]['current-progress'] < 20 << 20:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        target.crash()
        target.start()
        wait_log(d, 'reconnected')
        q.execute('block-job-set-speed', device='bk', speed=0)
        evs = job_events(q, 'bk', until_status('null'), timeout=120)
        done = [e['data'] for e in evs if e['event'] == 'BLOCK_JOB_COMPLETED']
        assert len(done) == 1, evs
        log = open(os.path.join(d.workdir, 'fleeced.log')).read()
        assert 'acknowledged changes not yet flushed' in log, log
        return disk, target, done[0], log
    finally:
        assert d.stop() == 0
        target.stop()


def test_a_backup_copies_again_what_a_crashed_target_lost(tmp_path):
    """The job's source is immutable, so what the target lost from its write cache is
    copied again: the backup completes and equals the disk."""
    disk, target, done, log = backup_through_a_target_crash(tmp_path, guest_export=False)
    assert 'error' not in done, done
    assert 'copying them again' in log, log
    # The work done twice shows in the total (QEMU's progress semantics: it may grow).
    assert done['offset'] == done['len'] > 32 << 20, done
    assert subprocess.run(['cmp', disk, target.path]).returncode == 0


def test_a_backup_that_cannot_copy_again_fails_instead_of_leaving_a_hole(tmp_path):
    """With a writer on the disk (the job's own copy-before-write filter) the old data of
    a lost cluster may be gone from the source: the job must fail, not complete with a
    hole."""
    disk, target, done, log = backup_through_a_target_crash(tmp_path, guest_export=True)
    # The error says what happened and what to do.
    assert done.get('error', '').startswith('Input/output error (the target'), done
    assert 'run it again' in done['error'], done
    assert 'copying them again' not in log
