#!/usr/bin/env bash
# Benchmarks the fanout servers against NATS and Redis on this machine.
#
#   scripts/bench.sh            full run: every scenario, 3 runs each (~6 min)
#   scripts/bench.sh --quick    every scenario once, smaller (~1-2 min)
#   scripts/bench.sh --smoke    a few seconds, our servers only (lines and ws) unless --peers says
#                               otherwise; no apt-get; exits 1 if any run FAILED
#
# Options:
#   --runs N          runs per scenario (default 3; quick and smoke: 1)
#   --peers "LIST"    servers to measure, from: fanout nats redis ws (ws: our
#                     servers over WebSocket instead of the line protocol)
#                     and on a 3-node NATS cluster: fanout-nats3 (our servers
#                     with --bus, data source on node A, subscriber on node B)
#                     and nats3 (clients on NATS directly: publishers on A,
#                     subscribers on B)
#   --scenarios "L"   only these scenario names (fanout1 fanout10 fanout100
#                     fanout1000 fanout4x100 topics latency10k latency50k conns
#                     storm)
#   --bin-dir DIR     use the binaries in DIR instead of building (e.g. target/debug)
#   --out DIR         where results.jsonl and table.md go (default target/bench/<time>)
#   --no-install      never apt-get install nats-server / redis-server
#   --keep            keep the temporary directory (pid files, server logs)
#   --bench-args "A"  extra arguments for every fanout-bench run (e.g. --sub-threads 1)
# Environment: SUB_WORKERS, DS_WORKERS (worker processes of our subscriber and
#   data-source servers; default one per core each, as they would be
#   deployed), SEND_QUEUE (their --max-send-queue), CHANNEL_ARGS (more
#   arguments for our channel server, e.g. "--retain-messages 1000" or
#   "--data-dir /tmp/d --fsync interval"),
#   FANOUT_REV (what to call the measured build in the header; default: the
#   git revision when built here, else the --bin-dir path).
#
# The storm scenario (`fanout-bench storm`, fanout and NATS) subscribes 100 000
# topics from 100 connections while a publisher streams 2000 messages/s on an
# unrelated topic: the subscription rate and that stream's latency.
#
# With the conns scenario it also measures the machine's floor for it
# (`fanout-bench floor`: the same writes and reads with no server at all), and
# with a latency scenario the latency of one socket crossing (`fanout-bench hop`).
#
# Every server is started on a free loopback port with its own pid and log
# files in a temporary directory, freshly for each run, and stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=full RUNS="" PEERS="" SCENARIOS="" BIN_DIR="" OUT="" INSTALL=1 KEEP=0 EXTRA=
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) MODE=quick ;;
        --smoke) MODE=smoke ;;
        --runs) RUNS="$2"; shift ;;
        --peers) PEERS="$2"; shift ;;
        --scenarios) SCENARIOS="$2"; shift ;;
        --bin-dir) BIN_DIR="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --no-install) INSTALL=0 ;;
        --keep) KEEP=1 ;;
        --bench-args) EXTRA="$2"; shift ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$MODE" in
    full)  RUNS=${RUNS:-3}; PEERS=${PEERS:-"fanout ws nats redis"} ;;
    quick) RUNS=${RUNS:-1}; PEERS=${PEERS:-"fanout ws nats redis"} ;;
    smoke) RUNS=${RUNS:-1}; PEERS=${PEERS:-"fanout ws"}; INSTALL=0 ;;
esac
SUB_WORKERS=${SUB_WORKERS:-$(nproc)} DS_WORKERS=${DS_WORKERS:-$(nproc)} SEND_QUEUE=${SEND_QUEUE:-}

log() { echo "bench.sh: $*" >&2; }

# ── binaries ──────────────────────────────────────────────────────────────
if [ -z "$BIN_DIR" ]; then
    log "building (cargo build --profile bench-release: LTO, a few minutes the first time)"
    cargo build --profile bench-release
    BIN_DIR=target/bench-release
    FANOUT_REV=${FANOUT_REV:-$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src bin 2>/dev/null || echo '+changes')}
fi
FANOUT_REV=${FANOUT_REV:-"binaries in $BIN_DIR"}
BENCH="$BIN_DIR/fanout-bench"
[ -x "$BENCH" ] || { log "$BENCH not found"; exit 1; }

# 10 000 connections need file descriptors on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fanout-bench.XXXXXX")
OUT=${OUT:-target/bench/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"

# ── peers: install if missing ─────────────────────────────────────────────
APT_UPDATED=0
have_peer() { # have_peer <command> <debian package>
    command -v "$1" >/dev/null && return 0
    if [ "$INSTALL" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing $2 with apt-get"
        if [ "$APT_UPDATED" = 0 ]; then apt-get update -qq >/dev/null 2>&1 || true; APT_UPDATED=1; fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1 || true
    fi
    command -v "$1" >/dev/null
}
ACTIVE=""
for p in $PEERS; do
    case "$p" in
        fanout|ws) ACTIVE+=" $p" ;;
        nats|nats3|fanout-nats3) if have_peer nats-server nats-server; then ACTIVE+=" $p"; else log "SKIPPING $p: nats-server is not installed and could not be installed"; fi ;;
        redis) if have_peer redis-server redis-server; then ACTIVE+=" redis"; else log "SKIPPING Redis: redis-server is not installed and could not be installed"; fi ;;
        *) log "unknown peer $p"; exit 2 ;;
    esac
done

# ── starting and stopping servers ─────────────────────────────────────────
# Each start_* sets PUB_ADDR, SUB_ADDR and SERVER_PIDS; STOP holds the command
# that stops what is running now.
STOP=""
stop_current() { if [ -n "$STOP" ]; then eval "$STOP" || true; STOP=""; fi; }
cleanup() {
    stop_current
    if [ "$KEEP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() { # wait_port <port>: up to 10 s
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

kill_wait() { # kill_wait <pid>: TERM, then KILL after 10 s
    kill "$1" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
}

start_fanout() { # start_fanout <dir>
    local d=$1 ch sp dp
    read -r ch sp dp < <("$BENCH" free-port 3 | xargs)
    local q=()
    [ -n "$SEND_QUEUE" ] && q=(--max-send-queue "$SEND_QUEUE")
    STOP="stop_fanout $d"
    # shellcheck disable=SC2086 # CHANNEL_ARGS is a list of arguments
    "$BIN_DIR/channel-server" start --listen "127.0.0.1:$ch" ${CHANNEL_ARGS:-} --pid-file "$d/ch.pid" --log-file "$d/ch.log" -d >>"$d/start.log" 2>&1 &&
    "$BIN_DIR/subscriber" start --listen "127.0.0.1:$sp" --channel "127.0.0.1:$ch" --count "$SUB_WORKERS" "${q[@]}" \
        --pid-file "$d/sub.pid" --log-file "$d/sub.log" -d >>"$d/start.log" 2>&1 &&
    "$BIN_DIR/data-source" start --listen "127.0.0.1:$dp" --channel "127.0.0.1:$ch" --count "$DS_WORKERS" "${q[@]}" \
        --pid-file "$d/ds.pid" --log-file "$d/ds.log" -d >>"$d/start.log" 2>&1 || return 1
    PUB_ADDR="127.0.0.1:$dp" SUB_ADDR="127.0.0.1:$sp"
    SERVER_PIDS="$(cat "$d/ch.pid" "$d/sub.pid" "$d/ds.pid" | xargs)"
}
start_ws() { start_fanout "$@"; } # the same servers, spoken to over WebSocket
stop_fanout() {
    "$BIN_DIR/data-source" stop --pid-file "$1/ds.pid" --timeout 10 >/dev/null 2>&1 || true
    "$BIN_DIR/subscriber" stop --pid-file "$1/sub.pid" --timeout 10 >/dev/null 2>&1 || true
    "$BIN_DIR/channel-server" stop --pid-file "$1/ch.pid" --timeout 10 >/dev/null 2>&1 || true
}

start_nats() {
    local d=$1 port
    port=$("$BENCH" free-port 1)
    nats-server -a 127.0.0.1 -p "$port" -l "$d/nats.log" >>"$d/start.log" 2>&1 &
    SERVER_PIDS=$! STOP="kill_wait $!"
    wait_port "$port" || return 1
    PUB_ADDR="127.0.0.1:$port" SUB_ADDR=$PUB_ADDR
}

wait_routes() { # wait_routes <monitoring port>: until that NATS node has routes to both others, up to 10 s
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'GET /routez HTTP/1.0\r\n\r\n' >&3 && grep -q '"num_routes": 2' <&3) 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# Three nats-server nodes routed to each other; NATS_A, NATS_B, NATS_C are their client addresses.
start_nats3() {
    local d=$1 ports pids="" i
    read -r -a ports < <("$BENCH" free-port 9 | xargs)
    for i in 0 1 2; do
        local routes=()
        [ "$i" -gt 0 ] && routes=(--routes "nats://127.0.0.1:${ports[1]}")
        nats-server -a 127.0.0.1 -p "${ports[$((i * 3))]}" -m "${ports[$((i * 3 + 2))]}" --cluster_name bench \
            --cluster "nats://127.0.0.1:${ports[$((i * 3 + 1))]}" "${routes[@]}" -l "$d/nats$i.log" >>"$d/start.log" 2>&1 &
        pids+=" $!"
    done
    SERVER_PIDS=${pids# } STOP="for p in $pids; do kill_wait \$p; done"
    for i in 0 1 2; do wait_routes "${ports[$((i * 3 + 2))]}" || return 1; done
    NATS_A="127.0.0.1:${ports[0]}" NATS_B="127.0.0.1:${ports[3]}" NATS_C="127.0.0.1:${ports[6]}"
    PUB_ADDR=$NATS_A SUB_ADDR=$NATS_B
}

# Our servers on the 3-node cluster: the data source on node A, the subscriber on node B.
start_fanout-nats3() {
    local d=$1 sp dp
    start_nats3 "$d" || return 1
    local nats_stop=$STOP nats_pids=$SERVER_PIDS
    read -r sp dp < <("$BENCH" free-port 2 | xargs)
    local q=()
    [ -n "$SEND_QUEUE" ] && q=(--max-send-queue "$SEND_QUEUE")
    STOP="stop_fanout $d; $nats_stop"
    "$BIN_DIR/subscriber" start --listen "127.0.0.1:$sp" --bus "nats://$NATS_B,nats://$NATS_C,nats://$NATS_A" \
        --count "$SUB_WORKERS" "${q[@]}" --pid-file "$d/sub.pid" --log-file "$d/sub.log" -d >>"$d/start.log" 2>&1 &&
    "$BIN_DIR/data-source" start --listen "127.0.0.1:$dp" --bus "nats://$NATS_A,nats://$NATS_B,nats://$NATS_C" \
        --count "$DS_WORKERS" "${q[@]}" --pid-file "$d/ds.pid" --log-file "$d/ds.log" -d >>"$d/start.log" 2>&1 || return 1
    PUB_ADDR="127.0.0.1:$dp" SUB_ADDR="127.0.0.1:$sp"
    SERVER_PIDS="$nats_pids $(cat "$d/sub.pid" "$d/ds.pid" | xargs)"
}

start_redis() {
    local d=$1 port
    port=$("$BENCH" free-port 1)
    redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --maxclients 12000 \
        --dir "$d" --logfile "$d/redis.log" --daemonize no >>"$d/start.log" 2>&1 &
    SERVER_PIDS=$! STOP="kill_wait $!"
    wait_port "$port" || return 1
    PUB_ADDR="127.0.0.1:$port" SUB_ADDR=$PUB_ADDR
}

# ── scenarios ─────────────────────────────────────────────────────────────
# name | fanout-bench arguments, per mode.
scenarios() {
    case "$MODE" in
        full) cat <<'EOF'
fanout1|--scenario fanout --subs 1 --messages 4000000
fanout10|--scenario fanout --subs 10 --messages 2000000
fanout100|--scenario fanout --subs 100 --messages 200000
fanout1000|--scenario fanout --subs 1000 --messages 20000
fanout4x100|--scenario fanout --pubs 4 --subs 100 --messages 200000
topics|--scenario topics --topics 1000 --messages 1000000
latency10k|--scenario latency --rate 10000 --messages 50000
latency50k|--scenario latency --rate 50000 --messages 250000
conns|--scenario conns --subs 10000 --messages 10
EOF
        ;;
        quick) cat <<'EOF'
fanout1|--scenario fanout --subs 1 --messages 200000
fanout10|--scenario fanout --subs 10 --messages 50000
fanout100|--scenario fanout --subs 100 --messages 5000
fanout1000|--scenario fanout --subs 1000 --messages 1000
fanout4x100|--scenario fanout --pubs 4 --subs 100 --messages 5000
topics|--scenario topics --topics 1000 --messages 50000
latency10k|--scenario latency --rate 10000 --messages 10000
latency50k|--scenario latency --rate 50000 --messages 50000
conns|--scenario conns --subs 10000 --messages 3
EOF
        ;;
        smoke) cat <<'EOF'
fanout10|--scenario fanout --pubs 2 --subs 10 --messages 2000 --time-limit 10
topics|--scenario topics --topics 50 --messages 2000 --time-limit 10
latency2k|--scenario latency --rate 2000 --messages 1000 --time-limit 10
conns|--scenario conns --subs 200 --messages 3 --time-limit 10 --setup-timeout 10
EOF
        ;;
    esac
}

# ── run ───────────────────────────────────────────────────────────────────
FAILED=0 BROKEN=""
while IFS='|' read -r name args; do
    if [ -n "$SCENARIOS" ] && ! grep -qw -- "$name" <<<"$SCENARIOS"; then continue; fi
    for run in $(seq "$RUNS"); do
        for peer in $ACTIVE; do
            grep -qw "$peer" <<<"$BROKEN" && continue
            dir="$WORK/$name.$run.$peer"
            mkdir -p "$dir"
            if ! "start_$peer" "$dir"; then
                log "SKIPPING $peer from now on: its server did not start (logs in $dir, kept)"
                KEEP=1 BROKEN+=" $peer"
                stop_current
                continue
            fi
            pids=()
            for p in $SERVER_PIDS; do pids+=(--server-pid "$p"); done
            log "$name run $run/$RUNS: $peer"
            # shellcheck disable=SC2086 # args and EXTRA are lists of words
            case "$peer" in fanout-nats3) proto=fanout ;; nats3) proto=nats ;; *) proto=$peer ;; esac
            if ! "$BENCH" run --proto "$proto" $args $EXTRA --pub-addr "$PUB_ADDR" --sub-addr "$SUB_ADDR" \
                    "${pids[@]}" --json >>"$RESULTS" 2>"$dir/bench.err"; then
                FAILED=$((FAILED + 1))
                log "  FAILED: $(tail -n 1 "$RESULTS" | grep -o "\"failures\":\[[^]]*\]" || cat "$dir/bench.err")"
            fi
            stop_current
        done
    done
done < <(scenarios)

selected() { [ -z "$SCENARIOS" ] || grep -qw "$1" <<<"$SCENARIOS"; }

# ── a subscription storm beside unrelated traffic ──────────────────────────
STORM=""
if selected storm; then
    storm_args=(--conns 100 --topics 100000 --rate 2000)
    [ "$MODE" = smoke ] && storm_args=(--conns 10 --topics 2000 --rate 500)
    for run in $(seq "$RUNS"); do
        for peer in $ACTIVE; do
            # Redis: no counterpart worth measuring here; ws: the same server as fanout.
            case "$peer" in redis|ws) continue ;; esac
            dir="$WORK/storm.$run.$peer"
            mkdir -p "$dir"
            if ! "start_$peer" "$dir"; then
                log "storm: $peer did not start (logs in $dir, kept)"; KEEP=1 FAILED=$((FAILED + 1)); stop_current; continue
            fi
            log "storm run $run/$RUNS: $peer ${storm_args[*]}"
            if line=$("$BENCH" storm --proto "$peer" "${storm_args[@]}" --sub-addr "$SUB_ADDR" --pub-addr "$PUB_ADDR" 2>"$dir/bench.err"); then
                STORM+="$line"$'\n'
            else
                FAILED=$((FAILED + 1)); log "  storm FAILED: $(cat "$dir/bench.err")"
            fi
            stop_current
        done
    done
fi

# ── the machine's floors: the same work with no server ─────────────────────
FLOOR="" HOP=""
if selected conns; then
    case "$MODE" in
        full) floor_args=(--conns 10000 --rounds 10) ;;
        quick) floor_args=(--conns 10000 --rounds 3) ;;
        smoke) floor_args=(--conns 200 --rounds 2) ;;
    esac
    log "floor: ${floor_args[*]}"
    FLOOR=$("$BENCH" floor "${floor_args[@]}") || { log "  floor FAILED"; FAILED=$((FAILED + 1)); }
fi
if selected latency10k || selected latency50k || selected latency2k; then
    hop_args=(--round-trips 50000)
    [ "$MODE" = smoke ] && hop_args=(--round-trips 2000)
    log "hop: ${hop_args[*]}"
    HOP=$("$BENCH" hop "${hop_args[@]}") || { log "  hop FAILED"; FAILED=$((FAILED + 1)); }
fi

# ── report ────────────────────────────────────────────────────────────────
{
    echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); mode: $MODE; runs per cell: $RUNS"
    echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB; kernel $(uname -r)"
    echo "Versions: fanout $FANOUT_REV, $(rustc --version 2>/dev/null || echo 'rustc ?')" \
        "$(command -v nats-server >/dev/null && echo ", nats-server $(nats-server --version | awk '{print $2}')")" \
        "$(command -v redis-server >/dev/null && echo ", redis-server $(redis-server --version | awk '{print $3}' | cut -d= -f2)")"
    echo "Our servers: subscriber --count $SUB_WORKERS, data-source --count $DS_WORKERS${SEND_QUEUE:+, --max-send-queue $SEND_QUEUE}"
    if [ -s "$RESULTS" ]; then # none when only the storm ran
        echo
        "$BENCH" table --runs "$RUNS" "$RESULTS"
    fi
    if [ -n "$STORM" ]; then
        echo
        echo "Subscription storm (\`fanout-bench storm\`: the storm's connections at our subscriber"
        echo "server, the unrelated publisher and subscriber at the data-source server; NATS: one server):"
        echo
        echo '```'
        printf '%s' "$STORM"
        echo '```'
    fi
    if [ -n "$FLOOR" ]; then
        echo
        echo "The conns scenario's floor on this machine (\`fanout-bench floor\`: no server, only"
        echo "the writes of one line to each loopback connection and another process reading them):"
        echo
        echo '```'
        echo "$FLOOR"
        echo '```'
    fi
    if [ -n "$HOP" ]; then
        echo
        echo "The latency scenarios' floor (\`fanout-bench hop\`: one socket crossing; a message"
        echo "crosses four through our servers, two through NATS or Redis):"
        echo
        echo '```'
        echo "$HOP"
        echo '```'
    fi
} | tee "$OUT/table.md"
log "results: $RESULTS, table: $OUT/table.md"
if [ "$FAILED" -gt 0 ] || [ -n "$BROKEN" ]; then
    log "$FAILED run(s) FAILED${BROKEN:+; servers that did not start:$BROKEN}"
    exit 1
fi
