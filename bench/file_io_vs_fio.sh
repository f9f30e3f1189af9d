#!/usr/bin/env bash
# Side-by-side: fleece's I/O core (build/bin/fleece_file_io_bench) vs fio on io_uring,
# same file, same block size, same queue depth, same runtime, O_DIRECT.
#
#   bash bench/file_io_vs_fio.sh            # io_uring backend vs fio
#   THREADS=1 bash bench/file_io_vs_fio.sh  # also run the thread-pool fallback backend
#
# Env: RUNTIME (seconds per run, default 5), SIZE (test file size, default 1G),
#      BENCH_DIR (where the test file lives; must support O_DIRECT, so not tmpfs;
#      default build/bench-tmp), THREADS=1 (add FLEECE_IO_BACKEND=threads runs).
# Prints every raw result as a JSON line, then a table with the ratio fleece/fio.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME=${RUNTIME:-5}
SIZE=${SIZE:-1G}
BENCH_DIR=${BENCH_DIR:-build/bench-tmp}
THREADS=${THREADS:-0}
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

run_fio() { # name rw bs qd
    fio --name="$1" --filename="$file" --ioengine=io_uring --direct=1 --rw="$2" --bs="$3" \
        --iodepth="$4" --numjobs=1 --runtime="$RUNTIME" --time_based --output-format=json |
        python3 -c '
import json, sys
name, rw = sys.argv[1], sys.argv[2]
job = json.load(sys.stdin)["jobs"][0]
side = job["write"] if "write" in rw else job["read"]
print(json.dumps({"tool": "fio", "backend": "io_uring", "workload": name, "iops": round(side["iops"]),
                  "mb_s": round(side["bw_bytes"] / 1e6, 1)}))' "$1" "$2"
}

run_fleece() { # backend name rw bs qd
    local backend=$1
    shift
    local env=()
    [[ $backend == threads ]] && env=(FLEECE_IO_BACKEND=threads)
    env "${env[@]}" "$BENCH" --file "$file" --rw "$2" --bs "$3" --qd "$4" --runtime "$RUNTIME" |
        python3 -c '
import json, sys
r = json.loads(sys.stdin.read()); r["workload"] = sys.argv[1]; print(json.dumps(r))' "$1"
}

for w in "${WORKLOADS[@]}"; do
    read -r name rw bs qd <<<"$w"
    echo "== $name: bs=$bs qd=$qd runtime=${RUNTIME}s"
    run_fio "$name" "$rw" "$bs" "$qd" | tee -a "$results"
    run_fleece io_uring "$name" "$rw" "$bs" "$qd" | tee -a "$results"
    if [[ $THREADS == 1 ]]; then
        run_fleece threads "$name" "$rw" "$bs" "$qd" | tee -a "$results"
    fi
done

echo
python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {(r["workload"], r["tool"], r["backend"]): r for r in rows}
names = list(dict.fromkeys(r["workload"] for r in rows))
backends = [b for b in ("io_uring", "threads") if any(r["tool"] == "fleece" and r["backend"] == b for r in rows)]
head = f"{'workload':<10} {'fio IOPS':>10} {'fio MB/s':>9}"
for b in backends:
    head += f" {'fleece/' + b + ' IOPS':>22} {'MB/s':>8} {'ratio':>6}"
print(head)
for n in names:
    f = by[(n, "fio", "io_uring")]
    line = f"{n:<10} {f['iops']:>10.0f} {f['mb_s']:>9.1f}"
    for b in backends:
        r = by[(n, "fleece", b)]
        line += f" {r['iops']:>22.0f} {r['mb_s']:>8.1f} {r['iops'] / f['iops']:>6.2f}"
    print(line)
print("ratio = fleece IOPS / fio IOPS (same file, bs, queue depth, runtime; O_DIRECT)")
PY
