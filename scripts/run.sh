#!/usr/bin/env bash
# Builds the release binaries and starts (or stops) the three servers as
# daemons with their default ports: channel server 2206 (loopback), data
# source 2345, subscriber 2346. Pid and log files go to their default places (see
# README: /run/fanout and /var/log/fanout as root).
#
#   scripts/run.sh          # build, and start those of the three not running
#   scripts/run.sh stop     # stop all three
#   scripts/run.sh status   # status of all three
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release
case "${1:-start}" in
  start)
    cargo build --release
    # Safe to run again: a server already running is left as it is.
    failed=0
    for s in channel-server data-source subscriber; do
      code=0
      "$bin/$s" status >/dev/null 2>&1 || code=$?
      case $code in
        0) echo "$s: already running, left as it is (scripts/run.sh stop, then start, to restart it with a new build)" ;;
        3) "$bin/$s" start -d || failed=1 ;; # 3: not running
        *) echo "$s: running but not answering:" >&2; "$bin/$s" status >&2 || true; failed=1 ;;
      esac
    done
    [ "$failed" = 0 ] || exit 1
    echo "Now: telnet localhost 2346 (type: subscribe) and telnet localhost 2345 (type: publish your_data)"
    ;;
  stop)
    for s in data-source subscriber channel-server; do "$bin/$s" stop; done
    ;;
  status)
    for s in channel-server data-source subscriber; do "$bin/$s" status || true; done
    ;;
  *)
    echo "usage: $0 [start|stop|status]" >&2
    exit 2
    ;;
esac
