#!/usr/bin/env bash
# Builds the release binaries and starts (or stops) the three servers as
# daemons with their default ports: channel server 2206 (loopback), data
# source 2345, subscriber 2346. Pid and log files go to their default places (see
# README: /run/fanout and /var/log/fanout as root).
#
#   scripts/run.sh          # build and start
#   scripts/run.sh stop     # stop all three
#   scripts/run.sh status   # status of all three
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release
case "${1:-start}" in
  start)
    cargo build --release --quiet
    "$bin/channel-server" start -d
    "$bin/data-source" start -d
    "$bin/subscriber" start -d
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
