#!/usr/bin/env bash
# Work queues under load (`fanout-bench jobs`): one producer, 4 consumers
# acking every 64-byte job, with the channel server in memory and with a
# data directory under --fsync always and interval. Our servers only: the
# comparison with RabbitMQ, Redis Streams and NATS JetStream of issue 11 is
# not written yet.
#
#   scripts/bench-jobs.sh [--bin-dir DIR] [fanout-bench jobs arguments...]
#
# Each configuration starts fresh servers (one worker each) on free loopback
# ports in a temporary directory and stops them afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
if [ "${1:-}" = --bin-dir ]; then BIN=$2; shift 2; else cargo build --release -q --bins; fi
TMP=$(mktemp -d)
trap 'for p in "$TMP"/*.pid; do [ -e "$p" ] && kill -TERM -- "-$(cat "$p")" 2>/dev/null; done; rm -rf "$TMP"' EXIT

addr() { sed -n 's/.*listening on \([^;]*\);.*/\1/p' "$1"; }
linked() { # linked <server> <pid file>: until its worker's link is up (10 s at most)
    for _ in $(seq 200); do
        grep -q '"link": *"up"' <<<"$("$BIN/$1" status --json --pid-file "$2")" && return 0
        sleep 0.05
    done
    echo "bench-jobs.sh: $1 did not link" >&2
    return 1
}

run() { # run <name> <channel-server flags...>
    local name=$1
    shift
    "$BIN/channel-server" start -d --listen 127.0.0.1:0 --pid-file "$TMP/c.pid" --log-file "$TMP/c.log" "$@" >"$TMP/c.out"
    local ch
    ch=$(addr "$TMP/c.out")
    for s in data-source subscriber; do
        "$BIN/$s" start -d --listen 127.0.0.1:0 --count 1 --channel "$ch" \
            --pid-file "$TMP/$s.pid" --log-file "$TMP/$s.log" >"$TMP/$s.out"
        linked "$s" "$TMP/$s.pid"
    done
    echo -n "$name: "
    "$BIN/fanout-bench" jobs --producer-addr "$(addr "$TMP/data-source.out")" \
        --consumer-addr "$(addr "$TMP/subscriber.out")" "${ARGS[@]}" || echo "FAILED"
    for s in data-source subscriber channel-server; do
        p=$TMP/${s/channel-server/c}.pid
        "$BIN/$s" stop --pid-file "$p" >/dev/null
    done
    rm -rf "$TMP/data"
}

ARGS=("$@")
run "in memory" 
run "--data-dir, --fsync always" --data-dir "$TMP/data" --fsync always
run "--data-dir, --fsync interval (1 s)" --data-dir "$TMP/data" --fsync interval
