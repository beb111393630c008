#!/usr/bin/env bash
# Score a switchyard node against libiscsi's iscsi-test-cu (ALL family) with
# ../shared/tools/conformance. Fails on any FAILED test or fewer than MIN_PASS passes.
#   initiator-tests/conformance.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/.."
MIN_PASS=${MIN_PASS:-200}
profile=debug
[ "${1:-}" = "--release" ] && profile=release
tool=../shared/tools/conformance
[ -x "$tool" ] || tool=$(realpath ../shared/tools/conformance 2>/dev/null || true)
if [ ! -f "$tool" ]; then
    echo "conformance: ../shared/tools/conformance not found" >&2
    exit 2
fi
if [ "$profile" = release ]; then cargo build --release -p switchyard -q; else cargo build -p switchyard -q; fi
bin=${CARGO_TARGET_DIR:-target}/$profile/switchyard

work=$(mktemp -d /tmp/switchyard-conf.XXXXXX)
pid=""
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
# A random port below Linux's ephemeral range (32768-60999), so no outgoing connection
# of another test holds it; and a few attempts, in case a listener took it.
up=0
for _attempt in 1 2 3; do
port=$((20000 + RANDOM % 12000))
cat > "$work/node.toml" <<TOML
[node]
name = "conformance"
data_dir = "$work"
[[portal]]
listen = "127.0.0.1:$port"
[[portal]]
listen = "127.0.0.2:$port"
tpgt = 2
[[target]]
name = "iqn.2026-11.org.switchyard:conformance"
[[target.lun]]
lun = 0
path = "lun0.img"
size = "256MiB"
TOML
RUST_LOG=${RUST_LOG:-warn} "$bin" serve --config "$work/node.toml" >"$work/node.out" 2>"$work/node.log" &
pid=$!
for _ in $(seq 100); do
    if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then up=1; break; fi
    kill -0 $pid 2>/dev/null || break
    sleep 0.1
done
[ $up = 1 ] && break
if grep -q "Address already in use" "$work/node.log"; then
    echo "conformance: port $port is taken; trying another" >&2
    wait $pid 2>/dev/null || true
    continue
fi
break
done
if [ $up = 0 ]; then
    echo "conformance: the node did not start listening on 127.0.0.1:$port; its log:" >&2
    cat "$work/node.log" >&2
    exit 1
fi
url="iscsi://127.0.0.1:$port/iqn.2026-11.org.switchyard:conformance/0"
# A second path to the same LU through the second portal (MultipathIO suite).
url2="iscsi://127.0.0.2:$port/iqn.2026-11.org.switchyard:conformance/0"
# 1. The shared scoring tool, as the issues quote it.
python3 "$tool" "$url" "$url2" --json "$work/result.json" | tee "$work/summary.txt"
# 2. The gate: iscsi-test-cu's own CUnit verdicts, scored per test by cunit_score.py
#    (robust to libiscsi's suite-teardown log lines that the shared tool misreads).
timeout 1500 iscsi-test-cu -d -t ALL "$url" "$url2" >"$work/raw.txt" 2>&1 || true
if ! kill -0 $pid 2>/dev/null; then
    echo "conformance: the node died during the run; its log:" >&2
    tail -50 "$work/node.log" >&2
    exit 1
fi
if ! python3 initiator-tests/cunit_score.py "$work/raw.txt" --min-pass "$MIN_PASS"; then
    echo "conformance: FAILED (need 0 failed and at least $MIN_PASS passed); node log tail:" >&2
    tail -20 "$work/node.log" >&2
    exit 1
fi
echo "conformance: OK"
