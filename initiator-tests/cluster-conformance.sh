#!/usr/bin/env bash
# libiscsi's iscsi-test-cu (ALL family) against a cluster: two switchyard nodes (plus a
# witness) serve volume "cvol" (256 MiB on a switchyard array node's LUN 0); the test
# suite's two paths (the MultipathIO suite, and the second initiator of the
# reservation tests) go to different nodes. Scored with the shared tool, exactly as the
# cluster issue quotes it:
#   ../shared/tools/conformance URL_NODE_A URL_NODE_B
# Fails on any failed test, on fewer than MIN_PASS passes, or when a process died.
#   initiator-tests/cluster-conformance.sh [--release]
# KEEP=1 keeps the work directory (configs, logs, result).
set -euo pipefail
cd "$(dirname "$0")/.."
MIN_PASS=${MIN_PASS:-190}
profile=debug
[ "${1:-}" = "--release" ] && profile=release
command -v iscsi-test-cu >/dev/null || { echo "cluster-conformance: iscsi-test-cu not found (apt-get install libiscsi-bin)" >&2; exit 2; }
tool=../shared/tools/conformance
[ -f "$tool" ] || { echo "cluster-conformance: ../shared/tools/conformance not found" >&2; exit 2; }
if [ "$profile" = release ]; then cargo build --release -p switchyard -q; else cargo build -p switchyard -q; fi
bin=${CARGO_TARGET_DIR:-target}/$profile/switchyard

work=$(mktemp -d /tmp/switchyard-cconf.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then echo "cluster-conformance: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
taken=" "
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 12000))
        case $taken in *" $p "*) continue ;; esac
        listening 127.0.0.1 $p || break
    done
    taken="$taken$p "
    echo $p
}
wait_up() { # NAME PORT LOG
    for _ in $(seq 600); do
        listening 127.0.0.1 "$2" && return 0
        sleep 0.05
    done
    echo "cluster-conformance: $1 did not start listening on 127.0.0.1:$2; its log:" >&2
    cat "$3" >&2
    exit 1
}

array_port=$(free_port)
p1=$(free_port); p2=$(free_port)
r1=$(free_port); r2=$(free_port); r3=$(free_port)
mkdir -p "$work/array" "$work/n1" "$work/n2" "$work/w3"
cat >"$work/array.toml" <<TOML
[node]
name = "array"
data_dir = "$work/array"
[[portal]]
listen = "127.0.0.1:$array_port"
[[target]]
name = "iqn.2026-11.org.switchyard:carray"
[[target.lun]]
lun = 0
path = "a0.img"
size = "256MiB"
TOML
RUST_LOG=${RUST_LOG:-warn} "$bin" serve --config "$work/array.toml" >/dev/null 2>"$work/array.log" &
pids+=($!)
wait_up "the array node" "$array_port" "$work/array.log"

secret="cluster-conformance-secret-$RANDOM$RANDOM"
member() { # ID NAME PORTAL PEERS
    cat <<TOML
[node]
name = "$2"
data_dir = "$work/$2"
[[portal]]
listen = "127.0.0.1:$3"
tpgt = $1
[cluster]
id = $1
name = "$2"
listen = "127.0.0.1:$(eval echo \$r$1)"
peers = [$4]
secret = "$secret"
data_dir = "raft"
[[backend]]
id = "array"
portal = "127.0.0.1:$array_port"
target = "iqn.2026-11.org.switchyard:carray"
initiator_name = "iqn.2026-11.org.switchyard:$2"
sessions = 2
[mapping]
epoch = 1
[[mapping.volumes]]
name = "cvol"
wwn = "naa.6005359000000000000000000000e001"
block_size = 512
blocks = 524288
[[mapping.volumes.extents]]
vstart = 0
blocks = 524288
backend = "array/lun0"
bstart = 0
[[target]]
name = "iqn.2026-11.org.switchyard:cluster"
[[target.lun]]
lun = 0
volume = "cvol"
TOML
}
member 1 n1 "$p1" "\"2@127.0.0.1:$r2\", \"3@127.0.0.1:$r3\"" >"$work/n1.toml"
member 2 n2 "$p2" "\"1@127.0.0.1:$r1\", \"3@127.0.0.1:$r3\"" >"$work/n2.toml"
cat >"$work/w3.toml" <<TOML
[node]
name = "w3"
data_dir = "$work/w3"
[cluster]
id = 3
name = "w3"
listen = "127.0.0.1:$r3"
peers = ["1@127.0.0.1:$r1", "2@127.0.0.1:$r2"]
secret = "$secret"
data_dir = "raft"
witness = true
TOML
chmod 600 "$work"/*.toml
for n in n1 n2 w3; do
    RUST_LOG=${RUST_LOG:-warn} "$bin" serve --config "$work/$n.toml" >/dev/null 2>"$work/$n.log" &
    pids+=($!)
done
wait_up "node n1" "$p1" "$work/n1.log"
wait_up "node n2" "$p2" "$work/n2.log"

url1="iscsi://127.0.0.1:$p1/iqn.2026-11.org.switchyard:cluster/0"
url2="iscsi://127.0.0.1:$p2/iqn.2026-11.org.switchyard:cluster/0"
echo "cluster-conformance: $tool $url1 $url2"
timeout 1800 python3 "$tool" "$url1" "$url2" --json "$work/result.json" | tee "$work/summary.txt"

for p in "${pids[@]}"; do
    if ! kill -0 "$p" 2>/dev/null; then
        echo "cluster-conformance: a process died during the run; logs:" >&2
        tail -20 "$work"/*.log >&2
        exit 1
    fi
done
line=$(grep -E '^conformance: [0-9]+ passed' "$work/summary.txt" | tail -1)
passed=$(echo "$line" | sed -E 's/^conformance: ([0-9]+) passed, ([0-9]+) failed.*/\1/')
failed=$(echo "$line" | sed -E 's/^conformance: ([0-9]+) passed, ([0-9]+) failed.*/\2/')
if [ -z "$line" ] || [ "$failed" != 0 ] || [ "$passed" -lt "$MIN_PASS" ]; then
    echo "cluster-conformance: FAILED (need 0 failed and at least $MIN_PASS passed); node logs:" >&2
    tail -20 "$work/n1.log" "$work/n2.log" >&2
    exit 1
fi
echo "cluster-conformance: OK"
