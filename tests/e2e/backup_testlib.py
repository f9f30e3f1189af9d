"""Helpers for the backup e2e tests: nbdkit targets, a fio guest, job event sequences."""

import json
import os
import queue
import shutil
import subprocess
import threading
import time

import pytest

from fleece_testlib import FLEECE, Daemon, allocated

MiB = 1 << 20


@pytest.fixture
def env(tmp_path):
    """A daemon in tmp_path, and a list for the helper processes (Nbdkit...) a test starts:
    all stopped afterwards."""
    procs = []
    d = Daemon(tmp_path)
    yield d, tmp_path, procs
    d.stop()
    for p in procs:
        p.stop()


def wait_for_socket(path, proc, timeout=20):
    """Waits until the server accepts connections (the file may exist before listen())."""
    import socket
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError('process exited with %s before listening on %s' % (proc.returncode, path))
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError('nobody listens on %s' % path)
            time.sleep(0.02)
        finally:
            s.close()


class Nbdkit:
    """nbdkit serving on a unix socket; `args` are the plugin and its parameters."""

    def __init__(self, workdir, name, args, filters=()):
        self.sock = os.path.join(str(workdir), name + '.sock')
        self.log = open(os.path.join(str(workdir), name + '.log'), 'w')
        argv = ['nbdkit', '-f', '--exit-with-parent', '-U', self.sock]
        for f in filters:
            argv.append('--filter=' + f)
        argv += list(args)
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_socket(self.sock, self.proc)

    def blockdev(self, node_name):
        return {'driver': 'nbd', 'node-name': node_name,
                'server': {'type': 'unix', 'path': self.sock}, 'export': ''}

    def copy_to(self, path):
        subprocess.run(['nbdcopy', 'nbd+unix:///?socket=' + self.sock, path], check=True,
                       timeout=120)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class FioGuest:
    """fio's nbd engine writing 4 KiB random blocks to an export until stopped."""

    def __init__(self, workdir, uri, runtime=60, seed=1, size=None):
        self.out = os.path.join(str(workdir), 'fio.json')
        argv = ['fio', '--name=guest', '--ioengine=nbd', '--uri=' + uri, '--rw=randwrite',
                '--bs=4k', '--iodepth=8', '--direct=1', '--time_based',
                '--runtime=%d' % runtime, '--norandommap', '--randseed=%d' % seed,
                '--output-format=json', '--output=' + self.out]
        if size:
            argv.append('--size=%d' % size)
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self):
        """Ends the guest; returns fio's result (asserting it saw no I/O error)."""
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: fio stops and writes its report
        _, err = self.proc.communicate(timeout=60)
        import json
        with open(self.out) as f:
            text = f.read()
        # fio may print notes before the JSON object.
        report = json.loads(text[text.index('{'):])
        job = report['jobs'][0]
        assert job['error'] == 0, (job['error'], err)
        assert job['write']['total_ios'] > 0, 'the guest wrote nothing'
        return job


def qemu_img_compare(a, b, fmt_a='raw', fmt_b='raw'):
    p = subprocess.run(['qemu-img', 'compare', '-f', fmt_a, '-F', fmt_b, a, b],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr


def copy_file(src, dst):
    shutil.copyfile(src, dst)


def random_fill(path, size, seed=7):
    """A disk with non-zero, position-dependent content (so misplaced data shows)."""
    import random
    rng = random.Random(seed)
    with open(path, 'wb') as f:
        left = size
        while left:
            n = min(left, MiB)
            f.write(rng.randbytes(n))
            left -= n


def job_events(qmp, job_id, until, timeout=300):
    """Reads events until one satisfies `until(event)`; returns the job's events in order
    as short names: statuses for JOB_STATUS_CHANGE, else the event name."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        i = 0
        while i < len(qmp.events):
            ev = qmp.events[i]
            d = ev.get('data', {})
            if d.get('id') != job_id and d.get('device') != job_id:
                i += 1  # another job's: left for its own reader
                continue
            qmp.events.pop(i)
            seen.append(ev)
            if until(ev):
                return seen
        if not qmp.read_before(deadline):
            raise TimeoutError('job %s: no final event; saw %s' % (job_id, names(seen)))


def discard_source_backup(qmp, tmp, fleece, size):
    """Pushes node 'snap' to a fresh nbdkit memory target with discard-source at 16 MiB/s,
    sampling the fleecing file's allocation every 0.1 s while the job runs. Asserts the job
    completed without error; returns the target server (still running) and the samples."""
    srv = Nbdkit(tmp, 'target', ['memory', str(size)])
    qmp.execute('blockdev-add', **srv.blockdev('target'))
    qmp.execute('blockdev-backup', device='snap', target='target', sync='full',
                speed=16 * 1024 * 1024, **{'job-id': 'bk', 'discard-source': True})
    samples = []
    while qmp.execute('query-jobs'):
        samples.append(allocated(fleece))
        time.sleep(0.1)
    evs = job_events(qmp, 'bk', until_status('null'))
    done = [e['data'] for e in evs if e['event'] == 'BLOCK_JOB_COMPLETED'][0]
    assert 'error' not in done and done['offset'] == done['len'] == size, done
    return srv, samples


def names(events):
    return [e['data']['status'] if e['event'] == 'JOB_STATUS_CHANGE' else e['event']
            for e in events]


def until_status(status):
    return lambda ev: ev['event'] == 'JOB_STATUS_CHANGE' and ev['data']['status'] == status


def wait_started(qmp, job_id):
    """Consumes a blockdev-backup job's start events: created, running, then the
    paused/running pair of the drain it was started in (§4.2, as QEMU 7.2 reports it)."""
    evs = job_events(qmp, job_id, until_status('running'))
    evs += job_events(qmp, job_id, until_status('running'))
    assert names(evs) == ['created', 'running', 'paused', 'running'], names(evs)
    return evs


def without_drain_pauses(seq):
    """Drains may add paused/running pairs (§7: assert order, not counts)."""
    out = []
    for s in seq:
        if s == 'running' and out and out[-1] == 'paused':
            out.pop()
            continue
        out.append(s)
    return out


def export_children(qmp):
    """Node names that block-backends (exports) sit on, from x-debug-query-block-graph."""
    g = qmp.execute('x-debug-query-block-graph')
    nodes = {n['id']: n for n in g['nodes']}
    return sorted(nodes[e['child']]['name'] for e in g['edges']
                  if nodes[e['parent']]['type'] == 'block-backend')


def node_names(qmp):
    return sorted(n['node-name'] for n in qmp.execute('query-named-block-nodes'))


class BackupCli:
    """A running `fleece backup --json ARGS`, its JSON lines collected as they come."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([FLEECE, 'backup', '--json', *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def wait_for(self, event, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            msg = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert msg is not None, 'fleece backup exited before %s: %s %s' % (
                event, self.seen, self.proc.stderr.read())
            self.seen.append(msg)
            if msg['event'] == event:
                return msg

    def finish(self, timeout):
        """Waits for the exit; collects the remaining lines and stderr. Returns the exit code."""
        rc = self.proc.wait(timeout)
        while True:
            msg = self.lines.get(timeout=10)
            if msg is None:
                break
            self.seen.append(msg)
        self.stderr = self.proc.stderr.read()
        return rc


class CachingTarget:
    """nbdkit serving a file through its cache filter in writeback mode: writes wait in a
    temporary cache until a flush, and a killed server loses them, as a real server with
    a volatile write cache does."""

    def __init__(self, tmp_path, size):
        self.sock = str(tmp_path / 'kit.sock')
        self.path = str(tmp_path / 'target.raw')
        with open(self.path, 'wb') as f:
            f.truncate(size)
        self.start()

    def start(self):
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        self.proc = subprocess.Popen(['nbdkit', '-f', '-U', self.sock, '--filter=cache', 'file',
                                      self.path, 'cache=writeback'],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.sock):
            assert time.monotonic() < deadline, 'nbdkit did not start'
            time.sleep(0.02)

    def crash(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait()
