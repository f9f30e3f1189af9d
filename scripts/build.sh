#!/usr/bin/env bash
# Configure and build fleece, niced, two jobs at a time:
#   build/       RelWithDebInfo: build/bin/fleeced, build/bin/fleece, benchmarks; e2e tests
#   build-asan/  ASan + UBSan, no benchmarks: unit, fuzz-corpus and simulation tests
# Usage: scripts/build.sh [all|release|asan]   (default: all)
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

if [[ $what != all && $what != release && $what != asan ]]; then
    echo "usage: $0 [all|release|asan]" >&2
    exit 2
fi
if [[ $what == all || $what == release ]]; then
    build_tree build
fi
if [[ $what == all || $what == asan ]]; then
    build_tree build-asan -DFLEECE_SANITIZE=ON -DFLEECE_BENCH=OFF
fi
