#!/usr/bin/env bash
# CPU time and file syncs per operation of the qcow2 driver, fleeced vs
# qemu-storage-daemon, measured with what machine load does not distort much: the
# server's task-clock (all its threads, perf stat) per request and the number of
# fsync/fdatasync calls that reached ext4 (tracepoint ext4:ext4_sync_file_enter, counted
# for the server's threads, io_uring workers included). The server is started for each
# workload on its own, over the image the previous workload left.
#
#   bash bench/qcow2_cpu_per_op.sh                 # both servers, about a minute
#   SERVERS=fleece bash bench/qcow2_cpu_per_op.sh
#   COUNT=4096 bash bench/qcow2_cpu_per_op.sh      # shorter
#
# Workloads: alloc4k = COUNT (default 16384) 4 KiB writes, one into each of COUNT random
# 64 KiB clusters of an empty 1 GiB image (each one allocates), queue depth 8, then one
# flush; overwrite4k = the same writes again; seqwrite1m = 1 GiB in 1 MiB writes into an
# empty image at QD 4, then a flush; seqread1m = reading it back. wall = wall-clock
# seconds of the workload (load-sensitive).
set -euo pipefail
cd "$(dirname "$0")/.."
SERVERS=${SERVERS:-fleece qsd}
COUNT=${COUNT:-16384}
FLEECED=${FLEECED:-build/bin/fleeced}
BENCH_DIR=${BENCH_DIR:-build/bench-tmp}
PY=/usr/bin/python3
for t in fio perf qemu-img qemu-storage-daemon; do
    command -v $t >/dev/null || { echo "$t is not installed" >&2; exit 1; }
done
mkdir -p "$BENCH_DIR"
workdir=$(mktemp -d "$BENCH_DIR/cpu.XXXXXX")
perf_pid=
cleanup() {
    if [[ -n $perf_pid ]]; then pkill -INT -P "$perf_pid" 2>/dev/null || true; wait "$perf_pid" 2>/dev/null || true; fi
    rm -rf "$workdir"
}
trap cleanup EXIT
sock=$workdir/nbd.sock
uri="nbd+unix:///e?socket=$sock"

start() { # server image
    rm -f "$sock"
    local bd="{\"driver\":\"qcow2\",\"node-name\":\"q0\",\"file\":{\"driver\":\"file\",\"filename\":\"$2\"}}"
    local bin=qemu-storage-daemon; [[ $1 == fleece ]] && bin=$FLEECED
    perf stat -x, -o "$workdir/perf.txt" -e task-clock,ext4:ext4_sync_file_enter -- \
        $bin --blockdev "$bd" --nbd-server "addr.type=unix,addr.path=$sock" \
        --export type=nbd,id=e,node-name=q0,name=e,writable=on >"$workdir/server.log" 2>&1 &
    perf_pid=$!
    for _ in $(seq 200); do [[ -S $sock ]] && return 0; sleep 0.05; done
    echo "server did not start" >&2; cat "$workdir/server.log" >&2; exit 1
}
stop() { # server workload ops wall
    pkill -INT -P "$perf_pid"; wait "$perf_pid" 2>/dev/null || true; perf_pid=
    $PY - "$@" "$workdir/perf.txt" <<'PY'
import json, sys
server, workload, ops, wall, path = sys.argv[1:]
v = {}
for line in open(path):
    f = line.strip().split(',')
    if len(f) > 2 and f[0] and f[0][0].isdigit():
        v[f[2]] = float(f[0])
ops = int(ops)
print(json.dumps({'server': server, 'workload': workload, 'ops': ops,
                  'cpu_us_per_op': round(v['task-clock'] * 1000 / ops, 2),
                  'syncs': int(v['ext4:ext4_sync_file_enter']), 'wall_s': float(wall)}))
PY
}
now() { date +%s.%N; }
for s in $SERVERS; do
    img=$workdir/$s.qcow2
    qemu-img create -f qcow2 "$img" 1G >/dev/null
    for w in alloc4k overwrite4k; do
        start $s "$img"; t0=$(now)
        $PY bench/nbd_cluster_writes.py "$uri" "$COUNT"
        t1=$(now); stop $s $w "$COUNT" "$($PY -c "print(round($t1-$t0,3))")"
    done
    qemu-img check -q "$img" || { echo "qemu-img check failed ($s)" >&2; exit 1; }
    qemu-img create -f qcow2 "$img" 1G >/dev/null
    for w in seqwrite1m seqread1m; do
        rw=write; [[ $w == seqread1m ]] && rw=read
        start $s "$img"; t0=$(now)
        fio --name=$w --ioengine=nbd --uri="$uri" --rw=$rw --bs=1M --iodepth=4 --size=1G \
            --end_fsync=$([[ $rw == write ]] && echo 1 || echo 0) --output-format=terse >/dev/null
        t1=$(now); stop $s $w 1024 "$($PY -c "print(round($t1-$t0,3))")"
    done
    qemu-img check -q "$img" || { echo "qemu-img check failed ($s)" >&2; exit 1; }
done
