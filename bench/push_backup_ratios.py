#!/usr/bin/env python3
"""Ratios for bench/push_backup_vs_qsd.sh: reads RESULTS_DIR/{qsd,fleeced,...}.jsonl."""

import json
import os
import statistics
import sys


def load(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def med(records, scn, key):
    vals = [r[key] for r in records if r['scenario'] == scn and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def link_MBps(records):
    # nbdkit's rate is bits/s with binary suffixes: 200M = 200 * 2^20 bit/s.
    for r in records:
        rate = str(r['cfg']['rate'])
        mult = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}.get(rate[-1:].upper(), 1)
        num = float(rate[:-1]) if rate[-1:].isalpha() else float(rate)
        return num * mult / 8 / 1e6
    return None


def steady_iops(records, scn, skip=3):
    """Median over runs of the mean per-second IOPS after the first `skip` seconds: the
    benchmark's ratio without the copy phase (every cluster's first write) at its start."""
    vals = [statistics.mean(r['iops_per_s'][skip:]) for r in records
            if r['scenario'] == scn and len(r.get('iops_per_s') or []) > skip]
    return statistics.median(vals) if vals else None


def fmt(v, digits=2):
    return '-' if v is None else ('%.*f' % (digits, v))


def main(d):
    sets = {name: load(os.path.join(d, name + '.jsonl'))
            for name in ('qsd', 'fleeced', 'fleeced-chunk0', 'fleeced-discard')}
    print('| run | scen | n | IOPS | p99 us | backup s | backup MB/s | fleece peak MiB | correct |')
    print('|---|---|---|---|---|---|---|---|---|')
    for name, recs in sets.items():
        for scn in ('S0', 'S1', 'S2'):
            rs = [r for r in recs if r['scenario'] == scn]
            if not rs:
                continue
            peak = med(recs, scn, 'fleece_peak_bytes')
            corr = [r.get('correct') for r in rs]
            print('| %s | %s | %d | %s | %s | %s | %s | %s | %s |' % (
                name, scn, len(rs), fmt(med(recs, scn, 'guest_iops'), 0),
                fmt(med(recs, scn, 'lat_p99_us'), 0), fmt(med(recs, scn, 'backup_seconds'), 1),
                fmt(med(recs, scn, 'backup_MBps'), 1),
                fmt(peak / 1048576 if peak is not None else None, 0),
                '-' if corr[0] is None else ('all' if all(corr) else '%d/%d' % (sum(map(bool, corr)), len(corr)))))
    f, q = sets['fleeced'], sets['qsd']
    link = link_MBps(f or q)
    print()
    print('ratios (medians):')
    rows = [
        ('fleeced S2 IOPS / fleeced S0 IOPS (target >= 0.9)', med(f, 'S2', 'guest_iops'), med(f, 'S0', 'guest_iops')),
        ('fleeced S2 IOPS / QSD S2 IOPS (target >= 1.3)', med(f, 'S2', 'guest_iops'), med(q, 'S2', 'guest_iops')),
        ('fleeced S2 p99 / fleeced S0 p99 (target <= 1.5)', med(f, 'S2', 'lat_p99_us'), med(f, 'S0', 'lat_p99_us')),
        ('fleeced S2 backup MB/s / link MB/s (target >= 0.95)', med(f, 'S2', 'backup_MBps'), link),
        ('fleeced S1 IOPS / fleeced S0 IOPS', med(f, 'S1', 'guest_iops'), med(f, 'S0', 'guest_iops')),
        ('QSD S2 IOPS / QSD S0 IOPS', med(q, 'S2', 'guest_iops'), med(q, 'S0', 'guest_iops')),
        ('QSD S1 IOPS / QSD S0 IOPS', med(q, 'S1', 'guest_iops'), med(q, 'S0', 'guest_iops')),
    ]
    rows.append(('fleeced S2 IOPS / fleeced S0 IOPS from second 4 on (without the copy phase)',
                 steady_iops(f, 'S2'), steady_iops(f, 'S0')))
    for label, a, b in rows:
        print('- %s: %s' % (label, fmt(a / b if a is not None and b else None, 3)))
    print('- link rate: %s MB/s' % fmt(link, 1))
    probes = load(os.path.join(d, 'probe.jsonl'))
    if probes:
        secs = statistics.median(p['copy_seconds'] for p in probes)
        bound = statistics.median(p['bound'] for p in probes)
        print('- copy phase floor (bench/copy_phase_probe.py, %d probes): the disk copies itself '
              'once in %.2f s, so S2/S0 can reach about %.3f at most' % (len(probes), secs, bound))


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else '.')
