#!/usr/bin/env bash
# NBD server benchmark: the same raw file served by fleeced, qemu-storage-daemon, qemu-nbd
# and nbdkit's file plugin, measured with fio's nbd engine over a unix socket:
#   4 KiB random read / random write at queue depth 16, 1 MiB sequential read / write.
# Prints IOPS and MiB/s per server, the ratio of fleeced to each other server, and the
# server's CPU time per request (user+system from /proc, microseconds), which a loaded
# machine distorts far less than IOPS.
#
# Usage: bench/nbd_vs_others.sh [--short] [--size 1G] [--runtime 10] [--reps 1]
#                               [--servers "fleeced qsd qemu-nbd nbdkit"] [--fleeced PATH]
#   --short: 256 MiB file, 3 s per run (about 2 minutes for the four servers).
#   --reps N: run every server N times, alternating, and keep each one's best run.
set -euo pipefail

SIZE=1G
RUNTIME=10
REPS=1
SERVERS=(fleeced qsd qemu-nbd nbdkit)
FLEECED=build/bin/fleeced
while [[ $# -gt 0 ]]; do
    case "$1" in
    --size) SIZE=$2; shift 2 ;;
    --runtime) RUNTIME=$2; shift 2 ;;
    --fleeced) FLEECED=$2; shift 2 ;;
    --short) SIZE=256M; RUNTIME=3; shift ;;
    --reps) REPS=$2; shift 2 ;;
    --servers) read -r -a SERVERS <<<"$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 1 ;;
    esac
done
for tool in fio qemu-storage-daemon qemu-nbd nbdkit qemu-img python3; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done
[[ -x $FLEECED ]] || { echo "fleeced not found at $FLEECED (build first)" >&2; exit 1; }
FLEECED=$(realpath "$FLEECED")

WORK=$(mktemp -d /tmp/nbd-bench.XXXXXX)
SERVER_PID=
cleanup() {
    [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

DISK=$WORK/disk.raw
SOCK=$WORK/nbd.sock
# A fully written file, so reads hit data rather than holes.
qemu-img create -f raw "$DISK" "$SIZE" >/dev/null
fio --name=fill --filename="$DISK" --rw=write --bs=1M --size="$SIZE" --ioengine=psync \
    --output=/dev/null

start_server() {
    rm -f "$SOCK"
    case "$1" in
    fleeced | qsd)
        local bin=$FLEECED
        [[ $1 == qsd ]] && bin=qemu-storage-daemon
        "$bin" --blockdev driver=file,node-name=f0,filename="$DISK" \
            --nbd-server addr.type=unix,addr.path="$SOCK" \
            --export type=nbd,id=e0,node-name=f0,name=disk,writable=on \
            >"$WORK/$1.log" 2>&1 &
        ;;
    qemu-nbd)
        qemu-nbd -f raw --socket="$SOCK" --export-name=disk --persistent --shared=16 "$DISK" \
            >"$WORK/$1.log" 2>&1 &
        ;;
    nbdkit)
        nbdkit -f -U "$SOCK" -e disk file file="$DISK" >"$WORK/$1.log" 2>&1 &
        ;;
    esac
    SERVER_PID=$!
    for _ in $(seq 200); do
        [[ -S $SOCK ]] && return 0
        sleep 0.05
    done
    echo "$1 did not start:" >&2
    cat "$WORK/$1.log" >&2
    exit 1
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

# workload name, fio rw, block size, iodepth
WORKLOADS=("randread4k randread 4k 16" "randwrite4k randwrite 4k 16"
           "seqread1M read 1M 4" "seqwrite1M write 1M 4")
RESULTS=$WORK/results.txt
: >"$RESULTS"
echo "== settings: file $SIZE (page cache, no cache.direct), ${RUNTIME}s per run after 1s" \
    "ramp, fio --ioengine=nbd over a unix socket, reps $REPS, servers ${SERVERS[*]}"

cpu_ticks() { # utime+stime of a process, in clock ticks
    awk '{print $14 + $15}' "/proc/$1/stat"
}

for rep in $(seq "$REPS"); do
for server in "${SERVERS[@]}"; do
    start_server "$server"
    for w in "${WORKLOADS[@]}"; do
        read -r name rw bs qd <<<"$w"
        t0=$(cpu_ticks "$SERVER_PID")
        fio --name="$name" --ioengine=nbd --uri="nbd+unix:///disk?socket=$SOCK" \
            --rw="$rw" --bs="$bs" --iodepth="$qd" --size="$SIZE" --time_based \
            --runtime="$RUNTIME" --ramp_time=1 --output-format=json \
            --output="$WORK/$server-$name.json"
        t1=$(cpu_ticks "$SERVER_PID")
        python3 - "$WORK/$server-$name.json" "$server" "$name" "$((t1 - t0))" \
            "$(getconf CLK_TCK)" "$RUNTIME" >>"$RESULTS" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
job = json.loads(text[text.index('{'):])['jobs'][0]  # the nbd engine may print a line first
side = job['read'] if job['read']['io_bytes'] else job['write']
# The server's CPU covers the ramp second too: count its requests at the measured rate.
ops = side['iops'] * (float(sys.argv[6]) + 1)
cpu_us = int(sys.argv[4]) / int(sys.argv[5]) * 1e6
print(sys.argv[2], sys.argv[3], '%.0f' % side['iops'], '%.1f' % (side['bw'] / 1024),
      '%.1f' % (cpu_us / ops if ops else 0))
PY
    done
    stop_server
done
done

python3 - "$RESULTS" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
res = {}
for s, w, i, b, c in rows:  # best repetition per server and workload
    if (s, w) not in res or float(i) > res[(s, w)][0]:
        res[(s, w)] = (float(i), float(b), float(c))
servers = list(dict.fromkeys(r[0] for r in rows))
workloads = ['randread4k', 'randwrite4k', 'seqread1M', 'seqwrite1M']
print('%-12s' % 'workload' + ''.join('%22s' % s for s in servers))
for w in workloads:
    print('%-12s' % w + ''.join('%12.0f IOPS %4.0fM' % (res[(s, w)][0], res[(s, w)][1])
                                 if (s, w) in res else '%22s' % '-' for s in servers))
print()
print('server CPU per request (user+system, microseconds; lower is better)')
print('%-12s' % 'workload' + ''.join('%22s' % s for s in servers))
for w in workloads:
    print('%-12s' % w + ''.join('%22.1f' % res[(s, w)][2] if (s, w) in res else '%22s' % '-'
                                 for s in servers))
others = [s for s in servers if s != 'fleeced']
if 'fleeced' in servers and others:
    print()
    print('ratio fleeced / other (IOPS; >= 1.0 means fleeced is at least as fast)')
    print('%-12s' % 'workload' + ''.join('%12s' % s for s in others))
    for w in workloads:
        print('%-12s' % w + ''.join('%12.2f' % (res[('fleeced', w)][0] / res[(s, w)][0])
                                     for s in others))
PY
