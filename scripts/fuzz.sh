#!/usr/bin/env bash
# Builds the libFuzzer targets with clang-14 (ASan + UBSan + -fsanitize=fuzzer) in
# $FUZZ_BUILD_DIR (default build-fuzz/) and runs each for N seconds (default 30), niced,
# starting from a copy of its seed corpus in tests/fuzz/corpus/<name> (new inputs stay in
# <dir>/corpus/<name>). Exits non-zero if a target fails to build or finds a crash, leak or
# undefined behaviour (the reproducer is written to <dir>/crashes/, the log to <dir>/<name>.log).
# Not part of scripts/test.sh: the clang build alone takes several minutes on two cores;
# ctest replays the seed corpora instead (label fuzz). See tests/fuzz/README.md.
# Usage: scripts/fuzz.sh [seconds-per-target [target...]]   (targets: names without _fuzz)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
shift || true
dir=${FUZZ_BUILD_DIR:-build-fuzz}
all_targets=(qmp_input qmp_session nbd_codec nbd_connection range_lock qcow2_header)
if (($# > 0)); then targets=("$@"); else targets=("${all_targets[@]}"); fi

command -v clang++-14 >/dev/null || { echo "clang++-14 is required (apt-get install clang-14)" >&2; exit 1; }
# Benchmarks and unit tests are not needed; FLEECE_TESTS stays on for the fuzz directory.
CC=clang-14 CXX=clang++-14 nice cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DFLEECE_FUZZ=ON -DFLEECE_SANITIZE=ON -DFLEECE_BENCH=OFF >/dev/null
nice cmake --build "$dir" -j2 --target "${targets[@]/%/_fuzz}"

mkdir -p "$dir/crashes"
status=0
for t in "${targets[@]}"; do
    corpus=$dir/corpus/$t
    mkdir -p "$corpus"
    cp -n tests/fuzz/corpus/$t/* "$corpus"/ 2>/dev/null || true
    echo "== $t: ${seconds}s"
    # UBSan findings abort (the build uses -fno-sanitize-recover); leaks are reported by
    # LeakSanitizer at the end of each input (-detect_leaks=1 is libFuzzer's default).
    if ! UBSAN_OPTIONS=print_stacktrace=1 nice -n 15 "$dir/tests/${t}_fuzz" \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=25 -rss_limit_mb=4096 \
        -artifact_prefix="$dir/crashes/${t}-" "$corpus" 2>"$dir/$t.log"; then
        echo "FAIL $t (see $dir/$t.log and $dir/crashes/)"
        status=1
    else
        echo "ok   $t: $(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$dir/$t.log")," \
            "corpus $(ls "$corpus" | wc -l) inputs"
    fi
done
exit $status
