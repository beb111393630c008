#!/usr/bin/env bash
# Real-initiator test: a Linux guest under QEMU (TCG) runs open-iscsi + dm-multipath
# against a switchyard cluster on this host (two data nodes and a witness serving one
# virtual volume that lives on a switchyard array node), one path through each data
# node; QEMU's own libiscsi block driver (qemu-img) is tested against both nodes.
# During the guest's I/O the host kills node 1 (kill -9), restarts it, and remaps the
# volume online. See README.md beside this file.
#
#   initiator-tests/qemu/run.sh [--release]
#
# Environment:
#   SWITCHYARD_QEMU_CACHE    image cache (default /var/tmp/switchyard-qemu), see build-image.sh
#   SWITCHYARD_QEMU_TIMEOUT  seconds the guest may run (default 900)
#   SWITCHYARD_BIN           switchyard binary to use (default: cargo build [--release] -p switchyard)
#   CARGO_TARGET_DIR         where cargo builds (default: the repository's target/)
#   SWITCHYARD_QEMU_KEEP=1   keep the work folder (configs, node logs, console log) on success
#
# Exit status 0 only when every host check and every guest check passed and the guest
# printed its summary line before the timeout.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PROFILE=debug                                 # the build run-all.sh has made already
[[ ${1:-} == --release ]] && PROFILE=release
TIMEOUT=${SWITCHYARD_QEMU_TIMEOUT:-900}
IQN=iqn.2026-11.org.switchyard:qemu           # the cluster's target (both data nodes)
ARRAY_IQN=iqn.2026-11.org.switchyard:qemu-array
VOL=qvol                                      # the virtual volume, LUN 0 of $IQN
WWN=60053590c0ffee010123456789abcdef          # NAA 6, the volume's wwn in [mapping]
WWID=3$WWN                                    # how Linux (scsi_id, multipath) names it
LU_BYTES=268435456                            # 256 MiB: the array LU and the volume
VOL_BLOCKS=$((LU_BYTES / 512))
T_START=$(date +%s)

say() { echo "qemu-run: [$(($(date +%s) - T_START))s] $*"; }
die() { echo "qemu-run: ERROR: $*" >&2; exit 2; }

HOST_PASSED=0
HOST_FAILED=0
hpass() { HOST_PASSED=$((HOST_PASSED + 1)); echo "qemu-host: PASS $1"; }
hfail() { HOST_FAILED=$((HOST_FAILED + 1)); echo "qemu-host: FAIL $1${2:+ -- $2}"; }
hcheck() {
    local name=$1 out rc
    shift
    out=$("$@" 2>&1)
    rc=$?
    if [[ $rc == 0 ]]; then hpass "$name"; else
        hfail "$name" "exit $rc"
        sed 's/^/    | /' <<<"$out" | tail -20
    fi
    return $rc
}

# ------------------------------------------------------------------ image and binary
say "building/checking the guest image"
t=$(date +%s)
IMG=$("$HERE/build-image.sh") || die "build-image.sh failed (see above)"
say "image ready in $(($(date +%s) - t)) s: $IMG"

if [[ -n ${SWITCHYARD_BIN:-} ]]; then
    BIN=$SWITCHYARD_BIN
else
    say "cargo build --profile ${PROFILE/debug/dev} -p switchyard"
    (cd "$REPO" && cargo build --profile "${PROFILE/debug/dev}" -p switchyard) || die "cargo build failed"
    BIN=${CARGO_TARGET_DIR:-$REPO/target}/$PROFILE/switchyard
    [[ $BIN == /* ]] || BIN=$REPO/$BIN
fi
[[ -x $BIN ]] || die "switchyard binary $BIN missing"
for t in qemu-system-x86_64 qemu-img python3 cpio gzip; do
    command -v "$t" >/dev/null || die "$t not found (build-image.sh installs the QEMU tools)"
done

# ------------------------------------------------------------------ work folder, ports
WORK=$(mktemp -d /tmp/switchyard-qemu.XXXXXX)
NODES=(array n1 n2 w3)
QEMU_PID="" WATCH_PID="" ANSWER_PID=""
# Stops what this script started (by pid; the node pids are in $WORK/NAME.pid, as a
# node restarted by the console watcher is not a child of this shell); safe to call twice.
cleanup() {
    local p n left
    for p in $WATCH_PID $QEMU_PID $ANSWER_PID; do kill "$p" 2>/dev/null; done
    WATCH_PID="" QEMU_PID="" ANSWER_PID=""
    for n in "${NODES[@]}"; do
        [[ -f $WORK/$n.pid ]] && kill -TERM "$(cat "$WORK/$n.pid")" 2>/dev/null
    done
    for _ in $(seq 1 50); do
        left=0
        for n in "${NODES[@]}"; do
            [[ -f $WORK/$n.pid ]] && kill -0 "$(cat "$WORK/$n.pid")" 2>/dev/null && left=1
        done
        ((left)) || break
        sleep 0.1
    done
    for n in "${NODES[@]}"; do
        [[ -f $WORK/$n.pid ]] && kill -KILL "$(cat "$WORK/$n.pid")" 2>/dev/null
        rm -f "$WORK/$n.pid"
    done
    wait 2>/dev/null
}
trap cleanup EXIT
trap 'exit 3' INT TERM

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
declare -A TAKEN=()
# Listening ports are picked below the ephemeral range (32768-60999 by default), where
# no outgoing connection can be holding them.
read -r EPH_LO _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || EPH_LO=32768
((EPH_LO > 21000)) || EPH_LO=32768
# free_port VAR...: set each VAR to a free port, all different.
free_port() {
    local p v
    for v in "$@"; do
        while :; do
            p=$((20000 + RANDOM % (EPH_LO - 20000)))
            [[ -z ${TAKEN[$p]:-} ]] && ! port_busy "$p" && break
        done
        TAKEN[$p]=1
        printf -v "$v" %s "$p"
    done
}
free_port ARRAY_PORT
free_port P1 P2                # iSCSI portals of n1 (path A) and n2 (path B)
free_port R1 R2 R3             # cluster (Raft) addresses
free_port API1 API2            # management APIs of n1 and n2
free_port ANS_PORT             # host -> guest answers (see below)
# The admin token and the cluster secret are per run.
TOKEN=qemu-admin-$RANDOM$RANDOM$RANDOM$RANDOM
SECRET=qemu-cluster-$RANDOM$RANDOM$RANDOM$RANDOM
export SWITCHYARD_ADMIN_TOKEN=$TOKEN           # every node's API accepts changes with it
API_URL1=http://127.0.0.1:$API1
API_URL2=http://127.0.0.1:$API2
sy() { "$BIN" --token "$TOKEN" "$@"; }         # the admin CLI

mkdir -p "$WORK/array" "$WORK/n1" "$WORK/n2" "$WORK/w3"
cat >"$WORK/array.toml" <<EOF
# written by initiator-tests/qemu/run.sh: the back-end array (a plain node)
[node]
name = "array"
data_dir = "$WORK/array"

[[portal]]
listen = "127.0.0.1:$ARRAY_PORT"

[[target]]
name = "$ARRAY_IQN"

[[target.lun]]
lun = 0
path = "lun0.img"
size = "256MiB"

# the migration's destination
[[target.lun]]
lun = 1
path = "lun1.img"
size = "256MiB"
EOF

# member ID NAME PORTAL API PEERS: a data node's config
member() {
    cat <<EOF
# written by initiator-tests/qemu/run.sh: data node $2 (target port group $1)
[node]
name = "$2"
data_dir = "$WORK/$2"

[[portal]]
listen = "127.0.0.1:$3"
tpgt = $1

[cluster]
id = $1
name = "$2"
listen = "127.0.0.1:$(eval echo "\$R$1")"
peers = [$5]
secret = "$SECRET"
data_dir = "raft"

[management]
listen = "127.0.0.1:$4"

[[backend]]
id = "array"
portal = "127.0.0.1:$ARRAY_PORT"
target = "$ARRAY_IQN"
initiator_name = "iqn.2026-11.org.switchyard:qemu-$2"
sessions = 2
timeout_secs = 5

# a second path to the same array LU; the remap moves the volume onto it
[[backend]]
id = "array2"
portal = "127.0.0.1:$ARRAY_PORT"
target = "$ARRAY_IQN"
initiator_name = "iqn.2026-11.org.switchyard:qemu-$2-path2"
sessions = 1
timeout_secs = 5

[mapping]
epoch = 1

[[mapping.volumes]]
name = "$VOL"
wwn = "naa.$WWN"
block_size = 512
blocks = $VOL_BLOCKS

[[mapping.volumes.extents]]
vstart = 0
blocks = $VOL_BLOCKS
backend = "array/lun0"
bstart = 0

[[target]]
name = "$IQN"

[[target.lun]]
lun = 0
volume = "$VOL"
EOF
}
member 1 n1 "$P1" "$API1" "\"2@127.0.0.1:$R2\", \"3@127.0.0.1:$R3\"" >"$WORK/n1.toml"
member 2 n2 "$P2" "$API2" "\"1@127.0.0.1:$R1\", \"3@127.0.0.1:$R3\"" >"$WORK/n2.toml"
cat >"$WORK/w3.toml" <<EOF
# written by initiator-tests/qemu/run.sh: the witness (votes, serves no I/O)
[node]
name = "w3"
data_dir = "$WORK/w3"

[cluster]
id = 3
name = "w3"
listen = "127.0.0.1:$R3"
peers = ["1@127.0.0.1:$R1", "2@127.0.0.1:$R2"]
secret = "$SECRET"
data_dir = "raft"
witness = true
EOF
chmod 600 "$WORK"/*.toml

# start_node NAME: start (or restart) a node; its log is appended to, its pid written.
start_node() {
    echo "==== qemu-run: starting $1 at $(date -u +%FT%TZ)" >>"$WORK/$1.log"
    NO_COLOR=1 "$BIN" serve --config "$WORK/$1.toml" </dev/null >>"$WORK/$1.log" 2>&1 &
    echo $! >"$WORK/$1.pid"
}
node_alive() { [[ -f $WORK/$1.pid ]] && kill -0 "$(cat "$WORK/$1.pid")" 2>/dev/null; }
# wait_listen NAME PORT SECONDS
wait_listen() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        port_busy "$2" && return 0
        node_alive "$1" || return 1
        sleep 0.1
    done
    return 1
}
# json EXPR: evaluate a Python expression over the JSON document on stdin (as d)
json() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)" 2>/dev/null; }
# vol_state API: "EPOCH MAP" of the volume as that node serves it, MAP as
# vstart+blocks@backend:bstart,... (holes: backend None)
vol_state() {
    sy --node "$1" -o json volumes show "$VOL" 2>/dev/null | json "str(d['epoch']) + ' ' + ','.join(
        '%s+%s@%s:%s' % (s['vstart'], s['blocks'], s.get('backend'), s.get('bstart')) for s in d['map'])"
}
# node_field API NODE FIELD: a member's field as that API sees it (empty if unknown)
node_field() {
    sy --node "$1" -o json nodes 2>/dev/null \
        | json "next((str(n.get('$3')) for n in d if n['name'] == '$2'), '')"
}

say "starting the array node on 127.0.0.1:$ARRAY_PORT; work folder $WORK"
start_node array
wait_listen array "$ARRAY_PORT" 30 || { cat "$WORK/array.log"; die "the array node does not listen"; }
say "starting the cluster: n1 (portal $P1, API $API1), n2 (portal $P2, API $API2), witness w3"
for n in n1 n2 w3; do start_node "$n"; done
# A data node opens its portal once it has joined the cluster and serves the volume.
for n in n1:$P1 n2:$P2 n1:$API1 n2:$API2; do
    wait_listen "${n%:*}" "${n#*:}" 60 || {
        tail -40 "$WORK/${n%:*}.log"
        die "${n%:*} does not listen on 127.0.0.1:${n#*:}"
    }
done
say "cluster serving; setting n2's target port group to active/non-optimized"
# set_alua API NODE STATE: `switchyard nodes alua NODE STATE`; when the CLI fails, the
# same request straight to the API (POST /api/v1/nodes/NODE/state), with a warning.
set_alua() {
    local out
    out=$(sy --node "$1" nodes alua "$2" "$3" 2>&1) && { echo "$out"; return 0; }
    echo "qemu-run: WARNING: 'switchyard --node $1 nodes alua $2 $3' failed: $out" >&2
    echo "qemu-run: WARNING: sending POST $1/api/v1/nodes/$2/state {\"alua\": \"$3\"} instead" >&2
    python3 - "$1/api/v1/nodes/$2/state" "$3" <<'PY'
import json, os, sys, urllib.request
req = urllib.request.Request(sys.argv[1], method="POST",
    data=json.dumps({"alua": sys.argv[2]}).encode(),
    headers={"Authorization": "Bearer " + os.environ["SWITCHYARD_ADMIN_TOKEN"],
             "Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=20) as r:
        print(r.status, r.read().decode())
except Exception as e:
    print(e, getattr(e, "read", lambda: b"")().decode())
    sys.exit(1)
PY
}
t=$(date +%s)
for _ in $(seq 1 30); do
    out=$(set_alua "$API_URL2" n2 active-non-optimized 2>&1) && break
    sleep 1
done
echo "$out" | sed 's/^/    | /'
# Committed cluster-wide: wait until both data nodes have applied it.
for _ in $(seq 1 50); do
    [[ $(node_field "$API_URL1" n2 alua) == active-non-optimized &&
        $(node_field "$API_URL2" n2 alua) == active-non-optimized ]] && break
    sleep 0.2
done
hcheck "cluster: n2's group active/non-optimized, seen by n1 and n2 ($(($(date +%s) - t)) s)" \
    test "$(node_field "$API_URL1" n2 alua)/$(node_field "$API_URL2" n2 alua)" \
    = active-non-optimized/active-non-optimized
hcheck "cluster: n1's group active/optimized" test "$(node_field "$API_URL2" n1 alua)" = active-optimized
sy --node "$API_URL1" nodes 2>&1 | sed 's/^/    | /'

# ------------------------------------------------------------------ qemu-img (libiscsi)
URL_A=iscsi://127.0.0.1:$P1/$IQN/0
URL_B=iscsi://127.0.0.1:$P2/$IQN/0
say "QEMU's libiscsi block driver: qemu-img against $URL_A (n1) and $URL_B (n2)"
info=$(timeout 60 qemu-img info -f raw "$URL_A" 2>&1)
sed 's/^/    | /' <<<"$info"
hcheck "qemu-img info $URL_A (n1): virtual size 256 MiB" grep -q "virtual size: 256 MiB ($LU_BYTES bytes)" <<<"$info"
info=$(timeout 60 qemu-img info -f raw "$URL_B" 2>&1)
hcheck "qemu-img info $URL_B (n2): virtual size 256 MiB" grep -q "($LU_BYTES bytes)" <<<"$info"
head -c 8M /dev/urandom >"$WORK/small.raw"
hcheck "qemu-img convert 8 MiB raw image -> volume (through n1)" \
    timeout 120 qemu-img convert -n -f raw -O raw "$WORK/small.raw" "$URL_A"
hcheck "qemu-img convert volume (through n2) -> raw file" \
    timeout 120 qemu-img convert -f raw -O raw "$URL_B" "$WORK/back.raw"
hcheck "converted back: first 8 MiB equal the image" cmp -n 8388608 "$WORK/small.raw" "$WORK/back.raw"
hcheck "converted back: file is the volume's 256 MiB" test "$(stat -c %s "$WORK/back.raw" 2>/dev/null)" = "$LU_BYTES"
hcheck "qemu-img compare image vs volume (through n1): identical (rest reads zero)" \
    timeout 120 qemu-img compare -f raw -F raw "$WORK/small.raw" "$URL_A"
rm -f "$WORK/back.raw"

# ------------------------------------------------------------------ host -> guest answers
# The guest reads the host's answers to its requests from 10.0.2.2:ANS_PORT (= host
# 127.0.0.1:ANS_PORT): every connection gets the whole answers file, one line per
# request that the host has finished ("remap PASS ...").
: >"$WORK/answers"
python3 -c '
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(8)
while True:
    c, _ = s.accept()
    try:
        with open(sys.argv[2], "rb") as f:
            c.sendall(f.read())
    except OSError:
        pass
    c.close()
' "$ANS_PORT" "$WORK/answers" >"$WORK/answers.log" 2>&1 &
ANSWER_PID=$!
answer() { echo "$*" >>"$WORK/answers"; }
# Host checks made by the console watcher (a subshell) go through a file.
: >"$WORK/hchecks"
wcheck() { # PASS|FAIL NAME [DETAIL]
    echo "$1 $2${3:+ -- $3}" >>"$WORK/hchecks"
    echo "qemu-run: [$(($(date +%s) - T_START))s] host check: $1 $2${3:+ -- $3}"
}

# ------------------------------------------------------------------ guest initramfs
mkdir -p "$WORK/extra/etc"
install -m 755 "$HERE/guest-init.sh" "$WORK/extra/init"
cat >"$WORK/extra/etc/switchyard-test.env" <<EOF
IQN=$IQN
WWID=$WWID
LU_BYTES=$LU_BYTES
PORT_A=$P1
PORT_B=$P2
TPG_A=1
TPG_B=2
RTP_A=$(printf '0x%x' $((1 * 16 + 1)))
RTP_B=$(printf '0x%x' $((2 * 16 + 1)))
ANS_PORT=$ANS_PORT
EOF
(cd "$WORK/extra" && find . -mindepth 1 | cpio -o -H newc --quiet | gzip -1) >"$WORK/extra.cpio.gz" \
    || die "cpio of the test files failed"
cat "$IMG/base.cpio.gz" "$WORK/extra.cpio.gz" >"$WORK/initrd.gz"

# ------------------------------------------------------------------ the host's actions
# @@HOST fail-path-a: kill -9 node 1 (path A dies with it; n2 and the witness keep a quorum)
fail_path_a() {
    local pid
    pid=$(cat "$WORK/n1.pid")
    kill -KILL "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "==== qemu-run: n1 killed (SIGKILL) at $(date -u +%FT%TZ)" >>"$WORK/n1.log"
    say "path A cut: node n1 killed (kill -9 $pid)"
    if kill -0 "$pid" 2>/dev/null; then
        wcheck FAIL "n1 killed (kill -9)" "pid $pid still alive"
    else
        wcheck PASS "n1 killed (kill -9) during the guest's write"
    fi
    answer "fail-path-a done"
}
# @@HOST restore-path-a: start node 1 again with the same config; it rejoins and serves.
restore_path_a() {
    local t st=""
    t=$(date +%s)
    start_node n1
    if wait_listen n1 "$P1" 60; then
        wcheck PASS "n1 restarted: portal 127.0.0.1:$P1 listens again ($(($(date +%s) - t)) s)"
    else
        wcheck FAIL "n1 restarted: portal 127.0.0.1:$P1 listens again within 60 s"
    fi
    for _ in $(seq 1 100); do
        st=$(node_field "$API_URL2" n1 state)
        [[ $st == up ]] && break
        sleep 0.2
    done
    if [[ $st == up ]]; then
        wcheck PASS "n1 rejoined: n2 sees it up ($(($(date +%s) - t)) s after the restart)"
    else
        wcheck FAIL "n1 rejoined: n2 sees it up within 20 s" "state '${st}'"
    fi
    sy --node "$API_URL2" nodes 2>&1 | sed 's/^/host|     /'
    say "path A restored: n1 restarted ($(($(date +%s) - t)) s)"
    answer "restore-path-a done $(($(date +%s) - t))"
}
# @@HOST remap: move the volume's one extent from array/lun0 to array2/lun0 (another
# path to the same LU, same bstart: the data stays where it is, so --no-copy), online,
# while the guest writes through both nodes.
remap() {
    local t out rc id st s1 s2 ep1 ok=1 why=""
    cat >"$WORK/extents.toml" <<EOF
[[extents]]
vstart = 0
blocks = $VOL_BLOCKS
backend = "array2/lun0"
bstart = 0
EOF
    say "remap $VOL: array/lun0 -> array2/lun0 (no copy), through n2's API"
    t=$(date +%s%3N)
    out=$(timeout 120 "$BIN" --node "$API_URL2" --token "$TOKEN" -o json \
        remap "$VOL" --extents "$WORK/extents.toml" --no-copy 2>&1)
    rc=$?
    t=$(($(date +%s%3N) - t))
    t=$((t / 1000)).$(printf '%03d' $((t % 1000)))
    echo "$out" >"$WORK/remap.json"
    id=$(json "d['id']" <<<"$out")
    st=$(json "d['state']" <<<"$out")
    say "remap finished in ${t} s: exit $rc, change ${id:-?}, state ${st:-?}"
    [[ $rc == 0 ]] || { ok=0; why+="exit $rc: $(head -c 300 <<<"$out"); "; }
    [[ $st == "done" ]] || { ok=0; why+="state ${st:-unknown}; "; }
    # Every data node serves the volume from array2/lun0 now, at the same epoch.
    s1=$(vol_state "$API_URL1"); s2=$(vol_state "$API_URL2")
    [[ ${s1#* } == "0+$VOL_BLOCKS@array2/lun0:0" ]] || { ok=0; why+="n1 map '${s1#* }'; "; }
    [[ -n $s1 && $s1 == "$s2" ]] || { ok=0; why+="n1 '$s1' and n2 '$s2' differ; "; }
    ep1=${s1%% *}
    if ((ok)); then
        wcheck PASS "remap during guest I/O: change $id done in ${t} s, n1 and n2 serve $VOL from array2/lun0 at epoch $ep1"
        answer "remap PASS change $id, ${t} s, epoch $ep1"
    else
        wcheck FAIL "remap during guest I/O" "${why%; }"
        answer "remap FAIL ${why%; }"
    fi
    say "after the remap: n1 serves $VOL at epoch ${s1/ /, map }; n2 at epoch ${s2/ /, map }"
    [[ -n $id ]] && sy --node "$API_URL2" changes "$id" 2>&1 | sed 's/^/host|     /'
    sy --node "$API_URL1" volumes show "$VOL" 2>&1 | sed 's/^/host|     /'
}

# @@HOST migrate: move the volume (now on array2/lun0) to array2/lun1 online while
# the guest writes through both nodes; the nodes copy (--engine node), so every window
# is read and written by the leader and the guest's writes to copied windows go to both
# LUs until the end.
migrate() {
    local t out rc st s1 s2 ok=1 why=""
    say "migrate $VOL: array2/lun0 -> array2/lun1 (the nodes copy, 16 MiB windows), through n1's API"
    t=$(date +%s%3N)
    out=$(timeout 600 "$BIN" --node "$API_URL1" --token "$TOKEN" -o json \
        migrate "$VOL" --to array2/lun1 --engine node --max-rate 0 2>&1)
    rc=$?
    t=$(($(date +%s%3N) - t))
    t=$((t / 1000)).$(printf '%03d' $((t % 1000)))
    echo "$out" >"$WORK/migration.json"
    st=$(json "d['state']" <<<"$out")
    say "migration finished in ${t} s: exit $rc, state ${st:-?}, $(json "str(d['windows']) + ' windows, ' + str(d['rate_mib_s']) + ' MiB/s'" <<<"$out")"
    [[ $rc == 0 ]] || { ok=0; why+="exit $rc: $(head -c 300 <<<"$out"); "; }
    [[ $st == "done" ]] || { ok=0; why+="state ${st:-unknown}; "; }
    s1=$(vol_state "$API_URL1"); s2=$(vol_state "$API_URL2")
    [[ ${s1#* } == "0+$VOL_BLOCKS@array2/lun1:0" ]] || { ok=0; why+="n1 map '${s1#* }'; "; }
    [[ -n $s1 && $s1 == "$s2" ]] || { ok=0; why+="n1 '$s1' and n2 '$s2' differ; "; }
    if ((ok)); then
        wcheck PASS "migration during guest I/O: done in ${t} s, n1 and n2 serve $VOL from array2/lun1 at epoch ${s1%% *}"
        answer "migrate PASS ${t} s, epoch ${s1%% *}"
    else
        wcheck FAIL "migration during guest I/O" "${why%; }"
        answer "migrate FAIL ${why%; }"
    fi
    sy --node "$API_URL2" migrations 2>&1 | sed 's/^/host|     /'
}

# ------------------------------------------------------------------ boot
# Two user-mode NICs = two independent paths. Inside QEMU's user network the host's
# loopback is 10.0.2.2 on NIC 1 and 10.0.3.2 on NIC 2:
#   path A: guest eth0 -> 10.0.2.2:P1 -> host 127.0.0.1:P1 = n1's portal (target port group 1)
#   path B: guest eth1 -> 10.0.3.2:P2 -> host 127.0.0.1:P2 = n2's portal (target port group 2)
CONSOLE=$WORK/console.log
: >"$CONSOLE"
say "booting the guest (TCG, timeout ${TIMEOUT}s); console: $CONSOLE"
T_BOOT=$(date +%s)
timeout --signal=KILL "$TIMEOUT" qemu-system-x86_64 \
    -nodefaults -display none -no-reboot \
    -accel tcg,thread=multi -cpu max -smp 2 -m 1024 \
    -kernel "$IMG/vmlinuz" -initrd "$WORK/initrd.gz" \
    -append "console=ttyS0 net.ifnames=0 panic=-1 rdinit=/init quiet" \
    -netdev user,id=n0,net=10.0.2.0/24,host=10.0.2.2 \
    -device virtio-net-pci,netdev=n0,mac=52:54:00:53:59:01 \
    -netdev user,id=n1,net=10.0.3.0/24,host=10.0.3.2 \
    -device virtio-net-pci,netdev=n1,mac=52:54:00:53:59:02 \
    -serial "file:$CONSOLE" -monitor none </dev/null >"$WORK/qemu.log" 2>&1 &
QEMU_PID=$!

# Stream the console, and act on the guest's @@HOST requests.
(
    tail --pid="$QEMU_PID" -n +1 -F "$CONSOLE" 2>/dev/null | while IFS= read -r line; do
        line=${line%$'\r'}
        echo "guest| $line"
        case $line in
        "@@HOST fail-path-a"*) fail_path_a ;;
        "@@HOST restore-path-a"*) restore_path_a ;;
        "@@HOST remap"*) remap ;;
        "@@HOST migrate"*) migrate ;;
        esac
    done
) &
WATCH_PID=$!
wait "$QEMU_PID"
qrc=$?
QEMU_PID=
sleep 1
kill "$WATCH_PID" 2>/dev/null
wait "$WATCH_PID" 2>/dev/null
WATCH_PID=
GUEST_SECS=$(($(date +%s) - T_BOOT))
say "guest finished in ${GUEST_SECS}s (qemu exit $qrc)"
[[ -s $WORK/qemu.log ]] && sed 's/^/qemu| /' "$WORK/qemu.log"

# ------------------------------------------------------------------ verdict
tr -d '\r' <"$CONSOLE" >"$WORK/console.txt"
sed -n '/^@@DMESG-BEGIN/,/^@@DMESG-END/p' "$WORK/console.txt" >"$WORK/guest-dmesg.txt"
hcheck "guest finished before the ${TIMEOUT}s timeout" test "$qrc" != 137
summary=$(grep -E '^qemu-initiator: [0-9]+ passed, [0-9]+ failed' "$WORK/console.txt" | tail -1)
hcheck "guest printed its summary line" test -n "$summary"
gpass=$(grep -c '^qemu-initiator: PASS ' "$WORK/console.txt")
gfail=$(grep -c '^qemu-initiator: FAIL ' "$WORK/console.txt")
if [[ -n $summary ]]; then
    hcheck "guest summary agrees with its PASS/FAIL lines" \
        test "$summary" = "qemu-initiator: $gpass passed, $gfail failed"
fi
hcheck "guest ran checks" test "$gpass" -gt 0

# What the console watcher checked: the kill, the restart, the remap, the migration.
for req in fail-path-a restore-path-a remap migrate; do
    grep -q "^@@HOST $req" "$WORK/console.txt" || hfail "guest asked for '@@HOST $req'"
done
while IFS= read -r l; do
    case $l in
    "PASS "*) hpass "${l#PASS }" ;;
    "FAIL "*) hfail "${l#FAIL }" ;;
    esac
done <"$WORK/hchecks"

# The host reads the guest's 128 MiB back through libiscsi, through both nodes (n1
# restarted, the volume remapped and migrated), and compares digests.
md5g=$(sed -n 's/^@@MD5-128M \([0-9a-f]*\).*/\1/p' "$WORK/console.txt" | tail -1)
if [[ -n $md5g ]]; then
    for u in "n1 $URL_A" "n2 $URL_B"; do
        md5h=$(timeout 120 qemu-img convert -f raw -O raw "${u#* }" "$WORK/after.raw" 2>&1 \
            && head -c 134217728 "$WORK/after.raw" | md5sum | cut -d' ' -f1)
        rm -f "$WORK/after.raw"
        hcheck "host (qemu-img, through ${u%% *}) reads the guest's 128 MiB back (md5 $md5g)" \
            test "$md5h" = "$md5g"
    done
else
    hfail "guest reported the md5 of its 128 MiB"
fi
for n in "${NODES[@]}"; do
    hcheck "node $n still running after the test" node_alive "$n"
done
sy --node "$API_URL2" nodes 2>&1 | sed 's/^/    | /'
for n in "${NODES[@]}"; do
    sed 's/\x1b\[[0-9;]*m//g' "$WORK/$n.log" >"$WORK/$n.txt"
    if grep -qiE "panicked|panic" "$WORK/$n.txt"; then
        hfail "node $n log has no panic" "$(grep -iE -m3 'panic' "$WORK/$n.txt")"
    else
        hpass "node $n log has no panic"
    fi
done
# Warnings and errors of every node. openraft logs every missed heartbeat to a peer
# (n1 while it is down, any peer when the cores are busy): counted, last 3 shown.
for n in "${NODES[@]}"; do
    all=$(grep -cE " (WARN|ERROR) " "$WORK/$n.txt")
    raft=$(grep -E " (WARN|ERROR) " "$WORK/$n.txt" | grep -c " openraft::")
    ((all > 0)) || continue
    echo "node $n log: $all warnings/errors, $raft of them from openraft; the others (last 30), then openraft's last 3:"
    grep -E " (WARN|ERROR) " "$WORK/$n.txt" | grep -v " openraft::" | tail -30 | cut -c1-300 | sed "s/^/$n| /"
    grep -E " (WARN|ERROR) " "$WORK/$n.txt" | grep " openraft::" | tail -3 | cut -c1-300 | sed "s/^/$n| /"
done
echo
echo "================ qemu initiator test summary ================"
grep -E '^qemu-initiator: (PASS|FAIL) ' "$WORK/console.txt"
echo "${summary:-qemu-initiator: summary line MISSING}"
echo "qemu-host: $HOST_PASSED passed, $HOST_FAILED failed"
say "total run time $(($(date +%s) - T_START))s (guest ${GUEST_SECS}s)"
cleanup
TOTAL_PASS=$((gpass + HOST_PASSED))
TOTAL_FAIL=$((gfail + HOST_FAILED))
[[ -z $summary ]] && TOTAL_FAIL=$((TOTAL_FAIL + 1))
if ((TOTAL_FAIL > 0)) || [[ ${SWITCHYARD_QEMU_KEEP:-0} == 1 ]]; then
    say "kept the work folder: $WORK (NODE.log, NODE.toml, console.txt, guest-dmesg.txt)"
else
    rm -rf "$WORK"
fi
echo "qemu-tests: $TOTAL_PASS passed, $TOTAL_FAIL failed"
((TOTAL_FAIL == 0))
