# Helpers of scripts/bench-jobs.sh and scripts/bench-durable.sh, sourced by
# them once they have set BIN (the binaries), BUILD (1: build them first) and
# INSTALL (1: may apt-get install a peer). Sourcing it builds, and makes
# $TMP, where every server keeps its pid file, log and data: on exit they
# are all stopped and it is removed.

ME=$(basename "$0")
[ "$BUILD" = 1 ] && cargo build --release -q --bins
TMP=$(mktemp -d)
trap 'for p in "$TMP"/*.pid; do [ -e "$p" ] && kill -TERM -- "-$(cat "$p")" 2>/dev/null; done; rm -rf "$TMP"' EXIT

header() { # the line that says when, where and what was measured
    echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
}

need() { # need <command> <Debian package>
    command -v "$1" >/dev/null && return 0
    if [ "$INSTALL" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "$ME: installing $2 with apt-get" >&2
        apt-get update -qq >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1 || true
    fi
    command -v "$1" >/dev/null && return 0
    echo "$ME: SKIPPING $2: not installed and could not be installed" >&2
    return 1
}
addr() { sed -n 's/.*listening on \([^;]*\);.*/\1/p' "$1"; }
linked() { # linked <server> <pid file>: until its worker's link is up (10 s at most)
    for _ in $(seq 200); do
        grep -q '"link": *"up"' <<<"$("$BIN/$1" status --json --pid-file "$2")" && return 0
        sleep 0.05
    done
    echo "$ME: $1 did not link" >&2
    return 1
}
listening() { # listening <port> [seconds]: until something accepts on it (10 s unless told)
    for _ in $(seq $((${2:-10} * 20))); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "$ME: nothing listens on port $1" >&2
    return 1
}

# Our servers, one worker each: a channel server (given flags), a data
# source at $DS and a subscriber server at $SUBS.
start_fanout() {
    "$BIN/channel-server" start -d --listen 127.0.0.1:0 --pid-file "$TMP/c.pid" --log-file "$TMP/c.log" "$@" >"$TMP/c.out"
    for s in data-source subscriber; do
        "$BIN/$s" start -d --listen 127.0.0.1:0 --count 1 --channel "$(addr "$TMP/c.out")" \
            --pid-file "$TMP/$s.pid" --log-file "$TMP/$s.log" >"$TMP/$s.out"
        linked "$s" "$TMP/$s.pid"
    done
    DS=$(addr "$TMP/data-source.out") SUBS=$(addr "$TMP/subscriber.out")
}
stop_fanout() {
    for s in data-source subscriber channel-server; do
        "$BIN/$s" stop --pid-file "$TMP/${s/channel-server/c}.pid" >/dev/null
    done
    rm -rf "$TMP/data" "$TMP"/*.pid
}

daemon() { # daemon [--name NAME] <command...>: in its own process group, its pid in $TMP/NAME.pid
    local name=peer
    [ "$1" = --name ] && name=$2 && shift 2
    setsid "$@" >"$TMP/$name.log" 2>&1 &
    echo $! >"$TMP/$name.pid"
}
stop_daemon() { # stop_daemon [NAME]
    local pid name=${1:-peer}
    pid=$(cat "$TMP/$name.pid")
    kill -TERM -- "-$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    rm -rf "$TMP/$name.pid" "$TMP/peer-data"
}

# Redis with an append-only file (appendfsync <policy>), port in $PORT.
start_redis() {
    PORT=$("$BIN/fanout-bench" free-port)
    mkdir "$TMP/peer-data"
    daemon redis-server --bind 127.0.0.1 --port "$PORT" --save '' --appendonly yes --appendfsync "$1" \
        --dir "$TMP/peer-data" --daemonize no
    listening "$PORT"
    REDIS="Redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), AOF $1"
}

# NATS with JetStream on file storage, port in $PORT.
start_jetstream() {
    PORT=$("$BIN/fanout-bench" free-port)
    daemon nats-server -js -sd "$TMP/peer-data" -a 127.0.0.1 -p "$PORT"
    listening "$PORT"
    JETSTREAM="NATS $(nats-server --version | sed 's/.*v//') JetStream, file storage"
}
