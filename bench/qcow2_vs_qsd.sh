#!/usr/bin/env bash
# Side-by-side: the qcow2 driver in fleeced vs qemu-storage-daemon, each exporting a
# qcow2 image over NBD (unix socket), measured with fio's nbd engine, same image layout,
# same job. Workloads: random 4 KiB writes into an empty image (allocating), the same
# writes again (overwrites), sequential 1 MiB writes (allocating) and sequential 1 MiB
# reads of what they wrote.
#
#   bash bench/qcow2_vs_qsd.sh
#   SHORT=1 bash bench/qcow2_vs_qsd.sh     # 256 MiB image, 3 s random jobs (about a minute)
#
# Env: SIZE (virtual size, default 1G), RUNTIME (seconds for random jobs, default 5),
#      BENCH_DIR (default build/bench-tmp). Prints one JSON line per run, then a table
#      with IOPS / MiB/s and the ratio fleece/qsd.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n ${SHORT:-} ]]; then
    SIZE=${SIZE:-256M}
    RUNTIME=${RUNTIME:-3}
fi
SIZE=${SIZE:-1G}
RUNTIME=${RUNTIME:-5}
BENCH_DIR=${BENCH_DIR:-build/bench-tmp}
FLEECED=${FLEECED:-build/bin/fleeced}
[[ -x $FLEECED ]] || { echo "missing $FLEECED: run 'bash scripts/build.sh release'" >&2; exit 1; }
for t in fio qemu-img qemu-storage-daemon; do
    command -v $t >/dev/null || { echo "$t is not installed (scripts/install-deps.sh)" >&2; exit 1; }
done

mkdir -p "$BENCH_DIR"
workdir=$(mktemp -d "$BENCH_DIR/qcow2.XXXXXX")
server_pid=
cleanup() {
    if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$workdir"
}
trap cleanup EXIT
results=$workdir/results.jsonl

start_server() { # which image
    local sock=$workdir/nbd.sock
    rm -f "$sock"
    local blockdev="{\"driver\":\"qcow2\",\"node-name\":\"q0\",\"file\":{\"driver\":\"file\",\"filename\":\"$2\"}}"
    if [[ $1 == fleece ]]; then
        $FLEECED --blockdev "$blockdev" --nbd-server "addr.type=unix,addr.path=$sock" \
            --export type=nbd,id=e,node-name=q0,name=e,writable=on >"$workdir/server.log" 2>&1 &
    else
        qemu-storage-daemon --blockdev "$blockdev" --nbd-server "addr.type=unix,addr.path=$sock" \
            --export type=nbd,id=e,node-name=q0,name=e,writable=on >"$workdir/server.log" 2>&1 &
    fi
    server_pid=$!
    for _ in $(seq 100); do [[ -S $sock ]] && return 0; sleep 0.05; done
    echo "server $1 did not start" >&2; cat "$workdir/server.log" >&2; exit 1
}

stop_server() {
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
}

run_fio() { # server name rw bs qd [time_based]
    local extra=()
    if [[ ${6:-} == timed ]]; then extra=(--time_based --runtime="$RUNTIME"); else extra=(--size="$SIZE"); fi
    fio --name="$2" --ioengine=nbd --uri="nbd+unix:///e?socket=$workdir/nbd.sock" --rw="$3" \
        --bs="$4" --iodepth="$5" --randseed=42 --norandommap --output-format=json "${extra[@]}" \
        >"$workdir/fio.json"
    python3 - "$1" "$2" "$workdir/fio.json" >>"$results" <<'PY'
import json, sys
server, name, path = sys.argv[1:]
text = open(path).read()
job = json.loads(text[text.index('{'):])['jobs'][0]  # fio's nbd engine prints a line first
side = job['write'] if job['write']['io_bytes'] else job['read']
print(json.dumps({'server': server, 'workload': name, 'iops': round(side['iops']),
                  'mib_s': round(side['bw_bytes'] / 1048576, 1)}))
PY
    tail -1 "$results"
}

for server in fleece qsd; do
    img=$workdir/$server.qcow2
    qemu-img create -f qcow2 "$img" "$SIZE" >/dev/null
    start_server $server "$img"
    run_fio $server randwrite-alloc randwrite 4096 32 timed
    run_fio $server randwrite-overwrite randwrite 4096 32 timed
    stop_server
    qemu-img create -f qcow2 "$img" "$SIZE" >/dev/null
    start_server $server "$img"
    run_fio $server seqwrite-alloc write 1048576 4
    run_fio $server seqread read 1048576 4
    stop_server
    qemu-img check "$img" >/dev/null || { echo "qemu-img check failed on $server image" >&2; exit 1; }
done

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {(r['server'], r['workload']): r for r in rows}
print('%-22s %12s %12s %8s' % ('workload', 'fleece', 'qsd', 'ratio'))
for w in ['randwrite-alloc', 'randwrite-overwrite', 'seqwrite-alloc', 'seqread']:
    f, q = by[('fleece', w)], by[('qsd', w)]
    key, unit = ('iops', 'IOPS') if w.startswith('rand') else ('mib_s', 'MiB/s')
    print('%-22s %12s %12s %8.2f  (%s)' % (w, f[key], q[key], f[key] / max(q[key], 1e-9), unit))
PY
