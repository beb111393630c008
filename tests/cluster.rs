//! A cluster of switchyard processes serving one volume (over an array node's LU):
//! identical LU identity and port group answers through every node, writes through one
//! node found through another, persistent reservations enforced across nodes, leader
//! failover under I/O, a partitioned node, a peer with the wrong secret.

use std::time::{Duration, Instant};

use integration_tests::cluster_rig::*;
use integration_tests::host_load::pr_out;
use integration_tests::*;

const BS: usize = 512;

async fn session(rig: &ClusterRig, node: usize, initiator: &str, isid: u8) -> Initiator {
    let mut i = Initiator::connect(rig.nodes[node].portal_addr()).await;
    i.login(&LoginOpts {
        initiator: Some(initiator.into()),
        target: Some(CLUSTER_TARGET.into()),
        isid: Some([0x80, 0, 0, 0, 7, isid]),
        ..Default::default()
    })
    .await
    .expect("login");
    i.clear_ua(0).await;
    i
}

fn inquiry(evpd: bool, page: u8) -> [u8; 6] {
    [0x12, u8::from(evpd), page, 0x10, 0x00, 0]
}

/// RTPG (MAINTENANCE IN / REPORT TARGET PORT GROUPS), extended format.
fn rtpg() -> [u8; 12] {
    [0xa3, 0x0a | 0x20, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]
}

/// The designators of VPD page 0x83 whose association is the logical unit (the rest
/// name the target port, which differs per path by design).
fn lu_designators(page: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut off = 4;
    while off + 4 <= page.len() {
        let len = usize::from(page[off + 3]);
        let assoc = (page[off + 1] >> 4) & 3;
        if assoc == 0 {
            out.push(page[off..off + 4 + len].to_vec());
        }
        off += 4 + len;
    }
    out
}

/// PERSISTENT RESERVE IN READ KEYS: the registered keys.
async fn read_keys(i: &mut Initiator) -> Vec<u64> {
    let r = i
        .scsi(0, &[0x5e, 0, 0, 0, 0, 0, 0, 0x04, 0, 0], &[], 1024)
        .await;
    assert_eq!(r.status, 0, "READ KEYS");
    let n = u32::from_be_bytes(r.data[4..8].try_into().unwrap()) as usize;
    r.data[8..8 + n]
        .chunks(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_and_data_are_the_same_through_every_node() {
    let rig = ClusterRig::start(RigOpts {
        data_nodes: 2,
        witness: true,
        ..Default::default()
    })
    .await;
    let mut a = session(&rig, 0, "iqn.2026-11.org.test:h1", 1).await;
    let mut b = session(&rig, 1, "iqn.2026-11.org.test:h1", 2).await;

    // INQUIRY and the LU's VPD pages: byte-identical through both nodes.
    for (evpd, page) in [
        (false, 0),
        (true, 0x00),
        (true, 0x80),
        (true, 0xb0),
        (true, 0xb1),
    ] {
        let ra = a.scsi(0, &inquiry(evpd, page), &[], 4096).await;
        let rb = b.scsi(0, &inquiry(evpd, page), &[], 4096).await;
        assert_eq!(ra.status, 0, "INQUIRY evpd={evpd} page {page:#x}");
        assert_eq!(
            ra.data, rb.data,
            "INQUIRY evpd={evpd} page {page:#x} differs"
        );
    }
    let da = a.scsi(0, &inquiry(true, 0x83), &[], 4096).await.data;
    let db = b.scsi(0, &inquiry(true, 0x83), &[], 4096).await.data;
    assert!(!lu_designators(&da).is_empty());
    assert_eq!(lu_designators(&da), lu_designators(&db), "LU designators");
    assert_ne!(da, db, "the target port designators name different ports");
    // REPORT TARGET PORT GROUPS: the same answer through each path; a group per data
    // node (the witness serves no I/O), both active/optimized.
    let ga = a.scsi(0, &rtpg(), &[], 4096).await;
    let gb = b.scsi(0, &rtpg(), &[], 4096).await;
    assert_eq!(ga.status, 0, "RTPG");
    assert_eq!(ga.data, gb.data, "RTPG differs between nodes");
    let len = u32::from_be_bytes(ga.data[0..4].try_into().unwrap()) as usize;
    let mut groups = Vec::new();
    let mut off = 8;
    while off < 4 + len {
        let state = ga.data[off] & 0x0f;
        let id = u16::from_be_bytes([ga.data[off + 2], ga.data[off + 3]]);
        let ports = usize::from(ga.data[off + 7]);
        groups.push((id, state));
        off += 8 + 4 * ports;
    }
    assert_eq!(
        groups,
        vec![(1, 0), (2, 0)],
        "one active/optimized group per node"
    );

    // Writes through one node, reads through the other, interleaved, at queue depth.
    let per = 256u64;
    for round in 0..4u32 {
        let (w, r) = if round % 2 == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        let base = u64::from(round) * per;
        let writes: Vec<_> = (0..per)
            .map(|k| {
                let lba = base + k;
                (
                    0u16,
                    cdb10(0x2a, lba as u32, 1).to_vec(),
                    pattern(round, lba, BS),
                    0u32,
                )
            })
            .collect();
        for res in w.scsi_many(writes, 16).await {
            assert_eq!(res.status, 0, "write");
        }
        let reads: Vec<_> = (0..per)
            .map(|k| {
                (
                    0u16,
                    cdb10(0x28, (base + k) as u32, 1).to_vec(),
                    Vec::new(),
                    BS as u32,
                )
            })
            .collect();
        for (k, res) in r.scsi_many(reads, 16).await.into_iter().enumerate() {
            assert_eq!(res.status, 0, "read");
            assert_eq!(
                res.data,
                pattern(round, base + k as u64, BS),
                "block {} written through one node, read through the other",
                base + k as u64
            );
        }
    }
    // Both at once: A and B write disjoint halves concurrently, then each reads all.
    let half = 512u64;
    let wa: Vec<_> = (0..half)
        .map(|k| {
            (
                0u16,
                cdb10(0x2a, (2048 + k) as u32, 1).to_vec(),
                pattern(10, 2048 + k, BS),
                0u32,
            )
        })
        .collect();
    let wb: Vec<_> = (0..half)
        .map(|k| {
            let lba = 2048 + half + k;
            (
                0u16,
                cdb10(0x2a, lba as u32, 1).to_vec(),
                pattern(11, lba, BS),
                0u32,
            )
        })
        .collect();
    let (ra, rb) = tokio::join!(a.scsi_many(wa, 16), b.scsi_many(wb, 16));
    assert!(ra.iter().chain(rb.iter()).all(|r| r.status == 0));
    for who in [&mut a, &mut b] {
        let reads: Vec<_> = (0..2 * half)
            .map(|k| {
                (
                    0u16,
                    cdb10(0x28, (2048 + k) as u32, 1).to_vec(),
                    Vec::new(),
                    BS as u32,
                )
            })
            .collect();
        for (k, res) in who.scsi_many(reads, 32).await.into_iter().enumerate() {
            let lba = 2048 + k as u64;
            let writer = if (k as u64) < half { 10 } else { 11 };
            assert_eq!(res.data, pattern(writer, lba, BS), "block {lba}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_reservations_are_enforced_on_every_node() {
    let rig = ClusterRig::start(RigOpts::default()).await;
    let mut x = session(&rig, 0, "iqn.2026-11.org.test:x", 1).await;
    let mut y = session(&rig, 1, "iqn.2026-11.org.test:y", 2).await;
    // X registers and takes a WRITE EXCLUSIVE reservation through node 1 ...
    assert_eq!(pr_out(&mut x, 0x00, 0, 0, 0xaa).await.status, 0, "REGISTER");
    assert_eq!(pr_out(&mut x, 0x01, 1, 0xaa, 0).await.status, 0, "RESERVE");
    // ... which node 2 enforces as soon as the PR OUT has completed.
    let w = y.write10(0, 100, &pattern(1, 100, BS), BS).await;
    assert_eq!(w.status, 0x18, "WRITE through node 2 must conflict");
    assert_eq!(
        y.read10(0, 100, 1, BS).await.status,
        0,
        "READ is allowed (WE)"
    );
    assert_eq!(read_keys(&mut y).await, vec![0xaa]);
    assert_eq!(x.write10(0, 100, &pattern(1, 100, BS), BS).await.status, 0);
    // Y registers through node 2 and preempts X: X's next command through node 1 gets
    // REGISTRATIONS PREEMPTED, and X's writes now conflict.
    assert_eq!(
        pr_out(&mut y, 0x00, 0, 0, 0xbb).await.status,
        0,
        "REGISTER Y"
    );
    assert_eq!(
        pr_out(&mut y, 0x04, 1, 0xbb, 0xaa).await.status,
        0,
        "PREEMPT"
    );
    let r = x.scsi(0, &[0u8; 6], &[], 0).await;
    assert_eq!(r.status, 2, "unit attention expected on node 1");
    assert_eq!((r.sense_key(), r.asc()), (6, (0x2a, 0x05)));
    assert_eq!(
        x.write10(0, 100, &pattern(2, 100, BS), BS).await.status,
        0x18
    );
    assert_eq!(y.write10(0, 100, &pattern(3, 100, BS), BS).await.status, 0);
    assert_eq!(read_keys(&mut x).await, vec![0xbb]);
    // Clean up through node 1 is refused (X is no longer registered); through node 2
    // CLEAR releases everything for everybody.
    assert_eq!(pr_out(&mut y, 0x03, 0, 0xbb, 0).await.status, 0, "CLEAR");
    x.clear_ua(0).await;
    assert_eq!(x.write10(0, 100, &pattern(4, 100, BS), BS).await.status, 0);
    // Fencing as fence_scsi does it: X holds WRITE EXCLUSIVE through node 1 and is
    // writing; Y, through node 2, PREEMPTs AND ABORTs X's key. The change carries the
    // abort to node 1, which drains its writes before it counts as settled (the
    // waiting itself is unit-tested in `scsi` and in `clustered.rs`); here: it
    // completes, and X is fenced on node 1.
    assert_eq!(
        pr_out(&mut x, 0x00, 0, 0, 0xcc).await.status,
        0,
        "REGISTER X"
    );
    assert_eq!(
        pr_out(&mut x, 0x01, 1, 0xcc, 0).await.status,
        0,
        "RESERVE X"
    );
    y.clear_ua(0).await;
    assert_eq!(
        pr_out(&mut y, 0x00, 0, 0, 0xdd).await.status,
        0,
        "REGISTER Y"
    );
    assert_eq!(x.write10(0, 100, &pattern(5, 100, BS), BS).await.status, 0);
    assert_eq!(
        pr_out(&mut y, 0x05, 1, 0xdd, 0xcc).await.status,
        0,
        "PREEMPT AND ABORT"
    );
    let r = x.scsi(0, &[0u8; 6], &[], 0).await;
    assert_eq!((r.status, r.sense_key(), r.asc()), (2, 6, (0x2a, 0x05)));
    assert_eq!(
        x.write10(0, 100, &pattern(6, 100, BS), BS).await.status,
        0x18,
        "X is fenced on node 1"
    );
    assert_eq!(y.write10(0, 100, &pattern(7, 100, BS), BS).await.status, 0);
    assert_eq!(read_keys(&mut x).await, vec![0xdd]);
    assert_eq!(pr_out(&mut y, 0x03, 0, 0xdd, 0).await.status, 0, "CLEAR");
}

/// Writes and reads patterns through member `node` until `stop`; returns (verified
/// I/Os, retried NOT READY answers). Any wrong data or other error panics.
async fn steady_io(
    rig: &ClusterRig,
    node: usize,
    stop: tokio_util::sync::CancellationToken,
) -> (u64, u64) {
    let mut i = session(rig, node, "iqn.2026-11.org.test:steady", 9).await;
    let (mut ios, mut retries) = (0u64, 0u64);
    let mut round = 0u32;
    while !stop.is_cancelled() {
        round += 1;
        for k in 0..32u64 {
            let lba = 4096 + k;
            let data = pattern(round, lba, BS);
            loop {
                let r = i.write10(0, lba as u32, &data, BS).await;
                if r.status == 2 && r.sense_key() == 2 {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                if r.status == 2 && r.sense_key() == 6 {
                    continue;
                }
                assert_eq!(r.status, 0, "write through {node}: {r:?}");
                break;
            }
            let r = loop {
                let r = i.read10(0, lba as u32, 1, BS).await;
                if r.status == 2 && matches!(r.sense_key(), 2 | 6) {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                break r;
            };
            assert_eq!(r.status, 0, "read through {node}");
            assert_eq!(r.data, data, "block {lba} round {round}");
            ios += 2;
        }
    }
    (ios, retries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_dies_a_new_one_leads_and_the_old_one_catches_up() {
    let mut rig = ClusterRig::start(RigOpts {
        data_nodes: 3,
        ..Default::default()
    })
    .await;
    let (leader, t) = rig.wait_leader(&[0, 1, 2], Duration::from_secs(10)).await;
    eprintln!("initial leader {leader} (agreed after {t:?})");
    let li = rig.nodes.iter().position(|n| n.name == leader).unwrap();
    let others: Vec<usize> = (0..3).filter(|&i| i != li).collect();
    let leader_proc = rig.nodes[li].proc.take().unwrap();
    // Host I/O through a surviving node while the leader dies.
    let stop = tokio_util::sync::CancellationToken::new();
    let io = {
        let rig = &rig;
        let stop = stop.clone();
        let io_node = others[0];
        async move { steady_io(rig, io_node, stop).await }
    };
    let kill_and_elect = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let killed_at = Instant::now();
        leader_proc.kill();
        let new_leader = loop {
            let (l, _) = rig.wait_leader(&others, Duration::from_secs(15)).await;
            if l != leader {
                break l;
            }
            assert!(
                killed_at.elapsed() < Duration::from_secs(15),
                "no new leader"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let elected = killed_at.elapsed();
        // Admin requests work again, through either survivor.
        let st = rig
            .post(
                others[1],
                &format!("/api/v1/nodes/{}/state", rig.nodes[others[0]].name),
                serde_json::json!({"alua": "active-non-optimized"}),
            )
            .await;
        assert_eq!(st.ok(), Some(200), "admin request after failover");
        tokio::time::sleep(Duration::from_millis(700)).await;
        stop.cancel();
        (new_leader, elected)
    };
    let ((ios, retries), (new_leader, elected)) = tokio::join!(io, kill_and_elect);
    eprintln!(
        "leader {leader} killed: {new_leader} elected and seen by both survivors after {elected:?}; \
         {ios} verified I/Os through {} meanwhile, {retries} NOT READY retries",
        rig.nodes[others[0]].name
    );
    assert!(ios > 0);
    // The dead leader comes back and catches up: it serves, sees the new leader and
    // the ALUA change made while it was down.
    rig.restart(li).await;
    rig.wait_leader(&[0, 1, 2], Duration::from_secs(10)).await;
    let mut caught_up = false;
    for _ in 0..100 {
        let m = rig.members_seen_by(li).await;
        let changed = m.iter().find(|n| n.name == rig.nodes[others[0]].name);
        if changed.and_then(|n| n.alua.as_deref()) == Some("active-non-optimized") {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(caught_up, "the restarted node did not catch up");
    let mut s = session(&rig, li, "iqn.2026-11.org.test:back", 3).await;
    let r = s.scsi(0, &rtpg(), &[], 4096).await;
    assert_eq!(r.status, 0);
    // Group of others[0] (id = index + 1) is active/non-optimized through the old leader.
    let want = (others[0] + 1) as u16;
    let mut off = 8;
    let mut found = None;
    while off + 8 <= r.data.len() {
        let id = u16::from_be_bytes([r.data[off + 2], r.data[off + 3]]);
        if id == want {
            found = Some(r.data[off] & 0x0f);
        }
        off += 8 + 4 * usize::from(r.data[off + 7]);
    }
    assert_eq!(found, Some(1), "ALUA state through the restarted node");
    let r = s.read10(0, 4096, 1, BS).await;
    assert_eq!(r.status, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_stops_serving_and_cannot_lead_changes() {
    let rig = ClusterRig::start(RigOpts {
        data_nodes: 3,
        ..Default::default()
    })
    .await;
    rig.wait_leader(&[0, 1, 2], Duration::from_secs(10)).await;
    let mut c = session(&rig, 2, "iqn.2026-11.org.test:c", 1).await;
    let mut a = session(&rig, 0, "iqn.2026-11.org.test:a", 2).await;
    assert_eq!(c.write10(0, 10, &pattern(1, 10, BS), BS).await.status, 0);
    // Cut node 3 off the management network.
    assert_eq!(
        rig.post(2, "/api/v1/faults", serde_json::json!({"isolate": true}))
            .await
            .ok(),
        Some(200)
    );
    let cut = Instant::now();
    // Within its lease (1.8 s) plus a margin it stops serving: commands through it
    // get NOT READY, ASYMMETRIC ACCESS STATE TRANSITION, so hosts use other paths.
    let mut stopped = None;
    while cut.elapsed() < Duration::from_secs(5) {
        let r = c.read10(0, 10, 1, BS).await;
        if r.status == 2 && r.sense_key() == 2 && r.asc() == (0x04, 0x0a) {
            stopped = Some(cut.elapsed());
            break;
        }
        if r.status == 2 && r.sense_key() == 6 {
            continue;
        }
        assert_eq!(r.status, 0, "{r:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let stopped = stopped.expect("the partitioned node kept serving I/O");
    eprintln!("partitioned node stopped serving {stopped:?} after the cut");
    let w = c.write10(0, 10, &pattern(2, 10, BS), BS).await;
    assert_eq!((w.status, w.sense_key()), (2, 2), "writes refused too");
    // The minority cannot change anything.
    let e = rig
        .post(
            2,
            "/api/v1/nodes/n1/state",
            serde_json::json!({"alua": "standby"}),
        )
        .await
        .expect_err("the minority committed a change");
    assert_eq!(e.status(), Some(503), "{e}");
    // The majority goes on: I/O and changes.
    a.clear_ua(0).await;
    assert_eq!(a.write10(0, 11, &pattern(3, 11, BS), BS).await.status, 0);
    assert_eq!(
        rig.post(
            0,
            "/api/v1/nodes/n2/state",
            serde_json::json!({"alua": "active-non-optimized"}),
        )
        .await
        .ok(),
        Some(200)
    );
    // Heal: node 3 catches up and serves again; the write made through the majority
    // is there.
    rig.post(2, "/api/v1/faults", serde_json::json!({"isolate": false}))
        .await
        .unwrap();
    let healed = Instant::now();
    loop {
        let r = c.read10(0, 11, 1, BS).await;
        if r.status == 0 {
            assert_eq!(r.data, pattern(3, 11, BS));
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(10),
            "node 3 did not come back: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let m = rig.members_seen_by(2).await;
    assert_eq!(
        m.iter()
            .find(|n| n.name == "n2")
            .and_then(|n| n.alua.as_deref()),
        Some("active-non-optimized"),
        "node 3 caught up with the change made while it was cut off"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_the_wrong_secret_cannot_join() {
    let rig = ClusterRig::start(RigOpts::default()).await;
    // A third node with another secret tries to join through node 1.
    let dir = tempfile::tempdir().unwrap();
    let (portal, raft) = (free_port(), free_port());
    let cfg = dir.path().join("intruder.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nname = \"intruder\"\ndata_dir = \"{d}\"\n[[portal]]\nlisten = \"127.0.0.1:{portal}\"\n\
             [cluster]\nid = 7\nname = \"intruder\"\nlisten = \"127.0.0.1:{raft}\"\n\
             join = \"127.0.0.1:{seed}\"\nsecret = \"not-the-cluster-secret-at-all\"\ndata_dir = \"raft\"\n",
            d = dir.path().display(),
            seed = rig.nodes[0].raft,
        ),
    )
    .unwrap();
    let log = dir.path().join("intruder.log");
    let _intruder = NodeProcess::spawn(&cfg, Some(&log));
    tokio::time::sleep(Duration::from_secs(3)).await;
    // It never gets in: not a member, never serves.
    let members = rig.members_seen_by(0).await;
    assert!(
        members.iter().all(|m| m.id != Some(7)),
        "the intruder became a member: {members:?}"
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", portal))
            .await
            .is_err(),
        "a node that cannot join must not serve"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("401") || text.to_lowercase().contains("unauthorized"),
        "the intruder's log should say it was refused:\n{text}"
    );
    // The cluster is unaffected.
    let r = rig
        .post(
            1,
            "/api/v1/nodes/n1/state",
            serde_json::json!({"alua": "standby"}),
        )
        .await;
    assert_eq!(r.as_ref().ok(), Some(&200), "{r:?}");
}

async fn wait_members(rig: &ClusterRig, i: usize, ok: impl Fn(&[mgmt::model::NodeView]) -> bool) {
    let mut m = Vec::new();
    for _ in 0..100 {
        m = rig.members_seen_by(i).await;
        if ok(&m) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("members as node {i} sees them: {m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_online_serves_the_same_volume_and_is_removed() {
    let mut rig = ClusterRig::start(RigOpts::default()).await;
    let mut a = session(&rig, 0, "iqn.2026-11.org.test:j", 1).await;
    assert_eq!(a.write10(0, 42, &pattern(5, 42, BS), BS).await.status, 0);
    // A third member joins through node 1 while the cluster serves I/O.
    let k = rig.add_member().await;
    let mut c = session(&rig, k, "iqn.2026-11.org.test:j", 2).await;
    let r = c.read10(0, 42, 1, BS).await;
    assert_eq!(r.status, 0);
    assert_eq!(
        r.data,
        pattern(5, 42, BS),
        "the new member serves the same volume"
    );
    let da = a.scsi(0, &inquiry(true, 0x83), &[], 4096).await.data;
    let dc = c.scsi(0, &inquiry(true, 0x83), &[], 4096).await.data;
    assert_eq!(lu_designators(&da), lu_designators(&dc));
    // (the member list is the leader's view, refreshed every second)
    wait_members(&rig, 0, |m| {
        m.iter().any(|m| m.name == "n3" && m.state == "up")
    })
    .await;
    // RTPG now has three groups, the same through the old and the new member.
    let ga = a.scsi(0, &rtpg(), &[], 4096).await;
    let ga = if ga.status == 2 {
        a.scsi(0, &rtpg(), &[], 4096).await
    } else {
        ga
    };
    let gc = c.scsi(0, &rtpg(), &[], 4096).await;
    assert_eq!(ga.data, gc.data);
    drop(c);
    // Stop it and remove it; the cluster goes on with two.
    rig.kill(k);
    let r = rig
        .post(1, "/api/v1/nodes/n3", serde_json::json!(null))
        .await;
    assert!(r.is_err(), "POST is not the remove verb");
    let c = rig.nodes[1].client();
    let status = tokio::task::spawn_blocking(move || c.delete("/api/v1/nodes/n3"))
        .await
        .unwrap();
    assert_eq!(status.ok(), Some(204));
    wait_members(&rig, 0, |m| m.iter().all(|m| m.name != "n3")).await;
    assert_eq!(
        rig.post(
            0,
            "/api/v1/nodes/n2/state",
            serde_json::json!({"alua": "standby"})
        )
        .await
        .ok(),
        Some(200),
        "changes still commit"
    );
}
