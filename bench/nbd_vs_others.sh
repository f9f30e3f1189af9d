#!/usr/bin/env bash
# NBD server benchmark: the same raw file served by fleeced, qemu-storage-daemon, qemu-nbd
# and nbdkit's file plugin, measured with fio's nbd engine over a unix socket:
#   4 KiB random read / random write at queue depth 16, 1 MiB sequential read / write.
# Prints IOPS and MiB/s per server and the ratio of fleeced to each other server.
#
# Usage: bench/nbd_vs_others.sh [--size 1G] [--runtime 10] [--fleeced build/bin/fleeced]
set -euo pipefail

SIZE=1G
RUNTIME=10
FLEECED=build/bin/fleeced
while [[ $# -gt 0 ]]; do
    case "$1" in
    --size) SIZE=$2; shift 2 ;;
    --runtime) RUNTIME=$2; shift 2 ;;
    --fleeced) FLEECED=$2; shift 2 ;;
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
SERVERS=(fleeced qsd qemu-nbd nbdkit)
RESULTS=$WORK/results.txt
: >"$RESULTS"

for server in "${SERVERS[@]}"; do
    start_server "$server"
    for w in "${WORKLOADS[@]}"; do
        read -r name rw bs qd <<<"$w"
        fio --name="$name" --ioengine=nbd --uri="nbd+unix:///disk?socket=$SOCK" \
            --rw="$rw" --bs="$bs" --iodepth="$qd" --size="$SIZE" --time_based \
            --runtime="$RUNTIME" --ramp_time=1 --output-format=json \
            --output="$WORK/$server-$name.json"
        python3 - "$WORK/$server-$name.json" "$server" "$name" >>"$RESULTS" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))['jobs'][0]
side = job['read'] if job['read']['io_bytes'] else job['write']
print(sys.argv[2], sys.argv[3], '%.0f' % side['iops'], '%.1f' % (side['bw'] / 1024))
PY
    done
    stop_server
done

python3 - "$RESULTS" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
res = {(s, w): (float(i), float(b)) for s, w, i, b in rows}
servers = ['fleeced', 'qsd', 'qemu-nbd', 'nbdkit']
workloads = ['randread4k', 'randwrite4k', 'seqread1M', 'seqwrite1M']
print('%-12s' % 'workload' + ''.join('%22s' % s for s in servers))
for w in workloads:
    print('%-12s' % w + ''.join('%12.0f IOPS %4.0fM' % (res[(s, w)][0], res[(s, w)][1])
                                 if (s, w) in res else '%22s' % '-' for s in servers))
print()
print('ratio fleeced / other (IOPS; >= 1.0 means fleeced is at least as fast)')
print('%-12s' % 'workload' + ''.join('%12s' % s for s in servers[1:]))
for w in workloads:
    print('%-12s' % w + ''.join('%12.2f' % (res[('fleeced', w)][0] / res[(s, w)][0])
                                 for s in servers[1:]))
PY
