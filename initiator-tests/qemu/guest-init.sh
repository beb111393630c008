#!/bin/bash
# /init of the QEMU guest (run.sh puts it into the initramfs with /etc/switchyard-test.env).
# Runs open-iscsi + dm-multipath against a switchyard cluster on the host (path A to data
# node n1, path B to data node n2), prints one "qemu-initiator: PASS|FAIL <check>" line
# per check and the summary line "qemu-initiator: P passed, F failed", then powers the
# VM off.
#
# Lines starting with "@@HOST " ask run.sh (which reads this console) to act:
#   @@HOST fail-path-a      kill -9 node n1 (path A dies with it)
#   @@HOST restore-path-a   start n1 again (it rejoins the cluster and serves again)
#   @@HOST remap            remap the volume online (array/lun0 -> array2/lun0)
#   @@HOST migrate          migrate the volume online (array2/lun0 -> array2/lun1, the
#                           nodes copy; writes to copied windows go to both LUs)
# The host answers finished requests on 10.0.2.2:ANS_PORT (one line per request).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /run /tmp /run/lock/iscsi
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/lock/iscsi /run/multipath /run/udev
echo 1 >/proc/sys/kernel/sysrq
exec </dev/null >/dev/console 2>&1

# shellcheck disable=SC1091
. /etc/switchyard-test.env   # IQN, WWID, LU_BYTES, PORT_A/B, TPG_A/B, RTP_A/B, ANS_PORT

PASSED=0
FAILED=0
T0=$(date +%s)
pass() { PASSED=$((PASSED + 1)); echo "qemu-initiator: PASS $1"; }
fail() { FAILED=$((FAILED + 1)); echo "qemu-initiator: FAIL $1${2:+ -- $2}"; }
# check NAME CMD...: PASS when CMD exits 0; on failure its output goes to the console.
check() {
    local name=$1 out rc
    shift
    out=$("$@" 2>&1)
    rc=$?
    if [[ $rc == 0 ]]; then pass "$name"; else
        fail "$name" "exit $rc"
        sed 's/^/    | /' <<<"$out" | tail -40
    fi
    return $rc
}
say() { echo "--- [$(($(date +%s) - T0))s] $*"; }
finish() {
    say "dmesg (iscsi/scsi/multipath lines)"
    echo "@@DMESG-BEGIN"
    dmesg | grep -E "iscsi|iSCSI|connection[0-9]|scsi|\[sd[a-z]+\]|dev sd[a-z]|alua|multipath|device-mapper|reservation|nexus|I/O error|Sense" | tail -200
    echo "@@DMESG-END"
    echo "qemu-initiator: $PASSED passed, $FAILED failed"
    sync
    echo o >/proc/sysrq-trigger
    sleep 30
}
trap finish EXIT

PA="10.0.2.2:$PORT_A"   # NIC 1 -> host 127.0.0.1:PORT_A = node n1's portal (port group 1)
PB="10.0.3.2:$PORT_B"   # NIC 2 -> host 127.0.0.1:PORT_B = node n2's portal (port group 2)
MP=/dev/mapper/$WWID
# The volume's 256 MiB: [0, 128M) raw patterns (the host reads them back and compares
# md5), [128M, 240M) an ext4 file system (dm-linear over the multipath map), [240M,
# 256M) scratch for the reservation tests.
FS_START=262144   # sectors
FS_SECT=229376
FSDEV=/dev/mapper/syfs

# host_wait NAME SECONDS: wait for the host's answer to request NAME; prints it.
host_wait() {
    local a
    for _ in $(seq 1 "$2"); do
        a=$(timeout 5 bash -c "exec 3<>/dev/tcp/10.0.2.2/$ANS_PORT && cat <&3" 2>/dev/null \
            | grep "^$1 " | tail -1)
        [[ -n $a ]] && { echo "$a"; return 0; }
        sleep 1
    done
    return 1
}
# write_files PREFIX N: N files of 1 MiB of random data in the file system, each
# fsync'ed; their sha256 (of the source) go to /tmp/SUMS. Fails on the first error.
write_files() {
    local i
    for ((i = 0; i < $2; i++)); do
        head -c 1M /dev/urandom >/tmp/wbuf.$1 || return 1
        echo "$(sha256sum </tmp/wbuf.$1 | cut -d' ' -f1)  /mnt/$1-$i" >>/tmp/SUMS.$1
        dd if=/tmp/wbuf.$1 of="/mnt/$1-$i" bs=1M conv=fsync status=none || return 1
    done
    cat /tmp/SUMS.$1 >>/tmp/SUMS
    rm -f /tmp/SUMS.$1 /tmp/wbuf.$1
}

# --------------------------------------------------------------- base system
say "kernel $(uname -r), loading modules"
for m in virtio_pci virtio_net sd_mod sg scsi_dh_alua iscsi_tcp dm_multipath dm_round_robin \
    dm_service_time dm_queue_length ext4; do
    modprobe "$m" || fail "modprobe $m"
done
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up
ip addr add 10.0.3.15/24 dev eth1 && ip link set eth1 up
tcp_open() { timeout 10 bash -c "exec 3<>/dev/tcp/${1%:*}/${1#*:}" 2>/dev/null; }
for _ in $(seq 1 20); do tcp_open "$PA" && tcp_open "$PB" && break; sleep 1; done
check "net: path A portal reachable ($PA via eth0)" tcp_open "$PA"
check "net: path B portal reachable ($PB via eth1)" tcp_open "$PB"

/lib/systemd/systemd-udevd --daemon </dev/null >/dev/null 2>&1
udevadm trigger --action=add >/dev/null 2>&1
udevadm settle --timeout=30

# --------------------------------------------------------------- iSCSI login
sed -i -e 's/^node.session.timeo.replacement_timeout = .*/node.session.timeo.replacement_timeout = 15/' \
    -e 's/^node.conn\[0\].timeo.noop_out_timeout = .*/node.conn[0].timeo.noop_out_timeout = 10/' \
    /etc/iscsi/iscsid.conf
# Daemons are started outside $(...): they would hold its pipe open.
iscsid </dev/null >/dev/null 2>&1
sleep 1
check "iscsid starts" pidof iscsid

# Each node advertises its own portal (127.0.0.1:PORT, TPGT = its cluster id).
say "SendTargets discovery through $PA (n1) and $PB (n2)"
disc=$(iscsiadm -m discovery -t sendtargets -p "$PA" -o nonpersistent 2>&1)
echo "$disc" | sed 's/^/    | /'
check "discovery through n1: target advertised on its portal, group 1" grep -qE ":$PORT_A,1 $IQN\$" <<<"$disc"
disc=$(iscsiadm -m discovery -t sendtargets -p "$PB" -o nonpersistent 2>&1)
echo "$disc" | sed 's/^/    | /'
check "discovery through n2: target advertised on its portal, group 2" grep -qE ":$PORT_B,2 $IQN\$" <<<"$disc"

iscsiadm -m node -o new -T "$IQN" -p "$PA,1" >/dev/null
iscsiadm -m node -o new -T "$IQN" -p "$PB,2" >/dev/null
check "login path A ($PA)" iscsiadm -m node -T "$IQN" -p "$PA" --login
check "login path B ($PB)" iscsiadm -m node -T "$IQN" -p "$PB" --login
udevadm settle --timeout=30

# disk_of PORTAL: the sd device of LUN 0 in the session to that portal
disk_of() {
    iscsiadm -m session -P 3 2>/dev/null | awk -v p="$1" '
        /Current Portal:/ { cur = ($3 ~ "^" p ",") }
        cur && /Attached scsi disk/ { print $4; exit }'
}
wait_disk() {
    local d
    for _ in $(seq 1 30); do
        d=$(disk_of "$1")
        [[ -n $d && -b /dev/$d ]] && { echo "$d"; return 0; }
        sleep 1
    done
    return 1
}
SDA=$(wait_disk "$PA")
SDB=$(wait_disk "$PB")
check "two iSCSI sessions" test "$(iscsiadm -m session 2>/dev/null | grep -c "$IQN")" = 2
check "LUN 0 attached on both paths (path A: ${SDA:-none}, path B: ${SDB:-none})" \
    test -n "$SDA" -a -n "$SDB" -a "$SDA" != "$SDB"
[[ -n $SDA && -n $SDB ]] || exit 1

# --------------------------------------------------------------- identity (VPD 0x83)
for d in "$SDA" "$SDB"; do
    id=$(/lib/udev/scsi_id -g -u -d "/dev/$d")
    check "scsi_id of $d is the LU's NAA WWN ($id = $WWID)" test "$id" = "$WWID"
done
vpd=$(sg_vpd -p 0x83 "/dev/$SDA" 2>&1)
echo "$vpd" | sed 's/^/    | /'
check "sg_vpd 0x83 lists the NAA designator 0x${WWID#3}" grep -qi "0x${WWID#3}" <<<"$vpd"
# Relative target port ids are node id x 16 + portal index + 1 (unique in the cluster).
check "sg_vpd 0x83 on path A (n1): relative target port $RTP_A" \
    grep -qiE "Relative target port: 0x0*${RTP_A#0x}\b" <<<"$vpd"
check "sg_vpd 0x83 on path A (n1): target port group $TPG_A" grep -qiE "Target port group: 0x0*$TPG_A\b" <<<"$vpd"
vpdb=$(sg_vpd -p 0x83 "/dev/$SDB" 2>&1)
echo "$vpdb" | grep -iE "relative target port|target port group" | sed 's/^/    | /'
check "sg_vpd 0x83 on path B (n2): the same NAA designator" grep -qi "0x${WWID#3}" <<<"$vpdb"
check "sg_vpd 0x83 on path B (n2): relative target port $RTP_B" \
    grep -qiE "Relative target port: 0x0*${RTP_B#0x}\b" <<<"$vpdb"
check "sg_vpd 0x83 on path B (n2): target port group $TPG_B" grep -qiE "Target port group: 0x0*$TPG_B\b" <<<"$vpdb"

# --------------------------------------------------------------- dm-multipath
cat >/etc/multipath.conf <<'EOF'
defaults {
    user_friendly_names no
    find_multipaths no
    polling_interval 2
}
devices {
    device {
        vendor "SWITCHYD"
        product "VIRTUAL-DISK"
        path_grouping_policy group_by_prio
        prio alua
        hardware_handler "1 alua"
        path_checker tur
        path_selector "service-time 0"
        failback immediate
        no_path_retry 12
    }
}
EOF
multipathd </dev/null >/dev/null 2>&1
sleep 1
check "multipathd starts" pidof multipathd
for _ in $(seq 1 30); do [[ -b $MP ]] && break; multipath >/dev/null 2>&1; sleep 1; done
udevadm settle --timeout=30

# path_states: "sdX prio status pathstate" per path of the map, from multipath -ll
path_states() {
    multipath -ll "$WWID" 2>/dev/null | awk '
        /prio=/ { for (i = 1; i <= NF; i++) { if ($i ~ /^prio=/) pr = substr($i, 6); if ($i ~ /^status=/) st = substr($i, 8) } }
        / [0-9]+:[0-9]+:[0-9]+:[0-9]+ sd/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+:[0-9]+:[0-9]+:[0-9]+$/) print $(i+1), pr, st, $(i+3), $(i+4) }'
}
# wait_paths N: wait until N paths are "active ready"
count_ready() { path_states | awk '$4 == "active" && $5 == "ready"' | wc -l; }
wait_paths() {
    for _ in $(seq 1 "${2:-60}"); do
        [[ $(count_ready) == "$1" ]] && return 0
        sleep 1
    done
    return 1
}
wait_paths 2 30
ll=$(multipath -ll 2>&1)
echo "$ll" | sed 's/^/    | /'
check "multipath map $WWID exists" test -b "$MP"
check "multipath -ll: one map" test "$(multipath -ll 2>/dev/null | grep -c "^$WWID")" = 1
check "multipath -ll: 2 active ready paths" test "$(count_ready)" = 2
check "multipath -ll: hardware handler alua" grep -q "hwhandler='1 alua'" <<<"$ll"
prio_a=$(path_states | awk -v d="$SDA" '$1 == d {print $2}')
prio_b=$(path_states | awk -v d="$SDB" '$1 == d {print $2}')
st_a=$(path_states | awk -v d="$SDA" '$1 == d {print $3}')
check "ALUA prio: path A (active/optimized, prio $prio_a) above path B (non-optimized, prio $prio_b)" \
    test "${prio_a:-0}" -gt "${prio_b:-0}" -a "${prio_b:-0}" -gt 0
check "group_by_prio: path A's group is the active one" test "$st_a" = active

# --------------------------------------------------------------- I/O on both paths
say "writing 64 MiB through $MP"
head -c 64M /dev/urandom >/tmp/pat1
head -c 64M /dev/urandom >/tmp/pat2
md5_1=$(md5sum </tmp/pat1 | cut -d' ' -f1)
md5_12=$(cat /tmp/pat1 /tmp/pat2 | md5sum | cut -d' ' -f1)
echo "@@MD5-128M $md5_12"
wsect() { awk '{print $7}' "/sys/block/$1/stat"; }
wa0=$(wsect "$SDA"); wb0=$(wsect "$SDB")
t=$(date +%s)
check "dd 64 MiB pattern -> multipath (bs=4M oflag=direct)" \
    dd if=/tmp/pat1 of="$MP" bs=4M oflag=direct conv=fsync
say "write took $(($(date +%s) - t)) s"
wa=$(($(wsect "$SDA") - wa0)); wb=$(($(wsect "$SDB") - wb0))
check "writes went to the active/optimized path A ($wa sectors on A, $wb on B)" \
    test "$wa" -ge 131072 -a "$wb" -lt 8192
got=$(dd if="$MP" bs=4M count=16 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
check "read back 64 MiB through multipath matches (md5 $md5_1)" test "$got" = "$md5_1"

# --------------------------------------------------------------- ext4 with files
say "ext4 on the volume's [128 MiB, 240 MiB) (dm-linear over $MP)"
: >/tmp/SUMS
check "dm-linear map over the multipath map" dmsetup create syfs --table "0 $FS_SECT linear $MP $FS_START"
udevadm settle --timeout=30
check "mkfs.ext4 (112 MiB, inode tables and journal written now)" \
    mkfs.ext4 -q -F -b 4096 -E lazy_itable_init=0,lazy_journal_init=0 "$FSDEV"
mkdir -p /mnt
check "mount ext4" mount -t ext4 "$FSDEV" /mnt
t=$(date +%s)
check "write 16 files of 1 MiB (fsync each) with checksums" write_files before 16
say "files written in $(($(date +%s) - t)) s"

# --------------------------------------------------------------- path failure during I/O
say "second 64 MiB write; the host kills node n1 (path A) while it runs"
# The host polls the console about once a second, so the kill lands a moment after
# dd has started writing through path A. n2 and the witness keep the cluster's quorum.
wa0=$(wsect "$SDA"); wb0=$(wsect "$SDB")
t=$(date +%s)
dd if=/tmp/pat2 of="$MP" bs=4M seek=16 oflag=direct conv=fsync 2>/tmp/dd2.err &
DD_PID=$!
echo "@@HOST fail-path-a"
a=$(host_wait fail-path-a 60)
running=no; kill -0 "$DD_PID" 2>/dev/null && running=yes
check "host killed n1 while the dd ran (${a:-no answer}; dd still running: $running)" \
    test -n "$a" -a "$running" = yes
wait "$DD_PID"
rc=$?
sed 's/^/    | /' /tmp/dd2.err
check "dd during n1's failure completes (exit $rc, $(($(date +%s) - t)) s)" test "$rc" = 0
wa=$(($(wsect "$SDA") - wa0)); wb=$(($(wsect "$SDB") - wb0))
check "the write failed over to path B mid-stream ($wa sectors completed on A, $wb on B)" \
    test "$wb" -gt 0
for _ in $(seq 1 30); do
    [[ $(path_states | awk -v d="$SDA" '$1 == d {print $4}') == failed ]] && break
    sleep 1
done
ll=$(multipath -ll 2>&1)
echo "$ll" | sed 's/^/    | /'
check "multipath marks path A failed" test "$(path_states | awk -v d="$SDA" '$1 == d {print $4}')" = failed
check "multipath keeps path B active ready" test "$(count_ready)" = 1 -a \
    "$(path_states | awk -v d="$SDB" '$1 == d {print $4 $5}')" = activeready
got=$(dd if="$MP" bs=4M count=32 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
check "all 128 MiB read back through multipath on path B alone" test "$got" = "$md5_12"
got=$(dd if="/dev/$SDB" bs=4M count=32 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
check "all 128 MiB read back from path B's disk ($SDB) directly" test "$got" = "$md5_12"
check "file system: 16 more files written while n1 is down (path B only)" write_files down 16
check "file system: sync while n1 is down" sync -f /mnt

# --------------------------------------------------------------- recovery
say "restarting n1 on the host; iscsid reconnects by itself"
echo "@@HOST restore-path-a"
t=$(date +%s)
a=$(host_wait restore-path-a 90)
check "host restarted n1 (${a:-no answer})" test -n "$a"
if wait_paths 2 90; then
    pass "path A back through the restarted n1: iscsid reconnect ($(($(date +%s) - t)) s), 2 active paths"
else
    fail "path A back through the restarted n1 within 90 s"
    multipath -ll 2>&1 | sed 's/^/    | /'
    iscsiadm -m session -P 1 2>&1 | sed 's/^/    | /'
    say "logging path A out and in again by hand"
    iscsiadm -m node -T "$IQN" -p "$PA" --logout >/dev/null 2>&1
    iscsiadm -m node -T "$IQN" -p "$PA" --login >/dev/null 2>&1
    wait_paths 2 60
fi
SDA=$(wait_disk "$PA")
check "path A's group active again (failback immediate)" \
    test "$(path_states | awk -v d="$SDA" '$1 == d {print $3}')" = active

say "graceful logout of path B, I/O on path A, login again"
check "logout path B" iscsiadm -m node -T "$IQN" -p "$PB" --logout
sleep 3
check "after logout: 1 path in the map" test "$(path_states | wc -l)" = 1
got=$(dd if="$MP" bs=4M count=32 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
check "all 128 MiB read back on path A alone" test "$got" = "$md5_12"
check "login path B again" iscsiadm -m node -T "$IQN" -p "$PB" --login
udevadm settle --timeout=30
SDB=$(wait_disk "$PB")
check "2 active ready paths again" wait_paths 2 60
ll=$(multipath -ll 2>&1)
echo "$ll" | sed 's/^/    | /'

# --------------------------------------------------------------- remap and migration during I/O
# during_io REQUEST WHAT: two writers run while the host carries out @@HOST REQUEST
# (a remap of the whole volume: every block's I/O is held for the switch; a migration:
# every window held while it is copied, writes to copied windows mirrored to the
# source): one rewrites the first 16 MiB with the same pattern (4 MiB direct writes),
# one writes 1 MiB files into the file system. The request goes out once both have
# completed a round; they stop once both have completed another round after the
# host's answer.
during_io() {
    local req=$1 what=$2
    say "$what during I/O: writers start, then the host acts"
    rm -f /tmp/stop /tmp/raw.n /tmp/raw.err /tmp/files.n
    (
        n=0
        while [[ ! -f /tmp/stop ]]; do
            dd if=/tmp/pat1 of="$MP" bs=4M count=4 oflag=direct conv=fsync status=none 2>>/tmp/raw.err \
                || { echo "pass $n failed" >>/tmp/raw.err; exit 1; }
            n=$((n + 1)); echo $n >/tmp/raw.n
        done
    ) &
    RAW_PID=$!
    (
        i=0
        while [[ ! -f /tmp/stop ]]; do
            write_files "$req-$i" 1 || exit 1
            i=$((i + 1)); echo $i >/tmp/files.n
        done
    ) &
    FILES_PID=$!
    wa0=$(wsect "$SDA"); wb0=$(wsect "$SDB")
    wait_rounds 0 0
    c=$(counts); raw0=${c% *}; files0=${c#* }
    echo "@@HOST $req"
    a=$(host_wait "$req" 600)
    echo "    | host: ${a:-no answer}"
    c=$(counts); raw1=${c% *}; files1=${c#* }
    wait_rounds "$raw1" "$files1"
    touch /tmp/stop
    wait "$RAW_PID"; raw_rc=$?
    wait "$FILES_PID"; files_rc=$?
    c=$(counts); raw2=${c% *}; files2=${c#* }
    sed 's/^/    | /' /tmp/raw.err 2>/dev/null
    check "host: $what while both writers ran (${a:-no answer})" \
        bash -c '[[ $1 == "$2 PASS"* ]]' _ "$a" "$req"
    check "raw writer: $raw2 passes of 16 MiB, no error ($raw0 before the request, $((raw2 - raw1)) after the answer)" \
        test "$raw_rc" = 0 -a ! -s /tmp/raw.err -a "$raw0" -gt 0 -a "$raw2" -gt "$raw1"
    check "file writer: $files2 files (fsync'ed), no error ($files0 before the request, $((files2 - files1)) after the answer)" \
        test "$files_rc" = 0 -a "$files0" -gt 0 -a "$files2" -gt "$files1"
    wa=$(($(wsect "$SDA") - wa0)); wb=$(($(wsect "$SDB") - wb0))
    check "writes kept following ALUA across the $req ($wa sectors on A, $wb on B)" \
        test "$wa" -gt "$wb"
    check "2 active ready paths after the $req" test "$(count_ready)" = 2
}
counts() { echo "$(cat /tmp/raw.n 2>/dev/null || echo 0) $(cat /tmp/files.n 2>/dev/null || echo 0)"; }
# wait_rounds RAW FILES: until the writers have done more than RAW and FILES rounds
# (or one of them has stopped), at most 60 s
wait_rounds() {
    local r f
    for _ in $(seq 1 120); do
        c=$(counts); r=${c% *}; f=${c#* }
        ((r > $1 && f > $2)) && return 0
        kill -0 "$RAW_PID" 2>/dev/null && kill -0 "$FILES_PID" 2>/dev/null || return 1
        sleep 0.5
    done
    return 1
}
during_io remap "remapped the volume"
during_io migrate "migrated the volume to another LU"

# --------------------------------------------------------------- fsck, checksums
say "fsck and every file's checksum"
nfiles=$(wc -l </tmp/SUMS)
check "umount" umount /mnt
out=$(e2fsck -f -n "$FSDEV" 2>&1); rc=$?
echo "$out" | sed 's/^/    | /'
check "e2fsck -f -n: clean (exit $rc)" test "$rc" = 0
check "mount again" mount -t ext4 -o ro "$FSDEV" /mnt
check "all $nfiles files match their checksums (written before, during n1's failure, the remap and the migration)" \
    sha256sum -c --quiet /tmp/SUMS
check "no other files" test "$(find /mnt -type f | wc -l)" = "$nfiles"
umount /mnt
check "dm-linear map removed" dmsetup remove syfs

# --------------------------------------------------------------- sg3_utils
# rtpg_has SG_RTPG_OUTPUT GROUP STATE PORT: the group is in asymmetric access state
# 0xSTATE and lists relative target port PORT (0x..)
rtpg_has() {
    awk -v G="$2" -v S="$3" -v P="${4#0x}" '
        /target port group id :/ { g = ($0 ~ ("target port group id : 0x0*" G "[ ,]")); r = 0; next }
        g && $0 ~ ("asymmetric access state : 0x" S) { s = 1 }
        g && /Relative target port ids:/ { r = 1; next }
        g && r && $0 ~ ("^ *0x0*" P " *$") { p = 1 }
        END { exit !(s && p) }' <<<"$1"
}
say "sg3_utils on path A ($SDA) and path B ($SDB)"
out=$(sg_inq "/dev/$SDA" 2>&1); echo "$out" | sed 's/^/    | /'
check "sg_inq: vendor SWITCHYD, product VIRTUAL-DISK" grep -qE "Vendor identification: SWITCHYD" <<<"$out"
check "sg_inq: TPGS implicit ALUA (TPGS=1)" grep -qE "TPGS=1" <<<"$out"
out=$(sg_readcap -l "/dev/$SDA" 2>&1); echo "$out" | sed 's/^/    | /'
check "sg_readcap -l: $LU_BYTES bytes in 512-byte blocks" \
    grep -q "Device size: $LU_BYTES bytes" <<<"$out"
check "sg_readcap -l: logical block length 512" grep -q "Logical block length=512 bytes" <<<"$out"
for p in A B; do
    d=$SDA; [[ $p == B ]] && d=$SDB
    out=$(sg_rtpg -d "/dev/$d" 2>&1); echo "$out" | sed 's/^/    | /'
    check "sg_rtpg on path $p: REPORT TARGET PORT GROUPS succeeds" sg_rtpg "/dev/$d"
    check "sg_rtpg on path $p: group $TPG_A (n1) active/optimized, port $RTP_A" \
        rtpg_has "$out" "$TPG_A" 00 "$RTP_A"
    check "sg_rtpg on path $p: group $TPG_B (n2) active/non-optimized, port $RTP_B" \
        rtpg_has "$out" "$TPG_B" 01 "$RTP_B"
    check "sg_rtpg on path $p: two groups (the witness has none)" \
        test "$(grep -c "target port group id" <<<"$out")" = 2
done

say "persistent reservations (sg_persist) across the two I_T nexuses"
check "PR: register key 0xabc1 on path A" sg_persist -n --out --register --param-sark=0xabc1 "/dev/$SDA"
check "PR: register key 0xabc2 on path B" sg_persist -n --out --register --param-sark=0xabc2 "/dev/$SDB"
out=$(sg_persist -n --in --read-keys "/dev/$SDB" 2>&1); echo "$out" | sed 's/^/    | /'
check "PR: read keys (path B) lists both keys" \
    bash -c 'grep -q 0xabc1 <<<"$1" && grep -q 0xabc2 <<<"$1"' _ "$out"
check "PR: reserve Write Exclusive with key 0xabc1 on path A" \
    sg_persist -n --out --reserve --param-rk=0xabc1 --prout-type=1 "/dev/$SDA"
out=$(sg_persist -n --in --read-reservation "/dev/$SDB" 2>&1); echo "$out" | sed 's/^/    | /'
check "PR: read reservation (path B): key 0xabc1, Write Exclusive" \
    bash -c 'grep -q "Key=0xabc1" <<<"$1" && grep -qiE "type: Write Exclusive *\$" <<<"$1"' _ "$out"
check "PR: holder (path A) may write" \
    dd if=/dev/zero of="/dev/$SDA" bs=4096 count=1 seek=62000 oflag=direct
check "PR: path B write is refused (reservation conflict)" \
    bash -c "! dd if=/dev/zero of=/dev/$SDB bs=4096 count=1 seek=62001 oflag=direct"
check "PR: path B may still read" dd if="/dev/$SDB" of=/dev/null bs=4096 count=1 skip=62001 iflag=direct
check "PR: release on path A" \
    sg_persist -n --out --release --param-rk=0xabc1 --prout-type=1 "/dev/$SDA"
out=$(sg_persist -n --in --read-reservation "/dev/$SDA" 2>&1)
check "PR: no reservation after release" grep -qi "no reservation" <<<"$out"
check "PR: unregister path A" sg_persist -n --out --register --param-rk=0xabc1 --param-sark=0 "/dev/$SDA"
check "PR: unregister path B" sg_persist -n --out --register --param-rk=0xabc2 --param-sark=0 "/dev/$SDB"
out=$(sg_persist -n --in --read-keys "/dev/$SDA" 2>&1)
check "PR: no keys left" grep -qi "no registered reservation keys" <<<"$out"

# --------------------------------------------------------------- logout
check "data intact after all the above" \
    test "$(dd if="$MP" bs=4M count=32 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)" = "$md5_12"
multipath -F >/dev/null 2>&1
check "logout of both sessions" iscsiadm -m node -T "$IQN" --logout
say "done"
exit 0
