//! Security audit, rule 5: zoning and LUN masking hold for commands that name other
//! logical units, end to end over iSCSI. One server, two targets:
//!
//! - target A (`TARGET`): LUN 0 = LU `a`, LUN 1 = LU `b`; the host sees LUN 0 only;
//! - target B: LUN 0 = LU `c`; only the other host may log in to it.
//!
//! EXTENDED COPY (CVE-2020-28374): the host may copy within `a`, but a copy that names
//! `b` (masked) or `c` (another target's LU) as source or destination is COPY ABORTED,
//! COPY TARGET DEVICE NOT REACHABLE, and no data moves. PERSISTENT RESERVE OUT
//! REGISTER AND MOVE to an initiator port the ACL does not admit, or to a relative
//! target port that does not exist, is INVALID FIELD IN PARAMETER LIST; a move to an
//! admitted initiator port on an existing port works.

use std::sync::Arc;

use blockdev::{BlockStore, MemStore};
use fcwwn::{AccessRule, InitiatorId, LunSet, Masking};
use integration_tests::*;
use iscsi::{FabricConfig, LunDef, PortalDef, Server, TargetDef};
use scsi::xcopy_builder::{BlockSegment, CopyTarget, ExtendedCopyList, ListIdUsage};
use scsi::{LogicalUnit, LuConfig, TargetInfo};
use tokio_util::sync::CancellationToken;

const TARGET_B: &str = "iqn.2026-11.org.switchyard:other-target";
const HOST: &str = INITIATOR;
const OTHER_HOST: &str = "iqn.2026-11.org.switchyard:other-host";
const BS: usize = 512;

struct Rig {
    addr: std::net::SocketAddr,
    /// LUs a, b (target A) and c (target B).
    lus: Vec<Arc<LogicalUnit>>,
    stores: Vec<Arc<MemStore>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn lu(n: u8) -> (Arc<LogicalUnit>, Arc<MemStore>) {
    let store = Arc::new(MemStore::new(BS as u32, 2048));
    let mut wwn = [0u8; 16];
    wwn[0] = 0x60;
    wwn[14] = 0xAC;
    wwn[15] = n;
    let cfg = LuConfig {
        wwn,
        naa_len: 16,
        serial: format!("ACL{n}"),
        product: "ACLTEST".into(),
        ..LuConfig::default()
    };
    (Arc::new(LogicalUnit::new(cfg, store.clone())), store)
}

fn target(name: &str, luns: &[&Arc<LogicalUnit>], masking: &Arc<Masking>) -> TargetDef {
    TargetDef {
        name: name.into(),
        alias: None,
        luns: luns
            .iter()
            .enumerate()
            .map(|(i, l)| LunDef {
                lun: i as u16,
                lu: (*l).clone(),
            })
            .collect(),
        masking: masking.clone(),
        chap: None,
        info: Arc::new(TargetInfo {
            name: name.into(),
            port_name: format!("{name},t,0x0001"),
        }),
    }
}

async fn start() -> Rig {
    let (a, sa) = lu(1);
    let (b, sb) = lu(2);
    let (c, sc) = lu(3);
    let host = InitiatorId::parse(HOST).unwrap();
    let other = InitiatorId::parse(OTHER_HOST).unwrap();
    let masking = Arc::new(
        Masking::new(
            vec![],
            vec![
                AccessRule::initiator(TARGET, host, LunSet::only([0])),
                AccessRule::initiator(TARGET_B, other, LunSet::All),
            ],
        )
        .unwrap(),
    );
    let server = Server::new(
        FabricConfig::default(),
        vec![
            target(TARGET, &[&a, &b], &masking),
            target(TARGET_B, &[&c], &masking),
        ],
        vec![PortalDef {
            addr: "127.0.0.1:0".parse().unwrap(),
            tpgt: 1,
            relative_port: 0,
        }],
    );
    let listeners = server.bind().await.unwrap();
    let addr = listeners[0].local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let sd = shutdown.clone();
    let task = tokio::spawn(async move { server.run(listeners, sd).await });
    Rig {
        addr,
        lus: vec![a, b, c],
        stores: vec![sa, sb, sc],
        shutdown,
        task,
    }
}

impl Rig {
    async fn session(&self, initiator: &str, target: &str, isid: u8) -> Initiator {
        let mut i = Initiator::connect(self.addr).await;
        i.login(&LoginOpts {
            initiator: Some(initiator.into()),
            target: Some(target.into()),
            isid: Some([0x80, 0, 0, 0, 0, isid]),
            ..Default::default()
        })
        .await
        .expect("login");
        i.clear_ua(0).await;
        i
    }

    fn fill(&self, lu: usize, byte: u8) -> Vec<u8> {
        let data = vec![byte; 8 * BS];
        self.stores[lu].write(0, &data, false).unwrap();
        data
    }

    fn read(&self, lu: usize) -> Vec<u8> {
        let mut buf = vec![0u8; 8 * BS];
        self.stores[lu].read(0, &mut buf).unwrap();
        buf
    }

    fn copy_target(&self, lu: usize) -> CopyTarget {
        CopyTarget {
            naa: self.lus[lu].config().naa_bytes().to_vec(),
            block_size: BS as u32,
        }
    }

    /// EXTENDED COPY of 8 blocks at LBA 0 from `src` to `dst` (indexes into `lus`),
    /// sent on LUN 0 of the session.
    async fn xcopy(
        &self,
        i: &mut Initiator,
        id: u8,
        src: usize,
        dst: usize,
        lba: u64,
    ) -> ScsiResult {
        let list = ExtendedCopyList {
            list_id: id,
            usage: ListIdUsage::Hold,
            priority: 0,
            targets: vec![self.copy_target(src), self.copy_target(dst)],
            segments: vec![BlockSegment {
                src: 0,
                dst: 1,
                blocks: 8,
                src_lba: 0,
                dst_lba: lba,
                dc: false,
            }],
        };
        let data = list.to_bytes().unwrap();
        i.scsi(0, &list.cdb(), &data, 0).await
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.task).await;
    }
}

fn assert_unreachable(r: &ScsiResult, what: &str) {
    assert_eq!(r.status, 2, "{what}: CHECK CONDITION");
    assert_eq!(r.sense_key(), 0x0A, "{what}: COPY ABORTED");
    assert_eq!(
        r.asc(),
        (0x0D, 0x02),
        "{what}: COPY TARGET DEVICE NOT REACHABLE"
    );
}

#[tokio::test]
async fn extended_copy_cannot_reach_masked_lus_or_other_targets_lus() {
    let rig = start().await;
    let mut host = rig.session(HOST, TARGET, 1).await;
    let (a, b, c) = (0usize, 1usize, 2usize);
    let in_a = rig.fill(a, 0xA1);
    let in_b = rig.fill(b, 0xB2);
    let in_c = rig.fill(c, 0xC3);

    // Positive control: a copy within a, the LU the host sees, works (LBA 0 → 64).
    let r = rig.xcopy(&mut host, 1, a, a, 64).await;
    assert_eq!(r.status, 0, "copy within a visible LU: {:?}", r.sense);
    let mut moved = vec![0u8; 8 * BS];
    rig.stores[a].read(64, &mut moved).unwrap();
    assert_eq!(moved, in_a);

    // Another target's LU, as source (read it into a) and as destination (overwrite it).
    assert_unreachable(&rig.xcopy(&mut host, 2, c, a, 0).await, "c → a");
    assert_unreachable(&rig.xcopy(&mut host, 3, a, c, 0).await, "a → c");
    // A LUN of the host's own target that masking hides from it.
    assert_unreachable(&rig.xcopy(&mut host, 4, b, a, 0).await, "b → a");
    assert_unreachable(&rig.xcopy(&mut host, 5, a, b, 0).await, "a → b");
    assert_eq!(rig.read(a), in_a, "nothing was read into a");
    assert_eq!(rig.read(b), in_b, "b unchanged");
    assert_eq!(rig.read(c), in_c, "c unchanged");

    // The other host, logged in to target B, cannot reach target A's LUs either.
    let mut other = rig.session(OTHER_HOST, TARGET_B, 2).await;
    assert_unreachable(&rig.xcopy(&mut other, 6, c, a, 0).await, "B: c → a");
    assert_unreachable(&rig.xcopy(&mut other, 7, a, c, 0).await, "B: a → c");
    assert_eq!(rig.read(a), in_a);
    assert_eq!(rig.read(c), in_c);
    // And it may log in only to target B; the host only to A.
    let mut i = Initiator::connect(rig.addr).await;
    let refused = i
        .login(&LoginOpts {
            initiator: Some(OTHER_HOST.into()),
            target: Some(TARGET.into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!((refused.class, refused.detail), (2, 2));
    let mut i = Initiator::connect(rig.addr).await;
    let refused = i
        .login(&LoginOpts {
            target: Some(TARGET_B.into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!((refused.class, refused.detail), (2, 2));
    rig.stop().await;
}

/// PERSISTENT RESERVE OUT CDB (5Fh) with a 24-byte-or-longer parameter list.
fn prout(action: u8, pr_type: u8, len: usize) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x5F;
    c[1] = action;
    c[2] = pr_type;
    c[5..9].copy_from_slice(&(len as u32).to_be_bytes());
    c
}

fn basic_params(key: u64, sa_key: u64) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p
}

/// REGISTER AND MOVE parameters naming the iSCSI initiator port `port` (TransportID
/// format 01h) at `relative_port`.
fn move_params(key: u64, sa_key: u64, relative_port: u16, port: &str) -> Vec<u8> {
    let mut name = port.as_bytes().to_vec();
    name.push(0);
    while !name.len().is_multiple_of(4) || name.len() < 20 {
        name.push(0);
    }
    let mut tid = vec![0x45, 0];
    tid.extend_from_slice(&(name.len() as u16).to_be_bytes());
    tid.extend_from_slice(&name);
    let mut p = basic_params(key, sa_key);
    p[18..20].copy_from_slice(&relative_port.to_be_bytes());
    p[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    p.extend_from_slice(&tid);
    p
}

#[tokio::test]
async fn register_and_move_only_to_admitted_initiators_and_existing_ports() {
    let rig = start().await;
    let mut host = rig.session(HOST, TARGET, 1).await;
    let r = host
        .scsi(0, &prout(0, 0, 24), &basic_params(0, 0x11), 0)
        .await;
    assert_eq!(r.status, 0, "REGISTER");
    let r = host
        .scsi(0, &prout(1, 1, 24), &basic_params(0x11, 0), 0)
        .await;
    assert_eq!(r.status, 0, "RESERVE, Write Exclusive");
    let other = format!("{OTHER_HOST},i,0x800000000002");
    let own_other_isid = format!("{HOST},i,0x800000000009");
    let cases = [
        // An initiator port the zoning does not admit to target A at all.
        (
            "stranger",
            1u16,
            "iqn.2026-11.org.example:stranger,i,0x800000000001",
        ),
        // The other host exists, but is admitted to target B only.
        ("other host", 1, other.as_str()),
        // A relative target port this target does not have (it has port 1 only).
        ("port 77", 77, own_other_isid.as_str()),
    ];
    let mut moved = Vec::new();
    for (case, port, to) in cases {
        let p = move_params(0x11, 0x22, port, to);
        let r = host.scsi(0, &prout(7, 1, p.len()), &p, 0).await;
        if r.status == 0 {
            moved.push(case);
            // Take the reservation back: PREEMPT the moved-to registration (key 0x22).
            let r = host
                .scsi(0, &prout(4, 1, 24), &basic_params(0x11, 0x22), 0)
                .await;
            assert_eq!(r.status, 0, "PREEMPT back");
        } else {
            assert_eq!(r.sense_key(), 0x05, "{case}: ILLEGAL REQUEST");
        }
    }
    // The admitted host's other initiator port, on the target's port 1: moved.
    let p = move_params(0x11, 0x22, 1, &own_other_isid);
    let r = host.scsi(0, &prout(7, 1, p.len()), &p, 0).await;
    rig.stop().await;
    assert_eq!(r.status, 0, "a move to an admitted port was refused: {r:?}");
    assert!(
        moved.is_empty(),
        "reservation moved, must be refused: {moved:?}"
    );
}
