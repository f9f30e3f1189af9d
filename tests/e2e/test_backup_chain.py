"""Incremental backup chains from the CLI: `fleece backup --bitmap` (full, then
`--sync incremental --base PREV`) while a guest writes through its export, across a daemon
restart (raw disk, sidecar bitmap), `kill -9` crash rounds, and `fleece restore` of every
point, including the refusal of broken chains.

The guest is a deterministic writer (libnbd, one request at a time) that logs every write
it completed. At each snapshot point the test pauses it, copies the disk (what the backup
must hold) and notes the log position, so the clusters written between two points are
known exactly; the writer resumes as soon as the snapshot is taken, so the backup runs
while the guest writes."""

import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time

import nbd
import pytest

from backup_testlib import BackupCli, random_fill
from fleece_testlib import FLEECE, Daemon, clusters_of, make_raw

MiB = 1 << 20
K64 = 65536


# ---- the guest ---------------------------------------------------------------------------

class LoggingWriter(threading.Thread):
    """Writes random data, zeroes and small and large requests all over the disk, one
    request at a time, and logs (offset, length) of each completed write."""

    def __init__(self, uri, size, seed, keep_data=False):
        super().__init__(daemon=True)
        self.uri, self.size, self.rng = uri, size, random.Random(seed)
        self.keep_data = keep_data  # log the data too (for replay), small random writes only
        self.log = []
        # Writes stop (the writer idles) when the log reaches the budget: the number of
        # writes between two snapshot points stays bounded however slow the machine is.
        self.budget = None
        self.errors = []
        self.stop_flag = threading.Event()
        self.running = threading.Event()
        self.idle = threading.Event()

    def run(self):
        h = nbd.NBD()
        try:
            h.connect_uri(self.uri)
            while not self.stop_flag.is_set():
                if not self.running.is_set():
                    self.idle.set()
                    self.running.wait(0.05)
                    continue
                if self.budget is not None and len(self.log) >= self.budget:
                    self.idle.set()
                    time.sleep(0.005)
                    continue
                self.idle.clear()
                if self.keep_data:
                    # A walk over the disk, a new 64 KiB cluster each write (with a random
                    # offset in it), paced: the clusters written in any short window are
                    # distinct from the ones written just before, so a write counted in the
                    # wrong increment shows.
                    length = self.rng.choice([512, 4096])
                    off = (len(self.log) * K64 + self.rng.randrange(0, K64 - length)) % self.size
                    off = off // 512 * 512
                    time.sleep(0.002)
                else:
                    length = self.rng.choice([512, 4096, 4096, 65536, 100000, 300000])
                    off = self.rng.randrange(0, self.size - length) // 512 * 512
                if not self.keep_data and self.rng.random() < 0.1:
                    h.zero(length, off)
                    data = None
                else:
                    data = self.rng.randbytes(length)
                    h.pwrite(data, off)
                self.log.append((off, length, data) if self.keep_data else (off, length))
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(e))
        finally:
            self.idle.set()
            try:
                h.shutdown()
            except Exception:  # noqa: BLE001
                pass

    def pause(self):
        """Returns when no request is in flight (and none starts until resume())."""
        self.running.clear()
        self.idle.clear()
        assert self.idle.wait(30), 'writer did not pause'
        assert not self.errors, self.errors

    def resume(self):
        self.running.set()

    def allow(self, count):
        """Lets the writer do `count` more writes (from now); returns the log length then."""
        self.budget = len(self.log) + count
        return self.budget

    def wait_until(self, length, timeout=120):
        deadline = time.monotonic() + timeout
        while len(self.log) < length:
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, 'guest writer stalled'
            time.sleep(0.01)

    def wait_for_writes(self, count, timeout=120):
        goal = len(self.log) + count
        if self.budget is not None:
            self.budget = max(self.budget, goal)
        deadline = time.monotonic() + timeout
        while len(self.log) < goal:
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, 'guest writer stalled'
            time.sleep(0.01)

    def finish(self):
        self.stop_flag.set()
        self.running.set()
        self.join(30)
        assert not self.errors, self.errors


def start_writer(host, seed, keep_data=False, log=()):
    """A LoggingWriter on the host's export, writing; `log` carries on an earlier one's."""
    writer = LoggingWriter(host.uri, host.size, seed, keep_data)
    writer.log = list(log)
    writer.start()
    writer.resume()
    return writer


# ---- the daemon: a raw disk with a sidecar for its persistent bitmaps ---------------------

class Host:
    """fleeced serving `disk.raw` over the NBD export `guest`, its persistent bitmaps in a
    sidecar. start() may be called again after stop() or crash() (same files)."""

    def __init__(self, tmp_path, size, sidecar=True, seed=None, write_ahead=False):
        """Creates the disk: random content from `seed`, or zeroes without one. With
        `write_ahead` the sidecar keeps a change journal (bitmaps that survive a crash)."""
        self.dir = tmp_path
        self.disk = str(tmp_path / 'disk.raw')
        if seed is None:
            make_raw(self.disk, size)
        else:
            random_fill(self.disk, size, seed)
        self.sock = str(tmp_path / 'nbd.sock')
        self.size = size
        self.sidecar = sidecar
        self.write_ahead = write_ahead
        self.d = None

    @property
    def uri(self):
        return 'nbd+unix:///guest?socket=' + self.sock

    def start(self):
        # A killed daemon leaves its sockets behind; a service manager removes them.
        for name in ('qmp.sock', 'nbd.sock'):
            if os.path.exists(str(self.dir / name)):
                os.unlink(str(self.dir / name))
        args = ['--blockdev', 'driver=file,node-name=disk,filename=' + self.disk,
                '--nbd-server', 'addr.type=unix,addr.path=' + self.sock]
        sidecar = self.disk + '.fleece-bitmaps'
        if self.write_ahead:
            # fleeced's own option: attached before any export exists.
            args += ['--bitmap-sidecar', 'node=disk,path=%s,write-ahead=on' % sidecar]
        self.d = Daemon(self.dir, args)
        q = self.d.qmp
        if self.sidecar and not self.write_ahead:
            # Before the guest writes: loads the saved bitmaps, marks the sidecar in use.
            q.execute('x-block-dirty-bitmap-sidecar', node='disk', path=sidecar)
        q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True,
                  **{'node-name': 'disk'})
        return q

    def stop(self):
        assert self.d.stop() == 0

    def crash(self):
        self.d.proc.kill()
        self.d.proc.wait()
        self.d.log.close()

    def bitmap(self, name):
        for n in self.d.qmp.execute('query-named-block-nodes', flat=True):
            if n['node-name'] == 'disk':
                for b in n.get('dirty-bitmaps', []):
                    if b['name'] == name:
                        return b
        return None

    def leftovers(self):
        q = self.d.qmp
        nodes = [n['node-name'] for n in q.execute('query-named-block-nodes', flat=True)]
        bitmaps = [b['name'] for n in q.execute('query-named-block-nodes', flat=True)
                   for b in n.get('dirty-bitmaps', [])]
        files = [f for f in os.listdir(str(self.dir)) if f.endswith('.fleecing')]
        return ([n for n in nodes if n.startswith('fleece-backup-')] +
                [b for b in bitmaps if b.startswith('fleece-backup-')] + files + q.execute('query-jobs'))


# ---- the CLI ----------------------------------------------------------------------------

class Backup(BackupCli):
    """A running `fleece backup --json` on the host's disk, its lines collected as they come."""

    def __init__(self, host, *args):
        super().__init__('--qmp', host.d.qmp_path, '--node', 'disk', *args)

    def finish(self, timeout=300):
        rc = super().finish(timeout)
        self.summary = [m for m in self.seen if m['event'] == 'summary'][-1]
        return rc


def run_backup(host, *args, timeout=120):
    """`fleece backup` on the host's disk, run to its end."""
    return subprocess.run([FLEECE, 'backup', '--qmp', host.d.qmp_path, '--node', 'disk', *args],
                          capture_output=True, text=True, timeout=timeout)


def set_job_speed(q, speed):
    jobs = [j['id'] for j in q.execute('query-jobs') if j['id'].startswith('fleece-backup-')]
    assert len(jobs) == 1, jobs
    q.execute('block-job-set-speed', device=jobs[0], speed=speed)


def backup_while_writing(host, writer, expected_copy, *args, writes_during=40):
    """Pauses the guest, copies the disk (the expected content of this point), takes the
    backup's snapshot, and lets the guest write while the job runs. Returns the Backup and
    the writer's log position at the snapshot point."""
    writer.pause()
    shutil.copyfile(host.disk, expected_copy)
    mark = len(writer.log)
    b = Backup(host, '--speed', '1', *args)  # speed 1 holds the job until the guest wrote
    b.wait_for('snapshot')
    goal = writer.allow(writes_during)
    writer.resume()
    b.wait_for('started')
    writer.wait_until(goal)
    set_job_speed(host.d.qmp, 0)
    rc = b.finish()
    assert rc == 0, (b.seen, b.stderr)
    return b, mark


def restore(*args):
    return subprocess.run([FLEECE, 'restore', *args], capture_output=True, text=True, timeout=300)


def assert_restores_to(backup, expected, out):
    p = restore('-p', backup, out)
    assert p.returncode == 0, p.stdout + p.stderr
    assert 'chain verified' in p.stdout and '100' in p.stdout, p.stdout
    c = subprocess.run(['qemu-img', 'compare', '-f', 'raw', '-F', 'raw', expected, out],
                       capture_output=True, text=True, timeout=300)
    assert c.returncode == 0, c.stdout + c.stderr
    os.unlink(out)


def overlay_clusters(path, gran=K64):
    """Clusters the qcow2 overlay itself holds (data or zero clusters): depth 0 in
    `qemu-img map`, where the rest of the disk comes from the backing chain (depth >= 1)."""
    out = subprocess.run(['qemu-img', 'map', '--output=json', '-f', 'qcow2', path],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    mine = [(e['start'], e['length']) for e in json.loads(out) if e['depth'] == 0]
    for off, length in mine:
        assert off % gran == 0 and length % gran == 0, (off, length)
    return clusters_of(mine, gran)


def qemu_img_info(path):
    out = subprocess.run(['qemu-img', 'info', '--output=json', path], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return json.loads(out)


# ---- 1. full, incremental, restart, incremental; restore each point ----------------------

def test_full_and_two_incrementals_across_a_restart_restore_every_point(tmp_path):
    size = 32 * MiB
    host = Host(tmp_path, size, seed=3)
    q = host.start()
    writer = start_writer(host, seed=11)
    writer.wait_for_writes(100)
    try:
        full, inc1, inc2 = (str(tmp_path / n) for n in ('full.raw', 'inc1.qcow2', 'inc2.qcow2'))
        p0, p1, p2 = (str(tmp_path / n) for n in ('p0.raw', 'p1.raw', 'p2.raw'))

        b, mark0 = backup_while_writing(host, writer, p0, '--target', full, '--bitmap', 'daily')
        assert b.summary['ok'] and b.summary['sync'] == 'full' and b.summary['bytes'] == size
        assert b.summary['bitmap'] == 'daily' and b.summary['bitmap-action'] == 'created'
        assert b.summary['bitmap-persistent'] is True, b.summary
        info = host.bitmap('daily')
        assert info['persistent'] and info['recording'] and not info.get('inconsistent')
        gran = info['granularity']
        assert gran == K64  # the overlay check below is at the qcow2 cluster size
        assert host.leftovers() == []

        writer.wait_for_writes(60)
        b, mark1 = backup_while_writing(host, writer, p1, '--target', inc1, '--sync', 'incremental',
                                        '--bitmap', 'daily', '--base', full)
        written1 = clusters_of(writer.log[mark0:mark1], gran)
        assert b.summary['ok'] and b.summary['sync'] == 'incremental'
        assert b.summary['bitmap-action'] == 'reset' and b.summary['base'] == full
        assert b.summary['dirty-bytes'] == len(written1) * gran, (b.summary, len(written1))
        assert b.summary['bytes'] == len(written1) * gran
        assert host.leftovers() == []

        # Restart (quit, start again on the same files) with the chain's bitmap saved.
        writer.wait_for_writes(40)
        writer.pause()
        writer.finish()
        host.stop()
        q = host.start()
        info = host.bitmap('daily')
        assert info['persistent'] and info['recording'] and not info.get('inconsistent'), info
        writer = start_writer(host, seed=12, log=writer.log)  # one log across the restart
        writer.wait_for_writes(60)
        b, mark2 = backup_while_writing(host, writer, p2, '--target', inc2, '--sync', 'incremental',
                                        '--bitmap', 'daily', '--base', inc1)
        written2 = clusters_of(writer.log[mark1:mark2], gran)
        assert b.summary['ok'] and b.summary['bytes'] == len(written2) * gran, b.summary
        assert host.leftovers() == []
        writer.wait_for_writes(50)
        writer.pause()
    finally:
        writer.finish()
        host.stop()

    # Each increment holds exactly the clusters written between its two points.
    assert overlay_clusters(inc1) == written1
    assert overlay_clusters(inc2) == written2
    # Increments, not copies of the disk: the two differ and neither covers everything.
    assert written2 - written1 and written1 - written2
    assert len(written1) < size // K64 and len(written2) < size // K64
    # qemu reads the chain as fleece wrote it: qcow2 overlays, backing by file name.
    assert qemu_img_info(inc2)['backing-filename'] == 'inc1.qcow2'
    assert qemu_img_info(inc1)['backing-filename'] == 'full.raw'
    assert qemu_img_info(inc1)['backing-filename-format'] == 'raw'
    subprocess.run(['qemu-img', 'check', inc2], check=True, capture_output=True, timeout=60)
    # Restoring each point gives the disk as it was at that point.
    out = str(tmp_path / 'restored.raw')
    assert_restores_to(full, p0, out)
    assert_restores_to(inc1, p1, out)
    assert_restores_to(inc2, p2, out)
    # The chain given as a list, to qcow2.
    outq = str(tmp_path / 'restored.qcow2')
    p = restore(full, inc1, inc2, outq)
    assert p.returncode == 0, p.stdout + p.stderr
    c = subprocess.run(['qemu-img', 'compare', '-f', 'raw', '-F', 'qcow2', p2, outq],
                       capture_output=True, text=True, timeout=300)
    assert c.returncode == 0, c.stdout + c.stderr
    assert qemu_img_info(outq).get('backing-filename') is None


# ---- 1b. the guest never pauses: the bitmap reset is the snapshot point -----------------

def snapshot_position(initial, log, lo, hi, image):
    """The k in [lo, hi] for which `initial` with the first k writes of `log` equals
    `image` (the restored backup), or None."""
    state = bytearray(initial)
    for off, length, data in log[:lo]:
        state[off:off + length] = data
    for k in range(lo, hi + 1):
        if state == image:
            return k
        if k < len(log):
            off, length, data = log[k]
            state[off:off + length] = data
    return None


def test_bitmap_reset_is_atomic_with_the_snapshot_while_the_guest_never_pauses(tmp_path):
    """No pause around the snapshot: each restored point must be the disk after exactly
    the first k writes the guest completed (for some k while the CLI took the snapshot),
    and the increment must hold exactly the clusters of the writes between two such
    points: a write between the bitmap reset and the filter insertion would show up as a
    cluster missing from the increment (wrong data) or one too many."""
    size = 64 * MiB
    host = Host(tmp_path, size, seed=9)
    with open(host.disk, 'rb') as f:
        initial = f.read()
    host.start()
    writer = start_writer(host, seed=21, keep_data=True)
    points = []
    try:
        for name, args in (('full.raw', ['--bitmap', 'b']),
                           ('inc1.qcow2', ['--sync', 'incremental', '--bitmap', 'b', '--base', 'full.raw']),
                           ('inc2.qcow2', ['--sync', 'incremental', '--bitmap', 'b', '--base', 'inc1.qcow2'])):
            # At most ~300 writes up to this snapshot and ~40 after it: a window between
            # two snapshot points stays below the 1024 clusters of the walk, however slow
            # the machine (the writer idles at its budget, it never pauses around a point).
            writer.allow(300)
            writer.wait_for_writes(30)
            args = [str(tmp_path / a) if a.endswith(('.raw', '.qcow2')) else a for a in args]
            lo = len(writer.log)
            b = Backup(host, '--target', str(tmp_path / name), '--speed', '1', *args)
            b.wait_for('snapshot')
            writer.budget = max(writer.budget, len(writer.log) + 40)
            # The write in flight at the snapshot completed before it (drained), maybe not
            # yet logged: one more write makes sure it is.
            writer.wait_for_writes(2)
            hi = len(writer.log)
            writer.wait_for_writes(30)  # copy-before-write at work
            set_job_speed(host.d.qmp, 0)
            assert b.finish() == 0, (b.seen, b.stderr)
            points.append((name, lo, hi, b.summary))
        writer.pause()
    finally:
        writer.finish()
        host.stop()
    out = str(tmp_path / 'restored.raw')
    ks = []
    for name, lo, hi, summary in points:
        p = restore(str(tmp_path / name), out)
        assert p.returncode == 0, p.stderr
        with open(out, 'rb') as f:
            image = f.read()
        os.unlink(out)
        k = snapshot_position(initial, writer.log, lo, hi, image)
        assert k is not None, '%s is not the disk after any prefix of the guest writes' % name
        ks.append(k)
    for (name, _, _, summary), k_prev, k in zip(points[1:], ks, ks[1:]):
        want = clusters_of(writer.log[k_prev:k])
        # The walk did not wrap around within the window (else every cluster is in it and
        # the check could not see a misplaced write); the budgets make sure of it.
        assert len(want) < size // K64, len(want)
        assert overlay_clusters(str(tmp_path / name)) == want, name
        assert summary['dirty-bytes'] == len(want) * K64, (name, summary)


# ---- 2. kill -9 rounds: restore equals the disk, or "take a full backup" -----------------

@pytest.mark.parametrize('write_ahead', [False, True], ids=['clean-shutdown', 'write-ahead'])
def test_crash_rounds_never_restore_wrong_data(tmp_path, write_ahead):
    size = 8 * MiB
    host = Host(tmp_path, size, seed=5, write_ahead=write_ahead)
    rng = random.Random(2026)
    host.start()
    chain = []  # backups of the current chain, oldest first

    def full_backup(i):
        target = str(tmp_path / ('full%d.raw' % i))
        b = Backup(host, '--target', target, '--bitmap', 'chain')
        assert b.finish() == 0, (b.seen, b.stderr)
        assert b.summary['bitmap-persistent'] is True
        assert b.summary['bitmap-survives-crash'] is write_ahead
        chain[:] = [target]

    def guest_writes(count):
        h = nbd.NBD()
        h.connect_uri(host.uri)
        for _ in range(count):
            length = rng.choice([512, 4096, 65536, 150000])
            off = rng.randrange(0, size - length) // 512 * 512
            h.pwrite(rng.randbytes(length), off)
        h.flush()
        h.shutdown()

    full_backup(0)
    outcomes = {'restored': 0, 'full-required': 0}
    try:
        for i in range(1, 21):
            guest_writes(rng.randrange(1, 40))
            if i % 4 == 0:
                # A clean restart now and then: the chain must go on exactly.
                host.stop()
            else:
                # Writes may still be in flight inside the daemon when it dies.
                h = nbd.NBD()
                h.connect_uri(host.uri)
                for _ in range(rng.randrange(0, 8)):
                    off = rng.randrange(0, size - 4096) // 512 * 512
                    h.aio_pwrite(rng.randbytes(4096), off)
                host.crash()
                try:
                    h.shutdown()
                except Exception:  # noqa: BLE001 - the server is gone
                    pass
            host.start()
            guest_writes(rng.randrange(0, 10))
            expected = str(tmp_path / 'expected.raw')
            shutil.copyfile(host.disk, expected)  # no writer runs during this backup
            target = str(tmp_path / ('inc%d.qcow2' % i))
            b = Backup(host, '--target', target, '--sync', 'incremental', '--bitmap', 'chain',
                       '--base', chain[-1])
            rc = b.finish()
            assert host.leftovers() == []
            if rc == 0:
                chain.append(target)
                out = str(tmp_path / 'restored.raw')
                assert_restores_to(target, expected, out)
                outcomes['restored'] += 1
            else:
                # The only other acceptable outcome: a clear refusal, nothing written.
                assert rc == 1, (rc, b.seen, b.stderr)
                # The sidecar was left in use: its bitmaps load inconsistent; a bitmap that
                # was never saved (created since the last clean stop) is gone.
                err = b.summary['error']
                assert 'Take a full backup' in err, b.summary
                info = host.bitmap('chain')
                if info is None:
                    assert 'does not exist' in err, err
                else:
                    assert info['inconsistent'] is True and 'inconsistent' in err, (info, err)
                assert not os.path.exists(target)
                outcomes.setdefault('gone' if info is None else 'inconsistent', 0)
                outcomes['gone' if info is None else 'inconsistent'] += 1
                outcomes['full-required'] += 1
                full_backup(i)  # a new chain from an inconsistent bitmap
                info = host.bitmap('chain')
                assert info['recording'] and not info.get('inconsistent') and info['persistent']
    finally:
        host.stop()
    print('crash rounds:', outcomes)
    if write_ahead:
        # The change journal vouches for every write that reached the disk, crash or not:
        # the chain never breaks.
        assert outcomes == {'restored': 20, 'full-required': 0}, outcomes
    else:
        # Clean restarts keep the chain; crashes (clean-shutdown sidecar, ADR 0002) ask for
        # a full backup, or restore correctly should the bitmap survive them.
        assert outcomes['restored'] >= 5, outcomes
        assert outcomes['full-required'] >= 5, outcomes
        assert outcomes['restored'] + outcomes['full-required'] == 20


# ---- 3. the CLI refuses what it cannot do right -------------------------------------------

def test_incremental_refusals_and_a_failed_backup_keeps_every_change(tmp_path):
    size = 4 * MiB
    host = Host(tmp_path, size, sidecar=False)
    q = host.start()
    try:
        full = str(tmp_path / 'full.raw')

        def run(*args):
            return run_backup(host, *args)

        p = run('--target', str(tmp_path / 'x.qcow2'), '--sync', 'incremental', '--bitmap', 'nope',
                '--base', str(tmp_path / 'none.raw'))
        assert p.returncode == 1 and 'no such file' in p.stderr, p.stderr
        open(str(tmp_path / 'small.raw'), 'wb').close()
        p = run('--target', str(tmp_path / 'x.qcow2'), '--sync', 'incremental', '--bitmap', 'nope',
                '--base', str(tmp_path / 'small.raw'))
        assert p.returncode == 1 and 'does not exist' in p.stderr and 'full backup' in p.stderr, p.stderr
        p = run('--target', str(tmp_path / 'x.qcow2'), '--sync', 'incremental')
        assert p.returncode == 1 and '--bitmap' in p.stderr, p.stderr
        p = run('--target', str(tmp_path / 'x.qcow2'), '--sync', 'incremental', '--bitmap', 'b')
        assert p.returncode == 1 and '--base' in p.stderr, p.stderr
        p = run('--target', str(tmp_path / 'x.raw'), '--base', full)
        assert p.returncode == 1 and '--sync incremental' in p.stderr, p.stderr

        # No sidecar: the bitmap cannot be persistent; the run says so and goes on.
        p = run('--json', '--target', full, '--bitmap', 'b')
        assert p.returncode == 0, p.stdout + p.stderr
        lines = [json.loads(x) for x in p.stdout.splitlines()]
        summary = lines[-1]
        assert summary['ok'] and summary['bitmap-persistent'] is False
        assert any(m['event'] == 'warning' and 'x-block-dirty-bitmap-sidecar' in m['message'] for m in lines)
        assert not host.bitmap('b')['persistent']

        p = run('--target', str(tmp_path / 'x.qcow2'), '--sync', 'incremental', '--bitmap', 'b',
                '--base', str(tmp_path / 'small.raw'))
        assert p.returncode == 1 and 'not a backup of this disk' in p.stderr, p.stderr

        # A disabled bitmap missed changes: refused with the remedy.
        q.execute('block-dirty-bitmap-disable', node='disk', name='b')
        p = run('--target', str(tmp_path / 'x.qcow2'), '--sync', 'incremental', '--bitmap', 'b',
                '--base', full)
        assert p.returncode == 1 and 'disabled' in p.stderr and 'Take a full backup' in p.stderr, p.stderr
        q.execute('block-dirty-bitmap-enable', node='disk', name='b')

        # A backup that fails (Ctrl-C) gives the bitmap its changes back.
        h = nbd.NBD()
        h.connect_uri(host.uri)
        h.pwrite(b'\x01' * 4096, 0)
        h.pwrite(b'\x02' * 4096, 2 * MiB)
        before = host.bitmap('b')['count']
        assert before == 2 * K64
        inc = str(tmp_path / 'inc.qcow2')
        b = Backup(host, '--target', inc, '--sync', 'incremental', '--bitmap', 'b', '--base', full,
                   '--speed', '1')
        b.wait_for('started')
        h.pwrite(b'\x03' * 4096, 3 * MiB)  # after the snapshot point: the next increment's
        b.proc.send_signal(signal.SIGINT)
        assert b.finish() == 128 + signal.SIGINT
        assert any(m['event'] == 'bitmap-restored' for m in b.seen), b.seen
        assert host.bitmap('b')['count'] == 3 * K64
        assert not os.path.exists(inc)
        assert host.leftovers() == []

        # A fleece backup killed outright: the next run merges its frozen bitmap back.
        b = Backup(host, '--target', inc, '--sync', 'incremental', '--bitmap', 'b', '--base', full,
                   '--speed', '1')
        b.wait_for('started')
        b.proc.kill()
        b.proc.wait()
        assert host.bitmap('b')['count'] == 0  # frozen away while the run was alive
        os.unlink(inc)
        b = Backup(host, '--target', inc, '--sync', 'incremental', '--bitmap', 'b', '--base', full)
        assert b.finish() == 0, (b.seen, b.stderr)
        assert any(m['event'] == 'bitmap-restored' for m in b.seen), b.seen
        assert b.summary['dirty-bytes'] == 3 * K64
        assert host.leftovers() == []
        h.shutdown()
        # Only the newest backup can be the base: an increment on an older one would miss
        # the changes in between (both carry the chain point the bitmap was reset at).
        with open(inc + '.fleece-chain') as f:
            assert json.load(f)['bitmap'] == 'b'
        p = run('--target', str(tmp_path / 'inc2.qcow2'), '--sync', 'incremental', '--bitmap', 'b',
                '--base', full)
        assert p.returncode == 1 and 'not the newest backup' in p.stderr, p.stderr
        q.execute('block-dirty-bitmap-add', node='disk', name='other')
        p = run('--target', str(tmp_path / 'inc2.qcow2'), '--sync', 'incremental', '--bitmap', 'other',
                '--base', inc)
        assert p.returncode == 1 and "chain of bitmap 'b', not 'other'" in p.stderr, p.stderr
        assert not os.path.exists(str(tmp_path / 'inc2.qcow2'))
    finally:
        host.stop()
    out = str(tmp_path / 'out.raw')
    assert_restores_to(inc, host.disk, out)


def test_help_shows_chains_and_restore():
    p = subprocess.run([FLEECE, 'backup', '--help'], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and '--base' in p.stdout and '--sync incremental' in p.stdout
    p = subprocess.run([FLEECE, 'restore', '--help'], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and 'oldest' in p.stdout and '-p' in p.stdout, p.stdout


# ---- 4. restore refuses a broken chain ----------------------------------------------------

def qemu_img(*args):
    subprocess.run(['qemu-img', *args], check=True, capture_output=True, timeout=60)


def test_restore_refuses_broken_chains(tmp_path):
    def path(name):
        return str(tmp_path / name)
    qemu_img('create', '-f', 'raw', path('full.raw'), '4M')
    subprocess.run(['qemu-io', '-f', 'raw', '-c', 'write -P 1 0 4M', path('full.raw')], check=True,
                   capture_output=True)
    qemu_img('create', '-f', 'qcow2', '-b', 'full.raw', '-F', 'raw', path('inc1.qcow2'))
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 2 1M 64k', path('inc1.qcow2')], check=True,
                   capture_output=True)
    qemu_img('create', '-f', 'qcow2', '-b', 'inc1.qcow2', '-F', 'qcow2', path('inc2.qcow2'))
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 3 2M 64k', path('inc2.qcow2')], check=True,
                   capture_output=True)
    qemu_img('convert', '-O', 'raw', path('inc2.qcow2'), path('expected.raw'))
    out = path('out.raw')

    def refused(*args, needles):
        p = restore(*args, out)
        assert p.returncode == 1, p.stdout + p.stderr
        for n in needles:
            assert n in p.stderr, (n, p.stderr)
        assert not os.path.exists(out)

    # Good chain, newest or as a list.
    assert_restores_to(path('inc2.qcow2'), path('expected.raw'), out)
    p = restore(path('full.raw'), path('inc1.qcow2'), path('inc2.qcow2'), out)
    assert p.returncode == 0, p.stderr
    os.unlink(out)
    # Wrong order, a gap in the list, an increment first.
    refused(path('inc1.qcow2'), path('full.raw'), needles=['inc1.qcow2', 'not a full backup'])
    refused(path('full.raw'), path('inc2.qcow2'), needles=['inc2.qcow2', 'inc1.qcow2', 'listed before'])
    refused(path('full.raw'), path('inc2.qcow2'), path('inc1.qcow2'), needles=['inc2.qcow2', 'listed before'])
    # The existing output is never overwritten.
    open(out, 'wb').close()
    p = restore(path('inc2.qcow2'), out)
    assert p.returncode == 1 and 'already exists' in p.stderr
    os.unlink(out)

    # Missing middle.
    os.rename(path('inc1.qcow2'), path('moved.qcow2'))
    refused(path('inc2.qcow2'), needles=['inc2.qcow2', 'inc1.qcow2', 'missing'])
    refused(path('full.raw'), path('inc2.qcow2'), needles=['inc1.qcow2', 'missing'])
    os.rename(path('moved.qcow2'), path('inc1.qcow2'))

    # Size mismatch: an increment of another disk size on top of the full backup.
    qemu_img('create', '-f', 'qcow2', '-b', 'full.raw', '-F', 'raw', path('big.qcow2'), '8M')
    refused(path('big.qcow2'), needles=['big.qcow2', '8388608', '4194304', 'full.raw'])
    refused(path('full.raw'), path('big.qcow2'), needles=['big.qcow2', 'full.raw', 'bytes'])

    # Backing format recorded differently from the file.
    qemu_img('create', '-f', 'qcow2', '-b', 'full.raw', '-F', 'raw', path('fmt.qcow2'), '4M')
    qemu_img('rebase', '-u', '-f', 'qcow2', '-b', 'full.raw', '-F', 'qcow2', path('fmt.qcow2'))
    refused(path('fmt.qcow2'), needles=['fmt.qcow2', 'qcow2 format', 'raw'])

    # A loop.
    qemu_img('create', '-f', 'qcow2', path('a.qcow2'), '4M')
    qemu_img('create', '-f', 'qcow2', '-b', 'a.qcow2', '-F', 'qcow2', path('b.qcow2'))
    qemu_img('rebase', '-u', '-f', 'qcow2', '-b', 'b.qcow2', '-F', 'qcow2', path('a.qcow2'))
    refused(path('b.qcow2'), needles=['loop'])


# ---- 5. blockdev-replace as a transaction action (what the snapshot point relies on) ------

def test_blockdev_replace_in_a_transaction_is_undone_when_a_later_action_fails(tmp_path):
    size = 4 * MiB
    host = Host(tmp_path, size, sidecar=False)
    q = host.start()
    try:
        make_raw(str(tmp_path / 'temp.raw'), size)
        q.execute('blockdev-add', driver='file', filename=str(tmp_path / 'temp.raw'), **{'node-name': 'temp'})
        q.execute('blockdev-add', driver='copy-before-write', file='disk', target='temp',
                  **{'node-name': 'cbw'})
        replace = {'type': 'blockdev-replace',
                   'data': {'parent-type': 'export', 'id': 'guest', 'new-child': 'cbw'}}
        bad = {'type': 'block-dirty-bitmap-clear', 'data': {'node': 'disk', 'name': 'nope'}}
        reply = q.command('transaction', actions=[replace, bad])
        assert 'not found' in reply['error']['desc'], reply
        assert [e['node-name'] for e in q.execute('query-block-exports')] == ['disk']
        # Bad arguments are named before anything happens.
        reply = q.command('transaction', actions=[
            {'type': 'blockdev-replace', 'data': {'parent-type': 'export', 'id': 'zz', 'new-child': 'cbw'}}])
        assert "Export 'zz' is not found" in reply['error']['desc'], reply
        # A good one: the bitmap starts recording exactly when the filter is in.
        q.execute('transaction', actions=[
            {'type': 'block-dirty-bitmap-add', 'data': {'node': 'disk', 'name': 'b'}}, replace])
        assert [e['node-name'] for e in q.execute('query-block-exports')] == ['cbw']
        h = nbd.NBD()
        h.connect_uri(host.uri)
        h.pwrite(b'\x07' * 4096, 0)
        h.shutdown()
        assert host.bitmap('b')['count'] == K64
        q.execute('blockdev-replace', **{'parent-type': 'export', 'id': 'guest', 'new-child': 'disk'})
        q.execute('blockdev-del', **{'node-name': 'cbw'})
    finally:
        host.stop()


# ---- 6. an incremental to an NBD server exporting an overlay the user made ----------------

def test_incremental_to_an_nbd_export_of_a_user_made_overlay(tmp_path):
    size = 8 * MiB
    host = Host(tmp_path, size, seed=4)
    host.start()
    full, inc = str(tmp_path / 'full.raw'), str(tmp_path / 'inc.qcow2')
    server = None
    try:
        b = Backup(host, '--target', full, '--bitmap', 'b')
        assert b.finish() == 0, (b.seen, b.stderr)
        h = nbd.NBD()
        h.connect_uri(host.uri)
        writes = [(1 * MiB + 100, 5000), (5 * MiB, 65536), (7 * MiB + 4096, 512)]
        for off, length in writes:
            h.pwrite(os.urandom(length), off)
        h.flush()
        h.shutdown()
        qemu_img('create', '-f', 'qcow2', '-b', 'full.raw', '-F', 'raw', inc)
        sock = str(tmp_path / 'inc.sock')
        server = subprocess.Popen(['qemu-nbd', '-f', 'qcow2', '-k', sock, '--persistent', inc],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not os.path.exists(sock):
            assert server.poll() is None and time.monotonic() < deadline, 'qemu-nbd did not start'
            time.sleep(0.05)
        b = Backup(host, '--target', 'nbd+unix:///?socket=' + sock, '--sync', 'incremental',
                   '--bitmap', 'b')
        assert b.finish() == 0, (b.seen, b.stderr)
        assert b.summary['dirty-bytes'] == len(clusters_of(writes)) * K64
        p = run_backup(host, '--target', 'nbd+unix:///?socket=' + sock, '--sync', 'incremental',
                       '--bitmap', 'b', '--base', full, timeout=60)
        assert p.returncode == 1 and 'export a qcow2 overlay' in p.stderr, p.stderr
    finally:
        if server:
            server.terminate()
            server.wait(20)
        host.stop()
    assert overlay_clusters(inc) == clusters_of(writes)
    assert_restores_to(inc, host.disk, str(tmp_path / 'out.raw'))
