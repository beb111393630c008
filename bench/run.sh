#!/usr/bin/env bash
# The switchyard benchmark (issue 10): switchyard against tgtd, in one interleaved run,
# on identical file LUs (same size, both filled with random data so neither reads
# holes, same page-cache state). Prints each figure for both targets, the ratio, and
# the median of RUNS runs:
#   - iscsi-perf (libiscsi): 4K random read QD32 and QD1, 128K sequential read QD16;
#   - loadgen (bench/loadgen, on our initiator crate): 4K random write QD32 and a
#     50/50 random read/write mix QD32, plus a 4K random read QD32 to cross-check
#     loadgen against iscsi-perf on the same target;
#   - 4K random read QD1 against a node with busy polling off (`[fabric]
#     busy_poll_us = 0`; the default polls at low queue depth);
#   - through the virtualizer: a switchyard node whose volume maps 1:1 onto a LU of a
#     switchyard array node, against that array directly (4K random read QD32 and QD1
#     with iscsi-perf, 4K random write QD32 with loadgen), the virtual node with the
#     default event-loop threads and with `workers = 1`, and a byte-for-byte TCP relay
#     (bench/loadgen/src/bin/relay.rs) in the virtual node's place: the ceiling for
#     anything in the path on this machine;
#   - during remaps: a 4K 50/50 random read/write load at QD32 through the virtual
#     node, without remaps and while its volume is remapped over and over, 0.1 s
#     apart (split in two, merged, 1 MiB moved to another LU of the array and back),
#     with the remaps' durations and holds;
#   - peak RSS and CPU seconds per million I/Os of each target (over the comparable
#     loads), and the RSS of a node serving 16 sessions at QD32 (16 loadgen sessions).
#
#   bench/run.sh [SECONDS_PER_RUN] [RUNS]          (defaults: 10 s, 3 runs)
#
# Needs root for tgtd (a system daemon) and libiscsi-bin + tgt (installed if missing).
# CARGO_TARGET_DIR is honoured. Everything runs on 127.0.0.1: client and targets share
# the machine's cores, as in the issue's reference figures.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
RUNS=${2:-3}
SIZE_MB=256
TD=${CARGO_TARGET_DIR:-target}

need=()
command -v iscsi-perf >/dev/null || need+=(libiscsi-bin)
command -v tgtd >/dev/null || need+=(tgt)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -q -p switchyard -p loadgen
SY=$TD/release/switchyard
LG=$TD/release/loadgen
RELAY=$TD/release/relay

work=$(mktemp -d /tmp/switchyard-bench.XXXXXX)
SY_PORT=23260
TGT_PORT=23261
ARRAY_PORT=23262
VIRT_PORT=23263
POLL_PORT=23264
VIRT1_PORT=23265
RELAY_PORT=23266
CTL_PORT=23999
MGMT_PORT=23998
TOKEN=bench-admin-token-0123456789
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ -n "${tgt_pid:-}" ]; then
        tgtadm --lld iscsi --control-port $CTL_PORT --mode system --op delete --force >/dev/null 2>&1 || true
        kill -9 "$tgt_pid" 2>/dev/null || true
    fi
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Identical LUs, fully written so no target reads holes. Their pages are then
# dropped from the page cache: each target reads its LU into the cache itself (the
# warm-up below), so the cache holds what that target's own reads put there. (Left
# as dd wrote them, the pages sit in large folios, which halve either target's 4K
# write rate; see "Page cache" in the README.)
for f in sy tgt array; do
    dd if=/dev/urandom of="$work/$f.img" bs=1M count=$SIZE_MB status=none
done
python3 - "$work"/{sy,tgt,array}.img <<'PY'
import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
PY

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    exit 1
}

node_toml() { # NAME PORT TARGET FILE [EXTRA NODE LINES]
    cat <<TOML
[node]
name = "$1"
data_dir = "$work"
${5:-}
[[portal]]
listen = "127.0.0.1:$2"
[[target]]
name = "$3"
[[target.lun]]
lun = 0
path = "$4"
TOML
}
node_toml bench $SY_PORT iqn.2026-11.org.switchyard:bench sy.img >"$work/node.toml"
node_toml array $ARRAY_PORT iqn.2026-11.org.switchyard:array array.img >"$work/array.toml"
# A second LU on the array: where the remaps during load move 1 MiB of the volume.
printf '[[target.lun]]\nlun = 1\npath = "spare.img"\nsize = "64MiB"\n' >>"$work/array.toml"
node_toml poll $POLL_PORT iqn.2026-11.org.switchyard:bench sy.img >"$work/poll.toml"
printf '[fabric]\nbusy_poll_us = 0\n' >>"$work/poll.toml"
virtual_toml() { # NAME PORT [EXTRA NODE LINES]
cat <<TOML
[node]
name = "$1"
data_dir = "$work"
${3:-}
[[portal]]
listen = "127.0.0.1:$2"
[[backend]]
id = "array"
portal = "127.0.0.1:$ARRAY_PORT"
target = "iqn.2026-11.org.switchyard:array"
sessions = 1
queue_depth = 64
[mapping]
epoch = 1
[[mapping.volumes]]
name = "v"
wwn = "naa.6005359000000000000000000000b001"
block_size = 512
blocks = $((SIZE_MB * 2048))
holes = "zero"
[[mapping.volumes.extents]]
vstart = 0
blocks = $((SIZE_MB * 2048))
backend = "array/lun0"
bstart = 0
[[target]]
name = "iqn.2026-11.org.switchyard:virtual"
[[target.lun]]
lun = 0
volume = "v"
TOML
}
virtual_toml virt $VIRT_PORT "[management]
listen = \"127.0.0.1:$MGMT_PORT\"
admin_token = \"$TOKEN\"" >"$work/virtual.toml"
virtual_toml virt1 $VIRT1_PORT "workers = 1" >"$work/virtual1.toml"

start_node() { # CONFIG LOG PORT -> pid in $node_pid
    RUST_LOG=warn "$SY" serve --config "$1" >/dev/null 2>"$2" &
    node_pid=$!
    pids+=("$node_pid")
    wait_port "$3"
}
start_node "$work/node.toml" "$work/sy.log" $SY_PORT
sy_pid=$node_pid

tgtd -f --control-port $CTL_PORT --iscsi portal=127.0.0.1:$TGT_PORT >"$work/tgt.log" 2>&1 &
tgt_pid=$!
wait_port $TGT_PORT
T="tgtadm --lld iscsi --control-port $CTL_PORT"
$T --op new --mode target --tid 1 -T iqn.2026-11.org.switchyard:tgtd-bench
$T --op new --mode logicalunit --tid 1 --lun 1 -b "$work/tgt.img"
$T --op bind --mode target --tid 1 -I ALL

SY_URL="iscsi://127.0.0.1:$SY_PORT/iqn.2026-11.org.switchyard:bench/0"
TGT_URL="iscsi://127.0.0.1:$TGT_PORT/iqn.2026-11.org.switchyard:tgtd-bench/1"
ARRAY_URL="iscsi://127.0.0.1:$ARRAY_PORT/iqn.2026-11.org.switchyard:array/0"
VIRT_URL="iscsi://127.0.0.1:$VIRT_PORT/iqn.2026-11.org.switchyard:virtual/0"
VIRT1_URL="iscsi://127.0.0.1:$VIRT1_PORT/iqn.2026-11.org.switchyard:virtual/0"
POLL_URL="iscsi://127.0.0.1:$POLL_PORT/iqn.2026-11.org.switchyard:bench/0"
RELAY_URL="iscsi://127.0.0.1:$RELAY_PORT/iqn.2026-11.org.switchyard:array/0"

# perf URL BLOCKS DEPTH RANDOM -> "IOPS MB/s IOS" (iscsi-perf; 512-byte blocks)
run_perf() {
    local url=$1 blocks=$2 depth=$3 rnd=$4
    local args=(-b "$blocks" -m "$depth" -t "$SECS" -n)
    [ "$rnd" = 1 ] && args+=(-r)
    timeout $((SECS + 20)) iscsi-perf "${args[@]}" "$url" 2>&1 | tr '\r' '\n' >"$work/perf.out" || true
    # iscsi-perf ends with "iops average N (M MB/s)".
    python3 - "$work/perf.out" "$SECS" <<'PY'
import re, sys
m = None
for l in open(sys.argv[1], errors="replace"):
    x = re.search(r"iops average (\d+) \((\d+) MB/s\)", l)
    if x:
        m = x
print(f"{m.group(1)} {m.group(2)} {int(m.group(1)) * int(sys.argv[2])}" if m else "0 0 0")
PY
}

# gen URL PATTERN DEPTH [SESSIONS] -> "IOPS MB/s IOS P99_US" (loadgen, 4K)
gen() {
    local url=$1 pattern=$2 depth=$3 sessions=${4:-1}
    # Every run starts with no dirty pages: otherwise the writeback of the previous
    # run's writes (to either target's file) competes with this one.
    sync
    timeout $((SECS + 30)) "$LG" "$url" --pattern "$pattern" --qd "$depth" --sessions "$sessions" \
        --secs "$SECS" >"$work/gen.out" 2>"$work/gen.err" || true
    python3 - "$work/gen.out" <<'PY'
import sys
kv = {}
for l in open(sys.argv[1]):
    if l.startswith("pattern="):
        kv = dict(x.split("=", 1) for x in l.split())
print(kv.get("iops", 0), kv.get("mbs", 0), kv.get("ios", 0), kv.get("p99_us", 0))
PY
}

median() { python3 -c "import statistics,sys; print(round(statistics.median(float(x) for x in sys.argv[1:]), 1))" "$@"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}' if $2 else 'n/a')"; }
cpu_secs() { awk '{print ($14+$15)/100}' "/proc/$1/stat"; }
rss_kb() { awk '/VmHWM/{print $2}' "/proc/$1/status"; }
cur_rss_kb() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }

# I/Os done against each target, for CPU seconds per million I/Os.
sy_ios=0
tg_ios=0
add() { python3 -c "print(int($1 + $2))"; }

# Warm both targets (first logins; the whole LU read into the page cache through
# the target: a sequential pass, then random reads).
for u in "$SY_URL" "$TGT_URL"; do
    run_perf "$u" 256 16 0 >/dev/null
    run_perf "$u" 8 32 1 >/dev/null
done
sy_cpu0=$(cpu_secs $sy_pid)
tg_cpu0=$(cpu_secs $tgt_pid)

printf '%-30s %12s %12s %7s  %s\n' "load" "switchyard" "tgtd" "ratio" "unit (all runs: switchyard / tgtd)"
# tool:name:arg1:arg2:arg3:unit
for spec in \
    "perf:4K rand read QD32:8:32:1:iops" \
    "perf:4K rand read QD1:8:1:1:iops" \
    "perf:128K seq read QD16:256:16:0:mbs" \
    "gen:4K rand write QD32:write:32::iops" \
    "gen:4K 50/50 rand r/w QD32:mixed:32::iops" \
    "gen:4K rand read QD32 (loadgen):read:32::iops"; do
    IFS=: read -r tool name a1 a2 a3 unit <<<"$spec"
    sy=(); tg=(); syl=(); tgl=()
    for _ in $(seq "$RUNS"); do
        for who in sy tg; do
            url=$SY_URL; [ $who = tg ] && url=$TGT_URL
            if [ "$tool" = perf ]; then
                read -r iops mbs ios < <(run_perf "$url" "$a1" "$a2" "$a3")
                lat=$(python3 -c "print(round(1e6/$iops, 1) if $iops else 0)")
            else
                read -r iops mbs ios lat < <(gen "$url" "$a1" "$a2")
            fi
            v=$iops; [ "$unit" = mbs ] && v=$mbs
            if [ $who = sy ]; then sy+=("$v"); syl+=("$lat"); sy_ios=$(add $sy_ios "$ios")
            else tg+=("$v"); tgl+=("$lat"); tg_ios=$(add $tg_ios "$ios"); fi
        done
    done
    s=$(median "${sy[@]}"); t=$(median "${tg[@]}")
    u=$([ "$unit" = iops ] && echo IOPS || echo MB/s)
    printf '%-30s %12s %12s %7s  %s (%s / %s)\n' "$name" "$s" "$t" "$(ratio "$s" "$t")" "$u" "${sy[*]}" "${tg[*]}"
    if [ "$name" = "4K rand read QD1" ]; then
        ls=$(median "${syl[@]}"); lt=$(median "${tgl[@]}")
        printf '%-30s %12s %12s %7s  %s\n' "  QD1 mean latency" "$ls" "$lt" "$(ratio "$ls" "$lt")" "us (1/IOPS; lower is better)"
    fi
    if [ "$tool" = gen ]; then
        ls=$(median "${syl[@]}"); lt=$(median "${tgl[@]}")
        printf '%-30s %12s %12s %7s  %s\n' "  p99 latency" "$ls" "$lt" "$(ratio "$ls" "$lt")" "us (lower is better)"
    fi
done

sy_cpu=$(python3 -c "print($(cpu_secs $sy_pid) - $sy_cpu0)")
tg_cpu=$(python3 -c "print($(cpu_secs $tgt_pid) - $tg_cpu0)")
sy_cpm=$(python3 -c "print(round($sy_cpu / ($sy_ios / 1e6), 2) if $sy_ios else 0)")
tg_cpm=$(python3 -c "print(round($tg_cpu / ($tg_ios / 1e6), 2) if $tg_ios else 0)")
printf '%-30s %12s %12s %7s  %s\n' "CPU s per million I/Os" "$sy_cpm" "$tg_cpm" "$(ratio "$sy_cpm" "$tg_cpm")" \
    "(lower is better; $sy_ios / $tg_ios I/Os)"
sy_rss=$(rss_kb $sy_pid); tg_rss=$(rss_kb $tgt_pid)
printf '%-30s %12s %12s %7s  %s\n' "peak RSS" "$((sy_rss / 1024))" "$((tg_rss / 1024))" "$(ratio "$sy_rss" "$tg_rss")" "MiB"

# 16 sessions at QD32 each (one loadgen process, 16 connections), 4K random reads.
# The RSS is sampled while the load runs; VmHWM is the peak over the node's life.
for who in sy tg; do
    url=$SY_URL; pid=$sy_pid; [ $who = tg ] && { url=$TGT_URL; pid=$tgt_pid; }
    "$LG" "$url" --pattern mixed --qd 32 --sessions 16 --secs "$SECS" >"$work/gen16.$who" 2>&1 &
    lg=$!
    sleep $((SECS / 2 + 1))
    rss=$(cur_rss_kb $pid)
    wait $lg || true
    iops=$(python3 -c "
import sys
for l in open('$work/gen16.$who'):
    if l.startswith('pattern='): print(dict(x.split('=',1) for x in l.split())['iops'])" || echo 0)
    eval "${who}16_rss=$rss ${who}16_iops=${iops:-0}"
done
printf '%-30s %12s %12s %7s  %s\n' "RSS, 16 sessions x QD32" "$((sy16_rss / 1024))" "$((tg16_rss / 1024))" \
    "$(ratio "$sy16_rss" "$tg16_rss")" "MiB during a 4K 50/50 load ($sy16_iops / $tg16_iops IOPS); peak RSS since start: $(( $(rss_kb $sy_pid) / 1024 )) / $(( $(rss_kb $tgt_pid) / 1024 )) MiB"

# Queue depth 1 with busy polling off (a second node on the same file), against tgtd.
kill "$sy_pid" 2>/dev/null || true
start_node "$work/poll.toml" "$work/poll.log" $POLL_PORT
poll_pid=$node_pid
run_perf "$POLL_URL" 8 1 1 >/dev/null
po=(); tg=()
for _ in $(seq "$RUNS"); do
    read -r iops _ _ < <(run_perf "$POLL_URL" 8 1 1); po+=("$iops")
    read -r iops _ _ < <(run_perf "$TGT_URL" 8 1 1); tg+=("$iops")
done
p=$(median "${po[@]}"); t=$(median "${tg[@]}")
printf '%-30s %12s %12s %7s  %s (%s / %s)\n' "4K rand read QD1, no polling" "$p" "$t" "$(ratio "$p" "$t")" \
    "IOPS with [fabric] busy_poll_us = 0" "${po[*]}" "${tg[*]}"
printf '%-30s %12s %12s %7s  %s\n' "  QD1 mean latency" "$(python3 -c "print(round(1e6/$p, 1))")" \
    "$(python3 -c "print(round(1e6/$t, 1))")" "$(ratio "$t" "$p")" "us (1/IOPS; lower is better)"
kill "$poll_pid" 2>/dev/null || true

# Through the virtualizer: host -> virtual node -> array node, against the array
# direct; the virtual node with the default event-loop threads (one per CPU) and with
# `workers = 1` (client, virtual node and array share the two cores); and the array
# through a relay that copies bytes and parses nothing (two blocking threads per
# connection, the fastest of its modes here): no virtualizer can beat it.
start_node "$work/array.toml" "$work/array.log" $ARRAY_PORT
array_pid=$node_pid
"$RELAY" --listen 127.0.0.1:$RELAY_PORT --upstream 127.0.0.1:$ARRAY_PORT --blocking 2>"$work/relay.log" &
pids+=($!)
wait_port $RELAY_PORT
start_node "$work/virtual.toml" "$work/virt.log" $VIRT_PORT
virt_pid=$node_pid
start_node "$work/virtual1.toml" "$work/virt1.log" $VIRT1_PORT
virt1_pid=$node_pid
run_perf "$ARRAY_URL" 256 16 0 >/dev/null
for u in "$ARRAY_URL" "$VIRT_URL" "$VIRT1_URL" "$RELAY_URL"; do run_perf "$u" 8 32 1 >/dev/null; done
echo
printf '%-30s %12s %12s %7s  %s\n' "virtualizer" "virtual" "direct" "ratio" "unit (all runs: virtual / direct)"
for spec in "perf:4K rand read QD32:8:32:1" "perf:4K rand read QD1:8:1:1" "gen:4K rand write QD32:write:32:"; do
    IFS=: read -r tool name a1 a2 a3 <<<"$spec"
    vi=(); v1=(); di=(); re=()
    for _ in $(seq "$RUNS"); do
        for who in vi v1 di re; do
            case $who in vi) url=$VIRT_URL ;; v1) url=$VIRT1_URL ;; di) url=$ARRAY_URL ;; re) url=$RELAY_URL ;; esac
            if [ "$tool" = perf ]; then read -r iops _ _ < <(run_perf "$url" "$a1" "$a2" "$a3")
            else read -r iops _ _ _ < <(gen "$url" "$a1" "$a2"); fi
            case $who in vi) vi+=("$iops") ;; v1) v1+=("$iops") ;; di) di+=("$iops") ;; re) re+=("$iops") ;; esac
        done
    done
    v=$(median "${vi[@]}"); w=$(median "${v1[@]}"); d=$(median "${di[@]}"); r=$(median "${re[@]}")
    printf '%-30s %12s %12s %7s  %s (%s / %s)\n' "$name" "$v" "$d" "$(ratio "$v" "$d")" IOPS "${vi[*]}" "${di[*]}"
    printf '%-30s %12s %12s %7s  %s (%s)\n' "  virtual node workers = 1" "$w" "$d" "$(ratio "$w" "$d")" IOPS "${v1[*]}"
    printf '%-30s %12s %12s %7s  %s (%s)\n' "  byte relay (the ceiling)" "$r" "$d" "$(ratio "$r" "$d")" IOPS "${re[*]}"
done
echo "virtual node: peak RSS $(( $(rss_kb $virt_pid) / 1024 )) MiB (workers = 1: $(( $(rss_kb $virt1_pid) / 1024 )) MiB); array node: peak RSS $(( $(rss_kb $array_pid) / 1024 )) MiB"

# During remaps: the virtual node's volume remapped 0.1 s apart while loadgen
# runs a 4K 50/50 load at QD32 through it: split in two, merged, 1 MiB at 64 MiB moved
# to the array's second LU, moved back (each remap moving data copies it while it holds
# the range). Against the same load with no remaps.
half=$((SIZE_MB * 1024))
all=$((SIZE_MB * 2048))
ext() { printf '[[extents]]\nvstart = %s\nblocks = %s\nbackend = "%s"\nbstart = %s\n' "$@"; }
ext 0 $all array/lun0 0 >"$work/whole.toml"
{ ext 0 $half array/lun0 0; ext $half $half array/lun0 $half; } >"$work/split.toml"
{ ext 0 131072 array/lun0 0; ext 131072 2048 array/lun1 0; ext 133120 $((all - 133120)) array/lun0 133120; } >"$work/moved.toml"
remap_loop() {
    local i=0 layouts=(split whole moved whole)
    while [ ! -e "$work/stop" ]; do
        if "$SY" --node "http://127.0.0.1:$MGMT_PORT" --token "$TOKEN" remap v \
            --extents "$work/${layouts[$((i % 4))]}.toml" >"$work/remap.out" 2>&1; then
            # "held for N ms" and the "done +N ms" line of the change's report.
            python3 - "$work/remap.out" >>"$work/remap.times" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
held = re.search(r"held for (\d+) ms", t)
done = re.search(r"done\s+\+(\d+) ms", t)
print(done.group(1) if done else -1, held.group(1) if held else -1)
PY
        else
            echo failed >>"$work/remap.fail"
        fi
        i=$((i + 1))
        sleep 0.1
    done
}
: >"$work/remap.times"
rm -f "$work/remap.fail"
qu=(); qr=(); pu=(); pr=()
for _ in $(seq "$RUNS"); do
    read -r iops _ _ p99 < <(gen "$VIRT_URL" mixed 32); qu+=("$iops"); pu+=("$p99")
    rm -f "$work/stop"
    remap_loop &
    loop=$!
    read -r iops _ _ p99 < <(gen "$VIRT_URL" mixed 32); qr+=("$iops"); pr+=("$p99")
    touch "$work/stop"
    wait $loop
done
echo
printf '%-30s %12s %12s %7s  %s\n' "during remaps (virtual node)" "remapping" "quiet" "ratio" "(all runs: remapping / quiet)"
a=$(median "${qr[@]}"); b=$(median "${qu[@]}")
printf '%-30s %12s %12s %7s  %s (%s / %s)\n' "4K 50/50 rand r/w QD32" "$a" "$b" "$(ratio "$a" "$b")" IOPS "${qr[*]}" "${qu[*]}"
a=$(median "${pr[@]}"); b=$(median "${pu[@]}")
printf '%-30s %12s %12s %7s  %s (%s / %s)\n' "  p99 latency" "$a" "$b" "$(ratio "$a" "$b")" "us" "${pr[*]}" "${pu[*]}"
python3 - "$work/remap.times" "$( [ -e "$work/remap.fail" ] && wc -l <"$work/remap.fail" || echo 0)" <<'PY'
import statistics, sys
rows = [tuple(int(x) for x in l.split()) for l in open(sys.argv[1]) if l.strip()]
done = [d for d, _ in rows if d >= 0]
held = [h for _, h in rows if h >= 0]
def q(v, f):
    return sorted(v)[min(len(v) - 1, int(len(v) * f))] if v else 0
print(f"remaps: {len(rows)} done, {sys.argv[2]} failed; duration median {q(done, 0.5)} ms, "
      f"max {max(done, default=0)} ms; hold median {q(held, 0.5)} ms, max {max(held, default=0)} ms")
PY
