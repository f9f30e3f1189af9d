#!/usr/bin/env bash
# Configure and build fleece, niced, two jobs at a time:
#   build/       RelWithDebInfo (-O2): bin/fleeced, bin/fleece, benchmarks, e2e tests
#   build-asan/  ASan + UBSan (-O1), no benchmarks: unit, fuzz-replay and simulation tests
# Usage: scripts/build.sh [all|release|asan|ci|bins]   (default: all)
#   all      both trees, everything (what a developer wants)
#   release  build/ with unit tests;  asan  build-asan/
#   ci       what scripts/test.sh runs: build/ without unit-test binaries (their tests run
#            in build-asan/, so CI compiles them once), plus build-asan/
#   bins     build/ without unit-test binaries: the daemon, the CLI, benchmarks (the demo)
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-all}

build_tree() { # dir cmake-options...
    local dir=$1
    shift
    echo "== build $dir"
    nice cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@"
    nice cmake --build "$dir" -j2
}

case $what in
all | release | asan | ci | bins) ;;
*)
    echo "usage: $0 [all|release|asan|ci|bins]" >&2
    exit 2
    ;;
esac
case $what in
all | release) build_tree build -DFLEECE_UNIT_TESTS=ON ;;
ci | bins)
    # A developer's build/ that has unit tests keeps them: switching them off there would
    # leave stale test binaries behind and rebuild everything on the next `all`.
    if grep -q '^FLEECE_UNIT_TESTS:BOOL=ON' build/CMakeCache.txt 2>/dev/null; then
        build_tree build
    else
        build_tree build -DFLEECE_UNIT_TESTS=OFF
    fi
    ;;
esac
case $what in
all | asan | ci) build_tree build-asan -DFLEECE_SANITIZE=ON -DFLEECE_BENCH=OFF -DFLEECE_UNIT_TESTS=ON ;;
esac
