#!/usr/bin/env bash
# Push backup under guest load, fleeced against qemu-storage-daemon 7.2 in one sitting,
# with the shared anchor harness (../shared/bench/anchor_qsd.py, run unchanged).
#
#   bash bench/push_backup_vs_qsd.sh [RESULTS_DIR] [extra anchor_qsd.py flags...]
#
# Runs, in this order (each S0,S1,S2 interleaved, --reps 2 unless overridden):
#   qsd      QSD 7.2, its default S2 workaround (x-perf max-chunk 64 KiB)
#   fleeced  fleeced, same flags
#   fleeced-chunk0    fleeced S2 with QEMU's default chunking (--s2-max-chunk 0)
#   fleeced-discard   fleeced S2 with discard-source (bench/anchor_fleeced_discard.py)
# then prints the tables and the ratios the acceptance asks for. Before and after, the
# disk's own time to copy a whole disk (bench/copy_phase_probe.py): the ceiling it puts on
# S2/S0 is printed with the ratios.
# The fleecing image is qcow2 for both daemons, the anchor harness's own default
# (FLEECE_FMT=raw to change). Env: ANCHOR_DIR (default ../shared/bench), QSD_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
ANCHOR_DIR=${ANCHOR_DIR:-$(cd .. && pwd)/shared/bench}
export ANCHOR_DIR
QSD_BIN=${QSD_BIN:-qemu-storage-daemon}
FLEECE_FMT=${FLEECE_FMT:-qcow2}
OUT=${1:-}
if [ -z "$OUT" ]; then
    OUT=$(mktemp -d "${TMPDIR:-/tmp}/push-backup-vs-qsd.XXXXXX")
else
    shift
fi
mkdir -p "$OUT"
# The harness appends; results of an earlier run in the same directory would mix into the
# medians and ratios, so start from empty files.
rm -f "$OUT"/qsd.jsonl "$OUT"/fleeced.jsonl "$OUT"/fleeced-chunk0.jsonl "$OUT"/fleeced-discard.jsonl \
    "$OUT"/probe.jsonl
[[ -x build/bin/fleeced ]] || { echo "missing build/bin/fleeced: bash scripts/build.sh release" >&2; exit 1; }
echo "results -> $OUT" >&2
common=(--fleece-fmt "$FLEECE_FMT" "$@")
# The disk's own copy speed, before and after the runs: the floor under S2's first phase.
probe() { /usr/bin/python3 bench/copy_phase_probe.py --out "$OUT/probe.jsonl" >/dev/null; }
probe
python3 "$ANCHOR_DIR/anchor_qsd.py" --qsd "$QSD_BIN" --label qsd --out "$OUT/qsd.jsonl" "${common[@]}" >/dev/null
python3 "$ANCHOR_DIR/anchor_qsd.py" --qsd build/bin/fleeced --label fleeced --out "$OUT/fleeced.jsonl" "${common[@]}" >/dev/null
python3 "$ANCHOR_DIR/anchor_qsd.py" --qsd build/bin/fleeced --label fleeced-chunk0 --scenarios S2 \
    --s2-max-chunk 0 --out "$OUT/fleeced-chunk0.jsonl" "${common[@]}" >/dev/null
python3 bench/anchor_fleeced_discard.py --qsd build/bin/fleeced --label fleeced-discard --scenarios S2 \
    --out "$OUT/fleeced-discard.jsonl" "${common[@]}" >/dev/null
probe
python3 bench/push_backup_ratios.py "$OUT" | tee "$OUT/summary.md"
