#!/usr/bin/env bash
# Instructions per message of each server in the 1000-topic scenario, counted
# by valgrind's callgrind: a count, not a time, so it repeats on a busy machine
# and compares two builds where a throughput run on a shared 2-core box cannot
# (BENCHMARKS.md, issue 10). One worker per server; one of the three servers
# runs under callgrind at a time (about 50 times slower), the others natively.
#
#   scripts/callgrind-topics.sh [--bin-dir DIR] [--messages N] [--servers "LIST"]
#
#   --bin-dir DIR    the binaries (default: target/release, built here)
#   --messages N     messages of the run (default 100000), over 1000 topics
#   --servers LIST   from: channel-server subscriber data-source (default: all)
#
# Prints, per server, the instructions of its worker process divided by the
# messages (startup and the 1000 subscriptions included: about 1 % at 100 000).
# The callgrind files stay in the temporary directory it names, for
# `callgrind_annotate`. With VALGRIND_OPTS=--cache-sim=yes they also count the
# simulated cache misses (the `summary:` line of the worker's file; this shared
# box has no hardware counters), which explain what instructions do not.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release N=100000 SERVERS="channel-server subscriber data-source" BUILD=1
while [ $# -gt 0 ]; do
    case $1 in
        --bin-dir) BIN=$2 BUILD=0; shift 2 ;;
        --messages) N=$2; shift 2 ;;
        --servers) SERVERS=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "callgrind-topics.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
command -v valgrind >/dev/null || { echo "callgrind-topics.sh: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
INSTALL=0
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh # builds if asked; `listening`
OUT=$(mktemp -d) # kept: the callgrind files, for callgrind_annotate
echo "callgrind files in $OUT"

# run <server under callgrind>: one run of the scenario.
run() {
    local traced=$1 d ch sp dp
    d=$(mktemp -d -p "$OUT")
    read -r ch sp dp < <("$BIN/fanout-bench" free-port 3 | xargs)
    start() { # start <binary> <args...>: under callgrind if it is the traced one
        local bin=$1
        shift
        if [ "$bin" = "$traced" ]; then
            valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$d/$bin.%p" \
                "$BIN/$bin" start "$@" >"$d/$bin.out" 2>&1 &
        else
            "$BIN/$bin" start "$@" -d >"$d/$bin.out" 2>&1
        fi
    }
    stop_all() {
        for s in data-source subscriber channel-server; do
            [ -e "$d/$s.pid" ] && "$BIN/$s" stop --pid-file "$d/$s.pid" --timeout 60 >/dev/null 2>&1
        done
        wait 2>/dev/null || true
    }
    trap stop_all RETURN
    start channel-server --listen "127.0.0.1:$ch" --pid-file "$d/channel-server.pid"
    listening "$ch" 30 # a server under valgrind starts slowly
    start subscriber --listen "127.0.0.1:$sp" --channel "127.0.0.1:$ch" --count 1 --pid-file "$d/subscriber.pid"
    start data-source --listen "127.0.0.1:$dp" --channel "127.0.0.1:$ch" --count 1 --pid-file "$d/data-source.pid"
    listening "$sp" 30
    listening "$dp" 30
    "$BIN/fanout-bench" run --proto fanout --scenario topics --topics 1000 --messages "$N" \
        --pub-addr "127.0.0.1:$dp" --sub-addr "127.0.0.1:$sp" >"$d/bench.out" 2>&1 ||
        { cat "$d/bench.out" >&2; return 1; }
    stop_all
    # The worker is the traced process that ran longest: the largest count.
    local best=0 f n
    for f in "$d/$traced".*; do
        # The first event is Ir; with VALGRIND_OPTS=--cache-sim=yes the
        # line goes on with the cache misses (see callgrind_annotate).
        n=$(sed -n 's/^summary: //p; s/^totals: //p' "$f" | head -1 | cut -d' ' -f1)
        [ "${n:-0}" -gt "$best" ] && best=$n
    done
    printf '%-15s %12d instructions, %6d per message\n' "$traced" "$best" $((best / N))
}

for s in $SERVERS; do run "$s"; done
