#!/usr/bin/env bash
# libiscsi's iscsi-test-cu (ALL family) through a virtual volume that spans both kinds of
# back-end array and a local file:
#   - a switchyard array node (two file LUs),
#   - tgtd (initiator-tests/tgtd-array.sh, LUN 1),
#   - a virtualizing switchyard node serving volume "vconf" (256 MiB) on two portals:
#       [0, 64 MiB) array/lun0   [64, 128 MiB) tgtd/lun1
#       [128, 192 MiB) local file [192, 256 MiB) array/lun1
# Scores the raw output per test with cunit_score.py; fails on any FAILED test, on fewer
# than MIN_PASS passes, or when a process died during the run.
#   initiator-tests/virtual-conformance.sh [--release]
# TESTS selects iscsi-test-cu tests (default ALL; e.g. TESTS=ALL.MultipathIO.*, then
# set MIN_PASS too); KEEP=1 keeps the work directory (configs, logs, raw output).
# Needs root for tgtd, libiscsi-bin and tgt.
# tgtd has no UNMAP, so the volume is not thin-provisioned and the thin-provisioning
# tests skip (direct on a switchyard node they pass).
set -euo pipefail
cd "$(dirname "$0")/.."
MIN_PASS=${MIN_PASS:-190}
profile=debug
[ "${1:-}" = "--release" ] && profile=release
for t in iscsi-test-cu tgtd tgtadm; do
    command -v $t >/dev/null || { echo "virtual-conformance: $t not found (apt-get install libiscsi-bin tgt)" >&2; exit 2; }
done
if [ "$profile" = release ]; then cargo build --release -p switchyard -q; else cargo build -p switchyard -q; fi
bin=${CARGO_TARGET_DIR:-target}/$profile/switchyard

work=$(mktemp -d /tmp/switchyard-vconf.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    initiator-tests/tgtd-array.sh stop "$work/tgtd" "${tgt_port:-0}" || true
    if [ "${KEEP:-0}" = 1 ]; then echo "virtual-conformance: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
# A port nobody listens on, distinct from the ones already picked.
taken=" "
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 12000))
        case $taken in *" $p "*) continue ;; esac
        listening 127.0.0.1 $p || listening 127.0.0.2 $p || break
    done
    taken="$taken$p "
    echo $p
}
array_port=$(free_port)
tgt_port=$(free_port)
virt_port=$(free_port)

wait_up() { # NAME HOST PORT LOG
    for _ in $(seq 200); do
        listening "$2" "$3" && return 0
        sleep 0.05
    done
    echo "virtual-conformance: $1 did not start listening on $2:$3; its log:" >&2
    cat "$4" >&2
    exit 1
}

mkdir -p "$work/array" "$work/virt"
cat >"$work/array.toml" <<TOML
[node]
name = "array"
data_dir = "$work/array"
[[portal]]
listen = "127.0.0.1:$array_port"
[[target]]
name = "iqn.2026-11.org.switchyard:array"
[[target.lun]]
lun = 0
path = "a0.img"
size = "64MiB"
[[target.lun]]
lun = 1
path = "a1.img"
size = "64MiB"
TOML
RUST_LOG=${RUST_LOG:-warn} "$bin" serve --config "$work/array.toml" >/dev/null 2>"$work/array.log" &
array_pid=$!
pids+=($array_pid)
initiator-tests/tgtd-array.sh start "$work/tgtd" "$tgt_port" 64M >/dev/null
wait_up "the array node" 127.0.0.1 "$array_port" "$work/array.log"

cat >"$work/virt.toml" <<TOML
[node]
name = "virt"
data_dir = "$work/virt"
[[portal]]
listen = "127.0.0.1:$virt_port"
[[portal]]
listen = "127.0.0.2:$virt_port"
tpgt = 2
[[backend]]
id = "array"
portal = "127.0.0.1:$array_port"
target = "iqn.2026-11.org.switchyard:array"
sessions = 2
[[backend]]
id = "tgtd"
portal = "127.0.0.1:$tgt_port"
target = "iqn.2026-11.org.switchyard:tgtd-array"
[[store]]
id = "local"
path = "local.img"
size = "64MiB"
[mapping]
epoch = 1
[[mapping.volumes]]
name = "vconf"
wwn = "naa.6005359000000000000000000000c001"
block_size = 512
blocks = 524288
[[mapping.volumes.extents]]
vstart = 0
blocks = 131072
backend = "array/lun0"
bstart = 0
[[mapping.volumes.extents]]
vstart = 131072
blocks = 131072
backend = "tgtd/lun1"
bstart = 0
[[mapping.volumes.extents]]
vstart = 262144
blocks = 131072
backend = "local"
bstart = 0
[[mapping.volumes.extents]]
vstart = 393216
blocks = 131072
backend = "array/lun1"
bstart = 0
[[target]]
name = "iqn.2026-11.org.switchyard:vconf"
[[target.lun]]
lun = 0
volume = "vconf"
TOML
RUST_LOG=${RUST_LOG:-warn} "$bin" serve --config "$work/virt.toml" >/dev/null 2>"$work/virt.log" &
virt_pid=$!
pids+=($virt_pid)
wait_up "the virtualizing node" 127.0.0.1 "$virt_port" "$work/virt.log"

url="iscsi://127.0.0.1:$virt_port/iqn.2026-11.org.switchyard:vconf/0"
# A second path through the second portal (MultipathIO suite).
url2="iscsi://127.0.0.2:$virt_port/iqn.2026-11.org.switchyard:vconf/0"
tests=${TESTS:-ALL}
echo "virtual-conformance: iscsi-test-cu -t $tests through $url"
timeout 1800 iscsi-test-cu -d ${ISCSI_TEST_CU_FLAGS:-} -t "$tests" "$url" "$url2" >"$work/raw.txt" 2>&1 || true

dead=0
for p in $array_pid $virt_pid $(cat "$work/tgtd/tgtd.pid"); do
    kill -0 "$p" 2>/dev/null || dead=1
done
if [ $dead = 1 ]; then
    echo "virtual-conformance: a process died during the run; logs:" >&2
    tail -20 "$work/array.log" "$work/virt.log" "$work/tgtd/tgtd.log" >&2
    exit 1
fi
if ! python3 initiator-tests/cunit_score.py "$work/raw.txt" --min-pass "$MIN_PASS"; then
    echo "virtual-conformance: FAILED (need 0 failed and at least $MIN_PASS passed); virtualizer log tail:" >&2
    tail -20 "$work/virt.log" >&2
    exit 1
fi
echo "virtual-conformance: OK"
