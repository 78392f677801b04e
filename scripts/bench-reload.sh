#!/usr/bin/env bash
# Latency while both worker servers are reloaded, against the same run without
# a reload: 100 subscribers, a publisher at 10 000 messages/s for 5 s, each
# reload done 2 s in. fanout-bench fails a run that loses, duplicates or
# reorders a message, or sees a disconnect.
#
#   scripts/bench-reload.sh [RUNS]     # default 3 pairs of runs
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
cargo build --profile bench-release
B=target/bench-release
D=$(mktemp -d)
trap 'for x in p s ch; do "$B/subscriber" stop --pid-file "$D/$x.pid" >/dev/null 2>&1 || true; done; rm -rf "$D"' EXIT
addr() { grep -o '127\.0\.0\.1:[0-9]*' | head -1; }
CH=$("$B/channel-server" start -d --listen 127.0.0.1:0 --pid-file "$D/ch.pid" --log-file "$D/ch.log" | addr)
S=$("$B/subscriber" start -d --count 2 --listen 127.0.0.1:0 --channel "$CH" --pid-file "$D/s.pid" --log-file "$D/s.log" | addr)
P=$("$B/data-source" start -d --count 2 --listen 127.0.0.1:0 --channel "$CH" --pid-file "$D/p.pid" --log-file "$D/p.log" | addr)
for i in $(seq "$runs"); do
  for mode in plain reload; do
    if [ "$mode" = reload ]; then
      (sleep 2; "$B/subscriber" reload --pid-file "$D/s.pid" >/dev/null; "$B/data-source" reload --pid-file "$D/p.pid" >/dev/null) &
    fi
    result=$("$B/fanout-bench" run --proto fanout --scenario latency --pub-addr "$P" --sub-addr "$S" \
      --subs 100 --rate 10000 --messages 50000 2>&1 | grep -E 'OK|FAILED|latency µs' | tr -s ' \n' ' ')
    wait
    echo "$mode: $result"
  done
done
grep -hE 'handed [0-9]+ connection' "$D/s.log" "$D/p.log" | sed 's/^.*: handed/handed/' | tail -4
