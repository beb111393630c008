#!/usr/bin/env bash
# Real-initiator test: a Linux guest under QEMU (TCG) runs open-iscsi + dm-multipath
# against a switchyard node on this host; QEMU's own libiscsi block driver (qemu-img)
# is tested against the same node. See README.md beside this file.
#
#   initiator-tests/qemu/run.sh
#
# Environment:
#   SWITCHYARD_QEMU_CACHE    image cache (default /var/tmp/switchyard-qemu), see build-image.sh
#   SWITCHYARD_QEMU_TIMEOUT  seconds the guest may run (default 900)
#   SWITCHYARD_BIN           switchyard binary to use (default: cargo build --release -p switchyard)
#   CARGO_TARGET_DIR         where cargo builds (default: the repository's target/)
#   SWITCHYARD_QEMU_KEEP=1   keep the work folder (config, node log, console log) on success
#
# Exit status 0 only when every host check and every guest check passed and the guest
# printed its summary line before the timeout.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TIMEOUT=${SWITCHYARD_QEMU_TIMEOUT:-900}
IQN=iqn.2026-11.org.switchyard:qemu
WWN=60053590c0ffee010123456789abcdef      # NAA 6, set in the config below
WWID=3$WWN                                # how Linux (scsi_id, multipath) names it
LU_BYTES=268435456                        # 256 MiB
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
    say "cargo build --release -p switchyard"
    (cd "$REPO" && cargo build --release -p switchyard) || die "cargo build failed"
    BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/switchyard
fi
[[ -x $BIN ]] || die "switchyard binary $BIN missing"
for t in qemu-system-x86_64 qemu-img python3 cpio gzip; do
    command -v "$t" >/dev/null || die "$t not found (build-image.sh installs the QEMU tools)"
done

# ------------------------------------------------------------------ work folder, ports
WORK=$(mktemp -d /tmp/switchyard-qemu.XXXXXX)
NODE_PID="" QEMU_PID="" WATCH_PID=""
# Stops what this script started (by pid); safe to call twice.
cleanup() {
    local p
    for p in $WATCH_PID $QEMU_PID; do kill "$p" 2>/dev/null; done
    WATCH_PID="" QEMU_PID=""
    [[ -f $WORK/proxy.pid ]] && kill "$(cat "$WORK/proxy.pid")" 2>/dev/null
    rm -f "$WORK/proxy.pid"
    if [[ -n $NODE_PID ]]; then
        kill -TERM "$NODE_PID" 2>/dev/null
        for _ in $(seq 1 50); do kill -0 "$NODE_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$NODE_PID" 2>/dev/null
        NODE_PID=""
    fi
    wait 2>/dev/null
}
trap cleanup EXIT
trap 'exit 3' INT TERM

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
declare -A TAKEN=()
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        [[ -z ${TAKEN[$p]:-} ]] && ! port_busy "$p" && break
    done
    TAKEN[$p]=1
    echo "$p"
}
PORT_A=$(free_port)   # portal 1 (tpgt 1, ALUA group 1 active/optimized)
PORT_B=$(free_port)   # portal 2 (tpgt 2, ALUA group 2 active/non-optimized)
PROXY_A=$(free_port)  # forwarder in front of portal 1: the guest's path A

cat >"$WORK/node.toml" <<EOF
# written by initiator-tests/qemu/run.sh
[node]
name = "qemu-test"
data_dir = "$WORK"

[[portal]]
listen = "127.0.0.1:$PORT_A"
tpgt = 1

[[portal]]
listen = "127.0.0.1:$PORT_B"
tpgt = 2

[[target]]
name = "$IQN"

[[target.port_group]]
id = 1
state = "active-optimized"
ports = [1]
preferred = true

[[target.port_group]]
id = 2
state = "active-non-optimized"
ports = [2]

[[target.lun]]
lun = 0
path = "lun0.img"
size = "256MiB"
wwn = "naa.$WWN"
EOF

say "starting switchyard on 127.0.0.1:$PORT_A (tpgt 1) and 127.0.0.1:$PORT_B (tpgt 2); work folder $WORK"
NO_COLOR=1 "$BIN" serve --config "$WORK/node.toml" >"$WORK/node.log" 2>&1 &
NODE_PID=$!
for _ in $(seq 1 100); do
    port_busy "$PORT_A" && port_busy "$PORT_B" && break
    kill -0 "$NODE_PID" 2>/dev/null || { cat "$WORK/node.log"; die "switchyard exited at start"; }
    sleep 0.1
done
port_busy "$PORT_A" && port_busy "$PORT_B" || { cat "$WORK/node.log"; die "switchyard does not listen"; }

start_proxy() {
    python3 "$HERE/tcp-proxy.py" "$PROXY_A" "$PORT_A" >>"$WORK/proxy.log" 2>&1 &
    echo $! >"$WORK/proxy.pid"
    for _ in $(seq 1 50); do port_busy "$PROXY_A" && return 0; sleep 0.1; done
    echo "qemu-run: WARNING: forwarder did not start" >&2
}
stop_proxy() {
    [[ -f $WORK/proxy.pid ]] && kill -KILL "$(cat "$WORK/proxy.pid")" 2>/dev/null
    rm -f "$WORK/proxy.pid"
}
start_proxy

# ------------------------------------------------------------------ qemu-img (libiscsi)
URL_A=iscsi://127.0.0.1:$PORT_A/$IQN/0
URL_B=iscsi://127.0.0.1:$PORT_B/$IQN/0
say "QEMU's libiscsi block driver: qemu-img against $URL_A and $URL_B"
info=$(qemu-img info -f raw "$URL_A" 2>&1)
sed 's/^/    | /' <<<"$info"
hcheck "qemu-img info $URL_A: virtual size 256 MiB" grep -q "virtual size: 256 MiB ($LU_BYTES bytes)" <<<"$info"
info=$(qemu-img info -f raw "$URL_B" 2>&1)
hcheck "qemu-img info $URL_B (portal 2): virtual size 256 MiB" grep -q "($LU_BYTES bytes)" <<<"$info"
head -c 8M /dev/urandom >"$WORK/small.raw"
hcheck "qemu-img convert 8 MiB raw image -> LU (portal 1)" \
    qemu-img convert -n -f raw -O raw "$WORK/small.raw" "$URL_A"
hcheck "qemu-img convert LU (portal 2) -> raw file" \
    qemu-img convert -f raw -O raw "$URL_B" "$WORK/back.raw"
hcheck "converted back: first 8 MiB equal the image" cmp -n 8388608 "$WORK/small.raw" "$WORK/back.raw"
hcheck "converted back: file is the LU's 256 MiB" test "$(stat -c %s "$WORK/back.raw" 2>/dev/null)" = "$LU_BYTES"
hcheck "qemu-img compare image vs LU: identical (rest of LU reads zero)" \
    qemu-img compare -f raw -F raw "$WORK/small.raw" "$URL_A"
rm -f "$WORK/back.raw"

# ------------------------------------------------------------------ guest initramfs
mkdir -p "$WORK/extra/etc"
install -m 755 "$HERE/guest-init.sh" "$WORK/extra/init"
cat >"$WORK/extra/etc/switchyard-test.env" <<EOF
IQN=$IQN
WWID=$WWID
LU_BYTES=$LU_BYTES
PORT_A=$PROXY_A
HOST_PORT_A=$PORT_A
PORT_B=$PORT_B
EOF
(cd "$WORK/extra" && find . -mindepth 1 | cpio -o -H newc --quiet | gzip -1) >"$WORK/extra.cpio.gz" \
    || die "cpio of the test files failed"
cat "$IMG/base.cpio.gz" "$WORK/extra.cpio.gz" >"$WORK/initrd.gz"

# ------------------------------------------------------------------ boot
# Two user-mode NICs = two independent paths. Inside QEMU's user network the host's
# loopback is 10.0.2.2 on NIC 1 and 10.0.3.2 on NIC 2:
#   path A: guest eth0 -> 10.0.2.2:PROXY_A -> host 127.0.0.1:PROXY_A (tcp-proxy.py) -> portal 1
#   path B: guest eth1 -> 10.0.3.2:PORT_B  -> host 127.0.0.1:PORT_B = portal 2
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
    -serial "file:$CONSOLE" -monitor none >"$WORK/qemu.log" 2>&1 &
QEMU_PID=$!

# Stream the console, and act on the guest's @@HOST requests.
(
    tail --pid="$QEMU_PID" -n +1 -F "$CONSOLE" 2>/dev/null | while IFS= read -r line; do
        line=${line%$'\r'}
        echo "guest| $line"
        case $line in
        "@@HOST fail-path-a"*)
            stop_proxy
            echo "qemu-run: [$(($(date +%s) - T_START))s] path A cut: forwarder killed" ;;
        "@@HOST restore-path-a"*)
            start_proxy
            echo "qemu-run: [$(($(date +%s) - T_START))s] path A restored: forwarder started" ;;
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

# The host reads the guest's 128 MiB back through libiscsi and compares digests.
md5g=$(sed -n 's/^@@MD5-128M \([0-9a-f]*\).*/\1/p' "$WORK/console.txt" | tail -1)
if [[ -n $md5g ]]; then
    md5h=$(qemu-img convert -f raw -O raw "$URL_A" "$WORK/after.raw" 2>&1 && head -c 134217728 "$WORK/after.raw" | md5sum | cut -d' ' -f1)
    rm -f "$WORK/after.raw"
    hcheck "host (qemu-img, portal 1) reads the guest's 128 MiB back (md5 $md5g)" test "$md5h" = "$md5g"
else
    hfail "guest reported the md5 of its 128 MiB"
fi
kill -0 "$NODE_PID" 2>/dev/null
hcheck "switchyard node still running after the test" kill -0 "$NODE_PID"
if grep -qiE "panicked|panic" "$WORK/node.log"; then
    hfail "switchyard node log has no panic" "$(grep -iE -m3 'panic' "$WORK/node.log")"
fi

sed 's/\x1b\[[0-9;]*m//g' "$WORK/node.log" >"$WORK/node.txt"
if grep -qE " (WARN|ERROR) " "$WORK/node.txt"; then
    echo "switchyard node log, warnings and errors (last 30):"
    grep -E " (WARN|ERROR) " "$WORK/node.txt" | tail -30 | sed 's/^/node| /'
fi
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
    say "kept the work folder: $WORK (node.log, console.txt, guest-dmesg.txt)"
else
    rm -rf "$WORK"
fi
echo "qemu-tests: $TOTAL_PASS passed, $TOTAL_FAIL failed"
((TOTAL_FAIL == 0))
