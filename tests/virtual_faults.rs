//! Faults under a virtual volume: a back-end array process is killed (SIGKILL) in the
//! middle of host I/O and restarted on the same port and data directory, while a host
//! keeps writing and reading through the virtualizing node at queue depth 8.
//!
//! What must hold:
//! - every host command completes (a hang guard per wave of commands; no other timing
//!   is asserted);
//! - each command either succeeds or fails with CHECK CONDITION and a sense key that
//!   tells the host to retry or that the LU is not ready — never GOOD with wrong data;
//! - the node reconnects by itself: later I/O to the array's extents succeeds without
//!   touching the node;
//! - after the restart every block reads back as the last write that returned GOOD, or
//!   as one of the writes that failed after it (a failed WRITE may have been applied);
//!   in particular everything made durable by SYNCHRONIZE CACHE or FUA is there.
//!   (A SIGKILL of the array loses nothing it acknowledged — its file LU writes through
//!   to the kernel before answering — so the check is stricter than durability alone.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use integration_tests::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BS: usize = 512;
const ARRAY: &str = "iqn.2026-11.org.switchyard:array";
const VIRT: &str = "iqn.2026-11.org.switchyard:virtual";
/// Volume size in blocks; see the mapping in the test.
const BLOCKS: u64 = 10_000;
/// Virtual blocks below this live on the array; the rest on a local file.
const ARRAY_END: u64 = 6004;
/// Queue depth of the host.
const QD: usize = 8;
/// The node's per-command timeout towards the array.
const BACKEND_TIMEOUT_SECS: u64 = 5;
/// Hang guard: a wave of QD commands must complete within this (the host's SCSI
/// timeout on Linux is 30 s).
const HANG_GUARD: Duration = Duration::from_secs(30);
/// How long the array stays dead: longer than the node's command timeout, so commands
/// fail instead of waiting for the reconnect.
const OUTAGE: Duration = Duration::from_secs(BACKEND_TIMEOUT_SECS + 2);

/// The content of block `lba` after write number `version` (0: never written).
fn content(version: u32, lba: u64) -> Vec<u8> {
    if version == 0 {
        vec![0u8; BS]
    } else {
        pattern(version, lba, BS)
    }
}

/// Which versions a block may hold: the last write that returned GOOD (or the initial
/// zeroes) and every write that failed after it.
#[derive(Clone)]
struct Block {
    cands: Vec<u32>,
    /// True when the last GOOD write was made durable (FUA, or a GOOD SYNCHRONIZE CACHE
    /// after it) and no write failed since.
    durable: bool,
}

/// Sense keys a host may see while a back-end is down: NOT READY (becoming ready:
/// retry) and ABORTED COMMAND (retry).
fn sensible(r: &ScsiResult) -> bool {
    matches!(r.sense_key(), 0x2 | 0xB)
}

#[derive(Default)]
struct Tally {
    good_writes: u64,
    failed_writes: u64,
    good_reads: u64,
    failed_reads: u64,
    syncs: u64,
    failed_syncs: u64,
    senses: BTreeMap<(u8, u8, u8), u64>,
}

enum Op {
    Write { lba: u64, n: u64, fua: bool, v: u32 },
    Read { lba: u64, n: u64 },
}

struct Model {
    blocks: Vec<Block>,
    next_version: u32,
    tally: Tally,
}

impl Model {
    fn check_read(&self, lba: u64, data: &[u8], what: &str) {
        assert_eq!(data.len(), BS * (data.len() / BS), "{what}: partial block");
        for (i, got) in data.chunks(BS).enumerate() {
            let b = lba + i as u64;
            let st = &self.blocks[b as usize];
            assert!(
                st.cands.iter().any(|&v| content(v, b) == got),
                "{what}: block {b} holds data that no write put there (GOOD with wrong \
                 data); expected one of versions {:?}",
                st.cands
            );
        }
    }

    fn note_failure(&mut self, r: &ScsiResult, what: &str) {
        assert_eq!(
            r.status, 2,
            "{what}: status {:#04x}: expected GOOD or CHECK CONDITION",
            r.status
        );
        let (asc, ascq) = r.asc();
        *self
            .tally
            .senses
            .entry((r.sense_key(), asc, ascq))
            .or_default() += 1;
        assert!(
            sensible(r),
            "{what}: CHECK CONDITION with sense {:X}/{asc:02X}/{ascq:02X}; expected NOT READY \
             or ABORTED COMMAND while a back-end is down",
            r.sense_key()
        );
    }

    /// One wave of up to QD commands on disjoint block ranges. Returns whether every
    /// command that touched the array's blocks succeeded (and there was one).
    async fn wave(&mut self, h: &mut Initiator, rng: &mut StdRng) -> bool {
        let mut ops: Vec<Op> = Vec::new();
        let mut used: Vec<(u64, u64)> = Vec::new();
        while ops.len() < QD {
            let n = rng.gen_range(1..=16u64);
            // Half of the I/O around the array/local boundary and the array's internal
            // extent boundary (3000), so that commands straddle extents.
            let lba = match rng.gen_range(0..4) {
                0 => rng.gen_range(2990..3010u64),
                1 => rng.gen_range(ARRAY_END - 20..ARRAY_END + 4),
                _ => rng.gen_range(0..BLOCKS - n),
            };
            if used.iter().any(|&(s, e)| lba < e && s < lba + n) {
                continue;
            }
            used.push((lba, lba + n));
            if rng.gen_bool(0.5) {
                let v = self.next_version;
                self.next_version += 1;
                ops.push(Op::Write {
                    lba,
                    n,
                    fua: rng.gen_bool(0.25),
                    v,
                });
            } else {
                ops.push(Op::Read { lba, n });
            }
        }
        let cmds = ops
            .iter()
            .map(|op| match *op {
                Op::Write { lba, n, fua, v } => {
                    let mut cdb = cdb16(0x8a, lba, n as u32);
                    if fua {
                        cdb[1] |= 0x08;
                    }
                    let mut data = Vec::with_capacity(n as usize * BS);
                    for b in lba..lba + n {
                        data.extend(content(v, b));
                    }
                    (0u16, cdb.to_vec(), data, 0u32)
                }
                Op::Read { lba, n } => (
                    0u16,
                    cdb16(0x88, lba, n as u32).to_vec(),
                    Vec::new(),
                    (n as usize * BS) as u32,
                ),
            })
            .collect();
        let res = tokio::time::timeout(HANG_GUARD, h.scsi_many(cmds, QD))
            .await
            .unwrap_or_else(|_| panic!("a host command did not complete within {HANG_GUARD:?}"));
        let mut array_ok = true;
        let mut touched_array = false;
        for (op, r) in ops.iter().zip(&res) {
            let on_array = match *op {
                Op::Write { lba, .. } | Op::Read { lba, .. } => lba < ARRAY_END,
            };
            touched_array |= on_array;
            match *op {
                Op::Write { lba, n, fua, v } => {
                    let what = format!("WRITE(16) lba {lba} blocks {n} fua {fua}");
                    if r.status == 0 {
                        self.tally.good_writes += 1;
                        for b in lba..lba + n {
                            self.blocks[b as usize] = Block {
                                cands: vec![v],
                                durable: fua,
                            };
                        }
                    } else {
                        self.note_failure(r, &what);
                        self.tally.failed_writes += 1;
                        array_ok &= !on_array;
                        for b in lba..lba + n {
                            let st = &mut self.blocks[b as usize];
                            st.cands.push(v);
                            st.durable = false;
                        }
                    }
                }
                Op::Read { lba, n } => {
                    let what = format!("READ(16) lba {lba} blocks {n}");
                    if r.status == 0 {
                        self.tally.good_reads += 1;
                        assert_eq!(r.data.len(), n as usize * BS, "{what}: short read");
                        self.check_read(lba, &r.data, &what);
                    } else {
                        self.note_failure(r, &what);
                        self.tally.failed_reads += 1;
                        array_ok &= !on_array;
                    }
                }
            }
        }
        array_ok && touched_array
    }

    /// SYNCHRONIZE CACHE(10) over the whole volume, with no write in flight.
    async fn sync(&mut self, h: &mut Initiator) -> bool {
        let r = tokio::time::timeout(
            HANG_GUARD,
            h.scsi(0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0),
        )
        .await
        .unwrap_or_else(|_| panic!("SYNCHRONIZE CACHE did not complete within {HANG_GUARD:?}"));
        if r.status == 0 {
            self.tally.syncs += 1;
            for st in &mut self.blocks {
                if st.cands.len() == 1 {
                    st.durable = true;
                }
            }
            true
        } else {
            self.note_failure(&r, "SYNCHRONIZE CACHE(10)");
            self.tally.failed_syncs += 1;
            false
        }
    }
}

async fn session(port: u16, target: &str) -> Initiator {
    let mut i = Initiator::connect(format!("127.0.0.1:{port}").parse().unwrap()).await;
    i.login(&LoginOpts {
        target: Some(target.into()),
        isid: Some([0x80, 0, 0, 0, 4, 1]),
        ..Default::default()
    })
    .await
    .expect("login");
    i.clear_ua(0).await;
    i
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn array_killed_and_restarted_during_io() {
    let dir = tempfile::tempdir().unwrap();
    let (ap, vp) = (free_port(), free_port());
    let array_cfg = dir.path().join("array.toml");
    std::fs::write(
        &array_cfg,
        format!(
            "[node]\nname = \"array\"\ndata_dir = \"{d}\"\n[[portal]]\nlisten = \"127.0.0.1:{ap}\"\n\
             [[target]]\nname = \"{ARRAY}\"\n\
             [[target.lun]]\nlun = 0\npath = \"a0.img\"\nsize = \"4MiB\"\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let array_log = dir.path().join("array.log");
    let mut array = NodeProcess::spawn(&array_cfg, Some(&array_log));
    wait_port(ap).await;
    // vol: [0,3000) -> array/lun0 [0,3000); [3000,6004) -> array/lun0 [5000,8004);
    //      [6004,10000) -> local [0,3996).
    let virt_cfg = dir.path().join("virt.toml");
    std::fs::write(
        &virt_cfg,
        format!(
            "[node]\nname = \"virt\"\ndata_dir = \"{d}\"\n[[portal]]\nlisten = \"127.0.0.1:{vp}\"\n\
             [[backend]]\nid = \"array\"\nportal = \"127.0.0.1:{ap}\"\ntarget = \"{ARRAY}\"\n\
             sessions = 2\ntimeout_secs = {BACKEND_TIMEOUT_SECS}\n\
             [[store]]\nid = \"local\"\npath = \"local.img\"\nsize = \"2MiB\"\n\
             [mapping]\nepoch = 1\n[[mapping.volumes]]\nname = \"vol1\"\n\
             wwn = \"naa.6005359000000000000000000000f001\"\nblock_size = 512\nblocks = {BLOCKS}\n\
             [[mapping.volumes.extents]]\nvstart = 0\nblocks = 3000\nbackend = \"array/lun0\"\nbstart = 0\n\
             [[mapping.volumes.extents]]\nvstart = 3000\nblocks = 3004\nbackend = \"array/lun0\"\nbstart = 5000\n\
             [[mapping.volumes.extents]]\nvstart = {ARRAY_END}\nblocks = 3996\nbackend = \"local\"\nbstart = 0\n\
             [[target]]\nname = \"{VIRT}\"\n[[target.lun]]\nlun = 0\nvolume = \"vol1\"\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let virt_log = dir.path().join("virt.log");
    let mut virt = NodeProcess::spawn(&virt_cfg, Some(&virt_log));
    wait_port(vp).await;

    let seed = rand::random::<u64>();
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut h = session(vp, VIRT).await;
    let mut m = Model {
        blocks: vec![
            Block {
                cands: vec![0],
                durable: true
            };
            BLOCKS as usize
        ],
        next_version: 1,
        tally: Tally::default(),
    };

    // Phase 1: I/O with the array up.
    for i in 0..30 {
        assert!(
            m.wave(&mut h, &mut rng).await,
            "I/O failed with the array up"
        );
        if i % 10 == 9 {
            assert!(m.sync(&mut h).await);
        }
    }
    let before = (m.tally.good_writes, m.tally.good_reads);

    // Phase 2: kill -9 the array while waves are in flight, keep the host going through
    // the outage, restart the array on the same port and data directory.
    let killer = {
        let pid = array.0.id();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let ok = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .expect("kill")
                .success();
            assert!(ok, "kill -9 {pid}");
            Instant::now()
        })
    };
    let mut waves = 0u64;
    while !killer.is_finished() {
        m.wave(&mut h, &mut rng).await;
        waves += 1;
    }
    let killed_at = killer.await.unwrap();
    let _ = array.0.wait();
    eprintln!("array killed after {waves} waves of phase 2");
    while killed_at.elapsed() < OUTAGE {
        m.wave(&mut h, &mut rng).await;
        if rng.gen_bool(0.2) {
            m.sync(&mut h).await;
        }
    }
    array = NodeProcess::spawn(&array_cfg, Some(&array_log));
    wait_port(ap).await;
    eprintln!("array restarted");

    // Phase 3: the node reconnects by itself; I/O to the array's blocks succeeds again.
    // (A hang guard only: the reconnect backoff is at most 10 s.)
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut clean = 0;
    while clean < 5 {
        assert!(
            Instant::now() < deadline,
            "the node did not reconnect to the restarted array; node log:\n{}",
            std::fs::read_to_string(&virt_log).unwrap_or_default()
        );
        if m.wave(&mut h, &mut rng).await {
            clean += 1;
        } else {
            clean = 0;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(
        m.sync(&mut h).await,
        "SYNCHRONIZE CACHE after the reconnect"
    );
    assert!(
        virt.0.try_wait().unwrap().is_none(),
        "the virtualizing node exited"
    );

    // Every block: the last GOOD write or a failed write after it; durable data is there.
    let mut durable = 0u64;
    for lba in (0..BLOCKS).step_by(1000) {
        let n = 1000.min(BLOCKS - lba);
        let r = tokio::time::timeout(
            HANG_GUARD,
            h.scsi(
                0,
                &cdb16(0x88, lba, n as u32),
                &[],
                (n as usize * BS) as u32,
            ),
        )
        .await
        .expect("final read hangs");
        assert_eq!(r.status, 0, "final read of [{lba}, {}) failed", lba + n);
        m.check_read(lba, &r.data, "final read");
        for (i, got) in r.data.chunks(BS).enumerate() {
            let st = &m.blocks[lba as usize + i];
            if st.durable && st.cands.len() == 1 && st.cands[0] != 0 {
                assert_eq!(got, content(st.cands[0], lba + i as u64).as_slice());
                durable += 1;
            }
        }
    }
    let t = &m.tally;
    eprintln!(
        "writes {} good / {} failed, reads {} good / {} failed, syncs {} good / {} failed, \
         {durable} durable blocks verified, senses {:?}",
        t.good_writes,
        t.failed_writes,
        t.good_reads,
        t.failed_reads,
        t.syncs,
        t.failed_syncs,
        t.senses
    );
    assert!(
        t.failed_writes + t.failed_reads + t.failed_syncs > 0,
        "no host command failed while the array was down"
    );
    assert!(t.good_writes > before.0 && t.good_reads > before.1);
    assert!(durable > 0, "no durable block to verify");
    drop(array);
}
