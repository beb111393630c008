#!/usr/bin/env bash
# Benchmark: libiscsi's iscsi-perf against switchyard and tgtd in the same run, on
# identical sparse file LUs (same size, both pre-filled so neither reads holes), and
# print each figure, the ratio, and the median of RUNS runs (interleaved).
#   bench/iscsi-perf.sh [SECONDS_PER_RUN] [RUNS]
# Needs root for tgtd (it is a system daemon), libiscsi-bin and tgt (installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
RUNS=${2:-3}
SIZE_MB=256

need=()
command -v iscsi-perf >/dev/null || need+=(libiscsi-bin)
command -v tgtd >/dev/null || need+=(tgt)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -p switchyard -q

work=$(mktemp -d /tmp/switchyard-bench.XXXXXX)
SY_PORT=23260
TGT_PORT=23261
cleanup() {
    [ -n "${sy_pid:-}" ] && kill "$sy_pid" 2>/dev/null || true
    if [ -n "${tgt_pid:-}" ]; then
        tgtadm --lld iscsi --control-port 23999 --mode system --op delete --force >/dev/null 2>&1 || true
        kill -9 "$tgt_pid" 2>/dev/null || true
    fi
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Identical LUs, fully written so both targets read real data from the page cache.
for f in sy tgt; do
    dd if=/dev/urandom of="$work/$f.img" bs=1M count=$SIZE_MB status=none
done

cat > "$work/node.toml" <<TOML
[node]
data_dir = "$work"
[[portal]]
listen = "127.0.0.1:$SY_PORT"
[[target]]
name = "iqn.2026-11.org.switchyard:bench"
[[target.lun]]
lun = 0
path = "sy.img"
TOML
RUST_LOG=warn target/release/switchyard serve --config "$work/node.toml" >/dev/null 2>"$work/sy.log" &
sy_pid=$!

tgtd -f --control-port 23999 --iscsi portal=127.0.0.1:$TGT_PORT >"$work/tgt.log" 2>&1 &
tgt_pid=$!
sleep 1
T="tgtadm --lld iscsi --control-port 23999"
$T --op new --mode target --tid 1 -T iqn.2026-11.org.switchyard:tgtd-bench
$T --op new --mode logicalunit --tid 1 --lun 1 -b "$work/tgt.img"
$T --op bind --mode target --tid 1 -I ALL
sleep 0.5

SY_URL="iscsi://127.0.0.1:$SY_PORT/iqn.2026-11.org.switchyard:bench/0"
TGT_URL="iscsi://127.0.0.1:$TGT_PORT/iqn.2026-11.org.switchyard:tgtd-bench/1"

# run URL BLOCKS DEPTH RANDOM -> prints "IOPS MB/s"
run() {
    local url=$1 blocks=$2 depth=$3 rnd=$4
    local args=(-b "$blocks" -m "$depth" -t "$SECS" -n)
    [ "$rnd" = 1 ] && args+=(-r)
    timeout $((SECS + 20)) iscsi-perf "${args[@]}" "$url" 2>&1 | tr '\r' '\n' > "$work/perf.out" || true
    # iscsi-perf ends with "iops average N (M MB/s)".
    python3 - "$work/perf.out" <<'PY'
import re, sys
m = None
for l in open(sys.argv[1], errors="replace"):
    x = re.search(r"iops average (\d+) \((\d+) MB/s\)", l)
    if x:
        m = x
print(f"{m.group(1)} {m.group(2)}" if m else "0 0")
PY
}

median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }

cpu_secs() { awk '{print ($14+$15)/100}' "/proc/$1/stat"; }
rss_kb() { awk '/VmHWM/{print $2}' "/proc/$1/status"; }

printf '%-28s %12s %12s %8s\n' "load" "switchyard" "tgtd" "ratio"
for spec in "4K-rand-read-QD32:8:32:1:iops" "4K-rand-read-QD1:8:1:1:iops" "128K-seq-read-QD16:256:16:0:mbs"; do
    IFS=: read -r name blocks depth rnd unit <<<"$spec"
    sy=(); tg=()
    for _ in $(seq "$RUNS"); do
        read -r i m < <(run "$SY_URL" "$blocks" "$depth" "$rnd")
        [ "$unit" = iops ] && sy+=("$i") || sy+=("$m")
        read -r i m < <(run "$TGT_URL" "$blocks" "$depth" "$rnd")
        [ "$unit" = iops ] && tg+=("$i") || tg+=("$m")
    done
    s=$(median "${sy[@]}"); t=$(median "${tg[@]}")
    ratio=$(python3 -c "print(f'{$s/$t:.2f}' if $t else 'n/a')")
    u=$([ "$unit" = iops ] && echo IOPS || echo MB/s)
    printf '%-28s %12s %12s %8s   (%s; runs: sy %s / tgtd %s)\n' "$name" "$s" "$t" "$ratio" "$u" "${sy[*]}" "${tg[*]}"
done
echo "switchyard: peak RSS $(rss_kb $sy_pid) KiB, CPU $(cpu_secs $sy_pid) s"
echo "tgtd:       peak RSS $(rss_kb $tgt_pid) KiB, CPU $(cpu_secs $tgt_pid) s"
