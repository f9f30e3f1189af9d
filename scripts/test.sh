#!/usr/bin/env bash
# The whole check, as CI runs it (.ci/run) and the README's second command:
#   1. install dependencies (skipped when all are present)
#   2. build build/ (release) and build-asan/ (ASan + UBSan)
#   3. unit, fuzz-corpus and simulation tests under ASan
#   4. end-to-end tests (pytest, driving the real daemon) on the release build
#   5. clang-format-14 check of src/ tests/ bench/
# Exits non-zero when anything fails; the last line sums up.
set -uo pipefail
cd "$(dirname "$0")/.."

logdir=$(mktemp -d "${TMPDIR:-/tmp}/fleece-test.XXXXXX")
trap 'rm -rf "$logdir"' EXIT

passed=0
failed=0
steps=()

note() { # step-name status detail
    steps+=("$(printf '  %-12s %-6s %s' "$1" "$2" "$3")")
}

# Run a ctest step; count its tests from ctest's own closing line.
# "No tests were found" is an error (--no-tests=error), counted as one failure.
ctest_step() {
    local name=$1
    shift
    local log=$logdir/$name.log
    echo "== $name: ctest $*"
    ctest "$@" --no-tests=error 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    local line p=0 f=0 total
    line=$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n 1 || true)
    if [[ -n $line ]]; then
        f=$(sed -E 's/.*passed, ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"$line")
        total=$(sed -E 's/.*failed out of ([0-9]+).*/\1/' <<<"$line")
        p=$((total - f))
    fi
    if [[ $rc -ne 0 && $f -eq 0 ]]; then
        f=1 # ctest failed without a failing test: no tests found, or a setup error
    fi
    passed=$((passed + p))
    failed=$((failed + f))
    if [[ $rc -eq 0 ]]; then
        note "$name" ok "$p tests"
    else
        note "$name" FAILED "$p passed, $f failed (exit $rc)"
    fi
}

format_step() {
    echo "== format: clang-format-14 --dry-run --Werror"
    if ! command -v clang-format-14 >/dev/null; then
        echo "clang-format-14 is not installed (scripts/install-deps.sh installs it)"
        failed=$((failed + 1))
        note format FAILED "clang-format-14 missing"
        return
    fi
    local files=()
    mapfile -t files < <(find src tests bench -type f \( -name '*.cpp' -o -name '*.hpp' \) | sort)
    if [[ ${#files[@]} -eq 0 ]]; then
        note format ok "no C++ files"
        return
    fi
    if clang-format-14 --dry-run --Werror "${files[@]}"; then
        passed=$((passed + 1))
        note format ok "${#files[@]} files"
    else
        failed=$((failed + 1))
        note format FAILED "run: clang-format-14 -i \$(git ls-files '*.cpp' '*.hpp')"
    fi
}

summary() {
    echo
    echo "== summary"
    printf '%s\n' "${steps[@]}"
    echo "summary: $passed passed, $failed failed"
}

echo "== install-deps"
if ! bash scripts/install-deps.sh; then
    failed=$((failed + 1))
    note install-deps FAILED ""
    summary
    exit 1
fi
note install-deps ok ""

echo "== build"
if ! bash scripts/build.sh ci; then
    failed=$((failed + 1))
    note build FAILED "see the compiler output above"
    summary
    exit 1
fi
note build ok "build/ build-asan/"

ctest_step unit-asan --test-dir build-asan -L 'unit|fuzz|sim' --output-on-failure -j2
ctest_step e2e --test-dir build -L e2e --output-on-failure
format_step

summary
[[ $failed -eq 0 ]]
