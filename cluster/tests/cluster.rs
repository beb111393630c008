//! In-process cluster tests: several nodes on 127.0.0.1 ephemeral ports, each with its
//! own temporary data directory, talking over the real (signed HTTP) management network.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use cluster::{
    AluaAccess, Cluster, ClusterConfig, ClusterError, ClusterNode, Command, Event, Health,
    NodeInfo, Outcome, Phase, Role,
};
use volume::{Extent, HolePolicy, MappingTable, VolumeDef};

const SECRET: &str = "test-cluster-secret-0123456789";

fn cfg(id: u64, dir: &Path, listen: &str) -> ClusterConfig {
    let mut c = ClusterConfig::new(
        id,
        &format!("n{id}"),
        listen,
        SECRET,
        dir.join(format!("n{id}")),
    );
    c.heartbeat_ms = 50;
    c.election_timeout_ms = 250;
    c.propose_timeout_ms = 3000;
    c.rpc_timeout_ms = 500;
    c.portals = vec![format!("127.0.0.1:{}", 3260 + id)];
    // Snapshot (and drop the log) often, so that catching up goes through snapshots.
    c.snapshot_every = 4;
    c
}

/// Reserve `n` loopback addresses (bind port 0, note the port, release it).
fn free_addrs(n: usize) -> Vec<String> {
    let ls: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect()
}

async fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// The leader every given node agrees on, if they all agree.
fn agreed_leader(nodes: &[&ClusterNode]) -> Option<u64> {
    let l = nodes.first()?.leader()?;
    nodes.iter().all(|n| n.leader() == Some(l)).then_some(l)
}

fn volume(name: &str, wwn_tail: u8, backend: &str) -> VolumeDef {
    VolumeDef {
        name: name.into(),
        wwn: format!("naa.6001405f0e1d2c3b4a5968778695a4{wwn_tail:02x}"),
        block_size: 512,
        blocks: 2048,
        holes: HolePolicy::Zero,
        extents: vec![Extent {
            vstart: 0,
            blocks: 2048,
            backend: backend.into(),
            bstart: 0,
            mirror: None,
        }],
    }
}

/// A command that adds volume `name` to the table at `epoch`.
fn add_volume(state_table: &MappingTable, name: &str, tail: u8) -> Command {
    let mut new = state_table.clone();
    new.volumes
        .push(volume(name, tail, &format!("array/{name}")));
    Command::ApplyChangeset(MappingTable::diff(state_table, &new))
}

async fn propose_add_volume(n: &ClusterNode, name: &str, tail: u8) -> Result<u64, ClusterError> {
    let cmd = add_volume(&n.state().table, name, tail);
    n.propose(cmd).await.map(|a| a.index)
}

async fn start_three_by_join(dir: &Path) -> Vec<Option<ClusterNode>> {
    let n1 = ClusterNode::start(cfg(1, dir, "127.0.0.1:0"))
        .await
        .unwrap();
    assert_eq!(n1.wait_for_leader(Duration::from_secs(5)).await, Some(1));
    let seed = n1.local_addr().to_string();
    let mut nodes = vec![Some(n1)];
    for id in [2, 3] {
        let mut c = cfg(id, dir, "127.0.0.1:0");
        c.join = Some(seed.clone());
        nodes.push(Some(ClusterNode::start(c).await.unwrap()));
    }
    let n1 = nodes[0].as_ref().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || n1.voter_ids().len() == 3
            && n1.state().nodes.len() == 3)
        .await,
        "nodes 2 and 3 did not join: voters {:?}",
        n1.voter_ids()
    );
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_still_settling_on_a_member_is_not_confirmed_there() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_three_by_join(dir.path()).await;
    let (n1, n2) = (nodes[0].as_ref().unwrap(), nodes[1].as_ref().unwrap());
    // Node 2 holds the next index unsettled (as its applier does while it drains the
    // writes before a PREEMPT AND ABORT).
    let guard = n2.settling().hold(n2.status().applied_index + 1);
    let idx = propose_add_volume(n1, "vol1", 1).await.unwrap();
    assert!(n2.wait_applied(idx, Duration::from_secs(5)).await);
    // Applied there, and Raft went on (the entry is in node 2's state), but not settled:
    // a PR OUT's confirmation waits for it.
    assert!(n2.state().table.volumes.iter().any(|v| v.name == "vol1"));
    assert_eq!(
        n1.confirm_applied(idx, &[2, 3], Duration::from_secs(2), Duration::from_secs(2))
            .await,
        vec![2]
    );
    assert!(!n2.wait_settled(idx, Duration::from_millis(100)).await);
    drop(guard);
    assert!(n2.wait_settled(idx, Duration::from_secs(5)).await);
    assert!(n1
        .confirm_applied(idx, &[2, 3], Duration::from_secs(5), Duration::from_secs(5))
        .await
        .is_empty());
    for n in nodes.into_iter().flatten() {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_forward_fail_over_and_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_three_by_join(dir.path()).await;
    let live = |nodes: &Vec<Option<ClusterNode>>| -> Vec<u64> {
        nodes.iter().flatten().map(|n| n.id()).collect()
    };
    let get = |nodes: &Vec<Option<ClusterNode>>, id: u64| -> usize {
        nodes
            .iter()
            .position(|n| n.as_ref().is_some_and(|n| n.id() == id))
            .unwrap()
    };

    // A mapping change proposed on a follower is forwarded to the leader and
    // replicated everywhere.
    let leader = nodes[0].as_ref().unwrap().leader().unwrap();
    let follower = nodes.iter().flatten().find(|n| n.id() != leader).unwrap();
    let t = Instant::now();
    let idx = propose_add_volume(follower, "vol1", 1).await.unwrap();
    println!(
        "forwarded proposal from node {} committed in {:?}",
        follower.id(),
        t.elapsed()
    );
    for n in nodes.iter().flatten() {
        assert!(n.wait_applied(idx, Duration::from_secs(5)).await);
        assert_eq!(n.state().table.epoch, 1);
        assert!(n.state().table.volume("vol1").is_some());
        assert_eq!(n.state().nodes.len(), 3);
    }
    let members = follower.members();
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m.voter && m.info.is_some()));
    assert_eq!(members.iter().filter(|m| m.is_leader).count(), 1);

    // Kill the leader: the other two elect a new one.
    let old_addr = nodes[get(&nodes, leader)].as_ref().unwrap().local_addr();
    let slot = get(&nodes, leader);
    let old = nodes[slot].take().unwrap();
    old.shutdown().await;
    let killed = Instant::now();
    let mut new_leader = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            let rest: Vec<&ClusterNode> = nodes.iter().flatten().collect();
            new_leader = agreed_leader(&rest).filter(|l| *l != leader);
            new_leader.is_some()
        })
        .await,
        "no new leader among {:?}",
        live(&nodes)
    );
    let reelect = killed.elapsed();
    println!(
        "re-election after killing leader {leader}: node {} leads after {reelect:?}",
        new_leader.unwrap()
    );

    // Proposals work again, several, so that the new leader snapshots and purges its
    // log: the old leader will need a snapshot to catch up.
    let any = nodes.iter().flatten().next().unwrap();
    for (i, name) in ["vol2", "vol3", "vol4"].iter().enumerate() {
        propose_add_volume(any, name, 2 + i as u8).await.unwrap();
    }
    for i in 0..6u64 {
        let node = any.id();
        let state = if i % 2 == 0 {
            AluaAccess::ActiveNonOptimized
        } else {
            AluaAccess::ActiveOptimized
        };
        any.propose(Command::SetAlua { node, state }).await.unwrap();
    }
    let epoch = any.state().table.epoch;
    assert_eq!(epoch, 4);
    let new_leader_node = nodes.iter().flatten().find(|n| Some(n.id()) == new_leader);
    assert!(
        new_leader_node
            .unwrap()
            .compact(Duration::from_secs(5))
            .await,
        "the new leader could not drop its log"
    );

    // The old leader restarts from its data directory on its old address, rejoins and
    // catches up.
    let mut c = cfg(leader, dir.path(), &old_addr.to_string());
    c.join = None;
    let restarted = ClusterNode::start(c).await.unwrap();
    let mut events = restarted.subscribe();
    assert_eq!(
        restarted.state().table.epoch,
        1,
        "restarted from its own disk"
    );
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || restarted.state().table.epoch
            == epoch
            && restarted.leader() == new_leader)
        .await,
        "old leader did not catch up: epoch {} leader {:?}",
        restarted.state().table.epoch,
        restarted.leader()
    );
    println!("restarted node {leader} caught up in {:?}", t.elapsed());
    let mut snapshot = false;
    while let Ok(ev) = events.try_recv() {
        snapshot |= matches!(ev, Event::Snapshot { .. });
    }
    assert!(
        snapshot,
        "the old leader should have caught up from a snapshot"
    );
    let idx = propose_add_volume(&restarted, "vol5", 9).await.unwrap();
    nodes[slot] = Some(restarted);
    for n in nodes.iter().flatten() {
        assert!(n.wait_applied(idx, Duration::from_secs(5)).await);
        assert_eq!(n.state().table.epoch, 5);
        assert_eq!(n.state().table, nodes[0].as_ref().unwrap().state().table);
    }
    for n in nodes.into_iter().flatten() {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_data_nodes_and_a_witness_survive_losing_a_data_node() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = free_addrs(3);
    let started = Instant::now();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let mut c = cfg(id, dir.path(), &addrs[id as usize - 1]);
        c.peers = (1..=3u64)
            .filter(|p| *p != id)
            .map(|p| format!("{p}@{}", addrs[p as usize - 1]).parse().unwrap())
            .collect();
        if id == 3 {
            c.witness = true;
            c.portals.clear();
        }
        nodes.push(Some(ClusterNode::start(c).await.unwrap()));
    }
    assert!(
        wait_until(Duration::from_secs(10), || {
            let all: Vec<&ClusterNode> = nodes.iter().flatten().collect();
            agreed_leader(&all).is_some()
        })
        .await
    );
    println!(
        "initial election (2 data nodes + witness): {:?} after start",
        started.elapsed()
    );
    let n1 = nodes[0].as_ref().unwrap();
    assert!(wait_until(Duration::from_secs(5), || n1.state().nodes.len() == 3).await);
    let st = n1.state();
    assert_eq!(st.nodes[&3].role, Role::Witness);
    assert_eq!(st.serving_nodes(), [1, 2].into());

    // A witness never stands for election, so a data node leads. Lose it.
    let victim = n1.leader().unwrap();
    assert_ne!(victim, 3, "the witness must not lead");
    let survivor = if victim == 1 { 2 } else { 1 };
    nodes[victim as usize - 1].take().unwrap().shutdown().await;
    let killed = Instant::now();
    let s = nodes[survivor as usize - 1].as_ref().unwrap();
    let w = nodes[2].as_ref().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || agreed_leader(&[s, w])
            == Some(survivor))
        .await
    );
    println!(
        "data-node leader {victim} lost: node {} leads after {:?}",
        s.leader().unwrap(),
        killed.elapsed()
    );
    let idx = propose_add_volume(s, "pair1", 1).await.unwrap();
    assert!(w.wait_applied(idx, Duration::from_secs(5)).await);
    assert_eq!(w.state().table.epoch, 1);
    // Each node observes reachability itself: the lost node goes unreachable after
    // three election timeouts without contact; the witness stays reachable.
    assert!(
        wait_until(Duration::from_secs(5), || {
            let m = s.members();
            !m.iter().find(|m| m.id == victim).unwrap().reachable
                && m.iter().find(|m| m.id == 3).unwrap().reachable
        })
        .await
    );
    for n in nodes.into_iter().flatten() {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_minority_cannot_commit_the_majority_can() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = free_addrs(3);
    let started = Instant::now();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let mut c = cfg(id, dir.path(), &addrs[id as usize - 1]);
        c.propose_timeout_ms = 1500;
        c.peers = (1..=3u64)
            .filter(|p| *p != id)
            .map(|p| format!("{p}@{}", addrs[p as usize - 1]).parse().unwrap())
            .collect();
        nodes.push(ClusterNode::start(c).await.unwrap());
    }
    let all: Vec<&ClusterNode> = nodes.iter().collect();
    assert!(wait_until(Duration::from_secs(10), || agreed_leader(&all).is_some()).await);
    println!(
        "initial election (3 nodes): {:?} after start",
        started.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(5), || all.iter().all(|n| n
            .state()
            .nodes
            .len()
            == 3))
        .await
    );

    // Cut the leader off: it is the minority.
    let old = agreed_leader(&all).unwrap();
    let minority = &nodes[old as usize - 1];
    let majority: Vec<&ClusterNode> = nodes.iter().filter(|n| n.id() != old).collect();
    minority.faults().isolate(true);
    let cut = Instant::now();

    // The majority elects a leader among itself.
    assert!(
        wait_until(Duration::from_secs(10), || agreed_leader(&majority)
            .is_some_and(|l| l != old))
        .await
    );
    println!(
        "majority side elected node {} {:?} after the cut",
        majority[0].leader().unwrap(),
        cut.elapsed()
    );

    // The minority side cannot commit: a clear error after the propose timeout.
    let doomed = Command::SetAlua {
        node: old,
        state: AluaAccess::Standby,
    };
    let t = Instant::now();
    let err = minority.propose(doomed).await.unwrap_err();
    println!("minority proposal failed after {:?}: {err}", t.elapsed());
    assert!(matches!(err, ClusterError::NoQuorum { .. }), "{err:?}");
    assert!(err.to_string().contains("majority"));

    // The majority commits.
    let idx = propose_add_volume(majority[1], "maj1", 1).await.unwrap();
    for n in &majority {
        assert!(n.wait_applied(idx, Duration::from_secs(5)).await);
    }
    // The isolated node's table did not move, and a follower on the minority side (its
    // forwarding fails) errors too.
    assert_eq!(minority.state().table.epoch, 0);

    // Heal: the old leader steps down, discards its uncommitted entry and catches up.
    minority.faults().isolate(false);
    assert!(
        wait_until(Duration::from_secs(10), || minority.state().table.epoch
            == 1
            && minority.leader() == majority[0].leader())
        .await
    );
    for n in &nodes {
        assert_eq!(
            n.state().alua_of(old),
            AluaAccess::ActiveOptimized,
            "minority write leaked"
        );
    }
    for n in nodes {
        n.shutdown().await;
    }
}

/// Send a hand-made HTTP request and return the status line.
fn raw_post(addr: &str, path: &str, headers: &[(&str, String)], body: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_at_a_members_address_is_not_added() {
    let dir = tempfile::tempdir().unwrap();
    let n1 = ClusterNode::start(cfg(1, dir.path(), "127.0.0.1:0"))
        .await
        .unwrap();
    assert_eq!(n1.wait_for_leader(Duration::from_secs(5)).await, Some(1));
    assert!(wait_until(Duration::from_secs(5), || n1.voter_ids() == [1].into()).await);
    // Node 2 "at" node 1's address: the leader would replicate to itself.
    let err = n1
        .add_node(NodeInfo::voter(
            2,
            "n2",
            &n1.local_addr().to_string(),
            vec![],
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("member 1 already has that address"), "{err}");
    assert_eq!(n1.voter_ids(), [1].into());
    assert!(n1.members().iter().all(|m| m.id == 1));
    n1.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_cannot_join_or_send_rpcs() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(1, dir.path(), "127.0.0.1:0");
    c.propose_timeout_ms = 1500;
    let n1 = ClusterNode::start(c).await.unwrap();
    assert_eq!(n1.wait_for_leader(Duration::from_secs(5)).await, Some(1));
    assert!(wait_until(Duration::from_secs(5), || n1.state().nodes.len() == 1).await);
    let addr = n1.local_addr().to_string();
    let term = n1.status().term;

    // A node with another secret asks to join: refused with 401, nothing changes.
    let mut rc = cfg(9, dir.path(), "127.0.0.1:0");
    rc.secret = Some("another-secret-entirely-000".into());
    rc.join = Some(addr.clone());
    let rogue = ClusterNode::start(rc).await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || n1.refused_requests() >= 1).await);
    // An admin adding it anyway: it cannot catch up (every RPC to it gets 401), so it
    // is not added.
    let err = n1
        .add_node(NodeInfo::voter(
            9,
            "rogue",
            &rogue.local_addr().to_string(),
            vec![],
        ))
        .await
        .unwrap_err();
    println!("adding a node with another secret: {err}");
    assert!(rogue.refused_requests() >= 1);
    assert_eq!(n1.voter_ids(), [1].into());
    assert!(n1.members().iter().all(|m| m.id == 1));
    assert_eq!(n1.state().nodes.len(), 1);
    assert_eq!(rogue.leader(), None);
    rogue.shutdown().await;

    // Raw RPCs: unsigned, or signed with a wrong key, get 401 and never reach Raft
    // (a vote request with a huge term would otherwise bump ours).
    let vote =
        r#"{"vote":{"leader_id":{"term":1000,"node_id":9},"committed":false},"last_log_id":null}"#;
    assert!(raw_post(&addr, "/v1/vote", &[], vote).contains("401"));
    let forged = [
        ("x-switchyard-node", "9".to_string()),
        (
            "x-switchyard-time",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
                .to_string(),
        ),
        (
            "x-switchyard-nonce",
            "00112233445566778899aabbccddeeff".to_string(),
        ),
        ("x-switchyard-sig", "ab".repeat(32)),
    ];
    assert!(raw_post(&addr, "/v1/vote", &forged, vote).contains("401"));
    let admin = r#"{"Propose":{"ForgetNode":{"id":1}}}"#;
    assert!(raw_post(&addr, "/v1/admin", &forged, admin).contains("401"));
    assert_eq!(n1.status().term, term);
    assert_eq!(n1.state().nodes.len(), 1);
    assert!(n1.refused_requests() >= 4);
    n1.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_change_log_is_validated_and_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(1, dir.path(), "127.0.0.1:0");
    c.snapshot_every = 3;
    let n = ClusterNode::start(c.clone()).await.unwrap();
    assert_eq!(n.wait_for_leader(Duration::from_secs(5)).await, Some(1));
    assert!(wait_until(Duration::from_secs(5), || n.state().nodes.len() == 1).await);
    let mut events = n.subscribe();

    propose_add_volume(&n, "db01", 1).await.unwrap();
    let old = n.state().table.clone();
    let mut new = old.clone();
    new.volumes[0].extents[0].backend = "array2/lun0".into();
    let cs = MappingTable::diff(&old, &new);
    let a = n
        .propose(Command::BeginChange {
            copy_data: false,
            migration: None,
            changeset: cs.clone(),
            requested_by: 1,
            at_ms: 1,
        })
        .await
        .unwrap();
    let Outcome::ChangeBegun(id) = a.outcome else {
        panic!("{a:?}")
    };
    let step = |to: Phase| Command::AdvanceChange {
        id,
        to,
        reason: None,
        at_ms: 2,
        acks: Vec::new(),
    };
    let ack = |phase: Phase| Command::AckChange {
        id,
        node: 1,
        phase,
        at_ms: 3,
    };
    // Illegal: skip staging; switch before the drain is acknowledged.
    let e = n.propose(step(Phase::Switched)).await.unwrap_err();
    assert!(
        matches!(&e, ClusterError::Refused(r) if r.contains("cannot go from proposed to switched")),
        "{e}"
    );
    n.propose(step(Phase::Staged)).await.unwrap();
    n.propose(ack(Phase::Staged)).await.unwrap();
    n.propose(step(Phase::Quiescing)).await.unwrap();
    let e = n.propose(step(Phase::Switched)).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("waiting for acknowledgements from nodes [1]"),
        "{e}"
    );
    // Another change meanwhile is refused.
    assert!(matches!(
        n.propose(Command::ApplyChangeset(cs.clone())).await,
        Err(ClusterError::Refused(_))
    ));
    n.propose(ack(Phase::Quiescing)).await.unwrap();
    n.propose(step(Phase::Switched)).await.unwrap();
    assert_eq!(
        n.state().table.epoch,
        old.epoch + 1,
        "the switch is the commit point"
    );
    assert_eq!(
        n.state().active().unwrap().recovery(),
        cluster::Recovery::RollForward
    );
    n.propose(Command::SetHealth {
        id: 1,
        health: Health::Draining,
    })
    .await
    .unwrap();
    let applied = n.status().applied_index;
    n.shutdown().await;
    // Snapshots were taken and the log before them dropped.
    let data = dir.path().join("n1");
    assert!(data.join("snapshot.json").exists());
    // log.bin: records of [length u32 LE][CRC32C u32 LE][entry].
    let log = std::fs::read(data.join("log.bin")).unwrap();
    let (mut entries, mut at) = (0u64, 0usize);
    while at + 8 <= log.len() {
        at += 8 + u32::from_le_bytes(log[at..at + 4].try_into().unwrap()) as usize;
        entries += 1;
    }
    assert_eq!(at, log.len(), "log.bin ends with a whole record");
    assert!(
        entries < applied,
        "{entries} log records for {applied} entries"
    );

    // Restart mid-change (several snapshots were taken): the change is where it was,
    // so this (new) leader can finish it.
    let n = ClusterNode::start(c).await.unwrap();
    assert_eq!(n.wait_for_leader(Duration::from_secs(5)).await, Some(1));
    let st = n.state();
    let ch = st.active().expect("the change survived the restart");
    assert_eq!(ch.phase(), Phase::Switched);
    assert_eq!(st.table.volumes[0].extents[0].backend, "array2/lun0");
    assert_eq!(st.nodes[&1].health, Health::Draining);
    n.propose(ack(Phase::Switched)).await.unwrap();
    n.propose(step(Phase::Resumed)).await.unwrap();
    n.propose(ack(Phase::Resumed)).await.unwrap();
    n.propose(step(Phase::Done)).await.unwrap();
    let st = n.state();
    assert!(st.active().is_none());
    assert_eq!(st.changes[&id].phase(), Phase::Done);
    assert!(st.changes[&id].timeline.len() >= 9);
    assert!(matches!(
        n.propose(step(Phase::RolledBack)).await,
        Err(ClusterError::Refused(_))
    ));

    // Subscribers saw the commands of the first run in order.
    let mut seen = Vec::new();
    while let Ok(ev) = events.try_recv() {
        if let Event::Applied {
            command, outcome, ..
        } = ev
        {
            seen.push((command, outcome));
        }
    }
    assert!(seen.len() >= 8, "{}", seen.len());
    assert!(
        seen.iter()
            .any(|(c, o)| matches!(**c, Command::BeginChange { .. })
                && *o == Outcome::ChangeBegun(id))
    );
    n.shutdown().await;
}
