#!/usr/bin/env bash
# Work queues under load (`fanout-bench jobs`), issue 11's comparison in one
# run: one producer, 4 consumers acking every 64-byte job, on our servers (in
# memory, and with a data directory under --fsync always and interval), on
# Redis Streams (a consumer group; AOF with appendfsync everysec) and on a
# NATS JetStream work-queue stream (file storage). Each is measured twice:
# flat out (jobs acked per second) and at a fixed rate below saturation
# (the enqueue->job latency).
#
#   scripts/bench-jobs.sh [--bin-dir DIR] [--peers "LIST"] [--jobs N] [--rate R]
#                         [--no-install] [fanout-bench jobs arguments...]
#
#   --bin-dir DIR   use the binaries in DIR instead of building target/release
#   --peers LIST    from: fanout redis jetstream (default: all three)
#   --jobs N        jobs of each flat-out run (default 100000)
#   --rate R        the fixed rate, jobs/s, for 5 s (default 10000; 0: skip)
#   --no-install    never apt-get install redis-server / nats-server
# Other arguments (e.g. --prefetch 50) go to every `fanout-bench jobs` run 
#
# RabbitMQ is not measured: see BENCHMARKS.md.
#
# Every server is started fresh for each run on free loopback ports, with its
# data in a temporary directory, and stopped afterwards. A run prints one
# line, or FAILED with the reason (a lost or twice-delivered job fails it).
set -euo pipefail
cd "$(dirname "$0")/.."
ARGS=() BIN=target/release PEERS="fanout redis jetstream" JOBS=100000 RATE=10000 INSTALL=1 BUILD=1
while [ $# -gt 0 ]; do
    case $1 in
        --bin-dir) BIN=$2 BUILD=0; shift 2 ;;
        --peers) PEERS=$2; shift 2 ;;
        --jobs) JOBS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
[ "$BUILD" = 1 ] && cargo build --release -q --bins
TMP=$(mktemp -d)
trap 'for p in "$TMP"/*.pid; do [ -e "$p" ] && kill -TERM -- "-$(cat "$p")" 2>/dev/null; done; rm -rf "$TMP"' EXIT

need() { # need <command> <Debian package>
    command -v "$1" >/dev/null && return 0
    if [ "$INSTALL" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "bench-jobs.sh: installing $2 with apt-get" >&2
        apt-get update -qq >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1 || true
    fi
    command -v "$1" >/dev/null && return 0
    echo "bench-jobs.sh: SKIPPING $2: not installed and could not be installed" >&2
    return 1
}
addr() { sed -n 's/.*listening on \([^;]*\);.*/\1/p' "$1"; }
linked() { # linked <server> <pid file>: until its worker's link is up (10 s at most)
    for _ in $(seq 200); do
        grep -q '"link": *"up"' <<<"$("$BIN/$1" status --json --pid-file "$2")" && return 0
        sleep 0.05
    done
    echo "bench-jobs.sh: $1 did not link" >&2
    return 1
}
listening() { # listening <port>: until something accepts on it (10 s at most)
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "bench-jobs.sh: nothing listens on port $1" >&2
    return 1
}

# Arguments of the second run on the same server.
AGAIN=()
bench() { # bench <label> <fanout-bench jobs arguments...>: flat out, then at $RATE
    local label=$1
    shift
    echo -n "$label, flat out: "
    "$BIN/fanout-bench" jobs "$@" "${ARGS[@]}" --jobs "$JOBS" || echo "FAILED"
    if [ "$RATE" != 0 ]; then
        echo -n "$label, at $RATE/s: "
        "$BIN/fanout-bench" jobs "$@" "${ARGS[@]}" "${AGAIN[@]}" --rate "$RATE" --jobs $((RATE * 5)) || echo "FAILED"
    fi
}

fanout() { # fanout <label> <channel-server flags...>
    local label=$1
    shift
    "$BIN/channel-server" start -d --listen 127.0.0.1:0 --pid-file "$TMP/c.pid" --log-file "$TMP/c.log" "$@" >"$TMP/c.out"
    for s in data-source subscriber; do
        "$BIN/$s" start -d --listen 127.0.0.1:0 --count 1 --channel "$(addr "$TMP/c.out")" \
            --pid-file "$TMP/$s.pid" --log-file "$TMP/$s.log" >"$TMP/$s.out"
        linked "$s" "$TMP/$s.pid"
    done
    bench "fanout, $label" --producer-addr "$(addr "$TMP/data-source.out")" --consumer-addr "$(addr "$TMP/subscriber.out")"
    for s in data-source subscriber channel-server; do
        "$BIN/$s" stop --pid-file "$TMP/${s/channel-server/c}.pid" >/dev/null
    done
    rm -rf "$TMP/data" "$TMP"/*.pid
}

daemon() { # daemon <command...>: in its own process group, its pid in $TMP/peer.pid
    setsid "$@" >"$TMP/peer.log" 2>&1 &
    echo $! >"$TMP/peer.pid"
}
stop_daemon() {
    local pid
    pid=$(cat "$TMP/peer.pid")
    kill -TERM -- "-$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    rm -rf "$TMP/peer.pid" "$TMP/peer-data"
}

redis() {
    local port
    port=$("$BIN/fanout-bench" free-port)
    mkdir "$TMP/peer-data"
    daemon redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly yes --appendfsync everysec \
        --dir "$TMP/peer-data" --daemonize no
    listening "$port"
    bench "Redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), AOF everysec" --broker redis --producer-addr "127.0.0.1:$port"
    stop_daemon
}

jetstream() {
    local port
    port=$("$BIN/fanout-bench" free-port)
    daemon nats-server -js -sd "$TMP/peer-data" -a 127.0.0.1 -p "$port"
    listening "$port"
    AGAIN=(--queue bench2) # a stream and a durable of its own
    bench "NATS $(nats-server --version | sed 's/.*v//') JetStream, file storage" --broker jetstream --producer-addr "127.0.0.1:$port"
    AGAIN=()
    stop_daemon
}

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
for peer in $PEERS; do
    case $peer in
        fanout)
            fanout "in memory"
            fanout "--data-dir, --fsync always" --data-dir "$TMP/data" --fsync always
            fanout "--data-dir, --fsync interval (1 s)" --data-dir "$TMP/data" --fsync interval
            ;;
        redis) need redis-server redis-server && redis ;;
        jetstream) need nats-server nats-server && jetstream ;;
        *) echo "bench-jobs.sh: unknown peer $peer (fanout redis jetstream)" >&2; exit 2 ;;
    esac
done
