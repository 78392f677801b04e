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
. scripts/bench-lib.sh

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
    start_fanout "$@"
    bench "fanout, $label" --producer-addr "$DS" --consumer-addr "$SUBS"
    stop_fanout
}

redis() {
    start_redis everysec
    bench "$REDIS" --broker redis --producer-addr "127.0.0.1:$PORT"
    stop_daemon
}

jetstream() {
    start_jetstream
    AGAIN=(--queue bench2) # a stream and a durable of its own
    bench "$JETSTREAM" --broker jetstream --producer-addr "127.0.0.1:$PORT"
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

header
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
