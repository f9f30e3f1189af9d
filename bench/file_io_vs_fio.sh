#!/usr/bin/env bash
# Side-by-side: fleece's `file` node (build/bin/fleece_file_io_bench, requests entering
# through a root edge like an export's) vs fio's io_uring engine, on the same file, same
# block size, queue depth and runtime, O_DIRECT, one thread each.
#
#   bash bench/file_io_vs_fio.sh            # the four #2 workloads, 5 s each (~1 min)
#   bash bench/file_io_vs_fio.sh --short    # 2 s each, 256 MiB file (~30 s)
#   CORE=1 bash bench/file_io_vs_fio.sh     # also the bare I/O core (no block layer)
#   TRACK=1 bash bench/file_io_vs_fio.sh    # also reads with read tracking on (a CBW on it)
#   THREADS=1 bash bench/file_io_vs_fio.sh  # also the thread-pool fallback backend
#   REPS=3 bash bench/file_io_vs_fio.sh     # alternate fio and fleece 3 times, keep the best
#
# Env: RUNTIME (seconds per run, default 5), SIZE (test file size, default 1G),
#      BENCH_DIR (where the test file lives; must support O_DIRECT, so not tmpfs;
#      default build/bench-tmp).
# fio runs with its io_uring defaults, which fleece matches: no registered buffers
# (fixedbufs=0), no registered files, no SQ polling, no hipri polling; the settings are
# printed. Prints every raw result as a JSON line, then a table with ratio = fleece IOPS /
# fio IOPS and the CPU time per request of each (user+system, microseconds), the figure
# a loaded machine distorts least.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME=${RUNTIME:-5}
SIZE=${SIZE:-1G}
REPS=${REPS:-1}
if [[ ${1:-} == --short ]]; then
    RUNTIME=2
    SIZE=256M
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--short]" >&2
    exit 2
fi
BENCH_DIR=${BENCH_DIR:-build/bench-tmp}
THREADS=${THREADS:-0}
CORE=${CORE:-0}
TRACK=${TRACK:-0}
BENCH=build/bin/fleece_file_io_bench

if [[ ! -x $BENCH ]]; then
    echo "missing $BENCH: run 'bash scripts/build.sh release' first" >&2
    exit 1
fi
command -v fio >/dev/null || { echo "fio is not installed (scripts/install-deps.sh)" >&2; exit 1; }

mkdir -p "$BENCH_DIR"
workdir=$(mktemp -d "$BENCH_DIR/run.XXXXXX")
trap 'rm -rf "$workdir"' EXIT
file=$workdir/test.img
results=$workdir/results.jsonl

echo "== creating $SIZE test file in $workdir (fallocate + fill)"
fallocate -l "$SIZE" "$file"
# Fill with incompressible data so reads hit written extents, not unwritten ones.
bytes=$(stat -c %s "$file")
dd if=/dev/urandom of="$file" bs=1M count=$((bytes / 1048576)) oflag=direct conv=notrunc \
    status=none
sync

# name  rw         bs       qd
WORKLOADS=(
    "randread  randread  4096    32"
    "randwrite randwrite 4096    32"
    "seqread   read      1048576 4"
    "seqwrite  write     1048576 4"
)
echo "== settings: O_DIRECT, 1 thread, time based ${RUNTIME}s, reps $REPS;" \
    "fio --ioengine=io_uring --direct=1 --numjobs=1 (fixedbufs=0 registerfiles=0" \
    "sqthread_poll=0 hipri=0); fleece: file node via blockdev-add" \
    "{driver:file, cache.direct:on, aio:io_uring}, 4 KiB-aligned BufferPool buffers"

run_fio() { # name rw bs qd
    fio --name="$1" --filename="$file" --ioengine=io_uring --direct=1 --rw="$2" --bs="$3" \
        --iodepth="$4" --numjobs=1 --runtime="$RUNTIME" --time_based --output-format=json |
        python3 -c '
import json, sys
name, rw = sys.argv[1], sys.argv[2]
job = json.load(sys.stdin)["jobs"][0]
side = job["write"] if "write" in rw else job["read"]
ops = max(side["total_ios"], 1)
cpu_us = (job["usr_cpu"] + job["sys_cpu"]) / 100 * job["job_runtime"] * 1000
print(json.dumps({"tool": "fio", "variant": "io_uring", "workload": name,
                  "iops": round(side["iops"]), "mb_s": round(side["bw_bytes"] / 1e6, 1),
                  "cpu_us_per_op": round(cpu_us / ops, 2)}))' "$1" "$2"
}

run_fleece() { # variant name rw bs qd
    local variant=$1
    shift
    local env=() args=()
    case $variant in
    node) ;;
    core) args=(--target core) ;;
    tracked) args=(--track-reads) ;;
    threads) env=(FLEECE_IO_BACKEND=threads) ;;
    esac
    env "${env[@]}" "$BENCH" --file "$file" --rw "$2" --bs "$3" --qd "$4" --runtime "$RUNTIME" \
        "${args[@]}" |
        python3 -c '
import json, sys
r = json.loads(sys.stdin.read()); r["workload"] = sys.argv[1]; r["variant"] = sys.argv[2]
print(json.dumps(r))' "$1" "$variant"
}

variants=(node)
[[ $CORE == 1 ]] && variants+=(core)
[[ $TRACK == 1 ]] && variants+=(tracked)
[[ $THREADS == 1 ]] && variants+=(threads)

for rep in $(seq "$REPS"); do
    for w in "${WORKLOADS[@]}"; do
        read -r name rw bs qd <<<"$w"
        echo "== $name: bs=$bs qd=$qd runtime=${RUNTIME}s (rep $rep)"
        run_fio "$name" "$rw" "$bs" "$qd" | tee -a "$results"
        for v in "${variants[@]}"; do
            [[ $v == tracked && $rw != *read ]] && continue
            run_fleece "$v" "$name" "$rw" "$bs" "$qd" | tee -a "$results"
        done
    done
done

echo
python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
best = {}
for r in rows:  # best of the repetitions, per (workload, tool variant)
    k = (r["workload"], r["tool"], r["variant"])
    if k not in best or r["iops"] > best[k]["iops"]:
        best[k] = r
names = list(dict.fromkeys(r["workload"] for r in rows))
variants = list(dict.fromkeys(r["variant"] for r in rows if r["tool"] == "fleece"))
print(f"{'workload':<10} {'fio IOPS':>9} {'MB/s':>7} {'cpu us/op':>9}", end="")
for v in variants:
    print(f" | {'fleece/' + v:>16} {'MB/s':>7} {'ratio':>5} {'cpu us/op':>9}", end="")
print()
for n in names:
    f = best[(n, "fio", "io_uring")]
    print(f"{n:<10} {f['iops']:>9.0f} {f['mb_s']:>7.1f} {f['cpu_us_per_op']:>9.2f}", end="")
    for v in variants:
        r = best.get((n, "fleece", v))
        if r is None:
            print(f" | {'-':>16} {'':>7} {'':>5} {'':>9}", end="")
            continue
        print(f" | {r['iops']:>16.0f} {r['mb_s']:>7.1f} {r['iops'] / f['iops']:>5.2f}"
              f" {r['cpu_us_per_op']:>9.2f}", end="")
    print()
print("ratio = fleece IOPS / fio IOPS (same file, bs, queue depth, runtime; O_DIRECT);"
      " #2 wants every node ratio >= 0.90. cpu us/op = user+system CPU per request.")
PY
