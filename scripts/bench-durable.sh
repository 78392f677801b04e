#!/usr/bin/env bash
# Issue 10's benchmarks of what is kept, in one run each:
#
# confirm: publishes confirmed as stored (`fanout-bench confirm`), one
#   publisher with 1000 unconfirmed at most, flat out (confirmed publishes/s)
#   and at a fixed rate (the publish->confirm latency): our servers with
#   `confirm on` and a channel server --data-dir --fsync interval, Redis
#   Streams (XADD, AOF appendfsync everysec), NATS JetStream on file storage
#   (PubAck); then --fsync always against Redis appendfsync always. Every
#   server keeps all the messages of a run (ours: --retain-messages above it).
# lag: one subscriber reading at a tenth of the publish rate beside 3 at
#   full speed (`fanout-bench lag`), on a channel server with the default
#   retention (100 000 messages or 64 MiB: the slow one falls behind it and
#   must get GAP lines) and with a retention that holds the whole run (it
#   must get everything); the servers' resident memory is sampled.
#
#   scripts/bench-durable.sh [--bin-dir DIR] [--runs N] [--only confirm|lag]
#                            [--messages N] [--rate R] [--lag-rate R]
#                            [--lag-seconds S] [--no-install]
#
#   --bin-dir DIR     use the binaries in DIR instead of building target/release
#   --runs N          runs of everything (default 3)
#   --only WHAT       confirm or lag (default both)
#   --messages N      publishes of each flat-out confirm run (default 200000)
#   --rate R          the fixed rate of confirm, publishes/s, for 5 s (default 10000; 0: skip)
#   --lag-rate R      the publish rate of lag (default 50000)
#   --lag-seconds S   how long lag publishes (default 30)
#   --no-install      never apt-get install redis-server / nats-server
#
# Every server is started fresh for each run on free loopback ports, with its
# data in a temporary directory, and stopped afterwards (and on exit). A run
# prints its lines, or FAILED with the reason; the script then exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release RUNS=3 ONLY="confirm lag" MESSAGES=200000 RATE=10000 LAG_RATE=50000 LAG_SECONDS=30 INSTALL=1 BUILD=1
while [ $# -gt 0 ]; do
    case $1 in
        --bin-dir) BIN=$2 BUILD=0; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --messages) MESSAGES=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --lag-rate) LAG_RATE=$2; shift 2 ;;
        --lag-seconds) LAG_SECONDS=$2; shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "$0: unknown argument $1" >&2; exit 2 ;;
    esac
done
. scripts/bench-lib.sh
FAILED=0

confirm() { # confirm <label> <fanout-bench confirm arguments...>: flat out, then at $RATE
    local label=$1
    shift
    echo -n "$label, flat out: "
    "$BIN/fanout-bench" confirm "$@" --messages "$MESSAGES" || { echo "FAILED"; FAILED=1; }
    if [ "$RATE" != 0 ]; then
        echo -n "$label, at $RATE/s: "
        "$BIN/fanout-bench" confirm "$@" --topic bench2 --rate "$RATE" --messages $((RATE * 5)) || { echo "FAILED"; FAILED=1; }
    fi
}
fanout_confirm() { # fanout_confirm <fsync policy>
    start_fanout --data-dir "$TMP/data" --fsync "$1" --retain-messages $((MESSAGES + RATE * 5))
    confirm "fanout, confirm on, --data-dir --fsync $1" --addr "$DS"
    stop_fanout
}
redis_confirm() { # redis_confirm <appendfsync policy>
    start_redis "$1"
    confirm "$REDIS (XADD)" --broker redis --addr "127.0.0.1:$PORT"
    stop_daemon
}
jetstream_confirm() {
    start_jetstream
    confirm "$JETSTREAM (PubAck)" --broker jetstream --addr "127.0.0.1:$PORT"
    stop_daemon
}

lag() { # lag <label> <channel-server flags...>
    local label=$1
    shift
    start_fanout "$@"
    echo "fanout, $label:"
    "$BIN/fanout-bench" lag --pub-addr "$DS" --sub-addr "$SUBS" --rate "$LAG_RATE" --seconds "$LAG_SECONDS" \
        --server-pid "$(cat "$TMP/c.pid")" --server-pid "$(cat "$TMP/data-source.pid")" \
        --server-pid "$(cat "$TMP/subscriber.pid")" || { echo "FAILED"; FAILED=1; }
    stop_fanout
}

header
for run in $(seq "$RUNS"); do
    echo "## run $run of $RUNS"
    for what in $ONLY; do
        case $what in
            confirm)
                fanout_confirm interval
                need redis-server redis-server && redis_confirm everysec
                need nats-server nats-server && jetstream_confirm
                fanout_confirm always
                need redis-server redis-server && redis_confirm always
                ;;
            lag)
                lag "default retention (100 000 messages)"
                # Its 64-byte payloads, and more for the bytes bound (64 MiB by default).
                lag "retention above the run" --retain-messages $((LAG_RATE * LAG_SECONDS + 1)) \
                    --retain-bytes $((LAG_RATE * LAG_SECONDS * 128))
                ;;
            *) echo "$0: unknown benchmark $what (confirm lag)" >&2; exit 2 ;;
        esac
    done
done
exit "$FAILED"
