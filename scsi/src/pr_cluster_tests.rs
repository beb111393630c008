//! Persistent reservations across two nodes: two [`LogicalUnit`]s over the same
//! [`MemStore`] (the same logical unit served by node A on relative port 1 and node B
//! on relative port 17), kept coherent by an in-memory [`PrCoordinator`] that applies
//! every commit on the other node (via `apply_remote_pr`) before `commit` returns, as a
//! replicated log would.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use blockdev::MemStore;
use parking_lot::Mutex;

use crate::alua_tests::Harness;
use crate::pr_tests::{params, prout_cdb};
use crate::tests::{assert_sense, read10, write10, TUR};
use crate::{
    LogicalUnit, LuConfig, LunMap, MemPrStore, Nexus, PrAttention, PrClusterError, PrCommitError,
    PrCoordinator, PrHolder, PrRegistration, PrSnapshot, PrStore, Response, Sense, SenseKey,
    Status, TargetInfo, PR_COMMIT_ATTEMPTS,
};

const REGISTER: u8 = 0;
const RESERVE: u8 = 1;
const RELEASE: u8 = 2;
const PREEMPT: u8 = 4;
const APTPL: u8 = 0x01;
const WE: u8 = 1;
const EA: u8 = 3;

const PORT_A: u16 = 1;
const PORT_B: u16 = 17;

type Hook = Box<dyn FnOnce() + Send>;

/// The replicated state of one logical unit, in memory.
#[derive(Default)]
struct Cluster {
    /// (version, snapshot).
    log: Mutex<(u64, PrSnapshot)>,
    /// The logical unit on each node, by node index.
    members: Mutex<Vec<(usize, Weak<LogicalUnit>)>>,
    /// Runs at the start of the next commit: another node's PR OUT that gets in first.
    before_next_commit: Mutex<Option<Hook>>,
    /// Runs after the next commit was applied on the nodes, before `commit` returns.
    after_next_commit: Mutex<Option<Hook>>,
    unavailable: AtomicBool,
    always_stale: AtomicBool,
    /// Also apply a commit on the node that made it, before `commit` returns (as a
    /// Raft leader applies its own entries).
    deliver_to_self: AtomicBool,
    commits: AtomicU32,
    stale: AtomicU32,
}

/// One node's handle on the cluster.
struct Coordinator {
    cluster: Arc<Cluster>,
    node: usize,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fake coordinator of node {}", self.node)
    }
}

impl PrCoordinator for Coordinator {
    fn current(&self) -> Result<(u64, PrSnapshot), PrCommitError> {
        if self.cluster.unavailable.load(Ordering::SeqCst) {
            return Err(PrCommitError::Unavailable("no quorum".into()));
        }
        Ok(self.cluster.log.lock().clone())
    }

    fn commit(
        &self,
        base_version: u64,
        next: &PrSnapshot,
        attentions: &[PrAttention],
        abort: bool,
    ) -> Result<u64, PrCommitError> {
        let c = &self.cluster;
        c.commits.fetch_add(1, Ordering::SeqCst);
        let hook = c.before_next_commit.lock().take();
        if let Some(hook) = hook {
            hook();
        }
        if c.unavailable.load(Ordering::SeqCst) {
            return Err(PrCommitError::Unavailable("no quorum".into()));
        }
        let version = {
            let mut log = c.log.lock();
            if c.always_stale.load(Ordering::SeqCst) || log.0 != base_version {
                c.stale.fetch_add(1, Ordering::SeqCst);
                return Err(PrCommitError::Stale);
            }
            *log = (log.0 + 1, next.clone());
            log.0
        };
        let to_self = c.deliver_to_self.load(Ordering::SeqCst);
        let members = c.members.lock().clone();
        for (node, lu) in members {
            if node != self.node || to_self {
                if let Some(lu) = lu.upgrade() {
                    lu.apply_remote_pr(version, next, attentions);
                    // As a node does before it reports the entry applied.
                    if abort && node != self.node {
                        lu.drain_writes();
                    }
                }
            }
        }
        let hook = c.after_next_commit.lock().take();
        if let Some(hook) = hook {
            hook();
        }
        Ok(version)
    }
}

/// One node serving the shared logical unit as LUN 0.
struct Node {
    h: Harness,
    lu: Arc<LogicalUnit>,
}

impl Cluster {
    fn coordinator(self: &Arc<Self>, node: usize) -> Arc<dyn PrCoordinator> {
        Arc::new(Coordinator {
            cluster: self.clone(),
            node,
        })
    }

    /// Node `node` joins with `lu` (already given its coordinator).
    fn join(&self, node: usize, lu: LogicalUnit) -> Arc<Node> {
        let lu = Arc::new(lu);
        self.members.lock().push((node, Arc::downgrade(&lu)));
        let mut map = LunMap::new(Arc::new(TargetInfo {
            name: "iqn.2026-11.org.switchyard:cluster".into(),
            port_name: format!("iqn.2026-11.org.switchyard:cluster,t,0x{node:04x}"),
        }));
        map.insert(0, lu.clone());
        Arc::new(Node {
            h: Harness { map },
            lu,
        })
    }

    /// Runs `f` (another node's PR OUT) at the start of the next commit.
    fn before_next_commit(&self, f: impl FnOnce() + Send + 'static) {
        *self.before_next_commit.lock() = Some(Box::new(f));
    }

    /// Runs `f` after the next commit was applied, before `commit` returns.
    fn after_next_commit(&self, f: impl FnOnce() + Send + 'static) {
        *self.after_next_commit.lock() = Some(Box::new(f));
    }

    fn commits(&self) -> u32 {
        self.commits.load(Ordering::SeqCst)
    }

    fn version(&self) -> u64 {
        self.log.lock().0
    }
}

fn shared_lu(store: &Arc<MemStore>) -> LogicalUnit {
    LogicalUnit::new(
        LuConfig {
            serial: "cluster-0".into(),
            ..LuConfig::default()
        },
        store.clone(),
    )
}

/// A cluster with node A (index 0) and node B (index 1).
fn two_nodes() -> (Arc<Cluster>, Arc<Node>, Arc<Node>) {
    let cluster = Arc::new(Cluster::default());
    let store = Arc::new(MemStore::new(512, 1024));
    let a = shared_lu(&store)
        .with_pr_coordinator(cluster.coordinator(0))
        .unwrap();
    let b = shared_lu(&store)
        .with_pr_coordinator(cluster.coordinator(1))
        .unwrap();
    let a = cluster.join(0, a);
    let b = cluster.join(1, b);
    (cluster, a, b)
}

impl Node {
    fn ready(&self, id: u64, port: u16) -> Nexus {
        self.h.ready(id, port)
    }

    fn prout(&self, n: &Nexus, sa: u8, pr_type: u8, key: u64, sa_key: u64, flags: u8) -> Response {
        let data = params(key, sa_key, flags);
        self.h
            .run(n, &prout_cdb(sa, pr_type, data.len() as u32), &data)
    }

    fn ok(&self, n: &Nexus, sa: u8, pr_type: u8, key: u64, sa_key: u64) {
        let r = self.prout(n, sa, pr_type, key, sa_key, 0);
        assert_eq!(r.status, Status::Good, "PROUT {sa:#x}: {r:?}");
    }

    fn prin(&self, n: &Nexus, sa: u8) -> Vec<u8> {
        let r = self.h.run(n, &[0x5E, sa, 0, 0, 0, 0, 0, 0x10, 0, 0], &[]);
        assert_eq!(r.status, Status::Good, "{r:?}");
        r.data_in
    }

    /// (PRGENERATION, keys) from READ KEYS.
    fn keys(&self, n: &Nexus) -> (u32, Vec<u64>) {
        let d = self.prin(n, 0);
        let keys = d[8..]
            .chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect();
        (u32::from_be_bytes(d[..4].try_into().unwrap()), keys)
    }

    /// The reservation's key and type from READ RESERVATION.
    fn reservation(&self, n: &Nexus) -> Option<(u64, u8)> {
        let d = self.prin(n, 1);
        match u32::from_be_bytes(d[4..8].try_into().unwrap()) {
            0 => None,
            16 => Some((u64::from_be_bytes(d[8..16].try_into().unwrap()), d[21])),
            l => panic!("READ RESERVATION additional length {l}"),
        }
    }

    fn write(&self, n: &Nexus) -> Status {
        self.h.run(n, &write10(1, 1, 0), &[0x5A; 512]).status
    }

    fn read(&self, n: &Nexus) -> Status {
        self.h.run(n, &read10(1, 1), &[]).status
    }

    /// The next command on `n` reports exactly this unit attention (or none).
    fn expect_ua(&self, n: &Nexus, ua: Option<Sense>) {
        assert_eq!(self.h.run(n, &TUR, &[]).sense, ua);
        if ua.is_some() {
            assert_eq!(self.h.run(n, &TUR, &[]).sense, None, "reported once");
        }
    }
}

#[test]
fn a_reservation_made_through_one_node_is_enforced_on_the_other() {
    let (cluster, a, b) = two_nodes();
    let i1 = a.ready(1, PORT_A);
    let i2 = b.ready(2, PORT_B);
    assert_eq!(b.write(&i2), Status::Good);
    a.ok(&i1, REGISTER, 0, 0, 0xA);
    a.ok(&i1, RESERVE, WE, 0xA, 0);
    // As soon as the PR OUT through A returned, B enforces it.
    assert_eq!(b.write(&i2), Status::ReservationConflict);
    assert_eq!(
        b.read(&i2),
        Status::Good,
        "Write Exclusive lets others read"
    );
    assert_eq!(a.write(&i1), Status::Good);
    assert_eq!(b.keys(&i2), (1, vec![0xA]));
    assert_eq!(b.reservation(&i2), Some((0xA, WE)));
    // READ FULL STATUS through B names the holder's port on A.
    let fs = b.prin(&i2, 3);
    assert_eq!(fs[20], 0x01, "R_HOLDER");
    assert_eq!(&fs[26..28], &PORT_A.to_be_bytes());
    assert_eq!((cluster.commits(), cluster.version()), (2, 2));
    assert_eq!((a.lu.pr_version(), b.lu.pr_version()), (2, 2));
    assert_eq!(a.lu.pr_snapshot(), b.lu.pr_snapshot());
    // Released through A: B's initiator may write again.
    a.ok(&i1, RELEASE, WE, 0xA, 0);
    assert_eq!(b.write(&i2), Status::Good);
}

#[test]
fn preempt_through_one_node_raises_registrations_preempted_on_the_other() {
    let (_cluster, a, b) = two_nodes();
    let i1 = a.ready(1, PORT_A);
    let i3 = a.ready(3, PORT_A);
    let i2 = b.ready(2, PORT_B);
    a.ok(&i1, REGISTER, 0, 0, 0xA);
    a.ok(&i3, REGISTER, 0, 0, 0xC);
    a.ok(&i1, RESERVE, EA, 0xA, 0);
    b.ok(&i2, REGISTER, 0, 0, 0xB);
    assert_eq!(b.read(&i2), Status::ReservationConflict);
    b.ok(&i2, PREEMPT, WE, 0xB, 0xA);
    // Through A: i1 was preempted, and i3 is told the reservation changed type
    // (SPC-4 5.13.11.4.3); the preempting nexus on B is told nothing.
    a.expect_ua(&i1, Some(Sense::registrations_preempted()));
    a.expect_ua(&i3, Some(Sense::reservations_released()));
    b.expect_ua(&i2, None);
    assert_eq!(a.write(&i1), Status::ReservationConflict);
    assert_eq!(a.read(&i1), Status::Good);
    assert_eq!(a.keys(&i1), (4, vec![0xC, 0xB]));
    assert_eq!(a.reservation(&i1), Some((0xB, WE)));
    assert_eq!(b.write(&i2), Status::Good);
}

#[test]
fn stale_commit_reexecutes_a_reserve_that_now_conflicts() {
    let (cluster, a, b) = two_nodes();
    let i1 = a.ready(1, PORT_A);
    let i2 = b.ready(2, PORT_B);
    a.ok(&i1, REGISTER, 0, 0, 0xA);
    b.ok(&i2, REGISTER, 0, 0, 0xB);
    // B's initiator reserves while A's RESERVE is on its way to the cluster.
    let (b2, i2c) = (b.clone(), i2.clone());
    cluster.before_next_commit(move || b2.ok(&i2c, RESERVE, EA, 0xB, 0));
    let r = a.prout(&i1, RESERVE, WE, 0xA, 0, 0);
    assert_eq!(r.status, Status::ReservationConflict, "{r:?}");
    assert_eq!(cluster.stale.load(Ordering::SeqCst), 1);
    // Two registers, B's reserve, A's stale attempt; the re-execution did not commit.
    assert_eq!((cluster.commits(), cluster.version()), (4, 3));
    assert_eq!(a.lu.pr_version(), 3);
    assert_eq!(a.reservation(&i1), Some((0xB, EA)));
    assert_eq!(a.read(&i1), Status::ReservationConflict);
    assert_eq!(b.write(&i2), Status::Good);
}

#[test]
fn stale_commit_reexecutes_a_register_that_still_succeeds() {
    let (cluster, a, b) = two_nodes();
    let i1 = a.ready(1, PORT_A);
    let i2 = b.ready(2, PORT_B);
    let (b2, i2c) = (b.clone(), i2.clone());
    cluster.before_next_commit(move || b2.ok(&i2c, REGISTER, 0, 0, 0xB));
    a.ok(&i1, REGISTER, 0, 0, 0xA);
    assert_eq!(cluster.stale.load(Ordering::SeqCst), 1);
    // Both registrations, B's first, and the generation counts both.
    assert_eq!(a.keys(&i1), (2, vec![0xB, 0xA]));
    assert_eq!(b.keys(&i2), (2, vec![0xB, 0xA]));
    assert_eq!((a.lu.pr_version(), b.lu.pr_version()), (2, 2));
    assert_eq!(
        cluster.log.lock().1,
        a.lu.pr_snapshot().1,
        "the cluster holds what A installed"
    );
}

#[test]
fn losing_every_race_gives_up_with_not_ready_after_the_bound() {
    let (cluster, a, b) = two_nodes();
    let i1 = a.ready(1, PORT_A);
    let i2 = b.ready(2, PORT_B);
    a.ok(&i1, REGISTER, 0, 0, 0xA);
    cluster.always_stale.store(true, Ordering::SeqCst);
    let before = cluster.commits();
    let r = a.prout(&i1, RESERVE, WE, 0xA, 0, 0);
    assert_sense(&r, SenseKey::NotReady, 0x04, 0x0A);
    assert_eq!(cluster.commits() - before, PR_COMMIT_ATTEMPTS);
    assert_eq!(a.reservation(&i1), None);
    assert_eq!(b.write(&i2), Status::Good);
}

#[test]
fn unavailable_cluster_is_not_ready_and_changes_nothing() {
    let (cluster, a, b) = two_nodes();
    let i1 = a.ready(1, PORT_A);
    let i2 = b.ready(2, PORT_B);
    a.ok(&i1, REGISTER, 0, 0, 0xA);
    let snap = a.lu.pr_snapshot();
    cluster.unavailable.store(true, Ordering::SeqCst);
    for (sa, pr_type, key, sa_key) in [(RESERVE, WE, 0xA, 0), (REGISTER, 0, 0xA, 0xAA)] {
        let r = a.prout(&i1, sa, pr_type, key, sa_key, 0);
        assert_sense(&r, SenseKey::NotReady, 0x04, 0x0A);
    }
    assert_eq!(a.lu.pr_snapshot(), snap);
    assert_eq!(b.lu.pr_snapshot(), snap);
    assert_eq!(b.write(&i2), Status::Good);
    // Errors found before committing are reported as usual.
    let r = b.prout(&i2, RESERVE, WE, 0xB, 0, 0);
    assert_eq!(r.status, Status::ReservationConflict);
    // The cluster is back: the same command succeeds.
    cluster.unavailable.store(false, Ordering::SeqCst);
    a.ok(&i1, RESERVE, WE, 0xA, 0);
    assert_eq!(b.write(&i2), Status::ReservationConflict);
}

#[test]
fn aptpl_is_accepted_with_a_coordinator_and_a_new_node_loads_the_state() {
    let (cluster, a, b) = two_nodes();
    let i1 = a.ready(1, PORT_A);
    let caps = a.prin(&i1, 2);
    assert_eq!(&caps[2..4], &[0x05, 0xB0], "PTPL_C=1, PTPL_A=0");
    let r = a.prout(&i1, REGISTER, 0, 0, 0xA, APTPL);
    assert_eq!(r.status, Status::Good, "{r:?}");
    assert_eq!(a.prin(&i1, 2)[3], 0xB1, "PTPL_A=1");
    let i2 = b.ready(2, PORT_B);
    assert_eq!(b.prin(&i2, 2)[3], 0xB1, "PTPL_A=1 on B too");
    assert!(cluster.log.lock().1.aptpl);
    a.ok(&i1, RESERVE, WE, 0xA, 0);
    // APTPL=0 now: the cluster still keeps the state.
    let r = a.prout(&i1, REGISTER, 0, 0xA, 0xA1, 0);
    assert_eq!(r.status, Status::Good);
    // A restarted node (or a third one) starts from the cluster's state and version.
    let c = shared_lu(&Arc::new(MemStore::new(512, 1024)))
        .with_pr_coordinator(cluster.coordinator(2))
        .unwrap();
    let c = cluster.join(2, c);
    assert_eq!(c.lu.pr_version(), 3);
    let i3 = c.ready(3, 33);
    assert_eq!(c.keys(&i3), (2, vec![0xA1]));
    assert_eq!(c.reservation(&i3), Some((0xA1, WE)));
    assert_eq!(c.write(&i3), Status::ReservationConflict);
}

#[test]
fn the_coordinator_wins_over_a_local_store() {
    let store = Arc::new(MemPrStore::default());
    let saved = PrSnapshot {
        generation: 1,
        aptpl: true,
        registrations: vec![PrRegistration {
            initiator: "iqn.x:old,i,0x1".into(),
            relative_port: 1,
            key: 0x99,
            all_tg_pt: false,
        }],
        reservation: None,
        spc2_reservation: None,
    };
    store.save(&saved).unwrap();
    let bytes = store.bytes();
    let cluster = Arc::new(Cluster::default());
    let mem = Arc::new(MemStore::new(512, 1024));
    // Store first, then the coordinator: the cluster's (empty) state replaces it.
    let a = shared_lu(&mem)
        .with_pr_store(store.clone())
        .unwrap()
        .with_pr_coordinator(cluster.coordinator(0))
        .unwrap();
    // Coordinator first, then a store: the store is not even read.
    store.set_bytes(b"corrupt".to_vec());
    let b = shared_lu(&mem)
        .with_pr_coordinator(cluster.coordinator(1))
        .unwrap()
        .with_pr_store(store.clone())
        .unwrap();
    let (a, b) = (cluster.join(0, a), cluster.join(1, b));
    let i1 = a.ready(1, PORT_A);
    let i2 = b.ready(2, PORT_B);
    assert_eq!(a.keys(&i1), (0, vec![]));
    assert_eq!(b.keys(&i2), (0, vec![]));
    store.set_bytes(bytes.clone().unwrap());
    assert_eq!(
        a.prout(&i1, REGISTER, 0, 0, 0xA, APTPL).status,
        Status::Good
    );
    assert_eq!(store.bytes(), bytes, "the local store is never written");
    assert_eq!(b.keys(&i2), (1, vec![0xA]));
}

#[test]
fn a_pr_out_that_changes_nothing_commits_nothing() {
    let (cluster, a, _b) = two_nodes();
    let i1 = a.ready(1, PORT_A);
    let i4 = a.ready(4, PORT_A);
    a.ok(&i1, REGISTER, 0, 0, 0xA);
    let commits = cluster.commits();
    // Unregistering an unregistered nexus, releasing nothing, reserving again.
    a.ok(&i4, REGISTER, 0, 0, 0);
    a.ok(&i1, RELEASE, WE, 0xA, 0);
    assert_eq!(cluster.commits(), commits);
    a.ok(&i1, RESERVE, WE, 0xA, 0);
    a.ok(&i1, RESERVE, WE, 0xA, 0);
    assert_eq!(cluster.commits(), commits + 1);
    // Refused before committing: nothing committed either.
    assert_eq!(
        a.prout(&i4, RESERVE, WE, 0xB, 0, 0).status,
        Status::ReservationConflict
    );
    assert_eq!(cluster.commits(), commits + 1);
}

#[test]
fn apply_remote_pr_installs_newer_versions_only() {
    let (_cluster, a, _b) = two_nodes();
    let i1 = a.ready(1, PORT_A);
    let snap = |key: u64, generation: u32| PrSnapshot {
        generation,
        aptpl: false,
        registrations: vec![PrRegistration {
            initiator: i1.initiator.clone(),
            relative_port: PORT_A,
            key,
            all_tg_pt: false,
        }],
        reservation: Some(PrHolder {
            initiator: i1.initiator.clone(),
            relative_port: PORT_A,
            pr_type: WE,
        }),
        spc2_reservation: None,
    };
    let ua = |port: u16| PrAttention {
        initiator: i1.initiator.clone(),
        relative_port: port,
        asc: 0x2A,
        ascq: 0x04,
    };
    // A port of another node matches nobody here.
    assert!(a.lu.apply_remote_pr(5, &snap(0xA, 1), &[ua(PORT_B)]));
    a.expect_ua(&i1, None);
    assert_eq!(a.lu.pr_version(), 5);
    assert_eq!(a.keys(&i1), (1, vec![0xA]));
    // Equal or older: nothing changes, no unit attention.
    assert!(!a.lu.apply_remote_pr(5, &snap(0xB, 2), &[ua(PORT_A)]));
    assert!(!a.lu.apply_remote_pr(4, &snap(0xB, 2), &[ua(PORT_A)]));
    a.expect_ua(&i1, None);
    assert_eq!(a.keys(&i1), (1, vec![0xA]));
    // Newer: installed, with its unit attention.
    assert!(a
        .lu
        .apply_remote_pr(6, &PrSnapshot::default(), &[ua(PORT_A)]));
    a.expect_ua(&i1, Some(Sense::reservations_released()));
    assert_eq!(a.keys(&i1), (0, vec![]));
    assert_eq!(a.write(&i1), Status::Good);
    // An inconsistent snapshot is not installed.
    let mut bad = snap(0xA, 3);
    bad.registrations.clear();
    assert!(!a.lu.apply_remote_pr(7, &bad, &[]));
    assert_eq!(a.lu.pr_version(), 6);
}

#[test]
fn own_commits_applied_back_by_the_coordinator_are_not_applied_twice() {
    let (cluster, a, b) = two_nodes();
    cluster.deliver_to_self.store(true, Ordering::SeqCst);
    let i1 = a.ready(1, PORT_A);
    let i3 = a.ready(3, PORT_A);
    let i2 = b.ready(2, PORT_B);
    a.ok(&i1, REGISTER, 0, 0, 0xA);
    a.ok(&i3, REGISTER, 0, 0, 0xC);
    a.ok(&i1, RESERVE, WE, 0xA, 0);
    // i1 takes the unit attention the coordinator's apply raised before the PR OUT
    // completes; completing it must not raise it again.
    let (a2, i1c) = (a.clone(), i1.clone());
    cluster.after_next_commit(move || {
        a2.expect_ua(&i1c, Some(Sense::registrations_preempted()));
    });
    a.ok(&i3, PREEMPT, WE, 0xC, 0xA);
    a.expect_ua(&i1, None);
    assert_eq!((a.lu.pr_version(), b.lu.pr_version()), (4, 4));
    assert_eq!(a.lu.pr_snapshot(), b.lu.pr_snapshot());
    assert_eq!(b.write(&i2), Status::ReservationConflict);
}

#[test]
fn a_cluster_that_cannot_be_read_or_is_inconsistent_refuses_to_start() {
    let cluster = Arc::new(Cluster::default());
    cluster.unavailable.store(true, Ordering::SeqCst);
    let mem = Arc::new(MemStore::new(512, 1024));
    let e = shared_lu(&mem)
        .with_pr_coordinator(cluster.coordinator(0))
        .unwrap_err();
    assert!(matches!(e, PrClusterError::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("no quorum"), "{e}");
    cluster.unavailable.store(false, Ordering::SeqCst);
    cluster.log.lock().0 = 9;
    cluster.log.lock().1.reservation = Some(PrHolder {
        initiator: "iqn.x:h,i,0x1".into(),
        relative_port: 1,
        pr_type: WE,
    });
    let e = shared_lu(&mem)
        .with_pr_coordinator(cluster.coordinator(0))
        .unwrap_err();
    assert!(
        matches!(e, PrClusterError::Corrupt { version: 9, .. }),
        "{e}"
    );
}

// SPC-2 RESERVE/RELEASE, cluster-wide through the same coordinator.

const RESERVE6: [u8; 6] = [0x16, 0, 0, 0, 0, 0];
const RELEASE6: [u8; 6] = [0x17, 0, 0, 0, 0, 0];
const RESERVE10: [u8; 10] = [0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const RELEASE10: [u8; 10] = [0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const MODE_SENSE6: [u8; 6] = [0x1A, 0, 0x3F, 0, 255, 0];
const INQUIRY: [u8; 6] = [0x12, 0, 0, 0, 36, 0];

impl Node {
    fn cmd(&self, n: &Nexus, cdb: &[u8]) -> Status {
        self.h.run(n, cdb, &[]).status
    }

    /// The SPC-2 holder this node enforces.
    fn spc2(&self) -> Option<crate::Spc2Holder> {
        self.lu.pr_snapshot().1.spc2_reservation
    }
}

fn holder(n: &Nexus) -> Option<crate::Spc2Holder> {
    Some(crate::Spc2Holder {
        initiator: n.initiator.clone(),
        relative_port: n.relative_port,
    })
}

/// Polls `done` until it holds (background commits), failing after 10 s.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn spc2_reserve_through_one_node_is_enforced_on_the_other() {
    let (cluster, a, b) = two_nodes();
    let i1 = a.ready(1, PORT_A);
    let i2 = b.ready(2, PORT_B);
    let caps = b.prin(&i2, 2);
    let full_status = b.prin(&i2, 3);
    assert_eq!(a.cmd(&i1, &RESERVE6), Status::Good);
    assert_eq!(cluster.commits(), 1);
    assert_eq!(
        b.spc2(),
        holder(&i1),
        "installed on B before RESERVE completed"
    );
    // Another initiator through B: RESERVE, MODE SENSE and WRITE conflict; INQUIRY
    // does not.
    assert_eq!(b.cmd(&i2, &RESERVE6), Status::ReservationConflict);
    assert_eq!(b.cmd(&i2, &RESERVE10), Status::ReservationConflict);
    assert_eq!(b.cmd(&i2, &MODE_SENSE6), Status::ReservationConflict);
    assert_eq!(b.write(&i2), Status::ReservationConflict);
    assert_eq!(b.cmd(&i2, &INQUIRY), Status::Good);
    // The holder goes on through A; reserving again commits nothing.
    assert_eq!(a.cmd(&i1, &MODE_SENSE6), Status::Good);
    assert_eq!(a.write(&i1), Status::Good);
    assert_eq!(a.cmd(&i1, &RESERVE10), Status::Good);
    // Another initiator through A is refused too.
    let i3 = a.ready(3, PORT_A);
    assert_eq!(a.write(&i3), Status::ReservationConflict);
    // RELEASE by a non-holder through B: GOOD, nothing happens.
    assert_eq!(b.cmd(&i2, &RELEASE6), Status::Good);
    assert_eq!(cluster.commits(), 1);
    assert_eq!(b.write(&i2), Status::ReservationConflict);
    // SPC-4 5.13.3: PERSISTENT RESERVE IN and OUT conflict on both nodes, the
    // holder's included.
    for (node, n) in [(&b, &i2), (&a, &i1)] {
        let r = node.h.run(n, &[0x5E, 0, 0, 0, 0, 0, 0, 0x10, 0, 0], &[]);
        assert_eq!(r.status, Status::ReservationConflict);
        assert_eq!(
            node.prout(n, REGISTER, 0, 0, 0xB, 0).status,
            Status::ReservationConflict
        );
    }
    assert_eq!(cluster.commits(), 1);
    // RELEASE by the holder through A: B's initiator may reserve.
    assert_eq!(a.cmd(&i1, &RELEASE10), Status::Good);
    assert_eq!((cluster.commits(), b.spc2()), (2, None));
    assert_eq!(b.write(&i2), Status::Good);
    assert_eq!(b.cmd(&i2, &RESERVE6), Status::Good);
    assert_eq!(a.write(&i1), Status::ReservationConflict);
    assert_eq!(a.cmd(&i1, &RESERVE6), Status::ReservationConflict);
    assert_eq!(a.spc2(), holder(&i2));
    assert_eq!(a.lu.pr_snapshot(), b.lu.pr_snapshot());
    // PERSISTENT RESERVE IN does not show SPC-2 reservations: released again, the
    // capabilities and the (empty) full status read as before, PRGENERATION 0.
    assert_eq!(b.cmd(&i2, &RELEASE6), Status::Good);
    assert_eq!(b.prin(&i2, 2), caps);
    assert_eq!(a.prin(&i1, 3), full_status);
    assert_eq!(a.keys(&i1), (0, vec![]));
}

#[test]
fn spc2_and_persistent_reservations_exclude_each_other_across_nodes() {
    let (cluster, a, b) = two_nodes();
    let i1 = a.ready(1, PORT_A);
    let i2 = b.ready(2, PORT_B);
    // Registered through B: RESERVE(6) through A conflicts (SPC-4 5.13.3).
    b.ok(&i2, REGISTER, 0, 0, 0xB);
    assert_eq!(a.cmd(&i1, &RESERVE6), Status::ReservationConflict);
    b.ok(&i2, REGISTER, 0, 0xB, 0);
    // B registers while A's RESERVE is on its way: A executes it again and conflicts.
    let (b2, i2c) = (b.clone(), i2.clone());
    cluster.before_next_commit(move || b2.ok(&i2c, REGISTER, 0, 0, 0xB));
    assert_eq!(a.cmd(&i1, &RESERVE6), Status::ReservationConflict);
    assert_eq!(cluster.stale.load(Ordering::SeqCst), 1);
    assert_eq!(a.spc2(), None);
    b.ok(&i2, REGISTER, 0, 0xB, 0);
    // A reserves while B's REGISTER is on its way: B's REGISTER conflicts.
    let (a2, i1c) = (a.clone(), i1.clone());
    cluster.before_next_commit(move || assert_eq!(a2.cmd(&i1c, &RESERVE6), Status::Good));
    let r = b.prout(&i2, REGISTER, 0, 0, 0xB, 0);
    assert_eq!(r.status, Status::ReservationConflict, "{r:?}");
    assert_eq!(cluster.stale.load(Ordering::SeqCst), 2);
    assert!(b.lu.pr_snapshot().1.registrations.is_empty());
    assert_eq!(b.spc2(), holder(&i1));
}

#[test]
fn nexus_loss_releases_spc2_for_the_other_nodes_in_the_background() {
    let (cluster, a, b) = two_nodes();
    let i1 = a.ready(1, PORT_A);
    let i3 = a.ready(3, PORT_A);
    let i2 = b.ready(2, PORT_B);
    assert_eq!(a.cmd(&i1, &RESERVE6), Status::Good);
    // A nexus that does not hold it goes: nothing to commit.
    a.h.map.nexus_gone(&i3);
    assert_eq!(cluster.commits(), 1);
    let version = cluster.version();
    a.h.map.nexus_gone(&i1);
    // Released on A at once; on B once the background commit is applied.
    assert_eq!(a.spc2(), None);
    let i4 = a.ready(4, PORT_A);
    assert_eq!(a.write(&i4), Status::Good);
    wait_until("B to install the release", || b.spc2().is_none());
    assert_eq!(cluster.version(), version + 1);
    assert_eq!(b.write(&i2), Status::Good);
    assert_eq!(b.cmd(&i2, &RESERVE6), Status::Good);
    assert_eq!(a.write(&i4), Status::ReservationConflict);
    assert_eq!(a.lu.pr_snapshot(), b.lu.pr_snapshot());
}

#[test]
fn logout_commits_the_spc2_release_before_it_returns() {
    let (cluster, a, b) = two_nodes();
    let i1 = a.ready(1, PORT_A);
    let i2 = b.ready(2, PORT_B);
    assert_eq!(a.cmd(&i1, &RESERVE6), Status::Good);
    let version = cluster.version();
    a.h.map.release_nexus_blocking(&i1);
    // No waiting: the release is committed and applied on B when the call returns.
    assert_eq!(cluster.version(), version + 1);
    assert_eq!(b.spc2(), None);
    assert_eq!(b.cmd(&i2, &RESERVE6), Status::Good);
    // The session end that follows commits nothing more.
    a.h.map.nexus_gone(&i1);
    assert_eq!(cluster.version(), version + 2);
    assert_eq!(a.write(&a.ready(4, PORT_A)), Status::ReservationConflict);
}

#[test]
fn lun_and_target_resets_release_spc2_cluster_wide() {
    let (cluster, a, b) = two_nodes();
    let i1 = a.ready(1, PORT_A);
    let i2 = b.ready(2, PORT_B);
    assert_eq!(a.cmd(&i1, &RESERVE6), Status::Good);
    // LOGICAL UNIT RESET through B releases A's initiator's reservation.
    b.h.map.lun_reset(0, &i2).unwrap();
    assert_eq!(b.spc2(), None, "released on B at once");
    wait_until("A to install the release", || a.spc2().is_none());
    assert_eq!(cluster.version(), 2);
    b.expect_ua(&i2, Some(Sense::bus_device_reset()));
    assert_eq!(b.cmd(&i2, &RESERVE6), Status::Good);
    assert_eq!(a.write(&i1), Status::ReservationConflict);
    // TARGET RESET through A releases B's initiator's reservation.
    a.h.map.target_reset(&i1);
    wait_until("B to install the release", || b.spc2().is_none());
    a.expect_ua(&i1, Some(Sense::bus_device_reset()));
    assert_eq!(a.write(&i1), Status::Good);
    assert_eq!(b.write(&i2), Status::Good);
    // A reset with nothing reserved commits nothing.
    let commits = cluster.commits();
    b.h.map.lun_reset(0, &i2).unwrap();
    assert_eq!(cluster.commits(), commits);
}

#[test]
fn unavailable_cluster_refuses_spc2_reserve_and_release_with_not_ready() {
    let (cluster, a, b) = two_nodes();
    let i1 = a.ready(1, PORT_A);
    let i2 = b.ready(2, PORT_B);
    cluster.unavailable.store(true, Ordering::SeqCst);
    for cdb in [&RESERVE6[..], &RESERVE10[..]] {
        assert_sense(&a.h.run(&i1, cdb, &[]), SenseKey::NotReady, 0x04, 0x0A);
    }
    assert_eq!((a.spc2(), b.spc2()), (None, None));
    assert_eq!(b.write(&i2), Status::Good);
    // Back: the same command succeeds; a RELEASE the cluster cannot commit is refused
    // and the reservation stays.
    cluster.unavailable.store(false, Ordering::SeqCst);
    assert_eq!(a.cmd(&i1, &RESERVE6), Status::Good);
    cluster.unavailable.store(true, Ordering::SeqCst);
    assert_sense(
        &a.h.run(&i1, &RELEASE6, &[]),
        SenseKey::NotReady,
        0x04,
        0x0A,
    );
    // RELEASE by a non-holder commits nothing, so it needs no cluster.
    assert_eq!(b.cmd(&i2, &RELEASE6), Status::Good);
    assert_eq!(b.write(&i2), Status::ReservationConflict);
    cluster.unavailable.store(false, Ordering::SeqCst);
    assert_eq!(a.cmd(&i1, &RELEASE6), Status::Good);
    assert_eq!(b.write(&i2), Status::Good);
}

#[test]
fn a_background_release_is_retried_until_the_cluster_is_back() {
    let (cluster, a, b) = two_nodes();
    let i1 = a.ready(1, PORT_A);
    let i2 = b.ready(2, PORT_B);
    assert_eq!(a.cmd(&i1, &RESERVE6), Status::Good);
    cluster.unavailable.store(true, Ordering::SeqCst);
    a.h.map.nexus_gone(&i1);
    wait_until("a first, failed try", || cluster.commits() == 2);
    // Meanwhile B still enforces the released reservation.
    assert_eq!(b.write(&i2), Status::ReservationConflict);
    cluster.unavailable.store(false, Ordering::SeqCst);
    wait_until("B to install the release", || b.spc2().is_none());
    assert_eq!(b.write(&i2), Status::Good);
    assert_eq!(a.lu.pr_snapshot(), b.lu.pr_snapshot());
}

#[test]
fn a_background_release_that_loses_the_race_does_not_undo_a_new_reservation() {
    let (cluster, a, b) = two_nodes();
    let i1 = a.ready(1, PORT_A);
    let i3 = a.ready(3, PORT_A);
    let i2 = b.ready(2, PORT_B);
    assert_eq!(a.cmd(&i1, &RESERVE6), Status::Good);
    // i3 reserves through A (free there since the reset) before the background
    // commit of the reset gets to the cluster.
    let (a2, i3c) = (a.clone(), i3.clone());
    cluster.before_next_commit(move || {
        a2.expect_ua(&i3c, Some(Sense::bus_device_reset()));
        assert_eq!(a2.cmd(&i3c, &RESERVE6), Status::Good);
    });
    a.h.map.lun_reset(0, &i1).unwrap();
    wait_until("the background commit to lose", || {
        cluster.stale.load(Ordering::SeqCst) == 1
    });
    assert_eq!((cluster.commits(), cluster.version()), (3, 2));
    assert_eq!(a.spc2(), holder(&i3));
    assert_eq!(b.spc2(), holder(&i3));
    b.expect_ua(&i2, None);
    assert_eq!(b.write(&i2), Status::ReservationConflict);
    assert_eq!(a.write(&i3), Status::Good);
}

#[test]
fn a_new_session_of_the_same_initiator_port_is_the_same_i_t_nexus() {
    let (_cluster, a, b) = two_nodes();
    let i1 = a.ready(1, PORT_A);
    let i2 = b.ready(2, PORT_B);
    assert_eq!(a.cmd(&i1, &RESERVE6), Status::Good);
    // Same initiator port and target port, another session (nexus id).
    let again = a.ready(11, PORT_A);
    let again = Nexus {
        initiator: i1.initiator.clone(),
        ..again
    };
    assert_eq!(a.write(&again), Status::Good);
    // It never reserved: its loss releases nothing.
    a.h.map.nexus_gone(&again);
    assert_eq!(b.spc2(), holder(&i1));
    assert_eq!(b.write(&i2), Status::ReservationConflict);
}

/// PREEMPT AND ABORT through node A waits for a write the preempted host sent through
/// node B and B admitted before the change: the coordinator counts B as having applied
/// it only once B has drained its writes (`write_drain.rs`). Afterwards the host's
/// writes through B get RESERVATION CONFLICT.
#[test]
fn preempt_and_abort_waits_for_writes_in_flight_on_the_other_node() {
    use crate::pr_tests::PREEMPT_AND_ABORT;
    let cluster = Arc::new(Cluster::default());
    let (store, gate) = blockdev::GatedStore::new(512, 1024);
    let store = Arc::new(store);
    let lu = |node| {
        LogicalUnit::new(
            LuConfig {
                serial: "cluster-0".into(),
                ..LuConfig::default()
            },
            store.clone(),
        )
        .with_pr_coordinator(cluster.coordinator(node))
        .unwrap()
    };
    let a = cluster.join(0, lu(0));
    let b = cluster.join(1, lu(1));
    let fencer = a.ready(1, PORT_A);
    let host = b.ready(2, PORT_B);
    a.ok(&fencer, REGISTER, 0, 0, 0xA);
    b.ok(&host, REGISTER, 0, 0, 0xB);
    b.ok(&host, RESERVE, WE, 0xB, 0);

    let writer = {
        let (b, host) = (b.clone(), host.clone());
        std::thread::spawn(move || b.write(&host))
    };
    assert!(gate.arrived(std::time::Duration::from_secs(10)));
    let done = Arc::new(AtomicBool::new(false));
    let fence = {
        let (a, fencer, done) = (a.clone(), fencer.clone(), done.clone());
        std::thread::spawn(move || {
            let r = a.prout(&fencer, PREEMPT_AND_ABORT, WE, 0xA, 0xB, 0);
            done.store(true, Ordering::SeqCst);
            r
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        !done.load(Ordering::SeqCst),
        "PREEMPT AND ABORT completed while the host's write through the other node was in flight"
    );
    gate.open_one();
    assert_eq!(writer.join().unwrap(), Status::Good);
    let r = fence.join().unwrap();
    assert_eq!(r.status, Status::Good, "{r:?}");
    // The host, fenced: REGISTRATIONS PREEMPTED, then its writes conflict.
    let ua = b.h.run(&host, &TUR, &[]);
    assert_sense(&ua, SenseKey::UnitAttention, 0x2A, 0x05);
    assert_eq!(b.write(&host), Status::ReservationConflict);
    assert!(!gate.any_arrived(), "a fenced write reached the store");
}
