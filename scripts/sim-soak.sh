#!/usr/bin/env bash
# A longer hunt than CI's: the deterministic simulations (ctest label sim) over many more
# seeds, in the ASan/UBSan build. Each simulation stops at its first failing seed and
# names it; rerun that seed alone with FLEECE_SIM_SEEDS=SEED:1.
#
#   bash scripts/sim-soak.sh [SEEDS]      # SEEDS: COUNT or FIRST:COUNT (default 5000)
#
# Builds build-asan/ first (scripts/build.sh asan); run scripts/install-deps.sh before on a
# fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-5000}
log=$(mktemp "${TMPDIR:-/tmp}/sim-soak-build.XXXXXX")
if ! bash scripts/build.sh asan >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "sim-soak: the ASan build failed (the end of its log is above; all of it: $log)" >&2
    exit 1
fi
rm -f "$log"
echo "simulations over seeds ${seeds} (ASan/UBSan)"
FLEECE_SIM_SEEDS=$seeds ctest --test-dir build-asan -L sim -j "$(nproc)" --timeout 86400 --output-on-failure
