#!/usr/bin/python3
"""What crash-safe change tracking costs the guest: fio 4 KiB random writes at queue depth 8
through fleeced's NBD export of a raw disk (O_DIRECT), with a persistent dirty bitmap kept

  none        without a sidecar (the bitmap in memory only)
  clean       in a clean-shutdown sidecar (ADR 0002; a crash needs a full backup)
  wa-1m       in a write-ahead sidecar, 1 MiB journal regions (the default)
  wa-64k      in a write-ahead sidecar, 64 KiB journal regions

Each run starts a fresh daemon and a fresh bitmap, so the journal starts empty and the run
includes the first write of every region (the worst case: a new backup cycle under a
random-write storm). Configurations are interleaved, --reps times; prints the medians, the
ratio to `none`, the IOPS of the first second (when the marks are made) and the journal's
syncs.

usage: bench/write_ahead_cost.py [--fleeced build/bin/fleeced] [--size-mib 1024]
                                 [--runtime 20] [--reps 3] [--dir DIR]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests', 'e2e'))
from fleece_testlib import Daemon  # noqa: E402

MiB = 1 << 20
CONFIGS = {
    'none': None,
    'clean': {},
    'wa-1m': {'write-ahead': True},
    'wa-64k': {'write-ahead': True, 'journal-granularity': 64 * 1024},
}


def make_disk(path, size):
    # Allocated and written once, so the guest's writes overwrite in place in every run.
    with open(path, 'wb') as f:
        chunk = b'\x5a' * MiB
        for _ in range(size // MiB):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def one_run(args, workdir, disk, config):
    sock = os.path.join(workdir, 'nbd.sock')
    for leftover in (sock, os.path.join(workdir, 'qmp.sock')):
        if os.path.exists(leftover):
            os.unlink(leftover)
    sidecar = disk + '.bitmaps'
    for f in (sidecar, sidecar + '.journal'):
        if os.path.exists(f):
            os.unlink(f)
    d = Daemon(workdir, ['--blockdev', 'driver=file,node-name=disk,filename=%s,cache.direct=on,'
                                       'aio=native' % disk,
                         '--nbd-server', 'addr.type=unix,addr.path=' + sock],
               binary=args.fleeced)
    try:
        q = d.qmp
        if CONFIGS[config] is not None:
            q.execute('x-block-dirty-bitmap-sidecar', node='disk', path=sidecar, **CONFIGS[config])
        q.execute('block-dirty-bitmap-add', node='disk', name='b', granularity=64 * 1024,
                  persistent=CONFIGS[config] is not None)
        q.execute('block-export-add', type='nbd', id='guest', name='guest', writable=True,
                  **{'node-name': 'disk'})
        out = os.path.join(workdir, 'fio.json')
        subprocess.run(['fio', '--name=guest', '--ioengine=nbd',
                        '--uri=nbd+unix:///guest?socket=' + sock, '--rw=randwrite', '--bs=4k',
                        '--iodepth=8', '--direct=1', '--time_based',
                        '--runtime=%d' % args.runtime, '--norandommap', '--randrepeat=1',
                        '--output-format=json', '--output=' + out,
                        '--write_iops_log=' + out[:-len('.json')], '--log_avg_msec=1000'],
                       check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            w = json.load(f)['jobs'][0]['write']
        side = None
        for n in q.execute('query-named-block-nodes', flat=True):
            if n['node-name'] == 'disk':
                side = n.get('x-bitmap-sidecar')
        journal = (side or {}).get('journal', {})
        with open(out[:-len('.json')] + '_iops.1.log') as f:
            per_second = [int(line.split(',')[1]) for line in f if line.strip()]
        return {'config': config, 'iops': w['iops'], 'first_second_iops': per_second[0],
                'p99_us': w['clat_ns']['percentile']['99.000000'] / 1000.0,
                'journal_syncs': journal.get('syncs', 0),
                'marked_regions': journal.get('marked-regions', 0)}
    finally:
        d.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--fleeced', default=os.path.join(os.path.dirname(__file__), '..', 'build',
                                                      'bin', 'fleeced'))
    ap.add_argument('--size-mib', type=int, default=1024)
    ap.add_argument('--runtime', type=int, default=20)
    ap.add_argument('--reps', type=int, default=3)
    ap.add_argument('--dir', default=None, help='work directory (default: a temporary one)')
    args = ap.parse_args()
    workdir = args.dir or tempfile.mkdtemp(prefix='fleece-wa-cost-')
    os.makedirs(workdir, exist_ok=True)
    disk = os.path.join(workdir, 'disk.raw')
    make_disk(disk, args.size_mib * MiB)
    runs = []
    for rep in range(args.reps):
        for config in CONFIGS:
            r = one_run(args, workdir, disk, config)
            r['rep'] = rep
            print(json.dumps(r), flush=True)
            runs.append(r)
    base = statistics.median(r['iops'] for r in runs if r['config'] == 'none')
    base_p99 = statistics.median(r['p99_us'] for r in runs if r['config'] == 'none')
    print('\n| config | IOPS (median of %d) | x none | p99 us | x none | 1st second IOPS | '
          'journal syncs |' % args.reps)
    print('|---|---|---|---|---|---|---|')
    for config in CONFIGS:
        rs = [r for r in runs if r['config'] == config]
        iops = statistics.median(r['iops'] for r in rs)
        p99 = statistics.median(r['p99_us'] for r in rs)
        syncs = statistics.median(r['journal_syncs'] for r in rs)
        first = statistics.median(r['first_second_iops'] for r in rs)
        print('| %s | %.0f (%s) | %.3f | %.0f | %.2f | %.0f | %.0f |' % (
            config, iops, ', '.join('%.0f' % r['iops'] for r in rs), iops / base, p99,
            p99 / base_p99, first, syncs))


if __name__ == '__main__':
    main()
