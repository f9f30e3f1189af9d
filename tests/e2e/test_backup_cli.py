"""`fleece backup` end to end: a guest writes through its NBD export while the CLI puts a
copy-before-write filter under it, pushes the snapshot to an nbdkit target and restores
the graph. Also Ctrl-C, a target that dies, leftovers of a crashed run, local file targets
and bad input."""

import json
import os
import shutil
import signal
import subprocess
import threading
import time

import nbd
import pytest

from backup_testlib import BackupCli, CachingTarget
from fleece_testlib import FLEECE, Daemon, qemu_io

MiB = 1024 * 1024
SIZE = 8 * MiB
BLOCK = 4096


class GuestWriter(threading.Thread):
    """Writes 4 KiB blocks all over the disk through the export; can be paused so the test
    knows exactly what the disk holds at the snapshot point."""

    def __init__(self, uri):
        super().__init__(daemon=True)
        self.h = nbd.NBD()
        self.h.connect_uri(uri)
        self.errors = []
        self.writes = 0
        self.stop = threading.Event()
        self.running = threading.Event()
        self.idle = threading.Event()

    def run(self):
        n = 0
        try:
            while not self.stop.is_set():
                if not self.running.is_set():
                    self.idle.set()
                    self.running.wait(0.05)
                    continue
                self.idle.clear()
                offset = (n * 7919 * BLOCK) % SIZE
                self.h.pwrite(os.urandom(BLOCK), offset)
                self.writes += 1
                n += 1
        except Exception as e:  # noqa: BLE001 - any failure is a test failure
            self.errors.append(repr(e))
        finally:
            self.idle.set()
            self.h.shutdown()

    def pause(self):
        self.running.clear()
        self.idle.wait(30)
        assert self.idle.is_set()
        # The pause is seen between two requests: wait for a fresh idle signal.
        self.idle.clear()
        assert self.idle.wait(30)

    def resume(self):
        self.running.set()

    def wait_for_writes(self, count, timeout=60):
        goal = self.writes + count
        deadline = time.monotonic() + timeout
        while self.writes < goal:
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, 'guest writer stalled'
            time.sleep(0.01)


class Cli(BackupCli):
    def finish(self, timeout=120):
        rc = super().finish(timeout)
        return rc, self.seen, self.stderr


def run_cli(*args, timeout=120):
    p = subprocess.run([FLEECE, 'backup', *args], capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def events(lines, name):
    return [m for m in lines if m['event'] == name]


def graph_state(q):
    g = q.execute('x-debug-query-block-graph')
    names = {n['id']: (n['type'], n['name']) for n in g['nodes']}
    edges = sorted((names[e['parent']], e['name'], names[e['child']], tuple(e['perm']), tuple(e['shared-perm']))
                   for e in g['edges'])
    exports = sorted((e['id'], e['node-name']) for e in q.execute('query-block-exports'))
    nodes = sorted(n['node-name'] for n in q.execute('query-named-block-nodes'))
    return edges, exports, nodes, q.execute('query-jobs')


def no_leftovers(q, *dirs):
    assert not [n for n in q.execute('query-named-block-nodes') if n['node-name'].startswith('fleece-backup-')]
    assert not q.execute('query-jobs')
    for d in dirs:
        assert not [f for f in os.listdir(d) if f.endswith('.fleecing')], os.listdir(d)


class Target:
    """nbdkit memory disk on a unix socket: the remote backup target."""

    def __init__(self, tmp_path, size=SIZE):
        self.sock = str(tmp_path / 'target.sock')
        self.proc = subprocess.Popen(['nbdkit', '-f', '-U', self.sock, 'memory', 'size=%d' % size],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.sock):
            assert self.proc.poll() is None and time.monotonic() < deadline, 'nbdkit did not start'
            time.sleep(0.05)
        self.uri = 'nbd+unix:///?socket=' + self.sock

    def read_all(self, path):
        subprocess.run(['nbdcopy', self.uri, path], check=True, timeout=120)
        with open(path, 'rb') as f:
            return f.read()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def new_target(targets, tmp_path):
    """A fresh nbdkit target, stopped with the `guest` fixture (its `targets` list)."""
    target = Target(tmp_path)
    targets.append(target)
    return target


@pytest.fixture
def guest(tmp_path):
    """fleeced serving `disk` (random data) to a guest over NBD export `guest`."""
    disk = str(tmp_path / 'disk.raw')
    with open(disk, 'wb') as f:
        f.write(os.urandom(SIZE))
    d = Daemon(tmp_path)
    q = d.qmp
    q.execute('blockdev-add', driver='file', filename=disk, **{'node-name': 'disk'})
    sock = str(tmp_path / 'nbd.sock')
    q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': sock}})
    q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True, **{'node-name': 'disk'})
    targets = []
    yield d, disk, 'nbd+unix:///guest?socket=' + sock, targets
    for t in targets:
        t.kill()
    d.stop()


def set_job_speed(q, speed):
    jobs = [j['id'] for j in q.execute('query-jobs') if j['id'].startswith('fleece-backup-')]
    assert len(jobs) == 1, jobs
    q.execute('block-job-set-speed', device=jobs[0], speed=speed)


def start_slow_backup_under_writes(guest, tmp_path, *extra):
    """A held-back (--speed 1) backup of 'disk' to a fresh nbdkit target, started while
    the guest writes. Returns the target, the graph before, the writer and the CLI."""
    d, disk, guest_uri, targets = guest
    target = new_target(targets, tmp_path)
    before = graph_state(d.qmp)
    writer = GuestWriter(guest_uri)
    writer.start()
    writer.resume()
    cli = Cli('--qmp', d.qmp_path, '--node', 'disk', '--target', target.uri, '--speed', '1', *extra)
    cli.wait_for('started')
    return target, before, writer, cli


def assert_guest_unharmed_and_graph_restored(q, writer, before, *dirs):
    """The guest goes on writing without an error, and the graph is as before the backup
    with nothing of it left behind in `dirs`."""
    writer.wait_for_writes(200)
    writer.stop.set()
    writer.join(30)
    assert not writer.errors, writer.errors
    assert graph_state(q) == before
    no_leftovers(q, *dirs)


def writer_paused_after_some_writes(guest_uri, disk, tmp_path):
    """A guest writer that wrote for a while and is paused: the disk, copied to
    expected.raw, is what a snapshot taken before it resumes must hold."""
    writer = GuestWriter(guest_uri)
    writer.start()
    writer.resume()
    writer.wait_for_writes(100)
    writer.pause()
    shutil.copyfile(disk, str(tmp_path / 'expected.raw'))
    return writer


def test_backup_pushes_the_point_in_time_while_the_guest_writes(guest, tmp_path):
    d, disk, guest_uri, targets = guest
    q = d.qmp
    target = new_target(targets, tmp_path)
    before = graph_state(q)
    writer = writer_paused_after_some_writes(guest_uri, disk, tmp_path)
    # speed=1 holds the job still until the guest has rewritten the disk.
    cli = Cli('--qmp', d.qmp_path, '--node', 'disk', '--target', target.uri, '--speed', '1')
    snap = cli.wait_for('snapshot')
    assert snap['users'] == ["export 'guest'"]
    cli.wait_for('started')
    writer.resume()
    writer.wait_for_writes(3000)  # ~1.5 rounds over every 4 KiB block: the CBW copies all
    # The old data went to the fleecing image next to the disk.
    fleecing = [f for f in os.listdir(str(tmp_path)) if f.endswith('.fleecing')]
    assert len(fleecing) == 1, fleecing
    assert os.stat(str(tmp_path / fleecing[0])).st_blocks * 512 >= SIZE // 2
    set_job_speed(q, 0)
    rc, lines, err = cli.finish()
    writer.wait_for_writes(100)  # the guest still writes after the backup
    writer.stop.set()
    writer.join(30)
    assert not writer.errors, writer.errors
    assert rc == 0, (lines, err)
    summary = events(lines, 'summary')[-1]
    assert summary['ok'] and summary['graph-restored'] and summary['bytes'] == SIZE
    assert events(lines, 'progress')

    with open(str(tmp_path / 'expected.raw'), 'rb') as f:
        expected = f.read()
    got = target.read_all(str(tmp_path / 'got.raw'))
    assert got == expected, 'the target is not the disk at the snapshot point'
    with open(disk, 'rb') as f:
        assert f.read() != expected, 'the guest writes did not reach the disk'
    assert graph_state(q) == before
    no_leftovers(q, str(tmp_path))
    qemu_io(guest_uri, 'write -P 0x5a 0 64k', 'read -P 0x5a 0 64k')


def test_ctrl_c_cancels_restores_the_graph_and_the_guest_keeps_running(guest, tmp_path):
    d, disk, guest_uri, targets = guest
    q = d.qmp
    target, before, writer, cli = start_slow_backup_under_writes(guest, tmp_path)
    writer.wait_for_writes(200)
    cli.proc.send_signal(signal.SIGINT)
    rc, lines, err = cli.finish(timeout=60)
    assert rc == 128 + signal.SIGINT, (rc, lines, err)
    summary = events(lines, 'summary')[-1]
    assert not summary['ok'] and 'interrupted' in summary['error'] and summary['graph-restored']
    assert_guest_unharmed_and_graph_restored(q, writer, before, str(tmp_path))
    qemu_io(guest_uri, 'write -P 0x33 1M 64k', 'read -P 0x33 1M 64k')


def test_ctrl_c_while_the_target_is_away_does_not_wait_for_it(guest, tmp_path):
    """The job's requests wait for the target to come back (here up to an hour); Ctrl-C
    cancels them at once, as QEMU cancels a force-cancelled job's in-flight requests."""
    d, disk, guest_uri, _ = guest
    q = d.qmp
    before = graph_state(q)
    target = CachingTarget(tmp_path, SIZE)
    try:
        cli = Cli('--qmp', d.qmp_path, '--node', 'disk', '--target',
                  'nbd+unix:///?socket=' + target.sock, '--speed', str(MiB),
                  '--target-reconnect', '3600')
        cli.wait_for('started')
        target.crash()
        wait_for_log = time.monotonic() + 30
        log = os.path.join(d.workdir, 'fleeced.log')
        while 'connection lost' not in open(log).read():
            assert time.monotonic() < wait_for_log
            time.sleep(0.05)
        cli.proc.send_signal(signal.SIGINT)
        rc, lines, err = cli.finish(timeout=60)  # not the hour
        assert rc == 128 + signal.SIGINT, (rc, lines, err)
        assert events(lines, 'summary')[-1]['graph-restored']
        assert graph_state(q) == before
        no_leftovers(q, str(tmp_path))
        qemu_io(guest_uri, 'write -P 0x33 1M 64k', 'read -P 0x33 1M 64k')
    finally:
        target.stop()


def test_a_dead_target_fails_the_backup_cleanly_and_not_the_guest(guest, tmp_path):
    d, disk, guest_uri, targets = guest
    q = d.qmp
    # Not waiting the default 120 s for it to come back.
    target, before, writer, cli = start_slow_backup_under_writes(guest, tmp_path,
                                                                 '--target-reconnect', '0')
    target.kill()
    set_job_speed(q, 0)
    rc, lines, err = cli.finish()
    assert rc == 1, (rc, lines, err)
    summary = events(lines, 'summary')[-1]
    assert not summary['ok'] and summary['error'] and summary['graph-restored'], summary
    assert_guest_unharmed_and_graph_restored(q, writer, before, str(tmp_path))


def test_the_backup_rides_out_a_target_restart(guest, tmp_path):
    """The NBD target crashes mid-backup, losing the writes in its cache, and comes back:
    the backup waits for it (--target-reconnect), copies again what it lost, and completes
    with the disk as it was at the snapshot point, while the guest writes on."""
    d, disk, guest_uri, _ = guest
    q = d.qmp
    target = CachingTarget(tmp_path, SIZE)
    try:
        writer = writer_paused_after_some_writes(guest_uri, disk, tmp_path)
        cli = Cli('--qmp', d.qmp_path, '--node', 'disk', '--target',
                  'nbd+unix:///?socket=' + target.sock, '--speed', '2M')  # size suffixes work
        cli.wait_for('started')
        writer.resume()
        deadline = time.monotonic() + 60
        while q.execute('query-jobs')[0]['current-progress'] < 3 * MiB:
            assert time.monotonic() < deadline, 'the job does not progress'
            time.sleep(0.05)
        target.crash()
        writer.wait_for_writes(300)  # the guest is not held up by the missing target
        # The progress says why the job went quiet.
        while 'target-away-s' not in cli.wait_for('progress'):
            pass
        target.start()
        set_job_speed(q, 0)
        rc, lines, err = cli.finish()
        writer.stop.set()
        writer.join(30)
        assert not writer.errors, writer.errors
        assert rc == 0, (lines, err)
        assert events(lines, 'summary')[-1]['ok']
    finally:
        target.stop()
    with open(str(tmp_path / 'expected.raw'), 'rb') as f, open(target.path, 'rb') as g:
        assert f.read() == g.read(), 'the target is not the disk at the snapshot point'
    log = open(os.path.join(d.workdir, 'fleeced.log')).read()
    assert 'copying them again' in log, log
    # Connected again: the last progress lines have no target-away-s.
    assert 'target-away-s' not in events(lines, 'progress')[-1]
    no_leftovers(q, str(tmp_path))


def test_leftovers_of_a_killed_run_are_removed_by_the_next_run(guest, tmp_path):
    d, disk, guest_uri, targets = guest
    q = d.qmp
    target = new_target(targets, tmp_path)
    before = graph_state(q)
    crashed = Cli('--qmp', d.qmp_path, '--node', 'disk', '--target', target.uri, '--speed', '1')
    crashed.wait_for('started')
    crashed.proc.kill()  # SIGKILL: no cleanup at all
    crashed.proc.wait()
    stale = [n['node-name'] for n in q.execute('query-named-block-nodes') if n['node-name'].startswith('fleece-backup-')]
    assert stale and [f for f in os.listdir(str(tmp_path)) if f.endswith('.fleecing')]
    assert q.execute('query-block-exports')[0]['node-name'].endswith('-cbw')
    qemu_io(guest_uri, 'write -P 0x44 0 64k')  # the guest is served through the filter

    out = str(tmp_path / 'backup.raw')
    rc, stdout, err = run_cli('--json', '--qmp', d.qmp_path, '--node', 'disk', '--target', out)
    assert rc == 0, (stdout, err)
    lines = [json.loads(x) for x in stdout.splitlines()]
    assert events(lines, 'stale'), lines
    assert graph_state(q) == before
    no_leftovers(q, str(tmp_path))
    with open(out, 'rb') as f, open(disk, 'rb') as g:
        assert f.read() == g.read()


def test_local_file_target_and_a_format_node_user(guest, tmp_path):
    """The guest uses a raw format node over the disk: the filter goes under its file edge."""
    d, disk, guest_uri, _ = guest
    q = d.qmp
    q.execute('block-export-del', id='guest')
    q.execute('blockdev-add', driver='raw', file='disk', **{'node-name': 'fmt'})
    q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True, **{'node-name': 'fmt'})
    before = graph_state(q)
    fleecing_dir = tmp_path / 'fast'
    fleecing_dir.mkdir()
    out = str(tmp_path / 'backup.img')
    rc, stdout, err = run_cli('--qmp', d.qmp_path, '--node', 'disk', '--target', out,
                              '--fleecing', str(fleecing_dir))
    assert rc == 0, (stdout, err)
    assert 'backup complete' in stdout and "node 'fmt' (child 'file')" in stdout, stdout
    with open(out, 'rb') as f, open(disk, 'rb') as g:
        assert f.read() == g.read()
    assert graph_state(q) == before
    no_leftovers(q, str(tmp_path), str(fleecing_dir))


def test_bad_input_gets_clear_errors_and_changes_nothing(guest, tmp_path):
    d, disk, guest_uri, _ = guest
    q = d.qmp
    before = graph_state(q)
    existing = str(tmp_path / 'exists.raw')
    open(existing, 'wb').close()
    cases = [
        (['--node', 'nope', '--target', str(tmp_path / 'a.raw')], "node 'nope' not found"),
        (['--node', 'disk', '--target', 'nbds://localhost/x'], '--tls-creds'),
        (['--node', 'disk', '--target', 'ftp://x/y'], 'unknown URI scheme'),
        (['--node', 'disk', '--target', 'nbd+unix:///x'], 'socket='),
        (['--node', 'disk', '--target', existing], 'already exists'),
        (['--node', 'disk', '--target', str(tmp_path / 'b.qcow2'), '--sync', 'incremental', '--bitmap', 'b'],
         '--base'),
        (['--node', 'disk', '--target', 'nbd+unix:///x?socket=' + str(tmp_path / 'none.sock')],
         'cannot open the target'),
    ]
    cases.append((['--node', 'disk', '--target', str(tmp_path / 'd.raw'), '--fleecing', existing],
                  'already exists'))
    cases.append((['--node', 'disk', '--target', str(tmp_path / 'e.raw'), '--copy-window', '3M'],
                  'x-copy-window needs to be 0 or a power of 2'))
    for args, needle in cases:
        rc, stdout, err = run_cli('--qmp', d.qmp_path, *args)
        assert rc == 1 and needle in err, (args, stdout, err)
    rc, stdout, err = run_cli('--qmp', str(tmp_path / 'no.sock'), '--node', 'disk', '--target', 'x.raw')
    assert rc == 1 and 'is fleeced running' in err, err
    assert graph_state(q) == before
    no_leftovers(q, str(tmp_path))
    for name in ('a.raw', 'd.raw', 'e.raw'):
        assert not os.path.exists(str(tmp_path / name)), name
    assert os.path.exists(existing)  # a file the user named is never deleted
    qemu_io(guest_uri, 'write -P 0x12 0 4k', 'read -P 0x12 0 4k')


def cbw_requests(q):
    stats = [n['x-cbw-stats'] for n in q.execute('query-named-block-nodes')
             if n['node-name'].startswith('fleece-backup-') and n['node-name'].endswith('-cbw')]
    assert len(stats) == 1, stats
    return stats[0]['requests']


@pytest.mark.parametrize('extra, waits, fleecing_bytes', [
    ([], 2, MiB),                                 # default: the 2nd write copies the window
    (['--copy-window', '0'], 3, 3 * 64 * 1024),   # QEMU's rule: one cluster per first write
    (['--copy-window', '256K'], 3, 320 * 1024),   # the 3rd write is the first in its window
])
def test_copy_window_of_the_cli_filter(guest, tmp_path, extra, waits, fleecing_bytes):
    """The CLI's filter (cbw-timeout 45 by default) copies ahead: three first writes in one
    1 MiB window cost the guest two waits, and the fleecing image holds the window."""
    d, disk, guest_uri, targets = guest
    q = d.qmp
    target = new_target(targets, tmp_path)
    expected = str(tmp_path / 'expected.raw')
    shutil.copyfile(disk, expected)
    # The job is held at speed 1 and backs up from offset 0: window 5 MiB is untouched by it.
    cli = Cli('--qmp', d.qmp_path, '--node', 'disk', '--target', target.uri, '--speed', '1', *extra)
    cli.wait_for('started')
    for off in ('5M', '5248k', '5632k'):  # 0, 128 KiB and 512 KiB into window 5
        qemu_io(guest_uri, 'write -P 0x3c %s 4k' % off)
    assert cbw_requests(q) == waits
    fleecing = [f for f in os.listdir(str(tmp_path)) if f.endswith('.fleecing')]
    assert len(fleecing) == 1, fleecing
    assert os.stat(str(tmp_path / fleecing[0])).st_blocks * 512 == fleecing_bytes
    set_job_speed(q, 0)
    rc, lines, err = cli.finish()
    assert rc == 0, (lines, err)
    with open(expected, 'rb') as f:
        assert target.read_all(str(tmp_path / 'got.raw')) == f.read()


def test_help_for_every_subcommand():
    for sub in (['backup'], ['qmp']):
        p = subprocess.run([FLEECE, *sub, '--help'], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0 and '--' in p.stdout, p


def test_qcow2_target_and_qcow2_fleecing_image(guest, tmp_path):
    d, disk, guest_uri, _ = guest
    q = d.qmp
    before = graph_state(q)
    out = str(tmp_path / 'backup.qcow2')
    rc, stdout, err = run_cli('--qmp', d.qmp_path, '--node', 'disk', '--target', out,
                              '--fleecing-format', 'qcow2')
    assert rc == 0, (stdout, err)
    assert '(qcow2, sparse' in stdout, stdout
    p = subprocess.run(['qemu-img', 'compare', '-f', 'raw', '-F', 'qcow2', disk, out],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    p = subprocess.run(['qemu-img', 'check', out], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert graph_state(q) == before
    no_leftovers(q, str(tmp_path))


def test_progress_bar_on_a_terminal(guest, tmp_path):
    """On a tty the bar is redrawn in place (carriage returns), from the start to 100 %."""
    import pty
    d, disk, guest_uri, targets = guest
    q = d.qmp
    target = new_target(targets, tmp_path)
    master, slave = pty.openpty()
    proc = subprocess.Popen([FLEECE, 'backup', '--qmp', d.qmp_path, '--node', 'disk', '--target', target.uri,
                             '--speed', '1'], stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    out = b''

    def read_until(needle, timeout=60):
        nonlocal out
        deadline = time.monotonic() + timeout
        while needle not in out:
            assert time.monotonic() < deadline, out
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            out += chunk
    read_until(b'\r[')  # the first bar, with the job held at speed 1
    set_job_speed(q, 0)
    read_until(b'backup complete')
    assert proc.wait(60) == 0, out
    os.close(master)
    bars = [b for b in out.split(b'\r') if b.startswith(b'[')]
    assert len(bars) >= 2, out
    assert b'100.0%' in bars[-1] and b'100.0%' not in bars[0], bars
    assert b'ETA' in bars[0] and b'fleecing' in bars[0], bars
