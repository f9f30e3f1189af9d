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
import anchor_qsd  # noqa: E402
import harness  # noqa: E402

WARM_S = 6.0     # the first phase is over well before this
PERIOD_S = 2.0   # running, paused, running, ...
SETTLE_S = 0.3   # buckets this close after a switch are not counted


def harness_args(a):
    """The anchor harness's own options, as its command line would give them."""
    argv = ['--qsd', a.daemon, '--runtime', str(a.runtime), '--rate', a.rate,
            '--s2-max-chunk', str(a.max_chunk)]
    if a.max_workers:
        argv += ['--max-workers', str(a.max_workers)]
    args = harness.build_parser(anchor_qsd.QsdDriver).parse_args(argv)
    args.size_bytes = harness.parse_size(args.size)
    return args


def one_run(args, golden, rundir):
    disk = os.path.join(rundir, 'disk.raw')
    harness.clone_disk(golden, disk)
    procs = harness.Procs()
    driver = anchor_qsd.QsdDriver(args, procs, rundir)
    try:
        # The benchmark's S2 graph and backup job, built by the harness's own driver.
        target = harness.NbdkitTarget(procs, rundir, args.size_bytes,
                                      delay_write=args.delay_write, rate=args.rate)
        driver.start()
        uri = driver.setup('S2', disk, target)
        driver.start_backup()
        out = os.path.join(rundir, 'fio.json')
        # The harness's guest, with IOPS in 100 ms buckets instead of seconds.
        argv = [x if not x.startswith('--log_avg_msec=') else '--log_avg_msec=100'
                for x in harness.fio_argv(args, uri, out)]
        t0 = time.monotonic()
        fio = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        switches = []  # (seconds since fio started, job running afterwards)
        time.sleep(WARM_S)
        running = True
        while time.monotonic() - t0 < args.runtime - PERIOD_S:
            driver.q('job-pause' if running else 'job-resume', {'id': 'bk'})
            running = not running
            switches.append((time.monotonic() - t0, running))
            time.sleep(PERIOD_S)
        if fio.wait() != 0:
            raise RuntimeError('fio failed (its output: %s)' % out)
        buckets = harness.parse_iops_log(out[:-len('.json')])
    finally:
        driver.stop()
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
    args = harness_args(a)
    ratios = []
    with tempfile.TemporaryDirectory() as wd:
        golden = os.path.join(wd, 'golden')
        harness.make_golden(golden, args.size_bytes, args.seed)
        for rep in range(a.reps):
            rundir = os.path.join(wd, 'run%d' % rep)
            os.makedirs(rundir)
            r = one_run(args, golden, rundir)
            print(json.dumps(r), flush=True)
            ratios.append(r['ratio'])
    print('guest IOPS with the job running / paused: median %.3f over %d runs'
          % (statistics.median(ratios), len(ratios)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
