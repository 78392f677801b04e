#!/usr/bin/env bash
# The browser page, tested in a real browser: Debian's headless chromium,
# driven by chromedriver over the W3C WebDriver HTTP API (Python's urllib; no
# npm, no Selenium). The three servers are started from target/debug on free
# loopback ports; the page at the subscriber's port subscribes to a topic, a
# telnet-style client publishes at the data source, and the page must show the
# message. Every wait is on a DOM condition, bounded generously.
#
#   scripts/browser-test.sh            build (debug) and run
#   scripts/browser-test.sh --no-build use the binaries already in target/debug
#
# Needs chromium, chromium-driver and python3 (.ci/run installs them).
# Prints "1 passed, 0 failed" and exits 0, or says what went wrong and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" != "--no-build" ]; then
    cargo build --quiet --bins
fi
for tool in chromium chromedriver python3; do
    command -v "$tool" >/dev/null || { echo "browser-test: $tool is missing (apt-get install chromium chromium-driver python3)" >&2; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fanout-browser.XXXXXX")
cleanup() {
    for name in data-source subscriber channel-server; do
        [ -f "$WORK/$name.pid" ] && target/debug/$name stop --pid-file "$WORK/$name.pid" >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# Starts a server as a daemon on a free port; prints its address.
start() {
    local name=$1; shift
    target/debug/$name start -d --listen 127.0.0.1:0 --pid-file "$WORK/$name.pid" \
        --log-file "$WORK/$name.log" "$@" | grep -o 'listening on [0-9.:]*' | cut -d' ' -f3
}
CHANNEL=$(start channel-server)
SOURCE=$(start data-source --channel "$CHANNEL" --count 1)
SUBSCRIBER=$(start subscriber --channel "$CHANNEL" --count 1)

python3 - "$SUBSCRIBER" "$SOURCE" "$WORK" <<'EOF'
import json, os, signal, socket, subprocess, sys, time, urllib.request

page_addr, source_addr, work = sys.argv[1], sys.argv[2], sys.argv[3]
WAIT = 60  # seconds: generous, for a busy 2-core machine

def until(what, check):
    """Polls check() until it returns something true; fails after WAIT."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            got = check()
            if got:
                return got
        except (OSError, KeyError, ValueError):
            pass
        if time.monotonic() > deadline:
            sys.exit(f"browser-test: timed out waiting for {what}")
        time.sleep(0.1)

# chromedriver on a free port, in a process group of its own with the
# browser it starts, so that the group can be stopped whatever happens.
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
# HOME too: the browser's crash reports and caches stay in the work directory.
driver = subprocess.Popen(["chromedriver", f"--port={port}"], start_new_session=True,
                          env=dict(os.environ, HOME=work),
                          stdout=open(os.path.join(work, "chromedriver.log"), "w"), stderr=subprocess.STDOUT)
base = f"http://127.0.0.1:{port}"

def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=WAIT) as r:
        return json.load(r)["value"]

try:
    until("chromedriver to listen", lambda: call("GET", "/status")["ready"])
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={os.path.join(work, 'chromium-profile')}"]
    caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": flags}}}}
    session = call("POST", "/session", caps)["sessionId"]
    s = f"/session/{session}"
    ELEMENT = "element-6066-11e4-a52e-4f735466cecf"

    def element(css):
        return call("POST", f"{s}/element", {"using": "css selector", "value": css})[ELEMENT]

    def text(css):
        return call("GET", f"{s}/element/{element(css)}/text")

    def log_has(line):
        return line in text("#log").split("\n")

    call("POST", f"{s}/url", {"url": f"http://{page_addr}/"})
    until("the page's WebSocket to open", lambda: text("#state").startswith("open"))
    call("POST", f"{s}/element/{element('#topic')}/value", {"text": "browser"})
    call("POST", f"{s}/element/{element('#subscribe button')}/click", {})
    until("'OK subscribed browser' on the page", lambda: log_has("OK subscribed browser"))

    # A telnet-style client publishes at the data source.
    host, port_s = source_addr.rsplit(":", 1)
    with socket.create_connection((host, int(port_s)), timeout=WAIT) as c:
        f = c.makefile("rb")
        welcome = f.readline()
        assert welcome.startswith(b"Welcome to "), welcome
        c.sendall(b"pub browser hello from telnet\r\nping\r\n")
        assert f.readline() == b"PONG\n"
    until("the delivery on the page", lambda: log_has("Received [browser]: hello from telnet"))

    # And the page publishes: its own subscription brings the message back.
    call("POST", f"{s}/element/{element('#message')}/value", {"text": "hello from the page"})
    call("POST", f"{s}/element/{element('#publish button')}/click", {})
    until("the page's own publish delivered", lambda: log_has("Received [browser]: hello from the page"))
    call("DELETE", s)
    print("browser-test: the page subscribed, received a telnet client's publish and published itself")
    print("1 passed, 0 failed")
except SystemExit:
    raise
except Exception as e:
    sys.exit(f"browser-test: {type(e).__name__}: {e} (chromedriver log: kept below)\n"
             + open(os.path.join(work, "chromedriver.log")).read()[-3000:])
finally:
    os.killpg(driver.pid, signal.SIGTERM)
    driver.wait(timeout=WAIT)
EOF
