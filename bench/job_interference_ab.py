#!/usr/bin/python3
"""What a running push-backup job costs the guest, measured inside one run.

Ratios between separate runs (S2 against S0 in bench/push_backup_vs_qsd.sh) carry the noise
of a shared VM's disk, whose speed drifts by 10-20% from one minute to the next. This A/B
holds everything else still: the anchor benchmark's S2 graph (disk, copy-before-write filter
with a qcow2 fleecing image, snapshot-access, a backup job to nbdkit memory behind a 2 ms
write delay and a rate limit), the harness's guest (fio, 4 KiB random writes at queue depth
8), and, once the first phase (every cluster's first copy) is over, the job is paused and
resumed every PERIOD seconds. fio's IOPS in 100 ms buckets are split by the job's state,
skipping the 300 ms after each switch, and the ratio running/paused is the job's own cost.

    python3 bench/job_interference_ab.py [--daemon build/bin/fleeced] [--runtime 40]
        [--rate 200M] [--max-chunk 65536] [--max-workers N] [--reps 2]

Prints one JSON line per run and the median ratio. Needs qemu-img, nbdkit and fio; the
harness comes from ../shared/bench (or ANCHOR_DIR).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.environ.get('ANCHOR_DIR',
                       os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..',
                                    'shared', 'bench'))
sys.path.insert(0, os.path.abspath(BENCH))
import harness  # noqa: E402

GiB = 1 << 30
WARM_S = 6.0     # the first phase is over well before this
PERIOD_S = 2.0   # running, paused, running, ...
SETTLE_S = 0.3   # buckets this close after a switch are not counted


def file_node(name, path):
    return {'driver': 'file', 'node-name': name, 'filename': path,
            'cache': {'direct': True, 'no-flush': False}, 'aio': 'native'}


def one_run(a, golden, rundir):
    disk = os.path.join(rundir, 'disk.raw')
    harness.clone_disk(golden, disk)
    procs = harness.Procs()
    try:
        target = harness.NbdkitTarget(procs, rundir, GiB, delay_write='2ms', rate=a.rate)
        qmp = os.path.join(rundir, 'qmp.sock')
        nbd = os.path.join(rundir, 'nbd.sock')
        log = open(os.path.join(rundir, 'daemon.log'), 'w')
        procs.spawn('daemon', [a.daemon, '--chardev',
                               'socket,id=q,path=%s,server=on,wait=off' % qmp,
                               '--monitor', 'chardev=q,mode=control'], stdout=log, stderr=log)
        c = harness.JsonControl(qmp)
        fleece = os.path.join(rundir, 'fleece.qcow2')
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', fleece, str(GiB)], check=True)
        for cmd, args in [
                ('blockdev-add', file_node('disk', disk)),
                ('blockdev-add', {'driver': 'nbd', 'node-name': 'remote', 'export': '',
                                  'server': {'type': 'unix', 'path': target.sock}}),
                ('blockdev-add', file_node('fleece-file', fleece)),
                ('blockdev-add', {'driver': 'qcow2', 'node-name': 'fleece', 'file': 'fleece-file'}),
                ('blockdev-add', {'driver': 'copy-before-write', 'node-name': 'cbw',
                                  'file': 'disk', 'target': 'fleece'}),
                ('blockdev-add', {'driver': 'snapshot-access', 'node-name': 'snap', 'file': 'cbw'}),
                ('nbd-server-start', {'addr': {'type': 'unix', 'data': {'path': nbd}}}),
                ('block-export-add', {'type': 'nbd', 'id': 'guest', 'node-name': 'cbw',
                                      'name': 'guest', 'writable': True})]:
            c.execute(cmd, args)
        perf = {'max-chunk': a.max_chunk}
        if a.max_workers:
            perf['max-workers'] = a.max_workers
        c.execute('blockdev-backup', {'job-id': 'bk', 'device': 'snap', 'target': 'remote',
                                      'sync': 'full', 'x-perf': perf})
        out = os.path.join(rundir, 'fio')
        t0 = time.monotonic()
        fio = subprocess.Popen(
            ['fio', '--name=guest', '--ioengine=nbd', '--uri=nbd+unix:///guest?socket=' + nbd,
             '--rw=randwrite', '--bs=4k', '--iodepth=8', '--direct=1', '--time_based',
             '--runtime=%d' % a.runtime, '--norandommap', '--randrepeat=1',
             '--output-format=json', '--output=' + out + '.json',
             '--write_iops_log=' + out, '--log_avg_msec=100'], stdout=subprocess.DEVNULL)
        switches = []  # (seconds since fio started, job running afterwards)
        time.sleep(WARM_S)
        running = True
        while time.monotonic() - t0 < a.runtime - PERIOD_S:
            c.execute('job-pause' if running else 'job-resume', {'id': 'bk'})
            running = not running
            switches.append((time.monotonic() - t0, running))
            time.sleep(PERIOD_S)
        if fio.wait() != 0:
            raise RuntimeError('fio failed')
        buckets = harness.parse_iops_log(out)
        try:
            c.execute('quit')
        except (harness.ControlError, OSError):
            pass
    finally:
        procs.stop_all()

    def state(end_s):
        # The job's state over the bucket (end_s - 0.1, end_s], None if it switched within
        # it or less than SETTLE_S before it.
        current = None
        for at, after in switches:
            if end_s - 0.1 >= at + SETTLE_S:
                current = after
            elif end_s > at:
                return None
        return current

    run = [iops for i, iops in enumerate(buckets) if state((i + 1) * 0.1) is True]
    paused = [iops for i, iops in enumerate(buckets) if state((i + 1) * 0.1) is False]
    return {'running_iops': round(statistics.mean(run)), 'paused_iops': round(statistics.mean(paused)),
            'running_buckets': len(run), 'paused_buckets': len(paused),
            'ratio': round(statistics.mean(run) / statistics.mean(paused), 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--daemon', default='build/bin/fleeced')
    ap.add_argument('--runtime', type=int, default=40)
    ap.add_argument('--rate', default='200M', help="nbdkit rate filter (the harness's default)")
    ap.add_argument('--max-chunk', type=int, default=65536, help="the harness's S2 default")
    ap.add_argument('--max-workers', type=int, default=None)
    ap.add_argument('--reps', type=int, default=2)
    a = ap.parse_args()
    ratios = []
    with tempfile.TemporaryDirectory() as wd:
        golden = os.path.join(wd, 'golden')
        harness.make_golden(golden, GiB, 1)
        for rep in range(a.reps):
            rundir = os.path.join(wd, 'run%d' % rep)
            os.makedirs(rundir)
            r = one_run(a, golden, rundir)
            print(json.dumps(r), flush=True)
            ratios.append(r['ratio'])
    print('guest IOPS with the job running / paused: median %.3f over %d runs'
          % (statistics.median(ratios), len(ratios)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
