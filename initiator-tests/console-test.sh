#!/usr/bin/env bash
# The web console in headless Chromium (Debian's `chromium`, installed if missing)
# against a running cluster member: a one-member cluster serving volume db01 over two
# file stores migrates db01 from one store to the other (slowly, 1 MiB windows at
# 1 MiB/s) while Chromium renders the console twice. Checks that the volume's extent
# map and the migration's row appear, that the progress moves between the two renders,
# that copied chunks show as mirrored, that the pause and resume buttons steer the
# migration (clicked in a live page over the DevTools protocol), and that an abort
# shows up; saves a screenshot.
# Usage: initiator-tests/console-test.sh [OUT.png]   (default: target/console-test.png)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=initiator-tests/node-lib.sh
. initiator-tests/node-lib.sh
tdir="${CARGO_TARGET_DIR:-target}"
out="$(realpath -m "${1:-$tdir/console-test.png}")"

if ! command -v chromium >/dev/null; then
    echo "== installing chromium"
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

cargo build -q -p switchyard
bin="$tdir/debug/switchyard"
work="$(mktemp -d)"
node_pid=""
cleanup() {
    [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    [ "${KEEP:-0}" = 1 ] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT
passed=0
failed=0
pass() { echo "console-test: PASS $*"; passed=$((passed + 1)); }
fail() { echo "console-test: FAIL $*"; failed=$((failed + 1)); }

raft_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
token="console-test-admin-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
cat >"$work/node.toml" <<EOF
[node]
name = "sy1"
data_dir = "$work"
[[portal]]
listen = "127.0.0.1:0"
[cluster]
id = 1
name = "sy1"
listen = "127.0.0.1:$raft_port"
secret = "console-test-cluster-secret-0123"
data_dir = "raft"
[[store]]
id = "fastpool"
path = "fast.img"
size = "128MiB"
[[store]]
id = "archive"
path = "archive.img"
size = "128MiB"
[[target]]
name = "iqn.2026-11.org.switchyard:console"
[[target.lun]]
lun = 0
volume = "db01"
[management]
listen = "127.0.0.1:0"
admin_token = "$token"
[mapping]
epoch = 1
[[mapping.volumes]]
name = "db01"
wwn = "naa.6001405f0e1d2c3b4a5968778695a4b3"
block_size = 512
blocks = 131072
[[mapping.volumes.extents]]
vstart = 0
blocks = 131072
backend = "fastpool"
bstart = 0
EOF
chmod 600 "$work/node.toml"
start_node "$bin" "$work/node.toml" "$work" || exit 1
echo "== node: $url"
export SWITCHYARD_NODE="$url" SWITCHYARD_TOKEN="$token"

"$bin" migrate db01 --to archive --window-mib 1 --max-rate 1 --min-rate 1 --no-wait

# render FILE: the console's DOM after its scripts ran (and the screenshot, if asked)
render() {
    local profile
    profile="$(mktemp -d)"
    timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$profile" --virtual-time-budget=3000 --window-size=1280,1000 \
        "${@:2}" "${url}#token=${token}" >"$1" 2>>"$work/chromium.err" || true
    rm -rf "$profile"
}
# row DOM: migration 1's table row, on one line
row() { tr '\n' ' ' <"$1" | grep -o 'data-migration="1".*' | sed 's#</tr>.*##'; }
# percent DOM: the migration row's progress, from "NN% of"
percent() { row "$1" | grep -o '[0-9]*% of' | head -1 | tr -dc 0-9; }

sleep 3
render "$work/dom1.html" --dump-dom
p1="$(percent "$work/dom1.html")"
sleep 5
render "$work/dom2.html" --dump-dom
p2="$(percent "$work/dom2.html")"
render /dev/null --screenshot="$out"

grep -q 'data-vol="db01"' "$work/dom1.html" && pass "the volume db01 is drawn" || fail "the volume db01 is drawn"
grep -q 'fastpool' "$work/dom1.html" && grep -q 'archive' "$work/dom2.html" \
    && pass "its extent map shows both stores while it migrates" || fail "its extent map shows both stores"
grep -q 'writes also to fastpool@' "$work/dom2.html" \
    && pass "copied chunks are shown mirrored to the source" || fail "copied chunks are shown mirrored to the source"
row "$work/dom1.html" | grep -q 'running' \
    && pass "the migration's row shows it running" || fail "the migration's row shows it running"
if [ -n "$p1" ] && [ -n "$p2" ] && [ "$p2" -gt "$p1" ]; then
    pass "its progress moved between two renders ($p1% -> $p2%)"
else
    fail "its progress moved between two renders ('$p1' -> '$p2')"
fi
[ -s "$out" ] && pass "screenshot saved: $out" || fail "screenshot saved"
grep -q 'data-migrate="db01"' "$work/dom1.html" && grep -q '<option>archive</option>' "$work/dom1.html" \
    && pass "the volume offers a migration to the other store" || fail "the volume offers a migration to the other store"

# Steer the migration from the console as an admin does: a live Chromium page, its
# buttons clicked through the DevTools protocol (initiator-tests/cdp.py).
cdp_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cdp_profile="$(mktemp -d)"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$cdp_profile" --remote-debugging-port="$cdp_port" --window-size=1280,1000 \
    "${url}#token=${token}" 2>>"$work/chromium.err" &
cdp_pid=$!
# state: migration 1's state now (`migrations show` would follow a running one to its end)
state() { "$bin" -o json migrations 2>/dev/null | python3 -c 'import json,sys; print([m["state"] for m in json.load(sys.stdin) if m["id"] == 1][0])' 2>/dev/null || true; }
click() { # click ACTION: wait for migration 1's ACTION button, click it
    local sel="button[data-mig=\"1\"][data-act=\"$1\"]"
    python3 initiator-tests/cdp.py "$cdp_port" "document.querySelector('$sel') !== null" --until-true 20 >/dev/null \
        && python3 initiator-tests/cdp.py "$cdp_port" "document.querySelector('$sel').click(), true" >/dev/null
}
wait_state() { for _ in $(seq 100); do [ "$(state)" = "$1" ] && return 0; sleep 0.2; done; return 1; }
click pause && wait_state paused \
    && pass "the console's pause button pauses the migration" || fail "the console's pause button pauses the migration (state $(state))"
click resume && wait_state running \
    && pass "the console's resume button resumes it" || fail "the console's resume button resumes it (state $(state))"
kill "$cdp_pid" 2>/dev/null || true
wait "$cdp_pid" 2>/dev/null || true
rm -rf "$cdp_profile" 2>/dev/null || true

"$bin" migrations abort 1 >/dev/null
for _ in $(seq 100); do
    "$bin" -o json migrations show 1 2>/dev/null | grep -q '"state": "aborted"' && break
    sleep 0.2
done
render "$work/dom3.html" --dump-dom
row "$work/dom3.html" | grep -q 'aborted' \
    && pass "the abort shows in the console" || fail "the abort shows in the console"
grep -q 'writes also to fastpool@' "$work/dom3.html" \
    && fail "after the abort no chunk is mirrored" || pass "after the abort no chunk is mirrored"

if [ "$failed" -gt 0 ]; then
    echo "== node log (last 20 lines)"; tail -20 "$work/node.err"
    echo "== chromium (last 5 lines)"; tail -5 "$work/chromium.err" 2>/dev/null || true
fi
echo "console-test: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
