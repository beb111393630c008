#!/usr/bin/env bash
# Screenshot of the web console in headless Chromium (Debian's `chromium`; installed if
# missing). Starts a node with a virtual volume over two file stores, puts a host
# session with read load on it (libiscsi's iscsi-perf, if installed), runs two remaps
# through the CLI while the load runs, then loads http://127.0.0.1:PORT/ and saves a
# PNG. Usage: initiator-tests/console-screenshot.sh [OUT.png]   (default:
# console.png). Not part of the cargo tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=initiator-tests/node-lib.sh
. initiator-tests/node-lib.sh
out="$(realpath -m "${1:-console.png}")"

if ! command -v chromium >/dev/null; then
    echo "== installing chromium"
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

cargo build -q --bin switchyard
bin="${CARGO_TARGET_DIR:-target}/debug/switchyard"
work="$(mktemp -d)"
node_pid=""; perf_pid=""
cleanup() {
    # iscsi-perf ignores SIGTERM while it reconnects: stop it hard, before the node.
    [ -n "$perf_pid" ] && kill -9 "$perf_pid" 2>/dev/null || true
    [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

token="console-shot-admin-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
cat >"$work/node.toml" <<EOF
[node]
name = "node1"
[[portal]]
listen = "127.0.0.1:0"
[[store]]
id = "fastpool"
path = "fast.img"
size = "64MiB"
[[store]]
id = "archive"
path = "archive.img"
size = "64MiB"
[[target]]
name = "iqn.2026-11.org.switchyard:console"
[[target.lun]]
lun = 0
volume = "db01"
[[target.lun]]
lun = 1
volume = "logs"
[management]
listen = "127.0.0.1:0"
admin_token = "$token"
[mapping]
epoch = 1
[[mapping.volumes]]
name = "db01"
wwn = "naa.6001405f0e1d2c3b4a5968778695a4b3"
block_size = 512
blocks = 65536
[[mapping.volumes.extents]]
vstart = 0
blocks = 32768
backend = "fastpool"
bstart = 0
[[mapping.volumes.extents]]
vstart = 32768
blocks = 16384
backend = "fastpool"
bstart = 32768
[[mapping.volumes]]
name = "logs"
wwn = "naa.6001405f0e1d2c3b4a5968778695a4b4"
block_size = 512
blocks = 32768
[[mapping.volumes.extents]]
vstart = 0
blocks = 32768
backend = "archive"
bstart = 0
EOF
chmod 600 "$work/node.toml"
start_node "$bin" "$work/node.toml" "$work" || exit 1
iscsi="$(grep -m1 '^iscsi://.*/0$' "$work/node.out")"
echo "== node: $url  ($iscsi)"
export SWITCHYARD_NODE="$url" SWITCHYARD_TOKEN="$token"

if command -v iscsi-perf >/dev/null; then
    iscsi-perf -i iqn.2026-11.org.example:host1 -m 4 -b 8 -r "$iscsi" >/dev/null 2>&1 &
    perf_pid=$!
    sleep 1
fi

cat >"$work/move.toml" <<EOF
# db01: the second extent moves from fastpool to archive; a new extent fills the hole.
[[extents]]
vstart = 0
blocks = 32768
backend = "fastpool"
bstart = 0
[[extents]]
vstart = 32768
blocks = 16384
backend = "archive"
bstart = 40960
[[extents]]
vstart = 49152
blocks = 8192
backend = "fastpool"
bstart = 49152
EOF
"$bin" remap db01 --extents "$work/move.toml"
"$bin" volumes
"$bin" changes

echo "== screenshot"
profile="$(mktemp -d)"
timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --virtual-time-budget=4000 \
    --screenshot="$out" --window-size=1280,900 "${url}#token=${token}" 2>"$work/chromium.err" \
    || { tail -5 "$work/chromium.err"; }
rm -rf "$profile"
[ -s "$out" ] || { echo "no screenshot"; exit 1; }
echo "console screenshot: $out"
