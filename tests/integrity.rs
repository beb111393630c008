//! Data integrity: patterns written through iSCSI at queue depth 16 from several
//! sessions, then the node is restarted and everything is read back.

use std::path::Path;
use std::time::Duration;

use integration_tests::*;

const BS: usize = 512;
const SESSIONS: u32 = 4;
/// Blocks each session writes (as 8-block commands).
const BLOCKS_PER_SESSION: u64 = 2048;
const PER_CMD: u64 = 8;
const TARGET_NAME: &str = "iqn.2026-11.org.switchyard:integrity";

fn start_node(dir: &Path, port: u16) -> NodeProcess {
    let cfg = dir.join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nname = \"integrity\"\ndata_dir = \"{}\"\n\
             [[portal]]\nlisten = \"127.0.0.1:{port}\"\n\
             [[target]]\nname = \"{TARGET_NAME}\"\n\
             [[target.lun]]\nlun = 0\npath = \"lun0.img\"\nsize = \"64MiB\"\n",
            dir.display()
        ),
    )
    .unwrap();
    NodeProcess::spawn(&cfg, None)
}

async fn session(port: u16, n: u32) -> Initiator {
    let mut i = Initiator::connect(format!("127.0.0.1:{port}").parse().unwrap()).await;
    i.login(&LoginOpts {
        target: Some(TARGET_NAME.into()),
        isid: Some([0x80, 0, 0, 0, 1, n as u8]),
        ..Default::default()
    })
    .await
    .expect("login");
    i.clear_ua(0).await;
    i
}

fn region(n: u32) -> u64 {
    u64::from(n) * BLOCKS_PER_SESSION
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_survive_node_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let node = start_node(dir.path(), port);
    wait_port(port).await;

    // Several sessions write their own region concurrently, 16 commands in flight each;
    // every fourth command is FUA (WRITE 16 with FUA), the rest plain WRITE 10.
    let mut tasks = Vec::new();
    for n in 0..SESSIONS {
        tasks.push(tokio::spawn(async move {
            let mut i = session(port, n).await;
            let mut cmds = Vec::new();
            for c in 0..BLOCKS_PER_SESSION / PER_CMD {
                let lba = region(n) + c * PER_CMD;
                let mut data = Vec::new();
                for b in 0..PER_CMD {
                    data.extend(pattern(n, lba + b, BS));
                }
                let cdb = if c % 4 == 0 {
                    let mut x = cdb16(0x8a, lba, PER_CMD as u32).to_vec();
                    x[1] |= 0x08; // FUA
                    x
                } else {
                    cdb10(0x2a, lba as u32, PER_CMD as u16).to_vec()
                };
                cmds.push((0u16, cdb, data, 0u32));
            }
            let res = i.scsi_many(cmds, 16).await;
            assert!(res.iter().all(|r| r.status == 0), "a write failed");
            // SYNCHRONIZE CACHE(10) of the whole LU.
            let r = i.scsi(0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0).await;
            assert_eq!(r.status, 0);
            let _ = i.logout().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    node.stop();

    // Restart on the same file and read everything back through new sessions.
    let node = start_node(dir.path(), port);
    wait_port(port).await;
    for n in 0..SESSIONS {
        let mut i = session(port, n + 10).await;
        let cmds: Vec<_> = (0..BLOCKS_PER_SESSION / 64)
            .map(|c| {
                let lba = region(n) + c * 64;
                (
                    0u16,
                    cdb10(0x28, lba as u32, 64).to_vec(),
                    vec![],
                    64 * BS as u32,
                )
            })
            .collect();
        let res = i.scsi_many(cmds, 16).await;
        for (c, r) in res.iter().enumerate() {
            assert_eq!(r.status, 0);
            for b in 0..64u64 {
                let lba = region(n) + c as u64 * 64 + b;
                let got = &r.data[b as usize * BS..(b as usize + 1) * BS];
                assert!(
                    got == pattern(n, lba, BS).as_slice(),
                    "session {n}: block {lba} differs after restart"
                );
            }
        }
    }
    node.stop();
}

#[tokio::test]
async fn large_writes_through_r2t_and_reads_across_pdus() {
    // 1 MiB writes need immediate data, unsolicited Data-Out and several R2Ts; reads
    // come back in many Data-In PDUs. Checked against the store directly.
    let t = TestTarget::start(TargetSpec::default()).await;
    let mut a = Initiator::login_to(t.addr).await;
    a.clear_ua(0).await;
    let mut data = Vec::new();
    for b in 0..2048u64 {
        data.extend(pattern(3, b, BS));
    }
    let r = a.scsi(0, &cdb10(0x2a, 100, 2048), &data, 0).await;
    assert_eq!(r.status, 0);
    let mut direct = vec![0u8; data.len()];
    t.stores[0].read(100, &mut direct).unwrap();
    assert!(
        direct == data,
        "store content differs from what was written"
    );
    let r = a.read10(0, 100, 2048, BS).await;
    assert!(r.data == data, "read back differs");
    t.stop().await;
}

/// kill -9 in the middle of a write load: every write acknowledged with FUA, and every
/// write acknowledged before a SYNCHRONIZE CACHE that returned GOOD, is there after
/// the restart (the node keeps no write-back cache of its own) — unless a later write to
/// the same blocks was sent before the kill: an unacknowledged write may or may not have
/// been applied (SAM-5), so the blocks hold the last durable write or one sent after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_fua_and_synced_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let node = start_node(dir.path(), port);
    wait_port(port).await;
    let acked = std::sync::Arc::new(acked::Acked::default());
    let mut tasks = Vec::new();
    for n in 0..2u32 {
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = session(port, 20 + n).await;
            let mut round = 0u64;
            // Write rounds until the node dies under us.
            loop {
                let base = region(n) + (round % (BLOCKS_PER_SESSION / PER_CMD)) * PER_CMD;
                let mut data = Vec::new();
                for b in 0..PER_CMD {
                    data.extend(pattern(n + 100 * round as u32, base + b, BS));
                }
                let fua = round.is_multiple_of(2);
                acked.attempt(base, n + 100 * round as u32);
                let mut cdb = cdb16(0x8a, base, PER_CMD as u32).to_vec();
                if fua {
                    cdb[1] |= 0x08;
                }
                let Some(r) = try_scsi(&mut i, &cdb, &data).await else {
                    return;
                };
                if r.status != 0 {
                    return;
                }
                if fua {
                    acked.push(base, n + 100 * round as u32);
                } else {
                    let sync = [0x35u8, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                    match try_scsi(&mut i, &sync, &[]).await {
                        Some(s) if s.status == 0 => acked.push(base, n + 100 * round as u32),
                        _ => return,
                    }
                }
                round += 1;
            }
        }));
    }
    // Let the load run, then kill the node without warning.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.kill();
    for t in tasks {
        t.await.unwrap();
    }
    let (attempts, acked) = acked.take();
    assert!(
        acked.len() > 10,
        "the load ran ({} acknowledged writes)",
        acked.len()
    );

    let node = start_node(dir.path(), port);
    wait_port(port).await;
    let mut i = session(port, 40).await;
    // Per run of blocks: the last durable write, and every write sent after it.
    let mut last = std::collections::HashMap::new();
    for (base, writer) in &acked {
        last.insert(*base, *writer);
    }
    let (runs, mut blocks) = (last.len(), 0u64);
    for (base, writer) in last {
        let later: Vec<u32> = attempts
            .iter()
            .filter(|(b, w)| *b == base && *w > writer && w % 100 == writer % 100)
            .map(|(_, w)| *w)
            .collect();
        let r = i.read10(0, base as u32, PER_CMD as u16, BS).await;
        assert_eq!(r.status, 0);
        for b in 0..PER_CMD {
            let got = &r.data[b as usize * BS..(b as usize + 1) * BS];
            let ok = std::iter::once(writer)
                .chain(later.iter().copied())
                .any(|w| got == pattern(w, base + b, BS).as_slice());
            assert!(
                ok,
                "acknowledged write at block {} lost after kill -9",
                base + b
            );
            blocks += 1;
        }
    }
    eprintln!(
        "crash safety: {} writes sent, {} acknowledged (FUA or followed by SYNCHRONIZE CACHE) \
         before kill -9; after the restart the last acknowledged version of all {runs} runs \
         ({blocks} blocks) is there",
        attempts.len(),
        acked.len()
    );
    node.stop();
}

/// Run one command; `None` when the connection died (the node was killed).
async fn try_scsi(i: &mut Initiator, cdb: &[u8], data: &[u8]) -> Option<ScsiResult> {
    let cmd = i.command(0, cdb, data, 0);
    let itt = cmd.itt;
    i.send(&iscsi_wire::pdu::Request::ScsiCommand(cmd)).await;
    loop {
        match i.recv().await? {
            iscsi_wire::pdu::Response::ScsiResponse(s) if s.itt == itt => {
                return Some(ScsiResult {
                    status: s.status,
                    sense: s.sense,
                    ..Default::default()
                })
            }
            iscsi_wire::pdu::Response::R2T(_) => {
                // Writes here fit in immediate + unsolicited data (4 KiB).
                return None;
            }
            _ => {}
        }
    }
}

mod acked {
    /// (first block, writer id) of each write.
    pub type Writes = Vec<(u64, u32)>;

    /// Writes sent, and writes acknowledged durable.
    #[derive(Default)]
    pub struct Acked(std::sync::Mutex<(Writes, Writes)>);
    impl Acked {
        pub fn attempt(&self, base: u64, writer: u32) {
            self.0.lock().unwrap().0.push((base, writer));
        }
        pub fn push(&self, base: u64, writer: u32) {
            self.0.lock().unwrap().1.push((base, writer));
        }
        /// (attempted, acknowledged)
        pub fn take(&self) -> (Writes, Writes) {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }
}
