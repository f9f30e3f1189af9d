#!/usr/bin/env python3
"""Writes one 4 KiB block into each of N clusters of an NBD export, in a seeded random
order, at a fixed queue depth (libnbd aio), then flushes. Every write of an empty qcow2
image allocates. Used by bench/qcow2_cpu_per_op.sh.

    nbd_cluster_writes.py URI COUNT [--cluster 65536] [--qd 8] [--seed 42] [--no-flush]
"""
import argparse
import random

import nbd

ap = argparse.ArgumentParser()
ap.add_argument("uri")
ap.add_argument("count", type=int)
ap.add_argument("--cluster", type=int, default=65536)
ap.add_argument("--qd", type=int, default=8)
ap.add_argument("--seed", type=int, default=42)
ap.add_argument("--no-flush", action="store_true")
a = ap.parse_args()

h = nbd.NBD()
h.connect_uri(a.uri)
clusters = h.get_size() // a.cluster
order = random.Random(a.seed).sample(range(clusters), min(a.count, clusters))
buf = nbd.Buffer.from_bytearray(bytearray(random.Random(a.seed).randbytes(4096)))
state = {"inflight": 0}


def done(err):
    state["inflight"] -= 1
    if err.value:
        raise SystemExit("write failed: errno %d" % err.value)
    return 1  # retire the command


i = 0
while i < len(order) or state["inflight"]:
    while i < len(order) and state["inflight"] < a.qd:
        h.aio_pwrite(buf, order[i] * a.cluster, completion=done)
        i += 1
        state["inflight"] += 1
    h.poll(-1)
if not a.no_flush:
    h.flush()
h.shutdown()
