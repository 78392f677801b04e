#!/usr/bin/env bash
# Replay against live delivery (issue 10): one subscriber receives N messages
# published live, then another resumes the topic from 1 and receives the N
# retained ones; both rates are printed. The client side is Python (one
# socket each, counting lines), so the live figure is bounded by the
# publishing client, not only by the servers.
#
#   scripts/bench-replay.sh [--bin-dir DIR] [--messages N]    (defaults: target/release, 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release N=1000000
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) BIN="$2"; shift ;;
        --messages) N="$2"; shift ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-replay.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ -x "$BIN/channel-server" ] || cargo build --release
TMP=$(mktemp -d)
stop() {
    for s in data-source subscriber channel-server; do
        [ -e "$TMP/$s.pid" ] && "$BIN/$s" stop --pid-file "$TMP/$s.pid" >/dev/null 2>&1 || true
    done
    rm -rf "$TMP"
}
trap stop EXIT
start() { # name, extra flags...: prints the address it listens on
    local name=$1; shift
    "$BIN/$name" start -d --listen 127.0.0.1:0 --pid-file "$TMP/$name.pid" --log-file "$TMP/$name.log" "$@" |
        grep -o '127\.0\.0\.1:[0-9]*'
}
# Retention large enough for every message of the run.
CH=$(start channel-server --retain-messages "$N" --retain-bytes $((N * 100)) --retain-total $((N * 200)))
SUB=$(start subscriber --count 1 --channel "$CH")
SRC=$(start data-source --count 1 --channel "$CH")
sleep 0.5 # the workers link (a message published before would be retained all the same)
python3 - "$SUB" "$SRC" "$N" <<'PY'
import socket, sys, threading, time
sub_addr, src_addr, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def conn(addr):
    host, port = addr.split(':')
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return s
def lines(s, want):
    got = 0
    while got < want:
        d = s.recv(1 << 20)
        if not d:
            sys.exit(f"connection closed after {got} lines")
        got += d.count(b'\n')
sub = conn(sub_addr)
sub.sendall(b'subscribe replay\n')
lines(sub, 2)  # welcome, OK subscribed
pub = conn(src_addr)
lines(pub, 1)
done = threading.Thread(target=lines, args=(sub, n))
done.start()
t = time.time()
pub.sendall((b'pub replay ' + b'x' * 64 + b'\n') * n)
done.join()
live = time.time() - t
r = conn(sub_addr)
lines(r, 1)
t = time.time()
r.sendall(b'resume replay 1\n')
lines(r, n + 1)  # OK subscribed, then the messages
replay = time.time() - t
print(f"live:   {n} messages of 64 B published and delivered in {live:.2f} s = {n / live / 1e6:.2f} M/s")
print(f"replay: {n} retained messages delivered to a resume from 1 in {replay:.2f} s = {n / replay / 1e6:.2f} M/s")
PY
