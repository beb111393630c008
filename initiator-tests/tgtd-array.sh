#!/usr/bin/env bash
# Debian's tgtd as a second, third-party back-end array for a virtualizing switchyard
# node (etc/virtual.toml, initiator-tests/virtual-conformance.sh).
#
#   initiator-tests/tgtd-array.sh start DIR PORT [SIZE]   # SIZE of DIR/t1.img, default 512M
#   initiator-tests/tgtd-array.sh stop DIR PORT
#
# start: runs `tgtd -f` listening on 127.0.0.1:PORT with target
# iqn.2026-11.org.switchyard:tgtd-array and LUN 1 backed by DIR/t1.img (created sparse
# if missing), detached, its pid in DIR/tgtd.pid and its log in DIR/tgtd.log; returns
# once the portal accepts connections. In a switchyard mapping table the LU is
# `<[[backend]] id>/lun1`. stop: SIGKILL (tgtd ignores SIGTERM), then waits for it to
# exit; DIR/t1.img stays.
#
# tgtd's management socket is chosen by --control-port; it must be below 32768 and
# distinct per instance: TGTD_CONTROL_PORT, default 10000 + PORT % 20000. tgtd is a
# system daemon: this needs root (apt-get install tgt).
set -euo pipefail

usage() {
    echo "usage: $0 start|stop DIR PORT [SIZE]" >&2
    exit 2
}
[ $# -ge 3 ] || usage
cmd=$1 dir=$2 port=$3 size=${4:-512M}
case $port in '' | *[!0-9]*) usage ;; esac
ctl=${TGTD_CONTROL_PORT:-$((10000 + port % 20000))}
if [ "$ctl" -ge 32768 ]; then
    echo "tgtd-array: control port $ctl must be below 32768" >&2
    exit 2
fi
iqn=iqn.2026-11.org.switchyard:tgtd-array
pidfile=$dir/tgtd.pid

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

stop() {
    [ -f "$pidfile" ] || return 0
    local pid
    pid=$(cat "$pidfile")
    # Only our tgtd: the pid must still be a tgtd with our control port.
    if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "tgtd .*--control-port $ctl"; then
        kill -9 "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            [ -d "/proc/$pid" ] || break
            sleep 0.05
        done
    fi
    rm -f "$pidfile"
}

case $cmd in
start)
    command -v tgtd >/dev/null || { echo "tgtd-array: tgtd not found (apt-get install tgt)" >&2; exit 1; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    pidfile=$dir/tgtd.pid
    stop
    if listening "$port"; then
        echo "tgtd-array: 127.0.0.1:$port is already in use" >&2
        exit 1
    fi
    [ -f "$dir/t1.img" ] || truncate -s "$size" "$dir/t1.img"
    setsid tgtd -f --control-port "$ctl" --iscsi "portal=127.0.0.1:$port" \
        </dev/null >"$dir/tgtd.log" 2>&1 &
    echo $! >"$pidfile"
    T=(tgtadm --lld iscsi --control-port "$ctl")
    up=0
    for _ in $(seq 100); do
        if "${T[@]}" --op show --mode target >/dev/null 2>&1; then up=1; break; fi
        sleep 0.05
    done
    if [ $up = 0 ]; then
        echo "tgtd-array: tgtd did not answer on control port $ctl; its log:" >&2
        cat "$dir/tgtd.log" >&2
        stop
        exit 1
    fi
    "${T[@]}" --op new --mode target --tid 1 -T "$iqn"
    "${T[@]}" --op new --mode logicalunit --tid 1 --lun 1 -b "$dir/t1.img"
    "${T[@]}" --op bind --mode target --tid 1 -I ALL
    for _ in $(seq 100); do
        listening "$port" && break
        sleep 0.05
    done
    if ! listening "$port"; then
        echo "tgtd-array: tgtd is not listening on 127.0.0.1:$port; its log:" >&2
        cat "$dir/tgtd.log" >&2
        stop
        exit 1
    fi
    echo "iscsi://127.0.0.1:$port/$iqn/1"
    ;;
stop)
    stop
    ;;
*)
    usage
    ;;
esac
