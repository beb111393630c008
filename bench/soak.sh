#!/usr/bin/env bash
# Soak benchmark (issue 11, "a load test: 64 sessions from several processes for
# minutes; no errors, memory flat"). Builds release binaries, starts a node serving one
# 256 MiB file LU, and runs several `loadgen` processes against it at once — SESSIONS
# sessions in all, each a 4K 50/50 random read/write load at QD8 — for MINUTES minutes.
# Every 10 s it samples the node's RSS and CPU; at the end it prints the series, the
# RSS min/max, each loadgen's I/Os and errors, and a verdict line:
#
#   soak: N errors, RSS first X MiB last Y MiB max Z MiB
#
#   bench/soak.sh [MINUTES] [SESSIONS]          (defaults: 2 minutes, 64 sessions)
#
# A benchmark, not a test: nothing in CI runs it. CARGO_TARGET_DIR is honoured. Exits
# non-zero if any I/O failed or the node died.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-2}
SESSIONS=${2:-64}
QD=8
PROCS=4
[ "$SESSIONS" -lt "$PROCS" ] && PROCS=$SESSIONS
SECS=$((MINUTES * 60))
INTERVAL=10
PORT=${SOAK_PORT:-23270}
TD=${CARGO_TARGET_DIR:-target}

cargo build --release -q -p switchyard -p loadgen
SY=$TD/release/switchyard
LG=$TD/release/loadgen

work=$(mktemp -d /tmp/switchyard-soak.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/node.toml" <<TOML
[node]
name = "soak"
data_dir = "$work"
[[portal]]
listen = "127.0.0.1:$PORT"
[[target]]
name = "iqn.2026-11.org.switchyard:soak"
[[target.lun]]
lun = 0
path = "soak.img"
size = "256MiB"
[fabric]
max_sessions_per_initiator = $SESSIONS
TOML

RUST_LOG=warn "$SY" serve --config "$work/node.toml" >/dev/null 2>"$work/node.log" &
node=$!
pids+=("$node")
for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
    sleep 0.1
done
(exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null || { echo "node did not start:" >&2; cat "$work/node.log" >&2; exit 1; }

rss_mib() { awk '/VmRSS/{printf "%.1f", $2/1024}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
URL="iscsi://127.0.0.1:$PORT/iqn.2026-11.org.switchyard:soak/0"

echo "soak: $SESSIONS sessions from $PROCS loadgen processes, 4K 50/50 random r/w QD$QD each, $MINUTES min"
# Sessions spread over the processes (the first ones take the remainder).
lgs=()
for i in $(seq 0 $((PROCS - 1))); do
    n=$((SESSIONS / PROCS + (i < SESSIONS % PROCS ? 1 : 0)))
    "$LG" "$URL" --pattern mixed --read-pct 50 --qd $QD --sessions "$n" --secs "$SECS" \
        --initiator "iqn.2026-11.org.switchyard:soak-$i" >"$work/lg$i.out" 2>"$work/lg$i.err" &
    lgs+=($!)
    pids+=($!)
done

printf '%6s %10s %8s\n' "t(s)" "RSS(MiB)" "CPU(%)"
series=()
t=0
c0=$(cpu_ticks $node)
printf '%6d %10s %8s\n' 0 "$(rss_mib $node)" "-"
while [ $t -lt $SECS ]; do
    sleep $INTERVAL
    t=$((t + INTERVAL))
    kill -0 $node 2>/dev/null || { echo "node died at t=${t}s" >&2; break; }
    c1=$(cpu_ticks $node)
    r=$(rss_mib $node)
    series+=("$r")
    printf '%6d %10s %8s\n' $t "$r" "$(awk -v d=$((c1 - c0)) -v hz="$HZ" -v s=$INTERVAL 'BEGIN{printf "%.0f", 100*d/hz/s}')"
    c0=$c1
done

errors=0
ios=0
failed=0
for i in "${!lgs[@]}"; do
    if ! wait "${lgs[$i]}"; then
        failed=$((failed + 1))
    fi
    line=$(grep '^pattern=' "$work/lg$i.out" || true)
    if [ -z "$line" ]; then
        echo "loadgen $i: no result; stderr:" && sed 's/^/  /' "$work/lg$i.err"
        errors=$((errors + 1))
        continue
    fi
    e=$(sed -n 's/.* errors=\([0-9]*\).*/\1/p' <<<"$line")
    n=$(sed -n 's/.* ios=\([0-9]*\).*/\1/p' <<<"$line")
    errors=$((errors + e))
    ios=$((ios + n))
    echo "loadgen $i: $(head -1 "$work/lg$i.out")"
    [ -s "$work/lg$i.err" ] && sed 's/^/  stderr: /' "$work/lg$i.err" | head -5
done
alive=yes
kill -0 $node 2>/dev/null || { alive=no; errors=$((errors + 1)); }

echo "RSS series (MiB, every ${INTERVAL}s): ${series[*]}"
read -r first last min max < <(printf '%s\n' "${series[@]}" | awk 'NR==1{f=$1; mn=$1; mx=$1} {l=$1; if ($1<mn) mn=$1; if ($1>mx) mx=$1} END{print f, l, mn, mx}')
echo "RSS min $min MiB max $max MiB; node peak RSS $(awk '/VmHWM/{printf "%.1f", $2/1024}' /proc/$node/status 2>/dev/null || echo '?') MiB; node alive: $alive"
echo "I/Os: $ios ($((ios / SECS)) IOPS); loadgen processes failed: $failed"
grep -iE "panic|error" "$work/node.log" | head -5 | sed 's/^/node log: /' || true
echo "soak: $errors errors, RSS first $first MiB last $last MiB max $max MiB"
[ "$errors" -eq 0 ] && [ "$failed" -eq 0 ]
