#!/usr/bin/env bash
# Records what `fleece backup` shows on a terminal: runs it inside a detached tmux session
# (a real pseudo-terminal, so the progress bar is drawn as a user sees it) against a slow
# local NBD target while a guest writes, and captures the pane every ~0.5 s into a text file.
#
# usage: scripts/record-progress.sh [OUTPUT]   (default docs/recordings/fleece-backup-progress.txt)
# Needs build/bin/fleeced and build/bin/fleece (scripts/build.sh release), tmux, nbdkit, fio.
# Takes about 20 s: a 48 MiB disk pushed at 4 MiB/s.
set -euo pipefail
cd "$(dirname "$0")/.."

FLEECED=${FLEECED:-$PWD/build/bin/fleeced}
FLEECE=${FLEECE:-$PWD/build/bin/fleece}
OUT=${1:-docs/recordings/fleece-backup-progress.txt}
for tool in tmux nbdkit fio "$FLEECED" "$FLEECE"; do
    command -v "$tool" >/dev/null || { echo "record-progress: $tool is missing" >&2; exit 1; }
done

workdir=$(mktemp -d "${TMPDIR:-/tmp}/fleece-rec.XXXXXX")
sock=$workdir/qmp.sock
session=fleece-rec-$$
daemon_pid= target_pid= fio_pid=
cleanup() {
    tmux kill-session -t "$session" 2>/dev/null || true
    [[ -n $fio_pid ]] && { kill "$fio_pid" 2>/dev/null || true; wait "$fio_pid" 2>/dev/null || true; }
    if [[ -n $daemon_pid ]]; then
        "$FLEECE" qmp --socket "$sock" quit >/dev/null 2>&1 || kill "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    [[ -n $target_pid ]] && { kill "$target_pid" 2>/dev/null || true; wait "$target_pid" 2>/dev/null || true; }
    rm -rf "$workdir"
}
trap cleanup EXIT
qmp() { "$FLEECE" qmp --socket "$sock" "$@" >/dev/null; }

head -c 48M /dev/urandom >"$workdir/disk.raw"
"$FLEECED" --chardev "socket,id=qmp0,path=$sock,server=on,wait=off" \
    --monitor chardev=qmp0,mode=control >"$workdir/fleeced.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
# The slow target: nbdkit's memory plugin behind a 4 MiB/s rate limit.
nbdkit -f --exit-with-parent -U "$workdir/target.sock" --filter=rate memory size=48M rate=32M \
    >"$workdir/nbdkit.log" 2>&1 &
target_pid=$!
for _ in $(seq 100); do [[ -S $workdir/target.sock ]] && break; sleep 0.1; done

qmp blockdev-add "{\"driver\": \"file\", \"node-name\": \"disk\", \"filename\": \"$workdir/disk.raw\"}"
qmp nbd-server-start "{\"addr\": {\"type\": \"unix\", \"data\": {\"path\": \"$workdir/nbd.sock\"}}}"
qmp block-export-add '{"type": "nbd", "id": "guest", "node-name": "disk", "name": "guest", "writable": true}'
# The guest: 4 KiB random writes at a modest rate for the whole recording.
fio --name=guest --ioengine=nbd --uri="nbd+unix:///guest?socket=$workdir/nbd.sock" \
    --rw=randwrite --bs=4k --iodepth=4 --rate=2m --time_based --runtime=120 --norandommap \
    --output="$workdir/fio.log" >/dev/null 2>&1 &
fio_pid=$!

cmd="$FLEECE backup --qmp $sock --node disk --target 'nbd+unix:///?socket=$workdir/target.sock'"
tmux new-session -d -s "$session" -x 220 -y 12 "bash -c \"$cmd; echo; echo exit status \\\$?; sleep 600\""
mkdir -p "$(dirname "$OUT")"
{
    echo "# fleece backup on a terminal, captured from a tmux pane every ~0.5 s (scripts/record-progress.sh)"
    echo "# disk 48 MiB (random data), guest: fio 4 KiB random writes at 2 MiB/s through export 'guest',"
    echo "# target: nbdkit memory behind a 4 MiB/s rate limit. Each frame is the visible pane."
    echo "# \$ fleece backup --qmp QMP.sock --node disk --target 'nbd+unix:///?socket=TARGET.sock'"
} >"$OUT"
start=$(date +%s.%N)
for _ in $(seq 240); do
    now=$(date +%s.%N)
    pane=$(tmux capture-pane -p -t "$session" | sed -e "s#$workdir#WORKDIR#g" -e 's/[[:space:]]*$//' | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}')
    printf -- '--- t=%ss ---\n%s\n' "$(awk "BEGIN { printf \"%.1f\", $now - $start }")" "$pane" >>"$OUT"
    grep -q '^exit status' <<<"$pane" && break
    sleep 0.5
done
grep -q '^exit status 0' "$OUT" || { echo "record-progress: the backup did not succeed, see $OUT" >&2; exit 1; }
echo "recorded $(grep -c '^--- t=' "$OUT") frames into $OUT"
