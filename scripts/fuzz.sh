#!/usr/bin/env bash
# A longer fuzz run than `cargo test` makes, bounded in time.
#
#   scripts/fuzz.sh                      # defaults below: at most 30 minutes
#   FUZZ_CASES=1000000 FUZZ_SEEDS=500 FUZZ_SECONDS=3600 scripts/fuzz.sh
#   FUZZ_SEED_START=12345 scripts/fuzz.sh  # reproduce a run (seeds are printed)
#
# 1. The property tests of the library (the line splitter, telnet stripper,
#    command parser and frame decoder in src/protocol, and the rest of
#    `--lib`), release build, with PROPTEST_CASES=$FUZZ_CASES (default 200000)
#    instead of proptest's 256.
# 2. The end-to-end hostile-input tests (tests/robustness.rs: seeded garbage to
#    both line servers, malformed links to the channel server) once per seed,
#    FUZZ_SEEDS seeds (default 25) from FUZZ_SEED_START (default: random),
#    through the env variable FANOUT_FUZZ_SEED.
#
# Everything stops at FUZZ_SECONDS (default 1800) in total: phase 1 is killed
# after half of it, phase 2 starts no new seed after the deadline. Builds go to
# target/fuzz (CARGO_TARGET_DIR to change), away from the binaries other runs
# and scripts/bench.sh use. Exit status 0 if everything passed; otherwise 1,
# after printing how to reproduce the failure.
set -euo pipefail
cd "$(dirname "$0")/.."

cases=${FUZZ_CASES:-200000}
seeds=${FUZZ_SEEDS:-25}
budget=${FUZZ_SECONDS:-1800}
start_seed=${FUZZ_SEED_START:-$(( (RANDOM << 30) ^ (RANDOM << 15) ^ RANDOM ))}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/fuzz}
deadline=$(( $(date +%s) + budget ))
left() { echo $(( deadline - $(date +%s) )); }

echo "fuzz: building (target dir $CARGO_TARGET_DIR)"
cargo test --release --lib --no-run --quiet
cargo test --test tests --no-run --quiet

if [ "$(left)" -le 0 ]; then
  echo "fuzz: the time limit was spent building"
  exit 0
fi
# Phase 1 gets half of what is left, so that phase 2 always runs: the store's
# property tests write files per case and cannot finish $cases cases in time.
phase1=$(( $(left) / 2 ))
echo "fuzz: phase 1: property tests, PROPTEST_CASES=$cases, at most $phase1 s"
# `timeout` signals its whole process group at the deadline, the test binary included.
status=0
PROPTEST_CASES=$cases timeout --kill-after=10 "$phase1" cargo test --release --lib --quiet || status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
  echo "fuzz: phase 1 stopped at its time limit (no failure found until then)"
  cases="fewer than $cases"
elif [ "$status" -ne 0 ]; then
  echo "fuzz: FAILED in phase 1; reproduce with: PROPTEST_CASES=$cases cargo test --release --lib"
  echo "      (proptest prints the minimal failing input above)"
  exit 1
fi

echo "fuzz: phase 2: end-to-end hostile input, $seeds seed(s) from $start_seed"
ran=0
for (( i = 0; i < seeds; i++ )); do
  if [ "$(left)" -le 0 ]; then
    echo "fuzz: time limit reached"
    break
  fi
  seed=$(( start_seed + i * 7919 ))
  # `hostile` selects both tests; a run takes about a second, the limit only guards against a hang.
  if ! FANOUT_FUZZ_SEED=$seed timeout --kill-after=10 120 \
      cargo test --quiet --test tests hostile >"$CARGO_TARGET_DIR/fuzz-seed.log" 2>&1; then
    cat "$CARGO_TARGET_DIR/fuzz-seed.log"
    echo "fuzz: FAILED with seed $seed; reproduce with:"
    echo "      FANOUT_FUZZ_SEED=$seed cargo test --test tests hostile"
    exit 1
  fi
  ran=$(( ran + 1 ))
done
echo "fuzz: passed: $cases cases per property, $ran seed(s) end to end"
