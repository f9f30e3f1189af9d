#!/usr/bin/python3
"""Peak RSS of fleeced under a guest write storm against a slow fleecing target.

Graph: guest NBD export -> copy-before-write -> disk (raw file); CBW target = an nbdkit
memory disk behind the delay filter (every write takes --delay-ms). fio writes 1 MiB random
blocks through the export at a high queue depth, so nearly every guest write waits for a
slow copy. RSS is sampled from /proc every 20 ms; prints one JSON line per scenario.

usage: bench/fleecing_rss.py [--fleeced build/bin/fleeced] [--seconds 15] [--delay-ms 50]
                             [--size-mib 1024] [--only-timeout] [--short]
Each scenario prints one JSON line and one '# ...' line for people.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests', 'e2e'))
from fleece_testlib import Daemon, make_raw  # noqa: E402

MiB = 1 << 20


def rss_kib(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    return 0


def hwm_kib(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1])
    return 0


def fio_counts(fio):
    """What the guest saw, summed over fio's jobs (one job = one NBD connection).

    fio's nbd engine stops a job at its first failed write even with continue_on_error (the
    job's "error" field holds the errno, its total_err stays 0), and every failed write is
    logged as an "io_u error" line on stderr. So failed writes are counted from those lines,
    stopped connections from the jobs' error fields, and completed writes from the jobs'
    byte counters (io_bytes counts only writes that succeeded; total_ios counts
    failed ones too)."""
    out = {'guest_written_mib': 0, 'guest_writes_ok': 0, 'guest_write_errors': 0,
           'guest_connections_failed': 0, 'guest_error_names': []}
    failed_lines = [l for l in fio.stderr.splitlines() if 'io_u error' in l]
    out['guest_write_errors'] = len(failed_lines)
    names = set()
    for l in failed_lines:
        # "fio: io_u error on file storm.0.0: Invalid argument: write offset=..., buflen=..."
        parts = l.split(': ')
        if len(parts) >= 3:
            names.add(parts[2])
    tolerated = 0
    text = fio.stdout
    if '{' in text:
        try:
            report = json.loads(text[text.index('{'):])
        except ValueError:
            report = {'jobs': []}
        for job in report.get('jobs', []):
            out['guest_written_mib'] += job['write']['io_bytes'] // MiB
            out['guest_writes_ok'] += job['write']['io_bytes'] // MiB  # bs is 1 MiB
            tolerated += job.get('total_err', 0)
            if job.get('error', 0):
                out['guest_connections_failed'] += 1
                names.add(os.strerror(job['error']))
    # Errors fio tolerated are in total_err; the ones that stopped a job only on stderr.
    # Each failed write is in at least one of the two, so the larger count is the closer one.
    out['guest_write_errors'] = max(out['guest_write_errors'], tolerated)
    out['guest_error_names'] = sorted(names)
    return out


def summary_line(r):
    errors = 'no failed guest writes'
    if r['guest_write_errors'] or r['guest_connections_failed']:
        errors = '%d guest writes failed (%s), %d of %d connections stopped by an error' % (
            r['guest_write_errors'], ', '.join(r['guest_error_names']) or '?',
            r['guest_connections_failed'], r['guest_connections'])
    return ('# %s: %d connection(s) x iodepth %d, %d ms per fleecing write, %d s: %d writes OK '
            '(%d MiB), %s; RSS %d MiB at start, peak %d MiB (VmHWM %d MiB); daemon stop %.1f s, '
            'exit %s' % (r['scenario'], r['guest_connections'], r['iodepth'], r['delay_ms'],
                         r['seconds'], r['guest_writes_ok'], r['guest_written_mib'], errors,
                         r['rss_start_mib'], r['rss_peak_mib'], r['vmhwm_mib'], r['stop_seconds'],
                         r['exit']))


def scenario(args, work, name, cbw_extra, iodepth, jobs, delay_ms=None):
    delay_ms = delay_ms or args.delay_ms
    disk = os.path.join(work, name + '.raw')
    make_raw(disk, args.size_mib * MiB)
    sock_slow = os.path.join(work, name + '-slow.sock')
    nbdkit = subprocess.Popen(['nbdkit', '--exit-with-parent', '-f', '-U', sock_slow,
                               '--filter=delay', 'memory', '%dM' % args.size_mib,
                               'delay-write=%dms' % delay_ms, 'delay-zero=%dms' % delay_ms])
    while not os.path.exists(sock_slow):
        time.sleep(0.02)
    d = Daemon(work, binary=args.fleeced)
    q = d.qmp
    q.execute('blockdev-add', driver='file', filename=disk, **{'node-name': 'disk'})
    q.execute('blockdev-add', driver='raw', **{'node-name': 'slow',
              'file': {'driver': 'nbd', 'server': {'type': 'unix', 'path': sock_slow}}})
    cbw = {'driver': 'copy-before-write', 'node-name': 'fl-cbw', 'file': 'disk', 'target': 'slow'}
    cbw.update(cbw_extra)
    q.execute('blockdev-add', **cbw)
    sock = os.path.join(work, name + '-nbd.sock')
    q.execute('nbd-server-start', addr={'type': 'unix', 'data': {'path': sock}})
    q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True, **{'node-name': 'fl-cbw'})
    pid = d.proc.pid
    base = rss_kib(pid)
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.02)

    t = threading.Thread(target=sample)
    t.start()
    fio = subprocess.run(
        ['fio', '--name=storm', '--ioengine=nbd', '--uri=nbd+unix:///guest?socket=' + sock,
         '--rw=randwrite', '--bs=1M', '--iodepth=%d' % iodepth, '--numjobs=%d' % jobs,
         '--size=%dM' % args.size_mib, '--time_based', '--runtime=%d' % args.seconds,
         '--output-format=json', '--continue_on_error=all'], capture_output=True, text=True)
    stop.set()
    t.join()
    hwm = hwm_kib(pid)
    t0 = time.monotonic()
    rc = d.stop()
    stop_s = time.monotonic() - t0
    nbdkit.terminate()
    nbdkit.wait()
    counts = fio_counts(fio)
    if counts['guest_writes_ok'] == 0 and counts['guest_write_errors'] == 0:
        print('fio:', fio.stdout[-600:], fio.stderr[-600:], file=sys.stderr)
    result = {'scenario': name, 'guest_connections': jobs, 'iodepth': iodepth,
              'delay_ms': delay_ms, 'seconds': args.seconds}
    result.update(counts)
    result.update({'rss_start_mib': base // 1024, 'rss_peak_mib': peak[0] // 1024,
                   'vmhwm_mib': hwm // 1024, 'exit': rc, 'stop_seconds': round(stop_s, 2)})
    print(json.dumps(result))
    print(summary_line(result))
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--fleeced', default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                       '..', 'build', 'bin', 'fleeced'))
    ap.add_argument('--seconds', type=int, default=15)
    ap.add_argument('--delay-ms', type=int, default=50)
    ap.add_argument('--size-mib', type=int, default=1024)
    ap.add_argument('--timeout-delay-ms', type=int, default=1500)
    ap.add_argument('--only-timeout', action='store_true')
    ap.add_argument('--short', action='store_true', help='3 s per scenario on a 256 MiB disk')
    args = ap.parse_args()
    if args.short:
        args.seconds, args.size_mib = 3, 256
    with tempfile.TemporaryDirectory() as work:
        if not args.only_timeout:
            scenario(args, work, 'no-timeout', {}, 64, 4)
            scenario(args, work, 'one-connection', {}, 64, 1)
        # Every copy times out: the guest's writes fail (break-guest-write) and the copies
        # go on in the background; the storm keeps coming.
        # The copies take --timeout-delay-ms (above the 1 s cbw-timeout) so each one times out.
        scenario(args, work, 'timeout', {'cbw-timeout': 1}, 64, 4, args.timeout_delay_ms)


if __name__ == '__main__':
    main()
