#!/usr/bin/python3
"""Peak RSS of fleeced under a guest write storm against a slow fleecing target.

Graph: guest NBD export -> copy-before-write -> disk (raw file); CBW target = an nbdkit
memory disk behind the delay filter (every write takes --delay-ms). fio writes 1 MiB random
blocks through the export at a high queue depth, so nearly every guest write waits for a
slow copy. RSS is sampled from /proc every 20 ms; prints one JSON line per scenario.

usage: bench/fleecing_rss.py [--fleeced build/bin/fleeced] [--seconds 15] [--delay-ms 50]
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


def scenario(args, work, name, cbw_extra, iodepth, jobs):
    disk = os.path.join(work, name + '.raw')
    make_raw(disk, args.size_mib * MiB)
    sock_slow = os.path.join(work, name + '-slow.sock')
    nbdkit = subprocess.Popen(['nbdkit', '--exit-with-parent', '-f', '-U', sock_slow,
                               '--filter=delay', 'memory', '%dM' % args.size_mib,
                               'delay-write=%dms' % args.delay_ms, 'delay-zero=%dms' % args.delay_ms])
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
         '--group_reporting', '--output-format=json', '--continue_on_error=all'], capture_output=True, text=True)
    stop.set()
    t.join()
    hwm = hwm_kib(pid)
    t0 = time.monotonic()
    rc = d.stop()
    stop_s = time.monotonic() - t0
    nbdkit.terminate()
    nbdkit.wait()
    written = 0
    errors = 0
    if fio.returncode == 0 or fio.stdout.strip().startswith('{'):
        try:
            r = json.loads(fio.stdout[fio.stdout.index('{'):])
            written = r['jobs'][0]['write']['io_bytes']
            errors = r['jobs'][0]['total_err']
        except (ValueError, KeyError):
            pass
    if not written:
        print('fio:', fio.stdout[-600:], fio.stderr[-600:], file=sys.stderr)
    print(json.dumps({'scenario': name, 'guest_connections': jobs, 'iodepth': iodepth,
                      'delay_ms': args.delay_ms, 'seconds': args.seconds,
                      'guest_written_mib': written // MiB, 'guest_write_errors': errors,
                      'rss_start_mib': base // 1024, 'rss_peak_mib': peak[0] // 1024,
                      'vmhwm_mib': hwm // 1024, 'exit': rc, 'stop_seconds': round(stop_s, 2)}))
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--fleeced', default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                       '..', 'build', 'bin', 'fleeced'))
    ap.add_argument('--seconds', type=int, default=15)
    ap.add_argument('--delay-ms', type=int, default=50)
    ap.add_argument('--size-mib', type=int, default=1024)
    ap.add_argument('--only-timeout', action='store_true')
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        if not args.only_timeout:
            scenario(args, work, 'no-timeout', {}, 64, 4)
            scenario(args, work, 'one-connection', {}, 64, 1)
        # Every copy times out: the guest's writes fail (break-guest-write) and the copies
        # go on in the background; the storm keeps coming.
        scenario(args, work, 'timeout', {'cbw-timeout': 1}, 64, 4)


if __name__ == '__main__':
    main()
