#!/usr/bin/env bash
# Work queues under load (`fanout-bench jobs`), issue 11's comparison in one
# run: one producer, 4 consumers acking every 64-byte job, on our servers (in
# memory, and with a data directory under --fsync always and interval), on
# Redis Streams (a consumer group; AOF with appendfsync everysec), on a
# NATS JetStream work-queue stream (file storage) and on RabbitMQ (a durable
# queue, persistent messages, publisher confirms). Each is measured twice:
# flat out (jobs acked per second) and at a fixed rate below saturation
# (the enqueue->job latency).
#
#   scripts/bench-jobs.sh [--bin-dir DIR] [--peers "LIST"] [--jobs N] [--rate R]
#                         [--no-install] [fanout-bench jobs arguments...]
#
#   --bin-dir DIR   use the binaries in DIR instead of building target/release
#   --peers LIST    from: fanout redis jetstream rabbitmq (default: all four)
#   --jobs N        jobs of each flat-out run (default 100000)
#   --rate R        the fixed rate, jobs/s, for 5 s (default 2000, below
#                   RabbitMQ's saturation here; 0: skip)
#   --no-install    never apt-get install redis-server / nats-server /
#                   rabbitmq-server
# Other arguments (e.g. --prefetch 50) go to every `fanout-bench jobs` run
#
# Every server is started fresh for each run on free loopback ports, with its
# data in a temporary directory, and stopped afterwards. A run prints one
# line, or FAILED with the reason (a lost or twice-delivered job fails it).
set -euo pipefail
cd "$(dirname "$0")/.."
ARGS=() BIN=target/release PEERS="fanout redis jetstream rabbitmq" JOBS=100000 RATE=2000 INSTALL=1 BUILD=1
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
listening() { # listening <port> [seconds]: until something accepts on it (10 s at most)
    for _ in $(seq $((${2:-10} * 20))); do
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

rabbitmq() {
    # A private node: its own Erlang port mapper, ports, cookie (in HOME),
    # data and logs in the temporary directory, no plugins, no system config.
    local port epmd dir=$TMP/peer-data version
    port=$("$BIN/fanout-bench" free-port)
    epmd=$("$BIN/fanout-bench" free-port)
    mkdir -p "$dir/home"
    : >"$dir/enabled_plugins"
    local node=(env HOME="$dir/home" ERL_EPMD_PORT="$epmd" RABBITMQ_NODENAME="bench-$$@localhost"
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$port"
        RABBITMQ_DIST_PORT="$("$BIN/fanout-bench" free-port)" RABBITMQ_MNESIA_BASE="$dir/mnesia"
        RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
        RABBITMQ_CONF_ENV_FILE=/dev/null RABBITMQ_CONFIG_FILE="$dir/none"
        RABBITMQ_ADVANCED_CONFIG_FILE="$dir/none.config")
    # epmd in the foreground, so that stopping its process group ends it
    # (RabbitMQ would start a detached one).
    daemon --name epmd "${node[@]}" epmd -port "$epmd"
    daemon "${node[@]}" /usr/lib/rabbitmq/bin/rabbitmq-server
    listening "$port" 60
    version=$(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null | sed 's/-.*//')
    bench "RabbitMQ ${version:-?}, durable queue, persistent, confirms" --broker rabbitmq --producer-addr "127.0.0.1:$port"
    stop_daemon # beam's helpers (erl_child_setup, inet_gethost) leave with it
    stop_daemon epmd
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
        rabbitmq) need /usr/lib/rabbitmq/bin/rabbitmq-server rabbitmq-server && need epmd erlang-base && rabbitmq ;;
        *) echo "bench-jobs.sh: unknown peer $peer (fanout redis jetstream rabbitmq)" >&2; exit 2 ;;
    esac
done
