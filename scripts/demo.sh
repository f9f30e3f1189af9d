#!/usr/bin/env bash
# fleece demo: a push backup with fleecing of a disk that a guest keeps writing.
#
# A 128 MiB demo disk is served to a "guest" (fio over NBD). `fleece backup` puts a
# copy-before-write filter live under the guest's export (the snapshot point) and pushes
# the snapshot to a slow remote NBD target (nbdkit memory behind a 2 ms write delay and a
# 200 Mbit/s rate limit) with a progress bar while the guest writes. At the
# end the target is compared with a copy of the disk taken at the snapshot point, and the
# guest's write rate before and during the backup is reported.
#
# Runs as root on Debian 12 (installs what is missing, then builds). Leaves nothing
# behind: the daemon is stopped and the temp dir removed on exit.
#
# The CLI forms used here: fleece backup --qmp PATH --node NODE --target URI, and
# fleece qmp --socket PATH COMMAND ['{"json":"arguments"}']
set -euo pipefail
cd "$(dirname "$0")/.."

FLEECED=${FLEECED:-build/bin/fleeced} # override to run the same demo against another daemon
FLEECE=${FLEECE:-build/bin/fleece}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Installing dependencies (skipped when present)"
bash scripts/install-deps.sh

say "Building (build/)"
bash scripts/build.sh bins

for bin in "$FLEECED" "$FLEECE"; do
    if ! command -v "$bin" >/dev/null; then
        echo "$bin was not built: the daemon and CLI are still being written" \
            "(see README.md, Status). Nothing more to show yet."
        exit 1
    fi
done

workdir=$(mktemp -d "${TMPDIR:-/tmp}/fleece-demo.XXXXXX")
sock=$workdir/qmp.sock
disk=$workdir/disk.raw
daemon_pid=
target_pid=

cleanup() {
    if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        "$FLEECE" qmp --socket "$sock" quit >/dev/null 2>&1 || true
        for _ in $(seq 20); do
            kill -0 "$daemon_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    if [[ -n $target_pid ]]; then
        kill "$target_pid" 2>/dev/null || true
        wait "$target_pid" 2>/dev/null || true
    fi
    rm -rf "$workdir"
}
trap cleanup EXIT

qmp() { "$FLEECE" qmp --socket "$sock" "$@"; }

say "Creating a 128 MiB demo disk with random data: $disk"
head -c 128M /dev/urandom >"$disk"

qemu-img info "$disk" | sed 's/^/   /'

say "Starting fleeced with a QMP monitor on $sock"
# Same command line as qemu-storage-daemon's; its log goes to $workdir/fleeced.log.
"$FLEECED" \
    --chardev "socket,id=qmp0,path=$sock,server=on,wait=off" \
    --monitor chardev=qmp0,mode=control \
    >"$workdir/fleeced.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do
    [[ -S $sock ]] && break
    if ! kill -0 "$daemon_pid" 2>/dev/null; then
        echo "fleeced exited during start-up; its log:"
        cat "$workdir/fleeced.log"
        exit 1
    fi
    sleep 0.1
done
if [[ ! -S $sock ]]; then
    echo "fleeced did not create $sock within 10 s; its log:"
    cat "$workdir/fleeced.log"
    exit 1
fi
echo "fleeced is running (pid $daemon_pid)"

qmp query-version >/dev/null

guest_fio() { # runtime-seconds output-file: 4 KiB random writes by the guest, queue depth 8
    fio --name=guest --ioengine=nbd --uri="nbd+unix:///guest?socket=$workdir/nbd.sock" \
        --rw=randwrite --bs=4k --iodepth=8 --time_based --runtime="$1" --norandommap \
        --output-format=json --output="$2" >/dev/null 2>&1
}
iops_of() { # fio json file -> write IOPS
    /usr/bin/python3 -c 'import json,sys; t=open(sys.argv[1]).read(); print(int(json.loads(t[t.index("{"):])["jobs"][0]["write"]["iops"]))' "$1"
}

say "Starting the slow remote target: nbdkit memory, 2 ms write delay, 200 Mbit/s"
nbdkit -f --exit-with-parent -U "$workdir/target.sock" --filter=delay --filter=rate \
    memory size=128M delay-write=2ms rate=200M >"$workdir/nbdkit.log" 2>&1 &
target_pid=$!
for _ in $(seq 100); do [[ -S $workdir/target.sock ]] && break; sleep 0.1; done

say "Serving the disk to the guest over NBD (export 'guest' on node 'disk')"
qmp blockdev-add "{\"driver\": \"file\", \"node-name\": \"disk\", \"filename\": \"$disk\"}" >/dev/null
qmp nbd-server-start "{\"addr\": {\"type\": \"unix\", \"data\": {\"path\": \"$workdir/nbd.sock\"}}}" >/dev/null
qmp block-export-add '{"type": "nbd", "id": "guest", "node-name": "disk", "name": "guest", "writable": true}' >/dev/null
echo "guest writes without backup (5 s of 4 KiB random writes, queue depth 8)..."
guest_fio 5 "$workdir/before.json"
before=$(iops_of "$workdir/before.json")
echo "   $before IOPS"
# The guest is idle now: keep a copy of the disk as it is, the snapshot point to verify
# against. The guest starts writing again only once `fleece backup` has moved its export
# onto the copy-before-write filter (query-block-exports names the filter then).
cp "$disk" "$workdir/snapshot-point.raw"
(
    for _ in $(seq 600); do
        # A failed poll (the daemon busy starting the job) just polls again.
        node=$(qmp query-block-exports 2>/dev/null |
            /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["node-name"])' 2>/dev/null) || node=
        [[ $node == fleece-backup-* ]] && break
        sleep 0.05
    done
    # Writes until the backup ends (SIGINT below makes fio stop and report).
    exec fio --name=guest --ioengine=nbd --uri="nbd+unix:///guest?socket=$workdir/nbd.sock" \
        --rw=randwrite --bs=4k --iodepth=8 --time_based --runtime=300 --norandommap \
        --output-format=json --output="$workdir/during.json" >/dev/null 2>&1
) &
fio_pid=$!

say "fleece backup: push the snapshot of node 'disk' to the slow target while the guest writes"
echo "   $FLEECE backup --qmp $sock --node disk --target 'nbd+unix:///?socket=$workdir/target.sock'"
"$FLEECE" backup --qmp "$sock" --node disk --target "nbd+unix:///?socket=$workdir/target.sock"
kill -INT "$fio_pid" 2>/dev/null || true
wait "$fio_pid" || true
during=$(iops_of "$workdir/during.json")

say "Verifying: the target must equal the disk at the snapshot point"
nbdcopy "nbd+unix:///?socket=$workdir/target.sock" "$workdir/target-copy.raw"
if cmp -s "$workdir/snapshot-point.raw" "$workdir/target-copy.raw"; then
    echo "   VERIFIED: the backup holds exactly the point-in-time data (128 MiB)"
else
    echo "   MISMATCH: the backup differs from the snapshot point"
    exit 1
fi
if cmp -s "$workdir/snapshot-point.raw" "$disk"; then
    echo "   (warning: the guest's writes did not change the disk)"
    exit 1
fi
echo "   the live disk has moved on: the guest's writes landed there, not in the backup"

say "Guest write rate"
echo "   before the backup: $before IOPS"
echo "   during the backup: $during IOPS ($(/usr/bin/python3 -c "print('%.2f' % ($during / max(1, $before)))") x)"

say "Done; stopping fleeced"

