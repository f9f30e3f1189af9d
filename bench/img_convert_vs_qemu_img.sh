#!/usr/bin/env bash
# Side-by-side: `fleece img convert` vs `qemu-img convert` on a 2 GiB image that is half
# data (random bytes), half holes, for raw->raw, raw->qcow2 and qcow2->raw.
#
#   bash bench/img_convert_vs_qemu_img.sh
#   SHORT=1 bash bench/img_convert_vs_qemu_img.sh   # 512 MiB, one run each (about a minute)
#
# Env: SIZE_MIB (default 2048), EXTENT_MIB (data/hole alternation, default 64),
#      REPS (runs per tool and case, best time kept, default 3),
#      BENCH_DIR (default build/bench-tmp; a real file system, not tmpfs).
# Each case runs in both cache modes, same for both tools: writeback (the target is
# flushed before exit; fleece's default) and unsafe (no flush; qemu-img convert's
# default). Every fleece output is checked with
# `qemu-img compare` (not timed). Prints JSON lines, then a table with the ratio
# fleece/qemu-img of wall times (below 1 = fleece faster).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n ${SHORT:-} ]]; then
    SIZE_MIB=${SIZE_MIB:-512}
    REPS=${REPS:-1}
fi
SIZE_MIB=${SIZE_MIB:-2048}
EXTENT_MIB=${EXTENT_MIB:-64}
REPS=${REPS:-3}
BENCH_DIR=${BENCH_DIR:-build/bench-tmp}
FLEECE=${FLEECE:-build/bin/fleece}

[[ -x $FLEECE ]] || { echo "missing $FLEECE: run 'bash scripts/build.sh release' first" >&2; exit 1; }
command -v qemu-img >/dev/null || { echo "qemu-img is not installed (scripts/install-deps.sh)" >&2; exit 1; }

mkdir -p "$BENCH_DIR"
workdir=$(mktemp -d "$BENCH_DIR/img-convert.XXXXXX")
trap 'rm -rf "$workdir"' EXIT
src_raw=$workdir/src.raw
src_qcow2=$workdir/src.qcow2
results=$workdir/results.jsonl

echo "== source: ${SIZE_MIB} MiB, alternating ${EXTENT_MIB} MiB of random data and holes"
truncate -s "${SIZE_MIB}M" "$src_raw"
for ((off = 0; off < SIZE_MIB; off += 2 * EXTENT_MIB)); do
    dd if=/dev/urandom of="$src_raw" bs=1M count="$EXTENT_MIB" seek="$off" conv=notrunc \
        status=none
done
qemu-img convert -f raw -O qcow2 "$src_raw" "$src_qcow2"
sync
echo "   allocated: raw $(du -h "$src_raw" | cut -f1), qcow2 $(du -h "$src_qcow2" | cut -f1)"

now() { date +%s.%N; }

run_case() { # name src src_fmt dst_fmt cache
    local name=$1 src=$2 sfmt=$3 dfmt=$4 cache=$5 tool best secs out t0 t1 rep
    for tool in qemu-img fleece; do
        best=
        for ((rep = 0; rep < REPS; rep++)); do
            out=$workdir/out.$tool.$dfmt
            rm -f "$out"
            t0=$(now)
            if [[ $tool == fleece ]]; then
                "$FLEECE" img convert -t "$cache" -f "$sfmt" -O "$dfmt" "$src" "$out"
            else
                qemu-img convert -t "$cache" -f "$sfmt" -O "$dfmt" "$src" "$out"
            fi
            t1=$(now)
            secs=$(python3 -c "print(round($t1 - $t0, 3))")
            if [[ -z $best ]] || python3 -c "import sys; sys.exit(0 if $secs < $best else 1)"; then
                best=$secs
            fi
        done
        if [[ $tool == fleece ]]; then
            qemu-img compare -q -f "$sfmt" -F "$dfmt" "$src" "$out" ||
                { echo "fleece output of $name differs from the source" >&2; exit 1; }
        fi
        python3 -c '
import json, os, sys
tool, name, secs, out, size_mib = sys.argv[1:6]
print(json.dumps({"tool": tool, "case": name, "seconds": float(secs),
                  "mb_s": round(int(size_mib) * 1048576 / 1e6 / float(secs), 1),
                  "output_allocated_mib": round(os.stat(out).st_blocks * 512 / 1048576, 1)}))' \
            "$tool" "$name/$cache" "$best" "$out" "$SIZE_MIB" | tee -a "$results"
        rm -f "$out"
    done
}

for cache in writeback unsafe; do
    run_case raw-to-raw "$src_raw" raw raw "$cache"
    run_case raw-to-qcow2 "$src_raw" raw qcow2 "$cache"
    run_case qcow2-to-raw "$src_qcow2" qcow2 raw "$cache"
done

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cases = []
for r in rows:
    if r["case"] not in cases:
        cases.append(r["case"])
print()
print("%-24s %12s %12s %16s %18s" % ("case", "qemu-img s", "fleece s", "fleece/qemu-img",
                                     "allocated q/f MiB"))
for c in cases:
    q = next(r for r in rows if r["case"] == c and r["tool"] == "qemu-img")
    f = next(r for r in rows if r["case"] == c and r["tool"] == "fleece")
    print("%-24s %12.3f %12.3f %16.2f %18s" % (c, q["seconds"], f["seconds"],
                                                f["seconds"] / q["seconds"],
                                                "%s/%s" % (q["output_allocated_mib"],
                                                           f["output_allocated_mib"])))
PY
