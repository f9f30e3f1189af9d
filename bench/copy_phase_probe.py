#!/usr/bin/python3
"""How long this machine's disk needs to copy a whole disk once: the floor under the first
phase of a push backup with fleecing (issue 6).

Under the anchor benchmark's guest (4 KiB random writes over the whole disk for 20 s) every
cluster is written within the first seconds, so a copy-before-write filter has to read the
whole disk's old data and write it to the fleecing image then, whatever it does: the guest's
first write to a cluster cannot go on before that cluster is saved. The guest's writes
mostly wait meanwhile. This probe does the same amount of I/O with fio alone: it reads a
disk-sized file in 1 MiB random pieces while it writes as much to a freshly preallocated
file (the fleecing image's case: unwritten extents), both O_DIRECT, four requests each in
flight, and reports how long that took.

If the guest made no progress during the copy and ran at its S0 rate the rest of the time,
the S2/S0 ratio of a RUNTIME-second run would be at most (RUNTIME - copy seconds) / RUNTIME.
That is the `bound` printed: a rough ceiling to read the benchmark's ratio against, measured
in the same sitting (the disk's speed changes from minute to minute on a shared VM).

usage: bench/copy_phase_probe.py [--size-mib 1024] [--runtime 20] [--dir DIR] [--out FILE]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

MiB = 1 << 20


def make_source(path, size):
    # Written data (no holes), like the benchmark's disk; the content does not matter.
    with open(path, 'wb') as f:
        chunk = os.urandom(MiB)
        for _ in range(size // MiB):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def probe(workdir, size):
    src = os.path.join(workdir, 'source')
    dst = os.path.join(workdir, 'copy')
    make_source(src, size)
    with open(dst, 'wb') as f:
        os.posix_fallocate(f.fileno(), 0, size)
    out = os.path.join(workdir, 'fio.json')
    argv = ['fio', '--direct=1', '--ioengine=io_uring', '--bs=1M', '--iodepth=4',
            '--size=%d' % size, '--output-format=json', '--output=' + out,
            '--name=read-old', '--filename=' + src, '--rw=randread',
            '--name=save-old', '--filename=' + dst, '--rw=randwrite', '--fallocate=none',
            '--overwrite=1']
    t0 = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    with open(out) as f:
        jobs = json.load(f)['jobs']
    secs = max(j['job_runtime'] for j in jobs) / 1000.0
    read_mbps = jobs[0]['read']['bw_bytes'] / 1e6
    write_mbps = jobs[1]['write']['bw_bytes'] / 1e6
    return {'copy_seconds': round(secs, 2), 'read_MBps': round(read_mbps), 'write_MBps':
            round(write_mbps), 'wall_seconds': round(wall, 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--size-mib', type=int, default=1024)
    ap.add_argument('--runtime', type=int, default=20, help="the benchmark's fio seconds")
    ap.add_argument('--dir', default=None, help='work directory (default: a new one in /tmp)')
    ap.add_argument('--out', default=None, help='also append the JSON line to this file')
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as wd:
        r = probe(wd, a.size_mib * MiB)
    r['size_mib'] = a.size_mib
    r['bound'] = round(max(0.0, (a.runtime - r['copy_seconds']) / a.runtime), 3)
    line = json.dumps(r)
    print(line)
    if a.out:
        with open(a.out, 'a') as f:
            f.write(line + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
