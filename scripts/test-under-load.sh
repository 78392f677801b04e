#!/usr/bin/env bash
# Runs `cargo test` N times beside a CPU hog, as on a shared, busy machine, and
# reports how many runs passed. A flaky test shows up here long before CI.
#
#   scripts/test-under-load.sh 20              20 runs beside one busy loop
#   scripts/test-under-load.sh --hogs 2 10     10 runs beside two (one per core here)
#   scripts/test-under-load.sh 5 -- --test tests robustness
#                                              arguments after -- go to cargo test
#
# Options:
#   --hogs K   busy loops to run beside the tests (default 1; 0 for none)
#
# The tests are built first, without the hog. The output of each failed run is
# kept in a temporary directory, printed at the end; the busy loops are killed
# on exit, on Ctrl-C and on TERM. Exit status: 0 if every run passed, 1 if
# any failed, 2 on a usage error.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
HOGS=1 RUNS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --hogs) HOGS="${2:-}"; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        *) if [ -z "$RUNS" ]; then RUNS=$1; else break; fi ;;
    esac
    shift
done
if ! [[ "$RUNS" =~ ^[1-9][0-9]*$ && "$HOGS" =~ ^[0-9]+$ ]]; then
    echo "test-under-load.sh: give the number of runs (and --hogs a count); see --help" >&2
    exit 2
fi

cargo test --no-run "$@"

HOG_PIDS=()
stop_hogs() { if [ ${#HOG_PIDS[@]} -gt 0 ]; then kill "${HOG_PIDS[@]}" 2>/dev/null || true; fi; }
trap stop_hogs EXIT
trap 'exit 130' INT TERM
for _ in $(seq "$HOGS"); do
    (while :; do :; done) &
    HOG_PIDS+=($!)
done

LOGS=$(mktemp -d "${TMPDIR:-/tmp}/fanout-test-under-load.XXXXXX")
PASSED=0
for run in $(seq "$RUNS"); do
    log="$LOGS/run-$run.log"
    started=$SECONDS
    if cargo test "$@" >"$log" 2>&1; then
        PASSED=$((PASSED + 1))
        echo "run $run/$RUNS: passed ($((SECONDS - started)) s)"
        rm -f "$log"
    else
        failed=$(grep -E '^test .* FAILED$' "$log" | sed 's/^test //; s/ \.\.\. FAILED$//' | xargs || true)
        echo "run $run/$RUNS: FAILED ($((SECONDS - started)) s): ${failed:-see the log}; output in $log"
    fi
done

echo "$PASSED of $RUNS passed (cargo test $*, beside $HOGS busy loop(s) on $(nproc) cores)"
if [ "$PASSED" -lt "$RUNS" ]; then
    echo "the failed runs' output is in $LOGS"
    exit 1
fi
rmdir "$LOGS"
