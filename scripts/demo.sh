#!/usr/bin/env bash
# fleece demo: start the storage daemon, talk QMP to it, and attach a demo disk.
#
# Today it covers the foundation: start fleeced with a QMP monitor socket, ask its
# version, blockdev-add a file node on a 64 MiB demo disk and list the block nodes.
# It will grow into the full push-backup-with-fleecing demo.
#
# Runs as root on Debian 12 (installs what is missing, then builds). Leaves nothing
# behind: the daemon is stopped and the temp dir removed on exit.
#
# The CLI form used here: fleece qmp --socket PATH COMMAND ['{"json":"arguments"}']
set -euo pipefail
cd "$(dirname "$0")/.."

FLEECED=${FLEECED:-build/bin/fleeced} # override to run the same demo against another daemon
FLEECE=${FLEECE:-build/bin/fleece}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Installing dependencies (skipped when present)"
bash scripts/install-deps.sh

say "Building (build/)"
bash scripts/build.sh release

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
    rm -rf "$workdir"
}
trap cleanup EXIT

qmp() { "$FLEECE" qmp --socket "$sock" "$@"; }

say "Creating a 64 MiB demo disk with a pattern: $disk"
qemu-img create -q -f raw "$disk" 64M
# First half 0xa5, second half 0x5a, so a later backup can be checked by eye and by qemu-img.
qemu-io -f raw -c 'write -q -P 0xa5 0 32M' -c 'write -q -P 0x5a 32M 32M' "$disk"
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

say "fleece qmp query-version"
qmp query-version

say "fleece qmp blockdev-add: a file node 'disk0' on the demo disk"
args=$(printf '{"driver": "file", "node-name": "disk0", "filename": "%s"}' "$disk")
echo "arguments: $args"
if out=$(qmp blockdev-add "$args" 2>&1); then
    echo "$out"
    say "fleece qmp query-named-block-nodes"
    qmp query-named-block-nodes
else
    echo "$out"
    echo
    echo "blockdev-add is not supported by this fleeced yet: the block layer is still being"
    echo "built (see README.md, Status). The QMP basics above work; the backup demo comes next."
fi

say "Done; stopping fleeced"
